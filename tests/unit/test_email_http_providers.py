"""HTTP email adapters (SendGrid, Postmark, SES) against strict loopback vendor servers
(``tests/vendors``): what each vendor receives (the same unsubscribe headers as SMTP), how its
answers map to sent / transient / permanent, one request per attempt, the outbound policy
applied, kept connections; and the provider configs."""

from __future__ import annotations

import asyncio
import ipaddress
from collections.abc import Iterator
from datetime import UTC, datetime

import pytest
from pydantic import ValidationError

from spotzee.providers.adapter import EmailDelivery, Permanent, Sent, Transient
from spotzee.providers.email_headers import unsubscribe_headers
from spotzee.providers.postmark import PostmarkSender
from spotzee.providers.safety import OutboundPolicy
from spotzee.providers.sendgrid import SendgridSender
from spotzee.providers.ses import SesSender
from spotzee.providers.smtp import build_message
from spotzee.schemas.provider_models import (
    PostmarkConfig,
    ProviderCreate,
    ProviderDefinition,
    ProviderPublic,
    SendgridConfig,
    SesConfig,
)
from spotzee.schemas.template_models import RenderedEmail
from tests.vendors.postmark_server import PostmarkServer, postmark_error
from tests.vendors.sendgrid_server import SendgridServer, sendgrid_error
from tests.vendors.ses_server import SesServer, ses_error

RELAY = OutboundPolicy(allowed_networks=(ipaddress.ip_network("127.0.0.0/8"),))
SENDGRID_KEY = "SG.test-key-0001.secret"
POSTMARK_TOKEN = "pm-server-token-0001"
AWS_KEY = "AKIAIOSFODNN7EXAMPLE"
AWS_SECRET = "ses-secret-wJalrXUtnFEMI0001"
UNSUBSCRIBE = "https://spotzee.example/u/tok123"

Sender = SendgridSender | PostmarkSender | SesSender


def delivery(
    *,
    send_id: str = "run-1:mail",
    html: str | None = "<p>Hi Ada</p>",
    text: str | None = "Hi Ada",
    reply_to: str | None = "Support <help@shop.example>",
    unsubscribe: str = UNSUBSCRIBE,
    sender: str = "Shop <hello@shop.example>",
) -> EmailDelivery:
    email = RenderedEmail.model_validate(
        {"subject": "Welcome, Ada", "html": html, "text": text, "from": sender, "reply_to": reply_to}
    )
    return EmailDelivery(send_id=send_id, to="Ada <ada@example.com>", email=email, unsubscribe_url=unsubscribe)


async def _send_all(sender: Sender, deliveries: list[EmailDelivery]) -> list[object]:
    try:
        return list(await asyncio.gather(*(sender.send(d) for d in deliveries)))
    finally:
        await sender.aclose()


def send(sender: Sender, *deliveries: EmailDelivery) -> list[object]:
    return asyncio.run(_send_all(sender, list(deliveries) or [delivery()]))


@pytest.fixture
def sendgrid() -> Iterator[SendgridServer]:
    with SendgridServer(SENDGRID_KEY).running() as server:
        assert isinstance(server, SendgridServer)
        yield server


@pytest.fixture
def postmark() -> Iterator[PostmarkServer]:
    with PostmarkServer(POSTMARK_TOKEN).running() as server:
        assert isinstance(server, PostmarkServer)
        yield server


@pytest.fixture
def ses() -> Iterator[SesServer]:
    with SesServer(
        AWS_KEY, AWS_SECRET, region="eu-west-1", configuration_sets=frozenset({"marketing"})
    ).running() as server:
        assert isinstance(server, SesServer)
        yield server


def sendgrid_config(server: SendgridServer, **changes: object) -> SendgridConfig:
    return SendgridConfig.model_validate({"api_key": SENDGRID_KEY, "base_url": server.base_url, **changes})


