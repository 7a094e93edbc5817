"""What the server refuses and how: keys, Host and Origin allow-lists, bodies too large or too
slow (answered before the body is read), out-of-range inputs (400, never 500), unexpected
failures (a JSON 500 with an error id and no exception text), and the bounded per-bundle
intervention cache with its steering scale fixed at load."""

from __future__ import annotations

import json
import logging
from typing import Any

import httpx
import pytest

from persona_axis.errors import PersonaAxisError
from persona_axis.models import LoadedModel
from persona_axis.serve.app import create_app
from persona_axis.serve.engine import SPEC_CACHE, Engine
from persona_axis.serve.runner import background_server
from support.bundles import make_bundle
from support.raw_http import raw_request
from support.tiny_models import tiny_lm

KEY = "k3y"
AUTH = {"Authorization": f"Bearer {KEY}"}


@pytest.fixture(scope="module")
def lm() -> LoadedModel:
    return tiny_lm("llama")


def serving(lm: LoadedModel, **options: Any) -> Any:
    """The app over a test bundle, uncapped unless ``options`` say otherwise."""
    return create_app(lm, make_bundle(lm), **{"default_cap": "none", **options})


def chat(**extra: Any) -> dict[str, Any]:
    return {"messages": [{"role": "user", "content": "Hi"}], "max_tokens": 2, **extra}


def test_an_empty_key_is_refused(lm) -> None:
    for options in ({"api_key": ""}, {"admin_key": "  "}):
        with pytest.raises(PersonaAxisError, match="is empty"):
            serving(lm, **options)


def test_pages_of_other_origins_and_other_host_names_are_refused(lm) -> None:
    app = serving(
        lm,
        allowed_hosts=["127.0.0.1", "localhost"],
        allowed_origins=["https://chat.example.org"],
    )
    with background_server(app) as base:
        models = f"{base}/v1/models"
        assert httpx.get(models).status_code == 200  # no Origin: not a browser page
        assert httpx.get(models, headers={"Origin": base}).status_code == 200  # our own page
        assert httpx.get(models, headers={"Origin": "https://chat.example.org"}).status_code == 200
        for origin in ("https://evil.example", "null", base.replace("127.0.0.1", "localhost")):
            refused = httpx.post(
                f"{base}/v1/chat/completions", json=chat(), headers={"Origin": origin}
            )
            assert refused.status_code == 403, origin
            assert refused.json()["error"]["code"] == "origin_not_allowed"
        # A DNS-rebinding page reaches 127.0.0.1 under its own name, as its own origin.
        rebound = {"Host": "evil.example:80", "Origin": "http://evil.example:80"}
        refused = httpx.get(models, headers=rebound)
        assert refused.status_code == 403 and refused.json()["error"]["code"] == "host_not_allowed"
        assert httpx.get(models, headers={"Host": "localhost"}).status_code == 200


def test_keys_and_size_are_checked_before_the_body_is_read(lm) -> None:
    app = serving(lm, api_key=KEY, max_body_bytes=2048, body_timeout_s=1.0)
    with background_server(app) as base:
        path = "/v1/chat/completions"
        # Declares 10 MB and sends none of it: answered at once, not after reading a body.
        status, _, seconds = raw_request(base, path, {"Content-Length": str(10**7)})
        assert status == 401 and seconds < 5
        keyed = {**AUTH, "Content-Length": str(10**7)}
        status, _, seconds = raw_request(base, path, keyed)
        assert status == 413 and seconds < 5
        # Streamed past the limit without a declared length.
        chunked = {**AUTH, "Transfer-Encoding": "chunked"}
        pieces = [b"400\r\n" + b"x" * 1024 + b"\r\n"] * 4
        status, _, _ = raw_request(base, path, chunked, pieces)
        assert status == 413
        # Dripped one byte at a time: 408 once body_timeout_s has passed.
        drip = {**AUTH, "Content-Length": "100"}
        status, answer, seconds = raw_request(base, path, drip, [b"{"] * 20, pause_s=0.2)
        assert status == 408 and b"body_timeout" in answer and seconds < 10
        ok = httpx.post(f"{base}{path}", json=chat(), headers=AUTH, timeout=60)
        assert ok.status_code == 200, ok.text  # still serving


