"""Signed unsubscribe tokens: ``/u/{token}`` links that name a contact and channel, unforgeably.

A token is ``<payload>.<mac>``, both base64url without padding: the payload is the JSON array
``["u1", project_id, contact_id, channel]``, the MAC is HMAC-SHA256 over ``u1.<payload>`` with a
key derived from the server secret (so the same secret can sign other things without one
signature standing in for another). Tokens do not expire: an unsubscribe link must keep working
as long as the email is in someone's inbox. Rotating the secret: pass the old secrets to
``read_token`` too until old emails no longer matter.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
import json
from collections.abc import Sequence
from typing import Annotated, Final, Literal
from urllib.parse import quote

from pydantic import Field, SecretStr, ValidationError

from spotzee.errors import InvalidInput
from spotzee.schemas.common import Model

VERSION: Final = "u1"
MIN_SECRET: Final = 16
UnsubscribeChannel = Literal["email", "sms", "whatsapp", "push", "in_app", "webhook"]


class InvalidUnsubscribeToken(InvalidInput):
    code = "invalid_unsubscribe_token"


class UnsubscribeClaim(Model):
    """Who asked to stop receiving what."""

    project_id: Annotated[str, Field(min_length=1, max_length=512)]
    contact_id: Annotated[str, Field(min_length=1, max_length=512)]
    channel: UnsubscribeChannel


def _key(secret: SecretStr | str) -> bytes:
    raw = secret.get_secret_value() if isinstance(secret, SecretStr) else secret
    if len(raw) < MIN_SECRET:
        raise ValueError(f"the unsubscribe secret needs at least {MIN_SECRET} characters")
    return hmac.new(raw.encode(), b"spotzee/unsubscribe/" + VERSION.encode(), hashlib.sha256).digest()


def _b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode("ascii")


def _unb64(text: str) -> bytes:
    return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))


def _mac(key: bytes, payload: str) -> str:
    return _b64(hmac.new(key, f"{VERSION}.{payload}".encode("ascii"), hashlib.sha256).digest())


def make_token(secret: SecretStr | str, project_id: str, contact_id: str, channel: UnsubscribeChannel) -> str:
    claim = UnsubscribeClaim(project_id=project_id, contact_id=contact_id, channel=channel)
    body = json.dumps([VERSION, claim.project_id, claim.contact_id, claim.channel], separators=(",", ":"))
    payload = _b64(body.encode("utf-8"))
    return f"{payload}.{_mac(_key(secret), payload)}"


def read_token(secret: SecretStr | str | Sequence[SecretStr | str], token: str) -> UnsubscribeClaim:
    """The claim of a token signed with ``secret`` (or any of several, newest first).

    Raises ``InvalidUnsubscribeToken`` when the token is malformed or its signature does not match.
    """
    secrets = [secret] if isinstance(secret, SecretStr | str) else list(secret)
    payload, dot, mac = token.partition(".")
    if not dot or not payload or not mac or len(token) > 4096:
        raise InvalidUnsubscribeToken("malformed unsubscribe token")
    # compare_digest on every candidate: the time taken does not reveal how much of a MAC matched.
    if not any(hmac.compare_digest(_mac(_key(candidate), payload), mac) for candidate in secrets):
        raise InvalidUnsubscribeToken("unsubscribe token signature does not match")
    try:
        version, project_id, contact_id, channel = json.loads(_unb64(payload))
        if version != VERSION:
            raise ValueError(version)
        return UnsubscribeClaim(project_id=project_id, contact_id=contact_id, channel=channel)
    except (ValueError, TypeError, binascii.Error, ValidationError):
        # Only reachable with a valid MAC, i.e. our own key signed it: a version we no longer read.
        raise InvalidUnsubscribeToken("unreadable unsubscribe token") from None


def unsubscribe_url(base_url: str, token: str) -> str:
    """``https://host/u/<token>`` (``GET`` shows a confirmation, ``POST`` is RFC 8058 one-click)."""
    return f"{base_url.rstrip('/')}/u/{quote(token, safe='.-_')}"
