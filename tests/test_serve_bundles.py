"""Several bundles per server, the admin routes, and clients that leave mid-reply (continuous
batching), against a real uvicorn server on 127.0.0.1."""

from __future__ import annotations

import json
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import httpx
import pytest

from persona_axis.application.session import ChatSession
from persona_axis.axis.bundle import AxisBundle
from persona_axis.cli.serve import parse_bundles
from persona_axis.errors import PersonaAxisError
from persona_axis.inference.generation import Sampling
from persona_axis.models import LoadedModel
from persona_axis.serve.app import create_app
from persona_axis.serve.engine import LOCK_KEY
from persona_axis.serve.runner import background_server
from support.bundles import cap_setting, make_bundle
from support.polling import wait_for
from support.tiny_models import tiny_lm

pytestmark = pytest.mark.slow
KEY = "adm1n"
USER_KEY = "us3r"
AUTH = {"Authorization": f"Bearer {KEY}"}


def bundle_of(lm: LoadedModel, seed: int, cap: str, layers: tuple[int, ...]) -> AxisBundle:
    return make_bundle(
        lm,
        seed=seed,
        model_id="tiny-llama",
        caps=[cap_setting(cap, dict.fromkeys(layers, 0.5), 75, "test")],
        recommended=cap,
        mean_norm=1.5,
        target_layer=1,
    )


@pytest.fixture(scope="module")
def lm() -> LoadedModel:
    return tiny_lm("llama")


def ask(base: str, body: dict[str, Any], **kwargs: Any) -> httpx.Response:
    return httpx.post(f"{base}/v1/chat/completions", json=body, timeout=60, **kwargs)


def chat(text: str, options: dict[str, Any], max_tokens: int = 8) -> dict[str, Any]:
    messages = [{"role": "user", "content": text}]
    return {"messages": messages, "max_tokens": max_tokens, "persona_axis": options}


def test_requests_choose_their_bundle_and_unknown_names_are_refused(lm) -> None:
    first, second = bundle_of(lm, 0, "layers_1:3-p75", (1, 2)), bundle_of(lm, 1, "b-cap", (2,))
    app = create_app(lm, {"first": first, "second": second}, default_max_tokens=8)
    with background_server(app) as base, ThreadPoolExecutor(4) as pool:
        info = httpx.get(f"{base}/v1/persona_axis").json()
        assert info["default_bundle"] == "first" and sorted(info["bundles"]) == ["first", "second"]
        bodies = [chat("Who are you?", {"bundle": name}) for name in ("first", "second")] * 2
        bodies.append(chat("Who are you?", {}))
        answers = [r.json() for r in pool.map(lambda body: ask(base, body), bodies)]
        refused = ask(base, chat("Hi", {"bundle": "third"}))
    telemetry = [a["persona_axis"] for a in answers]
    assert [t["bundle"] for t in telemetry] == ["first", "second", "first", "second", "first"]
    assert telemetry[1]["cap"] == "b-cap" and [c["layer"] for c in telemetry[1]["cap_layers"]] == [
        2
    ]
    for served, name in ((first, 0), (second, 1)):  # each equals a chat session on its bundle
        session = ChatSession.open(lm, served, cap="recommended", sampling=Sampling(8))
        with lm.extra[LOCK_KEY]:
            turn = session.send("Who are you?")
        assert answers[name]["choices"][0]["message"]["content"] == turn.reply.text
        assert telemetry[name]["projection_before"] == pytest.approx(turn.before, abs=1e-4)
    assert refused.status_code == 400
    assert "available: ['first', 'second']" in refused.json()["error"]["message"]


def test_admin_routes_load_and_unload_bundles_without_dropping_requests(lm, tmp_path) -> None:
    root = tmp_path / "root"
    extra_dir = bundle_of(lm, 2, "x-cap", (1,)).save(root / "extra")
    app = create_app(
        lm,
        bundle_of(lm, 0, "c", (1,)),
        api_key=USER_KEY,
        admin_key=KEY,
        bundle_roots=[root],
        max_tokens_limit=64,
    )
    user = {"Authorization": f"Bearer {USER_KEY}"}
    with background_server(app) as base, ThreadPoolExecutor(2) as pool:
        admin = f"{base}/v1/admin/bundles"
        assert httpx.get(admin).status_code == 401
        assert httpx.get(admin, headers=user).status_code == 401  # the API key is not admin
        missing = httpx.post(admin, json={"name": "x", "path": str(root / "nowhere")}, headers=AUTH)
        assert missing.status_code == 400  # inside the root: the error may say why
        loaded = httpx.post(admin, json={"name": "extra", "path": "extra"}, headers=AUTH)
        assert loaded.status_code == 201 and set(loaded.json()["bundles"]) == {"default", "extra"}
        again = httpx.post(admin, json={"name": "extra", "path": str(extra_dir)}, headers=AUTH)
        assert again.status_code == 409
        lock = lm.extra[LOCK_KEY]
        with lock:  # hold generation so the request is surely in flight during the unload
            long = pool.submit(
                ask, base, chat("Tell me a story.", {"bundle": "extra"}, 40), headers=user
            )
            wait_for(lambda: httpx.get(f"{base}/health").json()["generating"] == 1)
            gone = httpx.delete(f"{admin}/extra", headers=AUTH)
        assert gone.status_code == 200 and list(gone.json()["bundles"]) == ["default"]
        finished = long.result()
        assert finished.status_code == 200 and finished.json()["persona_axis"]["bundle"] == "extra"
        after = ask(base, chat("Hi", {"bundle": "extra"}), headers=user)
        assert after.status_code == 400 and "available: ['default']" in after.text
        assert httpx.delete(f"{admin}/default", headers=AUTH).status_code == 409
        assert httpx.delete(f"{admin}/nope", headers=AUTH).status_code == 404


