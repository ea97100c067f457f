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
import math
from bisect import bisect_right, insort
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from fractions import Fraction
from typing import Any, ClassVar, Literal, TypedDict, Unpack

import msgspec

from spotzee.domain.segments.facts import Fact
from spotzee.domain.segments.operators import number, path_reader, property_filter, read_path
from spotzee.schemas.rules import PropertyFilter
from spotzee.schemas.structs import Struct


class _Slot(Struct, tag_field="kind", kw_only=True, gc=False):
    """A tracker's slot: a value (shared between states, never changed in place), tagged by ``kind`` in JSON.

    ``gc=False``: slots hold only numbers, instants and lists of them, never a reference cycle."""

    kind: ClassVar[str]


class CountSlot(_Slot, tag="count", kw_only=True, gc=False):
    kind: ClassVar[str] = "count"
    n: int = 0


class LatestSlot(_Slot, tag="latest", kw_only=True, gc=False):
    kind: ClassVar[str] = "latest"
    at: list[datetime] = msgspec.field(default_factory=list)  # ascending


class TotalSlot(_Slot, tag="total", kw_only=True, gc=False):
    kind: ClassVar[str] = "total"
    n: int = 0
    total: str = "0"  # exact rational, "p/q"
    low: float | None = None
    high: float | None = None


class ValuesSlot(_Slot, tag="values", kw_only=True, gc=False):
    kind: ClassVar[str] = "values"
    entries: list[tuple[datetime, float]] = msgspec.field(default_factory=list)  # ascending by time


class SpanSlot(_Slot, tag="span", kw_only=True, gc=False):
    kind: ClassVar[str] = "span"
    first: datetime | None = None
    last: datetime | None = None


SlotModel = CountSlot | LatestSlot | TotalSlot | ValuesSlot | SpanSlot
Slot = SlotModel  # a tagged union: ``kind`` picks the class when a state is decoded


class SegmentState(Struct, kw_only=True, gc=False):
    """What the contact processor stores for segments: tracker key -> slot (JSON-serialisable)."""

    slots: dict[str, SlotModel] = msgspec.field(default_factory=dict)


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


# The slot class each tracker kind keeps.
_SLOT_TYPES: dict[str, type[SlotModel]] = {kind: type(slot) for kind, slot in _EMPTY.items()}


def _entry_time(entry: Entry) -> datetime:
    return entry[0]


# ``TotalSlot.total`` texts as reduced (numerator, denominator) pairs: every sum ``add_exact`` writes is
# remembered, so the next event of the contact (or a view of the slot) does not parse it again.
_RATIOS: dict[str, tuple[int, int]] = {}
_RATIOS_LIMIT = 65536


def ratio(text: str) -> tuple[int, int]:
    """A ``TotalSlot.total`` (``str(Fraction)``: ``p/q`` or ``p``) as its reduced numerator and
    (positive) denominator."""
    found = _RATIOS.get(text)
    if found is None:
        value = Fraction(text)
        found = _remember(text, value.numerator, value.denominator)
    return found


def _remember(text: str, numerator: int, denominator: int) -> tuple[int, int]:
    if len(_RATIOS) >= _RATIOS_LIMIT:
        _RATIOS.clear()
    found = _RATIOS[text] = (numerator, denominator)
    return found


def add_exact(total: str, value: float) -> str:
    """``str(Fraction(total) + Fraction(value))`` with integers: ``value`` is a finite float (an
    exact binary fraction)."""
    p, q = ratio(total)
    a, b = value.as_integer_ratio()
    n, d = p * b + a * q, q * b
    g = math.gcd(n, d)
    if g != 1:
        n, d = n // g, d // g
    text = str(n) if d == 1 else f"{n}/{d}"
    _remember(text, n, d)
    return text


