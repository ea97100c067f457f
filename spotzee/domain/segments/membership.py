"""One contact's membership in every segment of its project, maintained incrementally (pure).

``ProjectSegments`` is the compiled form of a project's live segment definitions (topological
order: a segment comes after the segments it references). ``ContactSegments`` is what the
contact processor stores per contact: the shared tracker slots, which trackers are *complete*
(built from the contact's whole history), live events buffered for incomplete trackers, current
memberships, list memberships and per-segment wake-up times.

A tracker is complete for a contact created after the tracker existed (it saw every event) and,
for an older contact, once its backfill arrived: a ``SegmentRefresh`` with seeds (slots computed
from ClickHouse, refused while a buffered live fact may be counted in them) or facts (from
ClickHouse, merged with the buffered live facts by messageId); or, for a contact with no matching
history, once its partition swept the segment version (``adopt``: the empty slot plus the buffered
live facts). A segment is evaluated for a contact only when all its trackers are complete --
never on half a history.

Every function returns the new state and the membership transitions; nothing here does I/O.
"""

from __future__ import annotations

import heapq
from collections.abc import Collection, Iterable, Mapping
from dataclasses import dataclass
from datetime import datetime
from typing import NamedTuple, NotRequired, TypedDict, Unpack

import msgspec

from spotzee.domain.segments.engine import (
    CompiledRule,
    Dependencies,
    TrackerBundle,
    bundle,
    compile,
    prune,
)
from spotzee.domain.segments.facts import MembershipContext
from spotzee.domain.segments.graph import segment_references
from spotzee.domain.segments.merging import merge_states
from spotzee.domain.segments.seeding import holds_nothing
from spotzee.domain.segments.trackers import SegmentState, SlotModel, Tracker, is_empty
from spotzee.schemas.contact_models import ContactState, FieldChange
from spotzee.schemas.segment_models import HistoryFact, SegmentDefinition, SegmentStatus
from spotzee.schemas.structs import Struct, replace

# Contact fields whose changes the contact reducer does not report as FieldChange (they move with
# every message): a segment reading one is re-evaluated on every record of the contact.
VOLATILE_PATHS = frozenset({"user_id", "first_seen", "last_seen", "created_at"})

_AFFECTED_CACHE_LIMIT = 4096
_IN_SYNC_LIMIT = 16384  # states, each replacing the one it was made from: about one per recent contact
_NO_PATHS: frozenset[str] = frozenset()
_NO_SEGMENTS: frozenset[str] = frozenset()


@dataclass(frozen=True, eq=False)
class ActiveSegment:
    id: str
    version: int
    compiled: CompiledRule
    tracker_keys: frozenset[str]
    references: frozenset[str]
    volatile: bool  # reads a field that changes without a FieldChange
    index: int = 0  # position in the evaluation (topological) order
    dependents: tuple[int, ...] = ()  # indexes of the segments referencing this one
    time: bool = False  # membership can change as the clock moves (``Dependencies.time``)


