"""SMS adapters against strict loopback vendor servers (``tests/vendors``): what Twilio and Vonage
receive, how their answers map to sent / transient / permanent, one request per attempt,
connections reused from send to send, the outbound policy applied; and the provider configs."""

from __future__ import annotations

import asyncio
import ipaddress
import json
import socket
from collections.abc import Iterator

import pytest
from pydantic import ValidationError

from spotzee.providers.adapter import Permanent, Sent, Transient
from spotzee.providers.safety import OutboundPolicy
from spotzee.providers.sms import SmsDelivery
from spotzee.providers.twilio import TwilioSender
from spotzee.providers.vonage import VonageSender
from spotzee.schemas.provider_models import (
    ProviderCreate,
    ProviderPublic,
    ProviderUpdate,
    TwilioConfig,
    VonageConfig,
)
from spotzee.schemas.template_models import RenderedSms
from tests.vendors.twilio_server import TwilioServer, twilio_error
from tests.vendors.vonage_server import VonageServer, vonage_error

ACCOUNT = "AC" + "0123456789abcdef" * 2
TOKEN = "twilio-auth-token-0001"
SERVICE = "MG" + "fedcba9876543210" * 2
VONAGE_KEY = "a1b2c3d4"
VONAGE_SECRET = "vonage-secret-0001"
RELAY = OutboundPolicy(allowed_networks=(ipaddress.ip_network("127.0.0.0/8"),))
CALLBACK = "https://spotzee.example/hooks/prv_1"


def sms(body: str = "Hi Ada", *, send_id: str = "run-1:send", to: str = "+447700900123") -> SmsDelivery:
    encoding = "GSM-7" if all(ord(ch) < 128 for ch in body) else "UCS-2"
    return SmsDelivery(send_id=send_id, to=to, message=RenderedSms(body=body, encoding=encoding, segments=1))


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


def twilio_config(server: TwilioServer, **changes: object) -> TwilioConfig:
    values: dict[str, object] = {
        "account_sid": ACCOUNT,
        "auth_token": TOKEN,
        "from": "+14155550100",
        "base_url": server.base_url,
        **changes,
    }
    return TwilioConfig.model_validate({k: v for k, v in values.items() if v is not None})


def vonage_config(server: VonageServer, **changes: object) -> VonageConfig:
    values = {"api_key": VONAGE_KEY, "api_secret": VONAGE_SECRET, "from": "Spotzee", "base_url": server.base_url}
    return VonageConfig.model_validate({**values, **changes})


async def _send_all(sender: TwilioSender | VonageSender, deliveries: list[SmsDelivery]) -> list[object]:
    try:
        return list(await asyncio.gather(*(sender.send(d) for d in deliveries)))
    finally:
        await sender.aclose()


def send(sender: TwilioSender | VonageSender, *deliveries: SmsDelivery) -> list[object]:
    return asyncio.run(_send_all(sender, list(deliveries) or [sms()]))


# == Twilio ========================================================================================


def test_twilio_gets_the_documented_form_and_its_sid_is_the_message_id(twilio: TwilioServer) -> None:
    sender = TwilioSender(twilio_config(twilio), policy=RELAY, status_callback=CALLBACK)
    [outcome] = send(sender, sms("Hi Ada, 10% off: {ok} €5"))
    assert isinstance(outcome, Sent)
    [request] = twilio.accepted
    assert request.path == f"/2010-04-01/Accounts/{ACCOUNT}/Messages.json"
    assert request.form() == {
        "To": "+447700900123",
        "From": "+14155550100",
        "Body": "Hi Ada, 10% off: {ok} €5",
        "StatusCallback": CALLBACK,
    }
    assert outcome.provider_message_id is not None
    assert outcome.provider_message_id.startswith("SM")
    assert len(outcome.provider_message_id) == 34
    assert outcome.detail == "HTTP 201 queued"


def test_twilio_through_a_messaging_service(twilio: TwilioServer) -> None:
    config = twilio_config(twilio, **{"from": None, "messaging_service_sid": SERVICE})
    [outcome] = send(TwilioSender(config, policy=RELAY), sms())
    assert isinstance(outcome, Sent)
    form = twilio.accepted[0].form()
    assert form["MessagingServiceSid"] == SERVICE
    assert "From" not in form
    assert "StatusCallback" not in form


def test_twilio_whatsapp_sender_addresses_the_whatsapp_channel(twilio: TwilioServer) -> None:
    config = twilio_config(twilio, **{"from": "whatsapp:+14155550100"})
    [outcome] = send(TwilioSender(config, policy=RELAY), sms())
    assert isinstance(outcome, Sent)
    assert twilio.accepted[0].form()["To"] == "whatsapp:+447700900123"


