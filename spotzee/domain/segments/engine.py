"""The incremental evaluator: compile a rule once, fold events into small state, answer at any instant.

- ``compile(rule)`` -> ``CompiledRule``: the rule's trackers (see ``state``), grouped by event
  name, and its ``Dependencies``;
- ``observe(compiled, state, event, now)`` -> new state: only trackers of ``event.name`` are touched;
- ``matches(compiled, state, contact, now, context)``: membership at ``now``;
- ``next_change(compiled, state, contact, now, context)``: the first instant after ``now`` at
  which membership flips with no new event (a rolling-window entry expiring, a relative date
  crossing its threshold), or None. Every time-dependent condition is constant on
  ``[p_i, p_i+1)`` between consecutive breakpoints and already flipped *at* a breakpoint, so
  scanning breakpoints in order gives the exact instant. Without ``context`` the answer is the
  first instant at which a time-dependent condition flips -- when membership *could* change.
  Absolute ranges (``before``/``after``, ``between``) compare fixed instants: they never flip
  with the clock, because an observed event counts from the moment it is observed.

For every rule, ``matches`` equals ``oracle.evaluate`` over the complete event log at the same
instant (tests/unit/test_segment_engine.py checks it property-wise), as long as ``now`` is
non-decreasing per contact and every event of the contact was observed once.
"""

from __future__ import annotations

from bisect import bisect_right
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from fractions import Fraction
from typing import Literal, Protocol

from spotzee.domain.segments.facts import NO_MEMBERSHIPS, Fact, MembershipContext
from spotzee.domain.segments.leaves import StaticRule, static_holds
from spotzee.domain.segments.operators import (
    OPS,
    attribute_breakpoints,
    attribute_holds,
    compare,
    exact_float,
    occurred,
    occurrence_breakpoints,
    read_attribute,
    shifted,
)
from spotzee.domain.segments.trackers import (
    CountSlot,
    LatestSlot,
    SegmentState,
    SlotModel,
    SpanSlot,
    TotalSlot,
    Tracker,
    ValuesSlot,
    is_empty,
    quotient,
    ratio,
)
from spotzee.schemas.contact_models import ContactState
from spotzee.schemas.rules import (
    AggregateFn,
    AllRule,
    AnyRule,
    AttributeRule,
    CompareOp,
    CountCondition,
    EventRule,
    ListRule,
    NoneRule,
    OccurrenceCondition,
    RuleNode,
    SegmentRefRule,
    SubscriptionRule,
    canonical_attribute_path,
    duration,
)

# -- compiled form ------------------------------------------------------------------------------


@dataclass(frozen=True, eq=False)
class CountCheck:
    tracker: Tracker
    op: CompareOp
    value: int


@dataclass(frozen=True, eq=False)
class AggregateCheck:
    tracker: Tracker
    fn: AggregateFn
    op: CompareOp
    value: float


@dataclass(frozen=True, eq=False)
class OccurrenceCheck:
    tracker: Tracker
    which: Literal["first", "last"]
    condition: OccurrenceCondition


Check = CountCheck | AggregateCheck | OccurrenceCheck


@dataclass(frozen=True, eq=False)
class EventNode:
    rule: EventRule
    checks: tuple[Check, ...]  # all must hold


@dataclass(frozen=True, eq=False)
class StaticNode:
    rule: StaticRule


@dataclass(frozen=True, eq=False)
class CombinatorNode:
    kind: Literal["all", "any", "none"]
    children: tuple[Node, ...]


Node = EventNode | StaticNode | CombinatorNode


def _overlaps(a: str, b: str) -> bool:
    return a == b or a.startswith(b + ".") or b.startswith(a + ".")


