"""The deliverer's SMS path against a strict loopback Twilio server: the contact's phone, consent
per channel, and senders kept per provider version (connections reused; a replaced sender closed
only once its sends in flight are done; all closed by ``Deliverer.aclose``)."""

from __future__ import annotations

import asyncio
import ipaddress
from collections.abc import Iterator
from datetime import UTC, datetime
from typing import Any

import pytest
from pydantic import SecretStr

from spotzee.providers.delivery_service import Deliverer, DeliverySettings
from spotzee.providers.safety import OutboundPolicy
from spotzee.providers.twilio import TwilioSender
from spotzee.schemas.contact_models import ContactState
from spotzee.schemas.messages import SendCommand
from spotzee.schemas.provider_models import ProviderDefinition, TwilioConfig
from spotzee.schemas.template_models import SmsContent, TemplateDefinition
from tests.support import wait_until
from tests.vendors.twilio_server import TwilioServer

NOW = datetime(2026, 1, 1, tzinfo=UTC)
ACCOUNT = "AC" + "0123456789abcdef" * 2
TOKEN = "twilio-token-for-unit"
RELAY = OutboundPolicy(allowed_networks=(ipaddress.ip_network("127.0.0.0/8"),))


@pytest.fixture
def twilio() -> Iterator[TwilioServer]:
    with TwilioServer(ACCOUNT, TOKEN).running() as server:
        assert isinstance(server, TwilioServer)
        yield server


class World:
    """The definitions a deliverer reads: one SMS template, a provider that can be edited."""

    def __init__(self, server: TwilioServer) -> None:
        self.server = server
        self.template = TemplateDefinition(
            id="tpl",
            project_id="p",
            name="t",
            channel="sms",
            content=SmsContent(body="Hi {{ contact.first_name }}"),
            version=1,
            created_at=NOW,
            updated_at=NOW,
        )
        self.provider = self.version(1, "+14155550100")

    def version(self, version: int, number: str) -> ProviderDefinition:
        config = TwilioConfig.model_validate(
            {"account_sid": ACCOUNT, "auth_token": TOKEN, "from": number, "base_url": self.server.base_url}
        )
        return ProviderDefinition(
            id="prv_1",
            project_id="p",
            name="twilio",
            channel="sms",
            provider_type="twilio",
            config=config,
            version=version,
            created_at=NOW,
            updated_at=NOW,
        )

    def deliverer(self) -> Deliverer:
        return Deliverer(
            DeliverySettings("https://spotzee.example/", SecretStr("u" * 40), outbound=RELAY),
            lambda project, template_id: self.template if template_id == "tpl" else None,
            lambda project, channel: self.provider if channel == "sms" else None,
        )


def command(n: int, channel: str = "sms") -> SendCommand:
    return SendCommand(
        project_id="p",
        contact_id="ada",
        send_id=f"run:text:{n}",
        channel=channel,
        template_id="tpl",
        journey_id="j",
        run_id="run",
        step_id="text",
        variables={},
        queued_at=NOW,
    )


def ada(**fields: Any) -> ContactState:
    values: dict[str, Any] = {"phone": "+447700900123", "traits": {"first_name": "Ada"}, **fields}
    return ContactState(project_id="p", id="ada", created_at=NOW, updated_at=NOW, **values)


def test_phone_consent_and_the_rendered_body(twilio: TwilioServer) -> None:
    world = World(twilio)
    deliverer = world.deliverer()

    async def run() -> list[Any]:
        try:
            return [
                await deliverer.deliver(command(1), ada()),
                await deliverer.deliver(command(2), ada(phone=None)),
                await deliverer.deliver(
                    command(3), ada(traits={"first_name": "Ada", "subscriptions": {"sms": "unsubscribed"}})
                ),
                await deliverer.deliver(
                    command(4), ada(traits={"first_name": "Ada", "subscriptions": {"email": "unsubscribed"}})
                ),
            ]
        finally:
            await deliverer.aclose()

    sent, no_phone, suppressed, other_channel = asyncio.run(run())
    assert sent.status == "sent"
    assert sent.detail["provider_message_id"].startswith("SM")
    assert (sent.detail["encoding"], sent.detail["segments"]) == ("GSM-7", 1)
    assert (no_phone.status, no_phone.detail) == ("failed", {"reason": "the contact has no phone number"})
    assert (suppressed.status, suppressed.detail) == ("suppressed", {"reason": "unsubscribed from sms"})
    assert other_channel.status == "sent"  # an email unsubscribe is not an SMS one
    assert [r.form()["Body"] for r in twilio.accepted] == ["Hi Ada", "Hi Ada"]
    assert twilio.accepted[0].form()["StatusCallback"] == "https://spotzee.example/hooks/prv_1"


def test_senders_are_kept_per_version_and_closed_when_replaced_and_at_the_end(twilio: TwilioServer) -> None:
    world = World(twilio)
    deliverer = world.deliverer()

    def kept() -> TwilioSender:
        sender = deliverer.senders._kept["prv_1"].sender
        assert isinstance(sender, TwilioSender)
        return sender

    async def run() -> None:
        for n in range(3):
            assert (await deliverer.deliver(command(n), ada())).status == "sent"
        first = kept()
        ports = {r.client_port for r in twilio.accepted}
        assert len(ports) == 1  # one kept-alive connection for three sends
        assert len(deliverer.senders) == 1

        # A new version while a send of the old one is in flight: the old sender stays open for it.
        twilio.delay = 0.5
        in_flight = asyncio.create_task(deliverer.deliver(command(10), ada()))
        # the server holds it (its delay taken when it arrived)
        await asyncio.to_thread(wait_until, lambda: len(twilio.received) >= 4, 10)
        world.provider = world.version(2, "+14155550199")
        twilio.delay = 0.0
        assert (await deliverer.deliver(command(11), ada())).status == "sent"
        second = kept()
        assert second is not first
        assert not first._http._client.is_closed  # its send is still in flight
        assert (await in_flight).status == "sent"
        assert first._http._client.is_closed  # closed once that send finished
        assert [r.form()["From"] for r in twilio.accepted[-2:]] == ["+14155550199", "+14155550100"]

        # The same version again: the same sender.
        assert (await deliverer.deliver(command(12), ada())).status == "sent"
        assert kept() is second
        await deliverer.aclose()
        assert second._http._client.is_closed
        assert len(deliverer.senders) == 0

    asyncio.run(run())


def test_idle_senders_beyond_the_limit_are_closed_least_recently_used_first(
    twilio: TwilioServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr("spotzee.providers.delivery_service.MAX_KEPT_SENDERS", 2)
    world = World(twilio)
    deliverer = world.deliverer()
    providers = {f"prv_{n}": world.version(1, "+14155550100").model_copy(update={"id": f"prv_{n}"}) for n in range(3)}

    async def run() -> None:
        senders = {}
        for name in ("prv_0", "prv_1", "prv_0", "prv_2"):  # prv_1 is then the least recently used
            world.provider = providers[name]
            assert (await deliverer.deliver(command(len(senders)), ada())).status == "sent"
            senders[name] = deliverer.senders._kept[name].sender
        assert list(deliverer.senders._kept) == ["prv_0", "prv_2"]
        assert all(isinstance(s, TwilioSender) for s in senders.values())
        closed = {name: s._http._client.is_closed for name, s in senders.items()}  # type: ignore[attr-defined]
        assert closed == {"prv_0": False, "prv_1": True, "prv_2": False}
        await deliverer.aclose()

    asyncio.run(run())