def test_twilio_whatsapp_through_a_messaging_service_addresses_the_whatsapp_channel(twilio: TwilioServer) -> None:
    config = twilio_config(twilio, **{"from": None, "messaging_service_sid": SERVICE})
    [outcome] = send(TwilioSender(config, policy=RELAY, channel="whatsapp"), sms())
    assert isinstance(outcome, Sent)
    assert twilio.accepted[0].form()["To"] == "whatsapp:+447700900123"


def test_twilio_wrong_token_is_permanent(twilio: TwilioServer) -> None:
    config = twilio_config(twilio, auth_token="not-the-token-0001")
    [outcome] = send(TwilioSender(config, policy=RELAY))
    assert isinstance(outcome, Permanent)
    assert outcome.reason == "HTTP 401: Twilio error 20003: Authenticate"
    assert not twilio.accepted


@pytest.mark.parametrize(
    ("status", "headers", "kind", "retry_after"),
    [
        (429, {"Retry-After": "7"}, Transient, 7.0),
        (503, {}, Transient, None),
        (500, {"Retry-After": "2"}, Transient, 2.0),
        (400, {}, Permanent, None),
        (404, {}, Permanent, None),
    ],
)
def test_twilio_status_mapping(
    twilio: TwilioServer, status: int, headers: dict[str, str], kind: type, retry_after: float | None
) -> None:
    twilio.fail_next(status, twilio_error(status, 21211 if status == 400 else 20429, "refused"), headers=headers)
    [outcome] = send(TwilioSender(twilio_config(twilio), policy=RELAY))
    assert isinstance(outcome, kind)
    assert f"HTTP {status}" in outcome.reason  # type: ignore[attr-defined]
    if isinstance(outcome, Transient):
        assert outcome.retry_after == retry_after
    assert len(twilio.received) == 1  # one request per attempt: the adapter never retries itself


def test_twilio_2xx_without_a_sid_is_not_sent_again(twilio: TwilioServer) -> None:
    twilio.fail_next(200, {"status": "queued"})
    [outcome] = send(TwilioSender(twilio_config(twilio), policy=RELAY))
    assert isinstance(outcome, Permanent)
    assert "without a message sid" in outcome.reason


def test_twilio_timeout_is_transient(twilio: TwilioServer) -> None:
    twilio.delay = 1.0
    [outcome] = send(TwilioSender(twilio_config(twilio, timeout=0.2), policy=RELAY))
    assert isinstance(outcome, Transient)
    assert outcome.reason == "no response within 0.2s"


def test_twilio_connection_refused_is_transient() -> None:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    config = TwilioConfig.model_validate(
        {"account_sid": ACCOUNT, "auth_token": TOKEN, "from": "+14155550100", "base_url": f"http://127.0.0.1:{port}"}
    )
    [outcome] = send(TwilioSender(config, policy=RELAY))
    assert isinstance(outcome, Transient)
    assert outcome.reason.startswith("ConnectError")


def test_a_loopback_vendor_is_refused_without_the_operators_allowance(twilio: TwilioServer) -> None:
    [outcome] = send(TwilioSender(twilio_config(twilio), policy=OutboundPolicy()))
    assert isinstance(outcome, Permanent)
    assert outcome.reason.startswith("destination refused: 127.0.0.1 resolves to a loopback address")
    assert not twilio.received


def test_a_kept_sender_reuses_its_connection_and_sends_concurrently(twilio: TwilioServer) -> None:
    sender = TwilioSender(twilio_config(twilio), policy=RELAY)

    async def run() -> list[object]:
        try:
            first = [await sender.send(sms(send_id=f"s{i}")) for i in range(3)]  # one after another
            rest = await asyncio.gather(*(sender.send(sms(send_id=f"c{i}")) for i in range(20)))
            return [*first, *rest]
        finally:
            await sender.aclose()

    outcomes = asyncio.run(run())
    assert all(isinstance(o, Sent) for o in outcomes)
    assert len(twilio.accepted) == 23
    sequential_ports = {r.client_port for r in twilio.accepted[:3]}
    assert len(sequential_ports) == 1  # the same kept-alive connection, three sends in a row
    sids = {o.provider_message_id for o in outcomes if isinstance(o, Sent)}
    assert len(sids) == 23


# == Vonage ========================================================================================


