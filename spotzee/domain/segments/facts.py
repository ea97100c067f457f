"""What segment evaluation reads besides the contact: its events and other memberships."""

from __future__ import annotations

from collections.abc import Callable, Collection
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any, Protocol

import msgspec

from spotzee.schemas.structs import Struct


class EventFact(Struct, kw_only=True):
    """One behavioural event of a contact, as segments see it."""

    name: str
    timestamp: datetime
    properties: dict[str, Any] = msgspec.field(default_factory=dict)


class Fact(Protocol):
    """What trackers read of an event: an ``EventFact``, or a ``HistoryFact`` as it arrives (no copy)."""

    @property
    def name(self) -> str: ...

    @property
    def timestamp(self) -> datetime: ...

    @property
    def properties(self) -> dict[str, Any]: ...


Membership = Collection[str] | Callable[[str], bool]


@dataclass(slots=True)
class MembershipContext:
    """List and segment memberships of the contact being evaluated (sets of ids, or look-ups).

    Another segment's membership changes with that segment's own timers and events; a segment
    referencing it is re-evaluated when it changes (``Dependencies.segment_ids``).
    """

    lists: Membership = field(default_factory=frozenset)
    segments: Membership = field(default_factory=frozenset)

    def in_list(self, list_id: str) -> bool:
        return _member(self.lists, list_id)

    def in_segment(self, segment_id: str) -> bool:
        return _member(self.segments, segment_id)


def _member(membership: Membership, key: str) -> bool:
    if callable(membership):
        return bool(membership(key))
    return key in membership


NO_MEMBERSHIPS = MembershipContext()