def postmark_config(server: PostmarkServer, **changes: object) -> PostmarkConfig:
    return PostmarkConfig.model_validate({"server_token": POSTMARK_TOKEN, "base_url": server.base_url, **changes})


def ses_config(server: SesServer, **changes: object) -> SesConfig:
    values = {
        "region": "eu-west-1",
        "access_key_id": AWS_KEY,
        "secret_access_key": AWS_SECRET,
        "base_url": server.base_url,
    }
    return SesConfig.model_validate({**values, **changes})


def test_every_email_path_carries_the_same_unsubscribe_headers() -> None:
    """SMTP builds its headers from the shared module: the HTTP adapters send exactly those."""
    message = build_message(delivery(), now=datetime(2026, 1, 1, tzinfo=UTC))
    expected = [("List-Unsubscribe", f"<{UNSUBSCRIBE}>"), ("List-Unsubscribe-Post", "List-Unsubscribe=One-Click")]
    assert unsubscribe_headers(delivery()) == expected
    assert [(name, message[name]) for name, _ in expected] == expected
    # An http:// link is not one-click (RFC 8058 requires https).
    assert unsubscribe_headers(delivery(unsubscribe="http://spotzee.example/u/t")) == [
        ("List-Unsubscribe", "<http://spotzee.example/u/t>")
    ]


# == SendGrid =====================================================================================


def test_sendgrid_gets_the_documented_mail_send_body(sendgrid: SendgridServer) -> None:
    [outcome] = send(SendgridSender(sendgrid_config(sendgrid), policy=RELAY))
    assert isinstance(outcome, Sent)
    [request] = sendgrid.accepted
    assert request.path == "/v3/mail/send"
    assert request.headers["authorization"] == f"Bearer {SENDGRID_KEY}"
    assert sendgrid.json(request) == {
        "personalizations": [{"to": [{"email": "ada@example.com", "name": "Ada"}]}],
        "from": {"email": "hello@shop.example", "name": "Shop"},
        "reply_to": {"email": "help@shop.example", "name": "Support"},
        "subject": "Welcome, Ada",
        "content": [{"type": "text/plain", "value": "Hi Ada"}, {"type": "text/html", "value": "<p>Hi Ada</p>"}],
        "headers": {"List-Unsubscribe": f"<{UNSUBSCRIBE}>", "List-Unsubscribe-Post": "List-Unsubscribe=One-Click"},
        "custom_args": {"send_id": "run-1:mail"},
    }
    assert outcome.provider_message_id is not None
    assert len(outcome.provider_message_id) == 22
    assert outcome.detail == "HTTP 202"


def test_sendgrid_html_only_without_reply_to(sendgrid: SendgridServer) -> None:
    [outcome] = send(SendgridSender(sendgrid_config(sendgrid), policy=RELAY), delivery(text=None, reply_to=None))
    assert isinstance(outcome, Sent)
    body = sendgrid.json(sendgrid.accepted[0])
    assert body["content"] == [{"type": "text/html", "value": "<p>Hi Ada</p>"}]
    assert "reply_to" not in body


def test_sendgrid_an_empty_rendered_body_is_never_sent(sendgrid: SendgridServer) -> None:
    [outcome] = send(SendgridSender(sendgrid_config(sendgrid), policy=RELAY), delivery(text="", html=None))
    assert isinstance(outcome, Permanent)
    assert not sendgrid.received


def test_sendgrid_wrong_key_is_permanent(sendgrid: SendgridServer) -> None:
    [outcome] = send(SendgridSender(sendgrid_config(sendgrid, api_key="SG.wrong"), policy=RELAY))
    assert isinstance(outcome, Permanent)
    assert outcome.reason == "HTTP 401: SendGrid: The provided authorization grant is invalid, expired, or revoked"
    assert not sendgrid.accepted


