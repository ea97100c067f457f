"""Email delivery over SMTP (aiosmtplib): pooled connections, one message per attempt, outcome classified.

The message (``build_message``) is multipart/alternative when both text and HTML exist, with:

- ``Message-ID`` derived from the send_id, so every retry of one send carries the same id and a
  receiving system (or a bounce) can be matched to it;
- ``List-Unsubscribe: <https://…/u/{token}>`` (plus ``<mailto:…>`` when configured) and, for an
  HTTPS link, ``List-Unsubscribe-Post: List-Unsubscribe=One-Click`` (RFC 8058 one-click).

Headers are written with a 998-character line limit: the default 78 makes Python's email package
turn a long unsubscribe URL into RFC 2047 encoded-words, which mail clients do not read as a URL.
We serialise the message ourselves (``serialize``) and hand aiosmtplib the bytes: its
``send_message`` re-serialises with the stock 78-character ``SMTP`` policy, which encoded the
``List-Unsubscribe`` header on the wire whatever policy the message carried.

The relay is a destination a tenant chose: every connection goes through the ``OutboundPolicy``
(``spotzee.providers.safety``). For each new connection the host is resolved and checked, and the
socket is connected to a checked address, never to the name again; TLS (``ssl`` or ``starttls``)
still verifies the certificate against the configured host name. A refused destination is
permanent, a name that does not resolve transient.

SMTP replies classify the outcome: 4xx transient, 5xx permanent (552 on a recipient is "mailbox
full", transient per RFC 5321); connection problems and timeouts transient; a TLS certificate
that does not verify or an unsupported extension (no STARTTLS, no AUTH, no SMTPUTF8 for a
non-ASCII address) permanent, since retrying cannot fix configuration.

Sender contract (``SmtpSender``): build one per provider account and keep it.

- ``SmtpSender(config, policy=..., tls_context=...)``; ``send(delivery)`` may be called any
  number of times, concurrently, from one event loop; it never raises for a delivery failure.
- It keeps at most ``POOL_SIZE`` connections (each carries one message at a time; more
  concurrent sends wait for one), reused across sends: connect + EHLO + STARTTLS + AUTH once per
  connection, not per message. A connection unused for ``IDLE_TIMEOUT`` seconds is closed (QUIT),
  and one is retired after ``MAX_MESSAGES_PER_CONNECTION`` messages (relays cap them).
- A broken connection (closed by the server, a 421, a timeout) is discarded. A send retries on a
  fresh connection only when a *reused* connection failed before the DATA command, i.e. before
  any of the message was handed over; a failure during or after DATA is reported as it is
  (transient when the reply never came: the server may or may not have the message, and the
  delivery loop decides), so a send reaches the server at most once per attempt.
- ``aclose()`` closes every idle connection now and each busy one as its send returns. A
  ``send`` after ``aclose()`` still delivers, on a connection of its own closed right after,
  so a send racing a cache swap is never lost.
"""

from __future__ import annotations

import asyncio
import hashlib
import io
import socket
import ssl
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from email.generator import BytesGenerator
from email.headerregistry import Address
from email.message import EmailMessage
from email.policy import SMTP, SMTPUTF8
from email.utils import format_datetime
from typing import Final

import aiosmtplib
from aiosmtplib.email import parse_address
from aiosmtplib.errors import (
    SMTPException,
    SMTPHeloError,
    SMTPNotSupported,
    SMTPRecipientRefused,
    SMTPResponseException,
)

from spotzee.providers.adapter import EmailDelivery, Permanent, Sent, Transient
from spotzee.providers.email_headers import addr_spec, unsubscribe_headers
from spotzee.providers.safety import DestinationRefused, DestinationUnresolved, IPAddress, OutboundPolicy
from spotzee.schemas.provider_models import SmtpConfig

POLICY: Final = SMTP.clone(max_line_length=998)
UTF8_POLICY: Final = SMTPUTF8.clone(max_line_length=998)  # when an envelope address is not ASCII

POOL_SIZE: Final = 4
"""Connections one sender keeps at most. A few in parallel hide the per-message round trips;
relays limit concurrent connections per client (often to 5-10), so we stay below."""
IDLE_TIMEOUT: Final = 30.0
"""Seconds an unused connection stays open: well below servers' own idle limits (RFC 5321
suggests 5 minutes; Postfix's default is 300 s), so we close it before they do."""
MAX_MESSAGES_PER_CONNECTION: Final = 100
"""Relays cap messages per connection (Postfix and Exchange answer 421 or 452 past theirs); a
connection is retired after this many."""


