"""One contact's membership in every segment of its project, maintained incrementally (pure).

``ProjectSegments`` is the compiled form of a project's live segment definitions (topological
order: a segment comes after the segments it references). ``ContactSegments`` is what the
contact processor stores per contact: the shared tracker slots, which trackers are *complete*
(built from the contact's whole history), live events buffered for incomplete trackers, current
memberships, list memberships and per-segment wake-up times.

A tracker is complete for a contact created after the tracker existed (it saw every event) and,
for an older contact, once the backfill ``SegmentRefresh`` for it arrived: the facts it carries
(from ClickHouse) and the buffered live facts, deduplicated by messageId, rebuild it. A segment
is evaluated for a contact only when all its trackers are complete -- never on half a history.

Every function returns the new state and the membership transitions; nothing here does I/O.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from datetime import datetime
from typing import TypedDict, Unpack

from pydantic import Field

from spotzee.domain.segments.engine import (
    CompiledRule,
    Dependencies,
    TrackerBundle,
    bundle,
    compile,
    matches_and_wake,
    prune,
)
from spotzee.domain.segments.facts import EventFact, MembershipContext
from spotzee.domain.segments.graph import segment_references
from spotzee.domain.segments.merging import merge_states
from spotzee.domain.segments.trackers import SegmentState
from spotzee.schemas.common import Model, UTCDateTime
from spotzee.schemas.contact_models import ContactState, FieldChange
from spotzee.schemas.segment_models import HistoryFact, SegmentDefinition, SegmentStatus

# Contact fields whose changes the contact reducer does not report as FieldChange (they move with
# every message): a segment reading one is re-evaluated on every record of the contact.
VOLATILE_PATHS = frozenset({"user_id", "first_seen", "last_seen", "created_at"})


@dataclass(frozen=True, eq=False)
class ActiveSegment:
    id: str
    version: int
    compiled: CompiledRule
    tracker_keys: frozenset[str]
    references: frozenset[str]
    volatile: bool  # reads a field that changes without a FieldChange

    @property
    def time(self) -> bool:
        return self.compiled.dependencies.time


class ProjectSegments:
    """The live (not deleted) segments of one project, compiled once per definition change."""

    def __init__(self, definitions: Iterable[SegmentDefinition]) -> None:
        live = {d.id: d for d in definitions if d.status != SegmentStatus.deleted}
        self.segments: dict[str, ActiveSegment] = {}
        for segment_id in _topological(live):
            definition = live[segment_id]
            compiled = compile(definition.rule)
            deps = compiled.dependencies
            self.segments[segment_id] = ActiveSegment(
                id=segment_id,
                version=definition.version,
                compiled=compiled,
                tracker_keys=frozenset(compiled.trackers),
                references=frozenset(segment_references(definition.rule)),
                volatile=bool(deps.attribute_paths & VOLATILE_PATHS),
            )
        self.bundle: TrackerBundle = bundle(s.compiled for s in self.segments.values())
        self.tracker_keys: tuple[str, ...] = tuple(sorted(self.bundle.trackers))
        self._tracker_set = frozenset(self.tracker_keys)
        # Indexes for ``affected_by``: it runs for every record of every contact.
        self._volatile = {s.id for s in self.segments.values() if s.volatile}
        self._by_event: dict[str, set[str]] = {}
        self._by_list: dict[str, set[str]] = {}
        self._readers: list[tuple[str, Dependencies]] = []
        for s in self.segments.values():
            deps = s.compiled.dependencies
            for name in deps.event_names:
                self._by_event.setdefault(name, set()).add(s.id)
            for list_id in deps.list_ids:
                self._by_list.setdefault(list_id, set()).add(s.id)
            if deps.attribute_paths:
                self._readers.append((s.id, deps))

    def affected_by(
        self, *, event: str | None = None, changes: Iterable[FieldChange] = (), lists: Iterable[str] = ()
    ) -> set[str]:
        """Segments whose membership may change because of this event / these changes."""
        found = set(self._volatile)
        if event is not None:
            found |= self._by_event.get(event, set())
        for list_id in lists:
            found |= self._by_list.get(list_id, set())
        paths = {c.path for c in changes}
        if paths:
            for segment_id, deps in self._readers:
                if segment_id not in found and any(deps.affected_by_attribute(p) for p in paths):
                    found.add(segment_id)
        return found

    def timed(self) -> set[str]:
        return {s.id for s in self.segments.values() if s.time}

    def in_sync(self, cs: ContactSegments) -> bool:
        """``cs`` holds nothing about trackers or segments these definitions no longer have (then
        ``_synced`` would return an equal state)."""
        trackers = self._tracker_set
        return (
            not cs.pending
            and not cs.seeding
            and trackers.issuperset(cs.complete)
            and trackers.issuperset(cs.state.slots)
            and self.segments.keys() >= cs.wakes.keys()
        )


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


class Membership(Model):
    since: UTCDateTime
    version: int


class Seeding(Model):
    version: int
    facts: list[HistoryFact] = Field(default_factory=list)


class ContactSegments(Model):
    state: SegmentState = Field(default_factory=SegmentState)
    complete: list[str] = Field(default_factory=list)  # tracker keys, sorted
    pending: list[HistoryFact] = Field(default_factory=list)  # live facts for incomplete trackers
    seeding: dict[str, Seeding] = Field(default_factory=dict)  # backfill chunks, by segment id
    members: dict[str, Membership] = Field(default_factory=dict)
    lists: list[str] = Field(default_factory=list)
    wakes: dict[str, UTCDateTime] = Field(default_factory=dict)  # segment id -> next re-evaluation
    changes: int = 0  # transitions so far: numbers them, the same again when a batch is replayed
    evaluated: bool = False  # every segment was evaluated once (then only what changed is)

    @property
    def wake_at(self) -> datetime | None:
        return min(self.wakes.values(), default=None)


@dataclass(frozen=True)
class Transition:
    segment_id: str
    version: int
    entered: bool
    seq: int = 0  # the contact's transition number (1, 2, ...): a deterministic id for outputs


@dataclass
class Outcome:
    state: ContactSegments
    transitions: list[Transition] = field(default_factory=list)


def fresh(project: ProjectSegments, *, new_contact: bool) -> ContactSegments:
    """State for a contact seen for the first time: with no history, every tracker is complete."""
    return ContactSegments(complete=list(project.tracker_keys) if new_contact else [])


def _fact(fact: HistoryFact) -> EventFact:
    return EventFact.model_construct(name=fact.name, timestamp=fact.timestamp, properties=fact.properties)


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
    return cs.model_copy(
        update={
            "state": SegmentState.model_construct(slots=slots),
            "complete": complete,
            "pending": pending,
            "seeding": seeding,
            "wakes": wakes,
        }
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
    cs = _synced(project, cs)
    changes = list(changes)
    if fact is not None:
        complete = set(cs.complete)
        slots = dict(cs.state.slots)
        buffered = False
        event = _fact(fact)
        for tracker in project.bundle.by_event.get(fact.name, ()):
            if tracker.key in complete:
                slots[tracker.key] = tracker.update(tracker.slot(cs.state), event, now)
            else:
                buffered = True
        pending = cs.pending
        if buffered and all(p.message_id != fact.message_id for p in pending):
            pending = [*pending, fact]
        cs = cs.model_copy(update={"state": SegmentState.model_construct(slots=slots), "pending": pending})
    if not cs.evaluated:
        return _evaluate(project, cs, contact, now, None)
    affected = project.affected_by(event=fact.name if fact else None, changes=changes)
    return _evaluate(project, cs, contact, now, affected)


class RefreshChunk(TypedDict):
    """One chunk of a segment version's backfill for a contact (a ``SegmentRefresh``)."""

    segment_id: str
    version: int
    tracker_keys: Iterable[str]
    facts: list[HistoryFact]
    last: bool


