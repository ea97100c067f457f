"""WhatsApp adapters against strict loopback vendor servers (``tests/vendors``): what Meta's Cloud
API receives (template and session text), how its answers map to sent / transient / permanent by
Meta's documented error codes, one request per attempt, connections reused; Twilio's WhatsApp
session text and its refusal of template messages; the ``meta_whatsapp`` provider config."""

from __future__ import annotations

import asyncio
import ipaddress
import json
from collections.abc import Iterator

import pytest
from pydantic import ValidationError

from spotzee.providers.adapter import Permanent, Sent, Transient
from spotzee.providers.meta_whatsapp import MetaWhatsAppSender
from spotzee.providers.safety import OutboundPolicy
from spotzee.providers.twilio import TwilioSender
from spotzee.providers.whatsapp import WhatsAppDelivery
from spotzee.schemas.provider_models import (
    MetaWhatsAppConfig,
    ProviderCreate,
    ProviderUpdate,
    TwilioConfig,
    public_config,
)
from spotzee.schemas.template_models import RenderedWhatsAppTemplate, RenderedWhatsAppText
from tests.vendors.meta_whatsapp_server import Approved, MetaWhatsAppServer, meta_error
from tests.vendors.twilio_server import TwilioServer

PHONE_ID = "106540352242922"
TOKEN = "EAAG-unit-access-token"
APP_SECRET = "meta-app-secret-0001"
RELAY = OutboundPolicy(allowed_networks=(ipaddress.ip_network("127.0.0.0/8"),))
ACCOUNT = "AC" + "0123456789abcdef" * 2
TWILIO_TOKEN = "twilio-auth-token-0001"

TEMPLATE = RenderedWhatsAppTemplate(
    template_name="order_shipped",
    language="en_US",
    components=[
        {"type": "body", "parameters": [{"type": "text", "text": "Ada"}, {"type": "text", "text": "A-1"}]},
        {"type": "button", "sub_type": "url", "index": "0", "parameters": [{"type": "text", "text": "A-1"}]},
    ],
)


def whatsapp(
    message: RenderedWhatsAppTemplate | RenderedWhatsAppText = TEMPLATE,
    *,
    send_id: str = "run-1:send",
    to: str = "+447700900123",
) -> WhatsAppDelivery:
    return WhatsAppDelivery(send_id=send_id, to=to, message=message)


@pytest.fixture
def meta() -> Iterator[MetaWhatsAppServer]:
    server = MetaWhatsAppServer(
        phone_number_id=PHONE_ID,
        access_token=TOKEN,
        templates={"order_shipped": Approved(("en_US", "fr"), body_parameters=2), "hello_world": Approved(("en_US",))},
        window_open={"447700900123"},
    )
    with server.running():
        yield server


@pytest.fixture
def twilio() -> Iterator[TwilioServer]:
    with TwilioServer(ACCOUNT, TWILIO_TOKEN).running() as server:
        assert isinstance(server, TwilioServer)
        yield server


def meta_config(server: MetaWhatsAppServer, **changes: object) -> MetaWhatsAppConfig:
    values: dict[str, object] = {
        "phone_number_id": PHONE_ID,
        "access_token": TOKEN,
        "app_secret": APP_SECRET,
        "base_url": server.base_url,
        **changes,
    }
    return MetaWhatsAppConfig.model_validate(values)


def send(sender: MetaWhatsAppSender | TwilioSender, *deliveries: WhatsAppDelivery) -> list[object]:
    async def run() -> list[object]:
        try:
            return list(await asyncio.gather(*(sender.send(d) for d in deliveries or (whatsapp(),))))
        finally:
            await sender.aclose()

    return asyncio.run(run())


# == Meta Cloud API ================================================================================


