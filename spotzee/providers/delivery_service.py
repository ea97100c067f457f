"""Delivering one queued send: consent, template, provider, render, one provider call.

Runtime-neutral: the caller gives the contact as it is *now* (consent is checked at send time:
an unsubscribe stops a send already queued) and the project's definitions, and records the
result. ``Deliverer.deliver`` makes at most one provider call.

Channels: ``email`` (SMTP, SendGrid, Postmark, SES) to the contact's ``email``, ``webhook``,
``sms`` (Twilio, Vonage) and ``whatsapp`` (Meta's Cloud API; Twilio for session texts) to the
contact's ``phone``; consent is the channel's (``subscriptions.<channel>``). Senders are kept per
provider version (``Senders``): connections are reused from send to send, a sender replaced by a
newer version of its provider is closed once its sends in flight are done, and
``Deliverer.aclose`` closes them all when delivery stops.
"""

from __future__ import annotations

import asyncio
import logging
import ssl
from collections import OrderedDict
from collections.abc import AsyncIterator, Awaitable, Callable, Iterable
from contextlib import asynccontextmanager
from dataclasses import dataclass
from typing import Literal, TypeVar

from pydantic import SecretStr, ValidationError

from spotzee.domain.segments import subscription_state
from spotzee.domain.templates import (
    TemplateRenderError,
    event_variables,
    render_email,
    render_push,
    render_sms,
    render_webhook,
    render_whatsapp,
    template_variables,
)
from spotzee.providers.adapter import EmailDelivery, Permanent, Sent, Transient, WebhookDelivery
from spotzee.providers.apns import ApnsSender
from spotzee.providers.fcm import FcmSender
from spotzee.providers.meta_whatsapp import MetaWhatsAppSender
from spotzee.providers.postmark import PostmarkSender
from spotzee.providers.push import NO_DEVICE, PushDelivery, combine, device_send_id
from spotzee.providers.safety import OutboundPolicy
from spotzee.providers.sealing import SecretBox, SecretsUnreadable, open_definition
from spotzee.providers.sendgrid import SendgridSender
from spotzee.providers.ses import SesSender
from spotzee.providers.sms import SmsDelivery
from spotzee.providers.smtp import SmtpSender
from spotzee.providers.twilio import TwilioSender
from spotzee.providers.unsubscribe_tokens import make_token, unsubscribe_url
from spotzee.providers.vonage import VonageSender
from spotzee.providers.webhook import WebhookSender
from spotzee.providers.whatsapp import WhatsAppDelivery
from spotzee.schemas.common import epoch_ms
from spotzee.schemas.contact_models import ContactState
from spotzee.schemas.messages import SendCommand
from spotzee.schemas.provider_models import (
    EMAIL_CONFIGS,
    ApnsConfig,
    FcmConfig,
    MetaWhatsAppConfig,
    PostmarkConfig,
    ProviderDefinition,
    SendgridConfig,
    SesConfig,
    SmtpConfig,
    StoredProvider,
    TwilioConfig,
    VonageConfig,
    WebhookConfig,
)
from spotzee.schemas.records import ContactPatch, record_key
from spotzee.schemas.template_models import (
    EmailContent,
    PushContent,
    SmsContent,
    TemplateDefinition,
    WebhookContent,
    WhatsAppTemplateContent,
    WhatsAppTextContent,
)
from spotzee.services.template_workers import TemplateWorkers
from spotzee.streams.record_codec import dumps

log = logging.getLogger(__name__)

Status = Literal["sent", "retry", "failed", "suppressed"]
MAX_KEPT_SENDERS = 256  # providers with a kept sender (and its connections) per delivery agent
R = TypeVar("R")
# Where a send of each channel goes, as the suppression list keys it (push tokens are checked one
# by one where a push send picks them).
SUPPRESSIBLE_ADDRESSES: dict[str, Callable[[ContactState], str | None]] = {
    "email": lambda contact: contact.email,
    "sms": lambda contact: contact.phone,
    "whatsapp": lambda contact: contact.phone,
}


@dataclass(frozen=True)
class DeliveryResult:
    status: Status
    detail: dict[str, object]
    retry_after: float | None = None


@dataclass(frozen=True)
class DeliverySettings:
    public_base_url: str
    unsubscribe_secret: SecretStr
    outbound: OutboundPolicy  # where every provider may connect (no default: a sender can't skip it)
    tls_context: ssl.SSLContext | None = None


