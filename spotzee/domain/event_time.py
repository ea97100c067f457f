"""Pure rules about incoming messages: the effective time of an event."""

from __future__ import annotations

from datetime import datetime
from typing import Protocol


class Timed(Protocol):
    """What the rule reads of a message: the API's edge model and the processor's Struct both have it."""

    @property
    def timestamp(self) -> datetime | None: ...

    @property
    def original_timestamp(self) -> datetime | None: ...

    @property
    def sent_at(self) -> datetime | None: ...


def effective_timestamp(message: Timed, received_at: datetime) -> datetime:
    """When the event happened, corrected for the sending device's clock skew.

    Segment's rule: ``timestamp = receivedAt - (sentAt - originalTimestamp)`` when the device
    says both when it happened and when it sent; otherwise the given timestamp; otherwise the
    time it was received.
    """
    happened = message.timestamp or message.original_timestamp
    if happened is None:
        return received_at
    if message.sent_at is not None:
        return received_at - (message.sent_at - happened)
    return happened
