"""End to end on both runtimes: identify + track -> journey -> email at a real SMTP server
(aiosmtpd) -> unsubscribe -> the next send is suppressed (consent checked at send time)."""

from __future__ import annotations

import asyncio
import email
import email.policy
import re
import threading
import time
from collections.abc import Iterator
from email.message import EmailMessage
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any, ClassVar

import httpx
import pytest
from aiosmtpd.controller import Controller
from aiosmtpd.smtp import SMTP as SMTPServer
from aiosmtpd.smtp import Envelope, Session

from spotzee.providers.unsubscribe_tokens import make_token, unsubscribe_url
from spotzee.services.container import unsubscribe_secret
from tests.integration.test_catalogue import WELCOME_EMAIL, welcome_journey
from tests.support import LOOPBACK_RELAY, Stack, free_port, running_stack, wait_until


@pytest.fixture
def stack(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Stack]:
    """conftest's ``stack``, allowed to deliver to the receivers on loopback."""
    runtime = getattr(request, "param", "embedded")
    bootstrap = request.getfixturevalue("kafka_bootstrap") if runtime == "kafka" else None
    with running_stack(tmp_path / "data", runtime=runtime, kafka_bootstrap=bootstrap, **LOOPBACK_RELAY) as running:
        yield running


class Inbox:
    def __init__(self) -> None:
        self.messages: list[EmailMessage] = []
        self.raw: list[bytes] = []  # as received: header assertions look at the wire, not a parse

    async def handle_DATA(self, server: SMTPServer, session: Session, envelope: Envelope) -> str:
        raw = envelope.original_content or envelope.content
        assert isinstance(raw, bytes)
        message = email.message_from_bytes(raw, policy=email.policy.default)
        assert isinstance(message, EmailMessage)
        self.raw.append(raw)
        self.messages.append(message)
        return "250 OK"


@pytest.fixture
def inbox() -> Iterator[tuple[Inbox, int]]:
    box = Inbox()
    port = free_port()
    controller = Controller(box, hostname="127.0.0.1", port=port)
    controller.start()
    try:
        yield box, port
    finally:
        controller.stop()


def journey(template_id: str, trigger: str) -> dict[str, Any]:
    body = welcome_journey(template_id)
    body["trigger"] = {"type": "event", "event": trigger}
    body["steps"]["wait"]["duration"] = {"value": 1, "unit": "second"}
    return body


def publish(stack: Stack, body: dict[str, Any]) -> str:
    journey_id: str = stack.project.post("/api/v1/journeys", json=body).json()["id"]
    assert stack.project.post(f"/api/v1/journeys/{journey_id}/publish").status_code == 200
    return journey_id


def welcome_through_relay(stack: Stack, smtp_port: int) -> str:
    """The project's email provider: the SMTP server on ``smtp_port``; the welcome template's id."""
    provider = {
        "name": "Local relay",
        "channel": "email",
        "type": "smtp",
        "config": {"host": "127.0.0.1", "port": smtp_port, "security": "none"},
    }
    assert stack.project.post("/api/v1/providers", json=provider).status_code == 201
    template_id: str = stack.project.post("/api/v1/templates", json=WELCOME_EMAIL).json()["id"]
    return template_id


def test_signed_up_to_inbox_then_unsubscribe_suppresses_the_next_send(stack: Stack, inbox: tuple[Inbox, int]) -> None:
    box, smtp_port = inbox
    project = stack.project
    template_id = welcome_through_relay(stack, smtp_port)
    publish(stack, journey(template_id, "signed_up"))
    second = publish(stack, journey(template_id, "upgraded"))

    ingest = stack.ingest
    traits = {"plan": "free", "email": "ada@example.com", "first_name": "Ada"}
    ingest.post("/v1/identify", json={"userId": "ada", "traits": traits})
    ingest.post("/v1/track", json={"userId": "ada", "event": "signed_up", "properties": {"plan": "free"}})
    wait_until(lambda: len(box.messages) == 1, timeout=30)
    message = box.messages[0]
    assert message["To"] == "ada@example.com"
    assert message["Subject"] == "Welcome, Ada"
    html = message.get_body(("html",))
    assert html is not None
    assert "Hi Ada, thanks for free." in html.get_content()
    # The raw header block: List-Unsubscribe one unfolded, unencoded line (mail providers read the
    # link from it); no one-click header, which needs an https link (this one is http).
    headers = box.raw[0].partition(b"\r\n\r\n")[0].split(b"\r\n")
    assert not any(line.startswith(b"List-Unsubscribe-Post:") for line in headers)
    [unsubscribe] = [line for line in headers if line.startswith(b"List-Unsubscribe:")]
    link = re.fullmatch(rb"List-Unsubscribe: <(http://[^>\s]+/u/[^>\s]+)>", unsubscribe)
    assert link is not None, unsubscribe
    url = link.group(1).decode("ascii")
    assert url.startswith(stack.base_url)

    stack.settle()
    sent = stack.sql("SELECT status FROM messages FINAL WHERE contact_id = 'ada' ORDER BY at")
    assert [row[0] for row in sent] == ["queued", "sent"]
    assert stack.scalar("SELECT count() FROM events WHERE event = 'message_sent' AND contact_id = 'ada'") == 1

    # The link works: GET asks (and changes nothing), POST unsubscribes.
    confirm = httpx.get(url)
    assert confirm.status_code == 200
    assert "<form method='post'" in confirm.text
    assert "subscriptions" not in project.get("/api/v1/contacts/ada").json()["traits"]
    done = httpx.post(url, content="List-Unsubscribe=One-Click")
    assert done.status_code == 200
    assert project.get("/api/v1/contacts/ada").json()["traits"]["subscriptions"] == {"email": "unsubscribed"}
    assert httpx.post(url.rsplit("/", 1)[0] + "/forged.token").status_code == 400

    ingest.post("/v1/track", json={"userId": "ada", "event": "upgraded"})

    def suppressed() -> bool:
        stack.settle()
        rows = stack.sql(f"SELECT status FROM messages FINAL WHERE journey_id = '{second}' ORDER BY at")
        return [row[0] for row in rows] == ["queued", "suppressed"]

    wait_until(suppressed, timeout=30, interval=0.5)
    assert len(box.messages) == 1  # nothing more reached the SMTP server


