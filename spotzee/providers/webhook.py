"""Webhook delivery: one signed HTTP request per attempt, redirects followed by hand.

Every request carries:

- ``X-Spotzee-Timestamp``: Unix seconds when it was signed;
- ``X-Spotzee-Signature: v1=<hex HMAC-SHA256(signing_secret, "<timestamp>.<body>")>`` -- receivers
  recompute it (``verify_signature``) and reject stale timestamps, which stops replays;
- ``Idempotency-Key: <send_id>`` -- the same on every retry, so a receiver can drop duplicates.

The destination is checked before connecting by the ``OutboundPolicy`` every provider gets, and
the connection goes to the checked address (``spotzee.providers.safety``); redirects (at most
``max_redirects``) are followed one hop at a time so each hop is checked too. Environment
proxies are ignored: a proxy would connect on our behalf to wherever the name resolves for it.

Outcomes: 2xx sent; 408, 425, 429, 5xx, timeouts and connection errors transient (with the
``Retry-After`` delay when given); any other status, a refused destination, a TLS certificate that
does not verify or too many redirects permanent.

Sender contract (``WebhookSender``): build one per provider and keep it.

- ``WebhookSender(config, policy=..., tls_context=...)``; ``send(delivery)`` may be called any
  number of times, concurrently, from one event loop; it never raises for a delivery failure.
- Connections are kept alive and reused, per origin *name*: one httpx client per
  ``(scheme, host, port)`` of the URL as written (at most ``MAX_ORIGINS``, least recently used
  closed first), each with up to ``CONNECTIONS_PER_ORIGIN`` connections, an idle one kept for
  ``KEEPALIVE_EXPIRY`` seconds. Connections go to pinned, checked addresses and httpx pools them
  by that address, so one client per name keeps a request for one host off a connection (and a
  TLS session verified) for another host at the same address. Every hop of every send is still
  resolved and checked before it is sent; a pooled connection is only ever to an address that
  its host name resolved to and that passed the policy.
- httpx never resends a request on its own, so reuse keeps a send at most once per attempt.
- ``aclose()`` closes every client. A ``send`` after ``aclose()`` still delivers, over a client
  of its own closed right after, so a send racing a cache swap is never lost.
"""

from __future__ import annotations

import asyncio
import hashlib
import hmac
import ssl
import time
from collections import OrderedDict
from collections.abc import AsyncIterator, Callable, Mapping
from contextlib import asynccontextmanager
from dataclasses import dataclass
from datetime import UTC, datetime
from email.utils import parsedate_to_datetime
from typing import Final

import httpx

from spotzee.providers.adapter import Permanent, Sent, Transient, WebhookDelivery
from spotzee.providers.safety import Destination, DestinationRefused, DestinationUnresolved, IPAddress, OutboundPolicy
from spotzee.schemas.provider_models import WebhookConfig

TIMESTAMP_HEADER: Final = "X-Spotzee-Timestamp"
SIGNATURE_HEADER: Final = "X-Spotzee-Signature"
IDEMPOTENCY_HEADER: Final = "Idempotency-Key"
MAX_REDIRECTS: Final = 5
REDIRECTS: Final = frozenset({301, 302, 303, 307, 308})
TRANSIENT_STATUSES: Final = frozenset({408, 425, 429})
# Credentials meant for the first origin are not sent to another one a redirect points at.
CREDENTIAL_HEADERS: Final = frozenset({"authorization", "cookie", "proxy-authorization"})
SNIPPET_BYTES: Final = 512
USER_AGENT: Final = "Spotzee-Webhooks/1"  # unless the template sets its own
MAX_ORIGINS: Final = 16
"""httpx clients (one per origin name) a sender keeps; a provider usually posts to one or two."""
CONNECTIONS_PER_ORIGIN: Final = 16
"""Connections open at once per origin, all of them kept alive when idle (a lower keep-alive
count would close some after every burst and open them again for the next); more concurrent
requests wait for one, within the send's timeout."""
KEEPALIVE_EXPIRY: Final = 4.0
"""Seconds an idle connection is kept: below the 5 s Node.js servers default to, so we drop it
before the receiver might, rather than race its close with our next request."""

# -- signing ------------------------------------------------------------------------------------


def sign(secret: str, timestamp: int, body: bytes) -> str:
    """``v1=<hex>``: HMAC-SHA256 of ``"<timestamp>.<body>"``."""
    mac = hmac.new(secret.encode("utf-8"), f"{timestamp}.".encode("ascii") + body, hashlib.sha256)
    return f"v1={mac.hexdigest()}"


def verify_signature(
    secret: str, timestamp: str, body: bytes, signature: str, *, now: float, tolerance: float = 300.0
) -> bool:
    """What a receiver does: the timestamp is recent and one ``v1=`` signature matches."""
    try:
        signed_at = int(timestamp)
    except ValueError:
        return False
    if abs(now - signed_at) > tolerance:
        return False
    expected = sign(secret, signed_at, body)
    return any(hmac.compare_digest(expected, candidate.strip()) for candidate in signature.split(","))