def test_vonage_gets_the_documented_form(vonage: VonageServer) -> None:
    [outcome] = send(VonageSender(vonage_config(vonage), policy=RELAY), sms("Hello Ada"))
    assert isinstance(outcome, Sent)
    [request] = vonage.accepted
    assert request.headers["content-type"] == "application/x-www-form-urlencoded"
    assert request.form() == {
        "api_key": VONAGE_KEY,
        "api_secret": VONAGE_SECRET,
        "from": "Spotzee",
        "to": "447700900123",
        "text": "Hello Ada",
        "client-ref": "run-1:send",
    }
    assert outcome.provider_message_id is not None
    assert len(outcome.provider_message_id) == 16


def test_vonage_unicode_text_goes_as_unicode_and_a_number_sender_without_plus(vonage: VonageServer) -> None:
    config = vonage_config(vonage, **{"from": "+447700900000"})
    [outcome] = send(VonageSender(config, policy=RELAY), sms("Привет 👋"))
    assert isinstance(outcome, Sent)
    form = vonage.accepted[0].form()
    assert form["type"] == "unicode"
    assert form["from"] == "447700900000"
    assert form["text"] == "Привет 👋"


def test_vonage_long_send_id_is_not_a_client_ref(vonage: VonageServer) -> None:
    [outcome] = send(VonageSender(vonage_config(vonage), policy=RELAY), sms(send_id="x" * 101))
    assert isinstance(outcome, Sent)
    assert "client-ref" not in vonage.accepted[0].form()


@pytest.mark.parametrize(
    ("status", "text", "kind"),
    [
        ("1", "Throttled", Transient),
        ("5", "Internal Error", Transient),
        ("10", "Too Many Existing Binds", Transient),
        ("3", "Invalid to param", Permanent),
        ("6", "Invalid Message", Permanent),
        ("7", "Number Barred", Permanent),
        ("9", "Partner Quota Violation", Permanent),
        ("15", "Invalid Sender Address", Permanent),
    ],
)
def test_vonage_status_codes(vonage: VonageServer, status: str, text: str, kind: type) -> None:
    vonage.fail_next(200, vonage_error(status, text))
    [outcome] = send(VonageSender(vonage_config(vonage), policy=RELAY))
    assert isinstance(outcome, kind)
    assert outcome.reason == f"Vonage status {status}: {text}"  # type: ignore[attr-defined]
    assert len(vonage.received) == 1


def test_vonage_wrong_secret_is_permanent(vonage: VonageServer) -> None:
    [outcome] = send(VonageSender(vonage_config(vonage, api_secret="wrong-secret-0001"), policy=RELAY))
    assert isinstance(outcome, Permanent)
    assert outcome.reason == "Vonage status 4: Bad Credentials"


def test_vonage_long_text_is_sent_when_every_part_is_accepted(vonage: VonageServer) -> None:
    vonage.parts = 3
    [outcome] = send(VonageSender(vonage_config(vonage), policy=RELAY), sms("a" * 400))
    assert isinstance(outcome, Sent)
    assert outcome.detail == "HTTP 200, 3 part(s)"


def test_vonage_partly_accepted_is_not_retried(vonage: VonageServer) -> None:
    body = {
        "message-count": "2",
        "messages": [
            {"to": "447700900123", "message-id": "0C000000217B7F02", "status": "0"},
            {"status": "1", "error-text": "Throttled"},
        ],
    }
    vonage.fail_next(200, body)
    [outcome] = send(VonageSender(vonage_config(vonage), policy=RELAY), sms("a" * 200))
    assert isinstance(outcome, Permanent)
    assert outcome.reason.startswith("partly accepted (2 parts)")


@pytest.mark.parametrize(("status", "kind"), [(429, Transient), (500, Transient), (502, Transient), (401, Permanent)])
def test_vonage_http_statuses(vonage: VonageServer, status: int, kind: type) -> None:
    vonage.fail_next(status, {"title": "refused"}, headers={"Retry-After": "3"})
    [outcome] = send(VonageSender(vonage_config(vonage), policy=RELAY))
    assert isinstance(outcome, kind)
    if isinstance(outcome, Transient):
        assert outcome.retry_after == 3.0


def test_vonage_200_without_statuses_is_not_sent_again(vonage: VonageServer) -> None:
    vonage.fail_next(200, {"unexpected": True})
    [outcome] = send(VonageSender(vonage_config(vonage), policy=RELAY))
    assert isinstance(outcome, Permanent)


# == configs =======================================================================================


def create(body: dict[str, object]) -> ProviderCreate:
    return ProviderCreate.model_validate(body)


def errors_of(body: dict[str, object], model: type[ProviderCreate] = ProviderCreate) -> list[tuple[str, str]]:
    with pytest.raises(ValidationError) as caught:
        model.model_validate(body)
    return [(".".join(str(p) for p in e["loc"]), e["msg"]) for e in caught.value.errors()]


