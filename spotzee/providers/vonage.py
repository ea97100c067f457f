"""SMS through the Vonage SMS API: one ``/sms/json`` request per attempt.

``POST {base_url}/sms/json``, form-encoded, credentials in the body: ``api_key``, ``api_secret``,
``from`` (a number without ``+``, or an alphanumeric sender id), ``to`` (E.164 without ``+``),
``text``, ``type=unicode`` when the text needs UCS-2 (``spotzee.domain.sms_segments``: Vonage
would otherwise replace what GSM-7 cannot carry), and ``client-ref`` = the send_id, which
Vonage returns in its delivery receipts (at most 100 characters, so a longer send_id is not sent).

Vonage answers ``200`` with ``{"message-count", "messages": [{"status", "message-id", ...}]}``, one
entry per part of a long text; the send is accepted only when every part's ``status`` is ``"0"``.
Status codes (Vonage's SMS API error table): ``1`` throttled and ``10`` too many binds are
"back off and retry", and ``5`` is an internal error of the platform: transient; every other code
(missing or invalid parameters, invalid credentials, barred number, no credit, ...) is permanent,
since the same request would fail again; so is a text only partly accepted (a retry would send
the accepted parts twice). HTTP 429 and 5xx are transient (``Retry-After``
honoured), other 4xx permanent. The provider message id is the first part's ``message-id``.
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
from spotzee.schemas.provider_models import VonageConfig

USER_AGENT: Final = "Spotzee-Vonage/1"
SMS_PATH: Final = "/sms/json"
MAX_CLIENT_REF: Final = 100
# Vonage's "back off and retry" codes, and its platform's internal error.
TRANSIENT_CODES: Final = frozenset({"1", "5", "10"})


class VonageSender:
    """Sends ``SmsDelivery`` messages through one Vonage account; kept across sends (``SmsSender``)."""

    def __init__(
        self,
        config: VonageConfig,
        *,
        policy: OutboundPolicy,
        tls_context: ssl.SSLContext | None = None,
        clock: Callable[[], float] = time.time,
    ) -> None:
        if config.api_secret is None:
            raise ValueError("a Vonage provider needs its API secret")
        self._config = config
        self._secret = config.api_secret.get_secret_value()
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

    def form(self, delivery: SmsDelivery) -> dict[str, str]:
        config = self._config
        form = {
            "api_key": config.api_key,
            "api_secret": self._secret,
            "from": config.from_.removeprefix("+"),
            "to": delivery.to.removeprefix("+"),
            "text": delivery.message.body,
        }
        if delivery.message.encoding == "UCS-2":
            form["type"] = "unicode"
        if len(delivery.send_id) <= MAX_CLIENT_REF:
            form["client-ref"] = delivery.send_id
        return form

    async def send(self, delivery: SmsDelivery) -> Sent | Transient | Permanent:
        try:
            response = await self._http.exchange("POST", SMS_PATH, data=self.form(delivery))
        except Exception as exc:
            outcome = outcome_of_error(exc, self._http.timeout)
            if outcome is None:
                raise
            return outcome
        return classify(response, now=self._clock())


def classify(response: VendorResponse, *, now: float) -> Sent | Transient | Permanent:
    """Vonage's answer: every part's ``status`` ``"0"`` sent; else by its status code, then HTTP status."""
    if not 200 <= response.status < 300:
        return http_status_outcome(response, response.snippet(), now=now)
    try:
        body = orjson.loads(response.body)
    except orjson.JSONDecodeError:
        body = None
    messages = body.get("messages") if isinstance(body, dict) else None
    if not isinstance(messages, list) or not messages or not all(isinstance(m, dict) for m in messages):
        # Accepted or not, we cannot tell: not sent again (a duplicate text is worse than none).
        return Permanent(reason=f"HTTP {response.status} without message statuses: {response.snippet()}")
    failed = next((m for m in messages if str(m.get("status")) != "0"), None)
    if failed is not None:
        code = str(failed.get("status"))
        reason = f"Vonage status {code}: {failed.get('error-text', '')}".strip()
        if any(str(m.get("status")) == "0" for m in messages):
            # Some parts went: a retry would send them twice.
            return Permanent(reason=f"partly accepted ({len(messages)} parts): {reason}")
        if code in TRANSIENT_CODES:
            return Transient(reason=reason, retry_after=response.retry_after(now))
        return Permanent(reason=reason)
    message_id = messages[0].get("message-id")
    return Sent(
        detail=f"HTTP {response.status}, {len(messages)} part(s)",
        provider_message_id=str(message_id) if message_id is not None else None,
    )
