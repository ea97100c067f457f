"""Merging two contacts' segment state equals observing the union of their events."""

from __future__ import annotations

from collections.abc import Iterable
from datetime import datetime, timedelta
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from spotzee.domain.segments import (
    CompiledRule,
    EventFact,
    SegmentState,
    TrackerBundle,
    bundle,
    compile_rule,
    observe,
    prune,
    retain,
)
from spotzee.domain.segments.merging import merge_states
from spotzee.domain.segments.trackers import (
    CountSlot,
    LatestSlot,
    SlotModel,
    SpanSlot,
    TotalSlot,
    Tracker,
    TrackerKind,
    ValuesSlot,
)
from spotzee.schemas.structs import decode, encode
from tests.unit.test_segment_engine import (
    DAY,
    HOUR,
    NAMES,
    T0,
    UNITS,
    absolute,
    amount_filter,
    compare_ops,
    grid,
    offsets,
    properties,
    relative,
    rule_of,
)

NOW = T0


def fold(trackers: TrackerBundle | CompiledRule, events: Iterable[EventFact], now: datetime) -> SegmentState:
    """Observe ``events`` in timestamp order (stable: ties keep their order), all at ``now``."""
    state = SegmentState()
    for fact in sorted(events, key=lambda f: f.timestamp):
        state = observe(trackers, state, fact, now)
    return state


def fold_arriving(trackers: TrackerBundle, arrivals: Iterable[tuple[datetime, EventFact]]) -> SegmentState:
    """Observe events in arrival order, each at its own (non-decreasing) arrival time."""
    state = SegmentState()
    for at, fact in arrivals:
        state = observe(trackers, state, fact, at)
    return state


def canonical(state: SegmentState) -> dict[str, SlotModel]:
    """Slots with the order of equal-time ``sum`` entries normalised (it changes no aggregate)."""
    return {
        key: ValuesSlot(entries=sorted(slot.entries)) if isinstance(slot, ValuesSlot) else slot
        for key, slot in state.slots.items()
    }


# -- property: merge(fold(A), fold(B)) == fold(A ∪ B) ------------------------------------------

# Event conditions built from module-level strategies (drawing is most of the cost): every slot
# kind, windows of hours or days, absolute ranges, filters; several rules may share a tracker.
rolling_window = st.builds(lambda n, unit: {"within": {"last": n, "unit": unit}}, st.integers(1, 6), UNITS)
absolute_range = st.builds(lambda x, y: {"between": [min(x, y).isoformat(), max(x, y).isoformat()]}, grid, grid)
windows = st.one_of(st.just({}), rolling_window, rolling_window, absolute_range)
filters = st.lists(amount_filter | st.just({"path": "sku", "op": "in", "value": ["a1", "b2"]}), max_size=1)
count_measure = st.builds(lambda op, value: {"count": {"op": op, "value": value}}, compare_ops, st.integers(0, 4))
aggregate_measure = st.builds(
    lambda fn, op, value: {"aggregate": {"fn": fn, "property": "amount", "op": op, "value": value}},
    st.sampled_from(["sum", "avg", "min", "max"]),
    compare_ops,
    st.integers(-10, 80) | st.sampled_from([0.1, 30.3, 45.5]),
)
occurrence_measure = st.builds(
    lambda which, cond: {f"{which}_occurred": cond}, st.sampled_from(["first", "last"]), relative | absolute
)
measures = st.lists(
    st.one_of(count_measure, aggregate_measure, aggregate_measure, occurrence_measure), min_size=1, max_size=2
)


def condition(
    name: str, window: dict[str, Any], where: list[dict[str, Any]], measured: list[dict[str, Any]]
) -> dict[str, Any]:
    body: dict[str, Any] = {"type": "event", "name": name, **window}
    if where:
        body["where"] = where
    for measure in measured:
        if "within" not in window or not any(key.endswith("_occurred") for key in measure):  # no rolling occurrences
            body.update(measure)
    return body


def conditions(names: st.SearchStrategy[str]) -> st.SearchStrategy[dict[str, Any]]:
    return st.builds(condition, names, windows, filters, measures)


