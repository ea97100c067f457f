"""AWS Signature Version 4 (``AWS4-HMAC-SHA256``) for one HTTP request: pure, time injected.

Used to sign SES v2 requests (``spotzee.providers.ses``) and, in the tests, to verify them from
the server side with the same steps. The algorithm, as AWS documents it:

1. the canonical request: method, the canonical URI (each path segment URI-encoded, RFC 3986
   unreserved characters kept; non-S3 services encode it twice), the canonical query (each name
   and value encoded, sorted by name then value), the canonical headers (names lower-cased, values
   trimmed and inner runs of spaces collapsed, sorted, one ``name:value`` line each), the signed
   header names (``;``-joined), and the hex SHA-256 of the payload;
2. the string to sign: ``AWS4-HMAC-SHA256``, the ``X-Amz-Date`` timestamp, the credential scope
   (``date/region/service/aws4_request``) and the hex SHA-256 of the canonical request;
3. the signing key, ``HMAC("AWS4" + secret, date)`` then region, service, ``aws4_request``;
4. the signature, hex ``HMAC(key, string_to_sign)``, in the ``Authorization`` header with the
   credential and the signed header names.
"""

from __future__ import annotations

import hashlib
import hmac
import re
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Final
from urllib.parse import parse_qsl, quote, urlsplit

ALGORITHM: Final = "AWS4-HMAC-SHA256"
_SPACES = re.compile(r" +")


@dataclass(frozen=True)
class Credentials:
    access_key_id: str
    secret_access_key: str


def amz_date(moment: datetime) -> str:
    """``20150830T123600Z``: the ``X-Amz-Date`` form of an aware datetime."""
    return moment.astimezone(UTC).strftime("%Y%m%dT%H%M%SZ")


def _encode(value: str) -> str:
    return quote(value, safe="-_.~")


def canonical_uri(path: str, *, double_encode: bool = True) -> str:
    segments = (path or "/").split("/")
    encoded = [_encode(segment) for segment in segments]
    if double_encode:
        encoded = [_encode(segment) for segment in encoded]
    return "/".join(encoded) or "/"


def canonical_query(query: str) -> str:
    pairs = sorted((_encode(name), _encode(value)) for name, value in parse_qsl(query, keep_blank_values=True))
    return "&".join(f"{name}={value}" for name, value in pairs)


def canonical_headers(headers: Mapping[str, str]) -> tuple[str, str]:
    """The canonical header block (each line ending in a newline) and the signed header names."""
    folded: dict[str, list[str]] = {}
    for name, value in headers.items():
        folded.setdefault(name.strip().lower(), []).append(_SPACES.sub(" ", value.strip()))
    names = sorted(folded)
    block = "".join(f"{name}:{','.join(folded[name])}\n" for name in names)
    return block, ";".join(names)


def canonical_request(method: str, url: str, headers: Mapping[str, str], payload: bytes) -> tuple[str, str]:
    """The canonical request and its signed header names."""
    parts = urlsplit(url)
    block, signed = canonical_headers(headers)
    request = "\n".join(
        [
            method.upper(),
            canonical_uri(parts.path),
            canonical_query(parts.query),
            block,
            signed,
            hashlib.sha256(payload).hexdigest(),
        ]
    )
    return request, signed


def scope(date: str, region: str, service: str) -> str:
    return f"{date[:8]}/{region}/{service}/aws4_request"


def string_to_sign(timestamp: str, credential_scope: str, request: str) -> str:
    return "\n".join([ALGORITHM, timestamp, credential_scope, hashlib.sha256(request.encode("utf-8")).hexdigest()])


def signing_key(secret: str, date: str, region: str, service: str) -> bytes:
    key = hmac.new(f"AWS4{secret}".encode(), date[:8].encode(), hashlib.sha256).digest()
    for part in (region, service, "aws4_request"):
        key = hmac.new(key, part.encode(), hashlib.sha256).digest()
    return key


def signature(  # noqa: PLR0913 -- the request's four parts and where and when it is signed
    secret: str, method: str, url: str, headers: Mapping[str, str], payload: bytes, *, region: str, service: str
) -> tuple[str, str]:
    """The hex signature of a request whose ``headers`` include ``host`` and ``x-amz-date``
    (exactly the headers to sign), and the signed header names."""
    lowered = {name.lower(): value for name, value in headers.items()}
    timestamp = lowered["x-amz-date"]
    request, signed = canonical_request(method, url, headers, payload)
    text = string_to_sign(timestamp, scope(timestamp, region, service), request)
    digest = hmac.new(signing_key(secret, timestamp, region, service), text.encode("utf-8"), hashlib.sha256)
    return digest.hexdigest(), signed


def sign(  # noqa: PLR0913 -- as signature(), with the credentials and the moment
    credentials: Credentials,
    method: str,
    url: str,
    headers: Mapping[str, str],
    payload: bytes,
    *,
    region: str,
    service: str,
    now: datetime,
) -> dict[str, str]:
    """``headers`` plus ``X-Amz-Date`` and ``Authorization``: every header given (``Host``
    included) is signed, so send exactly these."""
    timestamp = amz_date(now)
    signed_headers = {**headers, "X-Amz-Date": timestamp}
    hex_signature, signed = signature(
        credentials.secret_access_key, method, url, signed_headers, payload, region=region, service=service
    )
    credential = f"{credentials.access_key_id}/{scope(timestamp, region, service)}"
    authorization = f"{ALGORITHM} Credential={credential}, SignedHeaders={signed}, Signature={hex_signature}"
    return {**signed_headers, "Authorization": authorization}
