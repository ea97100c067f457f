"""Delivery adapters against real servers on loopback: SMTP (aiosmtpd) and webhooks (http.server);
destination safety, unsubscribe tokens, retry policy and the provider contract."""

from __future__ import annotations

import asyncio
import email
import email.policy
import ipaddress
import json
import random
import socket
import ssl
import threading
import time
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from email.message import EmailMessage
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest
from aiosmtpd.controller import Controller
from aiosmtpd.smtp import SMTP, AuthResult, Envelope, LoginPassword, Session
from pydantic import SecretStr, ValidationError

from spotzee.providers.adapter import EmailDelivery, Permanent, Sent, Transient, WebhookDelivery
from spotzee.providers.retry import RetryPolicy, next_delay, seeded_rng, send_with_retries
from spotzee.providers.safety import (
    DestinationRefused,
    DestinationUnresolved,
    IPNetwork,
    OutboundPolicy,
    check_destination,
)
from spotzee.providers.smtp import SmtpSender, build_message, message_id
from spotzee.providers.unsubscribe_tokens import (
    InvalidUnsubscribeToken,
    make_token,
    read_token,
    unsubscribe_url,
)
from spotzee.providers.webhook import (
    IDEMPOTENCY_HEADER,
    SIGNATURE_HEADER,
    TIMESTAMP_HEADER,
    WebhookSender,
    parse_retry_after,
    sign,
    verify_signature,
)
from spotzee.schemas.provider_models import (
    ProviderCreate,
    ProviderDefinition,
    ProviderPublic,
    ProviderUpdate,
    SmtpConfig,
    WebhookConfig,
)
from spotzee.schemas.template_models import HttpMethod, RenderedEmail, RenderedWebhook

SECRET = "whsec_0123456789abcdef"
UNSUB_SECRET = SecretStr("unsubscribe-secret-for-tests-0001")
LOOPBACK: tuple[IPNetwork, ...] = (ipaddress.ip_network("127.0.0.0/8"), ipaddress.ip_network("::1/128"))
NOW = datetime(2025, 3, 1, 12, 0, tzinfo=UTC)
RELAY = OutboundPolicy(allowed_networks=LOOPBACK)  # what an operator with a relay on this host sets
STRICT = OutboundPolicy()


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port: int = probe.getsockname()[1]
        return port


# == SMTP ===========================================================================================


@dataclass
class Mailbox:
    """An aiosmtpd handler: keeps what it accepts; some recipients are refused on purpose."""

    received: list[Envelope] = field(default_factory=list)

    async def handle_RCPT(
        self, server: SMTP, session: Session, envelope: Envelope, address: str, rcpt_options: list[str]
    ) -> str:
        if address.startswith("full@"):
            return "452 4.2.2 mailbox full, try later"
        if address.startswith("nobody@"):
            return "550 5.1.1 no such user"
        envelope.rcpt_tos.append(address)
        return "250 OK"

    async def handle_DATA(self, server: SMTP, session: Session, envelope: Envelope) -> str:
        self.received.append(envelope)
        return "250 2.0.0 queued"


def check_login(server: SMTP, session: Session, envelope: Envelope, mechanism: str, auth_data: Any) -> AuthResult:
    ok = isinstance(auth_data, LoginPassword) and (auth_data.login, auth_data.password) == (b"app", b"s3cret")
    # handled=False: aiosmtpd answers the failure itself (535) instead of leaving it to us.
    return AuthResult(success=ok, handled=False)


@pytest.fixture
def smtp_server() -> Iterator[tuple[Mailbox, int]]:
    mailbox = Mailbox()
    port = free_port()
    controller = Controller(mailbox, hostname="127.0.0.1", port=port, authenticator=check_login, auth_require_tls=False)
    controller.start()
    try:
        yield mailbox, port
    finally:
        controller.stop()


def parsed(envelope: Envelope) -> EmailMessage:
    raw = envelope.original_content or envelope.content
    assert isinstance(raw, bytes)
    message = email.message_from_bytes(raw, policy=email.policy.default)
    assert isinstance(message, EmailMessage)
    return message


def delivery(to: str = "ann@example.com", *, send_id: str = "journey-1:step-2:c1") -> EmailDelivery:
    token = make_token(UNSUB_SECRET, "p1", "c1", "email")
    return EmailDelivery(
        send_id=send_id,
        to=to,
        email=RenderedEmail(
            subject="Welcome, Ann!",
            html="<p>Hi Ann</p>",
            text="Hi Ann",
            from_="Spotzee Team <team@example.com>",
            reply_to="help@example.com",
        ),
        unsubscribe_url=unsubscribe_url("https://mail.example.com", token),
        unsubscribe_mailto="unsubscribe@example.com",
    )