class Receiver(BaseHTTPRequestHandler):
    """A webhook receiver: ``/flaky`` answers 429 with ``Retry-After: 1`` once, then 200;
    ``/broken`` always 400. Every call is noted (path, Idempotency-Key, time)."""

    calls: ClassVar[list[tuple[str, str, float]]] = []

    def do_POST(self) -> None:
        self.rfile.read(int(self.headers.get("Content-Length") or 0))
        self.calls.append((self.path, self.headers.get("Idempotency-Key") or "", time.monotonic()))
        if self.path == "/flaky" and sum(1 for c in self.calls if c[0] == "/flaky") == 1:
            self.send_response(429)
            self.send_header("Retry-After", "1")
        elif self.path == "/broken":
            self.send_response(400)
        else:
            self.send_response(200)
        self.send_header("Content-Length", "0")
        self.end_headers()

    def log_message(self, format: str, *args: Any) -> None:
        pass


@pytest.fixture
def receiver() -> Iterator[tuple[list[tuple[str, str, float]], int]]:
    calls: ClassVar[list[tuple[str, str, float]]] = []
    handler = type("Handler", (Receiver,), {"calls": calls})
    server = ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield calls, int(server.server_address[1])
    finally:
        server.shutdown()
        server.server_close()


@pytest.mark.parametrize("runtime", ["embedded", "kafka"])
def test_a_throttled_send_is_retried_after_retry_after_and_a_refused_one_is_dead_lettered(
    request: pytest.FixtureRequest,
    tmp_path: Path,
    runtime: str,
    receiver: tuple[list[tuple[str, str, float]], int],
) -> None:
    calls, port = receiver
    bootstrap = request.getfixturevalue("kafka_bootstrap") if runtime == "kafka" else None
    with running_stack(
        tmp_path / "data",
        runtime=runtime,
        kafka_bootstrap=bootstrap,
        **LOOPBACK_RELAY,
        delivery_retry_base=0.2,
    ) as stack:
        project = stack.project
        provider = {
            "name": "hooks",
            "channel": "webhook",
            "type": "webhook",
            "config": {"signing_secret": "s" * 32, "timeout": 10},
        }
        assert project.post("/api/v1/providers", json=provider).status_code == 201, "provider"
        journeys = {}
        for path in ("flaky", "broken"):
            template = {
                "name": path,
                "channel": "webhook",
                "content": {"url": f"http://127.0.0.1:{port}/{path}", "body": "{{ contact.id }}"},
            }
            created = project.post("/api/v1/templates", json=template)
            assert created.status_code == 201, created.text
            body = journey(created.json()["id"], f"{path}_event")
            body["steps"]["mail"]["channel"] = "webhook"
            journeys[path] = publish(stack, body)

        ingest = stack.ingest
        ingest.post("/v1/identify", json={"userId": "ada", "traits": {"plan": "free"}})
        ingest.post("/v1/track", json={"userId": "ada", "event": "broken_event"})
        ingest.post("/v1/track", json={"userId": "ada", "event": "flaky_event"})

        def statuses(journey_id: str) -> list[str]:
            rows = stack.sql(f"SELECT status FROM messages FINAL WHERE journey_id = '{journey_id}' ORDER BY at")
            return [row[0] for row in rows]

        def finished() -> bool:
            stack.settle()
            return statuses(journeys["flaky"]) == ["queued", "retrying", "sent"] and statuses(journeys["broken"]) == [
                "queued",
                "failed",
            ]

        wait_until(finished, timeout=60, interval=0.5)
        flaky = [c for c in calls if c[0] == "/flaky"]
        assert len(flaky) == 2
        assert flaky[0][1] == flaky[1][1] != ""  # the same Idempotency-Key (the send_id) on the retry
        assert flaky[1][2] - flaky[0][2] >= 0.95  # not before Retry-After
        assert len([c for c in calls if c[0] == "/broken"]) == 1  # permanent: never retried
        broken_send = stack.scalar(f"SELECT send_id FROM messages FINAL WHERE journey_id = '{journeys['broken']}'")
        dead = stack.sql("SELECT topic, dead_letter_id, error FROM dead_letters")
        assert [row[:2] for row in dead] == [["sends", f"sends/{broken_send}"]]
        assert "400" in dead[0][2]
        events = stack.sql("SELECT event FROM events FINAL WHERE event LIKE 'message_%' ORDER BY event")
        assert [row[0] for row in events] == ["message_failed", "message_sent"]