@dataclass(frozen=True)
class PoolLimits:
    """A sender's pool: ``size`` connections at most, closed after ``idle_timeout`` seconds unused
    or after ``max_messages`` messages."""

    size: int = POOL_SIZE
    idle_timeout: float = IDLE_TIMEOUT
    max_messages: int = MAX_MESSAGES_PER_CONNECTION

    def __post_init__(self) -> None:
        if self.size < 1 or self.idle_timeout <= 0 or self.max_messages < 1:
            raise ValueError("pool limits must be positive")


QUIT_TIMEOUT: Final = 2.0  # a polite QUIT on an idle connection; then the socket is closed anyway


_addr_spec = addr_spec


def message_id(send_id: str, domain: str) -> str:
    """``<hash-of-send_id@domain>``: stable across retries, reveals nothing about the send."""
    digest = hashlib.sha256(send_id.encode("utf-8")).hexdigest()[:32]
    return f"<{digest}@{domain}>"


def build_message(delivery: EmailDelivery, *, now: datetime, message_id_domain: str | None = None) -> EmailMessage:
    email = delivery.email
    sender = _addr_spec(email.from_)
    message = EmailMessage(policy=POLICY)
    message["Subject"] = email.subject
    message["From"] = email.from_
    message["To"] = delivery.to
    if email.reply_to is not None:
        message["Reply-To"] = email.reply_to
    message["Date"] = format_datetime(now.astimezone(UTC))
    message["Message-ID"] = message_id(delivery.send_id, message_id_domain or Address(addr_spec=sender).domain)
    for name, value in unsubscribe_headers(delivery):  # the same on every email path
        message[name] = value
    if email.text is not None and email.html is not None:
        message.set_content(email.text)
        message.add_alternative(email.html, subtype="html")
    elif email.html is not None:
        message.set_content(email.html, subtype="html")
    else:
        message.set_content(email.text or "")
    return message


def serialize(message: EmailMessage, *, utf8: bool = False, eight_bit: bool = True) -> bytes:
    """The bytes for DATA, CRLF line ends, headers folded at 998 characters (see the module doc).

    ``utf8`` (the session uses SMTPUTF8) writes non-ASCII headers as UTF-8 instead of RFC 2047
    encoded-words; without ``eight_bit`` (no 8BITMIME on the server) 8-bit bodies are re-encoded
    as quoted-printable or base64. What aiosmtplib's ``send_message`` decides, with our line limit.
    """
    policy = UTF8_POLICY if utf8 else POLICY
    if not eight_bit:
        policy = policy.clone(cte_type="7bit")
    with io.BytesIO() as buffer:
        BytesGenerator(buffer, policy=policy).flatten(message)
        return buffer.getvalue()


def _by_code(code: int, text: str, *, recipient: bool = False) -> Transient | Permanent:
    reason = f"SMTP {code}: {text}".strip()
    if code >= 500 and not (recipient and code == 552):
        return Permanent(reason=reason)
    return Transient(reason=reason)


@dataclass(eq=False)
class _Connection:
    client: aiosmtplib.SMTP
    idle_since: float = 0.0  # loop time it was last put back
    messages: int = 0


@dataclass(frozen=True)
class _Broken:
    """The connection failed before DATA: nothing of the message reached the server.
    ``outcome`` is how the send is classified if no fresh connection is tried."""

    outcome: Transient