def header_lines(envelope: Envelope) -> list[bytes]:
    """The header block exactly as the SMTP server received it, one entry per physical line."""
    raw = envelope.original_content
    assert isinstance(raw, bytes)
    head, separator, _body = raw.partition(b"\r\n\r\n")
    assert separator, "no blank line after the headers"
    return head.split(b"\r\n")


async def test_smtp_delivers_both_parts_and_the_unsubscribe_headers(smtp_server: tuple[Mailbox, int]) -> None:
    mailbox, port = smtp_server
    sender = SmtpSender(
        SmtpConfig(host="127.0.0.1", port=port, security="none", timeout=5), policy=RELAY, clock=lambda: NOW
    )
    base = delivery()
    accented = base.model_copy(
        update={
            "email": base.email.model_copy(
                update={"subject": "Welcome, Zoë ✓", "from_": "Équipe Spotzee <team@example.com>", "text": "Hi Zoë"}
            )
        }
    )
    outcome = await sender.send(accented)
    assert isinstance(outcome, Sent), outcome
    assert outcome.provider_message_id == message_id("journey-1:step-2:c1", "example.com")

    [envelope] = mailbox.received
    assert envelope.mail_from == "team@example.com"
    assert envelope.rcpt_tos == ["ann@example.com"]

    # On the wire: List-Unsubscribe is one line, neither folded nor RFC 2047-encoded (mailbox
    # providers read the URL from the raw header), and nothing else was folded either.
    token = make_token(UNSUB_SECRET, "p1", "c1", "email")
    lines = header_lines(envelope)
    assert (
        f"List-Unsubscribe: <https://mail.example.com/u/{token}>, "
        "<mailto:unsubscribe@example.com?subject=unsubscribe>".encode("ascii")
    ) in lines
    assert b"List-Unsubscribe-Post: List-Unsubscribe=One-Click" in lines
    assert [line for line in lines if line[:1] in (b" ", b"\t")] == []
    assert b"To: ann@example.com" in lines
    assert b"Reply-To: help@example.com" in lines
    assert all(line.isascii() for line in lines)  # no SMTPUTF8 session: non-ASCII goes encoded
    # ... which the non-ASCII Subject and From name still are (RFC 2047), and decode back.
    [subject] = [line for line in lines if line.startswith(b"Subject: ")]
    [from_] = [line for line in lines if line.startswith(b"From: ")]
    assert b"=?utf-8?" in subject
    assert b"=?utf-8?" in from_
    assert from_.endswith(b" <team@example.com>")

    message = parsed(envelope)
    assert message["Subject"] == "Welcome, Zoë ✓"
    assert message["From"] == "Équipe Spotzee <team@example.com>"
    assert message["Reply-To"] == "help@example.com"
    assert message["Message-ID"] == outcome.provider_message_id
    assert message["List-Unsubscribe"] == (
        f"<https://mail.example.com/u/{token}>, <mailto:unsubscribe@example.com?subject=unsubscribe>"
    )
    assert message["List-Unsubscribe-Post"] == "List-Unsubscribe=One-Click"
    assert message.get_content_type() == "multipart/alternative"
    plain = message.get_body(preferencelist=("plain",))
    html = message.get_body(preferencelist=("html",))
    assert plain is not None
    assert html is not None
    assert plain.get_content().strip() == "Hi Zoë"
    assert html.get_content().strip() == "<p>Hi Ann</p>"

    # A retry of the same send is recognisable by its Message-ID.
    assert isinstance(await sender.send(delivery()), Sent)
    assert parsed(mailbox.received[1])["Message-ID"] == message["Message-ID"]
    await sender.aclose()


async def test_smtp_login_and_reply_codes_classify(smtp_server: tuple[Mailbox, int]) -> None:
    mailbox, port = smtp_server
    config = SmtpConfig(
        host="127.0.0.1", port=port, security="none", username="app", password=SecretStr("s3cret"), timeout=5
    )
    sender = SmtpSender(config, policy=RELAY)
    assert isinstance(await sender.send(delivery()), Sent)
    full = await sender.send(delivery("full@example.com"))
    assert isinstance(full, Transient)
    assert "452" in full.reason
    unknown = await sender.send(delivery("nobody@example.com"))
    assert isinstance(unknown, Permanent)
    assert "550" in unknown.reason
    wrong = SmtpSender(config.model_copy(update={"password": SecretStr("wrong")}), policy=RELAY)
    refused = await wrong.send(delivery())
    assert isinstance(refused, Permanent)
    assert "535" in refused.reason
    assert len(mailbox.received) == 1


