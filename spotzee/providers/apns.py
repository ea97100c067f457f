"""Push through the Apple Push Notification service: HTTP/2 over TLS, token-based authentication.

Provider token: a JWT signed ES256 with the ``.p8`` key (header ``kid`` the key id, claims ``iss``
the team id and ``iat``), kept by the sender (one per provider version) and replaced after
``TOKEN_REFRESH`` seconds (Apple refuses one older than an hour, and one refreshed more often than
every 20 minutes), or once when Apple answers 403 ``ExpiredProviderToken``.

Send: ``POST {base_url}/3/device/{token}`` over HTTP/2 with ``authorization: bearer <jwt>``,
``apns-topic`` (the bundle id), ``apns-push-type: alert``, ``apns-priority: 10`` and
``apns-expiration`` (now + ``ttl``; 0 for a ttl of 0: try once; absent without a ttl), the
payload ``{"aps": {"alert": {"title", "body"}, "badge"?, "sound"?, "mutable-content": 1 (with an
image, for a notification service extension to fetch it)}, "image"?, "deep_link"?, ...data}``.
``200`` with ``apns-id``: sent, the id is the provider message id. Errors ``{"reason"}``: 410
``Unregistered`` and 400 ``BadDeviceToken`` permanent, the token removed from the contact
(``Unregistered``); 429 ``TooManyRequests``, 500, 503 transient (``Retry-After`` honoured); every
other 4xx permanent. Requests go through ``VendorClient`` (``http2=True``): the destination
checked by the outbound policy at every request.

Only devices whose type is not ``android`` are sent through APNs (an Android token at Apple would
be answered ``BadDeviceToken`` and removed).
"""

from __future__ import annotations

import asyncio
import ssl
import time
from collections.abc import Callable
from typing import Any, Final

import jwt
import orjson
from cryptography.hazmat.primitives.asymmetric.ec import EllipticCurvePrivateKey
from cryptography.hazmat.primitives.serialization import load_pem_private_key

from spotzee.providers.adapter import Permanent, Sent, Transient
from spotzee.providers.push import PushDelivery, Unregistered
from spotzee.providers.safety import OutboundPolicy
from spotzee.providers.vendor_http import VendorClient, VendorResponse, http_status_outcome, outcome_of_error
from spotzee.schemas.provider_models import ApnsConfig

USER_AGENT: Final = "Spotzee-APNs/1"
TOKEN_REFRESH: Final = 50 * 60.0  # seconds a provider token is used (Apple: at most 60 minutes)
GONE_REASONS: Final = frozenset({"Unregistered", "BadDeviceToken"})
TRANSIENT_STATUSES: Final = frozenset({429, 500, 503})


def apns_payload(delivery: PushDelivery) -> dict[str, Any]:
    push = delivery.message
    aps: dict[str, Any] = {"alert": {"title": push.title, "body": push.body}}
    if push.badge is not None:
        aps["badge"] = push.badge
    if push.sound is not None:
        aps["sound"] = push.sound
    payload: dict[str, Any] = {**push.data}
    if push.image is not None:
        aps["mutable-content"] = 1
        payload.setdefault("image", push.image)
    if push.deep_link is not None:
        payload.setdefault("deep_link", push.deep_link)
    payload["aps"] = aps
    return payload


class ApnsSender:
    """Sends ``PushDelivery`` messages to one app (topic) through APNs; kept across sends."""

    def __init__(
        self,
        config: ApnsConfig,
        *,
        policy: OutboundPolicy,
        tls_context: ssl.SSLContext | None = None,
        clock: Callable[[], float] = time.time,
    ) -> None:
        if config.private_key is None:
            raise ValueError("an APNs provider needs its .p8 key")
        self._config = config
        self._clock = clock
        self._key: EllipticCurvePrivateKey | None = None
        self._key_problem: str | None = None
        try:
            key = load_pem_private_key(config.private_key.get_secret_value().encode(), password=None)
        except (ValueError, TypeError) as exc:
            self._key_problem = f"the .p8 key can't be read: {type(exc).__name__}"
        else:
            if isinstance(key, EllipticCurvePrivateKey):
                self._key = key
            else:
                self._key_problem = "the .p8 key is not an EC (P-256) key"
        self._token: tuple[str, float] | None = None  # provider token, when it was made
        self._lock = asyncio.Lock()
        self._http = VendorClient(
            config.base_url,
            policy=policy,
            timeout=config.timeout,
            user_agent=USER_AGENT,
            tls_context=tls_context,
            clock=clock,
            http2=True,
        )

    async def aclose(self) -> None:
        await self._http.aclose()

    async def provider_token(self, *, stale: str | None = None) -> str:
        async with self._lock:
            now = self._clock()
            if self._token is not None and now - self._token[1] < TOKEN_REFRESH and self._token[0] != stale:
                return self._token[0]
            assert self._key is not None
            token = jwt.encode(
                {"iss": self._config.team_id, "iat": int(now)},
                self._key,
                algorithm="ES256",
                headers={"kid": self._config.key_id},
            )
            self._token = (token, now)
            return token

    async def send(self, delivery: PushDelivery) -> Sent | Transient | Permanent:
        if self._key is None:
            return Permanent(reason=self._key_problem or "no private key")
        if delivery.platform == "android":
            return Permanent(reason="an Android device token can't be sent through APNs")
        try:
            token = await self.provider_token()
            response = await self._post(delivery, token)
            if response.status == 403 and _reason(response) == "ExpiredProviderToken":
                response = await self._post(delivery, await self.provider_token(stale=token))
        except Exception as exc:
            outcome = outcome_of_error(exc, self._http.timeout)
            if outcome is None:
                raise
            return outcome
        return classify(response, now=self._clock())

    async def _post(self, delivery: PushDelivery, token: str) -> VendorResponse:
        headers = {
            "authorization": f"bearer {token}",
            "apns-topic": self._config.topic,
            "apns-push-type": "alert",
            "apns-priority": "10",
        }
        ttl = delivery.message.ttl
        if ttl is not None:
            headers["apns-expiration"] = "0" if ttl == 0 else str(int(self._clock()) + ttl)
        return await self._http.exchange(
            "POST", f"/3/device/{delivery.token}", headers=headers, content=orjson.dumps(apns_payload(delivery))
        )


def classify(response: VendorResponse, *, now: float) -> Sent | Transient | Permanent:
    if response.status == 200:
        apns_id = response.headers.get("apns-id")
        return Sent(detail="HTTP 200", provider_message_id=apns_id or None)
    reason = _reason(response) or response.snippet()
    if reason in GONE_REASONS:
        return Unregistered(reason=f"APNs {response.status} {reason}")
    if response.status in TRANSIENT_STATUSES:
        return Transient(reason=f"APNs {response.status} {reason}", retry_after=response.retry_after(now))
    return http_status_outcome(response, f"APNs {reason}", now=now)


def _reason(response: VendorResponse) -> str | None:
    try:
        body = orjson.loads(response.body)
    except orjson.JSONDecodeError:
        return None
    reason = body.get("reason") if isinstance(body, dict) else None
    return str(reason) if reason else None