rule_sets = st.lists(
    st.lists(conditions(st.sampled_from(("buy", "buy", "view"))), min_size=1, max_size=3).map(
        lambda items: {"type": "all", "rules": items}
    ),
    min_size=1,
    max_size=3,
)
# Mostly "buy" events, some on an hour grid close to the clock.
event_names = st.sampled_from((*NAMES, "buy", "buy"))
event_offsets = offsets | st.integers(-30, 2).map(lambda h: h * HOUR)
event_properties = properties | st.fixed_dictionaries({"amount": st.integers(-5, 60)})
sides = st.sampled_from(["a", "b"])
Stream = list[tuple[datetime, EventFact]]  # (observed at, event)


def sequences(step: st.SearchStrategy[Any]) -> st.SearchStrategy[list[Any]]:
    """Short and long event lists (hypothesis's own list sizes stay short)."""
    return st.lists(step, max_size=6) | st.lists(step, min_size=6, max_size=16)


def split(events: Iterable[tuple[str, Any]]) -> tuple[list[Any], list[Any]]:
    items = list(events)
    return [item for side, item in items if side == "a"], [item for side, item in items if side == "b"]


# Two disjoint event lists around ``NOW``: late, ahead and equal timestamps are common.
split_events = sequences(
    st.tuples(
        sides,
        st.builds(
            lambda name, offset, props: EventFact(name=name, timestamp=NOW + offset, properties=props),
            event_names,
            event_offsets,
            event_properties,
        ),
    )
).map(split)


@settings(max_examples=200, deadline=None)
@given(bodies=rule_sets, events=split_events)
def test_merge_equals_observing_the_union(
    bodies: list[dict[str, Any]], events: tuple[list[EventFact], list[EventFact]]
) -> None:
    compiled = [compile_rule(rule_of(body)) for body in bodies]
    shared = bundle(compiled)
    a, b = events
    state_a, state_b = fold(shared, a, NOW), fold(shared, b, NOW)

    union = fold(shared, a + b, NOW)
    assert merge_states(shared.trackers, state_a, state_b, NOW) == union
    assert merge_states(shared.trackers, state_b, state_a, NOW) == fold(shared, b + a, NOW)
    # Only the given trackers' slots survive: merging for one rule is that rule's part of the union.
    assert merge_states(compiled[0].trackers, state_a, state_b, NOW) == retain(compiled[0], union)
    # Merging with a contact that has no state changes nothing the trackers know about.
    assert merge_states(shared.trackers, state_a, SegmentState(), NOW) == state_a


clock_steps = st.sampled_from([timedelta(0), HOUR]) | st.integers(0, 48 * 60).map(lambda m: m * timedelta(minutes=1))
later = st.sampled_from([timedelta(0), HOUR, DAY]) | st.integers(0, 72).map(lambda h: h * HOUR)


def on_one_clock(
    steps: list[tuple[str, timedelta, str, timedelta, dict[str, Any]]], last: timedelta
) -> tuple[Stream, Stream, datetime]:
    """Two disjoint event streams on one non-decreasing clock, and a merge time at or after both."""
    clock = T0 - 10 * DAY
    arrivals: list[tuple[str, tuple[datetime, EventFact]]] = []
    for side, step, name, offset, props in steps:
        clock += step
        arrivals.append((side, (clock, EventFact(name=name, timestamp=clock + offset, properties=props))))
    a, b = split(arrivals)
    return a, b, clock + last


split_arrivals = st.builds(
    on_one_clock, sequences(st.tuples(sides, clock_steps, event_names, event_offsets, event_properties)), later
)


@settings(max_examples=200, deadline=None)
@given(bodies=rule_sets, streams=split_arrivals)
def test_merge_equals_one_contact_observing_both_streams(
    bodies: list[dict[str, Any]],
    streams: tuple[Stream, Stream, datetime],
) -> None:
    """Each contact observed its own events as they arrived (late or ahead), clocks moving on."""
    shared = bundle(compile_rule(rule_of(body)) for body in bodies)
    a, b, merge_at = streams
    interleaved = sorted(a + b, key=lambda arrival: arrival[0])
    expected = prune(shared, fold_arriving(shared, interleaved), merge_at)
    merged = merge_states(shared.trackers, fold_arriving(shared, a), fold_arriving(shared, b), merge_at)
    assert canonical(merged) == canonical(expected)


# One "buy" condition per slot kind and numeric "buy" events on an hour grid with few distinct
# amounts: both contacts hold entries for the tracker, with equal timestamps and values across
# contacts (ties in sums, dominance across min/max queues, truncation of the K latest).
all_time = st.one_of(st.just({}), absolute_range)