async def test_smtp_connection_refused_is_transient() -> None:
    sender = SmtpSender(SmtpConfig(host="127.0.0.1", port=free_port(), security="none", timeout=2), policy=RELAY)
    assert isinstance(await sender.send(delivery()), Transient)


async def test_smtp_starttls_is_required_and_used(tmp_path: Path) -> None:
    cert, key = self_signed_certificate(tmp_path)
    server_tls = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    server_tls.load_cert_chain(cert, key)
    mailbox = Mailbox()
    port = free_port()
    controller = Controller(mailbox, hostname="127.0.0.1", port=port, tls_context=server_tls, require_starttls=True)
    controller.start()
    try:
        trusting = ssl.create_default_context(cafile=str(cert))
        secure = SmtpConfig(host="127.0.0.1", port=port, security="starttls", timeout=5)
        assert isinstance(await SmtpSender(secure, policy=RELAY, tls_context=trusting).send(delivery()), Sent)
        # Without the test CA the certificate does not verify: retrying will not fix that.
        untrusted = await SmtpSender(secure, policy=RELAY).send(delivery())
        assert isinstance(untrusted, Permanent), untrusted
        # The server insists on STARTTLS: a plain session is refused, nothing is delivered.
        plain = await SmtpSender(secure.model_copy(update={"security": "none"}), policy=RELAY).send(delivery())
        assert not isinstance(plain, Sent)
    finally:
        controller.stop()
    assert len(mailbox.received) == 1


def self_signed_certificate(directory: Path) -> tuple[Path, Path]:
    """A certificate for localhost and 127.0.0.1 (skips when the cryptography package is missing)."""
    pytest.importorskip("cryptography")
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID

    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "spotzee test")])
    now = datetime.now(UTC)
    certificate = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - timedelta(minutes=5))
        .not_valid_after(now + timedelta(days=1))
        .add_extension(
            x509.SubjectAlternativeName([x509.DNSName("localhost"), x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]),
            critical=False,
        )
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .sign(key, hashes.SHA256())
    )
    cert_path, key_path = directory / "cert.pem", directory / "key.pem"
    cert_path.write_bytes(certificate.public_bytes(serialization.Encoding.PEM))
    key_path.write_bytes(
        key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption())
    )
    return cert_path, key_path


def test_a_long_unsubscribe_url_stays_one_unencoded_header() -> None:
    long = delivery().model_copy(update={"unsubscribe_url": "https://mail.example.com/u/" + "A" * 500})
    raw = build_message(long, now=NOW).as_bytes()
    header = next(line for line in raw.split(b"\r\n") if line.startswith(b"List-Unsubscribe:"))
    assert b"=?utf-8?" not in header
    assert b"/u/" + b"A" * 500 + b">" in header


def test_plain_http_unsubscribe_links_get_no_one_click_header() -> None:
    message = build_message(delivery().model_copy(update={"unsubscribe_url": "http://localhost/u/t"}), now=NOW)
    assert message["List-Unsubscribe"].startswith("<http://localhost/u/t>")
    assert message["List-Unsubscribe-Post"] is None


# == webhooks =======================================================================================

HTTP_DATE = "Wed, 21 Oct 2015 07:28:00 GMT"
BEFORE_HTTP_DATE = datetime(2015, 10, 21, 7, 27, 30, tzinfo=UTC).timestamp()


@dataclass
class Seen:
    method: str
    path: str
    headers: dict[str, str]
    body: bytes


