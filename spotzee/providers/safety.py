"""Where outbound connections may go: every destination a tenant configures (an SMTP relay, a
webhook URL, any provider added later) is a connection we make from inside our network.

``OutboundPolicy`` is the one policy, built once from Settings (``outbound_allow_private``,
``outbound_allowed_networks``) and handed to every sender (``spotzee.providers.registry``) and to
the services that accept destinations. It is applied twice:

- **when a destination is written** (``check_host``): a literal address, including the numeric
  forms a resolver accepts (``2130706433``, ``0x7f.1``, ``017700000001``, ``127.1`` all mean
  127.0.0.1), is checked as that address; a name reserved for internal use (``localhost``,
  ``*.internal`` -- ``metadata.google.internal`` --, ``*.local``, ``*.home.arpa``,
  ``*.localdomain``, a name without a dot) is refused unless the allow-list covers what it
  resolves to. Other names are not resolved here (DNS can change before a send anyway);
- **when connecting** (``resolve`` / ``check_url``): the host is resolved and refused when any
  address is not a public unicast address (loopback, private, link-local -- cloud metadata lives
  at 169.254.169.254 --, shared, reserved, multicast, unspecified), looking through IPv6 forms
  that embed an IPv4 address (``::ffff:127.0.0.1``, NAT64 ``64:ff9b::/96``, 6to4, Teredo). The
  caller connects to the addresses returned, not to the name again, so a second DNS answer
  cannot differ from the one checked (DNS rebinding), and checks again for every redirect hop.

Settings may allow private addresses or specific networks (tests and private relays allow
loopback); unspecified and multicast addresses are never a destination.
"""

from __future__ import annotations

import asyncio
import ipaddress
import re
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


def literal_address(host: str) -> IPAddress | None:
    """The address ``host`` denotes without DNS, or None for a name.

    Besides canonical forms this reads what ``inet_aton`` (and so ``getaddrinfo``) reads: one to
    four parts, each decimal, octal (``0`` prefix) or hex (``0x``), so ``2130706433``, ``0x7f.1``,
    ``017700000001`` and ``127.1`` are all 127.0.0.1 -- a check must see the address the
    connection would go to.
    """
    bare = host.strip("[]").split("%", 1)[0]
    try:
        return ipaddress.ip_address(bare)
    except ValueError:
        pass
    if _NUMERIC_HOST.match(host):
        try:
            return IPv4Address(socket.inet_aton(host))
        except OSError:
            return None
    return None


_NUMERIC_HOST: Final = re.compile(r"^(0x[0-9a-f]*|[0-9]+)(\.(0x[0-9a-f]*|[0-9]+)){0,3}$", re.IGNORECASE)
# Names that only resolve inside a network: RFC 6761 (localhost), RFC 6762 (.local, mDNS), ICANN's
# private-use .internal (metadata.google.internal), RFC 8375 (home.arpa), and the usual hosts-file
# domain. A name without a dot is completed by the resolver's search list: internal as well.
INTERNAL_SUFFIXES: Final = ("localhost", "local", "internal", "home.arpa", "localdomain")


def internal_name(host: str) -> bool:
    name = host.lower().rstrip(".")
    return "." not in name or any(name == s or name.endswith("." + s) for s in INTERNAL_SUFFIXES)


@dataclass(frozen=True)
class OutboundPolicy:
    """Where a tenant-configured connection may go; the same object for every provider.

    ``allow_private`` admits every unicast address; ``allowed_networks`` admits those networks
    (e.g. 127.0.0.0/8 for a relay on the same host). ``resolver`` is injectable for tests.
    """

    allow_private: bool = False
    allowed_networks: tuple[IPNetwork, ...] = ()
    resolver: Resolver | None = None

    @classmethod
    def from_settings(cls, allow_private: bool, allowed_networks: Iterable[str]) -> OutboundPolicy:
        return cls(allow_private, tuple(ipaddress.ip_network(n, strict=False) for n in allowed_networks))

    def problem(self, ip: IPAddress) -> str | None:
        """Why connecting to ``ip`` is refused, or None."""
        return address_problem(ip, allow_private=self.allow_private, allowed_networks=self.allowed_networks)

    async def check_host(self, host: str, port: int) -> None:
        """At write time: refuse a destination that is internal by its very form.

        Raises ``DestinationRefused``. A public-looking name passes: it is checked on the
        addresses it resolves to when connecting (``resolve``).
        """
        address = literal_address(host)
        if address is not None:
            problem = self.problem(address)
            if problem is not None:
                raise DestinationRefused(f"{host} is a {problem}")
            return
        if not internal_name(host) or self.allow_private:
            return
        if not self.allowed_networks:
            raise DestinationRefused(f"{host} is an internal host name")
        # An operator's private network: the name must resolve inside what the allow-list admits.
        try:
            async with asyncio.timeout(WRITE_RESOLVE_TIMEOUT):
                await self.resolve(host, port)
        except (DestinationUnresolved, TimeoutError):
            raise DestinationRefused(f"{host} is an internal host name that does not resolve") from None

    async def resolve(self, host: str, port: int) -> tuple[IPAddress, ...]:
        """At connect time: the addresses to connect to, every one allowed.

        Raises ``DestinationRefused`` (a refused address) or ``DestinationUnresolved``.
        """
        literal = literal_address(host)
        addresses = [literal] if literal is not None else await _resolve(host, port, self.resolver or system_resolver)
        for ip in addresses:
            problem = self.problem(ip)
            if problem is not None:
                raise DestinationRefused(f"{host} resolves to a {problem}")
        return tuple(addresses)

    async def check_url(self, url: str) -> Destination:
        """Resolve ``url``'s host and return it when every address is allowed (http(s) only).

        Raises ``DestinationRefused`` (not http(s), no host, a refused address) or
        ``DestinationUnresolved`` (the name does not resolve).
        """
        scheme, host, port = _split_url(url)
        return Destination(url=url, scheme=scheme, host=host, port=port, addresses=await self.resolve(host, port))

    async def check_url_template(self, url: str) -> None:
        """At write time, a URL whose host may be a Liquid merge tag: a written-out host is checked
        (``check_host``); a templated one is checked after rendering, when connecting."""
        authority = url.split("://", 1)[-1].split("/", 1)[0].split("?", 1)[0].split("#", 1)[0]
        if "{{" in authority or "{%" in authority:
            return
        _scheme, host, port = _split_url(url)
        await self.check_host(host, port)


WRITE_RESOLVE_TIMEOUT: Final = 5.0
"""Seconds an internal name may take to resolve when a destination is written (allow-list set)."""


def _split_url(url: str) -> tuple[str, str, int]:
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
    return scheme, host, port or DEFAULT_PORTS[scheme]


async def check_destination(
    url: str,
    *,
    allow_private: bool,
    allowed_networks: Sequence[IPNetwork] = (),
    resolver: Resolver | None = None,
) -> Destination:
    """``OutboundPolicy(...).check_url(url)``, for callers holding loose settings."""
    return await OutboundPolicy(allow_private, tuple(allowed_networks), resolver).check_url(url)


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