@pytest.mark.parametrize(
    ("status", "headers", "kind", "retry_after"),
    [
        (429, {"Retry-After": "7"}, Transient, 7.0),
        (429, {}, Transient, None),
        (500, {}, Transient, None),
        (503, {"Retry-After": "3"}, Transient, 3.0),
        (400, {}, Permanent, None),
        (403, {}, Permanent, None),
        (413, {}, Permanent, None),
    ],
)
def test_sendgrid_status_mapping(
    sendgrid: SendgridServer, status: int, headers: dict[str, str], kind: type, retry_after: float | None
) -> None:
    sendgrid.fail_next(status, sendgrid_error("refused", "from.email"), headers=headers)
    [outcome] = send(SendgridSender(sendgrid_config(sendgrid), policy=RELAY))
    assert isinstance(outcome, kind)
    assert outcome.reason == f"HTTP {status}: SendGrid: refused (from.email)"  # type: ignore[attr-defined]
    if isinstance(outcome, Transient):
        assert outcome.retry_after == retry_after
    assert len(sendgrid.received) == 1  # one request per attempt


def test_sendgrid_rate_limit_reset_is_honoured_without_retry_after(sendgrid: SendgridServer) -> None:
    sender = SendgridSender(sendgrid_config(sendgrid), policy=RELAY, clock=lambda: 1_700_000_000.0)
    sendgrid.fail_next(429, sendgrid_error("too many requests"), headers={"X-RateLimit-Reset": "1700000042"})
    [outcome] = send(sender)
    assert isinstance(outcome, Transient)
    assert outcome.retry_after == 42.0


def test_sendgrid_timeout_is_transient(sendgrid: SendgridServer) -> None:
    sendgrid.delay = 1.0
    [outcome] = send(SendgridSender(sendgrid_config(sendgrid, timeout=0.2), policy=RELAY))
    assert isinstance(outcome, Transient)
    assert outcome.reason == "no response within 0.2s"


def test_sendgrid_kept_sender_reuses_its_connection(sendgrid: SendgridServer) -> None:
    sender = SendgridSender(sendgrid_config(sendgrid), policy=RELAY)

    async def run() -> list[object]:
        try:
            return [await sender.send(delivery(send_id=f"s{i}")) for i in range(3)]
        finally:
            await sender.aclose()

    outcomes = asyncio.run(run())
    assert all(isinstance(o, Sent) for o in outcomes)
    assert len({r.client_port for r in sendgrid.accepted}) == 1


# == Postmark =====================================================================================


def test_postmark_gets_the_documented_email_body(postmark: PostmarkServer) -> None:
    [outcome] = send(PostmarkSender(postmark_config(postmark, message_stream="broadcast"), policy=RELAY))
    assert isinstance(outcome, Sent)
    [request] = postmark.accepted
    assert request.path == "/email"
    assert request.headers["x-postmark-server-token"] == POSTMARK_TOKEN
    assert postmark.json(request) == {
        "From": "Shop <hello@shop.example>",
        "To": "Ada <ada@example.com>",
        "ReplyTo": "Support <help@shop.example>",
        "Subject": "Welcome, Ada",
        "HtmlBody": "<p>Hi Ada</p>",
        "TextBody": "Hi Ada",
        "Headers": [
            {"Name": "List-Unsubscribe", "Value": f"<{UNSUBSCRIBE}>"},
            {"Name": "List-Unsubscribe-Post", "Value": "List-Unsubscribe=One-Click"},
        ],
        "MessageStream": "broadcast",
        "Metadata": {"send_id": "run-1:mail"},
    }
    assert outcome.provider_message_id is not None
    assert len(outcome.provider_message_id) == 36  # Postmark's MessageID, a UUID
    assert outcome.detail == "HTTP 200 OK"


def test_postmark_default_stream_and_a_long_send_id_left_out_of_metadata(postmark: PostmarkServer) -> None:
    [outcome] = send(PostmarkSender(postmark_config(postmark), policy=RELAY), delivery(send_id="x" * 81))
    assert isinstance(outcome, Sent)
    body = postmark.json(postmark.accepted[0])
    assert body["MessageStream"] == "outbound"
    assert "Metadata" not in body  # Postmark refuses values over 80 characters


