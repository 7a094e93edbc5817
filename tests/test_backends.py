"""Chat backends against a real local HTTP server speaking the chat completions format."""

from __future__ import annotations

import asyncio
import socket
from collections.abc import Iterator
from types import SimpleNamespace
from typing import Any

import pytest

from persona_axis.errors import PersonaAxisError
from persona_axis.judges import backends
from persona_axis.judges.backends import (
    ChatBackend,
    HFChatBackend,
    OpenAIChatBackend,
    backend_from_config,
)
from support.fake_openai import FAST, FakeOpenAI, Scripted


@pytest.fixture
def server() -> Iterator[FakeOpenAI]:
    fake = FakeOpenAI()
    yield fake
    fake.close()


def chats(n: int) -> list[list[dict[str, str]]]:
    return [[{"role": "user", "content": f"q{i}"}] for i in range(n)]


def backend(server: FakeOpenAI, **kwargs: Any) -> OpenAIChatBackend:
    options = {"api_key_env": "PERSONA_AXIS_TEST_KEY", **FAST, **kwargs}
    return OpenAIChatBackend(server.base_url, "test-model", **options)


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def test_replies_come_back_in_input_order(server: FakeOpenAI) -> None:
    # later questions answer first
    server.delay = lambda body: 0.06 - 0.01 * int(body["messages"][-1]["content"][1:])
    replies = backend(server, concurrency=6).complete(chats(6), max_tokens=8)
    assert replies == [f"echo: q{i}" for i in range(6)]
    assert isinstance(backend(server), ChatBackend)


def test_request_body_carries_settings_and_extra_body(server: FakeOpenAI) -> None:
    client = backend(server, extra_body={"top_p": 0.5, "seed": 7})
    conversation = [
        {"role": "system", "content": "You are a pirate."},
        {"role": "user", "content": "Hello"},
    ]
    assert client.complete([conversation], max_tokens=12, temperature=0.7) == ["echo: Hello"]
    assert server.bodies == [
        {
            "model": "test-model",
            "messages": conversation,
            "max_tokens": 12,
            "temperature": 0.7,
            "top_p": 0.5,
            "seed": 7,
        }
    ]
    assert client.name == f"openai:test-model@{server.base_url}"


def test_empty_batch_sends_nothing(server: FakeOpenAI) -> None:
    assert backend(server).complete([], max_tokens=4) == []
    assert server.bodies == []


@pytest.mark.parametrize("limit", [1, 3])
def test_concurrency_limit_is_respected(server: FakeOpenAI, limit: int) -> None:
    server.hold_first = limit  # the first wave is answered only once `limit` are in flight
    replies = backend(server, concurrency=limit).complete(chats(6), max_tokens=4)
    assert len(replies) == 6
    assert server.max_in_flight == limit  # reached, never exceeded


class CountingLimiter:
    """Stands in for aiolimiter's AsyncLimiter: records its settings and every acquisition in
    the server's event list, so the test checks order, not the clock."""

    created: list[tuple[float, float]]
    events: list[str]

    def __init__(self, max_rate: float, time_period: float) -> None:
        self.created.append((max_rate, time_period))

    async def acquire(self) -> None:
        self.events.append("acquire")


def test_rate_limit_gates_every_request(
    server: FakeOpenAI, monkeypatch: pytest.MonkeyPatch
) -> None:
    rate, n = 25.0, 6
    limiter = type("Limiter", (CountingLimiter,), {"created": [], "events": server.events})
    monkeypatch.setattr(backends, "AsyncLimiter", limiter)
    monkeypatch.setattr(backends, "time", SimpleNamespace(monotonic=lambda: 100.0))
    slept: list[float] = []

    class RecordedSleep:  # asyncio as the backend sees it, with sleeps recorded, not slept
        def __getattr__(self, name: str) -> Any:
            return getattr(asyncio, name)

        async def sleep(self, seconds: float) -> None:
            slept.append(seconds)

    monkeypatch.setattr(backends, "asyncio", RecordedSleep())
    client = backend(server, concurrency=n, requests_per_second=rate)
    client.complete(chats(n), max_tokens=4)
    assert limiter.created == [(1, 1 / rate)]  # capacity 1: no burst, one start per 1/rate s
    assert len(server.events) == 2 * n
    for k in range(1, n + 1):  # the k-th request reaches the server after the k-th acquisition
        assert server.events[: server.index_of_request(k)].count("acquire") >= k
    # a following call waits out the spacing left by the last start of the previous one
    client.complete(chats(1), max_tokens=4)
    assert slept == [pytest.approx(1 / rate)]