def test_meta_gets_the_documented_template_request_and_its_wamid_is_the_message_id(
    meta: MetaWhatsAppServer,
) -> None:
    [outcome] = send(MetaWhatsAppSender(meta_config(meta), policy=RELAY))
    assert isinstance(outcome, Sent)
    [request] = meta.accepted
    assert request.path == f"/v21.0/{PHONE_ID}/messages"
    assert request.headers["authorization"] == f"Bearer {TOKEN}"
    assert request.headers["content-type"] == "application/json"
    assert json.loads(request.body) == {
        "messaging_product": "whatsapp",
        "recipient_type": "individual",
        "to": "447700900123",
        "type": "template",
        "template": {"name": "order_shipped", "language": {"code": "en_US"}, "components": TEMPLATE.components},
    }
    assert outcome.provider_message_id is not None
    assert outcome.provider_message_id.startswith("wamid.")


def test_meta_session_text_and_a_template_without_components(meta: MetaWhatsAppServer) -> None:
    text = whatsapp(RenderedWhatsAppText(text="Your order shipped 📦"))
    hello = whatsapp(RenderedWhatsAppTemplate(template_name="hello_world", language="en_US"), send_id="s2")
    outcomes = send(MetaWhatsAppSender(meta_config(meta, api_version="v19.0"), policy=RELAY), text, hello)
    assert all(isinstance(o, Sent) for o in outcomes)
    bodies = sorted((json.loads(r.body) for r in meta.accepted), key=lambda b: b["type"])
    assert bodies[1]["text"] == {"body": "Your order shipped 📦"}
    assert "template" not in bodies[1]
    assert bodies[0]["template"] == {"name": "hello_world", "language": {"code": "en_US"}}
    assert {r.path for r in meta.accepted} == {f"/v19.0/{PHONE_ID}/messages"}


def test_a_session_text_outside_the_24_hour_window_is_permanent_with_a_clear_reason(
    meta: MetaWhatsAppServer,
) -> None:
    [outcome] = send(
        MetaWhatsAppSender(meta_config(meta), policy=RELAY),
        whatsapp(RenderedWhatsAppText(text="Hi"), to="+33612345678"),
    )
    assert isinstance(outcome, Permanent)
    assert outcome.reason.startswith("HTTP 400: outside the 24-hour customer-service window")
    assert "send an approved template instead" in outcome.reason
    assert "Meta error 131047" in outcome.reason
    assert not meta.accepted


def test_template_problems_are_permanent(meta: MetaWhatsAppServer) -> None:
    unknown = whatsapp(RenderedWhatsAppTemplate(template_name="nope", language="en_US"))
    wrong_count = whatsapp(
        RenderedWhatsAppTemplate(
            template_name="order_shipped",
            language="fr",
            components=[{"type": "body", "parameters": [{"type": "text", "text": "x"}]}],
        ),
        send_id="s2",
    )
    first, second = send(MetaWhatsAppSender(meta_config(meta), policy=RELAY), unknown, wrong_count)
    assert isinstance(first, Permanent)
    assert first.reason.startswith("HTTP 404: template problem (Meta error 132001:")
    assert isinstance(second, Permanent)
    assert second.reason.startswith("HTTP 400: template problem (Meta error 132000:")


def test_wrong_token_is_permanent(meta: MetaWhatsAppServer) -> None:
    [outcome] = send(MetaWhatsAppSender(meta_config(meta, access_token="EAAG-wrong"), policy=RELAY))
    assert isinstance(outcome, Permanent)
    assert outcome.reason.startswith("HTTP 401: access token expired or invalid (Meta error 190:")


def test_another_phone_number_id_is_permanent(meta: MetaWhatsAppServer) -> None:
    [outcome] = send(MetaWhatsAppSender(meta_config(meta, phone_number_id="999"), policy=RELAY))
    assert isinstance(outcome, Permanent)
    assert "invalid parameter (Meta error 100/33:" in outcome.reason