# -- classification -----------------------------------------------------------------------------


def parse_retry_after(value: str | None, *, now: float) -> float | None:
    """``Retry-After`` as seconds from ``now`` (delta-seconds or an HTTP date); None if absent or bad."""
    if value is None:
        return None
    value = value.strip()
    if value.isdigit():
        return float(int(value))
    try:
        when = parsedate_to_datetime(value)
    except (TypeError, ValueError, IndexError):
        return None
    if when.tzinfo is None:
        when = when.replace(tzinfo=UTC)
    return max(0.0, (when - datetime.fromtimestamp(now, UTC)).total_seconds())


def classify(status: int, headers: Mapping[str, str], snippet: str, *, now: float) -> Sent | Transient | Permanent:
    summary = f"HTTP {status}" + (f": {snippet}" if snippet else "")
    if 200 <= status < 300:
        return Sent(detail=f"HTTP {status}")
    if status in TRANSIENT_STATUSES or 500 <= status < 600:
        return Transient(reason=summary, retry_after=parse_retry_after(headers.get("retry-after"), now=now))
    return Permanent(reason=summary)


# -- sending ------------------------------------------------------------------------------------


@dataclass(frozen=True)
class _Redirect:
    status: int
    location: str | None


@dataclass(eq=False)
class _Origin:
    client: httpx.AsyncClient
    busy: int = 0  # requests in flight: a busy client is never evicted