class Hooks(BaseHTTPRequestHandler):
    """A receiver whose paths answer in scripted ways; every request is recorded."""

    seen: list[Seen]

    def log_message(self, format: str, *args: Any) -> None:  # quiet
        pass

    def handle_any(self) -> None:
        length = int(self.headers.get("Content-Length") or 0)
        body = self.rfile.read(length) if length else b""
        self.server.seen.append(  # type: ignore[attr-defined]
            Seen(self.command, self.path, {k.lower(): v for k, v in self.headers.items()}, body)
        )
        routes: dict[str, tuple[int, dict[str, str]]] = {
            "/ok": (200, {}),
            "/busy": (429, {"Retry-After": "7"}),
            "/busy-until": (503, {"Retry-After": HTTP_DATE}),
            "/error": (500, {}),
            "/bad": (400, {}),
            "/to-private": (302, {"Location": "http://10.0.0.1/internal"}),
            "/to-metadata": (307, {"Location": "http://[::ffff:169.254.169.254]/latest"}),
            "/keep-post": (307, {"Location": "/ok"}),
            "/see-other": (303, {"Location": "/ok"}),
            "/loop": (302, {"Location": "/loop"}),
        }
        if self.path == "/slow":
            time.sleep(1.5)
        status, headers = routes.get(self.path, (404, {}))
        payload = b"nope" if status == 400 else b""
        try:
            self.send_response(status)
            for name, value in headers.items():
                self.send_header(name, value)
            self.send_header("Content-Length", str(len(payload)))
            self.end_headers()
            self.wfile.write(payload)
        except (BrokenPipeError, ConnectionResetError):
            pass  # the client gave up (the timeout test)

    do_GET = do_POST = do_PUT = do_PATCH = do_DELETE = handle_any


@pytest.fixture
def hooks() -> Iterator[tuple[list[Seen], int]]:
    server = ThreadingHTTPServer(("127.0.0.1", 0), Hooks)
    server.seen = []  # type: ignore[attr-defined]
    thread = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
    thread.start()
    try:
        yield server.seen, server.server_address[1]  # type: ignore[attr-defined]
    finally:
        server.shutdown()
        server.server_close()


@pytest.fixture
async def sender() -> AsyncIterator[WebhookSender]:
    config = WebhookConfig(signing_secret=SecretStr(SECRET), timeout=1.0)
    webhook = WebhookSender(config, policy=RELAY, clock=lambda: BEFORE_HTTP_DATE)
    try:
        yield webhook
    finally:
        await webhook.aclose()


def request(url: str, *, method: HttpMethod = "POST", body: str | None = '{"a": 1}') -> WebhookDelivery:
    rendered = RenderedWebhook(method=method, url=url, headers={"Authorization": "Bearer t"}, body=body)
    return WebhookDelivery(send_id="campaign-9:c1", request=rendered)


async def test_webhook_is_signed_and_carries_the_idempotency_key(
    hooks: tuple[list[Seen], int], sender: WebhookSender
) -> None:
    seen, port = hooks
    outcome = await sender.send(request(f"http://127.0.0.1:{port}/ok"))
    assert outcome == Sent(detail="HTTP 200")
    [hit] = seen
    assert (hit.method, hit.path, hit.body) == ("POST", "/ok", b'{"a": 1}')
    assert hit.headers[IDEMPOTENCY_HEADER.lower()] == "campaign-9:c1"
    assert hit.headers["content-type"] == "application/json"
    assert hit.headers["authorization"] == "Bearer t"
    timestamp, signature = hit.headers[TIMESTAMP_HEADER.lower()], hit.headers[SIGNATURE_HEADER.lower()]
    assert timestamp == str(int(BEFORE_HTTP_DATE))
    assert verify_signature(SECRET, timestamp, hit.body, signature, now=BEFORE_HTTP_DATE)
    assert not verify_signature("another-secret-000", timestamp, hit.body, signature, now=BEFORE_HTTP_DATE)
    assert not verify_signature(SECRET, timestamp, hit.body + b" ", signature, now=BEFORE_HTTP_DATE)
    assert not verify_signature(SECRET, timestamp, hit.body, signature, now=BEFORE_HTTP_DATE + 3600)


async def test_webhook_status_classification(hooks: tuple[list[Seen], int], sender: WebhookSender) -> None:
    _seen, port = hooks
    base = f"http://127.0.0.1:{port}"
    busy = await sender.send(request(f"{base}/busy"))
    assert isinstance(busy, Transient)
    assert busy.retry_after == 7
    assert RetryPolicy(base=1).delay(1, busy) == pytest.approx(7, abs=1.0)  # the receiver's wait wins
    until = await sender.send(request(f"{base}/busy-until"))
    assert isinstance(until, Transient)
    assert until.retry_after == 30
    error = await sender.send(request(f"{base}/error"))
    assert isinstance(error, Transient)
    assert error.retry_after is None
    bad = await sender.send(request(f"{base}/bad"))
    assert bad == Permanent(reason="HTTP 400: nope")