class ProjectSegments:
    """The live (not deleted) segments of one project, compiled once per definition change."""

    def __init__(self, definitions: Iterable[SegmentDefinition]) -> None:
        live = {d.id: d for d in definitions if d.status != SegmentStatus.deleted}
        order = _topological(live)
        index = {segment_id: i for i, segment_id in enumerate(order)}
        dependents: dict[str, list[int]] = {}
        references: dict[str, frozenset[str]] = {}
        for segment_id in order:
            references[segment_id] = frozenset(segment_references(live[segment_id].rule))
            for ref in references[segment_id]:
                if ref in index:
                    dependents.setdefault(ref, []).append(index[segment_id])
        self.segments: dict[str, ActiveSegment] = {}
        for segment_id in order:
            definition = live[segment_id]
            compiled = compile(definition.rule)
            deps = compiled.dependencies
            self.segments[segment_id] = ActiveSegment(
                id=segment_id,
                version=definition.version,
                compiled=compiled,
                tracker_keys=frozenset(compiled.trackers),
                references=references[segment_id],
                volatile=bool(deps.attribute_paths & VOLATILE_PATHS),
                index=index[segment_id],
                dependents=tuple(sorted(dependents.get(segment_id, ()))),
                time=deps.time,
            )
        self.order: tuple[ActiveSegment, ...] = tuple(self.segments.values())
        self.bundle: TrackerBundle = bundle(s.compiled for s in self.order)
        self.tracker_keys: tuple[str, ...] = tuple(sorted(self.bundle.trackers))
        self._tracker_set = frozenset(self.tracker_keys)
        self._timed = frozenset(s.id for s in self.order if s.time)
        # Indexes for ``affected_by``: it runs for every record of every contact.
        self._volatile = frozenset(s.id for s in self.order if s.volatile)
        self._by_event: dict[str, frozenset[str]] = {}
        self._by_list: dict[str, set[str]] = {}
        self._readers: list[tuple[str, Dependencies]] = []
        by_event: dict[str, set[str]] = {}
        for s in self.order:
            deps = s.compiled.dependencies
            for name in deps.event_names:
                by_event.setdefault(name, set()).add(s.id)
            for list_id in deps.list_ids:
                self._by_list.setdefault(list_id, set()).add(s.id)
            if deps.attribute_paths:
                self._readers.append((s.id, deps))
        self._by_event = {name: frozenset(ids) for name, ids in by_event.items()}
        # (event, changed paths) -> affected segments: a project sees few distinct combinations;
        # affected segments -> their positions in the evaluation order, ascending.
        self._affected: dict[tuple[str | None, frozenset[str]], frozenset[str]] = {}
        self._by_event_only: dict[str | None, frozenset[str]] = {}  # the same without attribute changes
        self._plans: dict[frozenset[str], tuple[int, ...]] = {}
        # States known to hold nothing these definitions no longer have (``in_sync``), by identity:
        # a contact's state is read again and again unchanged (the processor's cache) and what the
        # functions below make from a state in sync is in sync too. Held, so an id is not reused.
        self._in_sync: dict[int, ContactSegments] = {}

    def affected_by(
        self, *, event: str | None = None, changes: Iterable[FieldChange] = (), lists: Iterable[str] = ()
    ) -> frozenset[str]:
        """Segments whose membership may change because of this event / these changes."""
        if not changes and not lists:
            found = self._by_event_only.get(event)
            if found is None:
                found = self._by_event_only[event] = self._affected_by(event, _NO_PATHS)
            return found
        paths = frozenset(c.path for c in changes)
        found = self._affected.get((event, paths))
        if found is None:
            found = self._affected_by(event, paths)
            if len(self._affected) >= _AFFECTED_CACHE_LIMIT:
                self._affected.clear()
            self._affected[(event, paths)] = found
        for list_id in lists:
            found = found | self._by_list.get(list_id, set())
        return found

    def _affected_by(self, event: str | None, paths: frozenset[str]) -> frozenset[str]:
        found = set(self._volatile)
        if event is not None:
            found |= self._by_event.get(event, frozenset())
        if paths:
            for segment_id, deps in self._readers:
                if segment_id not in found and any(deps.affected_by_attribute(p) for p in paths):
                    found.add(segment_id)
        return frozenset(found)

    def timed(self) -> frozenset[str]:
        return self._timed

    def plan(self, affected: frozenset[str]) -> tuple[int, ...]:
        """The positions in ``order`` of the live segments among ``affected``, ascending."""
        found = self._plans.get(affected)
        if found is None:
            found = tuple(sorted(self.segments[sid].index for sid in affected if sid in self.segments))
            if len(self._plans) >= _AFFECTED_CACHE_LIMIT:
                self._plans.clear()
            self._plans[affected] = found
        return found

    def in_sync(self, cs: ContactSegments) -> bool:
        """``cs`` buffers nothing and holds nothing about trackers or segments these definitions no
        longer have (then ``_synced`` returns it as it is, and no membership of it has ended)."""
        if self._in_sync.get(id(cs)) is cs:
            return True
        trackers, segments = self._tracker_set, self.segments.keys()
        found = (
            not cs.pending
            and not cs.seeding
            and trackers.issuperset(cs.complete)
            and trackers.issuperset(cs.state.slots)
            and segments >= cs.wakes.keys()
            and segments >= cs.members.keys()
        )
        if found:
            self.keep_in_sync(cs)
        return found

    def keep_in_sync(self, cs: ContactSegments, replaces: ContactSegments | None = None) -> None:
        """Remember ``cs`` as in sync: evaluated from a state ``_synced`` returned, with nothing
        buffered (its slots are these trackers', its wakes and memberships these segments'). The
        state it ``replaces`` is forgotten (read again, it is checked again)."""
        known = self._in_sync
        if replaces is not None:
            known.pop(id(replaces), None)
        if len(known) >= _IN_SYNC_LIMIT:
            known.clear()
        known[id(cs)] = cs

    def all_complete(self, cs: ContactSegments) -> bool:
        """Every tracker of these definitions is complete for ``cs`` (a state ``_synced`` returned:
        its ``complete`` holds distinct live tracker keys only)."""
        return len(cs.complete) == len(self.tracker_keys)


