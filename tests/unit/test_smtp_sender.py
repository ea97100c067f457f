"""SmtpSender's connection pool and wire format, against a real aiosmtpd server on loopback that
counts the connections it sees: reuse, the pool bound, concurrency, a connection the server drops,
at-most-once around DATA, idle close, ``aclose``, and the destination check on every new connection."""

from __future__ import annotations

import asyncio
import email
import email.policy
import ipaddress
import socket
import ssl
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest
from aiosmtpd.controller import Controller
from aiosmtpd.smtp import SMTP, AuthResult, Envelope, LoginPassword, Session
from pydantic import SecretStr

from spotzee.providers.adapter import EmailDelivery, Permanent, Sent, Transient
from spotzee.providers.safety import IPNetwork, OutboundPolicy
from spotzee.providers.smtp import POOL_SIZE, PoolLimits, SmtpSender, build_message, message_id, serialize
from spotzee.schemas.provider_models import SmtpConfig
from spotzee.schemas.template_models import RenderedEmail
from tests.unit.test_providers import self_signed_certificate

LOOPBACK: tuple[IPNetwork, ...] = (ipaddress.ip_network("127.0.0.0/8"),)
RELAY = OutboundPolicy(allowed_networks=LOOPBACK)


@dataclass
class Stats:
    """What the server saw; written from the server's thread, read from the test's."""

    opened: int = 0
    open: int = 0
    peak: int = 0
    quits: int = 0
    servers: list[SMTP] = field(default_factory=list)
    lock: threading.Lock = field(default_factory=threading.Lock)


class CountingSMTP(SMTP):
    def __init__(self, handler: Any, *, stats: Stats, **kwargs: Any) -> None:
        super().__init__(handler, **kwargs)
        self.stats = stats

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        with self.stats.lock:
            self.stats.opened += 1
            self.stats.open += 1
            self.stats.peak = max(self.stats.peak, self.stats.open)
            self.stats.servers.append(self)
        super().connection_made(transport)

    def connection_lost(self, error: Exception | None) -> None:
        with self.stats.lock:
            self.stats.open -= 1
            self.stats.servers.remove(self)
        super().connection_lost(error)

    async def smtp_QUIT(self, arg: str) -> None:
        with self.stats.lock:
            self.stats.quits += 1
        await super().smtp_QUIT(arg)


class CountingController(Controller):
    def __init__(self, handler: Any, *, stats: Stats, **kwargs: Any) -> None:
        self.stats = stats
        super().__init__(handler, **kwargs)

    def factory(self) -> SMTP:
        return CountingSMTP(self.handler, stats=self.stats, **self.SMTP_kwargs)


@dataclass
class Relay:
    """An aiosmtpd handler keeping each accepted message with the connection (session) it came on.

    ``refuse_second_mail``: a MAIL on a connection that already carried a message gets 421 (what
    a relay capping messages per connection answers); ``mail_reply`` answers every MAIL.
    ``drop_after_data``: recipients whose message is taken and then the connection closed
    without a reply. ``slow``: recipients whose
    final DATA reply comes after ``slow_seconds``."""

    received: list[tuple[int, bytes]] = field(default_factory=list)  # (session id, raw message)
    per_session: dict[int, int] = field(default_factory=dict)
    refuse_second_mail: bool = False
    drop_after_data: frozenset[str] = frozenset()
    slow: frozenset[str] = frozenset()
    slow_seconds: float = 1.0
    mail_reply: str | None = None  # when set, the answer to every MAIL

    async def handle_MAIL(
        self, server: SMTP, session: Session, envelope: Envelope, address: str, mail_options: list[str]
    ) -> str:
        if self.mail_reply is not None:
            return self.mail_reply
        if self.refuse_second_mail and self.per_session.get(id(session), 0) >= 1:
            return "421 4.7.0 one message per connection, closing"
        envelope.mail_from = address
        envelope.mail_options.extend(mail_options)
        return "250 OK"

    async def handle_DATA(self, server: SMTP, session: Session, envelope: Envelope) -> str:
        raw = envelope.original_content
        assert isinstance(raw, bytes)
        self.received.append((id(session), raw))
        self.per_session[id(session)] = self.per_session.get(id(session), 0) + 1
        if set(envelope.rcpt_tos) & self.drop_after_data:
            assert server.transport is not None
            server.transport.close()  # taken, but the client never hears so
        if set(envelope.rcpt_tos) & self.slow:
            await asyncio.sleep(self.slow_seconds)
        return "250 2.0.0 queued"

    def message_ids(self) -> list[str]:
        return [
            str(email.message_from_bytes(raw, policy=email.policy.default)["Message-ID"]) for _, raw in self.received
        ]