def with_fn(fn: str) -> st.SearchStrategy[dict[str, Any]]:
    return aggregate_measure.map(lambda measure: {"aggregate": {**measure["aggregate"], "fn": fn}})


SHAPES: dict[str, tuple[st.SearchStrategy[dict[str, Any]], st.SearchStrategy[dict[str, Any]]]] = {
    "count": (all_time, count_measure),
    "latest": (rolling_window, count_measure),
    "total": (all_time, aggregate_measure),
    "sum": (rolling_window, with_fn("sum")),
    "avg": (rolling_window, with_fn("avg")),
    "min": (rolling_window, with_fn("min")),
    "max": (rolling_window, with_fn("max")),
    "span": (all_time, occurrence_measure),
}
grid_events = st.lists(
    st.tuples(st.integers(-8, 2), st.integers(0, 5) | st.sampled_from([0.1, 30.3, 45.5, 60]), sides),
    min_size=2,
    max_size=16,
)


@pytest.mark.parametrize("shape", list(SHAPES))
@settings(max_examples=40, deadline=None)
@given(data=st.data(), events=grid_events)
def test_merge_per_slot_kind_with_dense_ties(
    shape: str, data: st.DataObject, events: list[tuple[int, float, str]]
) -> None:
    window, measure = SHAPES[shape]
    rule = compile_rule(
        rule_of(data.draw(st.builds(condition, st.just("buy"), window, filters, measure.map(lambda m: [m]))))
    )
    assert {tracker.kind for tracker in rule.trackers.values()} == {"sum" if shape == "avg" else shape}
    facts = [(EventFact(name="buy", timestamp=NOW + h * HOUR, properties={"amount": v}), side) for h, v, side in events]
    a = [fact for fact, side in facts if side == "a"]
    b = [fact for fact, side in facts if side == "b"]
    merged = merge_states(rule.trackers, fold(rule, a, NOW), fold(rule, b, NOW), NOW)
    assert merged == fold(rule, a + b, NOW)


# -- examples, one per slot kind ----------------------------------------------------------------


def tracker(kind: TrackerKind, window: timedelta | None = None, keep: int = 0) -> Tracker:
    prop = "amount" if kind in ("total", "sum", "min", "max") else None
    return Tracker.make(kind, "buy", (), window=window, keep=keep, property=prop)


def merged_slot(t: Tracker, a: SlotModel | None, b: SlotModel | None, now: datetime = NOW) -> SlotModel:
    def state(slot: SlotModel | None) -> SegmentState:
        return SegmentState() if slot is None else SegmentState(slots={t.key: slot})

    return merge_states({t.key: t}, state(a), state(b), now).slots[t.key]


def test_counts_add_up() -> None:
    t = tracker("count")
    assert merged_slot(t, CountSlot(n=2), CountSlot(n=5)) == CountSlot(n=7)
    assert merged_slot(t, CountSlot(n=2), None) == CountSlot(n=2)


def test_rolling_count_keeps_the_k_latest_in_window_timestamps() -> None:
    t = tracker("latest", window=DAY, keep=2)
    a = LatestSlot(at=[NOW - 30 * HOUR, NOW - 2 * HOUR])  # the first one expired since it was observed
    b = LatestSlot(at=[NOW - 3 * HOUR, NOW - HOUR])
    assert merged_slot(t, a, b) == LatestSlot(at=[NOW - 2 * HOUR, NOW - HOUR])
    assert merged_slot(t, a, None) == LatestSlot(at=[NOW - 2 * HOUR])
    # Exactly one window ago is out; equal timestamps from both contacts both count.
    assert merged_slot(t, LatestSlot(at=[NOW - DAY]), LatestSlot(at=[NOW - HOUR])) == LatestSlot(at=[NOW - HOUR])
    tied = LatestSlot(at=[NOW - HOUR])
    assert merged_slot(t, tied, tied) == LatestSlot(at=[NOW - HOUR, NOW - HOUR])


