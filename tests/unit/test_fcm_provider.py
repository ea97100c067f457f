"""The FCM adapter against a strict loopback FCM (``tests/vendors/fcm_server.py``): the OAuth 2
JWT-bearer grant (RS256 assertion verified with the service account's public key), the access token
kept and refreshed, the HTTP v1 message, and FCM's error codes mapped; the ``fcm`` provider config."""

from __future__ import annotations

import asyncio
import ipaddress
import time
from collections.abc import Iterator

import pytest
from pydantic import ValidationError

from spotzee.providers.adapter import Permanent, Sent, Transient
from spotzee.providers.fcm import FcmSender
from spotzee.providers.push import PushDelivery, Unregistered, device_send_id
from spotzee.providers.safety import OutboundPolicy
from spotzee.schemas.provider_models import FcmConfig, ProviderCreate, public_config
from spotzee.schemas.template_models import RenderedPush
from tests.vendors.fcm_server import FcmServer, fcm_error

RELAY = OutboundPolicy(allowed_networks=(ipaddress.ip_network("127.0.0.0/8"),))
PUSH = RenderedPush(
    title="Shipped", body="Order A-7", image="https://cdn.example.com/a.png", deep_link="shop://orders/A-7",
    data={"order_id": "A-7"}, badge=2, sound="default", ttl=600,
)  # fmt: skip


@pytest.fixture
def fcm() -> Iterator[FcmServer]:
    server = FcmServer(registered={"tok-android", "tok-ios"})
    with server.running():
        yield server


def config(server: FcmServer) -> FcmConfig:
    return FcmConfig.model_validate({"service_account": server.service_account(), "base_url": server.base_url})


def delivery(token: str = "tok-android") -> PushDelivery:
    return PushDelivery(send_id=device_send_id("s1", token), token=token, message=PUSH)


async def send_all(server: FcmServer, *deliveries: PushDelivery, clock: object = None) -> list[object]:
    sender = FcmSender(config(server), policy=RELAY, **({"clock": clock} if clock else {}))  # type: ignore[arg-type]
    try:
        return [await sender.send(d) for d in deliveries]
    finally:
        await sender.aclose()


def test_a_push_is_sent_with_one_grant_and_the_documented_message(fcm: FcmServer) -> None:
    outcomes = asyncio.run(send_all(fcm, delivery("tok-android"), delivery("tok-ios")))
    assert all(isinstance(o, Sent) for o in outcomes)
    first = outcomes[0]
    assert isinstance(first, Sent)
    assert first.provider_message_id is not None
    assert first.provider_message_id.startswith("projects/spotzee-test/messages/")
    assert fcm.grants == 1  # the access token is kept across sends
    message = fcm.sends()[0]
    assert message["token"] == "tok-android"
    assert message["notification"] == {
        "title": "Shipped",
        "body": "Order A-7",
        "image": "https://cdn.example.com/a.png",
    }
    assert message["data"] == {"order_id": "A-7", "deep_link": "shop://orders/A-7"}
    assert message["android"] == {"ttl": "600s", "notification": {"sound": "default"}}
    assert message["apns"]["payload"] == {"aps": {"badge": 2, "sound": "default"}}
    assert int(message["apns"]["headers"]["apns-expiration"]) > 600


def test_an_expired_access_token_is_replaced_before_use(fcm: FcmServer) -> None:
    # the server checks iat/exp against real time: a fake clock from 300 s ago, tokens of 400 s
    now = [time.time() - 300]
    fcm.expires_in = 400

    async def run() -> None:
        sender = FcmSender(config(fcm), policy=RELAY, clock=lambda: now[0])
        try:
            assert isinstance(await sender.send(delivery()), Sent)
            now[0] += 150  # not yet within REFRESH_BEFORE of expiry: kept
            assert isinstance(await sender.send(delivery()), Sent)
            assert fcm.grants == 1
            now[0] += 100  # now it is: replaced before use
            assert isinstance(await sender.send(delivery()), Sent)
        finally:
            await sender.aclose()

    asyncio.run(run())
    assert fcm.grants == 2


def test_a_revoked_access_token_is_refreshed_once(fcm: FcmServer) -> None:
    async def run() -> list[object]:
        sender = FcmSender(config(fcm), policy=RELAY)
        try:
            first = await sender.send(delivery())
            fcm.revoke_tokens()
            return [first, await sender.send(delivery())]
        finally:
            await sender.aclose()

    outcomes = asyncio.run(run())
    assert all(isinstance(o, Sent) for o in outcomes)
    assert fcm.grants == 2
    assert [r.path for r in fcm.received].count("/token") == 2