@dataclass
class Server:
    relay: Relay
    stats: Stats
    port: int
    controller: CountingController

    def drop_connections(self) -> None:
        """Close every connection from the server's side (a restart, an idle limit)."""
        with self.stats.lock:
            servers = list(self.stats.servers)
        for server in servers:
            if server.transport is not None:
                self.controller.loop.call_soon_threadsafe(server.transport.close)


@pytest.fixture
def server() -> Iterator[Server]:
    relay, stats = Relay(), Stats()
    port = free_port()
    controller = CountingController(relay, stats=stats, hostname="127.0.0.1", port=port)
    controller.start()
    # start() opens a connection of its own to see the server up; count from after it closed.
    wait_for(lambda: stats.open == 0)
    with stats.lock:
        stats.opened = stats.peak = stats.quits = 0
    try:
        yield Server(relay, stats, port, controller)
    finally:
        controller.stop()


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port: int = probe.getsockname()[1]
        return port


def wait_for(condition: Callable[[], bool], timeout: float = 5.0) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, "condition not met in time"
        time.sleep(0.01)


async def eventually(condition: Callable[[], bool], timeout: float = 5.0) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, "condition not met in time"
        await asyncio.sleep(0.01)


def config(port: int, *, host: str = "127.0.0.1", timeout: float = 5) -> SmtpConfig:
    return SmtpConfig(host=host, port=port, security="none", timeout=timeout)


def delivery(n: int, to: str = "ann@example.com") -> EmailDelivery:
    return EmailDelivery(
        send_id=f"campaign-1:c{n}",
        to=to,
        email=RenderedEmail(subject=f"Hello #{n}", text=f"Hi {n}", html=f"<p>Hi {n}</p>", from_="team@example.com"),
        unsubscribe_url=f"https://mail.example.com/u/token-{n}",
    )


def mid(n: int) -> str:
    return message_id(f"campaign-1:c{n}", "example.com")


async def test_many_sends_reuse_one_connection(server: Server) -> None:
    sender = SmtpSender(config(server.port), policy=RELAY)
    try:
        outcomes = [await sender.send(delivery(n)) for n in range(20)]
    finally:
        await sender.aclose()
    assert all(isinstance(outcome, Sent) for outcome in outcomes), outcomes
    assert server.relay.message_ids() == [mid(n) for n in range(20)]
    assert server.stats.opened == 1  # one connect + EHLO for twenty messages
    assert len({session for session, _ in server.relay.received}) == 1
    await eventually(lambda: server.stats.open == 0)
    assert server.stats.quits == 1  # aclose said goodbye


async def test_concurrent_sends_arrive_once_over_at_most_pool_size_connections(server: Server) -> None:
    sender = SmtpSender(config(server.port), policy=RELAY)
    try:
        outcomes = await asyncio.gather(*(sender.send(delivery(n)) for n in range(60)))
    finally:
        await sender.aclose()
    assert all(isinstance(outcome, Sent) for outcome in outcomes), outcomes
    assert sorted(server.relay.message_ids()) == sorted(mid(n) for n in range(60))  # each exactly once
    assert 1 < server.stats.opened <= POOL_SIZE  # in parallel, within the bound
    assert server.stats.peak <= POOL_SIZE


async def test_a_pool_of_one_serialises_concurrent_sends(server: Server) -> None:
    sender = SmtpSender(config(server.port), policy=RELAY, pool=PoolLimits(size=1))
    try:
        outcomes = await asyncio.gather(*(sender.send(delivery(n)) for n in range(10)))
    finally:
        await sender.aclose()
    assert all(isinstance(outcome, Sent) for outcome in outcomes)
    assert server.stats.opened == 1
    assert len(server.relay.received) == 10