@dataclass
class _Kept:
    version: int
    sender: object  # one of the senders; ``Senders.lease`` hands it back typed by its caller
    users: int = 0
    retired: bool = False


class Senders:
    """One sender per provider, made for its current version and kept (connections reused)."""

    def __init__(self, settings: DeliverySettings) -> None:
        self.settings = settings
        self._kept: OrderedDict[str, _Kept] = OrderedDict()
        self._loop: asyncio.AbstractEventLoop | None = None

    def make(self, provider: ProviderDefinition) -> object:
        settings, config = self.settings, provider.config
        if isinstance(config, SmtpConfig):
            return SmtpSender(config, policy=settings.outbound, tls_context=settings.tls_context)
        if isinstance(config, SendgridConfig):
            return SendgridSender(config, policy=settings.outbound, tls_context=settings.tls_context)
        if isinstance(config, PostmarkConfig):
            return PostmarkSender(config, policy=settings.outbound, tls_context=settings.tls_context)
        if isinstance(config, SesConfig):
            return SesSender(config, policy=settings.outbound, tls_context=settings.tls_context)
        if isinstance(config, WebhookConfig):
            return WebhookSender(config, policy=settings.outbound, tls_context=settings.tls_context)
        if isinstance(config, TwilioConfig):
            callback = f"{settings.public_base_url.rstrip('/')}/hooks/{provider.id}"
            return TwilioSender(
                config,
                policy=settings.outbound,
                status_callback=callback,
                channel=provider.channel,
                tls_context=settings.tls_context,
            )
        if isinstance(config, MetaWhatsAppConfig):
            return MetaWhatsAppSender(config, policy=settings.outbound, tls_context=settings.tls_context)
        if isinstance(config, FcmConfig):
            return FcmSender(config, policy=settings.outbound, tls_context=settings.tls_context)
        if isinstance(config, ApnsConfig):
            return ApnsSender(config, policy=settings.outbound, tls_context=settings.tls_context)
        return VonageSender(config, policy=settings.outbound, tls_context=settings.tls_context)

    def _current(self, provider: ProviderDefinition) -> tuple[_Kept, _Kept | None]:
        loop = asyncio.get_running_loop()
        if self._loop is not loop:
            # Connections belong to the event loop that made them; another loop starts afresh
            # (the old one is gone, and its connections with it).
            self._loop, self._kept = loop, OrderedDict()
        kept = self._kept.get(provider.id)
        if kept is not None and kept.version == provider.version:
            return kept, None
        fresh = _Kept(provider.version, self.make(provider))
        self._kept[provider.id] = fresh
        if kept is not None:
            kept.retired = True
        return fresh, kept

    def _evicted(self) -> list[_Kept]:
        """Idle senders beyond ``MAX_KEPT_SENDERS``, least recently used first (a deleted
        provider's sender is never asked for again: it ages out)."""
        idle = [(pid, k) for pid, k in self._kept.items() if k.users == 0]
        extra = len(self._kept) - MAX_KEPT_SENDERS
        out = idle[: max(0, extra)]
        for pid, _ in out:
            del self._kept[pid]
        return [k for _, k in out]

    @asynccontextmanager
    async def lease(self, provider: ProviderDefinition) -> AsyncIterator[object]:
        """The provider's sender for one send; a replaced one is closed when its last send ends."""
        kept, replaced = self._current(provider)
        self._kept.move_to_end(provider.id)  # most recently used last
        kept.users += 1
        try:
            if replaced is not None and replaced.users == 0:
                await _close(replaced.sender)
            for old in self._evicted():
                old.retired = True
                await _close(old.sender)
            yield kept.sender
        finally:
            kept.users -= 1
            if kept.retired and kept.users == 0:
                await _close(kept.sender)

    async def aclose(self) -> None:
        """Close every sender (delivery stops; nothing is sending any more)."""
        kept, self._kept = list(self._kept.values()), OrderedDict()
        for item in kept:
            item.retired = True
            await _close(item.sender)

    def __len__(self) -> int:
        return len(self._kept)


async def _close(sender: object) -> None:
    close = getattr(sender, "aclose", None)
    if close is None:
        return
    try:
        await close()
    except Exception:  # a sender failing to close must not stop the others from closing
        log.exception("closing a provider sender failed")