def on_refresh(
    project: ProjectSegments,
    cs: ContactSegments,
    contact: ContactState,
    *,
    now: datetime,
    **chunk: Unpack[RefreshChunk],
) -> Outcome:
    """A backfill chunk. On the last chunk, build the segment's incomplete trackers from the
    history plus the buffered live facts (deduplicated by messageId), then evaluate it."""
    segment_id, version = chunk["segment_id"], chunk["version"]
    cs = _synced(project, cs)
    if segment_id not in project.segments:
        return _evaluate(project, cs, contact, now, set())  # deleted meanwhile: clear what's left
    seeding = dict(cs.seeding)
    previous = seeding.get(segment_id)
    gathered = [*(previous.facts if previous is not None and previous.version == version else []), *chunk["facts"]]
    if not chunk["last"]:
        seeding[segment_id] = Seeding(version=version, facts=gathered)
        return Outcome(cs.model_copy(update={"seeding": seeding}))
    seeding.pop(segment_id, None)
    history: dict[str, HistoryFact] = {f.message_id: f for f in gathered}
    for live in cs.pending:
        history.setdefault(live.message_id, live)
    ordered = sorted(history.values(), key=lambda f: (f.timestamp, f.message_id))
    complete = set(cs.complete)
    slots = dict(cs.state.slots)
    for key in chunk["tracker_keys"]:
        tracker = project.bundle.trackers.get(key)
        if tracker is None or key in complete:
            continue
        slot = tracker.empty()
        for item in ordered:
            if item.name == tracker.event:
                slot = tracker.update(slot, _fact(item), now)
        slots[key] = slot
        complete.add(key)
    cs = cs.model_copy(
        update={
            "state": SegmentState.model_construct(slots=slots),
            "complete": sorted(complete),
            "seeding": seeding,
        }
    )
    cs = _synced(project, cs)  # drops buffered facts no incomplete tracker needs now
    return _evaluate(project, cs, contact, now, {segment_id})