async def test_connections_the_server_dropped_are_replaced(server: Server) -> None:
    sender = SmtpSender(config(server.port), policy=RELAY)
    try:
        assert isinstance(await sender.send(delivery(1)), Sent)
        server.drop_connections()
        await eventually(lambda: server.stats.open == 0)
        assert isinstance(await sender.send(delivery(2)), Sent)
    finally:
        await sender.aclose()
    assert server.relay.message_ids() == [mid(1), mid(2)]
    assert server.stats.opened == 2


async def test_a_421_before_data_on_a_reused_connection_retries_once_on_a_fresh_one(server: Server) -> None:
    """The reused connection fails at MAIL: nothing was handed over, so the message goes (once)
    over a new connection; the caller sees a plain success."""
    server.relay.refuse_second_mail = True
    sender = SmtpSender(config(server.port), policy=RELAY)
    try:
        outcomes = [await sender.send(delivery(n)) for n in range(3)]
    finally:
        await sender.aclose()
    assert all(isinstance(outcome, Sent) for outcome in outcomes), outcomes
    assert server.relay.message_ids() == [mid(0), mid(1), mid(2)]  # no duplicate, none lost
    assert server.stats.opened == 3
    assert len({session for session, _ in server.relay.received}) == 3


async def test_a_421_on_a_fresh_connection_is_transient_as_before(server: Server) -> None:
    server.relay.mail_reply = "421 4.3.2 shutting down"
    sender = SmtpSender(config(server.port), policy=RELAY)
    try:
        outcome = await sender.send(delivery(1))
    finally:
        await sender.aclose()
    assert isinstance(outcome, Transient), outcome
    assert outcome.reason == "SMTP 421: 4.3.2 shutting down"
    assert server.relay.received == []
    assert server.stats.opened == 1  # no second try: the connection was not a reused one


async def test_a_connection_lost_after_data_is_transient_and_never_resent(server: Server) -> None:
    """The server took the message and closed before replying: the sender can't know, so it
    reports transient (the delivery loop decides) and does not send it again by itself."""
    server.relay.drop_after_data = frozenset({"drop@example.com"})
    sender = SmtpSender(config(server.port), policy=RELAY)
    try:
        assert isinstance(await sender.send(delivery(1)), Sent)  # the connection is now a reused one
        lost = await sender.send(delivery(2, to="drop@example.com"))
        assert isinstance(lost, Transient), lost
        assert isinstance(await sender.send(delivery(3)), Sent)
    finally:
        await sender.aclose()
    assert server.relay.message_ids() == [mid(1), mid(2), mid(3)]  # #2 exactly once
    assert server.stats.opened == 2  # the broken connection was discarded, not reused


async def test_a_reply_that_times_out_after_data_is_transient_and_never_resent(server: Server) -> None:
    server.relay.slow = frozenset({"slow@example.com"})
    server.relay.slow_seconds = 1.0
    sender = SmtpSender(config(server.port, timeout=0.3), policy=RELAY)
    try:
        assert isinstance(await sender.send(delivery(1)), Sent)
        slow = await sender.send(delivery(2, to="slow@example.com"))
        assert isinstance(slow, Transient), slow
        assert isinstance(await sender.send(delivery(3)), Sent)
    finally:
        await sender.aclose()
    await eventually(lambda: len(server.relay.received) == 3)
    await asyncio.sleep(0.2)
    assert sorted(server.relay.message_ids()) == sorted([mid(1), mid(2), mid(3)])
    assert server.stats.opened == 2


async def test_refused_recipients_leave_the_connection_reusable(server: Server) -> None:
    """A 5xx on RCPT is the send's answer (permanent, as before); RSET, and the next message
    goes over the same connection."""
    handler = server.relay

    async def refuse(srv: SMTP, session: Session, envelope: Envelope, address: str, rcpt_options: list[str]) -> str:
        if address.startswith("nobody@"):
            return "550 5.1.1 no such user"
        envelope.rcpt_tos.append(address)
        return "250 OK"

    handler.handle_RCPT = refuse  # type: ignore[attr-defined]
    sender = SmtpSender(config(server.port), policy=RELAY)
    try:
        assert isinstance(await sender.send(delivery(1)), Sent)
        refused = await sender.send(delivery(2, to="nobody@example.com"))
        assert isinstance(await sender.send(delivery(3)), Sent)
    finally:
        await sender.aclose()
    assert isinstance(refused, Permanent)
    assert "550" in refused.reason
    assert server.relay.message_ids() == [mid(1), mid(3)]
    assert server.stats.opened == 1