def _topological(live: Mapping[str, SegmentDefinition]) -> list[str]:
    """Referenced segments first; deterministic; references to unknown ids are ignored (cycles
    are rejected when a definition is written, a defensive visit-once guard stays)."""
    order: list[str] = []
    seen: set[str] = set()

    def visit(segment_id: str) -> None:
        if segment_id in seen:
            return
        seen.add(segment_id)
        for ref in sorted(segment_references(live[segment_id].rule)):
            if ref in live:
                visit(ref)
        order.append(segment_id)

    for segment_id in sorted(live):
        visit(segment_id)
    return order


# -- per-contact state ----------------------------------------------------------------------------
#
# Values (Structs, shared with the processor's state cache): every function below returns
# new ones and never changes what it was given. The JSON is the one the pydantic models wrote.
# ``gc=False``: they hold plain data, never a reference cycle, so the collector need not track them.


class Membership(Struct, kw_only=True, gc=False):
    since: datetime
    version: int


class Seeding(Struct, kw_only=True, gc=False):
    version: int
    facts: list[HistoryFact] = msgspec.field(default_factory=list)


class ContactSegments(Struct, kw_only=True, gc=False):
    state: SegmentState = msgspec.field(default_factory=SegmentState)
    complete: list[str] = msgspec.field(default_factory=list)  # tracker keys, sorted
    pending: list[HistoryFact] = msgspec.field(default_factory=list)  # live facts for incomplete trackers
    seeding: dict[str, Seeding] = msgspec.field(default_factory=dict)  # backfill chunks, by segment id
    members: dict[str, Membership] = msgspec.field(default_factory=dict)
    lists: list[str] = msgspec.field(default_factory=list)
    wakes: dict[str, datetime] = msgspec.field(default_factory=dict)  # segment id -> next re-evaluation
    changes: int = 0  # transitions so far: numbers them, the same again when a batch is replayed
    evaluated: bool = False  # every segment was evaluated once (then only what changed is)

    @property
    def wake_at(self) -> datetime | None:
        return min(self.wakes.values(), default=None)


class Transition(NamedTuple):
    segment_id: str
    version: int
    entered: bool
    seq: int = 0  # the contact's transition number (1, 2, ...): a deterministic id for outputs


class Outcome(NamedTuple):
    """The contact's new state (``state`` is the given one when nothing changed) and its transitions
    (none: a shared empty list, never changed)."""

    state: ContactSegments
    transitions: list[Transition] = []  # noqa: RUF012


def fresh(project: ProjectSegments, *, new_contact: bool) -> ContactSegments:
    """State for a contact seen for the first time: with no history, every tracker is complete."""
    return ContactSegments(complete=list(project.tracker_keys) if new_contact else [])


def _synced(project: ProjectSegments, cs: ContactSegments) -> ContactSegments:
    """Drop slots, completeness and buffered facts that no live segment needs any more."""
    if project.in_sync(cs):
        return cs  # the common case: nothing to drop (states are never changed in place)
    trackers = project.bundle.trackers
    complete = [k for k in cs.complete if k in trackers]
    done = set(complete)
    slots = {k: v for k, v in cs.state.slots.items() if k in trackers}
    wanted = {t.event for k, t in trackers.items() if k not in done}
    pending = [f for f in cs.pending if f.name in wanted]
    seeding = {sid: s for sid, s in cs.seeding.items() if sid in project.segments}
    wakes = {sid: w for sid, w in cs.wakes.items() if sid in project.segments}
    return replace(
        cs, state=SegmentState(slots=slots), complete=complete, pending=pending, seeding=seeding, wakes=wakes
    )


