"""The server, tested against a real uvicorn server on 127.0.0.1 (not a mock): the official
``openai`` client, per-request settings and telemetry, bad inputs, the API key, the bounded
queue, and isolation of settings under concurrency."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import httpx
import openai
import pytest
from typer.testing import CliRunner

from persona_axis.application.session import ChatSession
from persona_axis.axis.bundle import AxisBundle
from persona_axis.cli import app as cli_app
from persona_axis.drift.profile import drift_rule
from persona_axis.errors import PersonaAxisError
from persona_axis.inference.generation import Sampling
from persona_axis.inference.interventions import InterventionSpec
from persona_axis.models import LoadedModel
from persona_axis.serve.app import create_app
from persona_axis.serve.engine import LOCK_KEY, DeltaDecoder
from persona_axis.serve.routes import STATIC
from persona_axis.serve.runner import background_server
from support.bundles import CAP, WEAK_CAP
from support.bundles import serving_bundle as make_bundle
from support.polling import wait_for
from support.tiny_models import build_tiny, styled_tokenizer, tiny_lm

PROMPTS = [
    "Hello there",
    "What is two plus two?",
    "Tell me a story about a cat who lived in a lighthouse by the sea.",
    "Hi",
    "Explain gravity in one sentence, please.",
    "Why?",
    "Who are you, really?",
    "List three colours.",
]

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def lm() -> LoadedModel:
    return tiny_lm("llama")


@pytest.fixture(scope="module")
def bundle(lm: LoadedModel) -> AxisBundle:
    return make_bundle(lm)


@pytest.fixture(scope="module")
def url(lm: LoadedModel, bundle: AxisBundle) -> Iterator[str]:
    app = create_app(
        lm,
        bundle,
        default_cap="none",
        max_tokens_limit=32,
        default_max_tokens=6,
        max_input_tokens=120,
        max_body_bytes=20_000,
        max_batch=8,
    )
    with background_server(app) as base:
        yield base


@pytest.fixture(scope="module")
def client(url: str) -> openai.OpenAI:
    return openai.OpenAI(base_url=f"{url}/v1", api_key="unused", max_retries=0)


def ask(url: str, body: dict[str, Any], **kwargs: Any) -> httpx.Response:
    return httpx.post(f"{url}/v1/chat/completions", json=body, timeout=60, **kwargs)


def user(text: str) -> list[dict[str, str]]:
    return [{"role": "user", "content": text}]


# -- the official client ----------------------------------------------------------------------


def test_openai_client_lists_the_model_and_completes(client: openai.OpenAI, lm) -> None:
    assert [m.id for m in client.models.list().data] == [lm.name]
    reply = client.chat.completions.create(model=lm.name, messages=user("Hello"), max_tokens=5)
    choice = reply.choices[0]
    assert choice.message.role == "assistant" and isinstance(choice.message.content, str)
    assert choice.finish_reason in {"stop", "length"}
    assert reply.usage is not None and 1 <= reply.usage.completion_tokens <= 5
    telemetry = reply.model_extra["persona_axis"]
    assert telemetry["cap"] is None and telemetry["layer"] == 2
    assert telemetry["cap_touched_fraction"] is None  # no cap: nothing to touch
    assert_level_is_the_rules(telemetry, make_bundle(lm))


def test_openai_client_streams_the_same_reply(client: openai.OpenAI, lm) -> None:
    messages = user("Tell me a story about a cat.")
    whole = client.chat.completions.create(model=lm.name, messages=messages, max_tokens=12)
    stream = client.chat.completions.create(
        model=lm.name,
        messages=messages,
        max_tokens=12,
        stream=True,
        stream_options={"include_usage": True},
    )
    chunks = list(stream)
    pieces = [
        c.choices[0].delta.content for c in chunks if c.choices and c.choices[0].delta.content
    ]
    assert "".join(pieces) == whole.choices[0].message.content
    assert len(pieces) > 1  # token by token, not one block at the end
    final = next(c for c in chunks if c.choices and c.choices[0].finish_reason)
    assert final.choices[0].finish_reason == whole.choices[0].finish_reason
    telemetry = final.model_extra["persona_axis"]
    assert telemetry["projection_before"] == pytest.approx(
        whole.model_extra["persona_axis"]["projection_before"], abs=1e-5
    )
    assert chunks[-1].usage is not None
    assert chunks[-1].usage.completion_tokens == whole.usage.completion_tokens


# -- per-request settings ---------------------------------------------------------------------


def test_per_request_settings_change_the_reply_and_the_telemetry(url: str) -> None:
    replies = {}
    for name, options in {
        "default": None,
        "none": {"cap": "none"},
        "cap": {"cap": CAP},
        "steer": {"steer": -4.0},
    }.items():
        body: dict[str, Any] = {"messages": user("Who are you, really?"), "max_tokens": 12}
        if options is not None:
            body["persona_axis"] = options
        response = ask(url, body)
        assert response.status_code == 200, response.text
        replies[name] = response.json()
    text = {name: r["choices"][0]["message"]["content"] for name, r in replies.items()}
    telemetry = {name: r["persona_axis"] for name, r in replies.items()}
    assert text["default"] == text["none"]  # the server's --cap is none here
    assert text["cap"] != text["none"] and text["steer"] != text["none"]
    capped = telemetry["cap"]
    assert capped["cap"] == CAP and capped["steer"] is None
    assert 0 < capped["cap_touched_fraction"] <= 1 and capped["cap_touched_tokens"] >= 1
    # the target layer (2) is capped: the floor lifts its projection
    assert capped["projection_after"] >= capped["projection_before"] - 1e-5
    assert [c["layer"] for c in capped["cap_layers"]] == [1, 2]
    for layer in capped["cap_layers"]:
        assert layer["after"] >= layer["floor"] - 1e-5 and layer["after"] >= layer["before"]
    assert telemetry["steer"]["steer"] == -4.0 and telemetry["steer"]["cap"] is None
    for t in telemetry.values():
        assert t["drift_reading"]["level"] in {"none", "watch", "warning", "alarm"}
        assert t["drift"] == (t["drift_reading"]["level"] == "alarm")


def test_server_telemetry_equals_a_chat_session(url: str, lm, bundle) -> None:
    response = ask(url, {"messages": user("List three colours."), "persona_axis": {"cap": CAP}})
    served = response.json()
    session = ChatSession(
        lm,
        bundle=bundle,
        spec=InterventionSpec.from_floors(bundle.cap_floors(CAP)),
        sampling=Sampling(max_new_tokens=6),
    )
    with lm.extra[LOCK_KEY]:  # the server's worker may not generate meanwhile
        turn = session.send("List three colours.")
    assert served["choices"][0]["message"]["content"] == turn.reply.text
    telemetry = served["persona_axis"]
    assert telemetry["projection_before"] == pytest.approx(turn.before, abs=1e-5)
    assert telemetry["projection_after"] == pytest.approx(turn.after, abs=1e-5)
    assert telemetry["cap_touched_fraction"] == pytest.approx(turn.touched, abs=1e-6)


def test_the_library_and_the_server_share_one_generation_core(url: str, lm, bundle) -> None:
    """``pa.generate`` and the server run the same engine: each chat of a sampled, capped and
    steered library call gives the tokens and telemetry of one server request with its row's
    seed (:func:`~persona_axis.inference.engine.row_seed`). Projections within 1e-4 (the
    library runs the three chats in one left-padded batch, the server each alone)."""
    import persona_axis as pa
    from persona_axis.inference.engine import row_seed

    chats = [user(p) for p in PROMPTS[:3]]
    sampling = Sampling(max_new_tokens=8, temperature=0.9, top_p=0.9, seed=5)
    with lm.extra[LOCK_KEY]:  # the server's worker may not generate meanwhile
        turns = pa.generate(lm, bundle, chats, cap=CAP, steer=1.0, sampling=sampling)
    for index, (chat, turn) in enumerate(zip(chats, turns, strict=True)):
        body = {
            "messages": chat,
            "max_tokens": 8,
            "temperature": 0.9,
            "top_p": 0.9,
            "seed": row_seed(5, index),
            "persona_axis": {"cap": CAP, "steer": 1.0},
        }
        served = ask(url, body).json()
        assert served["choices"][0]["message"]["content"] == turn.reply.text
        assert served["usage"]["completion_tokens"] == len(turn.reply.token_ids)
        telemetry = served["persona_axis"]
        assert telemetry["projection_before"] == pytest.approx(turn.before, abs=1e-4)
        assert telemetry["projection_after"] == pytest.approx(turn.after, abs=1e-4)
        assert telemetry["cap_touched_fraction"] == pytest.approx(turn.touched, abs=1e-6)
        assert telemetry["cap_touched_tokens"] == turn.touched_tokens
        assert turn.cap_layers is not None
        got = {c["layer"]: (c["before"], c["after"]) for c in telemetry["cap_layers"]}
        assert got.keys() == turn.cap_layers.keys()
        for layer, pair in turn.cap_layers.items():
            assert got[layer] == pytest.approx(pair, abs=1e-4)


# -- bad input --------------------------------------------------------------------------------

GOOD = {"messages": [{"role": "user", "content": "Hi"}]}


@pytest.mark.parametrize(
    ("body", "status", "fragment"),
    [
        (b"{not json", 400, "not valid JSON"),
        (b"[1, 2]", 400, "JSON object"),
        ({**GOOD, "persona_axis": {"cap": "layers_9:9-p1"}}, 400, "available"),
        ({**GOOD, "persona_axis": {"cap": CAP, "colour": 1}}, 400, "persona_axis.colour"),
        ({**GOOD, "persona_axis": {"steer": 100}}, 400, "steer"),
        ({"messages": [{"role": "wizard", "content": "Hi"}]}, 400, "role"),
        ({"messages": [{"role": "tool", "content": "Hi"}]}, 400, "no tool"),
        ({"messages": []}, 400, "empty"),
        ({"model": "x"}, 400, "messages"),
        ({"messages": [{"role": "user", "content": "   "}]}, 400, "empty"),
        (
            {"messages": [*GOOD["messages"], {"role": "assistant", "content": "Yo"}]},
            400,
            "end the conversation",
        ),
        (
            {"messages": [*GOOD["messages"], {"role": "system", "content": "late"}, *user("x")]},
            400,
            "first message",
        ),
        ({"messages": user("word " * 200)}, 400, "at most 120"),
        ({**GOOD, "max_tokens": 33}, 400, "1..32"),
        ({**GOOD, "max_tokens": 0}, 400, "1..32"),
        ({**GOOD, "max_tokens": "lots"}, 400, "max_tokens"),
        ({**GOOD, "temperature": -1}, 400, "temperature"),
        ({**GOOD, "n": 2}, 400, "n = 1"),
        ({**GOOD, "stop": ["\n"]}, 400, "'stop' is not supported"),
        ({**GOOD, "model": "gpt-4o"}, 404, "not served"),
        (
            {"messages": [{"role": "user", "content": [{"type": "image_url"}]}]},
            400,
            "only text",
        ),
        ({"messages": user("x" * 30_000)}, 413, "larger than"),
    ],
)
def test_bad_input_gets_a_clear_4xx(url: str, body: Any, status: int, fragment: str) -> None:
    if isinstance(body, bytes):
        response = httpx.post(
            f"{url}/v1/chat/completions",
            content=body,
            headers={"Content-Type": "application/json"},
            timeout=30,
        )
    else:
        response = ask(url, body)
    assert response.status_code == status, response.text
    error = response.json()["error"]
    assert fragment in error["message"], error
    assert error["type"]


def test_the_server_keeps_serving_after_bad_input(url: str, client: openai.OpenAI, lm) -> None:
    for _ in range(3):
        assert ask(url, {"messages": []}).status_code == 400
        assert httpx.get(f"{url}/nowhere").status_code == 404
    with pytest.raises(openai.BadRequestError, match="available"):
        client.chat.completions.create(
            model=lm.name, messages=user("Hi"), extra_body={"persona_axis": {"cap": "nope"}}
        )
    assert httpx.get(f"{url}/health").json()["status"] == "ok"
    assert client.chat.completions.create(model=lm.name, messages=user("Hi")).choices


def test_metrics_are_exposed(url: str) -> None:
    ask(url, {**GOOD, "persona_axis": {"cap": CAP}})
    text = httpx.get(f"{url}/metrics").text
    for name in (
        "persona_axis_completions_total",
        "persona_axis_batch_size_bucket",
        "persona_axis_queue_depth",
        "persona_axis_cap_touched_fraction_bucket",
        'persona_axis_http_requests_total{route="/v1/chat/completions",status="400"}',
    ):
        assert name in text
    assert f'persona_axis_completions_total{{cap="{CAP}"}}' in text


def test_the_page_and_its_files_are_served_without_external_resources(url: str) -> None:
    page = httpx.get(f"{url}/")
    assert page.status_code == 200 and "persona-axis" in page.text
    assert "default-src 'self'" in page.headers["content-security-policy"]
    for name in ("app.js", "style.css"):
        assert httpx.get(f"{url}/static/{name}").status_code == 200
    for path in STATIC.iterdir():
        assert "//cdn" not in path.read_text() and "https://" not in path.read_text()


# -- API key ----------------------------------------------------------------------------------


def test_api_key_is_required_when_set(lm, bundle) -> None:
    app = create_app(lm, bundle, api_key="s3cret", default_max_tokens=4)
    with background_server(app) as base:
        assert httpx.get(f"{base}/v1/models").status_code == 401
        wrong = httpx.post(
            f"{base}/v1/chat/completions",
            json=GOOD,
            headers={"Authorization": "Bearer nope"},
        )
        assert wrong.status_code == 401 and "API key" in wrong.json()["error"]["message"]
        assert httpx.get(f"{base}/health").status_code == 200  # open for probes
        with pytest.raises(openai.AuthenticationError):
            openai.OpenAI(base_url=f"{base}/v1", api_key="nope", max_retries=0).models.list()
        good = openai.OpenAI(base_url=f"{base}/v1", api_key="s3cret", max_retries=0)
        assert good.chat.completions.create(model=lm.name, messages=user("Hi")).choices


# -- queue ------------------------------------------------------------------------------------


def test_a_full_queue_answers_429_and_recovers(lm, bundle) -> None:
    app = create_app(lm, bundle, max_queue=1, max_batch=1)
    lock = lm.extra[LOCK_KEY]
    with background_server(app) as base, ThreadPoolExecutor(4) as pool:
        lock.acquire()  # the worker blocks inside its first batch
        try:
            first = pool.submit(ask, base, GOOD)
            wait_for(lambda: httpx.get(f"{base}/health").json()["generating"] == 1)
            second = pool.submit(ask, base, GOOD)  # fills the queue of one
            wait_for(lambda: httpx.get(f"{base}/health").json()["queued"] == 1)
            third = ask(base, GOOD)
        finally:
            lock.release()
        assert third.status_code == 429, third.text
        assert third.headers["retry-after"] == "1"
        assert "busy" in third.json()["error"]["message"]
        assert first.result().status_code == 200 and second.result().status_code == 200
        assert ask(base, GOOD).status_code == 200
        assert "persona_axis_queue_rejections_total 1.0" in httpx.get(f"{base}/metrics").text


# -- isolation under concurrency --------------------------------------------------------------

SETTINGS: list[dict[str, Any]] = [
    {"cap": "none"},
    {"cap": CAP},
    {"steer": -4.0},
    {"cap": CAP, "steer": 2.0},
    {"cap": WEAK_CAP},
]


def _request(url: str, prompt: str, options: dict[str, Any], stream: bool) -> str:
    body = {"messages": user(prompt), "max_tokens": 8, "persona_axis": options}
    if not stream:
        response = ask(url, body)
        assert response.status_code == 200, response.text
        return str(response.json()["choices"][0]["message"]["content"])
    pieces = []
    with httpx.stream("POST", f"{url}/v1/chat/completions", json={**body, "stream": True}) as r:
        assert r.status_code == 200
        for line in r.iter_lines():
            if line.startswith("data: ") and line != "data: [DONE]":
                event = json.loads(line[6:])
                assert "error" not in event, event
                pieces.append(event["choices"][0]["delta"].get("content") or "")
    return "".join(pieces)


def test_mixed_settings_under_concurrency_match_requests_run_alone(url: str) -> None:
    cases = [(p, i) for p in PROMPTS for i in range(len(SETTINGS))]  # 40 distinct requests
    alone = {(p, i): _request(url, p, SETTINGS[i], False) for p, i in cases}
    assert len({alone[(p, i)] for p in PROMPTS[:3] for i in range(len(SETTINGS))}) > 5
    jobs = [(cases[k % len(cases)], k % 3 == 0) for k in range(208)]  # a third stream
    before = _batches(url)
    with ThreadPoolExecutor(16) as pool:
        results = list(
            pool.map(lambda job: _request(url, job[0][0], SETTINGS[job[0][1]], job[1]), jobs)
        )
    mismatches = [
        (job, got) for job, got in zip(jobs, results, strict=True) if got != alone[job[0]]
    ]
    assert not mismatches, mismatches[:3]
    steps, rows = (a - b for a, b in zip(_batches(url), before, strict=True))
    assert rows / steps > 2  # requests of every setting shared decoding steps


def test_the_static_scheduler_is_refused_with_the_reason(lm, bundle) -> None:
    with pytest.raises(PersonaAxisError, match="static scheduler was removed"):
        create_app(lm, bundle, scheduler="static")  # type: ignore[arg-type]
    result = CliRunner().invoke(cli_app, ["serve", "--bundle", "x", "--scheduler", "static"])
    assert isinstance(result.exception, PersonaAxisError), result.output
    assert "static scheduler was removed" in str(result.exception)


def _batches(url: str) -> tuple[float, float]:
    """(batches or decoding steps run, requests or rows in them) so far, from /metrics."""
    values = {}
    for line in httpx.get(f"{url}/metrics").text.splitlines():
        for name in ("persona_axis_batch_size_count", "persona_axis_batch_size_sum"):
            if line.startswith(name + " "):
                values[name] = float(line.split()[1])
    return values["persona_axis_batch_size_count"], values["persona_axis_batch_size_sum"]


# -- pieces -----------------------------------------------------------------------------------


def assert_level_is_the_rules(telemetry: dict[str, Any], bundle: AxisBundle) -> None:
    """A first reply's level is the one drift rule's verdict on its projection alone."""
    rule = drift_rule(bundle)
    verdict = rule.judge([telemetry["projection_before"]])[0]
    reading = telemetry["drift_reading"]
    assert reading["turn"] == 1 and reading["level"] == verdict.level
    assert reading["shortfall"] == pytest.approx(verdict.shortfall, abs=1e-4)
    assert telemetry["drift"] == (verdict.level == "alarm")


def test_bundles_without_percentiles_serve_without_a_drift_flag(lm) -> None:
    app = create_app(lm, make_bundle(lm, with_percentiles=False), default_max_tokens=4)
    with background_server(app) as base:
        telemetry = ask(base, GOOD).json()["persona_axis"]
    assert telemetry["drift"] is None and telemetry["drift_reading"]["level"] == "none"
    assert telemetry["cap"] == CAP  # the default cap is the bundle's recommended one
    assert isinstance(telemetry["projection_before"], float)


def test_delta_decoder_streams_exactly_the_final_text(lm) -> None:
    tokenizer = lm.tokenizer
    text = "  Héllo, wörld! ✓ done  "
    ids = tokenizer(text, add_special_tokens=False)["input_ids"]
    decoder = DeltaDecoder(tokenizer, {tokenizer.eos_token_id})
    sent = "".join(decoder.push(i) for i in [*ids, tokenizer.eos_token_id, 5])
    final = str(tokenizer.decode(ids, skip_special_tokens=True)).strip()
    assert final.startswith(sent)
    assert sent + decoder.finish(final) == final
    assert "\ufffd" not in sent


# -- the command line -------------------------------------------------------------------------


def test_serve_command_with_an_api_key_from_the_environment(tmp_path: Path, lm) -> None:
    model_dir = tmp_path / "model"
    build_tiny("llama").save_pretrained(model_dir)
    styled_tokenizer("chatml").save_pretrained(model_dir)
    bundle_dir = make_bundle(lm).save(tmp_path / "bundle")
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    env = {**os.environ, "PERSONA_AXIS_API_KEY": "k3y", "OMP_NUM_THREADS": "1"}
    command = [sys.executable, "-m", "persona_axis.cli", "serve", "--model", str(model_dir)]
    command += ["--bundle", str(bundle_dir), "--port", str(port), "--cap", "none"]
    process = subprocess.Popen(command, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    try:
        base = f"http://127.0.0.1:{port}"
        deadline = time.monotonic() + 60
        while True:
            try:
                if httpx.get(f"{base}/health").status_code == 200:
                    break
            except httpx.TransportError:
                pass
            assert process.poll() is None, process.stdout.read().decode()  # type: ignore[union-attr]
            assert time.monotonic() < deadline
            time.sleep(0.2)
        assert httpx.get(f"{base}/v1/models").status_code == 401
        keyed = openai.OpenAI(base_url=f"{base}/v1", api_key="k3y", max_retries=0)
        reply = keyed.chat.completions.create(model=str(model_dir), messages=user("Hi"))
        assert reply.model_extra["persona_axis"]["cap"] is None
    finally:
        process.terminate()
        process.wait(30)


def test_serve_command_refuses_a_missing_bundle_before_loading_the_model(tmp_path: Path) -> None:
    result = CliRunner().invoke(cli_app, ["serve", "--bundle", str(tmp_path / "missing")])
    assert isinstance(result.exception, PersonaAxisError), result.output
    assert "missing" in str(result.exception)


def test_one_model_two_apps_take_turns(lm, bundle, url: str) -> None:
    """A second app on the same model shares the generation lock, so hooks never mix."""
    other = create_app(lm, bundle, default_cap=CAP, default_max_tokens=8)
    with background_server(other) as base, ThreadPoolExecutor(8) as pool:
        alone_plain = ask(url, {"messages": user("Hi"), "max_tokens": 8}).json()
        alone_capped = ask(base, {"messages": user("Hi"), "max_tokens": 8}).json()
        futures = [
            pool.submit(ask, [url, base][k % 2], {"messages": user("Hi"), "max_tokens": 8})
            for k in range(16)
        ]
        texts = [f.result().json()["choices"][0]["message"]["content"] for f in futures]
    expected = [alone_plain, alone_capped]
    assert texts == [expected[k % 2]["choices"][0]["message"]["content"] for k in range(16)]
    thread_names = {t.name for t in threading.enumerate()}
    assert "persona-axis-worker" in thread_names