@dataclass(frozen=True)
class Dependencies:
    """What can change a segment's membership, so a processor re-evaluates only affected segments.

    ``attribute_paths`` are canonical (``email``, ``traits.address.city``); ``time`` says membership
    can change as the clock moves (schedule ``next_change``); a random sample depends only on the
    contact id, which never changes.
    """

    event_names: frozenset[str] = frozenset()
    attribute_paths: frozenset[str] = frozenset()
    list_ids: frozenset[str] = frozenset()
    segment_ids: frozenset[str] = frozenset()
    time: bool = False

    def affected_by_event(self, name: str) -> bool:
        return name in self.event_names

    def affected_by_attribute(self, path: str) -> bool:
        """A change at ``path`` (e.g. a ``FieldChange.path``) touches a path the rule reads, or a
        parent or child of it (``traits.address`` replaced; ``traits.address.city`` read)."""
        changed = "traits" if path == "traits" else canonical_attribute_path(path)
        return any(_overlaps(changed, read) for read in self.attribute_paths)


@dataclass(frozen=True, eq=False)
class TrackerBundle:
    """Trackers of several rules, deduplicated by key: observe once per event into a shared state."""

    trackers: Mapping[str, Tracker]
    by_event: Mapping[str, tuple[Tracker, ...]]


# A compiled rule's two programs (closures made once per definition; see "programs" below):
# ``Test(state, contact, at, context)``: membership at ``at``;
# ``Flip(state, contact, now, context, best)``: the first instant in ``(now, best)`` at which one
# time-dependent condition differs from its value at ``now``, else ``best``.
Test = Callable[[SegmentState, ContactState, datetime, MembershipContext], bool]
Flip = Callable[[SegmentState, ContactState, datetime, MembershipContext, datetime | None], datetime | None]
# ``Judge(state, contact, now, context)``: ``(Test(...now...), Flip(..., None))`` in one reading.
Judge = Callable[[SegmentState, ContactState, datetime, MembershipContext], tuple[bool, datetime | None]]


@dataclass(frozen=True, eq=False)
class CompiledRule:
    rule: RuleNode
    root: Node
    trackers: Mapping[str, Tracker]
    by_event: Mapping[str, tuple[Tracker, ...]]
    dependencies: Dependencies
    checks: tuple[Check, ...] = ()  # every event check of the tree
    timed: tuple[AttributeRule, ...] = ()  # attribute leaves with relative dates
    test: Test = field(default=lambda state, contact, at, context: False)  # ``compile`` sets the programs
    flips: tuple[Flip, ...] = ()  # one per condition that can flip with the clock
    flip: Flip = field(default=lambda state, contact, now, context, best: best)  # all of ``flips``
    judge: Judge | None = None  # membership and next change at once, for a rule of one timed condition


@dataclass
class _Compiler:
    trackers: dict[str, Tracker] = field(default_factory=dict)
    events: set[str] = field(default_factory=set)
    paths: set[str] = field(default_factory=set)
    lists: set[str] = field(default_factory=set)
    segments: set[str] = field(default_factory=set)
    time: bool = False

    def tracker(self, tracker: Tracker) -> Tracker:
        return self.trackers.setdefault(tracker.key, tracker)

    def node(self, rule: RuleNode) -> Node:
        if isinstance(rule, AllRule | AnyRule | NoneRule):
            return CombinatorNode(rule.type, tuple(self.node(child) for child in rule.rules))
        if isinstance(rule, EventRule):
            return self.event(rule)
        if isinstance(rule, AttributeRule):
            self.paths.add(canonical_attribute_path(rule.path))
            self.time = self.time or rule.op in ("within_last", "more_than")
        elif isinstance(rule, SubscriptionRule):
            self.paths.add(f"traits.subscriptions.{rule.channel}")
        elif isinstance(rule, ListRule):
            self.lists.add(rule.list_id)
        elif isinstance(rule, SegmentRefRule):
            self.segments.add(rule.segment_id)
        return StaticNode(rule)

    def event(self, rule: EventRule) -> EventNode:
        self.events.add(rule.name)
        where = tuple(rule.where)
        window = rule.within.length() if rule.within is not None else None
        bounds = rule.between
        checks: list[Check] = []
        count = rule.count
        if count is None and rule.aggregate is None and rule.first_occurred is None and rule.last_occurred is None:
            count = CountCondition(op="gte", value=1)
        if count is not None:
            if window is None:
                tracker = Tracker.make("count", rule.name, where, bounds=bounds)
            else:
                keep = count.value if count.op in ("gte", "lt") else count.value + 1
                tracker = Tracker.make("latest", rule.name, where, window=window, keep=keep)
            checks.append(CountCheck(self.tracker(tracker), count.op, count.value))
        if rule.aggregate is not None:
            agg = rule.aggregate
            if window is None:
                tracker = Tracker.make("total", rule.name, where, bounds=bounds, property=agg.property)
            else:
                kind: Literal["sum", "min", "max"] = "sum" if agg.fn in ("sum", "avg") else agg.fn  # type: ignore[assignment]
                tracker = Tracker.make(kind, rule.name, where, window=window, property=agg.property)
            checks.append(AggregateCheck(self.tracker(tracker), agg.fn, agg.op, agg.value))
        for which, condition in (("first", rule.first_occurred), ("last", rule.last_occurred)):
            if condition is not None:
                assert window is None, "validated: occurrences take no rolling window"
                tracker = self.tracker(Tracker.make("span", rule.name, where, bounds=bounds))
                checks.append(OccurrenceCheck(tracker, which, condition))  # type: ignore[arg-type]
                self.time = self.time or condition.op in ("within_last", "more_than")
        self.time = self.time or window is not None
        return EventNode(rule, tuple(checks))


