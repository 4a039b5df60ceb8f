"""A small HTTP client for tests against a running server (gunicorn): raw enough to send
duplicated, oversized and non-ASCII headers, and to record every answer."""

from __future__ import annotations

import http.client
import json
import socket
import threading
import time
from dataclasses import dataclass, field


@dataclass
class Answer:
    path: str
    status: int
    content_type: str
    body: bytes
    started: float = 0.0
    finished: float = 0.0
    error: str = ""  # a connection-level failure (no HTTP answer at all)

    @property
    def text(self) -> str:
        return self.body.decode("utf-8", "replace")

    def json(self):
        return json.loads(self.body)

    def is_failure_shape(self) -> bool:
        try:
            body = self.json()
        except ValueError:
            return False
        return (
            isinstance(body, dict)
            and set(body) == {"success", "message"}
            and body["success"] is False
            and isinstance(body["message"], str)
            and bool(body["message"])
        )


def get(
    port: int,
    path: str,
    headers: dict | list | None = None,
    method: str = "GET",
    body: bytes | None = None,
    timeout: float = 10,
) -> Answer:
    started = time.monotonic()
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=timeout)
    try:
        conn.putrequest(method, path, skip_accept_encoding=True)
        items = headers.items() if isinstance(headers, dict) else (headers or [])
        for name, value in items:
            conn.putheader(name, value)
        if body is not None:
            conn.putheader("Content-Length", str(len(body)))
        conn.endheaders(body)
        r = conn.getresponse()
        data = r.read()
        return Answer(path, r.status, r.getheader("Content-Type", ""), data, started, time.monotonic())
    except (OSError, http.client.HTTPException) as exc:
        return Answer(path, 0, "", b"", started, time.monotonic(), error=f"{type(exc).__name__}: {exc}")
    finally:
        conn.close()


def raw(port: int, request: bytes, timeout: float = 10) -> tuple[int, dict, bytes]:
    """Send `request` bytes as they are; (status, headers, body) of the answer."""
    with socket.create_connection(("127.0.0.1", port), timeout=timeout) as s:
        s.sendall(request)
        chunks = []
        while True:
            try:
                chunk = s.recv(65536)
            except TimeoutError:
                break
            if not chunk:
                break
            chunks.append(chunk)
    data = b"".join(chunks)
    head, _, body = data.partition(b"\r\n\r\n")
    lines = head.split(b"\r\n")
    status = int(lines[0].split()[1]) if lines and len(lines[0].split()) > 1 else 0
    headers = {}
    for line in lines[1:]:
        name, _, value = line.partition(b":")
        headers[name.decode("latin-1").strip().lower()] = value.decode("latin-1").strip()
    return status, headers, body


@dataclass
class Poller:
    """Threads that GET the paths over and over, recording every answer."""

    port: int
    requests: list  # (path, headers)
    threads: int = 2
    answers: list = field(default_factory=list)

    def __post_init__(self):
        self._stop = threading.Event()
        self._lock = threading.Lock()
        self._threads = []

    def _run(self, offset: int):
        i = offset
        while not self._stop.is_set():
            path, headers = self.requests[i % len(self.requests)]
            a = get(self.port, path, headers, timeout=15)
            with self._lock:
                self.answers.append(a)
            i += 1
            time.sleep(0.02)

    def __enter__(self):
        for k in range(self.threads):
            t = threading.Thread(target=self._run, args=(k,), daemon=True)
            t.start()
            self._threads.append(t)
        return self

    def __exit__(self, *exc):
        self._stop.set()
        for t in self._threads:
            t.join(30)
        return False