@pytest.mark.parametrize(
    ("status", "code", "headers", "kind", "retry_after"),
    [
        (422, 406, {}, Permanent, None),  # inactive recipient
        (422, 300, {}, Permanent, None),  # invalid email request
        (422, 400, {}, Permanent, None),  # sender signature not found
        (401, 10, {}, Permanent, None),  # bad token
        (422, 405, {}, Permanent, None),  # not allowed to send
        (429, 429, {"Retry-After": "5"}, Transient, 5.0),  # rate limit exceeded
        (503, 100, {}, Transient, None),  # maintenance
        (422, 429, {}, Transient, None),  # the code decides, whatever the status
    ],
)
def test_postmark_error_codes_decide(
    postmark: PostmarkServer, status: int, code: int, headers: dict[str, str], kind: type, retry_after: float | None
) -> None:
    postmark.fail_next(status, postmark_error(code, "refused"), headers=headers)
    [outcome] = send(PostmarkSender(postmark_config(postmark), policy=RELAY))
    assert isinstance(outcome, kind)
    assert outcome.reason == f"HTTP {status}: Postmark error {code}: refused"  # type: ignore[attr-defined]
    if isinstance(outcome, Transient):
        assert outcome.retry_after == retry_after
    assert len(postmark.received) == 1


def test_postmark_wrong_token_and_unknown_stream_are_permanent(postmark: PostmarkServer) -> None:
    [outcome] = send(PostmarkSender(postmark_config(postmark, server_token="nope"), policy=RELAY))
    assert isinstance(outcome, Permanent)
    assert outcome.reason.startswith("HTTP 401: Postmark error 10:")
    [outcome] = send(PostmarkSender(postmark_config(postmark, message_stream="newsletters"), policy=RELAY))
    assert isinstance(outcome, Permanent)
    assert outcome.reason.startswith("HTTP 422: Postmark error 1235:")
    assert not postmark.accepted


def test_postmark_500_without_a_code_is_transient_and_200_without_message_id_permanent(
    postmark: PostmarkServer,
) -> None:
    postmark.fail_next(500, {"Message": "Internal Server Error"})
    [outcome] = send(PostmarkSender(postmark_config(postmark), policy=RELAY))
    assert isinstance(outcome, Transient)
    assert outcome.reason == "HTTP 500: Internal Server Error"
    postmark.fail_next(200, {"ErrorCode": 0, "Message": "OK"})
    [outcome] = send(PostmarkSender(postmark_config(postmark), policy=RELAY))
    assert isinstance(outcome, Permanent)
    assert "without a MessageID" in outcome.reason


# == SES ==========================================================================================


def test_ses_gets_a_signed_send_email_request(ses: SesServer) -> None:
    config = ses_config(ses, configuration_set="marketing")
    [outcome] = send(SesSender(config, policy=RELAY), delivery(sender="Café Ünïcode <hello@shop.example>"))
    assert isinstance(outcome, Sent)
    [request] = ses.accepted  # the server verified the signature
    assert request.path == "/v2/email/outbound-emails"
    assert request.headers["authorization"].startswith(
        f"AWS4-HMAC-SHA256 Credential={AWS_KEY}/{request.headers['x-amz-date'][:8]}/eu-west-1/ses/aws4_request, "
        "SignedHeaders=content-type;host;x-amz-date, Signature="
    )
    assert ses.json(request) == {
        "FromEmailAddress": "=?utf-8?b?Q2Fmw6kgw5xuw69jb2Rl?= <hello@shop.example>",  # RFC 2047
        "Destination": {"ToAddresses": ["Ada <ada@example.com>"]},
        "ReplyToAddresses": ["Support <help@shop.example>"],
        "Content": {
            "Simple": {
                "Subject": {"Data": "Welcome, Ada", "Charset": "UTF-8"},
                "Body": {
                    "Text": {"Data": "Hi Ada", "Charset": "UTF-8"},
                    "Html": {"Data": "<p>Hi Ada</p>", "Charset": "UTF-8"},
                },
                "Headers": [
                    {"Name": "List-Unsubscribe", "Value": f"<{UNSUBSCRIBE}>"},
                    {"Name": "List-Unsubscribe-Post", "Value": "List-Unsubscribe=One-Click"},
                ],
            }
        },
        "ConfigurationSetName": "marketing",
    }
    assert outcome.provider_message_id is not None
    assert outcome.provider_message_id.startswith("0100")


