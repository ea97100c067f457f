"""End to end: an event -> a journey with a WhatsApp step -> the message at a strict loopback Meta
Cloud API server (both runtimes): the approved template with its parameters rendered, message rows
with channel ``whatsapp`` and the ``wamid``, a contact without a phone failed, a WhatsApp unsubscribe
suppressed; a session text outside the 24-hour window failed with the reason, never retried; a
session text through Twilio's WhatsApp API, and a template refused there without a request."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.support import LOOPBACK_RELAY, Stack, running_stack, wait_until
from tests.vendors.meta_whatsapp_server import Approved, MetaWhatsAppServer, meta_error
from tests.vendors.twilio_server import TwilioServer

PHONE_ID = "106540352242922"
TOKEN = "EAAG-e2e-access-token"
APP_SECRET = "meta-e2e-app-secret"
ACCOUNT = "AC" + "0123456789abcdef" * 2
TWILIO_TOKEN = "twilio-e2e-auth-token"
SHIPPED: dict[str, Any] = {
    "template_name": "order_shipped",
    "language": "en_US",
    "components": [
        {
            "type": "body",
            "parameters": [
                {"type": "text", "text": "{{ contact.first_name }}"},
                {"type": "text", "text": "{{ event.order }}"},
            ],
        },
        {
            "type": "button",
            "sub_type": "url",
            "index": 0,
            "parameters": [{"type": "text", "text": "{{ event.order }}"}],
        },
    ],
}


@pytest.fixture
def stack(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Stack]:
    """conftest's ``stack``, allowed to reach the vendor servers on loopback; quick retries."""
    runtime = getattr(request, "param", "embedded")
    bootstrap = request.getfixturevalue("kafka_bootstrap") if runtime == "kafka" else None
    with running_stack(
        tmp_path / "data", runtime=runtime, kafka_bootstrap=bootstrap, delivery_retry_base=0.2, **LOOPBACK_RELAY
    ) as running:
        yield running


@pytest.fixture
def meta() -> Iterator[MetaWhatsAppServer]:
    server = MetaWhatsAppServer(
        phone_number_id=PHONE_ID,
        access_token=TOKEN,
        templates={"order_shipped": Approved(("en_US",), body_parameters=2)},
        window_open={"447700900123"},
    )
    with server.running():
        yield server


@pytest.fixture
def twilio() -> Iterator[TwilioServer]:
    with TwilioServer(ACCOUNT, TWILIO_TOKEN).running() as server:
        assert isinstance(server, TwilioServer)
        yield server


def meta_provider(server: MetaWhatsAppServer) -> dict[str, Any]:
    config = {"phone_number_id": PHONE_ID, "access_token": TOKEN, "app_secret": APP_SECRET, "base_url": server.base_url}
    return {"name": "WhatsApp", "channel": "whatsapp", "type": "meta_whatsapp", "config": config}


def journey(template_id: str, trigger: str) -> dict[str, Any]:
    return {
        "name": f"WhatsApp on {trigger}",
        "trigger": {"type": "event", "event": trigger},
        "entrance": {"reentry": "after_exit"},
        "start": "message",
        "steps": {
            "message": {"type": "send", "channel": "whatsapp", "template_id": template_id, "next": "done"},
            "done": {"type": "exit"},
        },
    }


def add_journey(stack: Stack, content: dict[str, Any], trigger: str) -> str:
    """A WhatsApp template and a published journey sending it on ``trigger``: the journey id."""
    project = stack.project
    template = project.post("/api/v1/templates", json={"name": trigger, "channel": "whatsapp", "content": content})
    assert template.status_code == 201, template.text
    made = project.post("/api/v1/journeys", json=journey(template.json()["id"], trigger))
    assert made.status_code == 201, made.text
    journey_id: str = made.json()["id"]
    published = project.post(f"/api/v1/journeys/{journey_id}/publish")
    assert published.status_code == 200, published.text  # a WhatsApp step is accepted
    return journey_id