@pytest.mark.parametrize(
    ("status", "code", "headers", "kind", "retry_after"),
    [
        (429, 130429, {"Retry-After": "7"}, Transient, 7.0),  # throughput rate limit
        (400, 131048, {}, Transient, None),  # spam rate limit
        (400, 131056, {}, Transient, None),  # pair rate limit
        (400, 4, {}, Transient, None),  # application request limit
        (500, 1, {}, Transient, None),  # unknown API error
        (503, 2, {"Retry-After": "3"}, Transient, 3.0),  # temporary service error
        (500, 131000, {}, Transient, None),  # something went wrong
        (502, 131026, {}, Transient, None),  # a 5xx is retried whatever the code
        (400, 131026, {}, Permanent, None),  # undeliverable
        (400, 131047, {}, Permanent, None),  # re-engagement
        (400, 132015, {}, Permanent, None),  # template paused
        (400, 132016, {}, Permanent, None),  # template disabled
        (400, 100, {}, Permanent, None),  # invalid parameter
        (401, 190, {}, Permanent, None),  # token expired
        (403, 10, {}, Permanent, None),  # permission denied
        (400, 999999, {}, Permanent, None),  # an undocumented code: by status
        (429, 999999, {}, Transient, None),
    ],
)
def test_meta_error_code_mapping(
    meta: MetaWhatsAppServer, status: int, code: int, headers: dict[str, str], kind: type, retry_after: float | None
) -> None:
    meta.fail_next(status, meta_error(code, f"(#{code}) refused", subcode=2494010), headers=headers)
    [outcome] = send(MetaWhatsAppSender(meta_config(meta), policy=RELAY))
    assert isinstance(outcome, kind), outcome
    assert outcome.reason.startswith(f"HTTP {status}")  # type: ignore[attr-defined]
    assert f"Meta error {code}/2494010" in outcome.reason  # type: ignore[attr-defined]
    if isinstance(outcome, Transient):
        assert outcome.retry_after == retry_after
    assert len(meta.received) == 1  # one request per attempt: the adapter never retries itself


def test_a_2xx_without_a_message_id_is_not_sent_again(meta: MetaWhatsAppServer) -> None:
    meta.fail_next(200, {"messaging_product": "whatsapp", "contacts": [], "messages": []})
    [outcome] = send(MetaWhatsAppSender(meta_config(meta), policy=RELAY))
    assert isinstance(outcome, Permanent)
    assert "without a message id" in outcome.reason


def test_a_non_graph_error_body_maps_by_status(meta: MetaWhatsAppServer) -> None:
    meta.fail_next(502, {"html": "Bad Gateway"})
    [outcome] = send(MetaWhatsAppSender(meta_config(meta), policy=RELAY))
    assert isinstance(outcome, Transient)
    assert outcome.reason.startswith("HTTP 502")


def test_meta_timeout_is_transient(meta: MetaWhatsAppServer) -> None:
    meta.delay = 1.0
    [outcome] = send(MetaWhatsAppSender(meta_config(meta, timeout=0.2), policy=RELAY))
    assert isinstance(outcome, Transient)
    assert outcome.reason == "no response within 0.2s"


def test_a_loopback_meta_is_refused_without_the_operators_allowance(meta: MetaWhatsAppServer) -> None:
    [outcome] = send(MetaWhatsAppSender(meta_config(meta), policy=OutboundPolicy()))
    assert isinstance(outcome, Permanent)
    assert outcome.reason.startswith("destination refused: 127.0.0.1 resolves to a loopback address")
    assert not meta.received


def test_a_kept_meta_sender_reuses_its_connection_and_sends_concurrently(meta: MetaWhatsAppServer) -> None:
    sender = MetaWhatsAppSender(meta_config(meta), policy=RELAY)

    async def run() -> list[object]:
        try:
            first = [await sender.send(whatsapp(send_id=f"s{i}")) for i in range(3)]
            rest = await asyncio.gather(*(sender.send(whatsapp(send_id=f"c{i}")) for i in range(20)))
            return [*first, *rest]
        finally:
            await sender.aclose()

    outcomes = asyncio.run(run())
    assert all(isinstance(o, Sent) for o in outcomes)
    assert len({r.client_port for r in meta.accepted[:3]}) == 1
    assert len({o.provider_message_id for o in outcomes if isinstance(o, Sent)}) == 23


# == Twilio on WhatsApp ============================================================================


def twilio_config(server: TwilioServer) -> TwilioConfig:
    return TwilioConfig.model_validate(
        {
            "account_sid": ACCOUNT,
            "auth_token": TWILIO_TOKEN,
            "from": "whatsapp:+14155550100",
            "base_url": server.base_url,
        }
    )


