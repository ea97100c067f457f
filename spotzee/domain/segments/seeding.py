"""Tracker slots seeded from outside the processor, and what an empty history makes of a rule (pure).

A backfill can compute a tracker's slot from the contact's past events without replaying them one
by one (``analytics/segment_seeds.py`` aggregates them in ClickHouse). Each function below builds
the slot ``Tracker.update`` would have built from those events, folded in ``(timestamp,
message_id)`` order at ``now``, from the aggregate the slot needs:

========  =================================================================================
kind      seeded from
========  =================================================================================
count     the number of matching events
latest    the K latest matching timestamps after a cutoff no later than ``now - window``
total     the matching numeric values, in event order (exact rational sum, min, max)
sum       the matching (timestamp, value) pairs after such a cutoff, in event order
min/max   the same pairs, folded through the monotonic queue
span      the first and last matching timestamps
========  =================================================================================

A seed cut earlier than ``now - window`` holds a superset of the window at ``now``; ``Tracker.prune``
at ``now`` makes it exactly the slot (an entry that dominates or displaces another is never older
than it, so what the extra entries changed is pruned with them).

``holds_without_history(rule)``: whether the rule holds for a contact with no event at all --
True, False, or None when that depends on the contact (its attributes, lists, segments). A segment
whose rule is False without history needs no look at the contacts without matching history.
"""

from __future__ import annotations

import math
from collections.abc import Iterable
from datetime import UTC, datetime

from spotzee.domain.segments.oracle import event_holds
from spotzee.domain.segments.trackers import (
    CountSlot,
    Entry,
    LatestSlot,
    SlotModel,
    SpanSlot,
    TotalSlot,
    Tracker,
    ValuesSlot,
    front_insert,
)
from spotzee.schemas.rules import AllRule, AnyRule, EventRule, EveryoneRule, NoneRule, RuleNode

_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)


def count_seed(n: int) -> CountSlot | None:
    """The ``count`` slot of ``n`` matching events (None: no event, the empty slot)."""
    return CountSlot(n=n) if n else None


def latest_seed(tracker: Tracker, times: Iterable[datetime]) -> LatestSlot | None:
    """The ``latest`` slot from the matching timestamps after the seed's cutoff (any order)."""
    kept = sorted(times)[-tracker.keep :] if tracker.keep > 0 else []
    return LatestSlot(at=kept) if kept else None


def total_seed(values: list[float]) -> TotalSlot | None:
    """The ``total`` slot from the matching values in event order (min/max keep the first of equals,
    as folding them one by one does)."""
    if not values:
        return None
    return TotalSlot(n=len(values), total=exact_total(values), low=min(values), high=max(values))


def exact_total(values: Iterable[float]) -> str:
    """``str`` of the exact rational sum of finite floats (what ``trackers.add_exact`` folds to): each is an
    integer over a power of two, so they add up over the largest denominator."""
    ratios = [value.as_integer_ratio() for value in values]
    common = max((d for _, d in ratios), default=1)
    numerator = sum(n * (common // d) for n, d in ratios)
    divisor = math.gcd(numerator, common)
    numerator, common = numerator // divisor, common // divisor
    return str(numerator) if common == 1 else f"{numerator}/{common}"


def values_seed(tracker: Tracker, entries: Iterable[Entry]) -> ValuesSlot | None:
    """The ``sum``/``min``/``max`` slot from the matching (timestamp, value) pairs after the seed's
    cutoff, in event order."""
    if tracker.kind == "sum":
        kept = sorted(entries, key=lambda entry: entry[0])  # stable: event order among equal times
    else:
        kept = []
        for entry in entries:
            kept = front_insert(kept, entry, tracker.kind)
    return ValuesSlot(entries=kept) if kept else None


def span_seed(first: datetime | None, last: datetime | None) -> SpanSlot | None:
    """The ``span`` slot of the first and last matching timestamps."""
    return SpanSlot(first=first, last=last) if first is not None else None


def holds_nothing(slot: SlotModel) -> bool:
    """``slot`` equals its kind's empty slot (a tracker that has seen nothing)."""
    if isinstance(slot, CountSlot | TotalSlot):
        return slot.n == 0
    if isinstance(slot, LatestSlot):
        return not slot.at
    if isinstance(slot, ValuesSlot):
        return not slot.entries
    return slot.first is None and slot.last is None


def holds_without_history(rule: RuleNode) -> bool | None:
    """The rule's value for a contact with no event, or None when it depends on the contact."""
    if isinstance(rule, EventRule):
        return event_holds(rule, [], _EPOCH)  # (with no event, no condition depends on the clock)
    if isinstance(rule, EveryoneRule):
        return True
    if not isinstance(rule, AllRule | AnyRule | NoneRule):
        return None  # attributes, lists, segments, subscriptions, samples: the contact's own
    values = [holds_without_history(child) for child in rule.rules]
    if isinstance(rule, AllRule):
        return False if False in values else (True if all(values) else None)
    found = True if True in values else (False if all(v is False for v in values) else None)
    if isinstance(rule, NoneRule) and found is not None:
        return not found
    return found
