"""Signed unsubscribe tokens: ``/u/{token}`` links that name a contact and channel, unforgeably.

A token is ``<payload>.<mac>``, both base64url without padding: the payload is the JSON array
``["u2", project_id, contact_id, channel, created_ms]`` (``created_ms``: when that contact was
created, epoch milliseconds, so a link outlives no erasure: a contact erased and later created
again under the same id is another person's record; ``u1`` tokens lack it), the MAC is
HMAC-SHA256 over ``u1.<payload>`` with a key derived from the server secret (so the same secret
can sign other things without one signature standing in for another). Tokens do not expire: an
unsubscribe link must keep working as long as the email is in someone's inbox. Rotating the
secret: pass the old secrets to ``read_token`` too until old emails no longer matter.
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

VERSION: Final = "u2"
READABLE_VERSIONS: Final = ("u1", "u2")
MIN_SECRET: Final = 16
UnsubscribeChannel = Literal["email", "sms", "whatsapp", "push", "in_app", "webhook"]


class InvalidUnsubscribeToken(InvalidInput):
    code = "invalid_unsubscribe_token"


class UnsubscribeClaim(Model):
    """Who asked to stop receiving what."""

    project_id: Annotated[str, Field(min_length=1, max_length=512)]
    contact_id: Annotated[str, Field(min_length=1, max_length=512)]
    channel: UnsubscribeChannel
    contact_created_ms: int | None = None
    """When the contact the link was made for was created (None in ``u1`` tokens)."""


def _key(secret: SecretStr | str) -> bytes:
    raw = secret.get_secret_value() if isinstance(secret, SecretStr) else secret
    if len(raw) < MIN_SECRET:
        raise ValueError(f"the unsubscribe secret needs at least {MIN_SECRET} characters")
    return hmac.new(raw.encode(), b"spotzee/unsubscribe/u1", hashlib.sha256).digest()  # one key for every version


def _b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode("ascii")


def _unb64(text: str) -> bytes:
    return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))


def _mac(key: bytes, payload: str) -> str:
    # Both versions sign under the u1 key and prefix: the payload carries its own version inside.
    return _b64(hmac.new(key, f"u1.{payload}".encode("ascii"), hashlib.sha256).digest())


def make_token(
    secret: SecretStr | str,
    project_id: str,
    contact_id: str,
    channel: UnsubscribeChannel,
    *,
    contact_created_ms: int | None = None,
) -> str:
    """A link for that contact; without ``contact_created_ms`` a ``u1`` token (bound to the id only)."""
    claim = UnsubscribeClaim(
        project_id=project_id, contact_id=contact_id, channel=channel, contact_created_ms=contact_created_ms
    )
    fields: list[str | int] = [VERSION, claim.project_id, claim.contact_id, claim.channel]
    if claim.contact_created_ms is None:
        fields[0] = "u1"
    else:
        fields.append(claim.contact_created_ms)
    payload = _b64(json.dumps(fields, separators=(",", ":")).encode("utf-8"))
    return f"{payload}.{_mac(_key(secret), payload)}"


def read_token(secret: SecretStr | str | Sequence[SecretStr | str], token: str) -> UnsubscribeClaim:
    """The claim of a token signed with ``secret`` (or any of several, newest first).

    Raises ``InvalidUnsubscribeToken`` when the token is malformed or its signature does not match.
    """
    secrets = [secret] if isinstance(secret, SecretStr | str) else list(secret)
    payload, dot, mac = token.partition(".")
    if not dot or not payload or not mac or len(token) > 4096 or not token.isascii():
        raise InvalidUnsubscribeToken("malformed unsubscribe token")
    # compare_digest on every candidate: the time taken does not reveal how much of a MAC matched.
    if not any(hmac.compare_digest(_mac(_key(candidate), payload), mac) for candidate in secrets):
        raise InvalidUnsubscribeToken("unsubscribe token signature does not match")
    try:
        version, project_id, contact_id, channel, *rest = json.loads(_unb64(payload))
        if version not in READABLE_VERSIONS or len(rest) != (version == "u2"):
            raise ValueError(version)
        created_ms = rest[0] if rest else None
        return UnsubscribeClaim(
            project_id=project_id, contact_id=contact_id, channel=channel, contact_created_ms=created_ms
        )
    except (ValueError, TypeError, binascii.Error, ValidationError):
        # Only reachable with a valid MAC, i.e. our own key signed it: a version we no longer read.
        raise InvalidUnsubscribeToken("unreadable unsubscribe token") from None


def unsubscribe_url(base_url: str, token: str) -> str:
    """``https://host/u/<token>`` (``GET`` shows a confirmation, ``POST`` is RFC 8058 one-click)."""
    return f"{base_url.rstrip('/')}/u/{quote(token, safe='.-_')}"