async def test_idle_connections_close_after_the_timeout(server: Server) -> None:
    sender = SmtpSender(config(server.port), policy=RELAY, pool=PoolLimits(idle_timeout=0.3))
    try:
        assert isinstance(await sender.send(delivery(1)), Sent)
        assert server.stats.open == 1
        await eventually(lambda: server.stats.open == 0, timeout=3)  # closed by us, with a QUIT
        assert server.stats.quits == 1
        assert isinstance(await sender.send(delivery(2)), Sent)  # and a new one opens when needed
        assert server.stats.opened == 2
    finally:
        await sender.aclose()


async def test_connections_retire_after_max_messages(server: Server) -> None:
    sender = SmtpSender(config(server.port), policy=RELAY, pool=PoolLimits(max_messages=3))
    try:
        outcomes = [await sender.send(delivery(n)) for n in range(7)]
    finally:
        await sender.aclose()
    assert all(isinstance(outcome, Sent) for outcome in outcomes)
    assert server.stats.opened == 3  # 3 + 3 + 1
    assert len(server.relay.received) == 7


async def test_aclose_closes_everything_and_a_later_send_still_delivers(server: Server) -> None:
    sender = SmtpSender(config(server.port), policy=RELAY)
    outcomes = await asyncio.gather(*(sender.send(delivery(n)) for n in range(8)))
    assert all(isinstance(outcome, Sent) for outcome in outcomes)
    assert server.stats.open >= 1
    await sender.aclose()
    await eventually(lambda: server.stats.open == 0)
    late = await sender.send(delivery(99))  # a send racing a cache swap is not lost
    assert isinstance(late, Sent)
    await eventually(lambda: server.stats.open == 0)  # ... and holds nothing open after
    assert server.relay.message_ids()[-1] == mid(99)


async def test_a_cancelled_send_does_not_leave_its_connection_in_the_pool(server: Server) -> None:
    server.relay.slow = frozenset({"slow@example.com"})
    sender = SmtpSender(config(server.port), policy=RELAY)
    try:
        assert isinstance(await sender.send(delivery(1)), Sent)
        task = asyncio.create_task(sender.send(delivery(2, to="slow@example.com")))
        await eventually(lambda: len(server.relay.received) == 2)
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
        assert isinstance(await sender.send(delivery(3)), Sent)
    finally:
        await sender.aclose()
    assert server.stats.opened == 2  # the connection cut mid-transaction was closed, not reused
    assert server.relay.message_ids() == [mid(1), mid(2), mid(3)]


async def test_every_new_connection_resolves_and_checks_the_relay_again(server: Server) -> None:
    """The pool does not pin a checked address for ever: each new connection asks the policy,
    which may now refuse what the name resolves to (DNS changed to a private address)."""
    answers: list[Sequence[str]] = [["127.0.0.1"]]
    asked: list[str] = []

    async def resolver(host: str, port: int) -> Sequence[str]:
        asked.append(host)
        return answers[-1]

    policy = OutboundPolicy(allowed_networks=LOOPBACK, resolver=resolver)
    sender = SmtpSender(config(server.port, host="relay.example.com"), policy=policy)
    try:
        for n in range(5):
            assert isinstance(await sender.send(delivery(n)), Sent)
        assert asked == ["relay.example.com"]  # one connection, one check
        server.drop_connections()
        await eventually(lambda: server.stats.open == 0)
        assert isinstance(await sender.send(delivery(5)), Sent)
        assert len(asked) == 2
        answers.append(["10.0.0.5"])
        server.drop_connections()
        await eventually(lambda: server.stats.open == 0)
        refused = await sender.send(delivery(6))
    finally:
        await sender.aclose()
    assert isinstance(refused, Permanent)
    assert "destination refused" in refused.reason
    assert len(server.relay.received) == 6
    assert server.stats.opened == 2