def on_event(
    project: ProjectSegments,
    cs: ContactSegments,
    contact: ContactState,
    fact: HistoryFact | None,
    changes: Iterable[FieldChange],
    now: datetime,
) -> Outcome:
    """A message of the contact: ``fact`` for a track event (None for identify, page, ...),
    ``changes`` the attribute changes it made."""
    given = cs
    settled = project.in_sync(cs)  # (then no membership of it has ended)
    if not settled:
        cs = _synced(project, cs)
    if fact is not None:
        cs = _observed(project, cs, fact, now)
    if not cs.evaluated:
        outcome = _evaluate(project, cs, contact, now, None)
    else:
        affected = project.affected_by(event=fact.name if fact else None, changes=changes)
        outcome = _evaluate(project, cs, contact, now, affected, settled=settled)
    state = outcome.state
    if state is not given and not state.pending and not state.seeding:
        project.keep_in_sync(state, given)  # (what ``_synced`` returned holds only these trackers and segments)
    return outcome


def _observed(project: ProjectSegments, cs: ContactSegments, fact: HistoryFact, now: datetime) -> ContactSegments:
    """``fact`` folded into the complete trackers of its event, buffered for the incomplete ones."""
    trackers = project.bundle.by_event.get(fact.name)
    if not trackers:
        return cs
    complete = None if project.all_complete(cs) else set(cs.complete)
    state = cs.state
    slots: dict[str, SlotModel] | None = None  # copied on the first slot that changes
    buffered = False
    for tracker in trackers:
        key = tracker.key
        if complete is not None and key not in complete:
            buffered = True
            continue
        found = state.slots.get(key)
        slot = found if type(found) is tracker.slot_type else tracker.empty_slot  # ``tracker.slot(state)``
        updated = tracker.update(slot, fact, now)
        if updated is not slot or (found is not None and found is not slot):  # (a slot of another kind: replaced)
            if slots is None:
                slots = dict(state.slots)
            slots[key] = updated
    pending = cs.pending
    if buffered and all(p.message_id != fact.message_id for p in pending):
        pending = [*pending, fact]
    if slots is None and pending is cs.pending:
        return cs  # an event no tracker counts (a filter rejected it) and nothing expired
    return replace(cs, state=state if slots is None else SegmentState(slots=slots), pending=pending)


class RefreshChunk(TypedDict):
    """One chunk of a segment version's backfill for a contact (a ``SegmentRefresh``).

    With ``seeds`` (the last chunk of a backfill through ClickHouse): the slots of the trackers an
    aggregate seeds exactly, those with matching history only (another is empty), cut for clocks
    at or after ``seeded_at``; the ``replayed`` trackers are built from ``facts`` as without seeds.
    """

    segment_id: str
    version: int
    tracker_keys: Iterable[str]
    facts: list[HistoryFact]
    last: bool
    seeds: NotRequired[Mapping[str, SlotModel] | None]
    replayed: NotRequired[Collection[str]]
    seeded_at: NotRequired[datetime | None]


def on_refresh(
    project: ProjectSegments,
    cs: ContactSegments,
    contact: ContactState,
    *,
    now: datetime,
    **chunk: Unpack[RefreshChunk],
) -> Outcome:
    """A backfill chunk. On the last chunk, build the segment's incomplete trackers from the
    history plus the buffered live facts (deduplicated by messageId), then evaluate it.

    Seeds are aggregates: they can't be deduplicated against buffered live facts. A seed that has
    counted something while a live fact its tracker accepts waits in ``pending`` (ClickHouse may
    hold that event too), or one cut for a later clock, is refused: the segment waits in
    ``seeding`` for a refresh with facts (the backfill sends one to every contact left waiting)."""
    segment_id, version = chunk["segment_id"], chunk["version"]
    cs = _synced(project, cs)
    if segment_id not in project.segments:
        return _evaluate(project, cs, contact, now, frozenset())  # deleted meanwhile: clear what's left
    seeding = dict(cs.seeding)
    previous = seeding.get(segment_id)
    gathered = [*(previous.facts if previous is not None and previous.version == version else []), *chunk["facts"]]
    seeds = chunk.get("seeds")
    if not chunk["last"] or (seeds is not None and _refused(project, cs, seeds, chunk.get("seeded_at"), now)):
        seeding[segment_id] = Seeding(version=version, facts=gathered if seeds is None else [])
        return Outcome(replace(cs, seeding=seeding))
    seeding.pop(segment_id, None)
    seeds, replayed = chunk.get("seeds"), frozenset(chunk.get("replayed", ()))
    history: list[HistoryFact] | None = None  # the facts and the buffered live ones, made on first use
    complete = set(cs.complete)
    slots = dict(cs.state.slots)
    for key in chunk["tracker_keys"]:
        tracker = project.bundle.trackers.get(key)
        if tracker is None or key in complete:
            continue
        if seeds is not None and key not in replayed:
            slots[key] = _from_seed(tracker, seeds.get(key), cs.pending, now)
        else:
            if history is None:
                history = _deduplicated(gathered, cs.pending)
            slots[key] = _folded(tracker, tracker.empty(), history, now)
        complete.add(key)
    cs = replace(cs, state=SegmentState(slots=slots), complete=sorted(complete), seeding=seeding)
    if cs.pending:
        cs = _synced(project, cs)  # drops buffered facts no incomplete tracker needs now
    return _evaluate(project, cs, contact, now, frozenset({segment_id}))