async def test_webhook_redirects_are_checked_hop_by_hop(hooks: tuple[list[Seen], int], sender: WebhookSender) -> None:
    seen, port = hooks
    base = f"http://127.0.0.1:{port}"
    for path in ("/to-private", "/to-metadata"):
        refused = await sender.send(request(base + path))
        assert isinstance(refused, Permanent), refused
        assert "destination refused" in refused.reason
    looping = await sender.send(request(f"{base}/loop"))
    assert looping == Permanent(reason="more than 5 redirects")
    assert [hit.path for hit in seen].count("/loop") == 6
    seen.clear()

    assert isinstance(await sender.send(request(f"{base}/keep-post")), Sent)
    assert [(hit.method, hit.path, hit.body) for hit in seen] == [
        ("POST", "/keep-post", b'{"a": 1}'),
        ("POST", "/ok", b'{"a": 1}'),
    ]
    seen.clear()
    assert isinstance(await sender.send(request(f"{base}/see-other")), Sent)
    final = seen[-1]
    assert (final.method, final.path, final.body) == ("GET", "/ok", b"")
    # Re-signed for what was actually sent.
    assert verify_signature(
        SECRET, final.headers["x-spotzee-timestamp"], b"", final.headers["x-spotzee-signature"], now=BEFORE_HTTP_DATE
    )


async def test_webhook_to_loopback_is_refused_unless_allowed(hooks: tuple[list[Seen], int]) -> None:
    seen, port = hooks
    strict = WebhookSender(WebhookConfig(signing_secret=SecretStr(SECRET)), policy=STRICT)
    try:
        outcome = await strict.send(request(f"http://127.0.0.1:{port}/ok"))
    finally:
        await strict.aclose()
    assert isinstance(outcome, Permanent)
    assert "loopback" in outcome.reason
    assert seen == []


async def test_webhook_by_name_connects_to_the_checked_address(hooks: tuple[list[Seen], int]) -> None:
    """``localhost`` resolves (maybe to ::1 first, where nothing listens); the Host header keeps the name."""
    seen, port = hooks
    webhook = WebhookSender(WebhookConfig(signing_secret=SecretStr(SECRET)), policy=RELAY)
    try:
        assert isinstance(await webhook.send(request(f"http://localhost:{port}/ok")), Sent)
    finally:
        await webhook.aclose()
    assert seen[-1].headers["host"] == f"localhost:{port}"


async def test_https_webhook_by_name_verifies_the_name_on_the_pinned_address(tmp_path: Path) -> None:
    """Connecting to the checked IP must still present and verify the host name (SNI)."""
    cert, key = self_signed_certificate(tmp_path)
    server_tls = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    server_tls.load_cert_chain(cert, key)
    server = ThreadingHTTPServer(("127.0.0.1", 0), Hooks)
    server.seen = []  # type: ignore[attr-defined]
    server.socket = server_tls.wrap_socket(server.socket, server_side=True)
    thread = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
    thread.start()
    port = server.server_address[1]
    config = WebhookConfig(signing_secret=SecretStr(SECRET), timeout=2)
    trusting = WebhookSender(config, policy=RELAY, tls_context=ssl.create_default_context(cafile=str(cert)))
    untrusting = WebhookSender(config, policy=RELAY)
    try:
        assert isinstance(await trusting.send(request(f"https://localhost:{port}/ok")), Sent)
        rejected = await untrusting.send(request(f"https://localhost:{port}/ok"))
    finally:
        await trusting.aclose()
        await untrusting.aclose()
        server.shutdown()
        server.server_close()
    assert server.seen[0].headers["host"] == f"localhost:{port}"  # type: ignore[attr-defined]
    assert isinstance(rejected, Permanent)
    assert "certificate" in rejected.reason


async def test_webhook_timeouts_and_refused_connections_are_transient(hooks: tuple[list[Seen], int]) -> None:
    _seen, port = hooks
    webhook = WebhookSender(WebhookConfig(signing_secret=SecretStr(SECRET), timeout=0.3), policy=RELAY)
    try:
        slow = await webhook.send(request(f"http://127.0.0.1:{port}/slow"))
        closed = await webhook.send(request(f"http://127.0.0.1:{free_port()}/ok"))
    finally:
        await webhook.aclose()
    assert isinstance(slow, Transient)
    assert "0.3s" in slow.reason
    assert isinstance(closed, Transient)