@pytest.mark.parametrize(("status", "retry_after"), [(429, "0"), (500, None), (503, None)])
def test_transient_errors_are_retried_then_succeed(
    server: FakeOpenAI, status: int, retry_after: str | None
) -> None:
    server.fail_first(2, status, retry_after)
    assert backend(server, max_retries=2).complete(chats(1), max_tokens=4) == ["echo: q0"]
    assert len(server.bodies) == 3


def test_numeric_retry_after_is_honoured_and_capped(
    server: FakeOpenAI, monkeypatch: pytest.MonkeyPatch
) -> None:
    waits: list[float] = []

    def recorded(client: OpenAIChatBackend) -> OpenAIChatBackend:
        wait = client._wait
        monkeypatch.setattr(client, "_wait", lambda state: waits.append(wait(state)) or 0.0)
        return client

    server.fail_first(1, 429, "0.3")
    recorded(backend(server)).complete(chats(1), max_tokens=4)
    server.fail_first(1, 429, "120")
    recorded(backend(server, retry_after_max_s=0.01)).complete(chats(1), max_tokens=4)
    assert waits == [0.3, 0.01]  # the server's Retry-After, then capped at retry_after_max_s
    assert len(server.bodies) == 4


def test_exhausted_retries_raise_with_status_and_url(server: FakeOpenAI) -> None:
    server.fail_first(10, 502)
    with pytest.raises(PersonaAxisError, match="502") as info:
        backend(server, max_retries=2).complete(chats(1), max_tokens=4)
    assert server.base_url in str(info.value)
    assert "3 attempt" in str(info.value)
    assert len(server.bodies) == 3


@pytest.mark.parametrize("status", [400, 401, 404, 422])
def test_other_client_errors_are_not_retried(server: FakeOpenAI, status: int) -> None:
    server.fail_first(1, status)
    with pytest.raises(PersonaAxisError, match=str(status)):
        backend(server, max_retries=3).complete(chats(1), max_tokens=4)
    assert len(server.bodies) == 1


def test_unauthorized_names_the_key_variable(server: FakeOpenAI) -> None:
    server.fail_first(1, 401)
    with pytest.raises(PersonaAxisError, match="PERSONA_AXIS_TEST_KEY"):
        backend(server).complete(chats(1), max_tokens=4)


def test_api_key_header_follows_the_environment(
    server: FakeOpenAI, monkeypatch: pytest.MonkeyPatch
) -> None:
    client = backend(server)
    monkeypatch.delenv("PERSONA_AXIS_TEST_KEY", raising=False)
    client.complete(chats(1), max_tokens=4)
    monkeypatch.setenv("PERSONA_AXIS_TEST_KEY", "sk-test-123")
    client.complete(chats(1), max_tokens=4)  # read at call time, not construction time
    monkeypatch.setenv("PERSONA_AXIS_TEST_KEY", "")
    client.complete(chats(1), max_tokens=4)
    assert server.auth == [None, "Bearer sk-test-123", None]


@pytest.mark.parametrize(
    "body",
    [
        "this is not json",
        "{}",
        '{"choices": []}',
        '{"choices": [{"message": {}}]}',
        '{"choices": [{"message": {"role": "assistant", "content": null}}]}',
        '["choices"]',
    ],
)
def test_malformed_body_raises(server: FakeOpenAI, body: str) -> None:
    server.script.append(Scripted(200, body))
    with pytest.raises(PersonaAxisError, match=r"choices\[0\]\.message\.content"):
        backend(server).complete(chats(1), max_tokens=4)
    assert len(server.bodies) == 1


def test_timeouts_are_retried_then_raise(server: FakeOpenAI) -> None:
    server.delay = lambda body: 3.0  # far beyond the client's timeout
    with pytest.raises(PersonaAxisError, match="timed out"):
        backend(server, timeout_s=0.1, max_retries=1).complete(chats(1), max_tokens=4)
    assert len(server.bodies) == 2  # one attempt and one retry, each cut by the timeout


def test_unreachable_server_raises_after_retries() -> None:
    url = f"http://127.0.0.1:{free_port()}/v1"
    client = OpenAIChatBackend(url, "m", max_retries=2, **FAST)
    with pytest.raises(PersonaAxisError, match="3 attempt") as info:
        client.complete(chats(1), max_tokens=4)
    assert url in str(info.value) and "base_url" in str(info.value)


