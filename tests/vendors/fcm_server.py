"""A loopback Firebase Cloud Messaging: Google's OAuth 2 token endpoint and the HTTP v1 send API.

``POST /token`` (the service account's ``token_uri``): form ``grant_type`` =
``urn:ietf:params:oauth:grant-type:jwt-bearer`` and ``assertion``, a JWT verified RS256 against the
service account's public key, with ``iss`` the account's email, ``aud`` the token URI, ``scope``
naming firebase.messaging, ``iat`` and ``exp`` at most an hour apart. Answers ``{"access_token",
"expires_in", "token_type": "Bearer"}``, or ``400 {"error": "invalid_grant", ...}``.

``POST /v1/projects/{project_id}/messages:send``: ``Authorization: Bearer <an issued token>`` (else
401 ``UNAUTHENTICATED``), a JSON body ``{"message": {...}}`` with only the documented fields
(``token``, ``notification`` {title, body, image}, ``data`` string -> string, ``android``,
``apns``), else 400 ``INVALID_ARGUMENT``. A token not registered here is 404 ``UNREGISTERED``.
Errors in Google's shape: ``{"error": {"code", "message", "status", "details": [{"@type":
"type.googleapis.com/google.firebase.fcm.v1.FcmError", "errorCode"}]}}``.
"""

from __future__ import annotations

import json
import re
import secrets
import time
from dataclasses import dataclass, field
from typing import Any, Final
from urllib.parse import parse_qs

import jwt
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import rsa

from tests.vendors.http_vendor import Answer, Received, VendorServer

SEND: Final = re.compile(r"/v1/projects/([a-z0-9-]+)/messages:send")
MESSAGE_FIELDS: Final = frozenset({"token", "notification", "data", "android", "apns"})
NOTIFICATION_FIELDS: Final = frozenset({"title", "body", "image"})
STATUS_OF: Final = {
    400: "INVALID_ARGUMENT", 401: "UNAUTHENTICATED", 404: "NOT_FOUND", 429: "RESOURCE_EXHAUSTED",
    500: "INTERNAL", 503: "UNAVAILABLE",
}  # fmt: skip


def fcm_error(code: int, message: str, error_code: str | None = None) -> dict[str, Any]:
    error: dict[str, Any] = {"code": code, "message": message, "status": STATUS_OF.get(code, "UNKNOWN")}
    if error_code is not None:
        error["details"] = [{"@type": "type.googleapis.com/google.firebase.fcm.v1.FcmError", "errorCode": error_code}]
    return {"error": error}


def service_account_key() -> tuple[str, rsa.RSAPrivateKey]:
    key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    pem = key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    ).decode()
    return pem, key