class SmtpSender:
    """Sends ``EmailDelivery`` messages through one SMTP account (``Provider[EmailDelivery]``) over
    a small pool of reused connections; the contract is in the module docstring."""

    def __init__(  # noqa: PLR0913 -- the account, its destination policy, how messages are made, the pool
        self,
        config: SmtpConfig,
        *,
        policy: OutboundPolicy,
        message_id_domain: str | None = None,
        tls_context: ssl.SSLContext | None = None,
        local_hostname: str | None = None,
        clock: Callable[[], datetime] = lambda: datetime.now(UTC),
        pool: PoolLimits = PoolLimits(),
    ) -> None:
        self._config = config
        self._policy = policy
        self._message_id_domain = message_id_domain
        self._tls_context = tls_context
        self._local_hostname = local_hostname
        self._clock = clock
        self._idle_timeout = pool.idle_timeout
        self._max_messages = pool.max_messages
        # A send holds a slot while it uses a connection, and opens one only when none is idle,
        # so open connections (idle + busy) never exceed pool_size.
        self._slots = asyncio.Semaphore(pool.size)
        self._idle: list[_Connection] = []  # oldest first; sends take the newest (the rest idle out)
        self._reaper: asyncio.TimerHandle | None = None
        self._quitting: set[asyncio.Task[None]] = set()
        self._closed = False

    async def aclose(self) -> None:
        """Close the idle connections (QUIT); busy ones close as their sends return."""
        self._closed = True
        if self._reaper is not None:
            self._reaper.cancel()
            self._reaper = None
        idle, self._idle = self._idle, []
        for connection in idle:
            self._retire(connection, polite=True)
        if self._quitting:
            await asyncio.gather(*self._quitting, return_exceptions=True)

    async def send(self, delivery: EmailDelivery) -> Sent | Transient | Permanent:
        message = build_message(delivery, now=self._clock(), message_id_domain=self._message_id_domain)
        sender, recipient = _addr_spec(delivery.email.from_), _addr_spec(delivery.to)
        try:
            # What aiosmtplib refuses to put on a command line; checked before a connection is taken.
            parse_address(sender)
            parse_address(recipient)
        except ValueError as exc:
            return Permanent(reason=f"invalid address: {exc}")
        async with self._slots:
            connection = self._take_idle()
            if connection is not None:
                outcome = await self._transact(connection, message, sender, recipient)
                if not isinstance(outcome, _Broken):
                    return outcome
                # The reused connection had gone stale before DATA: nothing was handed over, so
                # the message goes once over a fresh connection (checked and connected anew).
            opened = await self._open()
            if not isinstance(opened, _Connection):
                return opened
            outcome = await self._transact(opened, message, sender, recipient)
            return outcome.outcome if isinstance(outcome, _Broken) else outcome

    # -- one transaction ---------------------------------------------------------------------

    async def _transact(
        self, connection: _Connection, message: EmailMessage, sender: str, recipient: str
    ) -> Sent | Transient | Permanent | _Broken:
        """MAIL, RCPT, DATA on ``connection``; puts it back in the pool when it is still clean."""
        client = connection.client
        reusable = False  # also on cancellation: a connection in an unknown state is closed
        try:
            utf8 = not (sender + recipient).isascii()
            if utf8 and not client.supports_extension("smtputf8"):
                reusable = True  # nothing was sent
                return Permanent(reason="the server does not support SMTPUTF8, which a non-ASCII address needs")
            eight_bit = client.supports_extension("8bitmime")
            data = serialize(message, utf8=utf8, eight_bit=eight_bit)
            options = [f"SIZE={len(data)}"] if client.supports_extension("size") else []
            options += ["BODY=8BITMIME"] if eight_bit else []
            options += ["SMTPUTF8"] if utf8 else []
            encoding = "utf-8" if utf8 else "ascii"
            try:
                await client.mail(sender, options=options, encoding=encoding)
                await client.rcpt(recipient, encoding=encoding)
            except SMTPResponseException as exc:
                if exc.code == 421:  # the server is closing this connection (idle, too many messages)
                    return _Broken(Transient(reason=f"SMTP {exc.code}: {exc.message}".strip()))
                reusable = client.is_connected and await self._reset(client)
                return _by_code(exc.code, exc.message, recipient=isinstance(exc, SMTPRecipientRefused))
            except (SMTPException, OSError) as exc:  # disconnected, timed out (aiosmtplib closed it)
                return _Broken(Transient(reason=f"{type(exc).__name__}: {exc}"))
            try:
                reply = await client.data(data)
            except SMTPResponseException as exc:  # a reply to DATA or to the message: a clear answer
                reusable = exc.code != 421 and client.is_connected and await self._reset(client)
                return _by_code(exc.code, exc.message)
            except (SMTPException, OSError) as exc:
                # Lost or timed out after DATA: the server may have the message. Reported, never
                # resent here; the delivery loop decides (the Message-ID stays the same).
                return Transient(reason=f"{type(exc).__name__}: {exc}")
            connection.messages += 1
            reusable = True
            return Sent(detail=reply.message, provider_message_id=str(message["Message-ID"]))
        finally:
            self._release(connection, reusable=reusable)

    @staticmethod
    async def _reset(client: aiosmtplib.SMTP) -> bool:
        """RSET after a refused transaction; False when the connection can't be trusted after."""
        try:
            await client.rset()
        except (SMTPException, OSError):
            return False
        return client.is_connected

    # -- the pool ----------------------------------------------------------------------------

    def _take_idle(self) -> _Connection | None:
        now = asyncio.get_running_loop().time()
        while self._idle:
            connection = self._idle.pop()
            if connection.client.is_connected and now - connection.idle_since < self._idle_timeout:
                return connection
            self._retire(connection, polite=connection.client.is_connected)
        return None

    def _release(self, connection: _Connection, *, reusable: bool) -> None:
        keep = (
            reusable
            and not self._closed
            and connection.client.is_connected
            and connection.messages < self._max_messages
        )
        if not keep:
            # QUIT only on a connection between transactions; one left mid-transaction (a
            # failure, a cancelled send) is just closed, so nothing more is said on it.
            self._retire(connection, polite=reusable)
            return
        connection.idle_since = asyncio.get_running_loop().time()
        self._idle.append(connection)
        self._arm_reaper()

    def _arm_reaper(self) -> None:
        if self._reaper is not None or not self._idle:
            return
        loop = asyncio.get_running_loop()
        delay = max(0.0, self._idle[0].idle_since + self._idle_timeout - loop.time())
        self._reaper = loop.call_later(delay, self._reap)

    def _reap(self) -> None:
        """Close the connections idle for ``idle_timeout`` (and any the server closed)."""
        self._reaper = None
        now = asyncio.get_running_loop().time()
        kept: list[_Connection] = []
        for connection in self._idle:
            if connection.client.is_connected and now - connection.idle_since < self._idle_timeout:
                kept.append(connection)
            else:
                self._retire(connection, polite=connection.client.is_connected)
        self._idle = kept
        self._arm_reaper()

    def _retire(self, connection: _Connection, *, polite: bool) -> None:
        client = connection.client
        if not (polite and client.is_connected):
            client.close()
            return
        task = asyncio.get_running_loop().create_task(_quit(client))
        self._quitting.add(task)
        task.add_done_callback(self._quitting.discard)

    async def _open(self) -> _Connection | Transient | Permanent:
        """A new session: destination checked, connected, TLS and login done, EHLO known."""
        config = self._config
        port = config.resolved_port()
        try:
            sock = await self._connect(config.host, port, config.timeout)
        except DestinationRefused as exc:
            return Permanent(reason=f"destination refused: {exc.message}")
        except DestinationUnresolved as exc:
            return Transient(reason=exc.message)
        except OSError as exc:  # refused, unreachable, timed out (TimeoutError is an OSError)
            return Transient(reason=f"cannot connect to {config.host}:{port}: {type(exc).__name__}: {exc}")
        # The socket now belongs to aiosmtplib's transport, which closes it (also on failure); closing
        # it here could free its descriptor while a TLS transport still shuts down over it.
        client = aiosmtplib.SMTP(
            hostname=config.host,  # what TLS verifies the certificate against
            sock=sock,
            username=config.username,
            password=config.password.get_secret_value() if config.password is not None else None,
            use_tls=config.security == "ssl",
            start_tls=config.security == "starttls",
            timeout=config.timeout,
            tls_context=self._tls_context,
            local_hostname=self._local_hostname,
        )
        try:
            failure = await _start_session(client)
        except BaseException:
            client.close()
            raise
        if failure is not None:
            client.close()
            return failure
        return _Connection(client)

    async def _connect(self, host: str, port: int, timeout: float) -> socket.socket:
        """A socket connected to the first checked address of ``host`` that accepts."""
        loop = asyncio.get_running_loop()
        error: OSError | None = None
        async with asyncio.timeout(timeout):
            addresses: tuple[IPAddress, ...] = await self._policy.resolve(host, port)
            for address in addresses:
                family = socket.AF_INET6 if address.version == 6 else socket.AF_INET
                sock = socket.socket(family, socket.SOCK_STREAM)
                sock.setblocking(False)
                try:
                    await loop.sock_connect(sock, (str(address), port))
                except OSError as exc:
                    sock.close()
                    error = exc  # try the next address the name resolved to
                    continue
                except BaseException:
                    sock.close()
                    raise
                return sock
        raise error or OSError(f"no address to connect to for {host}")


async def _start_session(client: aiosmtplib.SMTP) -> Transient | Permanent | None:
    """Greeting, TLS, login and EHLO (the extensions, 8BITMIME, SIZE, SMTPUTF8, known before MAIL);
    how a failure classifies, or None."""
    try:
        await client.connect()
        if client.is_ehlo_or_helo_needed:
            try:
                await client.ehlo()
            except SMTPHeloError:
                await client.helo()
    except SMTPResponseException as exc:
        return _by_code(exc.code, exc.message)
    except SMTPNotSupported as exc:
        return Permanent(reason=f"server does not support what the configuration needs: {exc}")
    except ssl.SSLCertVerificationError as exc:
        return Permanent(reason=f"TLS certificate not accepted: {exc.verify_message or exc}")
    except (SMTPException, OSError) as exc:  # connection refused/lost, timeouts, TLS errors
        return Transient(reason=f"{type(exc).__name__}: {exc}")
    return None


async def _quit(client: aiosmtplib.SMTP) -> None:
    try:
        await client.quit(timeout=QUIT_TIMEOUT)
    except (SMTPException, OSError):
        pass  # it is being closed either way
    finally:
        client.close()
