"""A fake OpenAI-compatible chat server: a real threaded HTTP server on 127.0.0.1 speaking
``POST /v1/chat/completions``, scriptable per test (canned statuses, delays, held requests)."""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

FAST = {"backoff_base_s": 0.001, "backoff_max_s": 0.005}  # tiny waits between retries


def echo(body: dict[str, Any]) -> str:
    return "echo: " + body["messages"][-1]["content"]


@dataclass
class Scripted:
    """One canned response: status, body text and extra headers."""

    status: int
    body: str = "{}"
    headers: dict[str, str] = field(default_factory=dict)


class FakeOpenAI:
    """A real threaded HTTP server on 127.0.0.1 implementing ``POST /v1/chat/completions``.

    Scriptable per test: ``script`` holds responses served first, in order (then normal
    replies from ``reply``); ``delay`` sleeps per request; every request's body and
    Authorization header are recorded, and the peak number of requests in flight is tracked.
    """

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.script: list[Scripted] = []
        self.reply: Callable[[dict[str, Any]], str] = echo
        self.delay: Callable[[dict[str, Any]], float] = lambda body: 0.0
        self.bodies: list[dict[str, Any]] = []
        self.auth: list[str | None] = []
        self.in_flight = 0
        self.max_in_flight = 0
        self.hold_first = 0  # the first N requests wait until N are in flight (with a deadline)
        self.arrived = threading.Condition(self.lock)
        self.events: list[str] = []  # what the test's hooks and the server saw, in order
        fake = self

        class Handler(BaseHTTPRequestHandler):
            disable_nagle_algorithm = True  # headers and body go out in two writes

            def do_POST(self) -> None:
                length = int(self.headers.get("Content-Length") or 0)
                body = json.loads(self.rfile.read(length))
                with fake.lock:
                    fake.events.append("request")
                    fake.bodies.append(body)
                    fake.auth.append(self.headers.get("Authorization"))
                    fake.in_flight += 1
                    fake.max_in_flight = max(fake.max_in_flight, fake.in_flight)
                    scripted = fake.script.pop(0) if fake.script else None
                    fake.arrived.notify_all()
                    if len(fake.bodies) <= fake.hold_first:
                        fake.arrived.wait_for(lambda: fake.in_flight >= fake.hold_first, 10.0)
                try:
                    time.sleep(fake.delay(body))
                    if self.path != "/v1/chat/completions":
                        scripted = Scripted(404, '{"error": "not found"}')
                    elif scripted is None:
                        scripted = Scripted(200, json.dumps(completion(fake.reply(body))))
                finally:
                    with fake.lock:  # before answering: the client may send again at once
                        fake.in_flight -= 1
                self.send_response(scripted.status)
                for name, value in scripted.headers.items():
                    self.send_header(name, value)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(scripted.body.encode())))
                self.end_headers()
                self.wfile.write(scripted.body.encode())

            def log_message(self, format: str, *args: Any) -> None:
                pass

        class Server(ThreadingHTTPServer):
            daemon_threads = True

            def handle_error(self, request: Any, client_address: Any) -> None:
                pass  # clients that timed out and hung up

        self.httpd = Server(("127.0.0.1", 0), Handler)
        self.base_url = f"http://127.0.0.1:{self.httpd.server_address[1]}/v1"
        self.thread = threading.Thread(
            target=self.httpd.serve_forever, kwargs={"poll_interval": 0.01}, daemon=True
        )
        self.thread.start()

    def index_of_request(self, k: int) -> int:
        """Position in :attr:`events` of the k-th request (1-based)."""
        return [i for i, e in enumerate(self.events) if e == "request"][k - 1]

    def fail_first(self, count: int, status: int, retry_after: str | None = None) -> None:
        headers = {} if retry_after is None else {"Retry-After": retry_after}
        self.script += [Scripted(status, '{"error": "busy"}', headers) for _ in range(count)]

    def close(self) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()


def completion(text: str) -> dict[str, Any]:
    return {
        "id": "chatcmpl-test",
        "object": "chat.completion",
        "model": "test-model",
        "choices": [
            {"index": 0, "message": {"role": "assistant", "content": text}, "finish_reason": "stop"}
        ],
    }
