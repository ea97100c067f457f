"""WebhookSender keeps connections alive and reuses them, without loosening the destination checks:
a keep-alive HTTP/1.1 receiver on loopback counts the connections it accepts."""

from __future__ import annotations

import asyncio
import ipaddress
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import pytest
from pydantic import SecretStr

from spotzee.providers.adapter import Permanent, Sent, WebhookDelivery
from spotzee.providers.safety import IPNetwork, OutboundPolicy
from spotzee.providers.webhook import (
    CONNECTIONS_PER_ORIGIN,
    IDEMPOTENCY_HEADER,
    MAX_ORIGINS,
    SIGNATURE_HEADER,
    TIMESTAMP_HEADER,
    WebhookSender,
    verify_signature,
)
from spotzee.schemas.provider_models import WebhookConfig
from spotzee.schemas.template_models import RenderedWebhook

SECRET = "whsec_0123456789abcdef"
LOOPBACK: tuple[IPNetwork, ...] = (ipaddress.ip_network("127.0.0.0/8"), ipaddress.ip_network("::1/128"))
RELAY = OutboundPolicy(allowed_networks=LOOPBACK)
NOW = 1_700_000_000.0


@dataclass
class Hit:
    connection: int
    path: str
    headers: dict[str, str]
    body: bytes


@dataclass
class Receiver:
    connections: int = 0
    open: int = 0
    hits: list[Hit] = field(default_factory=list)
    lock: threading.Lock = field(default_factory=threading.Lock)


class KeepAlive(BaseHTTPRequestHandler):
    """HTTP/1.1: one handler instance per connection, serving requests until the client closes
    (or ``/close`` asks for ``Connection: close``)."""

    protocol_version = "HTTP/1.1"
    receiver: Receiver

    def log_message(self, format: str, *args: Any) -> None:  # quiet
        pass

    def setup(self) -> None:
        super().setup()
        with self.receiver.lock:
            self.receiver.connections += 1
            self.receiver.open += 1
            self.connection_number = self.receiver.connections

    def finish(self) -> None:
        with self.receiver.lock:
            self.receiver.open -= 1
        super().finish()

    def do_POST(self) -> None:
        length = int(self.headers.get("Content-Length") or 0)
        body = self.rfile.read(length) if length else b""
        headers = {k.lower(): v for k, v in self.headers.items()}
        with self.receiver.lock:
            self.receiver.hits.append(Hit(self.connection_number, self.path, headers, body))
        self.send_response(200)
        self.send_header("Content-Length", "2")
        if self.path == "/close":
            self.send_header("Connection", "close")
            self.close_connection = True
        self.end_headers()
        self.wfile.write(b"ok")


class Backlogged(ThreadingHTTPServer):
    daemon_threads = True
    request_queue_size = 128  # many concurrent connects (socketserver's default backlog is 5)


