"""Per-contact segment state: one small slot per event condition ("tracker"), never the raw history.

A tracker is the part of an event condition that needs memory: the event name, its property
filters, its window and what is measured. Its key is a hash of exactly that, so identical
conditions share one slot -- within a rule, and across segments when one ``SegmentState`` is kept
per contact for all segments (observe through a ``TrackerBundle`` then, so a shared slot is
updated once per event).

Slots and their memory bound (per contact, per tracker):

========  ===========================================  ==========================================
kind      used for                                     holds
========  ===========================================  ==========================================
count     count, all time or absolute range            one integer
latest    count over a rolling window                  the K latest in-window timestamps, K <= value + 1
total     aggregate, all time or absolute range        n, exact sum, min, max
sum       sum/avg over a rolling window                (timestamp, value) per matching in-window event
min/max   min/max over a rolling window                the in-window entries not dominated by a later
                                                       one that is at least as small (large)
span      first/last occurrence                        two timestamps
========  ===========================================  ==========================================

Why it is exact:

- ``latest``: ``count op value`` only needs ``min(count, K)`` with ``K = value`` (``gte``, ``lt``)
  or ``value + 1`` (the others). Any event later than an in-window event is in the window too, so
  the K latest timestamps seen contain every in-window event whenever fewer than K are in the
  window, and are all in it otherwise. An out-of-order event enters the sorted top K, or is older
  than all of them and can never matter. The memory bound is set by the rule, not by traffic.
- ``sum``: the window's sum needs every in-window value; this is the only slot that grows with
  traffic, bounded by the matching events inside one window (fixed-width buckets would bound it
  further but make the window edge approximate). Sums are exact rationals (``Fraction``) so
  the result does not depend on arrival order.
- ``min``/``max``: a monotonic queue; a dominated entry expires no later than the entry that
  dominates it, so it can never be the extreme again.
- Entries at or before ``now - window`` are dropped on every observe of the event name (and by
  ``prune``); this assumes ``now`` never goes backwards for a contact.
"""

from __future__ import annotations

import hashlib
import json
from bisect import bisect_right, insort
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime, timedelta
from fractions import Fraction
from typing import Annotated, Literal, TypedDict, Unpack

from pydantic import Field

from spotzee.domain.segments.facts import EventFact
from spotzee.domain.segments.operators import filters_pass, number, read_path
from spotzee.schemas.common import Model, UTCDateTime
from spotzee.schemas.rules import PropertyFilter


class CountSlot(Model):
    kind: Literal["count"] = "count"
    n: int = 0


class LatestSlot(Model):
    kind: Literal["latest"] = "latest"
    at: list[UTCDateTime] = Field(default_factory=list)  # ascending


class TotalSlot(Model):
    kind: Literal["total"] = "total"
    n: int = 0
    total: str = "0"  # exact rational, "p/q"
    low: float | None = None
    high: float | None = None


class ValuesSlot(Model):
    kind: Literal["values"] = "values"
    entries: list[tuple[UTCDateTime, float]] = Field(default_factory=list)  # ascending by time


class SpanSlot(Model):
    kind: Literal["span"] = "span"
    first: UTCDateTime | None = None
    last: UTCDateTime | None = None


SlotModel = CountSlot | LatestSlot | TotalSlot | ValuesSlot | SpanSlot
Slot = Annotated[SlotModel, Field(discriminator="kind")]


class SegmentState(Model):
    """What the contact processor stores for segments: tracker key -> slot (JSON-serialisable)."""

    slots: dict[str, Slot] = Field(default_factory=dict)


TrackerKind = Literal["count", "latest", "total", "sum", "min", "max", "span"]
Entry = tuple[datetime, float]


# The empty slot of each tracker kind (shared: slots are never changed in place).
_EMPTY_VALUES = ValuesSlot()
_EMPTY: dict[str, SlotModel] = {
    "count": CountSlot(),
    "latest": LatestSlot(),
    "total": TotalSlot(),
    "span": SpanSlot(),
    "sum": _EMPTY_VALUES,
    "min": _EMPTY_VALUES,
    "max": _EMPTY_VALUES,
}
_EMPTY_IDS = frozenset(id(slot) for slot in _EMPTY.values())


def is_empty(slot: SlotModel) -> bool:
    """``slot`` is a shared empty slot (``Tracker.empty``): a tracker that has seen nothing."""
    return id(slot) in _EMPTY_IDS


# The slot kind each tracker kind keeps.
_SLOT_KINDS: dict[str, str] = {kind: slot.kind for kind, slot in _EMPTY.items()}


def _entry_time(entry: Entry) -> datetime:
    return entry[0]


class Shape(TypedDict, total=False):
    """What a tracker kind needs beyond its event: a rolling ``window`` or absolute ``bounds``,
    how many timestamps to ``keep`` (latest), the ``property`` an aggregate folds."""

    window: timedelta | None
    bounds: tuple[datetime, datetime] | None
    keep: int
    property: str | None