def _group(trackers: Iterable[Tracker]) -> dict[str, tuple[Tracker, ...]]:
    grouped: dict[str, list[Tracker]] = {}
    for tracker in trackers:
        grouped.setdefault(tracker.event, []).append(tracker)
    return {name: tuple(items) for name, items in grouped.items()}


def compile(rule: RuleNode) -> CompiledRule:
    """Compile a validated rule: its trackers (state to keep per contact) and dependencies."""
    compiler = _Compiler()
    root = compiler.node(rule)
    dependencies = Dependencies(
        event_names=frozenset(compiler.events),
        attribute_paths=frozenset(compiler.paths),
        list_ids=frozenset(compiler.lists),
        segment_ids=frozenset(compiler.segments),
        time=compiler.time,
    )
    checks: list[Check] = []
    timed: list[AttributeRule] = []
    _leaves(root, checks, timed)
    flips = [flip for flip in map(_check_flip, checks) if flip is not None]
    flips.extend(_attribute_flip(rule) for rule in timed)
    return CompiledRule(
        rule,
        root,
        dict(compiler.trackers),
        _group(compiler.trackers.values()),
        dependencies,
        tuple(checks),
        tuple(timed),
        _node_test(root),
        tuple(flips),
        _flip_all(tuple(flips)),
        _judge(root),
    )


def _leaves(node: Node, checks: list[Check], timed: list[AttributeRule]) -> None:
    if isinstance(node, CombinatorNode):
        for child in node.children:
            _leaves(child, checks, timed)
    elif isinstance(node, EventNode):
        checks.extend(node.checks)
    elif isinstance(node.rule, AttributeRule) and node.rule.op in ("within_last", "more_than"):
        timed.append(node.rule)


compile_rule = compile


def depends_on(compiled: CompiledRule) -> Dependencies:
    return compiled.dependencies


def bundle(compiled: Iterable[CompiledRule]) -> TrackerBundle:
    """The trackers of many segments, for one ``SegmentState`` per contact shared by all of them."""
    trackers: dict[str, Tracker] = {}
    for rule in compiled:
        for key, tracker in rule.trackers.items():
            trackers.setdefault(key, tracker)
    return TrackerBundle(trackers, _group(trackers.values()))


# -- state transitions --------------------------------------------------------------------------


class _HasTrackers(Protocol):
    @property
    def trackers(self) -> Mapping[str, Tracker]: ...
    @property
    def by_event(self) -> Mapping[str, tuple[Tracker, ...]]: ...


def observe(compiled: _HasTrackers, state: SegmentState, event: Fact, now: datetime) -> SegmentState:
    """Fold one event into the state (pure). Events may be out of order: one older than a rolling
    window is ignored by that window, one inside it counts."""
    trackers = compiled.by_event.get(event.name)
    if not trackers:
        return state
    slots = dict(state.slots)
    for tracker in trackers:
        slots[tracker.key] = tracker.update(tracker.slot(state), event, now)
    return SegmentState(slots=slots)