@pytest.fixture
def receiver() -> Iterator[tuple[Receiver, int]]:
    state = Receiver()
    handler = type("Handler", (KeepAlive,), {"receiver": state})
    server = Backlogged(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
    thread.start()
    try:
        yield state, server.server_address[1]
    finally:
        server.shutdown()
        server.server_close()


def webhook(url: str, n: int) -> WebhookDelivery:
    rendered = RenderedWebhook(method="POST", url=url, headers={}, body=f'{{"n": {n}}}')
    return WebhookDelivery(send_id=f"campaign-9:c{n}", request=rendered)


def sender(policy: OutboundPolicy = RELAY) -> WebhookSender:
    return WebhookSender(WebhookConfig(signing_secret=SecretStr(SECRET), timeout=5), policy=policy, clock=lambda: NOW)


async def test_sends_reuse_a_kept_alive_connection(receiver: tuple[Receiver, int]) -> None:
    state, port = receiver
    hooks = sender()
    try:
        outcomes = [await hooks.send(webhook(f"http://127.0.0.1:{port}/in", n)) for n in range(20)]
    finally:
        await hooks.aclose()
    assert all(isinstance(outcome, Sent) for outcome in outcomes), outcomes
    assert state.connections == 1
    assert [hit.headers[IDEMPOTENCY_HEADER.lower()] for hit in state.hits] == [f"campaign-9:c{n}" for n in range(20)]
    for hit in state.hits:  # each request signed on its own
        timestamp, signature = hit.headers[TIMESTAMP_HEADER.lower()], hit.headers[SIGNATURE_HEADER.lower()]
        assert verify_signature(SECRET, timestamp, hit.body, signature, now=NOW)


async def test_concurrent_sends_each_arrive_once(receiver: tuple[Receiver, int]) -> None:
    state, port = receiver
    hooks = sender()
    try:
        outcomes = await asyncio.gather(*(hooks.send(webhook(f"http://127.0.0.1:{port}/in", n)) for n in range(40)))
        again = await asyncio.gather(*(hooks.send(webhook(f"http://127.0.0.1:{port}/in", n)) for n in range(40, 80)))
    finally:
        await hooks.aclose()
    assert all(isinstance(outcome, Sent) for outcome in [*outcomes, *again]), [*outcomes, *again]
    keys = sorted(hit.headers[IDEMPOTENCY_HEADER.lower()] for hit in state.hits)
    assert keys == sorted(f"campaign-9:c{n}" for n in range(80))
    # At most CONNECTIONS_PER_ORIGIN at once, and the second wave reused the first wave's.
    assert state.connections <= CONNECTIONS_PER_ORIGIN


async def test_two_names_for_one_address_never_share_a_connection(receiver: tuple[Receiver, int]) -> None:
    """``localhost`` and ``127.0.0.1`` reach the same socket, but a connection made for one host
    (its TLS session verified for that name) is not reused for another."""
    state, port = receiver
    hooks = sender()
    try:
        for n, host in enumerate(["localhost", "127.0.0.1", "localhost", "127.0.0.1"]):
            assert isinstance(await hooks.send(webhook(f"http://{host}:{port}/in", n)), Sent)
    finally:
        await hooks.aclose()
    assert state.connections == 2
    by_connection = {hit.connection: hit.headers["host"] for hit in state.hits}
    assert sorted(by_connection.values()) == sorted([f"localhost:{port}", f"127.0.0.1:{port}"])
    assert [hit.headers["host"] for hit in state.hits] == [
        f"{host}:{port}" for host in ["localhost", "127.0.0.1", "localhost", "127.0.0.1"]
    ]


async def test_every_send_is_checked_even_over_a_kept_connection(receiver: tuple[Receiver, int]) -> None:
    """Reuse does not skip the policy: each send resolves and checks its host; when the name now
    resolves somewhere refused, nothing is sent, not even over the connection already open."""
    state, port = receiver
    answers: list[Sequence[str]] = [["127.0.0.1"]]
    asked: list[str] = []

    async def resolver(host: str, port: int) -> Sequence[str]:
        asked.append(host)
        return answers[-1]

    hooks = sender(OutboundPolicy(allowed_networks=LOOPBACK, resolver=resolver))
    url = f"http://hooks.example.com:{port}/in"
    try:
        for n in range(3):
            assert isinstance(await hooks.send(webhook(url, n)), Sent)
        answers.append(["10.0.0.5"])
        refused = await hooks.send(webhook(url, 3))
    finally:
        await hooks.aclose()
    assert asked == ["hooks.example.com"] * 4
    assert isinstance(refused, Permanent)
    assert "destination refused" in refused.reason
    assert len(state.hits) == 3
    assert state.connections == 1
    assert state.hits[0].headers["host"] == f"hooks.example.com:{port}"


async def test_a_connection_the_receiver_closes_is_replaced(receiver: tuple[Receiver, int]) -> None:
    state, port = receiver
    hooks = sender()
    try:
        assert isinstance(await hooks.send(webhook(f"http://127.0.0.1:{port}/close", 1)), Sent)
        assert isinstance(await hooks.send(webhook(f"http://127.0.0.1:{port}/in", 2)), Sent)
        assert isinstance(await hooks.send(webhook(f"http://127.0.0.1:{port}/in", 3)), Sent)
    finally:
        await hooks.aclose()
    assert [hit.connection for hit in state.hits] == [1, 2, 2]


async def test_a_send_after_aclose_still_delivers(receiver: tuple[Receiver, int]) -> None:
    state, port = receiver
    hooks = sender()
    assert isinstance(await hooks.send(webhook(f"http://127.0.0.1:{port}/in", 1)), Sent)
    await hooks.aclose()
    assert isinstance(await hooks.send(webhook(f"http://127.0.0.1:{port}/in", 2)), Sent)
    assert isinstance(await hooks.send(webhook(f"http://127.0.0.1:{port}/in", 3)), Sent)
    assert len(state.hits) == 3
    assert state.connections == 3  # nothing kept once closed


async def test_clients_for_origins_beyond_the_bound_are_closed(receiver: tuple[Receiver, int]) -> None:
    state, port = receiver

    async def resolver(host: str, port: int) -> Sequence[str]:
        return ["127.0.0.1"]

    hooks = sender(OutboundPolicy(allowed_networks=LOOPBACK, resolver=resolver))
    try:
        for n in range(MAX_ORIGINS + 4):
            assert isinstance(await hooks.send(webhook(f"http://h{n}.example.com:{port}/in", n)), Sent)
        await eventually(lambda: state.open == MAX_ORIGINS)  # the 4 least recently used were closed
        assert state.connections == MAX_ORIGINS + 4
        assert isinstance(await hooks.send(webhook(f"http://h{MAX_ORIGINS + 3}.example.com:{port}/in", 99)), Sent)
        assert state.connections == MAX_ORIGINS + 4  # a recent origin's connection is still there
    finally:
        await hooks.aclose()
    await eventually(lambda: state.open == 0)


async def eventually(condition: Callable[[], bool], timeout: float = 5.0) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, "condition not met in time"
        await asyncio.sleep(0.01)
