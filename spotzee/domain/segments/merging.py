"""Merging the segment state of two contacts that become one (identify / alias merges).

``merge_states(trackers, a, b, now)`` is the state of a contact whose events are the union of
``a``'s and ``b``'s (disjoint event sets): for every tracker, the slot equals the one obtained by
observing all events of both contacts (``Tracker.update`` in timestamp order, at ``now``). Pure:
no I/O, the clock is passed in.

Per slot kind (see ``state``):

- ``count``: the counts add up;
- ``latest``: the sorted timestamp lists are merged, entries at or before the window cutoff are
  dropped, and the K latest are kept (``Tracker.keep``) -- the K latest of the union are among
  the K latest of either side;
- ``total``: n and the exact rational total add up; min of the lows, max of the highs;
- ``values``: in-window entries merged by time. A ``sum`` keeps them all; a ``min``/``max``
  queue is rebuilt with the dominance rule of ``Tracker.update``, so an entry of one contact
  dominated by a later, at least as good, entry of the other is dropped;
- ``span``: the earliest first, the latest last.

The result also equals the state of one contact that observed both event streams interleaved
with a non-decreasing clock and was pruned at ``now`` -- as long as each side was last observed
(or pruned) no later than ``now``. Entries of a ``sum`` with equal timestamps keep ``a``'s
before ``b``'s; their order does not change any aggregate.

Slots of keys not in ``trackers`` are dropped (as ``engine.retain`` does); a tracker in neither
state gets no slot.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from datetime import datetime
from fractions import Fraction
from heapq import merge
from typing import TypeVar

from spotzee.domain.segments.trackers import (
    CountSlot,
    Entry,
    LatestSlot,
    SegmentState,
    SlotModel,
    SpanSlot,
    TotalSlot,
    Tracker,
    ValuesSlot,
    _entry_time,
    _front_insert,
    _ge,
    _le,
)

_Ordered = TypeVar("_Ordered", float, datetime)


def merge_states(trackers: Mapping[str, Tracker], a: SegmentState, b: SegmentState, now: datetime) -> SegmentState:
    """The state of a contact whose events are the union of a's and b's events (disjoint event sets)."""
    slots: dict[str, SlotModel] = {}
    for key, tracker in trackers.items():
        if key in a.slots or key in b.slots:
            slots[key] = merge_slots(tracker, tracker.slot(a), tracker.slot(b), now)
    return SegmentState(slots=slots)


def merge_slots(tracker: Tracker, a: SlotModel, b: SlotModel, now: datetime) -> SlotModel:
    """One tracker's slot for the union of the events behind ``a`` and ``b`` (a new object)."""
    a, b = tracker.prune(a, now), tracker.prune(b, now)
    match a, b:
        case CountSlot(), CountSlot():
            return CountSlot(n=a.n + b.n)
        case SpanSlot(), SpanSlot():
            return SpanSlot(first=_least(a.first, b.first), last=_greatest(a.last, b.last))
        case TotalSlot(), TotalSlot():
            return TotalSlot(
                n=a.n + b.n,
                total=str(Fraction(a.total) + Fraction(b.total)),
                low=_least(a.low, b.low),
                high=_greatest(a.high, b.high),
            )
        case LatestSlot(), LatestSlot():
            at = list(merge(a.at, b.at))
            return LatestSlot(at=at[max(len(at) - tracker.keep, 0) :])
        case ValuesSlot(), ValuesSlot():
            entries = merge(a.entries, b.entries, key=_entry_time)
            if tracker.kind == "sum":
                return ValuesSlot(entries=list(entries))
            return ValuesSlot(entries=_monotonic_queue(entries, tracker))
    raise ValueError(f"cannot merge slots of kinds {a.kind!r} and {b.kind!r} for tracker {tracker.key}")


def _monotonic_queue(entries: Iterable[Entry], tracker: Tracker) -> list[Entry]:
    as_good = _le if tracker.kind == "min" else _ge
    queue: list[Entry] = []
    for entry in entries:
        queue = _front_insert(queue, entry, as_good)
    return queue


def _least(x: _Ordered | None, y: _Ordered | None) -> _Ordered | None:
    if x is None:
        return y
    return x if y is None else min(x, y)


def _greatest(x: _Ordered | None, y: _Ordered | None) -> _Ordered | None:
    if x is None:
        return y
    return x if y is None else max(x, y)