def quotient(numerator: int, denominator: int) -> float:
    """``float(Fraction(numerator, denominator))`` (correctly rounded; an overflow saturates, as
    ``operators.exact_float`` does): ``denominator`` > 0."""
    try:
        return numerator / denominator
    except OverflowError:
        return math.inf if numerator > 0 else -math.inf


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
    # Made once from the fields above (a tracker observes every event of its name):
    _passes: Callable[[dict[str, Any]], bool] | None = field(init=False, repr=False)  # ``where``
    slot_type: type[SlotModel] = field(init=False, repr=False)  # the slot class it keeps
    empty_slot: SlotModel = field(init=False, repr=False)  # ``empty()``
    _read: Callable[[Any], Any] | None = field(init=False, repr=False)  # ``property``

    def __post_init__(self) -> None:
        object.__setattr__(self, "_passes", property_filter(self.where))
        object.__setattr__(self, "_read", path_reader(self.property) if self.property else None)
        object.__setattr__(self, "slot_type", _SLOT_TYPES[self.kind])
        object.__setattr__(self, "empty_slot", _EMPTY[self.kind])

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
        return _TRACKERS.get(kind, cls)(f"{kind}:{digest[:24]}", kind, event, where, window, bounds, keep, prop)

    def accepts(self, fact: Fact) -> bool:
        return fact.name == self.event and self._admits(fact)

    def cutoff(self, now: datetime) -> datetime:
        """Timestamps at or before this are outside the rolling window at ``now``."""
        assert self.window is not None
        return now - self.window

    def empty(self) -> SlotModel:
        """The empty slot of this tracker's kind: one shared instance per kind. Slots are values,
        never changed in place (``update``/``prune`` return new ones); building a slot per missing
        one cost more than the rest of a contact's first evaluation."""
        return _EMPTY[self.kind]

    def slot(self, state: SegmentState) -> SlotModel:
        """This tracker's slot in ``state`` (empty when absent or of another kind)."""
        found = state.slots.get(self.key)
        return found if type(found) is self.slot_type else self.empty_slot

    def update(self, slot: SlotModel, fact: Fact, now: datetime) -> SlotModel:
        """The slot after ``fact`` was observed at ``now``: a new object, or ``slot`` itself when
        the event changes nothing (``slot`` is never changed)."""
        accepted = fact.name == self.event and self._admits(fact)
        kind = type(slot)
        if kind is LatestSlot:
            return self._latest(slot, fact, now, accepted=accepted)  # type: ignore[arg-type]
        if kind is CountSlot:
            return CountSlot(n=slot.n + 1) if accepted else slot  # type: ignore[union-attr]
        if kind is SpanSlot:
            return self._span(slot, fact) if accepted else slot  # type: ignore[arg-type]
        value = number(read_path(fact.properties, self.property)) if accepted and self.property else None
        if kind is TotalSlot:
            return slot if value is None else _total(slot, value)  # type: ignore[arg-type]
        assert isinstance(slot, ValuesSlot)
        cutoff = self.cutoff(now)
        if value is not None and fact.timestamp > cutoff:
            entries = list(slot.entries)
            if self.kind == "sum":
                insort(entries, (fact.timestamp, value), key=_entry_time)
            else:
                entries = _front_insert(entries, (fact.timestamp, value), _le if self.kind == "min" else _ge)
            return ValuesSlot(entries=entries[bisect_right(entries, cutoff, key=_entry_time) :])
        return self.prune(slot, now)

    def _admits(self, fact: Fact) -> bool:
        """``accepts`` past the event name: the property filters and the absolute range."""
        passes, bounds = self._passes, self.bounds
        if passes is not None and not passes(fact.properties):
            return False
        return bounds is None or bounds[0] <= fact.timestamp <= bounds[1]

    @staticmethod
    def _span(slot: SpanSlot, fact: Fact) -> SpanSlot:
        at = fact.timestamp
        return SpanSlot(
            first=at if slot.first is None else min(slot.first, at),
            last=at if slot.last is None else max(slot.last, at),
        )

    def _latest(self, slot: LatestSlot, fact: Fact, now: datetime, *, accepted: bool) -> LatestSlot:
        assert self.window is not None
        cutoff = now - self.window
        if accepted and fact.timestamp > cutoff and self.keep > 0:
            at = list(slot.at)
            insort(at, fact.timestamp)
            at = at[-self.keep :]
            return LatestSlot(at=at[bisect_right(at, cutoff) :])
        start = bisect_right(slot.at, cutoff)  # ``prune``
        return LatestSlot(at=slot.at[start:]) if start else slot

    def prune(self, slot: SlotModel, now: datetime) -> SlotModel:
        """Drop what has left the rolling window at ``now`` (``slot`` itself when nothing has)."""
        if self.window is None:
            return slot
        cutoff = self.cutoff(now)
        if isinstance(slot, LatestSlot):
            start = bisect_right(slot.at, cutoff)
            return LatestSlot(at=slot.at[start:]) if start else slot
        if isinstance(slot, ValuesSlot):
            start = bisect_right(slot.entries, cutoff, key=_entry_time)
            return ValuesSlot(entries=slot.entries[start:]) if start else slot
        return slot