TWILIO = {"account_sid": ACCOUNT, "auth_token": TOKEN, "from": "+14155550100"}


def test_twilio_serves_sms_and_whatsapp_vonage_only_sms() -> None:
    assert create({"name": "t", "channel": "sms", "type": "twilio", "config": TWILIO}).channel == "sms"
    whatsapp = {**TWILIO, "from": "whatsapp:+14155550100"}
    assert create({"name": "w", "channel": "whatsapp", "type": "twilio", "config": whatsapp}).channel == "whatsapp"
    vonage = {"api_key": "abc123", "api_secret": "s", "from": "Shop"}
    assert errors_of({"name": "v", "channel": "whatsapp", "type": "vonage", "config": vonage}) == [
        ("type", "Value error, 'vonage' providers deliver on channel 'sms', not 'whatsapp'")
    ]
    assert errors_of({"name": "v", "channel": "email", "type": "twilio", "config": TWILIO}) == [
        ("type", "Value error, 'twilio' providers deliver on channel 'sms' or 'whatsapp', not 'email'")
    ]


@pytest.mark.parametrize(
    ("config", "path"),
    [
        ({**TWILIO, "account_sid": "AC123"}, "config.account_sid"),
        ({**TWILIO, "from": "4155550100"}, "config.from"),
        ({**TWILIO, "from": "+14155550100\n"}, "config.from"),  # matched whole: no trailing newline
        ({**TWILIO, "account_sid": ACCOUNT + "\n"}, "config.account_sid"),
        ({**TWILIO, "from": "whatsapp:+14155550100"}, "config.from"),  # a WhatsApp sender on channel sms
        ({**TWILIO, "messaging_service_sid": SERVICE}, "config"),  # both senders
        ({k: v for k, v in TWILIO.items() if k != "from"}, "config"),  # neither
        ({**TWILIO, "base_url": "ftp://api.twilio.com"}, "config.base_url"),
        ({**TWILIO, "base_url": "https://user:pw@api.twilio.com"}, "config.base_url"),
        ({**TWILIO, "base_url": "https://api.twilio.com/?x=1"}, "config.base_url"),
        ({**TWILIO, "timeout": 0}, "config.timeout"),
        ({**TWILIO, "extra": 1}, "config.extra"),
        ({k: v for k, v in TWILIO.items() if k != "auth_token"}, "config.auth_token"),
    ],
)
def test_bad_twilio_config_names_the_field(config: dict[str, object], path: str) -> None:
    errors = errors_of({"name": "t", "channel": "sms", "type": "twilio", "config": config})
    assert path in [p for p, _ in errors], errors


def test_an_update_keeps_the_stored_secret_and_views_mask_it() -> None:
    update = ProviderUpdate.model_validate(
        {
            "name": "t",
            "channel": "sms",
            "type": "twilio",
            "config": {k: v for k, v in TWILIO.items() if k != "auth_token"},
        }
    )
    previous = TwilioConfig.model_validate(TWILIO)
    kept = update.with_secrets_from(previous)
    assert isinstance(kept, TwilioConfig)
    assert kept.auth_token is not None
    assert kept.auth_token.get_secret_value() == TOKEN
    assert TOKEN not in json.dumps(kept.model_dump(mode="json"))


def test_base_url_host_and_port_are_the_destination() -> None:
    config = TwilioConfig.model_validate({**TWILIO, "base_url": "http://0x7f.1:8080/relay/"})
    assert config.base_url == "http://127.0.0.1:8080/relay"
    [endpoint] = config.destinations()
    assert (endpoint.field, endpoint.host, endpoint.port) == ("base_url", "127.0.0.1", 8080)
    vonage = VonageConfig.model_validate({"api_key": "abc", "api_secret": "s", "from": "Shop"})
    [default] = vonage.destinations()
    assert (default.host, default.port) == ("rest.nexmo.com", 443)


def test_public_view_says_only_whether_secrets_are_set() -> None:
    from datetime import UTC, datetime

    from spotzee.schemas.provider_models import ProviderDefinition

    now = datetime(2026, 1, 1, tzinfo=UTC)
    definition = ProviderDefinition(
        id="prv_1",
        project_id="p",
        name="t",
        channel="sms",
        provider_type="twilio",
        config=TwilioConfig.model_validate(TWILIO),
        version=1,
        created_at=now,
        updated_at=now,
    )
    public = ProviderPublic.from_definition(definition).model_dump(mode="json")
    assert public["config"]["has_auth_token"] is True
    assert public["config"]["from"] == "+14155550100"
    assert TOKEN not in json.dumps(public)
