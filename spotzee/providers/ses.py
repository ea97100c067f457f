"""Email through Amazon SES v2 ``SendEmail``: one signed request per attempt.

``POST {base_url}/v2/email/outbound-emails`` (default ``https://email.{region}.amazonaws.com``),
JSON::

    {"FromEmailAddress": "Shop <hello@shop.example>",
     "Destination": {"ToAddresses": ["ada@example.com"]}, "ReplyToAddresses": ["..."],
     "Content": {"Simple": {"Subject": {"Data": "...", "Charset": "UTF-8"},
                            "Body": {"Text": {...}, "Html": {...}},
                            "Headers": [{"Name": "List-Unsubscribe", "Value": "<https://...>"},
                                        {"Name": "List-Unsubscribe-Post", "Value": "List-Unsubscribe=One-Click"}]}},
     "ConfigurationSetName": "..."}

signed with AWS Signature Version 4 (``spotzee.providers.sigv4``, service ``ses``, the config's
region): ``Host``, ``Content-Type`` and ``X-Amz-Date`` are signed, the body hashed. Display names
outside ASCII go as RFC 2047 encoded-words, as SES requires. The headers are those the SMTP path
sets (``spotzee.providers.email_headers``).

SES answers ``200 {"MessageId": "..."}``. Errors carry their type in the ``X-Amzn-ErrorType``
header and/or the body's ``__type`` / ``code``, with a ``message``: ``Throttling``,
``TooManyRequestsException`` (and any 429 or 5xx) transient, ``Retry-After`` honoured; every other
refusal permanent (``MessageRejected``, ``MailFromDomainNotVerifiedException``,
``AccountSuspendedException``, ``SendingPausedException``, ``NotFoundException``,
``SignatureDoesNotMatch``, ``BadRequestException``, ...).
"""

from __future__ import annotations

import ssl
import time
from collections.abc import Callable
from datetime import UTC, datetime
from email.utils import formataddr
from typing import Final

import httpx
import orjson

from spotzee.providers.adapter import EmailDelivery, Permanent, Sent, Transient
from spotzee.providers.email_headers import mailbox_parts, unsubscribe_headers
from spotzee.providers.safety import OutboundPolicy
from spotzee.providers.sigv4 import Credentials, sign
from spotzee.providers.vendor_http import VendorClient, VendorResponse, http_status_outcome, outcome_of_error
from spotzee.schemas.provider_models import SesConfig

USER_AGENT: Final = "Spotzee-SES/1"
SEND_EMAIL_PATH: Final = "/v2/email/outbound-emails"
SERVICE: Final = "ses"
CHARSET: Final = "UTF-8"
TRANSIENT_ERRORS: Final = frozenset(
    {"Throttling", "ThrottlingException", "TooManyRequests", "TooManyRequestsException", "ServiceUnavailable"}
)


def _mailbox(mailbox: str) -> str:
    """``Name <a@b>`` with a non-ASCII name as an RFC 2047 encoded-word (SES requires it)."""
    name, address = mailbox_parts(mailbox)
    return formataddr((name, address), charset="utf-8") if name else address


def send_email_body(delivery: EmailDelivery, configuration_set: str | None) -> dict[str, object]:
    """The ``SendEmail`` request body for one delivery."""
    email = delivery.email
    content: dict[str, object] = {}
    if email.text:
        content["Text"] = {"Data": email.text, "Charset": CHARSET}
    if email.html:
        content["Html"] = {"Data": email.html, "Charset": CHARSET}
    simple = {
        "Subject": {"Data": email.subject, "Charset": CHARSET},
        "Body": content,
        "Headers": [{"Name": name, "Value": value} for name, value in unsubscribe_headers(delivery)],
    }
    body: dict[str, object] = {
        "FromEmailAddress": _mailbox(email.from_),
        "Destination": {"ToAddresses": [_mailbox(delivery.to)]},
        "Content": {"Simple": simple},
    }
    if email.reply_to is not None:
        body["ReplyToAddresses"] = [_mailbox(email.reply_to)]
    if configuration_set is not None:
        body["ConfigurationSetName"] = configuration_set
    return body


class SesSender:
    """Sends ``EmailDelivery`` messages through one SES account and region; kept across sends."""

    def __init__(
        self,
        config: SesConfig,
        *,
        policy: OutboundPolicy,
        tls_context: ssl.SSLContext | None = None,
        clock: Callable[[], float] = time.time,
    ) -> None:
        if config.secret_access_key is None:
            raise ValueError("an SES provider needs its secret access key")
        self._credentials = Credentials(config.access_key_id, config.secret_access_key.get_secret_value())
        self._config = config
        self._clock = clock
        self._url = config.base_url + SEND_EMAIL_PATH
        self._host = httpx.URL(self._url).netloc.decode("ascii")  # what the client sends as Host
        self._http = VendorClient(
            config.base_url,
            policy=policy,
            timeout=config.timeout,
            user_agent=USER_AGENT,
            tls_context=tls_context,
            clock=clock,
        )

    async def aclose(self) -> None:
        await self._http.aclose()

    def signed_request(self, delivery: EmailDelivery) -> tuple[dict[str, str], bytes]:
        """The signed headers (``Host`` included) and the body bytes they sign."""
        payload = orjson.dumps(send_email_body(delivery, self._config.configuration_set))
        headers = sign(
            self._credentials,
            "POST",
            self._url,
            {"Host": self._host, "Content-Type": "application/json"},
            payload,
            region=self._config.region,
            service=SERVICE,
            now=datetime.fromtimestamp(self._clock(), UTC),
        )
        return headers, payload

    async def send(self, delivery: EmailDelivery) -> Sent | Transient | Permanent:
        if not (delivery.email.text or delivery.email.html):
            return Permanent(reason="the rendered email has neither text nor HTML")
        headers, payload = self.signed_request(delivery)
        try:
            response = await self._http.exchange("POST", SEND_EMAIL_PATH, headers=headers, content=payload)
        except Exception as exc:
            outcome = outcome_of_error(exc, self._http.timeout)
            if outcome is None:
                raise
            return outcome
        return classify(response, now=self._clock())


def error_type(response: VendorResponse, body: object) -> str:
    """The AWS error code: ``X-Amzn-ErrorType`` (before ``:``), or the body's ``__type`` (after ``#``) or ``code``."""
    header = str(response.headers.get("x-amzn-errortype", ""))
    if header:
        return header.split(":", 1)[0].strip()
    if isinstance(body, dict):
        for key in ("__type", "code", "Code"):
            value = body.get(key)
            if isinstance(value, str) and value:
                return str(value.rsplit("#", 1)[-1])
    return ""


def classify(response: VendorResponse, *, now: float) -> Sent | Transient | Permanent:
    """SES's answer: 200 with a ``MessageId`` sent; errors by type, then by status."""
    try:
        body = orjson.loads(response.body)
    except orjson.JSONDecodeError:
        body = None
    if 200 <= response.status < 300:
        message_id = body.get("MessageId") if isinstance(body, dict) else None
        if isinstance(message_id, str) and message_id:
            return Sent(detail=f"HTTP {response.status}", provider_message_id=message_id)
        return Permanent(reason=f"HTTP {response.status} without a MessageId: {response.snippet()}")
    kind = error_type(response, body)
    message = ""
    if isinstance(body, dict):
        message = str(body.get("message") or body.get("Message") or "")
    reason = f"SES {kind}: {message}".strip() if kind else message or response.snippet()
    if kind in TRANSIENT_ERRORS:
        return Transient(reason=f"HTTP {response.status}: {reason}", retry_after=response.retry_after(now))
    return http_status_outcome(response, reason, now=now)
