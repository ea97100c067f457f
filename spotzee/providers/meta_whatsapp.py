"""WhatsApp through Meta's Cloud API: one ``messages`` request per attempt.

``POST {base_url}/{api_version}/{phone_number_id}/messages``, ``Authorization: Bearer <access_token>``,
a JSON body::

    {"messaging_product": "whatsapp", "recipient_type": "individual", "to": "447700900123",
     "type": "template", "template": {"name", "language": {"code"}, "components": [...]}}

or ``"type": "text", "text": {"body": "..."}`` for a session message. ``to`` is the contact's
E.164 number without its ``+``.

Meta answers ``200`` with ``{"messaging_product", "contacts": [{"input", "wa_id"}], "messages":
[{"id": "wamid...."}]}``: the message id is the ``provider_message_id`` receipts are matched by. A
2xx without one is permanent (the message may exist: it is not sent twice). Errors are Graph API
errors, ``{"error": {"message", "type", "code", "error_subcode"?, "error_data"?, "fbtrace_id"}}``,
mapped by Meta's documented codes first (``TRANSIENT_CODES``: throttling, spam and pair rate
limits, temporary API and service errors; ``PERMANENT_CODES`` and every other code of a 4xx: the
24-hour window closed (131047), an undeliverable message (131026), template problems (132000-
132016), an invalid parameter (100), an expired token (190), ...), then by HTTP status (429 and
5xx transient, ``Retry-After`` honoured).
"""

from __future__ import annotations

import ssl
import time
from collections.abc import Callable
from typing import Any, Final

import orjson

from spotzee.providers.adapter import Permanent, Sent, Transient
from spotzee.providers.safety import OutboundPolicy
from spotzee.providers.vendor_http import VendorClient, VendorResponse, http_status_outcome, outcome_of_error
from spotzee.providers.whatsapp import WhatsAppDelivery
from spotzee.schemas.provider_models import MetaWhatsAppConfig
from spotzee.schemas.template_models import RenderedWhatsAppTemplate

USER_AGENT: Final = "Spotzee-WhatsApp/1"
# Retrying later can succeed: 1 (unknown API error), 2 (temporary service error), 4 (application
# request limit), 80007 (WhatsApp Business Account rate limit), 130429 (throughput rate limit),
# 131000 (something went wrong), 131016 (service unavailable), 131048 (spam rate limit), 131056
# (business/consumer pair rate limit), 131057 (account in maintenance mode), 133004 (server
# temporarily unavailable).
TRANSIENT_CODES: Final = frozenset({1, 2, 4, 80007, 130429, 131000, 131016, 131048, 131056, 131057, 133004})
# Why a message can never be sent as it is, in words a marketer can act on.
PERMANENT_CODES: Final[dict[int, str]] = {
    0: "authentication failed",
    3: "the app lacks the capability for this call",
    10: "permission denied",
    100: "invalid parameter",
    190: "access token expired or invalid",
    368: "the account is blocked for a policy violation",
    131008: "a required parameter is missing",
    131009: "a parameter value is invalid",
    131021: "the recipient is the sender",
    131026: "message undeliverable (not a WhatsApp user, old app, or the terms not accepted)",
    131031: "the business account is locked",
    131042: "a payment problem on the business account",
    131047: (
        "outside the 24-hour customer-service window: a session text can only be sent within 24 hours of "
        "the contact's last message; send an approved template instead"
    ),
    131049: "Meta chose not to deliver this message (ecosystem engagement limit)",
    131051: "unsupported message type",
    133010: "the phone number is not registered on the Cloud API",
}
TEMPLATE_CODES: Final = range(132000, 132017)  # 132000-132016: the template or its parameters


def messages_path(api_version: str, phone_number_id: str) -> str:
    return f"/{api_version}/{phone_number_id}/messages"


class MetaWhatsAppSender:
    """Sends ``WhatsAppDelivery`` messages from one business phone number; kept across sends."""

    def __init__(
        self,
        config: MetaWhatsAppConfig,
        *,
        policy: OutboundPolicy,
        tls_context: ssl.SSLContext | None = None,
        clock: Callable[[], float] = time.time,
    ) -> None:
        if config.access_token is None:
            raise ValueError("a Meta WhatsApp provider needs its access token")
        self._config = config
        self._headers = {"Authorization": f"Bearer {config.access_token.get_secret_value()}"}
        self._path = messages_path(config.api_version, config.phone_number_id)
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

    def payload(self, delivery: WhatsAppDelivery) -> dict[str, Any]:
        """The request's JSON body."""
        body: dict[str, Any] = {
            "messaging_product": "whatsapp",
            "recipient_type": "individual",
            "to": delivery.to.removeprefix("+"),
        }
        message = delivery.message
        if isinstance(message, RenderedWhatsAppTemplate):
            template: dict[str, Any] = {"name": message.template_name, "language": {"code": message.language}}
            if message.components:
                template["components"] = message.components
            body.update(type="template", template=template)
        else:
            body.update(type="text", text={"body": message.text})
        return body

    async def send(self, delivery: WhatsAppDelivery) -> Sent | Transient | Permanent:
        try:
            response = await self._http.exchange("POST", self._path, headers=self._headers, json=self.payload(delivery))
        except Exception as exc:
            outcome = outcome_of_error(exc, self._http.timeout)
            if outcome is None:
                raise
            return outcome
        return classify(response, now=self._clock())


def classify(response: VendorResponse, *, now: float) -> Sent | Transient | Permanent:
    """Meta's answer: 2xx with a message id sent; a Graph API error by its code, else by status."""
    body = _json(response.body)
    if 200 <= response.status < 300:
        message_id = _message_id(body)
        if message_id is None:
            return Permanent(reason=f"HTTP {response.status} without a message id: {response.snippet()}")
        return Sent(detail=f"HTTP {response.status}", provider_message_id=message_id)
    error = body.get("error") if isinstance(body, dict) else None
    if not isinstance(error, dict):
        return http_status_outcome(response, response.snippet(), now=now)
    code = error.get("code")
    subcode = error.get("error_subcode")
    message = str(error.get("message", "")).strip()
    where = f"Meta error {code}" + (f"/{subcode}" if isinstance(subcode, int) else "")
    if isinstance(code, int) and code in TRANSIENT_CODES:
        return Transient(
            reason=f"HTTP {response.status}: {where}: {message}".strip(), retry_after=response.retry_after(now)
        )
    if isinstance(code, int) and response.status < 500:
        meaning = PERMANENT_CODES.get(code) or ("template problem" if code in TEMPLATE_CODES else None)
        summary = f"{meaning} ({where}: {message})" if meaning else f"{where}: {message}"
        if code in PERMANENT_CODES or code in TEMPLATE_CODES:
            return Permanent(reason=f"HTTP {response.status}: {summary}")
        return http_status_outcome(response, summary, now=now)
    return http_status_outcome(response, f"{where}: {message}", now=now)


def _message_id(body: object) -> str | None:
    if not isinstance(body, dict):
        return None
    messages = body.get("messages")
    if not isinstance(messages, list) or not messages or not isinstance(messages[0], dict):
        return None
    message_id = messages[0].get("id")
    return message_id if isinstance(message_id, str) and message_id else None


def _json(raw: bytes) -> object:
    try:
        return orjson.loads(raw)
    except orjson.JSONDecodeError:
        return None