def test_one_failure_fails_the_batch(server: FakeOpenAI) -> None:
    server.fail_first(1, 400)
    with pytest.raises(PersonaAxisError, match="400"):
        backend(server, concurrency=1).complete(chats(4), max_tokens=4)


def test_complete_works_inside_a_running_event_loop(server: FakeOpenAI) -> None:
    async def caller() -> list[str]:
        return backend(server).complete(chats(2), max_tokens=4)

    assert asyncio.run(caller()) == ["echo: q0", "echo: q1"]


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"base_url": "127.0.0.1:8000/v1"}, "http"),
        ({"model": ""}, "model"),
        ({"concurrency": 0}, "concurrency"),
        ({"requests_per_second": 0}, "requests_per_second"),
        ({"max_retries": -1}, "max_retries"),
        ({"timeout_s": 0}, "timeout_s"),
    ],
)
def test_bad_openai_settings_are_refused(kwargs: dict[str, Any], match: str) -> None:
    options: dict[str, Any] = {"base_url": "http://127.0.0.1:1/v1", "model": "m", **kwargs}
    with pytest.raises(PersonaAxisError, match=match):
        OpenAIChatBackend(**options)


def test_bad_messages_and_sampling_are_refused(server: FakeOpenAI) -> None:
    with pytest.raises(PersonaAxisError, match="content"):
        backend(server).complete([[{"role": "user"}]], max_tokens=4)
    with pytest.raises(PersonaAxisError, match="empty"):
        backend(server).complete([[]], max_tokens=4)
    with pytest.raises(PersonaAxisError, match="max_tokens"):
        backend(server).complete(chats(1), max_tokens=0)


def test_backend_from_config_builds_the_openai_backend(server: FakeOpenAI) -> None:
    client = backend_from_config(
        {
            "backend": "openai",
            "base_url": server.base_url + "/",
            "model": "test-model",
            "api_key_env": "PERSONA_AXIS_TEST_KEY",
            "concurrency": "2",
            "requests_per_second": 100,
            "max_retries": 1,
            "timeout_s": 5,
        }
    )
    assert isinstance(client, OpenAIChatBackend)
    assert (client.concurrency, client.requests_per_second, client.max_retries) == (2, 100.0, 1)
    assert client.complete(chats(2), max_tokens=4) == ["echo: q0", "echo: q1"]


@pytest.mark.parametrize(
    ("config", "match"),
    [
        ({"backend": "anthropic"}, "openai, hf"),
        ({}, "openai, hf"),
        (
            {"backend": "openai", "model": "m", "base_url": "http://x/v1", "temp": 1},
            "'temp'.*valid",
        ),
        ({"backend": "openai", "model": "m"}, "base_url"),
        (
            {"backend": "openai", "base_url": "http://x/v1", "model": "m", "concurrency": "a"},
            "type",
        ),
        ({"backend": "hf", "model": "default", "concurrency": 2}, "'concurrency'.*batch_size"),
        ({"backend": "hf", "batch_size": "many"}, "integers"),
    ],
)
def test_backend_from_config_refuses_bad_configs(config: dict[str, Any], match: str) -> None:
    with pytest.raises(PersonaAxisError, match=match):
        backend_from_config(config)


@pytest.mark.slow
def test_hf_backend_matches_generate_replies() -> None:
    from persona_axis.inference.generation import Sampling, generate_replies
    from support.tiny_models import tiny_lm

    lm = tiny_lm("llama")
    hf = HFChatBackend(lm, batch_size=2)
    conversations = [
        [{"role": "user", "content": "Hi"}],
        [{"role": "system", "content": "You are a sailor."}, {"role": "user", "content": "Ahoy"}],
        [{"role": "user", "content": "Tell me a story about the sea"}],
    ]
    replies = hf.complete(conversations, max_tokens=5)
    assert hf.name == "hf:tiny-llama" and isinstance(hf, ChatBackend)
    assert len(replies) == 3 and all(isinstance(text, str) for text in replies)
    expected = generate_replies(lm, conversations[2:], Sampling(max_new_tokens=5, seed=1))
    assert replies[2] == expected[0].text  # batches are independent; greedy is deterministic
    assert hf.complete([], max_tokens=5) == []
