"""How a caller sends its key, declared in ``/openapi.json`` so ``/docs`` can send it too.

Two security schemes:

- ``writeKey``: HTTP Basic, the write key (``pk_``) as the username and an empty password, as
  Segment's libraries send it (ingestion, ``/v1/*``; the body's ``writeKey`` is the fallback);
- ``bearerKey``: ``Authorization: Bearer`` with a project's secret key (``sk_``) or an
  organisation's admin key (``ak_``) (``/api/v1/*``).

Each is a FastAPI security dependency that reads the header itself: a missing or malformed key is
Spotzee's 401 ``unauthorized`` with its own message, where FastAPI's ``HTTPBasic`` and
``HTTPBearer`` answer errors of their own (``HTTPBasic`` even with ``auto_error=False``, for a
Basic header it can't decode). Which key may call which route is decided by ``deps``.
"""

# No ``from __future__ import annotations`` in this module: FastAPI resolves a dependency's string
# annotations through the callable's ``__globals__``, and a scheme instance has none, so the
# annotations of ``KeyScheme.__call__`` must be real classes.

import base64
import binascii
from collections.abc import Callable
from typing import Annotated, Generic, TypeVar

from fastapi import Request, Security
from fastapi.openapi.models import HTTPBase, HTTPBearer
from fastapi.security.base import SecurityBase

from spotzee.errors import Unauthorized

T = TypeVar("T")


def bearer_token(request: Request) -> str:
    header = request.headers.get("authorization", "")
    scheme, _, token = header.partition(" ")
    if scheme.lower() != "bearer" or not token.strip():
        raise Unauthorized("send the key as 'Authorization: Bearer <key>'")
    return token.strip()


def basic_username(request: Request) -> str | None:
    """Segment's write key: the HTTP Basic username (password empty); None without a Basic header."""
    header = request.headers.get("authorization", "")
    scheme, _, encoded = header.partition(" ")
    if scheme.lower() != "basic":
        return None
    try:
        decoded = base64.b64decode(encoded.strip(), validate=True).decode()
    except (binascii.Error, ValueError):  # ValueError: non-ASCII; UnicodeDecodeError is one too
        raise Unauthorized("malformed Basic authorization header") from None
    return decoded.partition(":")[0]


class KeyScheme(SecurityBase, Generic[T]):
    """An OpenAPI security scheme (``model``, named ``scheme_name``) whose dependency value is
    what ``read`` takes from the request."""

    def __init__(self, name: str, model: HTTPBase, read: Callable[[Request], T]) -> None:
        self.scheme_name = name
        self.model = model
        self.read = read

    async def __call__(self, request: Request) -> T:
        return self.read(request)


BEARER_KEY = KeyScheme(
    "bearerKey",
    HTTPBearer(
        bearerFormat="sk_… or ak_…",
        description="A project's secret key (`sk_…`: contacts, segments, lists, templates, providers, journeys, "
        "its project's audit) or an organisation's admin key (`ak_…`: projects, keys, audit, SQL).",
    ),
    bearer_token,
)
WRITE_KEY = KeyScheme(
    "writeKey",
    HTTPBase(
        scheme="basic",
        description="A project's write key (`pk_…`) as the username, the password empty, as Segment's libraries "
        "send it. Without this header the key is read from the body's `writeKey`.",
    ),
    basic_username,
)

BearerToken = Annotated[str, Security(BEARER_KEY)]
"""The key sent as ``Authorization: Bearer <key>`` (else 401)."""
BasicUsername = Annotated[str | None, Security(WRITE_KEY)]
"""The HTTP Basic username, or None without a Basic header (a malformed one is a 401)."""