class Deliverer:
    def __init__(
        self,
        settings: DeliverySettings,
        template: Callable[[str, str], TemplateDefinition | None],
        provider_for: Callable[[str, str], ProviderDefinition | None],
        *,
        suppressed: Callable[[str, str, str], str | None] | None = None,
    ) -> None:
        self.settings = settings
        # The project's suppression list (``suppression_service.suppression_lookup``): the reason
        # of the destination's entry, or None. Set by whoever builds the deliverer on both runtimes.
        self.suppressed = suppressed
        self.template = template
        self.provider_for = provider_for
        # Set by the delivery agent that owns them: renders then run in worker processes with a
        # hard deadline (a slow template fails its own send, never stalls the others).
        self.workers: TemplateWorkers | None = None
        self.senders = Senders(settings)
        # Appends records to the log (the runtime's ``append``), set by the runtime that owns the
        # deliverer: how a push token reported unregistered leaves its contact (a ContactPatch
        # through the contact processor, never a write to the contacts table).
        self.write_back: Callable[[list[tuple[str, bytes]]], Awaitable[object]] | None = None

    async def aclose(self) -> None:
        """Release every kept sender's connections: delivery stops (called on its event loop)."""
        await self.senders.aclose()

    async def _render(self, function: Callable[..., R], *args: object) -> R:
        if self.workers is None:
            return function(*args)
        rendered: R = await self.workers.call(function, *args)
        return rendered

    async def deliver(self, command: SendCommand, contact: ContactState | None) -> DeliveryResult:
        if contact is None:
            return DeliveryResult("failed", {"reason": "the contact no longer exists"})
        if subscription_state(contact, command.channel) == "unsubscribed":
            return DeliveryResult("suppressed", {"reason": f"unsubscribed from {command.channel}"})
        reason = self._suppressed_address(command, contact)
        if reason is not None:
            return DeliveryResult("suppressed", {"reason": f"suppressed address ({reason})"})
        template = self.template(command.project_id, command.template_id)
        if template is None:
            return DeliveryResult("failed", {"reason": f"template {command.template_id} not found"})
        try:
            provider = self.provider_for(command.project_id, command.channel)
        except SecretsUnreadable as exc:
            # This process's SPOTZEE_SECRETS_KEY is not the one the provider was sealed with: an
            # operator's mistake to fix, not the send's; retried (with backoff) and logged each time.
            log.error("send %s: provider secrets unreadable: %s", command.send_id, exc.message)
            return DeliveryResult("retry", {"reason": f"provider secrets unreadable: {exc.message}"})
        if provider is None:
            return DeliveryResult("failed", {"reason": f"no {command.channel} provider in the project"})
        return await self._by_channel(command, contact, template, provider)

    def _suppressed_address(self, command: SendCommand, contact: ContactState) -> str | None:
        """The reason the address this send goes to is on the project's suppression list, if it is
        (the contact's email for email, its phone for sms and whatsapp)."""
        if self.suppressed is None:
            return None
        where = SUPPRESSIBLE_ADDRESSES.get(command.channel)
        address = where(contact) if where is not None else None
        return self.suppressed(command.project_id, command.channel, address) if address else None

    async def _by_channel(
        self, command: SendCommand, contact: ContactState, template: TemplateDefinition, provider: ProviderDefinition
    ) -> DeliveryResult:
        """The channel's own path: its content with a provider able to send it; render errors failed."""
        try:
            if isinstance(template.content, EmailContent) and isinstance(provider.config, EMAIL_CONFIGS):
                return await self._email(command, contact, template.content, provider)
            if isinstance(template.content, WebhookContent) and isinstance(provider.config, WebhookConfig):
                return await self._webhook(command, contact, template.content, provider)
            if isinstance(template.content, SmsContent) and isinstance(provider.config, TwilioConfig | VonageConfig):
                return await self._sms(command, contact, template.content, provider)
            if isinstance(template.content, WhatsAppTemplateContent | WhatsAppTextContent):
                return await self._whatsapp(command, contact, template.content, provider)
            if isinstance(template.content, PushContent) and isinstance(provider.config, FcmConfig | ApnsConfig):
                return await self._push(command, contact, template.content, provider)
        except TemplateRenderError as exc:
            return DeliveryResult("failed", {"reason": "render error", "field": exc.field, "error": exc.reason})
        return DeliveryResult("failed", {"reason": f"provider {provider.id} can't send a {template.channel} template"})

    async def _email(
        self, command: SendCommand, contact: ContactState, content: EmailContent, provider: ProviderDefinition
    ) -> DeliveryResult:
        if not contact.email:
            return DeliveryResult("failed", {"reason": "the contact has no email address"})
        token = make_token(
            self.settings.unsubscribe_secret,
            command.project_id,
            contact.id,
            "email",
            contact_created_ms=epoch_ms(contact.created_at),
        )
        link = unsubscribe_url(self.settings.public_base_url, token)
        variables = template_variables(
            contact,
            event=event_variables(command.variables.get("event")),
            journey=_as_dict(command.variables.get("journey")),
            unsubscribe_url=link,
        )
        rendered = await self._render(render_email, content, variables)
        try:
            delivery = EmailDelivery(send_id=command.send_id, to=contact.email, email=rendered, unsubscribe_url=link)
        except ValidationError as exc:
            return DeliveryResult("failed", {"reason": "invalid message", "error": str(exc.errors()[0]["msg"])})
        async with self.senders.lease(provider) as sender:
            assert isinstance(sender, SmtpSender | SendgridSender | PostmarkSender | SesSender)
            return _result(await sender.send(delivery))

    async def _webhook(
        self, command: SendCommand, contact: ContactState, content: WebhookContent, provider: ProviderDefinition
    ) -> DeliveryResult:
        variables = template_variables(
            contact,
            event=event_variables(command.variables.get("event")),
            journey=_as_dict(command.variables.get("journey")),
        )
        rendered = await self._render(render_webhook, content, variables)
        async with self.senders.lease(provider) as sender:
            assert isinstance(sender, WebhookSender)
            return _result(await sender.send(WebhookDelivery(send_id=command.send_id, request=rendered)))

    async def _sms(
        self, command: SendCommand, contact: ContactState, content: SmsContent, provider: ProviderDefinition
    ) -> DeliveryResult:
        if not contact.phone:
            return DeliveryResult("failed", {"reason": "the contact has no phone number"})
        variables = template_variables(
            contact,
            event=event_variables(command.variables.get("event")),
            journey=_as_dict(command.variables.get("journey")),
        )
        rendered = await self._render(render_sms, content, variables)
        try:
            delivery = SmsDelivery(send_id=command.send_id, to=contact.phone, message=rendered)
        except ValidationError as exc:
            return DeliveryResult("failed", {"reason": "invalid message", "error": str(exc.errors()[0]["msg"])})
        async with self.senders.lease(provider) as sender:
            assert isinstance(sender, TwilioSender | VonageSender)
            outcome = await sender.send(delivery)
        result = _result(outcome)
        if result.status == "sent":
            detail = {**result.detail, "encoding": rendered.encoding, "segments": rendered.segments}
            return DeliveryResult("sent", detail)
        return result

    async def _whatsapp(
        self,
        command: SendCommand,
        contact: ContactState,
        content: WhatsAppTemplateContent | WhatsAppTextContent,
        provider: ProviderDefinition,
    ) -> DeliveryResult:
        if not isinstance(provider.config, TwilioConfig | MetaWhatsAppConfig):
            return DeliveryResult("failed", {"reason": f"provider {provider.id} can't send a whatsapp template"})
        if not contact.phone:
            return DeliveryResult("failed", {"reason": "the contact has no phone number"})
        variables = template_variables(
            contact,
            event=event_variables(command.variables.get("event")),
            journey=_as_dict(command.variables.get("journey")),
        )
        rendered = await self._render(render_whatsapp, content, variables)
        try:
            delivery = WhatsAppDelivery(send_id=command.send_id, to=contact.phone, message=rendered)
        except ValidationError as exc:
            return DeliveryResult("failed", {"reason": "invalid message", "error": str(exc.errors()[0]["msg"])})
        async with self.senders.lease(provider) as sender:
            assert isinstance(sender, TwilioSender | MetaWhatsAppSender)
            outcome = await sender.send(delivery)
        result = _result(outcome)
        return DeliveryResult(result.status, {**result.detail, "message_type": delivery.kind}, result.retry_after)

    async def _push(
        self, command: SendCommand, contact: ContactState, content: PushContent, provider: ProviderDefinition
    ) -> DeliveryResult:
        """One push per device of the contact (``spotzee.providers.push``); unregistered tokens
        are taken off the contact through the log."""
        devices = list(contact.devices)
        if isinstance(provider.config, ApnsConfig):  # Apple's tokens only (an Android one would be removed)
            devices = [d for d in devices if d.type != "android"]
        if self.suppressed is not None:
            devices = [d for d in devices if self.suppressed(command.project_id, "push", d.token) is None]
            if contact.devices and not devices:
                return DeliveryResult("suppressed", {"reason": "every push device of the contact is suppressed"})
        if not devices:
            return DeliveryResult("failed", {"reason": NO_DEVICE})
        variables = template_variables(
            contact,
            event=event_variables(command.variables.get("event")),
            journey=_as_dict(command.variables.get("journey")),
        )
        rendered = await self._render(render_push, content, variables)
        deliveries = [
            PushDelivery(
                send_id=device_send_id(command.send_id, d.token),
                token=d.token,
                platform=d.type if d.type in ("ios", "android") else "other",
                message=rendered,
            )
            for d in devices
        ]
        async with self.senders.lease(provider) as sender:
            assert isinstance(sender, FcmSender | ApnsSender)
            outcomes = await asyncio.gather(*(sender.send(d) for d in deliveries))
        result = combine([(d.token, o) for d, o in zip(deliveries, outcomes, strict=True)])
        if result.unregistered:
            await self._remove_devices(command, contact, result.unregistered)
        return DeliveryResult(result.status, result.detail, result.retry_after)

    async def _remove_devices(self, command: SendCommand, contact: ContactState, tokens: list[str]) -> None:
        if self.write_back is None:
            log.warning(
                "send %s: %d unregistered push token(s) not removed (no write-back)", command.send_id, len(tokens)
            )
            return
        patch = ContactPatch(
            project_id=command.project_id,
            id=contact.id,
            traits={},
            requested_at=contact.updated_at,
            request_id=f"push-unregistered:{command.send_id}",
            only_existing=True,
            only_created_ms=epoch_ms(contact.created_at),
            remove_devices=tokens,
        )
        try:
            await self.write_back([(record_key(patch), dumps(patch))])
        except Exception:  # the send's result stands; the token is removed at its next failure
            log.exception("send %s: removing unregistered push tokens failed", command.send_id)