def add_provider(stack: Stack, body: dict[str, Any]) -> str:
    created = stack.project.post("/api/v1/providers", json=body)
    assert created.status_code == 201, created.text
    provider_id: str = created.json()["id"]
    return provider_id


def rows(stack: Stack, contact: str) -> list[tuple[str, str, dict[str, Any]]]:
    found = stack.sql(f"SELECT channel, status, detail FROM messages FINAL WHERE contact_id = '{contact}' ORDER BY at")
    return [(row[0], row[1], json.loads(row[2]) if row[2] else {}) for row in found]


def statuses(stack: Stack, contact: str) -> list[str]:
    return [r[1] for r in rows(stack, contact)]


def test_an_event_sends_an_approved_whatsapp_template_through_meta(stack: Stack, meta: MetaWhatsAppServer) -> None:
    add_provider(stack, meta_provider(meta))
    add_journey(stack, SHIPPED, "shipped")
    ingest = stack.ingest
    ingest.post("/v1/identify", json={"userId": "ada", "traits": {"first_name": "Ada", "phone": "+447700900123"}})
    ingest.post("/v1/identify", json={"userId": "bob", "traits": {"first_name": "Bob"}})  # no phone
    ingest.post("/v1/track", json={"userId": "ada", "event": "shipped", "properties": {"order": "A-1"}})
    ingest.post("/v1/track", json={"userId": "bob", "event": "shipped", "properties": {"order": "B-2"}})

    wait_until(lambda: len(meta.accepted) == 1, timeout=60)
    request = meta.accepted[0]
    assert request.path == f"/v21.0/{PHONE_ID}/messages"
    assert request.headers["authorization"] == f"Bearer {TOKEN}"
    assert json.loads(request.body) == {
        "messaging_product": "whatsapp",
        "recipient_type": "individual",
        "to": "447700900123",
        "type": "template",
        "template": {
            "name": "order_shipped",
            "language": {"code": "en_US"},
            "components": [
                {"type": "body", "parameters": [{"type": "text", "text": "Ada"}, {"type": "text", "text": "A-1"}]},
                {"type": "button", "sub_type": "url", "index": "0", "parameters": [{"type": "text", "text": "A-1"}]},
            ],
        },
    }

    def settled() -> bool:
        stack.settle()
        return statuses(stack, "ada") == ["queued", "sent"] and statuses(stack, "bob") == ["queued", "failed"]

    wait_until(settled, timeout=60, interval=0.5)
    channel, _, detail = rows(stack, "ada")[1]
    assert channel == "whatsapp"
    assert detail["provider_message_id"].startswith("wamid.")
    assert detail["message_type"] == "template"
    assert rows(stack, "bob")[1][0] == "whatsapp"
    assert rows(stack, "bob")[1][2]["reason"] == "the contact has no phone number"
    sent = stack.sql(
        "SELECT contact_id, event FROM events WHERE event IN ('message_sent', 'message_failed') ORDER BY contact_id"
    )
    assert [tuple(r) for r in sent] == [("ada", "message_sent"), ("bob", "message_failed")]

    # Consent is the channel's: unsubscribed from whatsapp, the next one is suppressed, nothing sent.
    ingest.post("/v1/identify", json={"userId": "ada", "traits": {"subscriptions": {"whatsapp": "unsubscribed"}}})
    ingest.post("/v1/track", json={"userId": "ada", "event": "shipped", "properties": {"order": "A-2"}})

    def suppressed() -> bool:
        stack.settle()
        return statuses(stack, "ada") == ["queued", "sent", "queued", "suppressed"]

    wait_until(suppressed, timeout=60, interval=0.5)
    assert len(meta.received) == 1