@dataclass(frozen=True, eq=False)
class Tracker:
    """The state-bearing part of one event condition."""

    key: str
    kind: TrackerKind
    event: str
    where: tuple[PropertyFilter, ...] = ()
    window: timedelta | None = None  # rolling window
    bounds: tuple[datetime, datetime] | None = None  # absolute range, inclusive
    keep: int = 0  # latest: how many timestamps
    property: str | None = None  # aggregates

    @classmethod
    def make(cls, kind: TrackerKind, event: str, where: tuple[PropertyFilter, ...], **shape: Unpack[Shape]) -> Tracker:
        """The tracker of ``kind`` over ``event`` filtered by ``where``; its key is a digest of all
        of it, so equal trackers of different segments share one slot."""
        window = shape.get("window")
        bounds = shape.get("bounds")
        keep = shape.get("keep", 0)
        prop = shape.get("property")
        spec = {
            "kind": kind,
            "event": event,
            "where": [f.model_dump(mode="json") for f in where],
            "window_us": None if window is None else window // timedelta(microseconds=1),
            "bounds": None if bounds is None else [b.isoformat() for b in bounds],
            "keep": keep,
            "property": prop,
        }
        digest = hashlib.sha256(json.dumps(spec, sort_keys=True, separators=(",", ":")).encode()).hexdigest()
        return cls(f"{kind}:{digest[:24]}", kind, event, where, window, bounds, keep, prop)

    def accepts(self, fact: EventFact) -> bool:
        if fact.name != self.event or not filters_pass(self.where, fact.properties):
            return False
        return self.bounds is None or self.bounds[0] <= fact.timestamp <= self.bounds[1]

    def cutoff(self, now: datetime) -> datetime:
        """Timestamps at or before this are outside the rolling window at ``now``."""
        assert self.window is not None
        return now - self.window

    def empty(self) -> SlotModel:
        """The empty slot of this tracker's kind: one shared instance per kind. Slots are values,
        never changed in place (``update``/``prune`` return new ones); building or validating a
        model per missing slot cost more than the rest of a contact's first evaluation."""
        return _EMPTY[self.kind]

    def slot(self, state: SegmentState) -> SlotModel:
        """This tracker's slot in ``state`` (empty when absent or of another kind)."""
        found = state.slots.get(self.key)
        if found is not None and found.kind == _SLOT_KINDS[self.kind]:
            return found
        return self.empty()

    def update(self, slot: SlotModel, fact: EventFact, now: datetime) -> SlotModel:
        """The slot after ``fact`` was observed at ``now`` (a new object; ``slot`` is not changed)."""
        accepted = self.accepts(fact)
        if isinstance(slot, CountSlot):
            return CountSlot.model_construct(n=slot.n + 1) if accepted else slot
        if isinstance(slot, SpanSlot):
            if not accepted:
                return slot
            first = fact.timestamp if slot.first is None else min(slot.first, fact.timestamp)
            last = fact.timestamp if slot.last is None else max(slot.last, fact.timestamp)
            return SpanSlot.model_construct(first=first, last=last)
        value = number(read_path(fact.properties, self.property)) if accepted and self.property else None
        if isinstance(slot, TotalSlot):
            if value is None:
                return slot
            return TotalSlot.model_construct(
                n=slot.n + 1,
                total=str(Fraction(slot.total) + Fraction(value)),
                low=value if slot.low is None else min(slot.low, value),
                high=value if slot.high is None else max(slot.high, value),
            )
        cutoff = self.cutoff(now)
        if isinstance(slot, LatestSlot):
            at = list(slot.at)
            if accepted and fact.timestamp > cutoff and self.keep > 0:
                insort(at, fact.timestamp)
                at = at[-self.keep :]
            return LatestSlot.model_construct(at=at[bisect_right(at, cutoff) :])
        entries = list(slot.entries)
        if value is not None and fact.timestamp > cutoff:
            if self.kind == "sum":
                insort(entries, (fact.timestamp, value), key=_entry_time)
            else:
                entries = _front_insert(entries, (fact.timestamp, value), _le if self.kind == "min" else _ge)
        return ValuesSlot.model_construct(entries=entries[bisect_right(entries, cutoff, key=_entry_time) :])

    def prune(self, slot: SlotModel, now: datetime) -> SlotModel:
        """Drop what has left the rolling window at ``now``."""
        if self.window is None:
            return slot
        cutoff = self.cutoff(now)
        if isinstance(slot, LatestSlot):
            return LatestSlot.model_construct(at=slot.at[bisect_right(slot.at, cutoff) :])
        if isinstance(slot, ValuesSlot):
            return ValuesSlot.model_construct(
                entries=slot.entries[bisect_right(slot.entries, cutoff, key=_entry_time) :]
            )
        return slot


def _le(a: float, b: float) -> bool:
    return a <= b


def _ge(a: float, b: float) -> bool:
    return a >= b


def _front_insert(entries: list[Entry], new: Entry, as_good: Callable[[float, float], bool]) -> list[Entry]:
    """Insert into a monotonic queue: drop entries ``new`` dominates, skip ``new`` if dominated.

    An entry is dominated by another at the same time or later whose value is as good (``<=`` for
    min, ``>=`` for max): it leaves the window first and can never be the extreme again.
    """
    at, value = new
    if any(other_at >= at and as_good(other_value, value) for other_at, other_value in entries):
        return entries
    kept = [(t, v) for t, v in entries if not (t <= at and as_good(value, v))]
    insort(kept, new, key=_entry_time)
    return kept