def test_unregistered_is_permanent_and_says_so(fcm: FcmServer) -> None:
    (outcome,) = asyncio.run(send_all(fcm, delivery("tok-gone")))
    assert isinstance(outcome, Unregistered)
    assert isinstance(outcome, Permanent)
    assert "UNREGISTERED" in outcome.reason


@pytest.mark.parametrize(
    ("status", "code", "kind"),
    [
        (400, "INVALID_ARGUMENT", Permanent),
        (403, "SENDER_ID_MISMATCH", Permanent),
        (429, "QUOTA_EXCEEDED", Transient),
        (503, "UNAVAILABLE", Transient),
        (500, "INTERNAL", Transient),
    ],
)
def test_fcm_error_codes_map(fcm: FcmServer, status: int, code: str, kind: type) -> None:
    outcome = asyncio.run(_with_failure_after_grant(fcm, status, code))
    assert type(outcome) is kind, outcome
    assert code in outcome.reason
    if kind is Transient:
        assert isinstance(outcome, Transient)
        assert outcome.retry_after == 7.0


async def _with_failure_after_grant(fcm: FcmServer, status: int, code: str) -> Sent | Transient | Permanent:
    sender = FcmSender(config(fcm), policy=RELAY)
    try:
        await sender.access_token()
        fcm.fail_next(status, fcm_error(status, "no", code), headers={"Retry-After": "7"})
        return await sender.send(delivery())
    finally:
        await sender.aclose()


def test_a_refused_grant_is_permanent_and_nothing_is_sent(fcm: FcmServer) -> None:
    other = FcmServer()  # another key: the assertion does not verify
    values = {**fcm.service_account(), "private_key": other.private_key_pem}
    bad = FcmConfig.model_validate({"service_account": values, "base_url": fcm.base_url})

    async def run() -> object:
        sender = FcmSender(bad, policy=RELAY)
        try:
            return await sender.send(delivery())
        finally:
            await sender.aclose()

    outcome = asyncio.run(run())
    assert isinstance(outcome, Permanent)
    assert "invalid_grant" in outcome.reason
    assert fcm.accepted == []
    assert [r.path for r in fcm.received] == ["/token"]


def test_private_destinations_are_refused_per_request(fcm: FcmServer) -> None:
    async def run() -> object:
        sender = FcmSender(config(fcm), policy=OutboundPolicy())  # the default: no loopback
        try:
            return await sender.send(delivery())
        finally:
            await sender.aclose()

    outcome = asyncio.run(run())
    assert isinstance(outcome, Permanent)
    assert "destination refused" in outcome.reason
    assert fcm.received == []


def test_the_config_takes_the_json_key_and_hides_the_private_key(fcm: FcmServer) -> None:
    created = ProviderCreate.model_validate(
        {"name": "fcm", "channel": "push", "type": "fcm", "config": {"service_account": fcm.service_account()}}
    )
    assert isinstance(created.config, FcmConfig)
    assert created.config.token_uri == fcm.token_uri
    assert {e.field for e in created.config.destinations()} == {"base_url", "token_uri"}
    shown = public_config(created.config).model_dump(mode="json")
    assert shown["has_private_key"] is True
    assert "PRIVATE KEY" not in str(shown)
    assert "PRIVATE KEY" not in created.model_dump_json()


def test_bad_config_names_the_field(fcm: FcmServer) -> None:
    account = fcm.service_account()
    cases = {
        "config.private_key": {**account, "private_key": "not a key"},
        "config.token_uri": {**account, "token_uri": "ftp://x/token"},
        "config.project_id": {**account, "project_id": "Bad Project"},
    }
    for path, value in cases.items():
        with pytest.raises(ValidationError) as caught:
            ProviderCreate.model_validate(
                {"name": "fcm", "channel": "push", "type": "fcm", "config": {"service_account": value}}
            )
        assert {".".join(str(p) for p in e["loc"]) for e in caught.value.errors()} == {path}, path
    missing = {k: v for k, v in account.items() if k != "private_key"}
    with pytest.raises(ValidationError) as caught:
        ProviderCreate.model_validate(
            {"name": "fcm", "channel": "push", "type": "fcm", "config": {"service_account": missing}}
        )
    assert [e["loc"] for e in caught.value.errors()] == [("config", "private_key")]
    with pytest.raises(ValidationError):
        ProviderCreate.model_validate(
            {"name": "fcm", "channel": "sms", "type": "fcm", "config": {"service_account": account}}
        )


def test_device_send_ids_are_stable_and_distinct() -> None:
    assert device_send_id("s", "a") == device_send_id("s", "a")
    assert device_send_id("s", "a") != device_send_id("s", "b")