def prune(compiled: _HasTrackers, state: SegmentState, now: datetime) -> SegmentState:
    """Drop rolling-window entries that expired by ``now`` (e.g. when a timer fires)."""
    slots: dict[str, SlotModel] | None = None  # copied on the first slot that changes
    for key, tracker in compiled.trackers.items():
        if key in state.slots:
            slot = tracker.slot(state)
            pruned = tracker.prune(slot, now)
            if pruned is not slot or state.slots[key] is not slot:
                if slots is None:
                    slots = dict(state.slots)
                slots[key] = pruned
    return state if slots is None else SegmentState(slots=slots)


def retain(compiled: _HasTrackers, state: SegmentState) -> SegmentState:
    """Keep only slots some current tracker uses (after segment definitions changed).

    A tracker new to a contact starts empty: filling it from history is the runtime's backfill.
    """
    return SegmentState(slots={k: v for k, v in state.slots.items() if k in compiled.trackers})


# -- reading the state at an instant ------------------------------------------------------------


class _View(Protocol):
    def holds(self, at: datetime) -> bool: ...
    def breakpoints(self) -> list[datetime]: ...


@dataclass(frozen=True)
class _Const:
    value: bool

    def holds(self, at: datetime) -> bool:
        return self.value

    def breakpoints(self) -> list[datetime]:
        return []


@dataclass(frozen=True)
class _RollingCount:
    at: list[datetime]
    window: timedelta
    op: CompareOp
    value: int

    def holds(self, at: datetime) -> bool:
        inside = len(self.at) - bisect_right(self.at, at - self.window)
        return compare(self.op, inside, self.value)

    def breakpoints(self) -> list[datetime]:
        return _expiries([t for t in self.at], self.window)


class _RollingSum:
    """Sum or average of the in-window values; suffix sums answer any instant in O(log n)."""

    def __init__(self, entries: list[tuple[datetime, float]], window: timedelta, check: AggregateCheck) -> None:
        self.times = [t for t, _ in entries]
        self.window = window
        self.check = check
        self.suffix = [Fraction(0)] * (len(entries) + 1)
        for i in range(len(entries) - 1, -1, -1):
            self.suffix[i] = self.suffix[i + 1] + Fraction(entries[i][1])

    def holds(self, at: datetime) -> bool:
        start = bisect_right(self.times, at - self.window)
        total, n = self.suffix[start], len(self.times) - start
        if self.check.fn == "sum":
            return compare(self.check.op, exact_float(total), self.check.value)
        return n > 0 and compare(self.check.op, exact_float(total / n), self.check.value)

    def breakpoints(self) -> list[datetime]:
        return _expiries(self.times, self.window)


@dataclass(frozen=True)
class _RollingExtreme:
    """Min/max from a monotonic queue: the first in-window entry is the extreme."""

    entries: list[tuple[datetime, float]]
    window: timedelta
    op: CompareOp
    value: float

    def holds(self, at: datetime) -> bool:
        start = bisect_right(self.entries, at - self.window, key=lambda e: e[0])
        return start < len(self.entries) and compare(self.op, self.entries[start][1], self.value)

    def breakpoints(self) -> list[datetime]:
        return _expiries([t for t, _ in self.entries], self.window)


@dataclass(frozen=True)
class _Occurrence:
    at: datetime | None
    condition: OccurrenceCondition

    def holds(self, at: datetime) -> bool:
        return occurred(self.condition, self.at, at)

    def breakpoints(self) -> list[datetime]:
        return occurrence_breakpoints(self.condition, self.at)


def _expiries(times: list[datetime], window: timedelta) -> list[datetime]:
    return [end for end in (shifted(t, window) for t in times) if end is not None]


def _static_aggregate(slot: TotalSlot, fn: AggregateFn) -> float | None:
    if slot.n == 0:
        return 0.0 if fn == "sum" else None
    if fn == "sum":
        return quotient(*ratio(slot.total))
    if fn == "min":
        return slot.low
    if fn == "max":
        return slot.high
    numerator, denominator = ratio(slot.total)
    return quotient(numerator, denominator * slot.n)


