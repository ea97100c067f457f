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
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from fractions import Fraction
from typing import Literal, Protocol

from spotzee.domain.segments.facts import NO_MEMBERSHIPS, EventFact, MembershipContext
from spotzee.domain.segments.leaves import StaticRule, static_holds
from spotzee.domain.segments.operators import (
    attribute_breakpoints,
    compare,
    exact_float,
    occurred,
    occurrence_breakpoints,
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


@dataclass(frozen=True, eq=False)
class CompiledRule:
    rule: RuleNode
    root: Node
    trackers: Mapping[str, Tracker]
    by_event: Mapping[str, tuple[Tracker, ...]]
    dependencies: Dependencies
    checks: tuple[Check, ...] = ()  # every event check of the tree (read once per evaluation)
    timed: tuple[AttributeRule, ...] = ()  # attribute leaves with relative dates


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
    return CompiledRule(
        rule,
        root,
        dict(compiler.trackers),
        _group(compiler.trackers.values()),
        dependencies,
        tuple(checks),
        tuple(timed),
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


def observe(compiled: _HasTrackers, state: SegmentState, event: EventFact, now: datetime) -> SegmentState:
    """Fold one event into the state (pure). Events may be out of order: one older than a rolling
    window is ignored by that window, one inside it counts."""
    trackers = compiled.by_event.get(event.name)
    if not trackers:
        return state
    slots = dict(state.slots)
    for tracker in trackers:
        slots[tracker.key] = tracker.update(tracker.slot(state), event, now)
    return SegmentState.model_construct(slots=slots)


def prune(compiled: _HasTrackers, state: SegmentState, now: datetime) -> SegmentState:
    """Drop rolling-window entries that expired by ``now`` (e.g. when a timer fires)."""
    slots = dict(state.slots)
    for key, tracker in compiled.trackers.items():
        if key in slots:
            slots[key] = tracker.prune(tracker.slot(state), now)
    return SegmentState.model_construct(slots=slots)


def retain(compiled: _HasTrackers, state: SegmentState) -> SegmentState:
    """Keep only slots some current tracker uses (after segment definitions changed).

    A tracker new to a contact starts empty: filling it from history is the runtime's backfill.
    """
    return SegmentState.model_construct(slots={k: v for k, v in state.slots.items() if k in compiled.trackers})


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
        return exact_float(Fraction(slot.total))
    if fn == "min":
        return slot.low
    if fn == "max":
        return slot.high
    return exact_float(Fraction(slot.total) / slot.n)


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


# A check's view of an empty slot depends on the check only: built once per check. A contact's
# first evaluation (and every segment whose events it never did) reads empty slots only.
_EMPTY_VIEWS: dict[int, tuple[Check, _View]] = {}


def _empty_view(check: Check, slot: SlotModel) -> _View:
    found = _EMPTY_VIEWS.get(id(check))
    if found is None or found[0] is not check:  # (an id is reused once a check is gone)
        if len(_EMPTY_VIEWS) > 65536:
            _EMPTY_VIEWS.clear()
        found = _EMPTY_VIEWS[id(check)] = (check, _view(check, slot))
    return found[1]


class _Reader:
    """The compiled rule over one contact's state, evaluable at any instant >= the last observe."""

    def __init__(self, compiled: CompiledRule, state: SegmentState, contact: ContactState, context: MembershipContext):
        self.contact = contact
        self.context = context
        self.state = state
        self.checks = compiled.checks
        self._views: dict[int, _View] = {}  # built on first use: ``holds`` short-circuits
        self.timed = compiled.timed

    def view(self, check: Check) -> _View:
        found = self._views.get(id(check))
        if found is None:
            slot = check.tracker.slot(self.state)
            view = _empty_view(check, slot) if is_empty(slot) else _view(check, slot)
            found = self._views[id(check)] = view
        return found

    def holds(self, node: Node, at: datetime) -> bool:
        if isinstance(node, CombinatorNode):
            kind = node.kind
            for child in node.children:
                result = self.holds(child, at)
                if kind == "all":
                    if not result:
                        return False
                elif result:
                    return kind == "any"
            return kind != "any"
        if isinstance(node, EventNode):
            return all(self.view(check).holds(at) for check in node.checks)
        return static_holds(node.rule, self.contact, at, self.context)

    def breakpoints(self) -> list[datetime]:
        points: list[datetime] = []
        for check in self.checks:
            if not is_empty(check.tracker.slot(self.state)):  # an empty slot's view never flips
                points.extend(self.view(check).breakpoints())
        points.extend(p for rule in self.timed for p in attribute_breakpoints(rule, self.contact))
        return sorted(set(points))

    def leaves(self, at: datetime) -> tuple[bool, ...]:
        """The value of every time-dependent condition at ``at``."""
        views = tuple(self.view(check).holds(at) for check in self.checks)
        return views + tuple(static_holds(rule, self.contact, at, self.context) for rule in self.timed)


def matches(
    compiled: CompiledRule,
    state: SegmentState,
    contact: ContactState,
    now: datetime,
    context: MembershipContext = NO_MEMBERSHIPS,
) -> bool:
    """Membership at ``now`` from the incremental state (equals ``evaluate`` over the full log)."""
    return _Reader(compiled, state, contact, context).holds(compiled.root, now)


def matches_and_wake(
    compiled: CompiledRule,
    state: SegmentState,
    contact: ContactState,
    now: datetime,
    context: MembershipContext = NO_MEMBERSHIPS,
) -> tuple[bool, datetime | None]:
    """``matches(...)`` and ``next_change(...)`` without a context, reading the state once."""
    reader = _Reader(compiled, state, contact, context)
    member = reader.holds(compiled.root, now)
    if not compiled.dependencies.time:
        return member, None
    points = [p for p in reader.breakpoints() if p > now]
    if not points:
        return member, None
    before = reader.leaves(now)  # time-dependent leaves never read memberships
    return member, next((p for p in points if reader.leaves(p) != before), None)


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
    reader = _Reader(compiled, state, contact, context or NO_MEMBERSHIPS)
    points = [p for p in reader.breakpoints() if p > now]
    if context is None:
        before = reader.leaves(now)
        return next((p for p in points if reader.leaves(p) != before), None)
    current = reader.holds(compiled.root, now)
    return next((p for p in points if reader.holds(compiled.root, p) != current), None)