def test_ses_wrong_secret_is_refused_by_the_signature_check(ses: SesServer) -> None:
    [outcome] = send(SesSender(ses_config(ses, secret_access_key="not-the-secret"), policy=RELAY))
    assert isinstance(outcome, Permanent)
    assert outcome.reason.startswith("HTTP 403: SES SignatureDoesNotMatch: The request signature we calculated")
    assert not ses.accepted


def test_ses_wrong_region_and_unknown_configuration_set_are_permanent(ses: SesServer) -> None:
    [outcome] = send(SesSender(ses_config(ses, region="us-east-1"), policy=RELAY))
    assert isinstance(outcome, Permanent)
    assert outcome.reason.startswith("HTTP 403: SES InvalidSignatureException")
    [outcome] = send(SesSender(ses_config(ses, configuration_set="nope"), policy=RELAY))
    assert isinstance(outcome, Permanent)
    assert outcome.reason == "HTTP 404: SES NotFoundException: Configuration set <nope> does not exist."


@pytest.mark.parametrize(
    ("status", "kind_name", "headers", "kind", "retry_after"),
    [
        (400, "Throttling", {}, Transient, None),
        (429, "TooManyRequestsException", {"Retry-After": "4"}, Transient, 4.0),
        (400, "MessageRejected", {}, Permanent, None),
        (400, "MailFromDomainNotVerifiedException", {}, Permanent, None),
        (400, "AccountSuspendedException", {}, Permanent, None),
        (400, "SendingPausedException", {}, Permanent, None),
        (500, "InternalFailure", {}, Transient, None),
        (503, "ServiceUnavailable", {}, Transient, None),
    ],
)
def test_ses_error_types_decide(
    ses: SesServer, status: int, kind_name: str, headers: dict[str, str], kind: type, retry_after: float | None
) -> None:
    body, error_headers = ses_error(kind_name, "refused")
    ses.fail_next(status, body, headers={**error_headers, **headers})
    [outcome] = send(SesSender(ses_config(ses), policy=RELAY))
    assert isinstance(outcome, kind)
    assert outcome.reason == f"HTTP {status}: SES {kind_name}: refused"  # type: ignore[attr-defined]
    if isinstance(outcome, Transient):
        assert outcome.retry_after == retry_after
    assert len(ses.received) == 1


def test_ses_error_type_from_the_body_when_no_header(ses: SesServer) -> None:
    ses.fail_next(400, {"__type": "com.amazonaws.sesv2#MessageRejected", "message": "Email address is not verified."})
    [outcome] = send(SesSender(ses_config(ses), policy=RELAY))
    assert isinstance(outcome, Permanent)
    assert outcome.reason == "HTTP 400: SES MessageRejected: Email address is not verified."


# == common =======================================================================================


@pytest.mark.parametrize("vendor", ["sendgrid", "postmark", "ses"])
def test_a_loopback_vendor_is_refused_without_the_operators_allowance(
    vendor: str, sendgrid: SendgridServer, postmark: PostmarkServer, ses: SesServer
) -> None:
    policy = OutboundPolicy()
    sender: Sender = {
        "sendgrid": lambda: SendgridSender(sendgrid_config(sendgrid), policy=policy),
        "postmark": lambda: PostmarkSender(postmark_config(postmark), policy=policy),
        "ses": lambda: SesSender(ses_config(ses), policy=policy),
    }[vendor]()
    [outcome] = send(sender)
    assert isinstance(outcome, Permanent)
    assert outcome.reason.startswith("destination refused: 127.0.0.1 resolves to a loopback address")
    assert not sendgrid.received
    assert not postmark.received
    assert not ses.received