def _view(check: Check, slot: SlotModel) -> _View:
    window = check.tracker.window
    if isinstance(check, CountCheck):
        if isinstance(slot, LatestSlot) and window is not None:
            return _RollingCount(slot.at, window, check.op, check.value)
        n = slot.n if isinstance(slot, CountSlot) else 0
        return _Const(compare(check.op, n, check.value))
    if isinstance(check, AggregateCheck):
        if isinstance(slot, TotalSlot):
            result = _static_aggregate(slot, check.fn)
            return _Const(result is not None and compare(check.op, result, check.value))
        assert isinstance(slot, ValuesSlot)
        assert window is not None
        if check.fn in ("sum", "avg"):
            return _RollingSum(slot.entries, window, check)
        return _RollingExtreme(slot.entries, window, check.op, check.value)
    assert isinstance(slot, SpanSlot)
    return _Occurrence(slot.first if check.which == "first" else slot.last, check.condition)


def _breakpoints(compiled: CompiledRule, state: SegmentState, contact: ContactState) -> list[datetime]:
    """Every instant at which a time-dependent condition of ``compiled`` may flip, ascending."""
    points: list[datetime] = []
    for check in compiled.checks:
        slot = check.tracker.slot(state)
        if not is_empty(slot):  # an empty slot's view never flips
            points.extend(_view(check, slot).breakpoints())
    points.extend(p for rule in compiled.timed for p in attribute_breakpoints(rule, contact))
    return sorted(set(points))


# -- programs: the rule tree as closures ---------------------------------------------------------
#
# ``matches`` runs for every affected segment of every record, so a rule is turned once into
# closures that read the slots directly: no dispatch on node and slot types, no view objects.
# Each closure answers exactly what ``_view(check, slot).holds(at)`` / ``static_holds`` answer
# (tests/unit/test_segment_engine.py checks them against the full recompute).


def _node_test(node: Node) -> Test:
    if isinstance(node, CombinatorNode):
        return _combinator_test(node.kind, tuple(_node_test(child) for child in node.children))
    if isinstance(node, EventNode):
        return _combinator_test("all", tuple(_check_test(check) for check in node.checks))
    if isinstance(node.rule, AttributeRule) and node.rule.op in ("in", "not_in"):
        return _membership_test(node.rule)
    rule = node.rule

    def static(state: SegmentState, contact: ContactState, at: datetime, context: MembershipContext) -> bool:
        return static_holds(rule, contact, at, context)

    return static


def _combinator_test(kind: Literal["all", "any", "none"], children: tuple[Test, ...]) -> Test:
    """``all`` / ``any`` / ``none`` of ``children``, short-circuiting in order (one or two children,
    the usual case, without a loop)."""
    if len(children) == 1 and kind != "none":
        return children[0]
    if len(children) == 2:
        first, second = children
        if kind == "all":
            return lambda state, contact, at, context: (
                first(state, contact, at, context) and second(state, contact, at, context)
            )
        if kind == "any":
            return lambda state, contact, at, context: (
                first(state, contact, at, context) or second(state, contact, at, context)
            )
    if kind == "all":

        def every(state: SegmentState, contact: ContactState, at: datetime, context: MembershipContext) -> bool:
            return all(child(state, contact, at, context) for child in children)

        return every

    found = kind == "any"  # what the first child that holds makes of an ``any`` / a ``none``

    def some(state: SegmentState, contact: ContactState, at: datetime, context: MembershipContext) -> bool:
        for child in children:
            if child(state, contact, at, context):
                return found
        return not found

    return some


def _membership_test(rule: AttributeRule) -> Test:
    """``in`` / ``not_in`` of an attribute: a string against string options is a set look-up."""
    options = rule.value if isinstance(rule.value, list) else []
    texts = frozenset(options) if options and all(type(option) is str for option in options) else None
    negated = rule.op == "not_in"

    def membership(state: SegmentState, contact: ContactState, at: datetime, context: MembershipContext) -> bool:
        if texts is not None:
            actual = read_attribute(contact, rule.path)
            if type(actual) is str:
                return (actual in texts) != negated  # what ``holds`` answers: ``equal`` of two strings is ``==``
        return attribute_holds(rule, contact, at)

    return membership


