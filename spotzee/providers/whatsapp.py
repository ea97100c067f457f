"""What every WhatsApp adapter shares: the delivery it gets (``WhatsAppDelivery``) and the sender
contract (``MetaWhatsAppSender``; ``TwilioSender`` on channel ``whatsapp``).

A WhatsApp message is either an approved template (``RenderedWhatsAppTemplate``: name, language,
components with their parameters rendered) or a session text (``RenderedWhatsAppText``), which
WhatsApp only delivers within 24 hours of the contact's last message to the business.
"""

from __future__ import annotations

from typing import Annotated, Protocol

from pydantic import Field

from spotzee.providers.adapter import Permanent, Sent, Transient
from spotzee.providers.sms import E164_PATTERN
from spotzee.schemas.common import Model
from spotzee.schemas.template_models import RenderedWhatsAppTemplate, RenderedWhatsAppText


class WhatsAppDelivery(Model):
    """One WhatsApp message to one number (E.164). ``send_id`` is deterministic: a retry carries the same one."""

    send_id: Annotated[str, Field(min_length=1, max_length=512)]
    to: Annotated[str, Field(pattern=E164_PATTERN)]
    message: RenderedWhatsAppTemplate | RenderedWhatsAppText

    @property
    def kind(self) -> str:
        """``template`` or ``text``: the Cloud API's message ``type``."""
        return "template" if isinstance(self.message, RenderedWhatsAppTemplate) else "text"


class WhatsAppSender(Protocol):
    async def send(self, delivery: WhatsAppDelivery) -> Sent | Transient | Permanent:
        """One attempt, at most one HTTP request; never raises for delivery failures."""
        ...

    async def aclose(self) -> None: ...
