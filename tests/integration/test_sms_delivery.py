"""End to end on both runtimes: an event -> a journey with an SMS step -> the text at a strict
loopback Twilio / Vonage server; message rows with channel ``sms`` and the vendor's id; a contact
without a phone failed, an SMS unsubscribe suppressed, a throttled send retried."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.support import LOOPBACK_RELAY, Stack, running_stack, wait_until
from tests.vendors.twilio_server import TwilioServer, twilio_error
from tests.vendors.vonage_server import VonageServer, vonage_error

ACCOUNT = "AC" + "0123456789abcdef" * 2
TOKEN = "twilio-e2e-auth-token"
VONAGE_KEY = "e2ekey01"
VONAGE_SECRET = "vonage-e2e-secret"


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
def twilio() -> Iterator[TwilioServer]:
    with TwilioServer(ACCOUNT, TOKEN).running() as server:
        assert isinstance(server, TwilioServer)
        yield server


@pytest.fixture
def vonage() -> Iterator[VonageServer]:
    with VonageServer(VONAGE_KEY, VONAGE_SECRET).running() as server:
        assert isinstance(server, VonageServer)
        yield server


def sms_journey(template_id: str, trigger: str) -> dict[str, Any]:
    return {
        "name": f"SMS on {trigger}",
        "trigger": {"type": "event", "event": trigger},
        "entrance": {"reentry": "after_exit"},
        "start": "text",
        "steps": {
            "text": {"type": "send", "channel": "sms", "template_id": template_id, "next": "done"},
            "done": {"type": "exit"},
        },
    }


def set_up(stack: Stack, provider: dict[str, Any], body: str, trigger: str) -> tuple[str, str]:
    """The provider, an SMS template and a published journey: (provider id, journey id)."""
    project = stack.project
    created = project.post("/api/v1/providers", json=provider)
    assert created.status_code == 201, created.text
    template = project.post("/api/v1/templates", json={"name": "text", "channel": "sms", "content": {"body": body}})
    assert template.status_code == 201, template.text
    journey = project.post("/api/v1/journeys", json=sms_journey(template.json()["id"], trigger))
    assert journey.status_code == 201, journey.text
    journey_id: str = journey.json()["id"]
    published = project.post(f"/api/v1/journeys/{journey_id}/publish")
    assert published.status_code == 200, published.text  # an SMS step is accepted
    return created.json()["id"], journey_id


def rows(stack: Stack, contact: str) -> list[tuple[str, str, dict[str, Any]]]:
    found = stack.sql(f"SELECT channel, status, detail FROM messages FINAL WHERE contact_id = '{contact}' ORDER BY at")
    return [(row[0], row[1], json.loads(row[2]) if row[2] else {}) for row in found]


def test_an_event_sends_an_sms_through_twilio(stack: Stack, twilio: TwilioServer) -> None:
    provider = {
        "name": "Twilio",
        "channel": "sms",
        "type": "twilio",
        "config": {"account_sid": ACCOUNT, "auth_token": TOKEN, "from": "+14155550100", "base_url": twilio.base_url},
    }
    provider_id, _ = set_up(
        stack, provider, "Hi {{ contact.first_name }}, your order {{ event.order }} shipped", "shipped"
    )
    ingest = stack.ingest
    ingest.post("/v1/identify", json={"userId": "ada", "traits": {"first_name": "Ada", "phone": "+447700900123"}})
    ingest.post("/v1/identify", json={"userId": "bob", "traits": {"first_name": "Bob"}})  # no phone
    ingest.post("/v1/track", json={"userId": "ada", "event": "shipped", "properties": {"order": "A-1"}})
    ingest.post("/v1/track", json={"userId": "bob", "event": "shipped", "properties": {"order": "B-2"}})

    wait_until(lambda: len(twilio.accepted) == 1, timeout=60)
    form = twilio.accepted[0].form()
    assert form["To"] == "+447700900123"
    assert form["From"] == "+14155550100"
    assert form["Body"] == "Hi Ada, your order A-1 shipped"
    assert form["StatusCallback"] == f"{stack.base_url}/hooks/{provider_id}"

    def settled() -> bool:
        stack.settle()
        return [r[1] for r in rows(stack, "ada")] == ["queued", "sent"] and [r[1] for r in rows(stack, "bob")] == [
            "queued",
            "failed",
        ]

    wait_until(settled, timeout=60, interval=0.5)
    channel, _, detail = rows(stack, "ada")[1]
    assert channel == "sms"
    assert detail["provider_message_id"].startswith("SM")
    assert (detail["encoding"], detail["segments"]) == ("GSM-7", 1)
    assert rows(stack, "bob")[1][2]["reason"] == "the contact has no phone number"
    sent = stack.sql(
        "SELECT contact_id, event FROM events WHERE event IN ('message_sent', 'message_failed') ORDER BY contact_id"
    )
    assert [tuple(r) for r in sent] == [("ada", "message_sent"), ("bob", "message_failed")]

    # Consent is the channel's: unsubscribed from sms, the next one is suppressed, nothing sent.
    ingest.post("/v1/identify", json={"userId": "ada", "traits": {"subscriptions": {"sms": "unsubscribed"}}})
    ingest.post("/v1/track", json={"userId": "ada", "event": "shipped", "properties": {"order": "A-2"}})

    def suppressed() -> bool:
        stack.settle()
        return [r[1] for r in rows(stack, "ada")] == ["queued", "sent", "queued", "suppressed"]

    wait_until(suppressed, timeout=60, interval=0.5)
    assert len(twilio.received) == 1


def test_vonage_throttled_then_sent_in_unicode(stack: Stack, vonage: VonageServer) -> None:
    provider = {
        "name": "Vonage",
        "channel": "sms",
        "type": "vonage",
        "config": {"api_key": VONAGE_KEY, "api_secret": VONAGE_SECRET, "from": "Spotzee", "base_url": vonage.base_url},
    }
    set_up(stack, provider, "Привет, {{ contact.first_name }} 👋", "greeted")
    vonage.fail_next(200, vonage_error("1", "Throttled"))
    ingest = stack.ingest
    ingest.post("/v1/identify", json={"userId": "zoe", "traits": {"first_name": "Zoë", "phone": "+33612345678"}})
    ingest.post("/v1/track", json={"userId": "zoe", "event": "greeted"})

    wait_until(lambda: len(vonage.accepted) == 1, timeout=60)
    assert len(vonage.received) == 2  # the throttled attempt, then the accepted one
    form = vonage.accepted[0].form()
    assert (form["to"], form["type"], form["text"]) == ("33612345678", "unicode", "Привет, Zoë 👋")
    first, second = (r.form()["client-ref"] for r in vonage.received)
    assert first == second  # the same send_id on the retry

    def settled() -> bool:
        stack.settle()
        return [r[1] for r in rows(stack, "zoe")] == ["queued", "retrying", "sent"]

    wait_until(settled, timeout=60, interval=0.5)
    channel, _, detail = rows(stack, "zoe")[2]
    assert channel == "sms"
    assert len(detail["provider_message_id"]) == 16
    assert (detail["encoding"], detail["segments"]) == ("UCS-2", 1)


@pytest.mark.runtimes("embedded")
def test_a_permanent_refusal_is_failed_and_never_retried(stack: Stack, twilio: TwilioServer) -> None:
    provider = {
        "name": "Twilio",
        "channel": "sms",
        "type": "twilio",
        "config": {"account_sid": ACCOUNT, "auth_token": TOKEN, "from": "+14155550100", "base_url": twilio.base_url},
    }
    set_up(stack, provider, "Hello", "poked")
    twilio.fail_next(400, twilio_error(400, 21610, "Attempt to send to unsubscribed recipient"))
    stack.ingest.post("/v1/identify", json={"userId": "cy", "traits": {"phone": "+14155550123"}})
    stack.ingest.post("/v1/track", json={"userId": "cy", "event": "poked"})

    def failed() -> bool:
        stack.settle()
        return [r[1] for r in rows(stack, "cy")] == ["queued", "failed"]

    wait_until(failed, timeout=60, interval=0.5)
    assert len(twilio.received) == 1
    assert "Twilio error 21610" in rows(stack, "cy")[1][2]["reason"]


def test_stopping_the_embedded_runtime_closes_the_kept_senders(tmp_path: Path, twilio: TwilioServer) -> None:
    with running_stack(tmp_path / "data", delivery_retry_base=0.2, **LOOPBACK_RELAY) as stack:
        provider = {
            "name": "Twilio",
            "channel": "sms",
            "type": "twilio",
            "config": {
                "account_sid": ACCOUNT,
                "auth_token": TOKEN,
                "from": "+14155550100",
                "base_url": twilio.base_url,
            },
        }
        set_up(stack, provider, "Hello", "poked")
        for user in ("u1", "u2", "u3"):
            stack.ingest.post("/v1/identify", json={"userId": user, "traits": {"phone": "+14155550123"}})
            stack.ingest.post("/v1/track", json={"userId": user, "event": "poked"})
        wait_until(lambda: len(twilio.accepted) == 3, timeout=60)
        delivery = stack.services.runtime.delivery
        assert delivery is not None
        senders = delivery.deliverer.senders
        [kept] = senders._kept.values()
        client = kept.sender._http._client  # type: ignore[attr-defined]
        assert not client.is_closed
        # A later send goes over a connection an earlier one opened (kept alive in between).
        stack.ingest.post("/v1/identify", json={"userId": "u4", "traits": {"phone": "+14155550123"}})
        stack.ingest.post("/v1/track", json={"userId": "u4", "event": "poked"})
        wait_until(lambda: len(twilio.accepted) == 4, timeout=60)
        assert twilio.accepted[3].client_port in {r.client_port for r in twilio.accepted[:3]}
    assert client.is_closed  # the delivery loop closed it when it stopped
    assert len(senders) == 0
