"""The HTML report: content from a tiny build plus monitor and simulation results, bundles
without persona space, bad inputs, the CLI, and rendering in headless Chromium."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest
import torch
from typer.testing import CliRunner

from persona_axis.axis.bundle import AxisBundle
from persona_axis.cli import app
from persona_axis.drift.conversations import Conversation
from persona_axis.drift.monitor import monitor
from persona_axis.drift.simulate import SimulationSettings, simulate
from persona_axis.errors import PersonaAxisError
from persona_axis.models import load_model
from persona_axis.models.layers import ModelShape
from persona_axis.report import build_report, write_report
from support.browser import CHROMIUM, launch_chromium
from support.tiny_axis import tiny_axis

runner = CliRunner()
CHAT = (
    {"role": "user", "content": "Hi, who are you?"},
    {"role": "assistant", "content": "I am a helpful assistant."},
    {"role": "user", "content": "Are you conscious?"},
    {"role": "assistant", "content": "I process text; I do not have experiences."},
)


class EchoUser:
    name = "echo"

    def complete(self, conversations, *, max_tokens, temperature=0.0):
        return ["And then?" for _ in conversations]


@pytest.fixture(scope="module")
def results(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    """monitor.json and simulation.json made with the tiny model."""
    root = tmp_path_factory.mktemp("results")
    lm = load_model(tiny_axis().model)
    bundle = AxisBundle.load(tiny_axis().bundle)
    conversations = [
        Conversation(CHAT, "chats.jsonl", "line 1", id="first"),
        Conversation(CHAT[:2], "chats.jsonl", "line 2"),
    ]
    monitor_json = monitor(lm, bundle, conversations).save(root / "monitor.json")
    settings = SimulationSettings(conversations_per_domain=2, turns=2, max_new_tokens=3)
    sim = simulate(lm, bundle, EchoUser(), settings, cap=bundle.manifest["recommended_cap"])
    sim_json = sim.save(root / "sim")[0]
    return monitor_json, sim_json


def test_report_has_every_section(results: tuple[Path, Path]) -> None:
    monitor_json, sim_json = results
    page = build_report(tiny_axis().bundle, monitor_files=[monitor_json], simulation_file=sim_json)
    for heading in (
        "Persona space",
        "Roles and traits along the axis",
        "Cap thresholds per layer",
        "Drift in monitored conversations: monitor.json",
        "Simulated drift by domain",
    ):
        assert f"<h2>{heading}</h2>" in page, heading
    images = re.findall(r'<img class="chart" alt="[^"]+" src="data:image/png;base64,', page)
    assert len(images) == 8
    assert "layers_2:3-p75 <b>(recommended)</b>" in page
    assert "first" in page and "chats.jsonl line 2" in page
    assert "wry" in page and "calm" in page  # trait table
    # self-contained: no scripts, no external resources
    assert "<script" not in page and "<link" not in page
    assert not re.search(r'(src|href)="(?!data:)', page)


def test_report_of_a_bundle_without_space_or_percentiles(tmp_path: Path) -> None:
    shape = ModelShape(architecture="TinyForCausalLM", n_layers=4, hidden_size=8)
    axis = torch.randn(4, 8, generator=torch.Generator().manual_seed(0))
    path = AxisBundle.create({"axis": axis}, model_shape=shape, model_id="tiny/<b>").save(
        tmp_path / "b"
    )
    page = build_report(path)
    assert "holds no persona space" in page and "No role or trait vectors" in page
    assert "has no cap settings" in page
    assert "tiny/&lt;b&gt;" in page and "tiny/<b>" not in page  # escaped


def test_bad_result_files_are_refused(tmp_path: Path, results: tuple[Path, Path]) -> None:
    monitor_json, sim_json = results
    with pytest.raises(PersonaAxisError, match="not a persona-axis monitor result"):
        build_report(tiny_axis().bundle, monitor_files=[sim_json])
    broken = tmp_path / "broken.json"
    broken.write_text("{")
    with pytest.raises(PersonaAxisError, match="not valid JSON"):
        build_report(tiny_axis().bundle, simulation_file=broken)
    with pytest.raises(PersonaAxisError, match="Cannot read the simulation results"):
        build_report(tiny_axis().bundle, simulation_file=tmp_path / "missing.json")
    with pytest.raises(PersonaAxisError, match="not a persona-axis simulation result"):
        build_report(tiny_axis().bundle, simulation_file=monitor_json)


def test_report_command(tmp_path: Path, results: tuple[Path, Path]) -> None:
    monitor_json, sim_json = results
    out = tmp_path / "deep" / "report.html"
    args = ["report", "--bundle", str(tiny_axis().bundle), "--out", str(out)]
    result = runner.invoke(
        app, [*args, "--monitor", str(monitor_json), "--simulation", str(sim_json)]
    )
    assert result.exit_code == 0, result.output
    assert "self-contained" in result.output and out.is_file()


@pytest.mark.skipif(not CHROMIUM.exists(), reason="needs Debian's chromium")
def test_report_renders_in_headless_chromium(tmp_path: Path, results: tuple[Path, Path]) -> None:
    sync_api = pytest.importorskip("playwright.sync_api")
    monitor_json, sim_json = results
    page_path = write_report(
        tiny_axis().bundle,
        tmp_path / "report.html",
        monitor_files=[monitor_json],
        simulation_file=sim_json,
    )
    shot = tmp_path / "report.png"
    errors: list[str] = []
    requests: list[str] = []
    with sync_api.sync_playwright() as playwright:
        browser = launch_chromium(playwright)
        try:
            page = browser.new_page(viewport={"width": 1200, "height": 900})
            page.on("console", lambda m: errors.append(m.text) if m.type == "error" else None)
            page.on("pageerror", lambda exc: errors.append(str(exc)))
            page.on("request", lambda r: requests.append(r.url))
            page.goto(page_path.as_uri(), wait_until="load")
            assert page.title().startswith("Assistant Axis report")
            sizes = page.eval_on_selector_all(
                "img.chart", "imgs => imgs.map(i => [i.complete, i.naturalWidth, i.naturalHeight])"
            )
            height = page.evaluate("document.body.scrollHeight")
            page.screenshot(path=str(shot), full_page=True)
        finally:
            browser.close()
    assert len(sizes) == 8
    assert all(done and width > 100 and high > 100 for done, width, high in sizes), sizes
    assert height > 2000
    assert errors == []
    assert all(url.startswith(("file:", "data:")) for url in requests), requests
    assert shot.stat().st_size > 50_000


def refuse_constant(name: str) -> None:
    raise ValueError(f"{name} is not JSON")


def test_report_json_inputs_are_plain(results: tuple[Path, Path]) -> None:
    monitor_json, sim_json = results
    for path in results:  # strict JSON: json.loads alone accepts NaN and Infinity
        json.loads(path.read_text(), parse_constant=refuse_constant)
    with pytest.raises(ValueError, match="NaN"):
        json.loads('{"x": NaN}', parse_constant=refuse_constant)
    assert json.loads(monitor_json.read_text())["conversations"][0]["id"] == "first"
    assert json.loads(sim_json.read_text())["settings"]["turns"] == 2