Scan = Callable[[str], Iterable[tuple[str, bytes]]]


def definition_lookups(
    scan: Scan, box: SecretBox
) -> tuple[Callable[[str, str], TemplateDefinition | None], Callable[[str, str], ProviderDefinition | None]]:
    """Template and provider lookups over a definitions store (``<kind>/<id>`` -> JSON), for a
    process without the catalogue services (a Kafka worker): the same rules as ``Catalogue``
    (the caller's project only, deleted providers absent, the first provider of a channel by
    creation). Provider secrets are opened with ``box`` (``SecretsUnreadable`` with another key)."""

    def template(project_id: str, template_id: str) -> TemplateDefinition | None:
        key = f"template/{template_id}"
        raw = next((value for k, value in scan(key) if k == key), None)
        item = TemplateDefinition.model_validate_json(raw) if raw is not None else None
        return item if item is not None and item.project_id == project_id else None

    def provider_for(project_id: str, channel: str) -> ProviderDefinition | None:
        found = [
            item
            for item in (StoredProvider.model_validate_json(raw) for _, raw in scan("provider/"))
            if item.project_id == project_id and not item.deleted and item.channel == channel
        ]
        first = min(found, key=lambda d: (d.created_at, d.id), default=None)
        return open_definition(first, box) if first is not None else None

    return template, provider_for


def _as_dict(value: object) -> dict[str, object] | None:
    return value if isinstance(value, dict) else None


def _result(outcome: Sent | Transient | Permanent) -> DeliveryResult:
    if isinstance(outcome, Sent):
        return DeliveryResult("sent", outcome.model_dump(mode="json", exclude={"status"}))
    if isinstance(outcome, Transient):
        return DeliveryResult("retry", outcome.model_dump(mode="json", exclude={"status"}), outcome.retry_after)
    return DeliveryResult("failed", outcome.model_dump(mode="json", exclude={"status"}))