def test_totals_add_exactly() -> None:
    t = tracker("total")
    a = TotalSlot(n=2, total="3/10", low=0.1, high=0.2)  # 0.1 + 0.2 as decimals, for readability
    b = TotalSlot(n=1, total="-1", low=-1.0, high=-1.0)
    assert merged_slot(t, a, b) == TotalSlot(n=3, total="-7/10", low=-1.0, high=0.2)
    assert merged_slot(t, TotalSlot(), b) == b
    # The real thing: float values are summed as exact rationals.
    rule = compile_rule(
        rule_of(
            {"type": "event", "name": "buy", "aggregate": {"fn": "sum", "property": "amount", "op": "gt", "value": 0}}
        )
    )
    events = [EventFact(name="buy", timestamp=NOW, properties={"amount": v}) for v in (0.1, 0.2, 0.3)]
    merged = merge_states(rule.trackers, fold(rule, events[:1], NOW), fold(rule, events[1:], NOW), NOW)
    assert merged == fold(rule, events, NOW)


def test_rolling_sums_keep_every_in_window_entry_in_time_order() -> None:
    t = tracker("sum", window=DAY)
    a = ValuesSlot(entries=[(NOW - 25 * HOUR, 9.0), (NOW - 2 * HOUR, 1.0), (NOW - HOUR, 2.0)])
    b = ValuesSlot(entries=[(NOW - 3 * HOUR, 3.0), (NOW - HOUR, 4.0)])
    expected = [(NOW - 3 * HOUR, 3.0), (NOW - 2 * HOUR, 1.0), (NOW - HOUR, 2.0), (NOW - HOUR, 4.0)]
    assert merged_slot(t, a, b) == ValuesSlot(entries=expected)


def test_rolling_min_and_max_rebuild_the_monotonic_queue() -> None:
    low = tracker("min", window=DAY)
    a = ValuesSlot(entries=[(NOW - 3 * HOUR, 5.0), (NOW - HOUR, 7.0)])
    b = ValuesSlot(entries=[(NOW - 2 * HOUR, 4.0)])  # later and smaller: 5 can never be the minimum again
    assert merged_slot(low, a, b) == ValuesSlot(entries=[(NOW - 2 * HOUR, 4.0), (NOW - HOUR, 7.0)])
    high = tracker("max", window=DAY)
    a = ValuesSlot(entries=[(NOW - 3 * HOUR, 9.0), (NOW - HOUR, 2.0)])
    b = ValuesSlot(entries=[(NOW - 2 * HOUR, 5.0)])
    assert merged_slot(high, a, b) == ValuesSlot(
        entries=[(NOW - 3 * HOUR, 9.0), (NOW - 2 * HOUR, 5.0), (NOW - HOUR, 2.0)]
    )
    # Same time, same value: one entry; same time, better value: only the better one; expired: gone.
    same = ValuesSlot(entries=[(NOW - HOUR, 3.0)])
    assert merged_slot(low, same, same) == same
    assert merged_slot(low, same, ValuesSlot(entries=[(NOW - HOUR, 1.0)])) == ValuesSlot(entries=[(NOW - HOUR, 1.0)])
    assert merged_slot(high, ValuesSlot(entries=[(NOW - DAY, 99.0)]), same) == same


def test_spans_take_the_earliest_first_and_the_latest_last() -> None:
    t = tracker("span")
    a = SpanSlot(first=NOW - 5 * DAY, last=NOW - 2 * DAY)
    b = SpanSlot(first=NOW - 3 * DAY, last=NOW - DAY)
    assert merged_slot(t, a, b) == SpanSlot(first=NOW - 5 * DAY, last=NOW - DAY)
    assert merged_slot(t, SpanSlot(), b) == b


def test_only_known_trackers_present_in_either_state_get_a_slot() -> None:
    counter, span = tracker("count"), tracker("span")
    a = SegmentState(slots={counter.key: CountSlot(n=1), "gone:123": CountSlot(n=4)})
    merged = merge_states({counter.key: counter, span.key: span}, a, SegmentState(), NOW)
    assert merged == SegmentState(slots={counter.key: CountSlot(n=1)})
    # The result is a plain state: it survives a JSON round trip.
    assert decode(SegmentState, encode(merged)) == merged


@pytest.mark.parametrize("kind", ["latest", "sum", "min", "max"])
def test_a_rolling_slot_of_one_contact_is_pruned_at_the_merge_time(kind: TrackerKind) -> None:
    t = tracker(kind, window=HOUR, keep=3)
    stale = (
        LatestSlot(at=[NOW - 2 * HOUR, NOW])
        if kind == "latest"
        else ValuesSlot(entries=[(NOW - 2 * HOUR, 1.0), (NOW, 0.0 if kind == "max" else 2.0)])
    )
    assert merged_slot(t, None, stale) == t.prune(stale, NOW)
