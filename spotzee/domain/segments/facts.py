"""What segment evaluation reads besides the contact: its events and other memberships."""

from __future__ import annotations

from collections.abc import Callable, Collection
from dataclasses import dataclass, field

from pydantic import Field

from spotzee.schemas.common import JSONObject, Model, UTCDateTime


class EventFact(Model):
    """One behavioural event of a contact, as segments see it."""

    name: str
    timestamp: UTCDateTime
    properties: JSONObject = Field(default_factory=dict)


Membership = Collection[str] | Callable[[str], bool]


@dataclass(frozen=True)
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