def test_configs_defaults_secrets_and_public_views() -> None:
    ses = SesConfig.model_validate({"region": "ap-southeast-2", "access_key_id": AWS_KEY, "secret_access_key": "s"})
    assert ses.base_url == "https://email.ap-southeast-2.amazonaws.com"
    # The shown base_url sent back with another region follows the region (SigV4 signs for it);
    # a relay's URL is kept.
    moved = SesConfig.model_validate({**ses.model_dump(context={"reveal_secrets": True}), "region": "eu-west-2"})
    assert moved.base_url == "https://email.eu-west-2.amazonaws.com"
    relay = {**ses.model_dump(context={"reveal_secrets": True}), "base_url": "https://relay.example/ses/"}
    assert SesConfig.model_validate(relay).base_url == "https://relay.example/ses"
    assert SendgridConfig.model_validate({"api_key": "k"}).base_url == "https://api.sendgrid.com"
    postmark = PostmarkConfig.model_validate({"server_token": "t"})
    assert (postmark.base_url, postmark.message_stream) == ("https://api.postmarkapp.com", "outbound")
    for body, secret, has in (
        ({"type": "sendgrid", "config": {"api_key": "SG.k"}}, "SG.k", "has_api_key"),
        ({"type": "postmark", "config": {"server_token": "pm-t"}}, "pm-t", "has_server_token"),
        (
            {"type": "ses", "config": {"region": "eu-west-1", "access_key_id": AWS_KEY, "secret_access_key": "aws-s"}},
            "aws-s",
            "has_secret_access_key",
        ),
    ):
        created = ProviderCreate.model_validate({"name": "n", "channel": "email", **body})
        dumped = created.config.model_dump_json()
        assert secret not in dumped
        now = datetime(2026, 1, 1, tzinfo=UTC)
        definition = ProviderDefinition(
            id="p1",
            project_id="x",
            name="n",
            channel="email",
            provider_type=body["type"],  # type: ignore[arg-type]
            config=created.config,
            version=1,
            created_at=now,
            updated_at=now,
        )
        public = ProviderPublic.from_definition(definition).model_dump_json()
        assert secret not in public
        assert f'"{has}":true' in public


@pytest.mark.parametrize(
    ("body", "path"),
    [
        ({"type": "sendgrid", "config": {}}, ("config", "api_key")),
        (
            {"type": "postmark", "config": {"server_token": "t", "message_stream": "Bad Stream"}},
            ("config", "message_stream"),
        ),
        (
            {"type": "ses", "config": {"region": "mars-1", "access_key_id": AWS_KEY, "secret_access_key": "s"}},
            ("config", "region"),
        ),
        (
            {"type": "ses", "config": {"region": "eu-west-1", "access_key_id": "short", "secret_access_key": "s"}},
            ("config", "access_key_id"),
        ),
        ({"type": "ses", "config": {"region": "eu-west-1", "access_key_id": AWS_KEY}}, ("config", "secret_access_key")),
        ({"type": "sendgrid", "config": {"api_key": "k", "base_url": "ftp://x"}}, ("config", "base_url")),
        ({"type": "sendgrid", "channel": "sms", "config": {"api_key": "k"}}, ("type",)),
    ],
)
def test_bad_configs_name_the_field(body: dict[str, object], path: tuple[str, ...]) -> None:
    with pytest.raises(ValidationError) as caught:
        ProviderCreate.model_validate({"name": "n", "channel": "email", **body})
    assert [error["loc"] for error in caught.value.errors()] == [path]