def _deduplicated(history: list[HistoryFact], pending: list[HistoryFact]) -> list[HistoryFact]:
    """The history and the buffered live facts ClickHouse did not hold yet (by messageId), in order."""
    facts: dict[str, HistoryFact] = {f.message_id: f for f in history}
    for live in pending:
        facts.setdefault(live.message_id, live)
    return sorted(facts.values(), key=_fact_order)


def _from_seed(tracker: Tracker, seed: SlotModel | None, pending: list[HistoryFact], now: datetime) -> SlotModel:
    """A seeded tracker's slot: the seed at ``now`` (no buffered fact it accepts: else refused), or,
    without a seed (nothing in ClickHouse, so nothing counted twice), the buffered facts."""
    if seed is None:
        return _folded(tracker, tracker.empty(), pending, now)
    return tracker.prune(seed, now)


def _fact_order(fact: HistoryFact) -> tuple[datetime, str]:
    return fact.timestamp, fact.message_id


def _folded(tracker: Tracker, slot: SlotModel, facts: Iterable[HistoryFact], now: datetime) -> SlotModel:
    """``slot`` after the facts of the tracker's event, in ``(timestamp, message_id)`` order."""
    for fact in sorted(facts, key=_fact_order):
        if fact.name == tracker.event:
            slot = tracker.update(slot, fact, now)
    return slot


def _refused(
    project: ProjectSegments,
    cs: ContactSegments,
    seeds: Mapping[str, SlotModel],
    seeded_at: datetime | None,
    now: datetime,
) -> bool:
    """The seeds can't be taken as they are: cut for a later clock, or a seed that holds something
    while a buffered live fact counts for its tracker."""
    if seeded_at is not None and now < seeded_at:
        return True
    trackers = project.bundle.trackers
    for key, seed in seeds.items():
        tracker = trackers.get(key)
        if tracker is not None and not holds_nothing(seed) and any(tracker.accepts(f) for f in cs.pending):
            return True
    return False


def adopt(
    project: ProjectSegments, cs: ContactSegments, seeded: frozenset[str], now: datetime
) -> tuple[ContactSegments, frozenset[str]]:
    """``cs`` with the trackers of ``seeded`` complete, and the segments that became evaluable.

    ``seeded``: tracker keys whose backfill is over where ``cs`` is kept (every contact with
    matching history got its seed): one still incomplete here had no history, so its slot is the
    empty one with the buffered live facts folded in. Except for a segment waiting in ``seeding``
    (a refused seed, a merge that left one side incomplete): only a refresh completes its trackers.
    """
    if project.in_sync(cs) and project.all_complete(cs):
        return cs, _NO_SEGMENTS  # the common case: nothing left to complete
    cs = _synced(project, cs)
    missing = seeded.difference(cs.complete)
    for segment_id in cs.seeding if missing else ():
        missing -= project.segments[segment_id].tracker_keys
    if not missing:
        return cs, _NO_SEGMENTS
    trackers = project.bundle.trackers
    slots = dict(cs.state.slots)
    for key in missing:
        tracker = trackers[key]
        slot = _folded(tracker, tracker.empty(), cs.pending, now)
        if not is_empty(slot):
            slots[key] = slot
        else:
            slots.pop(key, None)
    complete = frozenset(cs.complete) | missing
    evaluable = frozenset(
        s.id for s in project.order if not s.tracker_keys.isdisjoint(missing) and s.tracker_keys <= complete
    )
    cs = replace(cs, state=SegmentState(slots=slots), complete=sorted(complete))
    return _synced(project, cs), evaluable


