"""Push through Firebase Cloud Messaging's HTTP v1 API, authorised by a service account.

Access token: an OAuth 2 JWT-bearer grant (RFC 7523) at the service account's ``token_uri``:
``POST`` form ``grant_type=urn:ietf:params:oauth:grant-type:jwt-bearer`` and ``assertion``, a JWT
signed RS256 with the account's private key (``iss`` the account's ``client_email``, ``scope``
``https://www.googleapis.com/auth/firebase.messaging``, ``aud`` the ``token_uri``, ``iat``, ``exp``
an hour later). Google answers ``{"access_token", "expires_in", "token_type": "Bearer"}``; the token
is kept by the sender (one per provider version) until ``REFRESH_BEFORE`` seconds before it expires.

Send: ``POST {base_url}/v1/projects/{project_id}/messages:send``, ``Authorization: Bearer <token>``,
``{"message": {"token", "notification": {"title", "body", "image"?}, "data"?, "android": {"ttl":
"Ns"?, "notification": {"sound"?}}, "apns": {"headers": {"apns-expiration"?}, "payload": {"aps":
{"badge"?, "sound"?}}}}}``; a deep link travels in ``data.deep_link`` (FCM has no field for it that
both platforms read). ``200 {"name": "projects/<p>/messages/<id>"}``: sent, the name is the
provider message id.

Errors (FCM's ``google.firebase.fcm.v1.FcmError`` ``errorCode`` in ``error.details``, else the
status): ``UNREGISTERED`` (404) permanent and the token removed from the contact
(``Unregistered``); ``INVALID_ARGUMENT`` (400), ``SENDER_ID_MISMATCH`` (403),
``THIRD_PARTY_AUTH_ERROR`` (401) permanent; ``QUOTA_EXCEEDED`` (429), ``UNAVAILABLE`` (503),
``INTERNAL`` (500) transient, ``Retry-After`` honoured. A 401 ``UNAUTHENTICATED`` (the access token
expired or was revoked early) fetches a new token and tries once more. Both ``token_uri`` and
``base_url`` are reached through ``VendorClient``: every request's destination checked by the
outbound policy.
"""

from __future__ import annotations

import asyncio
import ssl
import time
from collections.abc import Callable
from typing import Any, Final

import jwt
import orjson
from cryptography.hazmat.primitives.asymmetric.rsa import RSAPrivateKey
from cryptography.hazmat.primitives.serialization import load_pem_private_key

from spotzee.providers.adapter import Permanent, Sent, Transient
from spotzee.providers.push import PushDelivery, Unregistered
from spotzee.providers.safety import OutboundPolicy
from spotzee.providers.vendor_http import VendorClient, VendorResponse, http_status_outcome, outcome_of_error
from spotzee.schemas.provider_models import FcmConfig
from spotzee.schemas.template_models import RenderedPush

USER_AGENT: Final = "Spotzee-FCM/1"
SCOPE: Final = "https://www.googleapis.com/auth/firebase.messaging"
GRANT_TYPE: Final = "urn:ietf:params:oauth:grant-type:jwt-bearer"
ASSERTION_LIFETIME: Final = 3600  # Google's maximum for the assertion (and the token it buys)
REFRESH_BEFORE: Final = 300.0  # seconds before expiry a cached access token is replaced
FCM_ERROR_TYPE: Final = "type.googleapis.com/google.firebase.fcm.v1.FcmError"
PERMANENT_CODES: Final = frozenset({"INVALID_ARGUMENT", "SENDER_ID_MISMATCH", "THIRD_PARTY_AUTH_ERROR"})
TRANSIENT_CODES: Final = frozenset({"QUOTA_EXCEEDED", "UNAVAILABLE", "INTERNAL"})


class _TokenRefused(Exception):
    def __init__(self, outcome: Transient | Permanent) -> None:
        super().__init__(outcome.reason)
        self.outcome = outcome


