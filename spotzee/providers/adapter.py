"""What every delivery adapter shares: the request it gets and the ``Outcome`` it reports.

An adapter makes one attempt and classifies it; it never sleeps or retries itself. Whoever owns
the send (the delivery agent) decides whether and when to try again (``spotzee.providers.retry``),
so retries survive restarts and a send_id reaches a provider at most once per attempt decision.
"""

from __future__ import annotations

from typing import Annotated, Literal, Protocol, TypeVar

from pydantic import Field

from spotzee.schemas.common import Model
from spotzee.schemas.template_models import EmailAddress, RenderedEmail, RenderedWebhook


class Sent(Model):
    """Accepted by the provider (an SMTP 250, an HTTP 2xx)."""

    status: Literal["sent"] = "sent"
    detail: str = ""
    provider_message_id: str | None = None


class Transient(Model):
    """Worth retrying: 429, 5xx, 4xx SMTP replies, timeouts, connection errors."""

    status: Literal["transient"] = "transient"
    reason: str
    retry_after: float | None = Field(default=None, ge=0, description="Seconds the receiver asked us to wait.")


class Permanent(Model):
    """Retrying cannot help: a refused destination, an HTTP 4xx, an SMTP 5xx."""

    status: Literal["permanent"] = "permanent"
    reason: str


Outcome = Annotated[Sent | Transient | Permanent, Field(discriminator="status")]


class EmailDelivery(Model):
    """One email to one recipient. ``send_id`` is deterministic: a retry carries the same one."""

    send_id: Annotated[str, Field(min_length=1, max_length=512)]
    to: EmailAddress
    email: RenderedEmail
    # Short enough for the List-Unsubscribe header to stay one unbroken line (998 characters).
    unsubscribe_url: Annotated[str, Field(pattern=r"^https?://\S+$", max_length=900)]
    unsubscribe_mailto: EmailAddress | None = None


class WebhookDelivery(Model):
    send_id: Annotated[str, Field(min_length=1, max_length=512)]
    request: RenderedWebhook


DeliveryT_contra = TypeVar("DeliveryT_contra", EmailDelivery, WebhookDelivery, contravariant=True)


class Provider(Protocol[DeliveryT_contra]):
    """A configured adapter for one provider account."""

    async def send(self, delivery: DeliveryT_contra) -> Sent | Transient | Permanent:
        """One attempt; never raises for delivery failures, only reports them."""
        ...

    async def aclose(self) -> None:
        """Release connections."""
        ...