def on_wake(project: ProjectSegments, cs: ContactSegments, contact: ContactState, now: datetime) -> Outcome:
    """A timer: rolling windows may have expired and relative dates crossed their threshold."""
    cs = _synced(project, cs)
    cs = cs.model_copy(update={"state": prune(project.bundle, cs.state, now)})
    due = {sid for sid, at in cs.wakes.items() if at <= now} | project.timed()
    return _evaluate(project, cs, contact, now, due)


def on_lists(
    project: ProjectSegments, cs: ContactSegments, contact: ContactState, list_id: str, member: bool, now: datetime
) -> Outcome:
    lists = set(cs.lists)
    (lists.add if member else lists.discard)(list_id)
    cs = _synced(project, cs).model_copy(update={"lists": sorted(lists)})
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
        target = target.model_copy(
            update={
                "state": merged,
                "complete": both,
                "pending": sorted(pending.values(), key=lambda f: (f.timestamp, f.message_id)),
                "lists": sorted(set(target.lists) | set(source.lists)),
            }
        )
    return _evaluate(project, _synced(project, target), contact, now, None)


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
    affected: set[str] | None,
) -> Outcome:
    """Re-evaluate ``affected`` segments (None: all) and, transitively, the segments referencing
    one whose membership changed. Memberships of segments that no longer exist end. A contact's
    first evaluation covers every segment: ``everyone``, a random sample or "has not done X"
    hold for a new contact without any event or change naming them."""
    if not cs.evaluated:
        affected = None
    members = dict(cs.members)
    wakes = dict(cs.wakes)
    transitions: list[Transition] = []
    for segment_id in sorted(set(members) - set(project.segments)):
        transitions.append(Transition(segment_id, members.pop(segment_id).version, entered=False))
    complete = set(cs.complete)
    changed: set[str] = set()
    context = MembershipContext(lists=frozenset(cs.lists), segments=lambda sid: sid in members)
    for segment in project.segments.values():
        if affected is not None and segment.id not in affected and not (segment.references & changed):
            continue
        if not segment.tracker_keys <= complete:
            continue  # waiting for its backfill
        member, wake = matches_and_wake(segment.compiled, cs.state, contact, now, context)
        current = members.get(segment.id)
        if member and current is None:
            members[segment.id] = Membership(since=now, version=segment.version)
            transitions.append(Transition(segment.id, segment.version, entered=True))
            changed.add(segment.id)
        elif not member and current is not None:
            del members[segment.id]
            transitions.append(Transition(segment.id, segment.version, entered=False))
            changed.add(segment.id)
        elif current is not None and current.version != segment.version:
            members[segment.id] = Membership(since=current.since, version=segment.version)
        if wake is None:
            wakes.pop(segment.id, None)
        else:
            wakes[segment.id] = wake
    numbered = [
        Transition(t.segment_id, t.version, t.entered, seq=cs.changes + i) for i, t in enumerate(transitions, start=1)
    ]
    state = cs.model_copy(
        update={"members": members, "wakes": wakes, "changes": cs.changes + len(numbered), "evaluated": True}
    )
    return Outcome(state, numbered)