def send_path(project_id: str) -> str:
    return f"/v1/projects/{project_id}/messages:send"


def fcm_message(delivery: PushDelivery, *, now: float) -> dict[str, Any]:
    """The HTTP v1 ``message`` of one push to one device."""
    push = delivery.message
    notification: dict[str, str] = {"title": push.title, "body": push.body}
    if push.image is not None:
        notification["image"] = push.image
    message: dict[str, Any] = {"token": delivery.token, "notification": notification}
    data = dict(push.data)
    if push.deep_link is not None:
        data.setdefault("deep_link", push.deep_link)
    if data:
        message["data"] = data
    android, apns = _android(push), _apns(push, now)
    if android:
        message["android"] = android
    if apns:
        message["apns"] = apns
    return {"message": message}


def _android(push: RenderedPush) -> dict[str, Any]:
    android: dict[str, Any] = {}
    if push.ttl is not None:
        android["ttl"] = f"{push.ttl}s"
    if push.sound is not None:
        android["notification"] = {"sound": push.sound}
    return android


def _apns(push: RenderedPush, now: float) -> dict[str, Any]:
    aps: dict[str, Any] = {}
    if push.badge is not None:
        aps["badge"] = push.badge
    if push.sound is not None:
        aps["sound"] = push.sound
    apns: dict[str, Any] = {}
    if push.ttl is not None:
        # APNs takes an absolute expiry (epoch seconds); 0 means "now or never", as a ttl of 0 does.
        apns["headers"] = {"apns-expiration": "0" if push.ttl == 0 else str(int(now) + push.ttl)}
    if aps:
        apns["payload"] = {"aps": aps}
    return apns


class FcmSender:
    """Sends ``PushDelivery`` messages through one Firebase project; kept across sends (its access
    token and connections reused)."""

    def __init__(
        self,
        config: FcmConfig,
        *,
        policy: OutboundPolicy,
        tls_context: ssl.SSLContext | None = None,
        clock: Callable[[], float] = time.time,
    ) -> None:
        if config.private_key is None:
            raise ValueError("an FCM provider needs its service account's private key")
        self._config = config
        self._clock = clock
        self._key: RSAPrivateKey | None = None
        self._key_problem: str | None = None
        try:
            key = load_pem_private_key(config.private_key.get_secret_value().encode(), password=None)
        except (ValueError, TypeError) as exc:
            self._key_problem = f"the service account's private key can't be read: {type(exc).__name__}"
        else:
            if isinstance(key, RSAPrivateKey):
                self._key = key
            else:
                self._key_problem = "the service account's private key is not an RSA key"
        self._token: tuple[str, float] | None = None  # access token, when to replace it
        self._refresh = asyncio.Lock()
        self._api = VendorClient(
            config.base_url,
            policy=policy,
            timeout=config.timeout,
            user_agent=USER_AGENT,
            tls_context=tls_context,
            clock=clock,
        )
        self._oauth = VendorClient(
            config.token_uri,
            policy=policy,
            timeout=config.timeout,
            user_agent=USER_AGENT,
            tls_context=tls_context,
            clock=clock,
        )

    async def aclose(self) -> None:
        await self._api.aclose()
        await self._oauth.aclose()

    def assertion(self, now: float) -> str:
        """The signed JWT the token endpoint exchanges for an access token."""
        assert self._key is not None
        issued = int(now)
        claims = {
            "iss": self._config.client_email,
            "scope": SCOPE,
            "aud": self._config.token_uri,
            "iat": issued,
            "exp": issued + ASSERTION_LIFETIME,
        }
        return jwt.encode(claims, self._key, algorithm="RS256")

    async def access_token(self, *, stale: str | None = None) -> str:
        """The cached access token, or a new one (``stale``: the one the API just refused)."""
        async with self._refresh:  # concurrent sends wait for one grant rather than each ask
            now = self._clock()
            if self._token is not None and self._token[1] > now and self._token[0] != stale:
                return self._token[0]
            response = await self._oauth.exchange(
                "POST", "", data={"grant_type": GRANT_TYPE, "assertion": self.assertion(now)}
            )
            body = _json(response.body)
            token = body.get("access_token") if isinstance(body, dict) else None
            if response.status != 200 or not isinstance(token, str) or not token:
                reason = "OAuth token request refused"
                if isinstance(body, dict) and "error" in body:
                    reason += f": {body.get('error')} {body.get('error_description', '')}".rstrip()
                if response.status == 200:
                    raise _TokenRefused(Permanent(reason=f"{reason}: no access_token in the answer"))
                raise _TokenRefused(http_status_outcome(response, reason, now=now))
            expires_in = body.get("expires_in") if isinstance(body, dict) else None
            lifetime = float(expires_in) if isinstance(expires_in, int | float) and expires_in > 0 else 3600.0
            self._token = (token, now + max(lifetime - REFRESH_BEFORE, lifetime / 2))
            return token

    async def send(self, delivery: PushDelivery) -> Sent | Transient | Permanent:
        if self._key is None:
            return Permanent(reason=self._key_problem or "no private key")
        try:
            token = await self.access_token()
            payload = fcm_message(delivery, now=self._clock())
            response = await self._post(payload, token)
            if response.status == 401 and _status(response) == "UNAUTHENTICATED":
                token = await self.access_token(stale=token)  # revoked or expired early: once more
                response = await self._post(payload, token)
        except _TokenRefused as refused:
            return refused.outcome
        except Exception as exc:
            outcome = outcome_of_error(exc, self._api.timeout)
            if outcome is None:
                raise
            return outcome
        return classify(response, now=self._clock())

    async def _post(self, payload: dict[str, Any], token: str) -> VendorResponse:
        return await self._api.exchange(
            "POST",
            send_path(self._config.project_id),
            headers={"Authorization": f"Bearer {token}"},
            json=payload,
        )


