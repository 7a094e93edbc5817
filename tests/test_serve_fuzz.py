"""HTTP fuzzing with schemathesis against the server's OpenAPI schema (``/openapi.json``), on
a real uvicorn server on 127.0.0.1 with a tiny model. Bounded: a fixed number of examples per
operation, replies of at most 2 tokens, pytest-timeout on the whole module. Passing means no
500 (the server's own failure), no hang, and a normal request still answered afterwards."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
import schemathesis
from hypothesis import HealthCheck, given, settings

from persona_axis.serve.app import create_app
from persona_axis.serve.runner import background_server
from support.bundles import make_bundle
from support.tiny_models import tiny_lm

pytestmark = [pytest.mark.slow, pytest.mark.timeout(600)]
KEY, ADMIN = "fuzz-k3y", "fuzz-adm1n"
EXAMPLES = 25  # per operation (about 10 operations)


@pytest.fixture(scope="module")
def base(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    lm = tiny_lm("llama")
    root = tmp_path_factory.mktemp("roots")
    make_bundle(lm, seed=1).save(Path(root) / "extra")
    app = create_app(
        lm,
        make_bundle(lm),
        default_cap="none",
        api_key=KEY,
        admin_key=ADMIN,
        bundle_roots=[root],
        max_tokens_limit=2,
        default_max_tokens=2,
        max_input_tokens=256,
    )
    with background_server(app) as url:
        yield url


def test_no_input_makes_the_server_fail(base: str) -> None:
    """Every operation of the schema, driven by schemathesis' strategies through hypothesis
    directly (its pytest plugin does not run under pytest 9)."""
    schema = schemathesis.openapi.from_url(f"{base}/openapi.json")
    operations = [result.ok() for result in schema.get_all_operations()]
    assert operations, "the schema lists no operations"
    for operation in operations:
        check_operation(base, operation)


def check_operation(base: str, operation: Any) -> None:
    """Fuzz one operation: no input gives a 500, JSON errors carry an ``error`` object."""
    key = ADMIN if operation.path.startswith("/v1/admin") else KEY

    @given(case=operation.as_strategy())
    @settings(
        max_examples=EXAMPLES,
        deadline=None,
        suppress_health_check=list(HealthCheck),
        derandomize=True,
    )
    def check(case: Any) -> None:
        response = case.call(base_url=base, headers={"Authorization": f"Bearer {key}"}, timeout=30)
        assert response.status_code < 500, (case.method, case.path, response.text[:500])
        kind = response.headers.get("content-type") or ""  # schemathesis: a list of values
        kind = ",".join(kind) if isinstance(kind, list) else kind
        if response.status_code >= 400 and kind.startswith("application/json"):
            assert "error" in response.json()

    check()


def test_the_server_still_answers_afterwards(base: str) -> None:
    body = {"messages": [{"role": "user", "content": "Hi"}]}
    answer = httpx.post(
        f"{base}/v1/chat/completions",
        json=body,
        headers={"Authorization": f"Bearer {KEY}"},
        timeout=60,
    )
    assert answer.status_code == 200 and answer.json()["choices"][0]["message"]["content"]
