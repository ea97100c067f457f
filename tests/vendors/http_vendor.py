"""What the vendor test servers share: a threaded HTTP/1.1 server on loopback (keep-alive, so a
client reusing connections can be seen doing so), the requests it received, and failures on demand."""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any, ClassVar
from urllib.parse import parse_qs


@dataclass
class Received:
    method: str
    path: str
    headers: dict[str, str]
    body: bytes
    client_port: int

    def form(self) -> dict[str, str]:
        """The form body, strictly: every field once."""
        parsed = parse_qs(self.body.decode("utf-8"), keep_blank_values=True, strict_parsing=bool(self.body))
        assert all(len(values) == 1 for values in parsed.values()), f"a field sent twice: {parsed}"
        return {name: values[0] for name, values in parsed.items()}


@dataclass
class Failure:
    """Answer the next request(s) with this instead of the vendor's success."""

    status: int
    body: dict[str, Any]
    headers: dict[str, str] = field(default_factory=dict)
    times: int = 1


@dataclass
class Answer:
    status: int
    body: dict[str, Any] | None  # None: an empty body (SendGrid's 202)
    headers: dict[str, str] = field(default_factory=dict)


class VendorServer:
    """Subclasses implement ``answer`` (the vendor's rules); ``received`` holds every request."""

    def __init__(self) -> None:
        self.received: list[Received] = []
        self.accepted: list[Received] = []
        self.failures: list[Failure] = []
        self.delay = 0.0
        self.hold: threading.Event | None = None  # when set here, requests wait for it before answering
        self.lock = threading.Lock()
        self.port = 0

    def fail_next(
        self, status: int, body: dict[str, Any], *, headers: dict[str, str] | None = None, times: int = 1
    ) -> None:
        with self.lock:
            self.failures.append(Failure(status, body, headers or {}, times))

    def answer(self, request: Received) -> Answer:
        raise NotImplementedError

    def _handle(self, request: Received) -> Answer:
        with self.lock:
            self.received.append(request)
            delay = self.delay  # as it was when this request arrived
            hold = self.hold
            failure = self.failures[0] if self.failures else None
            if failure is not None:
                failure.times -= 1
                if failure.times <= 0:
                    self.failures.pop(0)
        if delay:
            time.sleep(delay)
        if hold is not None:
            hold.wait(timeout=300)
        if failure is not None:
            return Answer(failure.status, failure.body, failure.headers)
        return self.answer(request)

    @property
    def base_url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @contextmanager
    def running(self) -> Iterator[VendorServer]:
        vendor = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version: ClassVar[str] = "HTTP/1.1"  # keep-alive: connection reuse is visible
            disable_nagle_algorithm: ClassVar[bool] = True  # headers and body are two writes

            def _serve(self) -> None:
                length = int(self.headers.get("Content-Length", "0"))
                body = self.rfile.read(length) if length else b""
                request = Received(
                    self.command,
                    self.path,
                    {k.lower(): v for k, v in self.headers.items()},
                    body,
                    self.client_address[1],
                )
                answer = vendor._handle(request)
                raw = json.dumps(answer.body).encode() if answer.body is not None else b""
                self.send_response(answer.status)
                if answer.body is not None:
                    self.send_header("Content-Type", "application/json; charset=utf-8")
                self.send_header("Content-Length", str(len(raw)))
                for name, value in answer.headers.items():
                    self.send_header(name, value)
                self.end_headers()
                self.wfile.write(raw)

            do_POST = do_GET = do_PUT = do_DELETE = _serve

            def log_message(self, format: str, *args: Any) -> None:
                pass

        server = ThreadingHTTPServer(("127.0.0.1", 0), Handler, bind_and_activate=False)
        server.request_queue_size = 128  # many concurrent connects (the default backlog is 5)
        server.server_bind()
        server.server_activate()
        server.daemon_threads = True
        self.port = server.server_address[1]
        thread = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
        thread.start()
        try:
            yield self
        finally:
            server.shutdown()
            server.server_close()