def _count_op(op: CompareOp, value: int) -> Callable[[int, int], bool]:
    """``compare(op, n, value)`` for a count ``n``: two ints are compared directly (``compare``'s own fast path)."""
    if type(value) is int:
        return OPS[op]
    return lambda n, threshold: compare(op, n, threshold)


def _check_test(check: Check) -> Test:
    if isinstance(check, CountCheck):
        return _rolling_count_test(check) if check.tracker.kind == "latest" else _count_test(check)
    if isinstance(check, AggregateCheck) and check.tracker.kind == "total":
        return _total_test(check)
    if isinstance(check, OccurrenceCheck):
        return _occurrence_test(check)
    tracker = check.tracker

    def rolling_values(state: SegmentState, contact: ContactState, at: datetime, context: MembershipContext) -> bool:
        return _view(check, tracker.slot(state)).holds(at)  # sum, avg, min, max over a window

    return rolling_values


def _count_test(check: CountCheck) -> Test:
    key, value, compare_count = check.tracker.key, check.value, _count_op(check.op, check.value)

    def count(state: SegmentState, contact: ContactState, at: datetime, context: MembershipContext) -> bool:
        found = state.slots.get(key)
        return compare_count(found.n if type(found) is CountSlot else 0, value)

    return count


def _rolling_count_test(check: CountCheck) -> Test:
    key, value, window = check.tracker.key, check.value, check.tracker.window
    compare_count = _count_op(check.op, value)
    assert window is not None

    def rolling_count(state: SegmentState, contact: ContactState, at: datetime, context: MembershipContext) -> bool:
        found = state.slots.get(key)
        if type(found) is not LatestSlot:
            return compare_count(0, value)
        times = found.at
        return compare_count(len(times) - bisect_right(times, at - window), value)

    return rolling_count


def _total_test(check: AggregateCheck) -> Test:
    key, fn, op, threshold = check.tracker.key, check.fn, check.op, check.value
    empty = check.tracker.empty()
    assert isinstance(empty, TotalSlot)

    def total(state: SegmentState, contact: ContactState, at: datetime, context: MembershipContext) -> bool:
        found = state.slots.get(key)
        result = _static_aggregate(found if type(found) is TotalSlot else empty, fn)
        return result is not None and compare(op, result, threshold)

    return total


def _occurrence_test(check: OccurrenceCheck) -> Test:
    key, first, condition = check.tracker.key, check.which == "first", check.condition
    span = _relative_span(condition)
    if span is not None:  # ``occurred`` of ``within_last`` / ``more_than``, the duration made once
        within = condition.op == "within_last"

        def relative(state: SegmentState, contact: ContactState, at: datetime, context: MembershipContext) -> bool:
            found = state.slots.get(key)
            when = (found.first if first else found.last) if type(found) is SpanSlot else None
            if when is None:
                return False
            threshold = at - span
            return when > threshold if within else when <= threshold

        return relative

    def occurrence(state: SegmentState, contact: ContactState, at: datetime, context: MembershipContext) -> bool:
        found = state.slots.get(key)
        if type(found) is not SpanSlot:
            return occurred(condition, None, at)
        return occurred(condition, found.first if first else found.last, at)

    return occurrence


def _relative_span(condition: OccurrenceCondition) -> timedelta | None:
    """The duration of a ``within_last`` / ``more_than`` condition (None for the others, and for one
    no timedelta holds: ``occurred`` raises for it as it did)."""
    if condition.op not in ("within_last", "more_than") or condition.unit is None:
        return None
    try:
        return duration(condition.value, condition.unit)
    except ValueError:
        return None


