"""What the push channel's providers share: one push to one device, and the outcome that says the
device's token is gone (``Unregistered``: the contact's token is then removed, through the log).

A push template goes to every device of the contact (``ContactState.devices``): one provider call
per device, each with its own ``send_id`` (``device_send_id``: the send's id and the token's
digest), so a vendor deduplicating on it, and our records, see one push per device.
"""

from __future__ import annotations

import hashlib
from typing import Annotated, Literal

from pydantic import Field

from spotzee.providers.adapter import Permanent, Sent, Transient
from spotzee.schemas.common import Model
from spotzee.schemas.contact_models import MAX_DEVICE_TOKEN_CHARS
from spotzee.schemas.template_models import RenderedPush

NO_DEVICE = "the contact has no push device"


class PushDelivery(Model):
    """One push to one device. ``send_id`` is deterministic per send and device."""

    send_id: Annotated[str, Field(min_length=1, max_length=600)]
    token: Annotated[str, Field(min_length=1, max_length=MAX_DEVICE_TOKEN_CHARS)]
    platform: Literal["ios", "android", "other"] = "other"
    message: RenderedPush


class Unregistered(Permanent):
    """The provider says the token is no longer valid (the app was uninstalled, the token rotated):
    permanent, and the token is removed from the contact."""

    token_unregistered: Literal[True] = True


def device_send_id(send_id: str, token: str) -> str:
    """The send id of one device's push: stable across retries of the same send."""
    return f"{send_id}:{hashlib.sha256(token.encode()).hexdigest()[:16]}"


def token_digest(token: str) -> str:
    """How a token appears in send results (a token is an address: not copied into analytics)."""
    return hashlib.sha256(token.encode()).hexdigest()[:16]


class PushResult(Model):
    """One push send's outcome over the contact's devices (``combine``)."""

    status: Literal["sent", "retry", "failed"]
    detail: dict[str, object]
    retry_after: float | None = None
    unregistered: list[str] = Field(default_factory=list)


def combine(outcomes: list[tuple[str, Sent | Transient | Permanent]]) -> PushResult:
    """The send's result from each device's (token, outcome): sent when any device took it (the
    others' failures listed, not retried: a retry would push again to those that got it); else
    retried when any failure was transient; else failed. Unregistered tokens are named for removal."""
    devices: list[dict[str, object]] = []
    for token, outcome in outcomes:
        item: dict[str, object] = {"device": token_digest(token), "status": outcome.status}
        if isinstance(outcome, Sent):
            item["provider_message_id"] = outcome.provider_message_id
        else:
            item["reason"] = outcome.reason
        devices.append(item)
    gone = [token for token, outcome in outcomes if isinstance(outcome, Unregistered)]
    sent = [o for _, o in outcomes if isinstance(o, Sent)]
    transient = [o for _, o in outcomes if isinstance(o, Transient)]
    detail: dict[str, object] = {"devices": devices, "sent": len(sent)}
    if sent:
        first = sent[0]
        detail["provider_message_id"] = first.provider_message_id
        return PushResult(status="sent", detail=detail, unregistered=gone)
    if transient:
        waits = [o.retry_after for o in transient if o.retry_after is not None]
        detail["reason"] = transient[0].reason
        return PushResult(status="retry", detail=detail, retry_after=max(waits) if waits else None, unregistered=gone)
    detail["reason"] = next(o.reason for _, o in outcomes if isinstance(o, Permanent))
    return PushResult(status="failed", detail=detail, unregistered=gone)
