"""What every SMS adapter shares: the delivery it gets (``SmsDelivery``) and the sender contract.

An SMS sender (``TwilioSender``, ``VonageSender``) is made once per provider version and kept:
``send`` runs many times, concurrently, over kept-alive connections; ``aclose`` releases them when
the provider changes or delivery stops -- the contract every sender follows.
"""

from __future__ import annotations

from typing import Annotated, Protocol

from pydantic import Field

from spotzee.providers.adapter import Permanent, Sent, Transient
from spotzee.schemas.common import Model
from spotzee.schemas.provider_models import E164
from spotzee.schemas.template_models import RenderedSms

E164_PATTERN = f"^{E164.pattern}$"


class SmsDelivery(Model):
    """One text message to one number. ``send_id`` is deterministic: a retry carries the same one."""

    send_id: Annotated[str, Field(min_length=1, max_length=512)]
    to: Annotated[str, Field(pattern=E164_PATTERN)]
    message: RenderedSms


class SmsSender(Protocol):
    async def send(self, delivery: SmsDelivery) -> Sent | Transient | Permanent:
        """One attempt, at most one HTTP request; never raises for delivery failures."""
        ...

    async def aclose(self) -> None: ...