def test_admin_loads_only_from_the_bundle_roots_and_reveal_nothing_outside(lm, tmp_path) -> None:
    root, outside = tmp_path / "root", tmp_path / "outside"
    bundle_of(lm, 2, "x-cap", (1,)).save(outside / "real")
    (root).mkdir()
    (root / "link").symlink_to(outside / "real")  # a link out of the root is outside too
    app = create_app(lm, bundle_of(lm, 0, "c", (1,)), admin_key=KEY, bundle_roots=[root])
    with background_server(app) as base:
        admin = f"{base}/v1/admin/bundles"
        answers = [
            httpx.post(admin, json={"name": "x", "path": path}, headers=AUTH)
            for path in (str(outside / "real"), str(outside / "nowhere"), "/etc", "link", "../x")
        ]
        assert {a.status_code for a in answers} == {403}
        assert len({a.text for a in answers}) == 1, "the same answer whether the path exists"
        assert answers[0].json()["error"]["code"] == "path_not_allowed"
    for options, code in [
        ({}, "admin_disabled"),  # no admin key: admin routes off
        ({"admin_key": KEY}, "admin_load_disabled"),  # no roots: loads off
    ]:
        with background_server(create_app(lm, bundle_of(lm, 0, "c", (1,)), **options)) as base:
            body = {"name": "x", "path": str(outside / "real")}
            refused = httpx.post(f"{base}/v1/admin/bundles", json=body, headers=AUTH)
            assert refused.status_code == 403 and refused.json()["error"]["code"] == code


def test_a_client_that_leaves_mid_reply_is_dropped_and_the_others_go_on(lm) -> None:
    app = create_app(lm, bundle_of(lm, 0, "c", (1,)), default_cap="none", max_tokens_limit=400)
    with background_server(app) as base, ThreadPoolExecutor(2) as pool:
        alone = ask(base, chat("List three colours.", {}, 12)).json()
        lock = lm.extra[LOCK_KEY]
        released = False
        lock.acquire()  # both requests join one batch
        try:
            other = pool.submit(ask, base, chat("List three colours.", {}, 12))
            with httpx.stream(
                "POST",
                f"{base}/v1/chat/completions",
                json={**chat("Tell me a long story.", {}, 400), "stream": True},
                timeout=60,
            ) as response:
                lines = response.iter_lines()
                first = json.loads(next(lines)[len("data: ") :])
                assert first["choices"][0]["delta"]["role"] == "assistant"
                wait_for(lambda: _in_flight(base) == 2)
                lock.release()
                released = True
                next(lines)  # a token arrived; now leave
            # the stream is closed: its row leaves the batch long before 400 tokens
        finally:
            if not released:
                lock.release()
        assert other.result().json()["choices"] == alone["choices"]
        wait_for(lambda: httpx.get(f"{base}/health").json()["generating"] == 0, timeout=30)
        metrics = httpx.get(f"{base}/metrics").text
    tokens = [
        line
        for line in metrics.splitlines()
        if line.startswith("persona_axis_completion_tokens_total")
    ]
    assert sum(float(line.split()[-1]) for line in tokens) < 100  # the long reply never finished


def _in_flight(base: str) -> int:
    health = httpx.get(f"{base}/health").json()
    return int(health["generating"] + health["queued"])


def test_bundle_options_parse_names_and_plain_directories(tmp_path: Path) -> None:
    plain = tmp_path / "a=b"
    plain.mkdir()
    assert parse_bundles(["x=/d1", "y=/d2"]) == {"x": "/d1", "y": "/d2"}
    assert parse_bundles(["/d0", "y=/d2"]) == {"default": "/d0", "y": "/d2"}
    assert parse_bundles([str(plain)]) == {"default": str(plain)}  # an existing path wins
    with pytest.raises(PersonaAxisError, match="own name"):
        parse_bundles(["x=/d1", "x=/d2"])