class HoldingInbox(Inbox):
    """Holds the 250 of messages to ``held`` until released: the delivery agent is mid-call, and
    the sends behind it (same partition) wait."""

    def __init__(self, held: str) -> None:
        super().__init__()
        self.held = held
        self.release = threading.Event()

    async def handle_DATA(self, server: SMTPServer, session: Session, envelope: Envelope) -> str:
        answer = await super().handle_DATA(server, session, envelope)
        if self.held in [str(r) for r in envelope.rcpt_tos]:
            await asyncio.to_thread(self.release.wait)
        return answer


@pytest.mark.parametrize("runtime", ["embedded", "kafka"])
def test_an_unsubscribe_stops_a_send_already_queued(
    request: pytest.FixtureRequest, tmp_path: Path, runtime: str
) -> None:
    box = HoldingInbox("ada@example.com")
    smtp_port = free_port()
    controller = Controller(box, hostname="127.0.0.1", port=smtp_port)
    controller.start()
    bootstrap = request.getfixturevalue("kafka_bootstrap") if runtime == "kafka" else None
    try:
        # One partition: bob's send queues behind ada's, which the SMTP server holds.
        with running_stack(
            tmp_path / "data", runtime=runtime, kafka_bootstrap=bootstrap, partitions=1, **LOOPBACK_RELAY
        ) as stack:
            provider = {
                "name": "relay",
                "channel": "email",
                "type": "smtp",
                "config": {"host": "127.0.0.1", "port": smtp_port, "security": "none", "timeout": 60},
            }
            assert stack.project.post("/api/v1/providers", json=provider).status_code == 201
            template_id = stack.project.post("/api/v1/templates", json=WELCOME_EMAIL).json()["id"]
            publish(stack, journey(template_id, "signed_up"))
            for user in ("ada", "bob"):
                traits = {"plan": "free", "email": f"{user}@example.com"}
                stack.ingest.post("/v1/identify", json={"userId": user, "traits": traits})
            stack.ingest.post("/v1/track", json={"userId": "ada", "event": "signed_up"})
            wait_until(lambda: len(box.messages) == 1, timeout=60)
            stack.ingest.post("/v1/track", json={"userId": "bob", "event": "signed_up"})

            def statuses(user: str) -> list[str]:
                rows = stack.sql(f"SELECT status FROM messages FINAL WHERE contact_id = '{user}' ORDER BY at")
                return [row[0] for row in rows]

            wait_until(lambda: statuses("bob") == ["queued"], timeout=60, interval=0.5)  # queued, not sent
            token = make_token(unsubscribe_secret(stack.services.settings), stack.keys.project_id, "bob", "email")
            assert httpx.post(unsubscribe_url(stack.base_url, token)).status_code == 200
            box.release.set()

            def done() -> bool:
                stack.settle()
                return statuses("ada") == ["queued", "sent"] and statuses("bob") == ["queued", "suppressed"]

            wait_until(done, timeout=60, interval=0.5)
            assert [m["To"] for m in box.messages] == ["ada@example.com"]
    finally:
        box.release.set()
        controller.stop()


@pytest.mark.runtimes("embedded")  # the embedded delivery loop; Kafka's agent consumes the sends topic
def test_an_idle_delivery_loop_is_woken_by_a_committed_send(
    stack: Stack, inbox: tuple[Inbox, int], monkeypatch: pytest.MonkeyPatch
) -> None:
    """Embedded: a send committed by the processor wakes the delivery loop at once (its poll
    interval stretched to five minutes here, so only the wake-up can deliver within the wait)."""
    monkeypatch.setattr("spotzee.runtime.delivery_loop.IDLE_POLL_S", 300.0)
    box, smtp_port = inbox
    template_id = welcome_through_relay(stack, smtp_port)
    publish(stack, journey(template_id, "signed_up"))
    traits = {"plan": "free", "email": "ada@example.com", "first_name": "Ada"}  # the journey's gate: plan free
    stack.ingest.post("/v1/identify", json={"userId": "ada", "traits": traits})
    stack.settle()
    time.sleep(0.2)  # the loop has gone idle: its next look is minutes away
    stack.ingest.post("/v1/track", json={"userId": "ada", "event": "signed_up"})
    wait_until(lambda: len(box.messages) == 1, timeout=60)
