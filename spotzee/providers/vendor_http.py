"""One vendor HTTP API (Twilio, Vonage, ...): requests to its root over kept-alive connections to
addresses the outbound policy checked.

A ``VendorClient`` belongs to one provider: its ``base_url`` is fixed, so its connections all go
to one host and are reused from send to send (``send`` may run concurrently). Every request
resolves the host through the ``OutboundPolicy`` (``spotzee.providers.safety``) and connects to a
checked address, never to the name again, presenting the host name (``Host``, TLS SNI and
certificate check), as ``spotzee.providers.webhook`` does; pooled connections are keyed by that
address, and only this provider's host ever uses them. Redirects are not followed (a vendor API
answers, it does not redirect) and environment proxies are ignored.

``exchange`` makes at most one request: the next resolved address is tried only when a
connection could not be made at all (nothing was sent). ``outcome_of_error`` maps what can go
wrong on the way to the adapter's ``Outcome``: a refused destination, an invalid URL or a TLS
certificate that does not verify are permanent; timeouts, connection errors and a name that does
not resolve transient. ``http_status_outcome`` maps a status the vendor's body does not explain:
429 and 5xx transient (``Retry-After`` honoured), 408/425 too, other 4xx permanent.
"""

from __future__ import annotations

import asyncio
import ssl
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Final

import httpx

from spotzee.providers.adapter import Permanent, Transient
from spotzee.providers.safety import DestinationRefused, DestinationUnresolved, OutboundPolicy
from spotzee.providers.webhook import parse_retry_after

MAX_BODY_BYTES: Final = 64 * 1024  # a vendor's answer is small; more is not read
SNIPPET_CHARS: Final = 300
TRANSIENT_STATUSES: Final = frozenset({408, 425, 429})
# As many idle connections kept as may be open: concurrent sends beyond that wait for one (within
# the send's timeout) rather than open and close connections at every send.
KEEPALIVE: Final = httpx.Limits(max_connections=64, max_keepalive_connections=64, keepalive_expiry=15.0)


@dataclass(frozen=True)
class VendorResponse:
    status: int
    headers: httpx.Headers
    body: bytes

    def snippet(self) -> str:
        return self.body[:SNIPPET_CHARS].decode("utf-8", "replace").strip()

    def retry_after(self, now: float) -> float | None:
        return parse_retry_after(self.headers.get("retry-after"), now=now)


class VendorClient:
    """Requests to one vendor API root; ``aclose`` when the provider is replaced or delivery stops."""

    def __init__(  # noqa: PLR0913 -- the client's settings, all but base_url by keyword
        self,
        base_url: str,
        *,
        policy: OutboundPolicy,
        timeout: float,
        user_agent: str,
        tls_context: ssl.SSLContext | None = None,
        clock: Callable[[], float] = time.time,
        http2: bool = False,  # a vendor that speaks only HTTP/2 (APNs); needs the h2 package
    ) -> None:
        self.base_url = base_url.rstrip("/")
        self.timeout = timeout
        self.clock = clock
        self._policy = policy
        self._user_agent = user_agent
        self._client = httpx.AsyncClient(
            follow_redirects=False,
            trust_env=False,
            timeout=httpx.Timeout(timeout),
            limits=KEEPALIVE,
            verify=tls_context or True,
            http2=http2,
        )

    async def aclose(self) -> None:
        await self._client.aclose()

    async def exchange(  # noqa: PLR0913 -- the request's parts, each optional
        self,
        method: str,
        path: str,
        *,
        headers: Mapping[str, str] | None = None,
        data: Mapping[str, str] | None = None,
        json: object = None,
        content: bytes | None = None,
        auth: tuple[str, str] | None = None,
    ) -> VendorResponse:
        """One request to ``base_url + path`` within ``timeout`` (raises what ``outcome_of_error`` maps)."""
        async with asyncio.timeout(self.timeout):
            destination = await self._policy.check_url(self.base_url + path)
            target = httpx.URL(destination.url)
            sent_headers = {"User-Agent": self._user_agent, "Accept": "application/json", **(headers or {})}
            sent_headers["Host"] = target.netloc.decode("ascii")
            extensions = {} if destination.host_is_address else {"sni_hostname": destination.host}
            error: httpx.ConnectError | None = None
            for address in destination.addresses:
                request = self._client.build_request(
                    method,
                    target.copy_with(host=str(address)),
                    headers=sent_headers,
                    data=data,
                    json=json,
                    content=content,  # bytes sent as given (a signed body: SigV4 hashes them)
                    extensions=extensions,
                )
                try:
                    response = await self._client.send(request, stream=True, auth=auth)
                except httpx.ConnectError as exc:
                    if _certificate_rejected(exc):
                        raise
                    error = exc  # no connection, nothing sent: the next address the name resolved to
                    continue
                try:
                    body = await _read_limited(response)
                finally:
                    await response.aclose()
                return VendorResponse(response.status_code, response.headers, body)
            raise error or httpx.ConnectError(f"no address to connect to for {destination.host}")


def outcome_of_error(exc: BaseException, timeout: float) -> Transient | Permanent | None:
    """The outcome of an exception ``exchange`` raised, or None for one that is not ours to map."""
    if isinstance(exc, DestinationRefused):
        return Permanent(reason=f"destination refused: {exc.message}")
    if isinstance(exc, DestinationUnresolved):
        return Transient(reason=exc.message)
    if isinstance(exc, TimeoutError | httpx.TimeoutException):
        return Transient(reason=f"no response within {timeout:g}s")
    if isinstance(exc, httpx.UnsupportedProtocol | httpx.InvalidURL):
        return Permanent(reason=f"invalid URL: {exc}")
    if isinstance(exc, httpx.ConnectError) and _certificate_rejected(exc):
        return Permanent(reason=f"TLS certificate not accepted: {exc}")
    if isinstance(exc, httpx.TransportError):
        return Transient(reason=f"{type(exc).__name__}: {exc}")
    return None


def http_status_outcome(response: VendorResponse, reason: str, *, now: float) -> Transient | Permanent:
    """A refusal by HTTP status: 408, 425, 429 and 5xx transient (with ``Retry-After``), else permanent."""
    summary = f"HTTP {response.status}: {reason}" if reason else f"HTTP {response.status}"
    if response.status in TRANSIENT_STATUSES or response.status >= 500:
        return Transient(reason=summary, retry_after=response.retry_after(now))
    return Permanent(reason=summary)


def _certificate_rejected(exc: BaseException) -> bool:
    """httpx wraps the ssl error; a certificate that does not verify will not on a retry either."""
    seen: BaseException | None = exc
    while seen is not None:
        if isinstance(seen, ssl.SSLCertVerificationError):
            return True
        seen = seen.__cause__ or seen.__context__
    return False


async def _read_limited(response: httpx.Response) -> bytes:
    data = b""
    async for chunk in response.aiter_bytes():
        data += chunk
        if len(data) >= MAX_BODY_BYTES:
            break
    return data[:MAX_BODY_BYTES]