def _check_flip(check: Check) -> Flip | None:
    """The check's flip program; None for a check that never flips with the clock (all time, an
    absolute range, before / after a fixed instant)."""
    if isinstance(check, CountCheck):
        return _rolling_count_flip(check) if check.tracker.kind == "latest" else None
    if isinstance(check, AggregateCheck) and check.tracker.kind == "total":
        return None
    if isinstance(check, OccurrenceCheck):
        return _occurrence_flip(check) if check.condition.unit is not None else None
    tracker = check.tracker

    def rolling_values(
        state: SegmentState, contact: ContactState, now: datetime, context: MembershipContext, best: datetime | None
    ) -> datetime | None:
        slot = tracker.slot(state)
        if is_empty(slot):  # an empty slot's view never flips
            return best
        view = _view(check, slot)
        return _first_of(view.holds, view.breakpoints(), now, best)

    return rolling_values


def _rolling_count_flip(check: CountCheck) -> Flip:
    key, value, window = check.tracker.key, check.value, check.tracker.window
    compare_count = _count_op(check.op, value)
    assert window is not None

    def rolling_count(
        state: SegmentState, contact: ContactState, now: datetime, context: MembershipContext, best: datetime | None
    ) -> datetime | None:
        found = state.slots.get(key)
        if type(found) is not LatestSlot or not found.at:
            return best
        times = found.at
        size = len(times)
        start = bisect_right(times, now - window)  # the entries that expire after ``now``
        before = compare_count(size - start, value)
        for at in times[start:]:
            try:
                end = at + window  # ``shifted``
            except OverflowError:
                break  # past the end of the calendar, and so is every later expiry
            if best is not None and end >= best:
                break  # ascending: every later expiry is as late
            if compare_count(size - bisect_right(times, end - window), value) != before:
                return end
        return best

    return rolling_count


def _occurrence_flip(check: OccurrenceCheck) -> Flip:
    key, first, condition = check.tracker.key, check.which == "first", check.condition
    span = _relative_span(condition)

    def occurrence(
        state: SegmentState, contact: ContactState, now: datetime, context: MembershipContext, best: datetime | None
    ) -> datetime | None:
        found = state.slots.get(key)
        if type(found) is not SpanSlot:
            return best
        at = found.first if first else found.last
        if span is None or at is None:
            return _first_of(
                lambda instant: occurred(condition, at, instant), occurrence_breakpoints(condition, at), now, best
            )
        try:
            end = at + span  # the one breakpoint
        except OverflowError:
            return best
        # ``within_last`` holds before ``end`` and not from it on, ``more_than`` the other way round:
        # the condition flips at ``end`` whenever ``end`` is still ahead.
        return end if end > now and (best is None or end < best) else best

    return occurrence


def _attribute_flip(rule: AttributeRule) -> Flip:
    def relative_date(
        state: SegmentState, contact: ContactState, now: datetime, context: MembershipContext, best: datetime | None
    ) -> datetime | None:
        def holds(at: datetime) -> bool:
            return static_holds(rule, contact, at, context)

        return _first_of(holds, attribute_breakpoints(rule, contact), now, best)

    return relative_date


def _first_of(
    holds: Callable[[datetime], bool], points: list[datetime], now: datetime, best: datetime | None
) -> datetime | None:
    """The first of ``points`` in ``(now, best)`` at which ``holds`` differs from ``holds(now)``, else ``best``."""
    ahead = sorted(p for p in points if p > now and (best is None or p < best))
    if not ahead:
        return best
    before = holds(now)
    return next((p for p in ahead if holds(p) != before), best)


def _judge(root: Node) -> Judge | None:
    """The one-reading program of a rule that is a single rolling count or relative occurrence
    (what ``matches_and_wake`` reads twice otherwise); None for the others."""
    if not isinstance(root, EventNode) or len(root.checks) != 1:
        return None
    (check,) = root.checks
    if isinstance(check, CountCheck) and check.tracker.kind == "latest":
        return _rolling_count_judge(check)
    if isinstance(check, OccurrenceCheck) and _relative_span(check.condition) is not None:
        return _occurrence_judge(check)
    return None