def test_twilio_sends_a_session_text_as_body_to_the_whatsapp_address(twilio: TwilioServer) -> None:
    sender = TwilioSender(twilio_config(twilio), policy=RELAY, channel="whatsapp")
    [outcome] = send(sender, whatsapp(RenderedWhatsAppText(text="Hi Ada")))
    assert isinstance(outcome, Sent)
    assert twilio.accepted[0].form() == {
        "To": "whatsapp:+447700900123",
        "From": "whatsapp:+14155550100",
        "Body": "Hi Ada",
    }


def test_twilio_refuses_a_meta_template_without_a_request(twilio: TwilioServer) -> None:
    sender = TwilioSender(twilio_config(twilio), policy=RELAY, channel="whatsapp")
    [outcome] = send(sender, whatsapp(TEMPLATE))
    assert isinstance(outcome, Permanent)
    assert "ContentSid" in outcome.reason
    assert "meta_whatsapp" in outcome.reason
    assert not twilio.received


# == configs =======================================================================================

META = {"phone_number_id": PHONE_ID, "access_token": TOKEN, "app_secret": APP_SECRET}


def errors_of(body: dict[str, object], model: type[ProviderCreate] = ProviderCreate) -> list[tuple[str, str]]:
    with pytest.raises(ValidationError) as caught:
        model.model_validate(body)
    return [(".".join(str(p) for p in e["loc"]), e["msg"]) for e in caught.value.errors()]


def provider(config: dict[str, object], channel: str = "whatsapp") -> dict[str, object]:
    return {"name": "wa", "channel": channel, "type": "meta_whatsapp", "config": config}


def test_meta_config_defaults_and_public_view() -> None:
    created = ProviderCreate.model_validate(provider(META))
    config = created.config
    assert isinstance(config, MetaWhatsAppConfig)
    assert (config.api_version, config.base_url, config.timeout) == ("v21.0", "https://graph.facebook.com", 10.0)
    assert config.destinations()[0].host == "graph.facebook.com"
    assert config.destinations()[0].port == 443
    shown = public_config(config).model_dump(mode="json")
    assert shown == {
        "phone_number_id": PHONE_ID,
        "has_access_token": True,
        "has_app_secret": True,
        "api_version": "v21.0",
        "base_url": "https://graph.facebook.com",
        "timeout": 10.0,
    }
    assert TOKEN not in json.dumps(config.model_dump(mode="json"))


@pytest.mark.parametrize(
    ("config", "channel", "path"),
    [
        ({**META, "api_version": "21.0"}, "whatsapp", "config.api_version"),
        ({**META, "api_version": "v21.0\n"}, "whatsapp", "config.api_version"),
        ({**META, "api_version": "v21"}, "whatsapp", "config.api_version"),
        ({**META, "phone_number_id": "+1415"}, "whatsapp", "config.phone_number_id"),
        ({**META, "base_url": "ftp://graph.facebook.com"}, "whatsapp", "config.base_url"),
        ({**META, "timeout": 0}, "whatsapp", "config.timeout"),
        ({**META, "from": "+14155550100"}, "whatsapp", "config.from"),
        ({k: v for k, v in META.items() if k != "access_token"}, "whatsapp", "config.access_token"),
        ({k: v for k, v in META.items() if k != "app_secret"}, "whatsapp", "config.app_secret"),
        (META, "sms", "type"),
    ],
)
def test_bad_meta_config_names_the_field(config: dict[str, object], channel: str, path: str) -> None:
    errors = errors_of(provider(config, channel))
    assert [p for p, _ in errors] == [path], errors


def test_an_update_may_omit_the_secrets() -> None:
    update = ProviderUpdate.model_validate(provider({"phone_number_id": PHONE_ID}))
    assert isinstance(update.config, MetaWhatsAppConfig)
    previous = MetaWhatsAppConfig.model_validate(META)
    kept = update.with_secrets_from(previous)
    assert isinstance(kept, MetaWhatsAppConfig)
    assert kept.access_token is not None
    assert kept.access_token.get_secret_value() == TOKEN
    assert kept.app_secret is not None
    assert kept.app_secret.get_secret_value() == APP_SECRET
