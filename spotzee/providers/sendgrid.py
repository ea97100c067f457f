"""Email through SendGrid's v3 Mail Send API: one request per attempt.

``POST {base_url}/v3/mail/send``, ``Authorization: Bearer <api_key>``, JSON::

    {"personalizations": [{"to": [{"email": "ada@example.com", "name": "Ada"}]}],
     "from": {"email": "hello@shop.example", "name": "Shop"}, "reply_to": {...},
     "subject": "...", "content": [{"type": "text/plain", ...}, {"type": "text/html", ...}],
     "headers": {"List-Unsubscribe": "<https://...>", "List-Unsubscribe-Post": "List-Unsubscribe=One-Click"},
     "custom_args": {"send_id": "..."}}

``content`` lists text/plain first (SendGrid requires that order), then text/html; the headers
are those the SMTP path sets (``spotzee.providers.email_headers``); ``custom_args`` carry the
send_id into SendGrid's event webhook. SendGrid answers ``202 Accepted`` with an empty body and
the message id in the ``X-Message-Id`` header. Errors are ``{"errors": [{"message", "field",
"help"}]}``: 429 (rate limited; ``Retry-After`` or else ``X-RateLimit-Reset``, an epoch second)
and 5xx transient, every other 4xx permanent (bad key, unverified sender, invalid payload).
"""

from __future__ import annotations

import ssl
import time
from collections.abc import Callable
from typing import Final

import orjson

from spotzee.providers.adapter import EmailDelivery, Permanent, Sent, Transient
from spotzee.providers.email_headers import mailbox_parts, unsubscribe_headers
from spotzee.providers.safety import OutboundPolicy
from spotzee.providers.vendor_http import VendorClient, VendorResponse, http_status_outcome, outcome_of_error
from spotzee.schemas.provider_models import SendgridConfig

USER_AGENT: Final = "Spotzee-SendGrid/1"
MAIL_SEND_PATH: Final = "/v3/mail/send"


def _person(mailbox: str) -> dict[str, str]:
    name, address = mailbox_parts(mailbox)
    return {"email": address, "name": name} if name else {"email": address}


def mail_send_body(delivery: EmailDelivery) -> dict[str, object]:
    """The Mail Send request body for one delivery."""
    email = delivery.email
    content = [{"type": "text/plain", "value": email.text}] if email.text else []
    content += [{"type": "text/html", "value": email.html}] if email.html else []
    body: dict[str, object] = {
        "personalizations": [{"to": [_person(delivery.to)]}],
        "from": _person(email.from_),
        "subject": email.subject,
        "content": content,
        "headers": dict(unsubscribe_headers(delivery)),
        "custom_args": {"send_id": delivery.send_id},
    }
    if email.reply_to is not None:
        body["reply_to"] = _person(email.reply_to)
    return body


class SendgridSender:
    """Sends ``EmailDelivery`` messages through one SendGrid account; kept across sends."""

    def __init__(
        self,
        config: SendgridConfig,
        *,
        policy: OutboundPolicy,
        tls_context: ssl.SSLContext | None = None,
        clock: Callable[[], float] = time.time,
    ) -> None:
        if config.api_key is None:
            raise ValueError("a SendGrid provider needs its API key")
        self._authorization = f"Bearer {config.api_key.get_secret_value()}"
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
        body = mail_send_body(delivery)
        if not body["content"]:
            return Permanent(reason="the rendered email has neither text nor HTML")
        try:
            response = await self._http.exchange(
                "POST", MAIL_SEND_PATH, json=body, headers={"Authorization": self._authorization}
            )
        except Exception as exc:
            outcome = outcome_of_error(exc, self._http.timeout)
            if outcome is None:
                raise
            return outcome
        return classify(response, now=self._clock())


def classify(response: VendorResponse, *, now: float) -> Sent | Transient | Permanent:
    """SendGrid's answer: 202 accepted (``X-Message-Id``); errors by status with SendGrid's messages."""
    message_id = response.headers.get("x-message-id")
    if response.status == 202 or (200 <= response.status < 300 and message_id):
        return Sent(detail=f"HTTP {response.status}", provider_message_id=message_id or None)
    if 200 <= response.status < 300:
        return Permanent(reason=f"HTTP {response.status} without a message id: {response.snippet()}")
    outcome = http_status_outcome(response, _errors(response), now=now)
    if isinstance(outcome, Transient) and outcome.retry_after is None:
        reset = response.headers.get("x-ratelimit-reset", "")
        if reset.isdigit():
            return Transient(reason=outcome.reason, retry_after=max(0.0, int(reset) - now))
    return outcome


def _errors(response: VendorResponse) -> str:
    try:
        body = orjson.loads(response.body)
    except orjson.JSONDecodeError:
        return response.snippet()
    errors = body.get("errors") if isinstance(body, dict) else None
    if not isinstance(errors, list) or not errors:
        return response.snippet()
    parts = []
    for error in errors[:5]:
        if isinstance(error, dict):
            field = f" ({error['field']})" if error.get("field") else ""
            parts.append(f"{error.get('message', '')}{field}")
    return "SendGrid: " + "; ".join(parts)