def _rolling_count_judge(check: CountCheck) -> Judge:
    key, value, window = check.tracker.key, check.value, check.tracker.window
    compare_count = _count_op(check.op, value)
    assert window is not None
    empty = (compare_count(0, value), None)  # no entry: a constant count of 0

    def rolling_count(
        state: SegmentState, contact: ContactState, now: datetime, context: MembershipContext
    ) -> tuple[bool, datetime | None]:
        found = state.slots.get(key)
        if type(found) is not LatestSlot or not found.at:
            return empty
        times = found.at
        size = len(times)
        start = bisect_right(times, now - window)  # the entries that expire after ``now``
        member = compare_count(size - start, value)
        for at in times[start:]:
            try:
                end = at + window
            except OverflowError:
                break  # past the end of the calendar, and so is every later expiry
            if compare_count(size - bisect_right(times, at), value) != member:  # (``end - window`` is ``at``)
                return member, end
        return member, None

    return rolling_count


def _occurrence_judge(check: OccurrenceCheck) -> Judge:
    key, first, condition = check.tracker.key, check.which == "first", check.condition
    span = _relative_span(condition)
    assert span is not None
    within = condition.op == "within_last"

    def relative(
        state: SegmentState, contact: ContactState, now: datetime, context: MembershipContext
    ) -> tuple[bool, datetime | None]:
        found = state.slots.get(key)
        when = (found.first if first else found.last) if type(found) is SpanSlot else None
        if when is None:
            return False, None
        threshold = now - span
        member = when > threshold if within else when <= threshold
        try:
            end = when + span  # where it flips (see ``_occurrence_flip``)
        except OverflowError:
            return member, None
        return member, end if end > now else None

    return relative


def _flip_all(flips: tuple[Flip, ...]) -> Flip:
    """The flip program of a rule: its conditions' in turn, each bounded by the best found so far."""
    if len(flips) == 1:
        return flips[0]

    def every(
        state: SegmentState, contact: ContactState, now: datetime, context: MembershipContext, best: datetime | None
    ) -> datetime | None:
        for flip in flips:
            best = flip(state, contact, now, context, best)
        return best

    return every


def first_flip(
    compiled: CompiledRule, state: SegmentState, contact: ContactState, now: datetime, context: MembershipContext
) -> datetime | None:
    """The first breakpoint after ``now`` at which the tuple of every time-dependent condition's value
    differs from that tuple at ``now``.

    A condition changes only at its own breakpoints, so that instant is the earliest, over the
    conditions, of each one's first own breakpoint at which it differs: each condition is read at
    its own breakpoints only (and none past the best found so far), not every condition at every one."""
    return compiled.flip(state, contact, now, context, None)


def matches(
    compiled: CompiledRule,
    state: SegmentState,
    contact: ContactState,
    now: datetime,
    context: MembershipContext = NO_MEMBERSHIPS,
) -> bool:
    """Membership at ``now`` from the incremental state (equals ``evaluate`` over the full log)."""
    return compiled.test(state, contact, now, context)


def matches_and_wake(
    compiled: CompiledRule,
    state: SegmentState,
    contact: ContactState,
    now: datetime,
    context: MembershipContext = NO_MEMBERSHIPS,
) -> tuple[bool, datetime | None]:
    """``matches(...)`` and ``next_change(...)`` without a context."""
    if compiled.judge is not None:
        return compiled.judge(state, contact, now, context)
    member = compiled.test(state, contact, now, context)
    if not compiled.dependencies.time:
        return member, None
    return member, first_flip(compiled, state, contact, now, context)  # time-dependent leaves never read memberships


def next_change(
    compiled: CompiledRule,
    state: SegmentState,
    contact: ContactState,
    now: datetime,
    context: MembershipContext | None = None,
) -> datetime | None:
    """The earliest instant after ``now`` at which membership flips without a new event, or None.

    With ``context`` (lists and other segments as of now) the instant is exact: membership is
    the same at every instant in ``[now, result)`` and different at ``result``. Without it, the
    first instant at which any time-dependent condition flips (membership may or may not follow).
    """
    if context is None:
        return first_flip(compiled, state, contact, now, NO_MEMBERSHIPS)
    points = [p for p in _breakpoints(compiled, state, contact) if p > now]
    current = compiled.test(state, contact, now, context)
    return next((p for p in points if compiled.test(state, contact, p, context) != current), None)