class WebhookSender:
    """Sends ``WebhookDelivery`` requests for one webhook provider (``Provider[WebhookDelivery]``),
    keeping connections alive per origin; the contract is in the module docstring."""

    def __init__(
        self,
        config: WebhookConfig,
        *,
        policy: OutboundPolicy,
        max_redirects: int = MAX_REDIRECTS,
        clock: Callable[[], float] = time.time,
        tls_context: ssl.SSLContext | None = None,
    ) -> None:
        if config.signing_secret is None:
            raise ValueError("a webhook provider needs a signing secret")
        self._secret = config.signing_secret.get_secret_value()
        self._timeout = config.timeout
        self._policy = policy
        self._max_redirects = max_redirects
        self._clock = clock
        # One context for every client (loading the CA bundle per origin would cost each new one).
        self._verify = tls_context or httpx.create_ssl_context(trust_env=False)
        self._origins: OrderedDict[tuple[str, str, int], _Origin] = OrderedDict()  # least recent first
        self._closing: set[asyncio.Task[None]] = set()
        self._closed = False

    def _new_client(self) -> httpx.AsyncClient:
        # No environment proxies (see the module docstring); redirects are followed by hand.
        return httpx.AsyncClient(
            follow_redirects=False,
            trust_env=False,
            timeout=httpx.Timeout(self._timeout),
            limits=httpx.Limits(
                max_connections=CONNECTIONS_PER_ORIGIN,
                max_keepalive_connections=CONNECTIONS_PER_ORIGIN,
                keepalive_expiry=KEEPALIVE_EXPIRY,
            ),
            verify=self._verify,
        )

    async def aclose(self) -> None:
        """Close every client (a request still in flight finishes first, then its client closes)."""
        self._closed = True
        origins = list(self._origins.values())
        self._origins.clear()
        for origin in origins:
            self._close_later(origin)
        if self._closing:
            await asyncio.gather(*self._closing, return_exceptions=True)

    @asynccontextmanager
    async def _lease(self, destination: Destination) -> AsyncIterator[httpx.AsyncClient]:
        """The client for ``destination``'s origin name (a one-off one after ``aclose``)."""
        if self._closed:
            async with self._new_client() as client:
                yield client
            return
        key = (destination.scheme, destination.host.lower(), destination.port)
        origin = self._origins.pop(key, None) or _Origin(self._new_client())
        self._origins[key] = origin  # now the most recently used
        origin.busy += 1
        try:
            yield origin.client
        finally:
            origin.busy -= 1
            if self._closed or self._origins.get(key) is not origin:
                self._close_later(origin)  # closed or evicted meanwhile: close once idle
            self._evict()

    def _evict(self) -> None:
        """Over ``MAX_ORIGINS``: close the least recently used idle clients."""
        while len(self._origins) > MAX_ORIGINS:
            key = next((k for k, origin in self._origins.items() if origin.busy == 0), None)
            if key is None:
                return  # all busy: over the bound only until some finish
            self._close_later(self._origins.pop(key))

    def _close_later(self, origin: _Origin) -> None:
        if origin.busy:
            return  # its lease closes it when the request finishes
        task = asyncio.get_running_loop().create_task(origin.client.aclose())
        self._closing.add(task)
        task.add_done_callback(self._closing.discard)

    async def send(self, delivery: WebhookDelivery) -> Sent | Transient | Permanent:
        request = delivery.request
        body = request.body.encode("utf-8") if request.body is not None else b""
        headers = _headers(request.headers, body, delivery.send_id)
        try:
            async with asyncio.timeout(self._timeout):
                return await self._follow(request.method, request.url, headers, body)
        except DestinationRefused as exc:
            return Permanent(reason=f"destination refused: {exc.message}")
        except DestinationUnresolved as exc:
            return Transient(reason=exc.message)
        except (TimeoutError, httpx.TimeoutException):
            return Transient(reason=f"no response within {self._timeout:g}s")
        except (httpx.UnsupportedProtocol, httpx.InvalidURL) as exc:
            return Permanent(reason=f"invalid URL: {exc}")
        except httpx.ConnectError as exc:
            if _certificate_rejected(exc):
                return Permanent(reason=f"TLS certificate not accepted: {exc}")
            return Transient(reason=f"ConnectError: {exc}")
        except httpx.TransportError as exc:
            return Transient(reason=f"{type(exc).__name__}: {exc}")

    async def _follow(
        self, method: str, url: str, headers: dict[str, str], body: bytes
    ) -> Sent | Transient | Permanent:
        """The request, and each redirect after it (every hop's destination checked)."""
        origin = _origin(url)
        for _hop in range(self._max_redirects + 1):
            destination = await self._policy.check_url(url)
            result = await self._exchange(destination, method, headers, body)
            if not isinstance(result, _Redirect):
                return result
            if not result.location:
                return Permanent(reason=f"HTTP {result.status} redirect without a Location")
            url = str(httpx.URL(url).join(result.location))
            if result.status == 303 or (result.status in (301, 302) and method != "GET"):
                # What clients do (and httpx would): the next request is a GET without a body.
                method, body = "GET", b""
                headers = {k: v for k, v in headers.items() if k.lower() != "content-type"}
            if _origin(url) != origin:
                headers = {k: v for k, v in headers.items() if k.lower() not in CREDENTIAL_HEADERS}
        return Permanent(reason=f"more than {self._max_redirects} redirects")

    async def _exchange(
        self, destination: Destination, method: str, headers: dict[str, str], body: bytes
    ) -> Sent | Transient | Permanent | _Redirect:
        """One request to the first address of ``destination`` that accepts a connection."""
        timestamp = int(self._clock())
        signed = {**headers, TIMESTAMP_HEADER: str(timestamp), SIGNATURE_HEADER: sign(self._secret, timestamp, body)}
        target = httpx.URL(destination.url)
        signed["Host"] = target.netloc.decode("ascii")
        extensions = {} if destination.host_is_address else {"sni_hostname": destination.host}
        error: httpx.ConnectError | None = None
        async with self._lease(destination) as client:
            for address in destination.addresses:
                request = client.build_request(
                    method, _pinned(target, address), headers=signed, content=body or None, extensions=extensions
                )
                try:
                    response = await client.send(request, stream=True)
                except httpx.ConnectError as exc:
                    error = exc  # try the next address the name resolved to
                    continue
                try:
                    snippet = await _read_snippet(response)
                finally:
                    await response.aclose()
                if response.status_code in REDIRECTS:
                    return _Redirect(response.status_code, response.headers.get("location"))
                return classify(response.status_code, response.headers, snippet, now=self._clock())
        raise error or httpx.ConnectError(f"no address to connect to for {destination.host}")


def _headers(given: Mapping[str, str], body: bytes, send_id: str) -> dict[str, str]:
    """The template's headers, with a JSON content type and our user agent unless it sets them,
    and the idempotency key."""
    headers = dict(given)
    if body and not any(name.lower() == "content-type" for name in headers):
        headers["Content-Type"] = "application/json"
    if not any(name.lower() == "user-agent" for name in headers):
        headers["User-Agent"] = USER_AGENT
    headers[IDEMPOTENCY_HEADER] = send_id
    return headers


def _certificate_rejected(exc: BaseException) -> bool:
    """httpx wraps the ssl error; a certificate that does not verify will not on a retry either."""
    seen: BaseException | None = exc
    while seen is not None:
        if isinstance(seen, ssl.SSLCertVerificationError):
            return True
        seen = seen.__cause__ or seen.__context__
    return False


def _origin(url: str) -> tuple[str, str, int | None]:
    parsed = httpx.URL(url)
    return parsed.scheme, parsed.host, parsed.port


def _pinned(url: httpx.URL, address: IPAddress) -> httpx.URL:
    return url.copy_with(host=str(address))


async def _read_snippet(response: httpx.Response) -> str:
    """The start of the response body, for the failure reason; the rest is not read."""
    data = b""
    async for chunk in response.aiter_bytes():
        data += chunk
        if len(data) >= SNIPPET_BYTES:
            break
    return data[:SNIPPET_BYTES].decode("utf-8", "replace").strip()
