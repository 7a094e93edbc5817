"""Run the app with uvicorn: in the foreground (the CLI) or in a background thread (tests,
benchmarks, notebooks)."""

from __future__ import annotations

import contextlib
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import uvicorn

LOOPBACK = frozenset({"127.0.0.1", "::1", "localhost"})


def is_loopback(host: str) -> bool:
    """Whether ``host`` only accepts connections from this machine."""
    return host in LOOPBACK


@contextmanager
def background_server(
    app: Any, host: str = "127.0.0.1", port: int = 0, *, log_level: str = "warning"
) -> Iterator[str]:
    """Serve ``app`` from a daemon thread while the context is open; yields the base URL
    (``http://host:port``; ``port`` 0 picks a free one). Stops the server on exit."""
    server = uvicorn.Server(
        uvicorn.Config(app, host=host, port=port, log_level=log_level, lifespan="on")
    )
    thread = threading.Thread(target=server.run, name="persona-axis-uvicorn", daemon=True)
    thread.start()
    deadline = time.monotonic() + 60
    while not server.started:
        if not thread.is_alive() or time.monotonic() > deadline:
            raise RuntimeError(f"uvicorn did not start on {host}:{port}")
        time.sleep(0.01)
    bound = server.servers[0].sockets[0].getsockname()[1]
    try:
        yield f"http://{host}:{bound}"
    finally:
        server.should_exit = True
        thread.join(60)


def serve_forever(app: Any, host: str, port: int, *, log_level: str = "info") -> None:
    """Serve ``app`` in the foreground until interrupted (Ctrl-C)."""
    uvicorn.run(app, host=host, port=port, log_level=log_level, lifespan="on")


def wait_forever() -> None:
    """Block until interrupted (Ctrl-C), e.g. while Ray Serve replicas serve."""
    with contextlib.suppress(KeyboardInterrupt):
        threading.Event().wait()