@pytest.mark.runtimes("embedded")
def test_session_texts_inside_and_outside_the_window_and_a_throttled_send_retried(
    stack: Stack, meta: MetaWhatsAppServer
) -> None:
    add_provider(stack, meta_provider(meta))
    add_journey(stack, {"text": "Hi {{ contact.first_name }}, we got your message"}, "replied")
    meta.fail_next(400, meta_error(131056, "(#131056) (Business Account, Consumer Account) pair rate limit hit"))
    ingest = stack.ingest
    ingest.post("/v1/identify", json={"userId": "ada", "traits": {"first_name": "Ada", "phone": "+447700900123"}})
    ingest.post("/v1/identify", json={"userId": "cy", "traits": {"first_name": "Cy", "phone": "+33612345678"}})
    ingest.post("/v1/track", json={"userId": "ada", "event": "replied"})

    def ada_sent() -> bool:
        stack.settle()
        return statuses(stack, "ada") == ["queued", "retrying", "sent"]

    wait_until(ada_sent, timeout=60, interval=0.5)
    first, second = (json.loads(r.body) for r in meta.received)
    assert first == second  # the same message on the retry
    assert second["text"] == {"body": "Hi Ada, we got your message"}
    assert "Meta error 131056" in rows(stack, "ada")[1][2]["reason"]
    assert rows(stack, "ada")[2][2]["message_type"] == "text"

    # Cy never wrote to the business: the window is closed, the text is failed, never retried.
    ingest.post("/v1/track", json={"userId": "cy", "event": "replied"})

    def cy_failed() -> bool:
        stack.settle()
        return statuses(stack, "cy") == ["queued", "failed"]

    wait_until(cy_failed, timeout=60, interval=0.5)
    reason = rows(stack, "cy")[1][2]["reason"]
    assert reason.startswith("HTTP 400: outside the 24-hour customer-service window")
    assert "send an approved template instead" in reason
    assert len(meta.received) == 3
    assert len(meta.accepted) == 1


def test_a_whatsapp_session_text_through_twilio_and_a_template_refused_there(
    tmp_path: Path, twilio: TwilioServer
) -> None:
    """Twilio's WhatsApp API (embedded): a session text goes as ``Body`` to ``whatsapp:+...``; a
    template content is refused with the reason, without a request."""
    with running_stack(tmp_path / "data", delivery_retry_base=0.2, **LOOPBACK_RELAY) as stack:
        config = {
            "account_sid": ACCOUNT,
            "auth_token": TWILIO_TOKEN,
            "from": "whatsapp:+14155550100",
            "base_url": twilio.base_url,
        }
        provider_id = add_provider(
            stack, {"name": "Twilio WhatsApp", "channel": "whatsapp", "type": "twilio", "config": config}
        )
        add_journey(stack, {"text": "Hi {{ contact.first_name }}"}, "replied")
        add_journey(stack, SHIPPED, "shipped")
        ingest = stack.ingest
        ingest.post("/v1/identify", json={"userId": "ada", "traits": {"first_name": "Ada", "phone": "+447700900123"}})
        ingest.post("/v1/track", json={"userId": "ada", "event": "replied"})
        wait_until(lambda: len(twilio.accepted) == 1, timeout=60)
        assert twilio.accepted[0].form() == {
            "To": "whatsapp:+447700900123",
            "From": "whatsapp:+14155550100",
            "Body": "Hi Ada",
            "StatusCallback": f"{stack.base_url}/hooks/{provider_id}",
        }
        ingest.post("/v1/track", json={"userId": "ada", "event": "shipped", "properties": {"order": "A-1"}})

        def settled() -> bool:
            stack.settle()
            return statuses(stack, "ada") == ["queued", "sent", "queued", "failed"]

        wait_until(settled, timeout=60, interval=0.5)
        found = rows(stack, "ada")
        assert found[1][0] == "whatsapp"
        assert found[1][2]["provider_message_id"].startswith("SM")
        assert "ContentSid" in found[3][2]["reason"]
        assert len(twilio.received) == 1
