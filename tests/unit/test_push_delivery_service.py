"""The deliverer's push path through APNs (HTTP/2 TLS loopback): one push per Apple device (an
Android token is not sent to Apple), one result per send, an unregistered token's removal appended
to the log as a ContactPatch (never a table write), no device -> failed."""

from __future__ import annotations

import asyncio
import ipaddress
from collections.abc import Iterator
from datetime import UTC, datetime

import pytest
from pydantic import SecretStr

from spotzee.providers.adapter import Permanent, Sent, Transient
from spotzee.providers.delivery_service import Deliverer, DeliverySettings
from spotzee.providers.push import Unregistered, combine, token_digest
from spotzee.providers.safety import OutboundPolicy
from spotzee.schemas.contact_models import ContactState, Device
from spotzee.schemas.messages import SendCommand
from spotzee.schemas.provider_models import ApnsConfig, ProviderDefinition
from spotzee.schemas.records import ContactPatch
from spotzee.schemas.template_models import PushContent, TemplateDefinition
from spotzee.streams.record_codec import loads
from tests.vendors.apns_server import ApnsServer

NOW = datetime(2026, 1, 1, tzinfo=UTC)
RELAY = OutboundPolicy(allowed_networks=(ipaddress.ip_network("127.0.0.0/8"),))
LIVE, GONE, ANDROID = "aa" * 32, "bb" * 32, "android-token"


@pytest.fixture
def apns() -> Iterator[ApnsServer]:
    server = ApnsServer(registered={LIVE})
    with server.running():
        yield server


def deliverer(apns: ApnsServer, appended: list[tuple[str, bytes]]) -> Deliverer:
    template = TemplateDefinition(
        id="tpl", project_id="p", name="t", channel="push", version=1, created_at=NOW, updated_at=NOW,
        content=PushContent(title="Hi {{ contact.first_name }}", body="Your order shipped"),
    )  # fmt: skip
    config = ApnsConfig.model_validate(
        {
            "team_id": apns.team_id, "key_id": apns.key_id, "private_key": apns.private_key_pem,
            "topic": apns.topic, "base_url": apns.base_url,
        }
    )  # fmt: skip
    provider = ProviderDefinition(
        id="prv", project_id="p", name="apns", channel="push", provider_type="apns", config=config, version=1,
        created_at=NOW, updated_at=NOW,
    )  # fmt: skip
    made = Deliverer(
        DeliverySettings(
            "https://spotzee.example/", SecretStr("u" * 40), outbound=RELAY, tls_context=apns.client_context()
        ),
        lambda project, template_id: template,
        lambda project, channel: provider if channel == "push" else None,
    )

    async def append(records: list[tuple[str, bytes]]) -> None:
        appended.extend(records)

    made.write_back = append
    return made


def command() -> SendCommand:
    return SendCommand(
        project_id="p", contact_id="ada", send_id="run:push:1", channel="push", template_id="tpl", journey_id="j",
        run_id="run", step_id="push", variables={}, queued_at=NOW,
    )  # fmt: skip


def ada(*devices: tuple[str, str]) -> ContactState:
    return ContactState(
        project_id="p", id="ada", traits={"first_name": "Ada"}, created_at=NOW, updated_at=NOW,
        devices=[Device(token=t, type=k, first_seen=NOW, last_seen=NOW) for t, k in devices],
    )  # fmt: skip


def test_apple_devices_get_one_push_each_and_an_unregistered_one_is_removed_through_the_log(apns: ApnsServer) -> None:
    appended: list[tuple[str, bytes]] = []

    async def run() -> object:
        made = deliverer(apns, appended)
        try:
            return await made.deliver(command(), ada((LIVE, "ios"), (GONE, "ios"), (ANDROID, "android")))
        finally:
            await made.aclose()

    result = asyncio.run(run())
    assert result.status == "sent"  # type: ignore[attr-defined]
    detail = result.detail  # type: ignore[attr-defined]
    assert detail["sent"] == 1
    assert {d["device"]: d["status"] for d in detail["devices"]} == {
        token_digest(LIVE): "sent",
        token_digest(GONE): "permanent",
    }
    assert sorted(r.token for r in apns.received) == [LIVE, GONE]  # the Android token not sent to Apple
    assert apns.accepted[0].payload()["aps"]["alert"] == {"title": "Hi Ada", "body": "Your order shipped"}
    ((key, value),) = appended
    patch = loads(ContactPatch, value)
    assert (key, patch.id, patch.remove_devices, patch.traits, patch.only_existing) == (
        "p:ada", "ada", [GONE], {}, True,
    )  # fmt: skip


def test_no_apple_device_is_failed_and_nothing_is_sent(apns: ApnsServer) -> None:
    async def run(contact: ContactState) -> object:
        made = deliverer(apns, [])
        try:
            return await made.deliver(command(), contact)
        finally:
            await made.aclose()

    for contact in (ada(), ada((ANDROID, "android"))):
        result = asyncio.run(run(contact))
        assert (result.status, result.detail) == ("failed", {"reason": "the contact has no push device"})  # type: ignore[attr-defined]
    assert apns.received == []


def test_all_devices_unregistered_is_failed(apns: ApnsServer) -> None:
    appended: list[tuple[str, bytes]] = []

    async def run() -> object:
        made = deliverer(apns, appended)
        try:
            return await made.deliver(command(), ada((GONE, "ios")))
        finally:
            await made.aclose()

    result = asyncio.run(run())
    assert result.status == "failed"  # type: ignore[attr-defined]
    assert "Unregistered" in result.detail["reason"]  # type: ignore[attr-defined]
    assert len(appended) == 1


def test_combine_retries_only_when_no_device_took_it() -> None:
    sent = Sent(provider_message_id="m1")
    slow = Transient(reason="HTTP 429", retry_after=3.0)
    slower = Transient(reason="HTTP 503", retry_after=9.0)
    gone = Unregistered(reason="FCM UNREGISTERED")
    mixed = combine([("a", sent), ("b", slow), ("c", gone)])
    assert (mixed.status, mixed.detail["sent"], mixed.unregistered) == ("sent", 1, ["c"])
    waiting = combine([("a", slow), ("b", slower), ("c", gone)])
    assert (waiting.status, waiting.retry_after, waiting.unregistered) == ("retry", 9.0, ["c"])
    refused = combine([("a", Permanent(reason="HTTP 400: bad")), ("b", gone)])
    assert (refused.status, refused.detail["reason"], refused.unregistered) == ("failed", "HTTP 400: bad", ["b"])
