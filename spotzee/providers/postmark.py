"""Email through Postmark's email API: one request per attempt.

``POST {base_url}/email``, ``X-Postmark-Server-Token: <server_token>``, JSON::

    {"From": "Shop <hello@shop.example>", "To": "ada@example.com", "ReplyTo": "...",
     "Subject": "...", "HtmlBody": "...", "TextBody": "...",
     "Headers": [{"Name": "List-Unsubscribe", "Value": "<https://...>"},
                 {"Name": "List-Unsubscribe-Post", "Value": "List-Unsubscribe=One-Click"}],
     "MessageStream": "outbound", "Metadata": {"send_id": "..."}}

The headers are those the SMTP path sets (``spotzee.providers.email_headers``); ``Metadata``
carries the send_id into Postmark's webhooks (Postmark takes values of up to 80 characters, so a
longer send_id is left out). ``MessageStream`` is the config's (``outbound`` transactional,
``broadcast`` for marketing).

Postmark answers ``200`` with ``{"To", "SubmittedAt", "MessageID", "ErrorCode": 0, "Message":
"OK"}``; a refusal carries Postmark's ``ErrorCode`` (HTTP 422 mostly, 401 for a bad token), and
that table decides: 429 (rate limit exceeded) and 100 (maintenance) transient, every other code
(10 bad token, 300 invalid email request, 400/401 sender signature not found / not confirmed,
405 not allowed to send, 406 inactive recipient, 412 account pending, ...) permanent. HTTP 429
and 5xx without a code are transient, ``Retry-After`` honoured.
"""

from __future__ import annotations

import ssl
import time
from collections.abc import Callable
from typing import Final

import orjson

from spotzee.providers.adapter import EmailDelivery, Permanent, Sent, Transient
from spotzee.providers.email_headers import unsubscribe_headers
from spotzee.providers.safety import OutboundPolicy
from spotzee.providers.vendor_http import VendorClient, VendorResponse, http_status_outcome, outcome_of_error
from spotzee.schemas.provider_models import PostmarkConfig

USER_AGENT: Final = "Spotzee-Postmark/1"
EMAIL_PATH: Final = "/email"
MAX_METADATA_VALUE: Final = 80
TRANSIENT_CODES: Final = frozenset({100, 429})  # maintenance, rate limit exceeded


def email_body(delivery: EmailDelivery, message_stream: str) -> dict[str, object]:
    """The ``/email`` request body for one delivery."""
    email = delivery.email
    body: dict[str, object] = {"From": email.from_, "To": delivery.to, "Subject": email.subject}
    if email.reply_to is not None:
        body["ReplyTo"] = email.reply_to
    if email.html:
        body["HtmlBody"] = email.html
    if email.text:
        body["TextBody"] = email.text
    body["Headers"] = [{"Name": name, "Value": value} for name, value in unsubscribe_headers(delivery)]
    body["MessageStream"] = message_stream
    if len(delivery.send_id) <= MAX_METADATA_VALUE:
        body["Metadata"] = {"send_id": delivery.send_id}
    return body


class PostmarkSender:
    """Sends ``EmailDelivery`` messages through one Postmark server; kept across sends."""

    def __init__(
        self,
        config: PostmarkConfig,
        *,
        policy: OutboundPolicy,
        tls_context: ssl.SSLContext | None = None,
        clock: Callable[[], float] = time.time,
    ) -> None:
        if config.server_token is None:
            raise ValueError("a Postmark provider needs its server token")
        self._token = config.server_token.get_secret_value()
        self._stream = config.message_stream
        self._clock = clock
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

    async def send(self, delivery: EmailDelivery) -> Sent | Transient | Permanent:
        body = email_body(delivery, self._stream)
        if "HtmlBody" not in body and "TextBody" not in body:
            return Permanent(reason="the rendered email has neither text nor HTML")
        try:
            response = await self._http.exchange(
                "POST", EMAIL_PATH, json=body, headers={"X-Postmark-Server-Token": self._token}
            )
        except Exception as exc:
            outcome = outcome_of_error(exc, self._http.timeout)
            if outcome is None:
                raise
            return outcome
        return classify(response, now=self._clock())


def classify(response: VendorResponse, *, now: float) -> Sent | Transient | Permanent:
    """Postmark's answer: ``ErrorCode`` 0 with a ``MessageID`` sent; else its code decides."""
    try:
        body = orjson.loads(response.body)
    except orjson.JSONDecodeError:
        body = None
    code = body.get("ErrorCode") if isinstance(body, dict) else None
    message = str(body.get("Message", "")) if isinstance(body, dict) else response.snippet()
    if 200 <= response.status < 300:
        message_id = body.get("MessageID") if isinstance(body, dict) else None
        if code == 0 and isinstance(message_id, str) and message_id:
            return Sent(detail=f"HTTP {response.status} {message}".strip(), provider_message_id=message_id)
        if not isinstance(code, int) or code == 0:
            return Permanent(reason=f"HTTP {response.status} without a MessageID: {response.snippet()}")
    if isinstance(code, int) and code != 0:
        reason = f"HTTP {response.status}: Postmark error {code}: {message}".strip()
        if code in TRANSIENT_CODES or response.status == 429 or response.status >= 500:
            return Transient(reason=reason, retry_after=response.retry_after(now))
        return Permanent(reason=reason)
    return http_status_outcome(response, message, now=now)