@pytest.mark.parametrize(
    ("body", "param"),
    [
        (chat(seed=10**30), "seed"),
        (chat(seed=-1), "seed"),
        (chat(temperature=1e-300), "temperature"),
        (chat(temperature=3), "temperature"),
        (chat(top_p=0), "top_p"),
        (chat(max_tokens=10**30), "max_tokens"),
        (chat(max_tokens=-5), "max_tokens"),
        (chat(model="m" * 300), "model"),
        (chat(persona_axis={"bundle": "b" * 300}), "persona_axis.bundle"),
        (chat(persona_axis={"steer": 1e308}), "persona_axis"),
        ({"messages": [{"role": "user", "content": "Hi"}] * 600}, "messages"),
        ({"messages": [{"role": "user", "content": "x" * 200_001}]}, "messages.0.content"),
        ({"messages": [{"role": "r" * 300, "content": "Hi"}]}, "messages.0.role"),
    ],
)
def test_out_of_range_inputs_are_400s(lm, body, param) -> None:
    app = serving(lm, max_body_bytes=10**7)
    with background_server(app) as base:
        answer = httpx.post(f"{base}/v1/chat/completions", json=body, timeout=60)
        assert answer.status_code == 400, answer.text
        assert answer.json()["error"]["param"].startswith(param)


def test_json_with_nan_is_refused(lm) -> None:
    app = serving(lm)
    with background_server(app) as base:
        for text in ('{"messages": [], "temperature": NaN}', "[" * 100_000):
            answer = httpx.post(
                f"{base}/v1/chat/completions",
                content=text,
                headers={"Content-Type": "application/json"},
            )
            assert answer.status_code == 400 and "not valid JSON" in answer.text


def test_an_unexpected_failure_is_a_json_500_without_its_text(lm, caplog) -> None:
    app = serving(lm)

    def broken(conversation: Any) -> int:
        raise RuntimeError("secret detail /srv/private")

    app.state.engine.prompt_length = broken
    with background_server(app) as base, caplog.at_level(logging.ERROR):
        answer = httpx.post(f"{base}/v1/chat/completions", json=chat())
        assert answer.status_code == 500
        error = answer.json()["error"]
        assert error["code"] == "internal_error" and "secret" not in answer.text
        ident = error["message"].split("(id ", 1)[1].split(")")[0]
        assert any(ident in r.getMessage() for r in caplog.records)
        assert any("secret detail" in str(r.exc_info) for r in caplog.records)
        assert httpx.get(f"{base}/health").status_code == 200


def test_steer_is_rounded_and_the_spec_cache_is_bounded(lm) -> None:
    bundle = make_bundle(lm)  # no stored mean norm: estimated once, at load
    calls = []
    estimate = bundle.mean_norms

    def counted(model: Any = None) -> Any:
        calls.append(1)
        return estimate(model)

    bundle.mean_norms = counted  # type: ignore[method-assign]
    engine = Engine(lm, bundle, default_cap="none")
    assert len(calls) == 1
    served = engine.served(None)
    assert engine.setting(None, 0.123456).steer == 0.12
    assert engine.setting(None, 0.004).steer is None  # rounds to 0: no steering
    for k in range(3 * SPEC_CACHE):
        spec = served.spec(engine.setting(None, 0.01 + k / 100))
        assert spec.interventions
    assert served._spec.cache_info().currsize == SPEC_CACHE
    assert len(calls) == 1, "no norm pass after load"
    one = served.spec(engine.setting(None, 0.5)).interventions[0]
    assert float(one.coefficient) == pytest.approx(0.5 * served.mean_norm)


def test_openapi_schema_describes_the_bodies(lm) -> None:
    app = serving(lm)
    with background_server(app) as base:
        schema = httpx.get(f"{base}/openapi.json").json()
    body = schema["paths"]["/v1/chat/completions"]["post"]["requestBody"]
    assert body["content"]["application/json"]["schema"]["$ref"].endswith("/ChatRequest")
    assert "messages" in schema["components"]["schemas"]["ChatRequest"]["properties"]
    json.dumps(schema, allow_nan=False)
