"""Requests written by hand on a socket, for clients no HTTP library would be: bodies that
never come, come slowly or are far too large."""

from __future__ import annotations

import socket
import time
from collections.abc import Sequence
from urllib.parse import urlsplit


def raw_request(
    base: str,
    path: str,
    headers: dict[str, str],
    chunks: Sequence[bytes] = (),
    *,
    pause_s: float = 0.0,
    timeout_s: float = 30.0,
) -> tuple[int, bytes, float]:
    """POST ``path`` with ``headers`` (as given: Content-Length is not computed), then send
    ``chunks`` with ``pause_s`` between them; return the status, the whole response (head and
    body, read up to its Content-Length) and the seconds until it ended. Sending stops once the
    server answered or closed."""
    url = urlsplit(base)
    start = time.monotonic()
    with socket.create_connection((url.hostname, url.port), timeout=timeout_s) as conn:
        head = f"POST {path} HTTP/1.1\r\nHost: {url.netloc}\r\n"
        head += "".join(f"{k}: {v}\r\n" for k, v in headers.items()) + "\r\n"
        conn.sendall(head.encode("latin-1"))
        conn.setblocking(False)
        answer = b""
        for chunk in chunks:
            answer += _read_available(conn)
            if answer:
                break
            try:
                conn.sendall(chunk)
            except (BlockingIOError, BrokenPipeError, ConnectionResetError):
                break
            time.sleep(pause_s)
        conn.setblocking(True)
        conn.settimeout(timeout_s)
        while not _complete(answer):
            try:
                more = conn.recv(65536)
            except ConnectionResetError:
                break
            if not more:
                break
            answer += more
    elapsed = time.monotonic() - start
    status = int(answer.split(b" ", 2)[1]) if answer.startswith(b"HTTP/") else 0
    return status, answer, elapsed


def _read_available(conn: socket.socket) -> bytes:
    try:
        return conn.recv(65536)
    except (BlockingIOError, ConnectionResetError):
        return b""


def _complete(answer: bytes) -> bool:
    """Whether ``answer`` holds the response head and as many body bytes as it declares (the
    body can arrive in a later packet than the head)."""
    head, found, body = answer.partition(b"\r\n\r\n")
    if not found:
        return False
    for line in head.split(b"\r\n")[1:]:
        name, _, value = line.partition(b":")
        if name.strip().lower() == b"content-length":
            return len(body) >= int(value.strip())
    return True
