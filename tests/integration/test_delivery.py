"""End to end on both runtimes: identify + track -> journey -> email at a real SMTP server
(aiosmtpd) -> unsubscribe -> the next send is suppressed (consent checked at send time)."""

from __future__ import annotations

import email
import email.policy
import re
from collections.abc import Iterator
from email.message import EmailMessage
from typing import Any

import httpx
import pytest
from aiosmtpd.controller import Controller
from aiosmtpd.smtp import SMTP as SMTPServer
from aiosmtpd.smtp import Envelope, Session

from tests.integration.test_catalogue import WELCOME_EMAIL, welcome_journey
from tests.support import Stack, free_port, wait_until


class Inbox:
    def __init__(self) -> None:
        self.messages: list[EmailMessage] = []

    async def handle_DATA(self, server: SMTPServer, session: Session, envelope: Envelope) -> str:
        raw = envelope.original_content or envelope.content
        assert isinstance(raw, bytes)
        message = email.message_from_bytes(raw, policy=email.policy.default)
        assert isinstance(message, EmailMessage)
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


def test_signed_up_to_inbox_then_unsubscribe_suppresses_the_next_send(stack: Stack, inbox: tuple[Inbox, int]) -> None:
    box, smtp_port = inbox
    project = stack.project
    provider = {
        "name": "Local relay",
        "channel": "email",
        "type": "smtp",
        "config": {"host": "127.0.0.1", "port": smtp_port, "security": "none"},
    }
    assert project.post("/api/v1/providers", json=provider).status_code == 201
    template_id = project.post("/api/v1/templates", json=WELCOME_EMAIL).json()["id"]
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
    assert message["List-Unsubscribe-Post"] is None  # one-click needs https links; this one is http
    link = re.search(r"<(http://[^>]+/u/[^>]+)>", message["List-Unsubscribe"])
    assert link is not None
    url = link.group(1)
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