def on_sweep(
    project: ProjectSegments,
    cs: ContactSegments,
    contact: ContactState,
    *,
    segment_id: str,
    seeded: frozenset[str],
    now: datetime,
) -> Outcome:
    """The end of a segment's backfill for a contact that got no seed (it had no matching history)
    or may need a look (a member, live facts buffered): its trackers are ``seeded`` now, the
    segment is evaluated (deleted: its membership ends)."""
    cs, evaluable = adopt(project, cs, seeded, now)
    if segment_id in project.segments:
        evaluable |= {segment_id}
    return _evaluate(project, _synced(project, cs), contact, now, evaluable)


def evaluate_segments(
    project: ProjectSegments, cs: ContactSegments, contact: ContactState, segment_ids: frozenset[str], now: datetime
) -> Outcome:
    """Evaluate ``segment_ids`` (and what references them) for ``cs``."""
    return _evaluate(project, _synced(project, cs), contact, now, segment_ids)


def on_wake(project: ProjectSegments, cs: ContactSegments, contact: ContactState, now: datetime) -> Outcome:
    """A timer: rolling windows may have expired and relative dates crossed their threshold."""
    cs = _synced(project, cs)
    state = prune(project.bundle, cs.state, now)
    if state is not cs.state:
        cs = replace(cs, state=state)
    due = frozenset(sid for sid, at in cs.wakes.items() if at <= now) | project.timed()
    return _evaluate(project, cs, contact, now, due)


def on_lists(
    project: ProjectSegments, cs: ContactSegments, contact: ContactState, list_id: str, member: bool, now: datetime
) -> Outcome:
    lists = set(cs.lists)
    (lists.add if member else lists.discard)(list_id)
    cs = replace(_synced(project, cs), lists=sorted(lists))
    return _evaluate(project, cs, contact, now, project.affected_by(lists=[list_id]))


def on_merge(
    project: ProjectSegments,
    target: ContactSegments,
    source: ContactSegments | None,
    contact: ContactState,
    changes: Iterable[FieldChange],
    now: datetime,
) -> Outcome:
    """The source contact's events now belong to the target: merge the slots of trackers complete
    on both sides; a tracker complete on one side only stays incomplete (its buffered facts are
    kept for a later refresh). Lists are united; every segment is re-evaluated."""
    target = _synced(project, target)
    if source is not None:
        source = _synced(project, source)
        both = sorted(set(target.complete) & set(source.complete))
        merged = merge_states({k: project.bundle.trackers[k] for k in both}, target.state, source.state, now)
        pending = {f.message_id: f for f in [*target.pending, *source.pending]}
        target = replace(
            target,
            state=merged,
            complete=both,
            pending=sorted(pending.values(), key=_fact_order),
            lists=sorted(set(target.lists) | set(source.lists)),
            seeding=_waiting_after_merge(project, target, source),
        )
    return _evaluate(project, _synced(project, target), contact, now, None)


def _waiting_after_merge(
    project: ProjectSegments, target: ContactSegments, source: ContactSegments
) -> dict[str, Seeding]:
    """The target's ``seeding``, plus the segments with a tracker complete on one side only: the
    merge drops its slot, and the events behind it come back only with a refresh (``adopt``
    must not take the tracker for one without history)."""
    one_side = set(target.complete).symmetric_difference(source.complete)
    if not one_side:
        return target.seeding
    seeding = dict(target.seeding)
    for segment in project.order:
        if segment.id not in seeding and not segment.tracker_keys.isdisjoint(one_side):
            seeding[segment.id] = Seeding(version=segment.version)
    return seeding


def on_leave(cs: ContactSegments) -> Outcome:
    """The contact is gone (erased, or merged into another): it exits every segment."""
    exits = [
        Transition(sid, m.version, entered=False, seq=cs.changes + i)
        for i, (sid, m) in enumerate(sorted(cs.members.items()), start=1)
    ]
    return Outcome(ContactSegments(changes=cs.changes + len(exits)), exits)


def evaluate_all(project: ProjectSegments, cs: ContactSegments, contact: ContactState, now: datetime) -> Outcome:
    return _evaluate(project, _synced(project, cs), contact, now, None)