def test_signature_format_and_retry_after_parsing() -> None:
    assert sign("k" * 16, 1700000000, b"{}").startswith("v1=")
    assert len(sign("k" * 16, 1700000000, b"{}")) == 3 + 64
    assert parse_retry_after("120", now=0) == 120
    assert parse_retry_after(HTTP_DATE, now=BEFORE_HTTP_DATE) == 30
    assert parse_retry_after(HTTP_DATE, now=BEFORE_HTTP_DATE + 600) == 0
    assert parse_retry_after("soon", now=0) is None
    assert parse_retry_after(None, now=0) is None


# == destination safety =============================================================================

REFUSED = [
    "10.1.2.3",
    "172.16.0.1",
    "192.168.1.1",
    "127.0.0.1",
    "127.8.9.10",
    "169.254.169.254",
    "100.64.0.1",
    "0.0.0.0",
    "224.0.0.1",
    "255.255.255.255",
    "[::1]",
    "[fe80::1]",
    "[fc00::1]",
    "[fd12:3456::1]",
    "[::]",
    "[ff02::1]",
    "[::ffff:127.0.0.1]",
    "[::ffff:10.0.0.1]",
    "[::ffff:169.254.169.254]",
    "[64:ff9b::7f00:1]",  # NAT64 of 127.0.0.1
    "[2002:7f00:1::]",  # 6to4 of 127.0.0.1
    "[2001:db8::1]",  # documentation
    "2130706433",  # 127.0.0.1 as one number: getaddrinfo parses it locally
]


@pytest.mark.parametrize("host", REFUSED)
async def test_non_public_destinations_are_refused(host: str) -> None:
    with pytest.raises(DestinationRefused):
        await check_destination(f"http://{host}/hook", allow_private=False)


@pytest.mark.parametrize("host", ["93.184.216.34", "[2606:2800:220:1:248:1893:25c8:1946]", "[::ffff:93.184.216.34]"])
async def test_public_addresses_are_allowed(host: str) -> None:
    destination = await check_destination(f"https://{host}:8443/hook", allow_private=False)
    assert destination.port == 8443
    assert destination.scheme == "https"
    assert len(destination.addresses) == 1


async def test_settings_can_allow_private_networks_but_never_multicast_or_unspecified() -> None:
    assert (await check_destination("http://10.0.0.1/", allow_private=True)).addresses
    assert (await check_destination("http://[::ffff:127.0.0.1]/", allow_private=True)).addresses
    for host in ("0.0.0.0", "224.0.0.1", "[::]"):
        with pytest.raises(DestinationRefused):
            await check_destination(f"http://{host}/", allow_private=True)
    assert (await check_destination("http://127.0.0.1/", allow_private=False, allowed_networks=LOOPBACK)).addresses
    with pytest.raises(DestinationRefused):
        await check_destination("http://10.0.0.1/", allow_private=False, allowed_networks=LOOPBACK)


@pytest.mark.parametrize("url", ["ftp://93.184.216.34/", "file:///etc/passwd", "http:///nohost", "http://x:99999/"])
async def test_only_http_urls_with_a_host(url: str) -> None:
    with pytest.raises(DestinationRefused):
        await check_destination(url, allow_private=False)


async def test_every_resolved_address_must_pass() -> None:
    async def split_horizon(host: str, port: int) -> list[str]:
        return ["93.184.216.34", "10.0.0.7"]

    async def public(host: str, port: int) -> list[str]:
        return ["93.184.216.34", "93.184.216.34", "2606:2800:220:1:248:1893:25c8:1946"]

    async def nxdomain(host: str, port: int) -> list[str]:
        raise socket.gaierror(socket.EAI_NONAME, "Name or service not known")

    with pytest.raises(DestinationRefused, match="private"):
        await check_destination("https://hooks.example.com/", allow_private=False, resolver=split_horizon)
    destination = await check_destination("https://Hooks.Example.com./x", allow_private=False, resolver=public)
    assert destination.host == "hooks.example.com"
    assert [str(ip) for ip in destination.addresses] == ["93.184.216.34", "2606:2800:220:1:248:1893:25c8:1946"]
    with pytest.raises(DestinationUnresolved):
        await check_destination("https://nowhere.example.com/", allow_private=False, resolver=nxdomain)


async def test_localhost_by_name_is_refused_after_resolution() -> None:
    with pytest.raises(DestinationRefused, match="loopback"):
        await check_destination("http://localhost:8080/", allow_private=False)


# == unsubscribe tokens =============================================================================


