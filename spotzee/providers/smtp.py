"""Email delivery over SMTP (aiosmtplib): one message per attempt, outcome classified.

The message (``build_message``) is multipart/alternative when both text and HTML exist, with:

- ``Message-ID`` derived from the send_id, so every retry of one send carries the same id and a
  receiving system (or a bounce) can be matched to it;
- ``List-Unsubscribe: <https://…/u/{token}>`` (plus ``<mailto:…>`` when configured) and, for an
  HTTPS link, ``List-Unsubscribe-Post: List-Unsubscribe=One-Click`` (RFC 8058 one-click).

Headers are written with a 998-character line limit: the default 78 makes Python's email package
turn a long unsubscribe URL into RFC 2047 encoded-words, which mail clients do not read as a URL.

The relay is a destination a tenant chose: the connection goes through the ``OutboundPolicy``
(``spotzee.providers.safety``). The host is resolved and checked, and the socket is connected to
a checked address, never to the name again; TLS (``ssl`` or ``starttls``) still verifies the
certificate against the configured host name. A refused destination is permanent, a name that
does not resolve transient.

SMTP replies classify the outcome: 4xx transient, 5xx permanent (552 on a recipient is "mailbox
full", transient per RFC 5321); connection problems and timeouts transient; a TLS certificate
that does not verify or an unsupported extension (no STARTTLS, no AUTH) permanent, since
retrying cannot fix configuration.
"""

from __future__ import annotations

import asyncio
import hashlib
import socket
import ssl
from collections.abc import Callable
from datetime import UTC, datetime
from email.headerregistry import Address
from email.message import EmailMessage
from email.policy import SMTP
from email.utils import format_datetime, getaddresses
from typing import Final

import aiosmtplib
from aiosmtplib.errors import (
    SMTPException,
    SMTPNotSupported,
    SMTPRecipientsRefused,
    SMTPResponseException,
)

from spotzee.providers.adapter import EmailDelivery, Permanent, Sent, Transient
from spotzee.providers.safety import DestinationRefused, DestinationUnresolved, IPAddress, OutboundPolicy
from spotzee.schemas.provider_models import SmtpConfig

POLICY: Final = SMTP.clone(max_line_length=998)
ONE_CLICK: Final = "List-Unsubscribe=One-Click"


def _addr_spec(mailbox: str) -> str:
    """``Name <a@b>`` -> ``a@b`` (mailboxes were validated when the template was created)."""
    return getaddresses([mailbox])[0][1]


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
    targets = [f"<{delivery.unsubscribe_url}>"]
    if delivery.unsubscribe_mailto is not None:
        targets.append(f"<mailto:{_addr_spec(delivery.unsubscribe_mailto)}?subject=unsubscribe>")
    message["List-Unsubscribe"] = ", ".join(targets)
    if delivery.unsubscribe_url.startswith("https://"):
        message["List-Unsubscribe-Post"] = ONE_CLICK  # RFC 8058 requires an HTTPS URI
    if email.text is not None and email.html is not None:
        message.set_content(email.text)
        message.add_alternative(email.html, subtype="html")
    elif email.html is not None:
        message.set_content(email.html, subtype="html")
    else:
        message.set_content(email.text or "")
    return message


def _by_code(code: int, text: str, *, recipient: bool = False) -> Transient | Permanent:
    reason = f"SMTP {code}: {text}".strip()
    if code >= 500 and not (recipient and code == 552):
        return Permanent(reason=reason)
    return Transient(reason=reason)


class SmtpSender:
    """Sends ``EmailDelivery`` messages through one SMTP account (``Provider[EmailDelivery]``).

    A connection per message: simple and robust for now; pooling is a later optimisation.
    """

    def __init__(
        self,
        config: SmtpConfig,
        *,
        policy: OutboundPolicy,
        message_id_domain: str | None = None,
        tls_context: ssl.SSLContext | None = None,
        local_hostname: str | None = None,
        clock: Callable[[], datetime] = lambda: datetime.now(UTC),
    ) -> None:
        self._config = config
        self._policy = policy
        self._message_id_domain = message_id_domain
        self._tls_context = tls_context
        self._local_hostname = local_hostname
        self._clock = clock

    async def aclose(self) -> None:
        """Nothing held between messages."""

    async def send(self, delivery: EmailDelivery) -> Sent | Transient | Permanent:
        config = self._config
        message = build_message(delivery, now=self._clock(), message_id_domain=self._message_id_domain)
        password = config.password.get_secret_value() if config.password is not None else None
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
        try:
            # ``hostname`` is the configured name: what TLS verifies the certificate against.
            _refused, reply = await aiosmtplib.send(
                message,
                sender=_addr_spec(delivery.email.from_),
                recipients=[_addr_spec(delivery.to)],
                hostname=config.host,
                sock=sock,
                username=config.username,
                password=password,
                use_tls=config.security == "ssl",
                start_tls=config.security == "starttls",
                timeout=config.timeout,
                tls_context=self._tls_context,
                local_hostname=self._local_hostname,
            )
        except SMTPRecipientsRefused as exc:
            first = exc.recipients[0]
            return _by_code(first.code, first.message, recipient=True)
        except SMTPResponseException as exc:
            return _by_code(exc.code, exc.message)
        except SMTPNotSupported as exc:
            return Permanent(reason=f"server does not support what the configuration needs: {exc}")
        except ssl.SSLCertVerificationError as exc:
            return Permanent(reason=f"TLS certificate not accepted: {exc.verify_message or exc}")
        except (SMTPException, OSError) as exc:  # connection refused/lost, timeouts, TLS errors
            return Transient(reason=f"{type(exc).__name__}: {exc}")
        return Sent(detail=reply, provider_message_id=str(message["Message-ID"]))

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