@dataclass
class FcmServer(VendorServer):
    project_id: str = "spotzee-test"
    client_email: str = "push@spotzee-test.iam.gserviceaccount.com"
    private_key_pem: str = ""
    registered: set[str] = field(default_factory=set)
    issued: set[str] = field(default_factory=set)
    grants: int = 0
    expires_in: int = 3599

    def __post_init__(self) -> None:
        VendorServer.__init__(self)
        pem, key = service_account_key()
        self.private_key_pem = pem
        self._public = key.public_key()

    @property
    def token_uri(self) -> str:
        return f"{self.base_url}/token"

    def service_account(self) -> dict[str, str]:
        """What Google's console downloads (the fields Spotzee ignores included)."""
        return {
            "type": "service_account",
            "project_id": self.project_id,
            "private_key_id": "0123456789abcdef",
            "private_key": self.private_key_pem,
            "client_email": self.client_email,
            "client_id": "1234567890",
            "auth_uri": "https://accounts.google.com/o/oauth2/auth",
            "token_uri": self.token_uri,
        }

    def revoke_tokens(self) -> None:
        with self.lock:
            self.issued.clear()

    def sends(self) -> list[dict[str, Any]]:
        """The messages accepted (the JSON ``message`` objects)."""
        return [json.loads(r.body)["message"] for r in self.accepted]

    def answer(self, request: Received) -> Answer:
        if request.method == "POST" and request.path == "/token":
            return self._token(request)
        match = SEND.fullmatch(request.path)
        if request.method != "POST" or match is None:
            return Answer(404, fcm_error(404, "Requested entity was not found."))
        auth = request.headers.get("authorization", "")
        with self.lock:
            known = auth.startswith("Bearer ") and auth.removeprefix("Bearer ") in self.issued
        if not known:
            return Answer(401, fcm_error(401, "Request had invalid authentication credentials."))
        if match.group(1) != self.project_id:
            return Answer(403, fcm_error(403, "SenderId mismatch", "SENDER_ID_MISMATCH"))
        if not request.headers.get("content-type", "").startswith("application/json"):
            return Answer(400, fcm_error(400, "Invalid JSON payload received.", "INVALID_ARGUMENT"))
        problem = self._invalid(request.body)
        if problem is not None:
            return Answer(400, fcm_error(400, problem, "INVALID_ARGUMENT"))
        message = json.loads(request.body)["message"]
        if message["token"] not in self.registered:
            return Answer(404, fcm_error(404, "Requested entity was not found.", "UNREGISTERED"))
        with self.lock:
            self.accepted.append(request)
        return Answer(200, {"name": f"projects/{self.project_id}/messages/{secrets.token_hex(8)}"})

    def _invalid(self, raw: bytes) -> str | None:
        try:
            body = json.loads(raw)
        except ValueError:
            return "Invalid JSON payload received."
        if not isinstance(body, dict) or set(body) - {"message", "validate_only"} or "message" not in body:
            return "Invalid JSON payload received. Unknown name at top level."
        message = body["message"]
        if not isinstance(message, dict) or set(message) - MESSAGE_FIELDS:
            return f"Invalid JSON payload received. Unknown name in message: {sorted(set(message) - MESSAGE_FIELDS)}"
        if not isinstance(message.get("token"), str) or not message["token"]:
            return "The registration token is not a valid FCM registration token"
        notification = message.get("notification", {})
        if not isinstance(notification, dict) or set(notification) - NOTIFICATION_FIELDS:
            return "Invalid JSON payload received. Unknown name in message.notification"
        if not all(isinstance(v, str) for v in notification.values()):
            return "notification values must be strings"
        data = message.get("data", {})
        if not isinstance(data, dict) or not all(isinstance(v, str) for v in data.values()):
            return "Invalid value at 'message.data': values must be strings"
        ttl = message.get("android", {}).get("ttl")
        if ttl is not None and not re.fullmatch(r"[0-9]+(\.[0-9]{1,9})?s", ttl):
            return "Invalid value at 'message.android.ttl' (type.googleapis.com/google.protobuf.Duration)"
        return None

    def _token(self, request: Received) -> Answer:
        if request.headers.get("content-type") != "application/x-www-form-urlencoded":
            return Answer(400, {"error": "invalid_request", "error_description": "form body expected"})
        form = {k: v[0] for k, v in parse_qs(request.body.decode()).items()}
        if form.get("grant_type") != "urn:ietf:params:oauth:grant-type:jwt-bearer" or "assertion" not in form:
            return Answer(400, {"error": "unsupported_grant_type", "error_description": "Invalid grant_type"})
        try:
            claims = jwt.decode(
                form["assertion"],
                self._public,
                algorithms=["RS256"],
                audience=self.token_uri,
                issuer=self.client_email,
                options={"require": ["iss", "aud", "iat", "exp", "scope"]},
            )
        except jwt.PyJWTError as exc:
            return Answer(400, {"error": "invalid_grant", "error_description": f"Invalid JWT: {exc}"})
        if claims["exp"] - claims["iat"] > 3600 or claims["iat"] > time.time() + 60:
            return Answer(400, {"error": "invalid_grant", "error_description": "Invalid JWT: bad iat/exp"})
        if "https://www.googleapis.com/auth/firebase.messaging" not in claims["scope"].split():
            return Answer(400, {"error": "invalid_scope", "error_description": "scope not granted"})
        token = "ya29." + secrets.token_urlsafe(24)
        with self.lock:
            self.issued.add(token)
            self.grants += 1
        return Answer(200, {"access_token": token, "expires_in": self.expires_in, "token_type": "Bearer"})