def test_unsubscribe_token_round_trip() -> None:
    token = make_token(UNSUB_SECRET, "project.1", "contact:ü/42", "email")
    claim = read_token(UNSUB_SECRET, token)
    assert (claim.project_id, claim.contact_id, claim.channel) == ("project.1", "contact:ü/42", "email")
    assert token == make_token(UNSUB_SECRET, "project.1", "contact:ü/42", "email")  # deterministic
    assert all(ch.isalnum() or ch in "-_." for ch in token)
    assert unsubscribe_url("https://m.example.com/", token) == f"https://m.example.com/u/{token}"


def test_tampered_or_foreign_tokens_are_refused() -> None:
    token = make_token(UNSUB_SECRET, "p1", "c1", "email")
    payload, mac = token.split(".")
    other = make_token(UNSUB_SECRET, "p1", "c2", "email")
    forged_payload = other.split(".")[0] + "." + mac
    flipped = payload + "." + ("A" if mac[0] != "A" else "B") + mac[1:]
    for bad in (forged_payload, flipped, payload, "", "..", token + "x", "not-a-token"):
        with pytest.raises(InvalidUnsubscribeToken):
            read_token(UNSUB_SECRET, bad)
    with pytest.raises(InvalidUnsubscribeToken):
        read_token(SecretStr("a-different-secret-0000"), token)


def test_unsubscribe_secrets_can_rotate() -> None:
    old = make_token(UNSUB_SECRET, "p1", "c1", "sms")
    assert read_token([SecretStr("the-new-secret-000000"), UNSUB_SECRET], old).channel == "sms"
    with pytest.raises(ValueError, match="at least"):
        make_token("short", "p1", "c1", "email")


# == retry policy ===================================================================================


def test_backoff_stays_within_the_exponential_ceiling() -> None:
    rng = random.Random(1)
    for attempt in range(1, 12):
        ceiling = min(60.0, 2.0 * 2 ** (attempt - 1))
        delays = [next_delay(attempt, base=2.0, cap=60.0, rng=rng) for _ in range(200)]
        assert all(0 <= delay <= ceiling for delay in delays)
        assert max(delays) > ceiling / 2  # full jitter uses the whole range
    assert next_delay(10_000, base=1.0, cap=30.0, rng=rng) <= 30.0  # no overflow for huge attempts
    with pytest.raises(ValueError, match="from 1"):
        next_delay(0)


def test_retry_after_is_a_floor_with_a_ceiling() -> None:
    rng = random.Random(2)
    assert all(next_delay(1, 45.0, base=1.0, cap=10.0, rng=rng) == 45.0 for _ in range(50))
    assert next_delay(1, 10**9, max_retry_after=3600.0, rng=rng) == 3600.0
    assert next_delay(8, 0.5, base=1.0, cap=600.0, rng=random.Random(3)) >= 0.5


def test_seeded_delays_replay_identically() -> None:
    policy = RetryPolicy(base=1.0, cap=100.0, max_retries=3)
    transient = Transient(reason="HTTP 503")
    first = [policy.delay(n, transient, send_id="s-1") for n in (1, 2, 3)]
    assert first == [policy.delay(n, transient, send_id="s-1") for n in (1, 2, 3)]
    assert first != [policy.delay(n, transient, send_id="s-2") for n in (1, 2, 3)]
    assert policy.delay(4, transient, send_id="s-1") is None
    assert seeded_rng("s", 1).random() == seeded_rng("s", 1).random()


async def test_send_with_retries_sleeps_and_stops() -> None:
    script: list[Sent | Transient | Permanent] = [
        Transient(reason="429", retry_after=7),
        Transient(reason="503"),
        Sent(),
    ]
    slept: list[float] = []

    async def attempt() -> Sent | Transient | Permanent:
        return script.pop(0)

    async def sleep(seconds: float) -> None:
        slept.append(seconds)

    policy = RetryPolicy(base=1.0, cap=4.0, max_retries=5)
    assert await send_with_retries(attempt, policy, send_id="s", sleep=sleep) == Sent()
    assert len(slept) == 2
    assert slept[0] >= 7
    assert 0 <= slept[1] <= 2

    async def always_busy() -> Sent | Transient | Permanent:
        return Transient(reason="busy")

    slept.clear()
    outcome = await send_with_retries(always_busy, RetryPolicy(max_retries=2), sleep=sleep)
    assert outcome == Transient(reason="busy")
    assert len(slept) == 2

    async def gone() -> Sent | Transient | Permanent:
        return Permanent(reason="HTTP 410")

    assert await send_with_retries(gone, policy, sleep=sleep) == Permanent(reason="HTTP 410")


