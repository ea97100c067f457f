"""SMS through Twilio Programmable Messaging: one ``Messages.json`` request per attempt.

``POST {base_url}/2010-04-01/Accounts/{AccountSid}/Messages.json``, HTTP Basic
``AccountSid:AuthToken``, form-encoded (``application/x-www-form-urlencoded``):

- ``To``: the contact's phone (E.164; ``whatsapp:``-prefixed when the sender is a WhatsApp one);
- ``From`` (the config's number) or ``MessagingServiceSid`` (a Messaging Service picks the sender);
- ``Body``: the rendered text;
- ``StatusCallback``: ``{public_base_url}/hooks/{provider_id}``, where Twilio posts the message's
  status changes (``delivered``, ``undelivered``, ...).

Twilio answers ``201 Created`` with the new Message resource as JSON; its ``sid`` (``SM...``, or
``MM...``) is the provider message id receipts are matched by. Errors come as JSON
``{"code", "message", "more_info", "status"}``: 429 (too many requests) and 5xx transient, with
``Retry-After`` when sent; every other 4xx permanent (a bad number, 21610 an unsubscribed
recipient, 20003 bad credentials: retrying cannot fix them). A 2xx without a ``sid`` is permanent:
the message may exist, so it is not sent again.

On channel ``whatsapp`` a session text (``WhatsAppDelivery`` with a ``RenderedWhatsAppText``) goes
as ``Body`` to ``whatsapp:+<number>``, which is what Twilio's WhatsApp API takes inside the 24-hour
window. An approved WhatsApp template is sent through Twilio only as a Content Template
(``ContentSid`` ``HX...`` plus ``ContentVariables``), which a Meta ``template_name``, its language
and components do not name: such a send is refused (permanent, no request made) rather than sent
as something else.
"""

from __future__ import annotations

import ssl
import time
from collections.abc import Callable
from typing import Final

import orjson

from spotzee.providers.adapter import Permanent, Sent, Transient
from spotzee.providers.safety import OutboundPolicy
from spotzee.providers.sms import SmsDelivery
from spotzee.providers.vendor_http import VendorClient, VendorResponse, http_status_outcome, outcome_of_error
from spotzee.providers.whatsapp import WhatsAppDelivery
from spotzee.schemas.provider_models import WHATSAPP_PREFIX, TwilioConfig
from spotzee.schemas.template_models import RenderedWhatsAppTemplate, RenderedWhatsAppText

USER_AGENT: Final = "Spotzee-Twilio/1"
API_VERSION: Final = "2010-04-01"
TEMPLATE_REFUSED: Final = (
    "Twilio sends WhatsApp templates only as Content Templates (ContentSid + ContentVariables), which a "
    "Meta template_name can't be mapped to: use a meta_whatsapp provider for template messages, or a "
    'session text ({"text"}) through Twilio'
)


def messages_path(account_sid: str) -> str:
    return f"/{API_VERSION}/Accounts/{account_sid}/Messages.json"


class TwilioSender:
    """Sends ``SmsDelivery`` messages (and WhatsApp session texts) through one Twilio account;
    kept across sends (``SmsSender``, ``WhatsAppSender``)."""

    def __init__(
        self,
        config: TwilioConfig,
        *,
        policy: OutboundPolicy,
        status_callback: str | None = None,
        channel: str = "sms",
        tls_context: ssl.SSLContext | None = None,
        clock: Callable[[], float] = time.time,
    ) -> None:
        if config.auth_token is None:
            raise ValueError("a Twilio provider needs its auth token")
        self._config = config
        self._auth = (config.account_sid, config.auth_token.get_secret_value())
        self._status_callback = status_callback
        # WhatsApp addresses carry a ``whatsapp:`` prefix (a WhatsApp sender, or the provider's
        # channel when a Messaging Service picks the sender).
        self._whatsapp = channel == "whatsapp" or (config.from_ or "").startswith(WHATSAPP_PREFIX)
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

    def form(self, delivery: SmsDelivery | WhatsAppDelivery) -> dict[str, str]:
        """The request's form fields (a WhatsApp delivery: its session text as ``Body``)."""
        config = self._config
        to = f"{WHATSAPP_PREFIX}{delivery.to}" if self._whatsapp else delivery.to
        message = delivery.message
        if isinstance(message, RenderedWhatsAppTemplate):
            raise ValueError(TEMPLATE_REFUSED)
        body = message.text if isinstance(message, RenderedWhatsAppText) else message.body
        form = {"To": to, "Body": body}
        if config.messaging_service_sid is not None:
            form["MessagingServiceSid"] = config.messaging_service_sid
        elif config.from_ is not None:
            form["From"] = config.from_
        if self._status_callback is not None:
            form["StatusCallback"] = self._status_callback
        return form

    async def send(self, delivery: SmsDelivery | WhatsAppDelivery) -> Sent | Transient | Permanent:
        if isinstance(delivery.message, RenderedWhatsAppTemplate):
            return Permanent(reason=TEMPLATE_REFUSED)
        if isinstance(delivery, WhatsAppDelivery) and not self._whatsapp:
            return Permanent(reason="a WhatsApp message needs a Twilio provider on channel whatsapp")
        try:
            response = await self._http.exchange(
                "POST", messages_path(self._config.account_sid), data=self.form(delivery), auth=self._auth
            )
        except Exception as exc:
            outcome = outcome_of_error(exc, self._http.timeout)
            if outcome is None:
                raise
            return outcome
        return classify(response, now=self._clock())


def classify(response: VendorResponse, *, now: float) -> Sent | Transient | Permanent:
    """Twilio's answer: 2xx with a ``sid`` sent; errors by status, with Twilio's code and message."""
    body = _json(response.body)
    if 200 <= response.status < 300:
        sid = body.get("sid") if isinstance(body, dict) else None
        if not isinstance(sid, str) or not sid:
            return Permanent(reason=f"HTTP {response.status} without a message sid: {response.snippet()}")
        status = body.get("status") if isinstance(body, dict) else None
        return Sent(detail=f"HTTP {response.status} {status or ''}".strip(), provider_message_id=sid)
    if isinstance(body, dict) and "code" in body:
        reason = f"Twilio error {body.get('code')}: {body.get('message', '')}".strip()
    else:
        reason = response.snippet()
    return http_status_outcome(response, reason, now=now)


def _json(raw: bytes) -> object:
    try:
        return orjson.loads(raw)
    except orjson.JSONDecodeError:
        return None
