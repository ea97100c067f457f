"""The APNs adapter against a loopback HTTP/2-over-TLS APNs (``tests/vendors/apns_server.py``): the
ES256 provider token verified, the request's headers and payload, one connection kept (HTTP/2
multiplexes), Apple's reasons mapped; the ``apns`` provider config."""

from __future__ import annotations

import asyncio
import ipaddress
import time
from collections.abc import Iterator

import pytest
from pydantic import ValidationError

from spotzee.providers.adapter import Permanent, Sent, Transient
from spotzee.providers.apns import ApnsSender
from spotzee.providers.push import PushDelivery, Unregistered, device_send_id
from spotzee.providers.safety import OutboundPolicy
from spotzee.schemas.provider_models import ApnsConfig, ProviderCreate, public_config
from spotzee.schemas.template_models import RenderedPush
from tests.vendors.apns_server import ApnsServer

RELAY = OutboundPolicy(allowed_networks=(ipaddress.ip_network("127.0.0.0/8"),))
GOOD = "ab" * 32
OTHER = "cd" * 32
PUSH = RenderedPush(
    title="Shipped", body="Order A-7", image="https://cdn.example.com/a.png", deep_link="shop://orders/A-7",
    data={"order_id": "A-7"}, badge=2, sound="default", ttl=600,
)  # fmt: skip


@pytest.fixture
def apns() -> Iterator[ApnsServer]:
    server = ApnsServer(registered={GOOD, OTHER})
    with server.running():
        yield server


def config(server: ApnsServer, **changes: object) -> ApnsConfig:
    values: dict[str, object] = {
        "team_id": server.team_id,
        "key_id": server.key_id,
        "private_key": server.private_key_pem,
        "topic": server.topic,
        "environment": "sandbox",
        "base_url": server.base_url,
    }
    return ApnsConfig.model_validate({**values, **changes})


def delivery(token: str = GOOD, platform: str = "ios") -> PushDelivery:
    return PushDelivery(send_id=device_send_id("s1", token), token=token, platform=platform, message=PUSH)  # type: ignore[arg-type]


async def send_all(server: ApnsServer, *deliveries: PushDelivery, **changes: object) -> list[object]:
    sender = ApnsSender(config(server, **changes), policy=RELAY, tls_context=server.client_context())
    try:
        return list(await asyncio.gather(*(sender.send(d) for d in deliveries)))
    finally:
        await sender.aclose()


def test_a_push_goes_over_http2_with_a_verified_provider_token(apns: ApnsServer) -> None:
    outcomes = asyncio.run(send_all(apns, delivery(GOOD), delivery(OTHER)))
    assert all(isinstance(o, Sent) for o in outcomes), outcomes
    first = outcomes[0]
    assert isinstance(first, Sent)
    assert first.provider_message_id is not None
    assert len(first.provider_message_id) == 36
    assert apns.connections == 1  # both streams on one HTTP/2 connection
    request = next(r for r in apns.accepted if r.token == GOOD)
    assert request.headers["apns-topic"] == "com.example.shop"
    assert request.headers["apns-push-type"] == "alert"
    assert int(request.headers["apns-expiration"]) >= int(time.time()) + 590
    assert request.payload() == {
        "aps": {
            "alert": {"title": "Shipped", "body": "Order A-7"},
            "badge": 2,
            "sound": "default",
            "mutable-content": 1,
        },
        "order_id": "A-7",
        "image": "https://cdn.example.com/a.png",
        "deep_link": "shop://orders/A-7",
    }


@pytest.mark.parametrize("token", ["ef" * 32, "not-a-token"])
def test_unregistered_and_bad_tokens_are_permanent_and_removed(apns: ApnsServer, token: str) -> None:
    (outcome,) = asyncio.run(send_all(apns, delivery(token)))
    assert isinstance(outcome, Unregistered)
    assert ("Unregistered" if len(token) == 64 else "BadDeviceToken") in outcome.reason


@pytest.mark.parametrize(
    ("status", "reason", "kind"),
    [
        (429, "TooManyRequests", Transient),
        (503, "ServiceUnavailable", Transient),
        (500, "InternalServerError", Transient),
        (400, "PayloadTooLarge", Permanent),
    ],
)
def test_apple_reasons_map(apns: ApnsServer, status: int, reason: str, kind: type) -> None:
    apns.fail_next(status, {"reason": reason})
    (outcome,) = asyncio.run(send_all(apns, delivery()))
    assert type(outcome) is kind, outcome
    assert reason in outcome.reason  # type: ignore[attr-defined]


def test_a_wrong_topic_is_permanent_and_an_android_token_is_not_sent(apns: ApnsServer) -> None:
    outcomes = asyncio.run(send_all(apns, delivery(), topic="com.example.other"))
    assert isinstance(outcomes[0], Permanent)
    assert "TopicDisallowed" in outcomes[0].reason
    before = len(apns.received)
    (android,) = asyncio.run(send_all(apns, delivery(platform="android")))
    assert isinstance(android, Permanent)
    assert not isinstance(android, Unregistered)
    assert len(apns.received) == before


def test_an_untrusted_certificate_and_a_private_destination_are_permanent(apns: ApnsServer) -> None:
    async def run(policy: OutboundPolicy, trusted: bool) -> object:
        sender = ApnsSender(config(apns), policy=policy, tls_context=apns.client_context() if trusted else None)
        try:
            return await sender.send(delivery())
        finally:
            await sender.aclose()

    untrusted = asyncio.run(run(RELAY, False))
    assert isinstance(untrusted, Permanent)
    assert "certificate" in untrusted.reason
    refused = asyncio.run(run(OutboundPolicy(), True))
    assert isinstance(refused, Permanent)
    assert "destination refused" in refused.reason
    assert apns.accepted == []


def test_the_config_defaults_the_environments_host_and_hides_the_key(apns: ApnsServer) -> None:
    body = {
        "name": "apns", "channel": "push", "type": "apns",
        "config": {"team_id": apns.team_id, "key_id": apns.key_id, "private_key": apns.private_key_pem,
                   "topic": apns.topic, "environment": "sandbox"},
    }  # fmt: skip
    created = ProviderCreate.model_validate(body)
    assert isinstance(created.config, ApnsConfig)
    assert created.config.base_url == "https://api.sandbox.push.apple.com"
    shown = public_config(created.config).model_dump(mode="json")
    assert shown["has_private_key"] is True
    assert "PRIVATE KEY" not in str(shown)
    assert "PRIVATE KEY" not in created.model_dump_json()
    production = ProviderCreate.model_validate(
        {**body, "config": {**body["config"], "environment": "production", "base_url": created.config.base_url}}
    )
    assert isinstance(production.config, ApnsConfig)
    assert production.config.base_url == "https://api.push.apple.com"
    for field, value in (("team_id", "short"), ("private_key", "nope"), ("environment", "dev")):
        with pytest.raises(ValidationError) as caught:
            ProviderCreate.model_validate({**body, "config": {**body["config"], field: value}})
        assert {".".join(str(p) for p in e["loc"]) for e in caught.value.errors()} == {f"config.{field}"}