def classify(response: VendorResponse, *, now: float) -> Sent | Transient | Permanent:
    """FCM's answer: 200 with a message ``name`` sent; errors by FCM error code, else by status."""
    body = _json(response.body)
    if response.status == 200:
        name = body.get("name") if isinstance(body, dict) else None
        if not isinstance(name, str) or not name:
            return Permanent(reason=f"HTTP 200 without a message name: {response.snippet()}")
        return Sent(detail="HTTP 200", provider_message_id=name)
    code = _error_code(body)
    message = ""
    if isinstance(body, dict) and isinstance(body.get("error"), dict):
        message = str(body["error"].get("message", ""))
    reason = f"FCM {code}: {message}".strip() if code else response.snippet()
    if code == "UNREGISTERED":
        return Unregistered(reason=reason)
    if code in PERMANENT_CODES:
        return Permanent(reason=f"HTTP {response.status}: {reason}")
    if code in TRANSIENT_CODES:
        return Transient(reason=f"HTTP {response.status}: {reason}", retry_after=response.retry_after(now))
    return http_status_outcome(response, reason, now=now)


def _error_code(body: object) -> str | None:
    """The ``FcmError`` ``errorCode`` (``UNREGISTERED``...), else the error's canonical status."""
    if not isinstance(body, dict) or not isinstance(body.get("error"), dict):
        return None
    error = body["error"]
    for detail in error.get("details") or []:
        if isinstance(detail, dict) and detail.get("@type") == FCM_ERROR_TYPE and detail.get("errorCode"):
            return str(detail["errorCode"])
    status = error.get("status")
    return str(status) if status else None


def _status(response: VendorResponse) -> str | None:
    body = _json(response.body)
    if isinstance(body, dict) and isinstance(body.get("error"), dict):
        status = body["error"].get("status")
        return str(status) if status else None
    return None


def _json(raw: bytes) -> object:
    try:
        return orjson.loads(raw)
    except orjson.JSONDecodeError:
        return None