def test_the_wire_format_keeps_list_unsubscribe_whole_in_every_mode() -> None:
    """``serialize`` is what goes after DATA: 8-bit, 7-bit (no 8BITMIME) and SMTPUTF8 sessions
    all keep the unsubscribe header one unencoded line; bodies survive each encoding."""
    message = build_message(
        delivery(1).model_copy(update={"unsubscribe_url": "https://mail.example.com/u/" + "A" * 500}),
        now=datetime(2025, 3, 1, tzinfo=UTC),
    )
    message.replace_header("Subject", "Grüße")
    for raw in (serialize(message), serialize(message, eight_bit=False), serialize(message, utf8=True)):
        head = raw.partition(b"\r\n\r\n")[0].split(b"\r\n")
        assert b"List-Unsubscribe: <https://mail.example.com/u/" + b"A" * 500 + b">" in head
        assert b"List-Unsubscribe-Post: List-Unsubscribe=One-Click" in head
        parsed = email.message_from_bytes(raw, policy=email.policy.default)
        assert parsed["Subject"] == "Grüße"
        plain = parsed.get_body(("plain",))
        assert plain is not None
        assert plain.get_content().strip() == "Hi 1"
    assert serialize(message, eight_bit=False).isascii()
    assert "Subject: Grüße".encode() in serialize(message, utf8=True).split(b"\r\n")
    assert b"Subject: =?utf-8?" in serialize(message)


async def test_starttls_and_login_happen_once_per_connection(tmp_path: Path) -> None:
    """Over STARTTLS + AUTH the pooled sender logs in once and carries every message on that
    session; the certificate is still verified against the configured host."""
    cert, key = self_signed_certificate(tmp_path)
    server_tls = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    server_tls.load_cert_chain(cert, key)
    relay, stats = Relay(), Stats()
    logins: list[bytes] = []

    def login(server: SMTP, session: Session, envelope: Envelope, mechanism: str, data: Any) -> AuthResult:
        ok = isinstance(data, LoginPassword) and (data.login, data.password) == (b"app", b"s3cret")
        logins.append(data.login if isinstance(data, LoginPassword) else b"?")
        return AuthResult(success=ok, handled=False)

    port = free_port()
    controller = CountingController(
        relay,
        stats=stats,
        hostname="127.0.0.1",
        port=port,
        tls_context=server_tls,
        require_starttls=True,
        authenticator=login,
        auth_require_tls=True,
    )
    controller.start()
    secure = SmtpConfig(
        host="127.0.0.1", port=port, security="starttls", username="app", password=SecretStr("s3cret"), timeout=5
    )
    sender = SmtpSender(secure, policy=RELAY, tls_context=ssl.create_default_context(cafile=str(cert)))
    try:
        outcomes = [await sender.send(delivery(n)) for n in range(10)]
    finally:
        await sender.aclose()
        controller.stop()
    assert all(isinstance(outcome, Sent) for outcome in outcomes), outcomes
    assert relay.message_ids() == [mid(n) for n in range(10)]
    assert logins == [b"app"]  # one session: STARTTLS, EHLO and AUTH once for ten messages
    assert len({session for session, _ in relay.received}) == 1


async def test_a_non_ascii_address_uses_smtputf8_or_is_refused_without_it() -> None:
    recipient = "zoë@example.com"
    for smtputf8 in (True, False):
        relay = Relay()
        port = free_port()
        controller = Controller(relay, hostname="127.0.0.1", port=port, enable_SMTPUTF8=smtputf8)
        controller.start()
        sender = SmtpSender(config(port), policy=RELAY)
        try:
            outcome = await sender.send(delivery(1, to=recipient))
        finally:
            await sender.aclose()
            controller.stop()
        if smtputf8:
            assert isinstance(outcome, Sent), outcome
            [(_session, raw)] = relay.received
            head = raw.partition(b"\r\n\r\n")[0].split(b"\r\n")
            assert f"To: {recipient}".encode() in head  # UTF-8 on the wire, as SMTPUTF8 allows
            assert b"List-Unsubscribe: <https://mail.example.com/u/token-1>" in head
        else:
            assert isinstance(outcome, Permanent), outcome
            assert "SMTPUTF8" in outcome.reason
            assert relay.received == []