# The common kinds' ``update`` for a slot of their own kind, with ``accepts`` and ``prune`` inline
# (it runs for every tracker of every event's name); anything else goes to ``Tracker.update``.


class _CountTracker(Tracker):
    def update(self, slot: SlotModel, fact: Fact, now: datetime) -> SlotModel:
        if type(slot) is not CountSlot:
            return super().update(slot, fact, now)
        return CountSlot(n=slot.n + 1) if fact.name == self.event and self._admits(fact) else slot


class _LatestTracker(Tracker):
    def update(self, slot: SlotModel, fact: Fact, now: datetime) -> SlotModel:
        if type(slot) is not LatestSlot or self.window is None:
            return super().update(slot, fact, now)
        cutoff = now - self.window
        at = fact.timestamp
        if fact.name == self.event and at > cutoff and self.keep > 0 and self._admits(fact):
            times = list(slot.at)
            insort(times, at)
            times = times[-self.keep :]
            return LatestSlot(at=times[bisect_right(times, cutoff) :])
        start = bisect_right(slot.at, cutoff)
        return LatestSlot(at=slot.at[start:]) if start else slot


class _TotalTracker(Tracker):
    def update(self, slot: SlotModel, fact: Fact, now: datetime) -> SlotModel:
        if type(slot) is not TotalSlot:
            return super().update(slot, fact, now)
        if fact.name != self.event or self._read is None or not self._admits(fact):
            return slot
        value = number(self._read(fact.properties))
        return slot if value is None else _total(slot, value)


class _SpanTracker(Tracker):
    def update(self, slot: SlotModel, fact: Fact, now: datetime) -> SlotModel:
        if type(slot) is not SpanSlot:
            return super().update(slot, fact, now)
        return self._span(slot, fact) if fact.name == self.event and self._admits(fact) else slot


_TRACKERS: dict[str, type[Tracker]] = {
    "count": _CountTracker,
    "latest": _LatestTracker,
    "total": _TotalTracker,
    "span": _SpanTracker,
}


def _total(slot: TotalSlot, value: float) -> TotalSlot:
    return TotalSlot(
        n=slot.n + 1,
        total=add_exact(slot.total, value),
        low=value if slot.low is None else min(slot.low, value),
        high=value if slot.high is None else max(slot.high, value),
    )


def _le(a: float, b: float) -> bool:
    return a <= b


def _ge(a: float, b: float) -> bool:
    return a >= b


def front_insert(entries: list[Entry], new: Entry, kind: str) -> list[Entry]:
    """``new`` inserted into the monotonic queue of a ``min`` or ``max`` tracker (``kind``)."""
    return _front_insert(entries, new, _le if kind == "min" else _ge)


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