# == provider definitions ===========================================================================

SMTP_BODY: dict[str, Any] = {
    "name": "Mailgun SMTP",
    "channel": "email",
    "type": "smtp",
    "config": {"host": "smtp.example.com", "port": 465, "username": "app", "password": "pw-123", "security": "ssl"},
}
WEBHOOK_BODY: dict[str, Any] = {
    "name": "CRM",
    "channel": "webhook",
    "type": "webhook",
    "config": {"signing_secret": SECRET, "max_retries": 3},
}


def locs(model: type[ProviderCreate], body: dict[str, Any]) -> list[str]:
    with pytest.raises(ValidationError) as caught:
        model.model_validate(body)
    return [".".join(str(part) for part in error["loc"]) for error in caught.value.errors()]


def test_provider_config_follows_type_and_channel_must_match() -> None:
    smtp = ProviderCreate.model_validate(SMTP_BODY)
    assert isinstance(smtp.config, SmtpConfig)
    assert smtp.config.security == "ssl"
    assert isinstance(ProviderCreate.model_validate(WEBHOOK_BODY).config, WebhookConfig)
    assert locs(ProviderCreate, {**SMTP_BODY, "channel": "webhook"}) == ["type"]
    assert locs(ProviderCreate, {**SMTP_BODY, "config": {"host": "bad host!", "security": "tls"}}) == [
        "config.host",
        "config.security",
    ]
    assert locs(ProviderCreate, {**WEBHOOK_BODY, "config": {"signing_secret": "short"}}) == ["config.signing_secret"]
    assert locs(ProviderCreate, {**WEBHOOK_BODY, "config": {}}) == ["config.signing_secret"]
    assert "config.host" in locs(ProviderCreate, {**SMTP_BODY, "type": "smtp", "config": WEBHOOK_BODY["config"]})


def test_secrets_never_leave_through_the_api_but_survive_storage() -> None:
    body = ProviderCreate.model_validate(SMTP_BODY)
    assert "pw-123" not in body.model_dump_json()
    stored = ProviderDefinition(
        id="pr1",
        project_id="p1",
        name=body.name,
        channel=body.channel,
        provider_type=body.type,
        config=body.config,
        version=1,
        created_at=NOW,
        updated_at=NOW,
    )
    assert "pw-123" not in stored.model_dump_json()
    restored = ProviderDefinition.model_validate_json(json.dumps(stored.storage_dump()))
    assert isinstance(restored.config, SmtpConfig)
    assert restored.config.password is not None
    assert restored.config.password.get_secret_value() == "pw-123"
    public = ProviderPublic.from_definition(restored).model_dump(mode="json")
    assert public["config"] == {
        "host": "smtp.example.com",
        "port": 465,
        "username": "app",
        "has_password": True,
        "security": "ssl",
        "timeout": 30.0,
    }
    assert "pw-123" not in json.dumps(public)


def test_an_update_without_the_secret_keeps_the_stored_one() -> None:
    stored = ProviderCreate.model_validate(WEBHOOK_BODY).config
    update = ProviderUpdate.model_validate({**WEBHOOK_BODY, "config": {"timeout": 3}})
    merged = update.with_secrets_from(stored)
    assert isinstance(merged, WebhookConfig)
    assert merged.timeout == 3
    assert merged.signing_secret is not None
    assert merged.signing_secret.get_secret_value() == SECRET
    replaced = ProviderUpdate.model_validate({**WEBHOOK_BODY, "config": {"signing_secret": "n" * 20}})
    new_secret = replaced.with_secrets_from(stored)
    assert isinstance(new_secret, WebhookConfig)
    assert new_secret.signing_secret is not None
    assert new_secret.signing_secret.get_secret_value() == "n" * 20


def test_a_webhook_sender_needs_a_secret() -> None:
    with pytest.raises(ValueError, match="signing secret"):
        WebhookSender(WebhookConfig(), policy=STRICT)


async def test_senders_satisfy_the_provider_protocol() -> None:
    from spotzee.providers.adapter import Provider

    email_provider: Provider[EmailDelivery] = SmtpSender(SmtpConfig(host="127.0.0.1", security="none"), policy=RELAY)
    webhook_provider: Provider[WebhookDelivery] = WebhookSender(
        WebhookConfig(signing_secret=SecretStr(SECRET)), policy=STRICT
    )
    await email_provider.aclose()
    await webhook_provider.aclose()
    await asyncio.sleep(0)