def _evaluate(
    project: ProjectSegments,
    cs: ContactSegments,
    contact: ContactState,
    now: datetime,
    affected: frozenset[str] | None,
    *,
    settled: bool = False,
) -> Outcome:
    """Re-evaluate ``affected`` segments (None: all) and, transitively, the segments referencing
    one whose membership changed. Memberships of segments that no longer exist end. A contact's
    first evaluation covers every segment: ``everyone``, a random sample or "has not done X"
    hold for a new contact without any event or change naming them. ``settled``: the caller knows
    every membership of ``cs`` is of a live segment.

    Returns ``cs`` itself when nothing changed (no transition, the same memberships and wakes)."""
    gone = not settled and not project.segments.keys() >= cs.members.keys()
    if not cs.evaluated:
        affected = None
    elif affected is not None and not affected and not gone:
        return Outcome(cs)  # nothing to evaluate, nothing to end (None: everything)
    run = _Evaluation(cs)
    if gone:
        run.end_gone(project)
    plan = range(len(project.order)) if affected is None else project.plan(affected)
    run.evaluate(project, list(plan), contact, now)
    return run.outcome(cs)


class _Evaluation(MembershipContext):
    """The memberships and wake-ups of one evaluation, copied from the state before their first
    change; the membership context of the rules it evaluates (the contact's lists, and the
    segments it is in as decided so far: referenced segments come first)."""

    __slots__ = ("cs", "members", "seq", "transitions", "wakes")

    def __init__(self, cs: ContactSegments) -> None:  # (``segments``: ``in_segment`` reads ``members``)
        self.cs = cs
        self.lists = cs.lists
        self.members = cs.members
        self.wakes = cs.wakes
        self.transitions: list[Transition] | None = None
        self.seq = cs.changes

    def in_segment(self, segment_id: str) -> bool:
        return segment_id in self.members

    def end_gone(self, project: ProjectSegments) -> None:
        """Exits from the segments that no longer exist."""
        if project.segments.keys() >= self.members.keys():
            return
        for segment_id in sorted(self.members.keys() - project.segments.keys()):
            self._transition(segment_id, self._members().pop(segment_id).version, entered=False)

    def evaluate(self, project: ProjectSegments, todo: list[int], contact: ContactState, now: datetime) -> None:
        """Evaluate the segments at ``todo`` (positions in ``project.order``, ascending: a heap) and,
        after each that the contact entered or exited, the segments referencing it."""
        cs, order = self.cs, project.order
        state = cs.state
        complete = None if project.all_complete(cs) else frozenset(cs.complete)
        while todo:
            segment = order[heapq.heappop(todo)]
            if complete is not None and not segment.tracker_keys <= complete:
                continue  # waiting for its backfill
            compiled, segment_id = segment.compiled, segment.id  # ``matches_and_wake``, with this context
            judge = compiled.judge
            if judge is not None:
                member, wake = judge(state, contact, now, self)
            else:
                member = compiled.test(state, contact, now, self)
                wake = compiled.flip(state, contact, now, self, None) if segment.time else None
            if self.wakes.get(segment_id) != wake:
                self._wake(segment_id, wake)
            current = self.members.get(segment_id)
            if (current is None) if member else (current is not None):  # entered, or exited
                if current is None:
                    self._members()[segment_id] = Membership(since=now, version=segment.version)
                else:
                    del self._members()[segment_id]
                self._transition(segment_id, segment.version, entered=current is None)
                for dependent in segment.dependents:
                    if dependent > segment.index and dependent not in todo:  # (later in the order, as before)
                        heapq.heappush(todo, dependent)
            elif current is not None and current.version != segment.version:
                self._members()[segment_id] = Membership(since=current.since, version=segment.version)

    def _wake(self, segment_id: str, at: datetime | None) -> None:
        if self.wakes is self.cs.wakes:
            self.wakes = dict(self.wakes)
        if at is None:
            del self.wakes[segment_id]
        else:
            self.wakes[segment_id] = at

    def outcome(self, cs: ContactSegments) -> Outcome:
        if self.members is cs.members and self.wakes is cs.wakes and cs.evaluated:
            return Outcome(cs)  # (a transition always comes with a change of members)
        state = msgspec.structs.replace(cs, members=self.members, wakes=self.wakes, changes=self.seq, evaluated=True)
        return Outcome(state, self.transitions or [])

    def _members(self) -> dict[str, Membership]:
        if self.members is self.cs.members:
            self.members = dict(self.members)
        return self.members

    def _transition(self, segment_id: str, version: int, *, entered: bool) -> None:
        self.seq += 1
        if self.transitions is None:
            self.transitions = []
        self.transitions.append(Transition(segment_id, version, entered, self.seq))
