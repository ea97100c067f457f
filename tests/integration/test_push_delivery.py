"""End to end on both runtimes: an event carrying ``context.device.token`` registers the device, a
journey's push step reaches a strict loopback FCM (OAuth grant, then messages:send), one push per
device; a token FCM reports unregistered leaves the contact (through the log); a contact without a
device failed; push consent suppresses."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.support import LOOPBACK_RELAY, Stack, running_stack, wait_until
from tests.vendors.fcm_server import FcmServer


@pytest.fixture
def stack(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Stack]:
    runtime = getattr(request, "param", "embedded")
    bootstrap = request.getfixturevalue("kafka_bootstrap") if runtime == "kafka" else None
    with running_stack(
        tmp_path / "data", runtime=runtime, kafka_bootstrap=bootstrap, delivery_retry_base=0.2, **LOOPBACK_RELAY
    ) as running:
        yield running


@pytest.fixture
def fcm() -> Iterator[FcmServer]:
    server = FcmServer(registered={"tok-ada-android", "tok-ada-ios"})
    with server.running():
        yield server


def set_up(stack: Stack, fcm: FcmServer, trigger: str) -> None:
    project = stack.project
    provider = {
        "name": "Firebase",
        "channel": "push",
        "type": "fcm",
        "config": {"service_account": fcm.service_account(), "base_url": fcm.base_url},
    }
    created = project.post("/api/v1/providers", json=provider)
    assert created.status_code == 201, created.text
    assert "PRIVATE KEY" not in created.text
    content = {
        "title": "Hi {{ contact.first_name }}",
        "body": "Order {{ event.order }} shipped",
        "deep_link": "shop://orders/{{ event.order }}",
        "data": {"order": "{{ event.order }}"},
        "ttl": 3600,
    }
    template = project.post("/api/v1/templates", json={"name": "push", "channel": "push", "content": content})
    assert template.status_code == 201, template.text
    journey = {
        "name": f"Push on {trigger}",
        "trigger": {"type": "event", "event": trigger},
        "entrance": {"reentry": "after_exit"},
        "start": "push",
        "steps": {
            "push": {"type": "send", "channel": "push", "template_id": template.json()["id"], "next": "done"},
            "done": {"type": "exit"},
        },
    }
    made = project.post("/api/v1/journeys", json=journey)
    assert made.status_code == 201, made.text
    published = project.post(f"/api/v1/journeys/{made.json()['id']}/publish")
    assert published.status_code == 200, published.text


def rows(stack: Stack, contact: str) -> list[tuple[str, str, dict[str, Any]]]:
    found = stack.sql(f"SELECT channel, status, detail FROM messages FINAL WHERE contact_id = '{contact}' ORDER BY at")
    return [(row[0], row[1], json.loads(row[2]) if row[2] else {}) for row in found]


def devices(stack: Stack, contact: str) -> list[str]:
    got = stack.project.get(f"/api/v1/contacts/{contact}")
    assert got.status_code == 200, got.text
    return sorted(d["token"] for d in got.json()["devices"])


def device(token: str, kind: str) -> dict[str, Any]:
    return {"device": {"token": token, "type": kind}}


def test_a_journey_pushes_to_every_device_and_drops_an_unregistered_one(stack: Stack, fcm: FcmServer) -> None:
    set_up(stack, fcm, "shipped")
    ingest = stack.ingest
    ingest.post(
        "/v1/identify",
        json={"userId": "ada", "traits": {"first_name": "Ada"}, "context": device("tok-ada-android", "android")},
    )
    ingest.post("/v1/track", json={"userId": "ada", "event": "opened", "context": device("tok-ada-ios", "ios")})
    ingest.post("/v1/track", json={"userId": "ada", "event": "opened", "context": device("tok-ada-old", "ios")})
    ingest.post("/v1/identify", json={"userId": "bob", "traits": {"first_name": "Bob"}})  # no device

    def registered() -> bool:
        stack.settle()
        return devices(stack, "ada") == ["tok-ada-android", "tok-ada-ios", "tok-ada-old"]

    wait_until(registered, timeout=60, interval=0.5)
    ingest.post("/v1/track", json={"userId": "ada", "event": "shipped", "properties": {"order": "A-1"}})
    ingest.post("/v1/track", json={"userId": "bob", "event": "shipped", "properties": {"order": "B-2"}})

    wait_until(lambda: len(fcm.accepted) == 2, timeout=60)
    sent = sorted(fcm.sends(), key=lambda m: m["token"])
    assert [m["token"] for m in sent] == ["tok-ada-android", "tok-ada-ios"]
    assert sent[0]["notification"] == {"title": "Hi Ada", "body": "Order A-1 shipped"}
    assert sent[0]["data"] == {"order": "A-1", "deep_link": "shop://orders/A-1"}
    assert sent[0]["android"] == {"ttl": "3600s"}
    assert fcm.grants == 1

    def settled() -> bool:
        stack.settle()
        return [r[1] for r in rows(stack, "ada")] == ["queued", "sent"] and [r[1] for r in rows(stack, "bob")] == [
            "queued",
            "failed",
        ]

    wait_until(settled, timeout=60, interval=0.5)
    channel, _, detail = rows(stack, "ada")[1]
    assert channel == "push"
    assert detail["sent"] == 2
    assert sorted(d["status"] for d in detail["devices"]) == ["permanent", "sent", "sent"]
    assert "tok-ada" not in json.dumps(detail)  # tokens appear as digests only
    assert rows(stack, "bob")[1][2]["reason"] == "the contact has no push device"

    # FCM said UNREGISTERED for the old token: it leaves the contact, through the log
    def removed() -> bool:
        stack.settle()
        return devices(stack, "ada") == ["tok-ada-android", "tok-ada-ios"]

    wait_until(removed, timeout=60, interval=0.5)

    # Consent is the channel's: unsubscribed from push, the next one is suppressed.
    ingest.post("/v1/identify", json={"userId": "ada", "traits": {"subscriptions": {"push": "unsubscribed"}}})
    ingest.post("/v1/track", json={"userId": "ada", "event": "shipped", "properties": {"order": "A-2"}})

    def suppressed() -> bool:
        stack.settle()
        return [r[1] for r in rows(stack, "ada")] == ["queued", "sent", "queued", "suppressed"]

    wait_until(suppressed, timeout=60, interval=0.5)
    assert len(fcm.accepted) == 2
