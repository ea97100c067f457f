"""Where outbound HTTP may go: a webhook URL is a request a tenant makes from inside our network.

``check_destination`` resolves the host and refuses it when any address it resolves to is not a
public unicast address (loopback, private, link-local -- cloud metadata lives at 169.254.169.254 --
shared, reserved, multicast, unspecified), looking through IPv6 forms that embed an IPv4 address
(``::ffff:127.0.0.1``, NAT64 ``64:ff9b::/96``, 6to4, Teredo). Settings may allow private addresses
or specific networks (tests allow loopback). The caller connects to the addresses returned, not to
the name again, so a second DNS answer cannot differ from the one checked (DNS rebinding), and
calls this again for every redirect hop.
"""

from __future__ import annotations

import asyncio
import ipaddress
import socket
from collections.abc import Awaitable, Callable, Iterable, Sequence
from dataclasses import dataclass
from ipaddress import IPv4Address, IPv4Network, IPv6Address, IPv6Network
from typing import Final
from urllib.parse import urlsplit

from spotzee.errors import SpotzeeError

IPAddress = IPv4Address | IPv6Address
IPNetwork = IPv4Network | IPv6Network
Resolver = Callable[[str, int], Awaitable[Sequence[str]]]
"""``(host, port) -> addresses``; the default asks the system resolver (getaddrinfo)."""

DEFAULT_PORTS: Final = {"http": 80, "https": 443}
_NAT64: Final = IPv6Network("64:ff9b::/96")


class DestinationRefused(SpotzeeError):
    """The URL points somewhere outbound requests may not go (a permanent failure)."""

    status_code = 400
    code = "destination_refused"


class DestinationUnresolved(SpotzeeError):
    """The host name did not resolve (DNS may recover: a transient failure)."""

    status_code = 502
    code = "destination_unresolved"


@dataclass(frozen=True)
class Destination:
    """A checked URL: connect to one of ``addresses``, present ``host`` (Host header, TLS SNI)."""

    url: str
    scheme: str
    host: str
    port: int
    addresses: tuple[IPAddress, ...]

    @property
    def host_is_address(self) -> bool:
        try:
            ipaddress.ip_address(self.host)
        except ValueError:
            return False
        return True


def _embedded_ipv4(ip: IPv6Address) -> list[IPv4Address]:
    found: list[IPv4Address] = []
    if ip.ipv4_mapped is not None:
        found.append(ip.ipv4_mapped)
    if ip in _NAT64:
        found.append(IPv4Address(int(ip) & 0xFFFFFFFF))
    if ip.sixtofour is not None:
        found.append(ip.sixtofour)
    if ip.teredo is not None:
        found.append(ip.teredo[1])
    return found


def _category(ip: IPAddress) -> str | None:
    """Why ``ip`` is not a public unicast address, or None when it is."""
    if ip.is_unspecified:
        return "unspecified"
    if ip.is_multicast:
        return "multicast"
    if ip.is_loopback:
        return "loopback"
    if ip.is_link_local:
        return "link-local"
    if ip.is_private:
        return "private"
    if ip.is_reserved:
        return "reserved"
    if not ip.is_global:
        return "non-public"  # shared address space (100.64/10), documentation ranges, ...
    return None


def address_problem(
    ip: IPAddress, *, allow_private: bool = False, allowed_networks: Iterable[IPNetwork] = ()
) -> str | None:
    """Why connecting to ``ip`` is refused, or None when it is allowed."""
    if any(ip.version == network.version and ip in network for network in allowed_networks):
        return None
    if isinstance(ip, IPv6Address):
        embedded = _embedded_ipv4(ip)
        for inner in embedded:
            problem = address_problem(inner, allow_private=allow_private, allowed_networks=allowed_networks)
            if problem is not None:
                return f"{problem} (embedded in {ip})"
        if ip.ipv4_mapped is not None or ip in _NAT64:
            return None  # these mean their IPv4 address, which passed
    category = _category(ip)
    if category is None:
        return None
    # Never a destination, whatever the settings.
    if category in ("unspecified", "multicast"):
        return f"{category} address {ip}"
    return None if allow_private else f"{category} address {ip}"


async def system_resolver(host: str, port: int) -> list[str]:
    infos = await asyncio.get_running_loop().getaddrinfo(host, port, type=socket.SOCK_STREAM)
    return [str(info[4][0]) for info in infos]


async def check_destination(
    url: str,
    *,
    allow_private: bool,
    allowed_networks: Sequence[IPNetwork] = (),
    resolver: Resolver | None = None,
) -> Destination:
    """Resolve ``url``'s host and return it when every address is allowed.

    Raises ``DestinationRefused`` (not http(s), no host, a refused address) or
    ``DestinationUnresolved`` (the name does not resolve).
    """
    try:
        parts = urlsplit(url)
        port = parts.port
    except ValueError as exc:
        raise DestinationRefused(f"invalid URL: {exc}") from None
    scheme = parts.scheme.lower()
    if scheme not in DEFAULT_PORTS:
        raise DestinationRefused(f"scheme {scheme or '(none)'!r} is not http or https")
    host = (parts.hostname or "").rstrip(".")
    if not host:
        raise DestinationRefused("URL has no host")
    port = port or DEFAULT_PORTS[scheme]
    try:
        addresses: list[IPAddress] = [ipaddress.ip_address(host)]
    except ValueError:
        addresses = await _resolve(host, port, resolver or system_resolver)
    for ip in addresses:
        problem = address_problem(ip, allow_private=allow_private, allowed_networks=allowed_networks)
        if problem is not None:
            raise DestinationRefused(f"{host} resolves to a {problem}")
    return Destination(url=url, scheme=scheme, host=host, port=port, addresses=tuple(addresses))


async def _resolve(host: str, port: int, resolver: Resolver) -> list[IPAddress]:
    try:
        answers = await resolver(host, port)
    except (OSError, UnicodeError) as exc:  # socket.gaierror is an OSError; bad IDNA a UnicodeError
        raise DestinationUnresolved(f"cannot resolve {host}: {exc}") from None
    addresses: list[IPAddress] = []
    for answer in answers:
        ip = ipaddress.ip_address(answer.split("%", 1)[0])  # drop an IPv6 zone (fe80::1%eth0)
        if ip not in addresses:
            addresses.append(ip)
    if not addresses:
        raise DestinationUnresolved(f"{host} has no addresses")
    return addresses
