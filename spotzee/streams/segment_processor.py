"""Segment membership inside the contact processor: load, call the pure domain, store, emit.

Tables (typed: ``tables/table_specs.py``; keys from ``tables/keyspace.py``; all keyed so that the
owner of the contact's partition is their only writer):
- ``memberships``: ContactSegments per contact key (tracker slots, memberships, lists, wakes);
- ``segment_members``: ``project:segment_id\\x00contact_id`` -> Member (current members, in
  contact order: the members API pages through it);
- ``list_members``: ``project:list_id\\x00contact_id`` -> Member (version 0);
- ``segment_definitions``: project id -> {segment id: definition JSON} seen in barriers;
- ``segment_swept``: project id -> {segment id: version} whose backfill ended in this store (every
  contact with matching history got its seed): a tracker of those versions that a contact's state
  does not list as complete is the empty one (``domain.adopt``), so a contact without history
  needs no record and no write of its own;
- ``segment_waiting``: ``project:contact`` -> true while its state buffers live facts or waits for
  a refresh (``pending`` / ``seeding``): the contacts a backfill's sweep and fallback look at.

Outputs per transition: a ``SegmentChange`` on ``segment-changes`` and a ``SegmentChangeRow``
for the ClickHouse ``segment_changes`` history. One timer per contact (``segments:<key>``)
re-delivers a ``SegmentWake`` at the earliest instant a time-dependent segment may flip.

A record that changes nothing (an event no segment counts, a filter that rejects it) writes
nothing: the domain hands back the very state it was given, and only a new state is stored.
Segment definitions are pydantic models (the edge contract), validated when a definition or a
barrier arrives and once per distinct stored definition, never per record.
"""

from __future__ import annotations

import threading
from collections import OrderedDict
from collections.abc import Callable, Iterable, Iterator
from datetime import datetime

import msgspec
from pydantic import TypeAdapter

from spotzee.domain.segments import membership as domain
from spotzee.domain.segments.seeding import holds_without_history
from spotzee.domain.segments.trackers import SlotModel
from spotzee.schemas.analytics_models import SegmentChangeRow
from spotzee.schemas.contact_models import ContactState, FieldChange
from spotzee.schemas.segment_models import (
    HistoryFact,
    ListDefinition,
    Member,
    SegmentChange,
    SegmentDefinition,
    SegmentRefresh,
    SegmentWake,
    change_id,
)
from spotzee.schemas.structs import Struct, decoder
from spotzee.streams import topics
from spotzee.streams.interface import Context
from spotzee.streams.quarantine import decode, quarantine
from spotzee.streams.record_codec import dumps
from spotzee.tables.keyspace import contact_key, member_key
from spotzee.tables.keyspace import member_prefix as member_prefix  # re-exported: the services list members
from spotzee.tables.table_specs import TableSpec, TypedTable, typed

MEMBERSHIPS = "memberships"
SEGMENT_MEMBERS = "segment_members"
LIST_MEMBERS = "list_members"
SEGMENT_DEFINITIONS = "segment_definitions"  # project id -> {segment id: definition} seen in barriers
SEGMENT_SWEPT = "segment_swept"  # project id -> the segment versions whose backfill ended here
SEGMENT_WAITING = "segment_waiting"  # project:contact -> true while it buffers facts or waits for a refresh
TABLES = (MEMBERSHIPS, SEGMENT_MEMBERS, LIST_MEMBERS, SEGMENT_DEFINITIONS, SEGMENT_SWEPT, SEGMENT_WAITING)
# Read on (almost) every record: the contact's segment state, its project's barriered definitions
# and swept segments.
CACHED_TABLES = (MEMBERSHIPS, SEGMENT_DEFINITIONS, SEGMENT_SWEPT)

Barriered = dict[str, msgspec.Raw]  # segment id -> its SegmentDefinition's JSON, validated on use


def _barriered_decoder(key: str) -> Callable[[bytes], Barriered]:
    def read(data: bytes) -> Barriered:
        """The stored object, each definition left as JSON; an unreadable value is quarantined and
        read as empty (the registry still has every readable definition from the definitions store)."""
        try:
            items: Barriered = decoder(Barriered).decode(data)
        except (msgspec.DecodeError, RecursionError) as exc:
            quarantine(key, data, exc)
            return {}
        return items

    return read


class SweptSegments(Struct, kw_only=True, gc=False):
    """The segment versions whose backfill ended in a store: segment id -> version."""

    versions: dict[str, int] = msgspec.field(default_factory=dict)


MEMBERSHIPS_TABLE = TableSpec(MEMBERSHIPS, domain.ContactSegments)
SEGMENT_SWEPT_TABLE = TableSpec(SEGMENT_SWEPT, SweptSegments)
SEGMENT_WAITING_TABLE = TableSpec(SEGMENT_WAITING, bool)
SEGMENT_MEMBERS_TABLE = TableSpec(SEGMENT_MEMBERS, Member)
LIST_MEMBERS_TABLE = TableSpec(LIST_MEMBERS, Member)
SEGMENT_DEFINITIONS_TABLE: TableSpec[Barriered] = TableSpec(
    SEGMENT_DEFINITIONS, dict, decoder=_barriered_decoder(SEGMENT_DEFINITIONS)
)

_definition = TypeAdapter[SegmentDefinition | ListDefinition](SegmentDefinition | ListDefinition)


class SegmentRegistry:
    """The segment definitions a process knows, compiled per project.

    Fed from the definitions store at start, by definition writes (the API, the definitions
    topic) and by segment barriers in the stream; a definition only ever replaces an older
    version (or the same version with a newer status), so the order of these feeds is irrelevant.
    """

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._definitions: dict[str, SegmentDefinition] = {}
        self._projects: dict[str, domain.ProjectSegments] = {}
        self._empty = domain.ProjectSegments(())

    def load(self, items: Iterable[tuple[str, bytes]]) -> None:
        for key, raw in items:
            self.on_definition(key, raw)

    def on_definition(self, key: str, value: bytes | None) -> None:
        if value is None or not key.startswith("segment/"):
            return
        definition = decode(key, value, _definition.validate_json)  # unreadable: quarantined, skipped
        if isinstance(definition, SegmentDefinition):
            self.apply(definition)

    def apply(self, definition: SegmentDefinition) -> bool:
        """Adopt ``definition`` unless a newer one is known; True when it changed anything."""
        with self._lock:
            known = self._definitions.get(definition.id)
            if known is not None and (known.version, _rank(known)) >= (definition.version, _rank(definition)):
                return False
            self._definitions[definition.id] = definition
            if (
                known is not None
                and known.version == definition.version
                and known.status != "deleted"
                and (definition.status != "deleted")
            ):
                return True  # a status/progress update: the compiled form is unchanged
            project = [d for d in self._definitions.values() if d.project_id == definition.project_id]
            self._projects[definition.project_id] = domain.ProjectSegments(project)
            return True

    def project(self, project_id: str) -> domain.ProjectSegments:
        return self._projects.get(project_id, self._empty)

    def definition(self, segment_id: str) -> SegmentDefinition | None:
        return self._definitions.get(segment_id)


_SEEDS = msgspec.json.Decoder(dict[str, SlotModel])  # a refresh's seeds: tracker key -> slot
_NO_TRANSITIONS: list[domain.Transition] = []  # shared, never changed


def _after(first: list[domain.Transition], outcome: domain.Outcome) -> domain.Outcome:
    """``outcome`` preceded by the transitions ``first`` (of the state it started from)."""
    return domain.Outcome(outcome.state, [*first, *outcome.transitions]) if first else outcome


def _changed(before: domain.ContactSegments, outcome: domain.Outcome) -> bool:
    """A sweep's outcome is worth storing: a transition, or memberships, wake-ups or buffered
    facts that differ (a tracker completed implicitly needs no write: the store knows it)."""
    after = outcome.state
    return bool(outcome.transitions) or (
        after.members != before.members
        or after.wakes != before.wakes
        or after.pending != before.pending
        or after.seeding != before.seeding
    )


def _rank(definition: SegmentDefinition) -> int:
    return {"building": 0, "ready": 1, "deleted": 2}[definition.status.value]


TransitionListener = Callable[[Context, str, str, list[tuple[str, bool, str]]], None]


# The contact whose segment state is being kept: (its table key, project id, contact id).
_Owner = tuple[str, str, str]


def _owner(contact: ContactState) -> _Owner:
    project_id, contact_id = contact.project_id, contact.id
    return contact_key(project_id, contact_id), project_id, contact_id


class _Tables:
    """The typed tables of one context (a runtime's batch): made once per context, not per record."""

    __slots__ = (
        "ctx",
        "definitions",
        "list_members",
        "memberships",
        "seeded",
        "segment_members",
        "swept",
        "synced",
        "waiting",
    )

    def __init__(self, ctx: Context) -> None:
        self.ctx = ctx
        # Projects whose barriered definitions were applied in this context: only ``barrier``
        # writes them, and it applies what it writes (a new context reads them again).
        self.synced: set[str] = set()
        # Project -> (the compiled segments it was read for, the tracker keys its swept segments
        # complete): read once per context; ``sweep`` drops what it changes.
        self.seeded: dict[str, tuple[domain.ProjectSegments, frozenset[str]]] = {}
        self.memberships = typed(ctx, MEMBERSHIPS_TABLE)
        self.segment_members = typed(ctx, SEGMENT_MEMBERS_TABLE)
        self.list_members = typed(ctx, LIST_MEMBERS_TABLE)
        self.definitions = typed(ctx, SEGMENT_DEFINITIONS_TABLE)
        self.swept = typed(ctx, SEGMENT_SWEPT_TABLE)
        self.waiting = typed(ctx, SEGMENT_WAITING_TABLE)


class _Parsed:
    """Barriered definitions validated once per distinct JSON (bounded; shared by the partitions)."""

    def __init__(self, limit: int = 4096) -> None:
        self._lock = threading.Lock()
        self._items: OrderedDict[bytes, SegmentDefinition | None] = OrderedDict()
        self.limit = limit

    def get(self, key: str, raw: msgspec.Raw) -> SegmentDefinition | None:
        """The definition, or None when it is unreadable (then quarantined under ``key``)."""
        data = bytes(raw)
        with self._lock:
            if data in self._items:
                self._items.move_to_end(data)
                return self._items[data]
        try:
            found: SegmentDefinition | None = SegmentDefinition.model_validate_json(data)
        except Exception as exc:  # this one definition only
            quarantine(key, data, exc)
            found = None
        with self._lock:
            self._items[data] = found
            while len(self._items) > self.limit:
                self._items.popitem(last=False)
        return found


_parsed = _Parsed()


def read_barriered(project_id: str, raw: bytes) -> dict[str, SegmentDefinition]:
    """A partition's barriered definitions of a project, each decoded on its own: one that is
    unreadable (stored by an older version) is quarantined and dropped, the others stand. The
    registry still has every readable definition from the definitions store."""
    key = f"{SEGMENT_DEFINITIONS}/{project_id}"
    return _readable(key, _barriered_decoder(key)(raw))


def _readable(key: str, items: Barriered) -> dict[str, SegmentDefinition]:
    found: dict[str, SegmentDefinition] = {}
    for segment_id, data in items.items():
        definition = _parsed.get(f"{key}/{segment_id}", data)
        if definition is not None:
            found[segment_id] = definition
    return found


class SegmentMemberships:
    """The processor side of segments, called by ContactProcessor for every contact record."""

    def __init__(self, registry: SegmentRegistry) -> None:
        self.registry = registry
        # Project -> the barriered value applied last, by identity: a table value is decoded once
        # and then shared by the batch overlay and the state cache, so an unchanged value is the
        # same object (a partition with another value of the same project applies its own).
        self._applied: dict[str, Barriered] = {}
        self._views: _Tables | None = None  # the last context's (it stays referenced until the next)
        # Told (project, contact, [(segment id, entered, change id)]) after each stored change:
        # journeys trigger on segment entry and exit.
        self.listeners: list[TransitionListener] = []

    # -- definitions that travel with the partition ---------------------------------------------

    def barrier(self, ctx: Context, definition: SegmentDefinition) -> None:
        """Adopt the definition and keep it in the partition's state: whoever owns the partition
        later (a worker taking it over, restoring from the changelog) evaluates every record after
        the barrier against it, whatever its own definitions replica has seen so far."""
        self.registry.apply(definition)
        tables = self._tables(ctx)
        tables.synced.discard(definition.project_id)
        table = tables.definitions
        stored = table.get(definition.project_id) or {}
        key = f"{SEGMENT_DEFINITIONS}/{definition.project_id}"
        readable = {sid: raw for sid, raw in stored.items() if _parsed.get(f"{key}/{sid}", raw) is not None}
        previous = readable.get(definition.id)
        current = _parsed.get(f"{key}/{definition.id}", previous) if previous is not None else None
        if current is None or (current.version, _rank(current)) < (definition.version, _rank(definition)):
            readable[definition.id] = msgspec.Raw(definition.model_dump_json().encode())
            table.put(definition.project_id, readable)

    def sync(self, ctx: Context, project_id: str) -> None:
        """Before a record of ``project_id``: apply the definitions barriered in this partition
        (read once per context; applied again only when the value changed)."""
        tables = self._tables(ctx)
        if project_id in tables.synced:
            return
        tables.synced.add(project_id)
        stored = tables.definitions.get(project_id)
        if not stored or self._applied.get(project_id) is stored:
            return
        for definition in _readable(f"{SEGMENT_DEFINITIONS}/{project_id}", stored).values():
            self.registry.apply(definition)
        self._applied[project_id] = stored

    # -- entry points ---------------------------------------------------------------------------

    def after_message(
        self,
        ctx: Context,
        contact: ContactState,
        *,
        is_new: bool,
        fact: HistoryFact | None,
        changes: list[FieldChange],
        cause: str,
    ) -> None:
        project_id, contact_id = contact.project_id, contact.id
        project = self.registry.project(project_id)
        owner = (contact_key(project_id, contact_id), project_id, contact_id)
        tables = self._tables(ctx)
        stored = tables.memberships.get(owner[0])
        if stored is None:
            if not project.segments:
                return  # nothing to keep yet: a contact seen before any segment is backfilled later
            cs = domain.fresh(project, new_contact=is_new)
        else:
            cs = stored
        now = ctx.clock.now()
        adopted, first = self._adopted(tables, project_id, project, cs, contact, now)
        outcome = _after(first, domain.on_event(project, adopted, contact, fact, changes, now))
        self._store(tables, owner, cs, outcome, cause, stored=stored is not None)

    def after_change(self, ctx: Context, contact: ContactState, changes: list[FieldChange], cause: str) -> None:
        self.after_message(ctx, contact, is_new=False, fact=None, changes=changes, cause=cause)

    def refresh(self, ctx: Context, contact: ContactState | None, record: SegmentRefresh) -> None:
        if record.sweep:
            self.sweep(ctx, record)
            return
        if contact is None:
            return  # erased or merged away since the backfill listed it
        project = self.registry.project(contact.project_id)
        owner, cs, stored = self._load(ctx, contact, project, is_new=False)
        now = ctx.clock.now()
        tables = self._tables(ctx)
        adopted, first = self._adopted(tables, contact.project_id, project, cs, contact, now)
        seeds = None if bytes(record.seeds) == b"null" else _SEEDS.decode(record.seeds)
        outcome = domain.on_refresh(
            project,
            adopted,
            contact,
            segment_id=record.segment_id,
            version=record.version,
            tracker_keys=record.tracker_keys,
            facts=record.facts,
            last=record.last,
            seeds=seeds,
            replayed=record.replayed,
            seeded_at=record.seeded_at,
            now=now,
        )
        self._store(tables, owner, cs, _after(first, outcome), f"backfill:v{record.version}", stored=stored)

    def sweep(self, ctx: Context, record: SegmentRefresh) -> None:
        """The end of a segment version's backfill in this partition, after every seed: the
        version is swept here (contacts without a seed take its trackers as empty, ``adopt``),
        and the contacts whose membership may change now are evaluated -- its members, those that
        buffered live facts, and every contact when the rule can hold without history."""
        project_id, segment_id, version = record.project_id, record.segment_id, record.version
        definition = self.registry.definition(segment_id)
        if definition is None or definition.version != version:
            return  # superseded: the newer version's backfill sweeps
        tables = self._tables(ctx)
        marker = tables.swept.get(project_id)
        if marker is not None and marker.versions.get(segment_id, 0) >= version:
            return  # swept already (a replay; or the embedded runtime, whose partitions share a store)
        project = self.registry.project(project_id)
        live = project.segments.get(segment_id)
        versions = {sid: v for sid, v in (marker.versions if marker else {}).items() if sid in project.segments}
        if live is not None:
            versions[segment_id] = version
        tables.swept.put(project_id, SweptSegments(versions=versions))
        tables.seeded.pop(project_id, None)
        seeded = self._seeded(tables, project_id, project)
        every = live is not None and holds_without_history(live.compiled.rule) is not False
        now = ctx.clock.now()
        for contact, stored in self._to_sweep(tables, project_id, segment_id, every=every):
            owner = _owner(contact)
            cs = stored if stored is not None else domain.fresh(project, new_contact=False)
            outcome = domain.on_sweep(project, cs, contact, segment_id=segment_id, seeded=seeded, now=now)
            if _changed(cs, outcome):
                self._store(tables, owner, cs, outcome, f"backfill:v{version}", stored=stored is not None)

    def _to_sweep(
        self, tables: _Tables, project_id: str, segment_id: str, *, every: bool
    ) -> Iterator[tuple[ContactState, domain.ContactSegments | None]]:
        """The contacts a sweep evaluates (each once), with their stored segment state."""
        from spotzee.streams.contact_processor import CONTACTS  # (that module builds this one)

        contacts = typed(tables.ctx, CONTACTS)
        members = member_prefix(project_id, segment_id)
        named = [key[len(members) :] for key, _ in tables.segment_members.scan_prefix(members)]
        named += [key[len(project_id) + 1 :] for key, _ in tables.waiting.scan_prefix(f"{project_id}:")]
        seen: set[str] = set()
        for contact_id in named:
            key = contact_key(project_id, contact_id)
            contact = contacts.get(key)
            if contact is not None and key not in seen:
                seen.add(key)
                yield contact, tables.memberships.get(key)
        if every:
            for key, contact in contacts.scan_prefix(f"{project_id}:"):
                if key not in seen:
                    yield contact, tables.memberships.get(key)

    def wake(self, ctx: Context, contact: ContactState | None, record: SegmentWake) -> None:
        if contact is None:
            return
        project = self.registry.project(contact.project_id)
        owner, cs, stored = self._load(ctx, contact, project, is_new=False)
        now = ctx.clock.now()
        tables = self._tables(ctx)
        adopted, first = self._adopted(tables, contact.project_id, project, cs, contact, now)
        outcome = _after(first, domain.on_wake(project, adopted, contact, now))
        self._store(tables, owner, cs, outcome, "time", stored=stored)

    def list_membership(self, ctx: Context, contact: ContactState, list_id: str, member: bool, is_new: bool) -> None:
        now = ctx.clock.now()
        rows = self._tables(ctx).list_members
        row = member_key(contact.project_id, list_id, contact.id)
        if member:
            if rows.get(row) is None:
                rows.put(row, Member(since=now, version=0))
        else:
            rows.delete(row)
        project = self.registry.project(contact.project_id)
        owner, cs, stored = self._load(ctx, contact, project, is_new=is_new)
        tables = self._tables(ctx)
        adopted, first = self._adopted(tables, contact.project_id, project, cs, contact, now)
        outcome = _after(first, domain.on_lists(project, adopted, contact, list_id, member, now))
        self._store(tables, owner, cs, outcome, f"list:{list_id}", stored=stored)

    def leave(self, ctx: Context, project_id: str, contact_id: str, cause: str) -> bytes | None:
        """The contact is erased or merged into another: exit everything, drop its rows and
        timer; returns its stored state (handed over to a merge target)."""
        owner = (contact_key(project_id, contact_id), project_id, contact_id)
        tables = self._tables(ctx)
        memberships = tables.memberships
        cs = memberships.get(owner[0])
        if cs is None:
            return None
        outcome = domain.on_leave(cs)
        lists = tables.list_members
        for list_id in cs.lists:
            lists.delete(member_key(project_id, list_id, contact_id))
        self._store(tables, owner, cs, outcome, cause, stored=True)
        memberships.delete(owner[0])
        # What the merge target gets: the trackers this store's backfills completed implicitly
        # made explicit (the target's store may not have swept them yet).
        project = self.registry.project(project_id)
        seeded = self._seeded(tables, project_id, project)
        handed = domain.adopt(project, cs, seeded, ctx.clock.now())[0] if seeded else cs
        return MEMBERSHIPS_TABLE.encode(handed)

    def after_merge(
        self,
        ctx: Context,
        contact: ContactState,
        source_segments: bytes | None,
        source_id: str,
        changes: list[FieldChange],
    ) -> None:
        project = self.registry.project(contact.project_id)
        owner, target, stored = self._load(ctx, contact, project, is_new=False)
        source = MEMBERSHIPS_TABLE.decode(source_segments) if source_segments is not None else None
        if source is not None:
            lists = self._tables(ctx).list_members
            for list_id in source.lists:  # the source's list memberships move to the target
                row = member_key(contact.project_id, list_id, contact.id)
                if lists.get(row) is None:
                    lists.put(row, Member(since=ctx.clock.now(), version=0))
        now = ctx.clock.now()
        tables = self._tables(ctx)
        adopted, first = self._adopted(tables, contact.project_id, project, target, contact, now)
        outcome = _after(first, domain.on_merge(project, adopted, source, contact, changes, now))
        self._store(tables, owner, target, outcome, f"merge:{source_id}", stored=stored)

    # -- helpers --------------------------------------------------------------------------------

    def _seeded(self, tables: _Tables, project_id: str, project: domain.ProjectSegments) -> frozenset[str]:
        """The tracker keys this context's store completes implicitly: those of the live segment
        versions swept here (read once per context and compiled project)."""
        cached = tables.seeded.get(project_id)
        if cached is not None and cached[0] is project:
            return cached[1]
        marker = tables.swept.get(project_id)
        keys: frozenset[str] = frozenset()
        if marker is not None:
            segments = project.segments
            keys = keys.union(
                *(
                    segments[sid].tracker_keys
                    for sid, v in marker.versions.items()
                    if sid in segments and segments[sid].version == v
                )
            )
        tables.seeded[project_id] = (project, keys)
        return keys

    def _adopted(
        self,
        tables: _Tables,
        project_id: str,
        project: domain.ProjectSegments,
        cs: domain.ContactSegments,
        contact: ContactState,
        now: datetime,
    ) -> tuple[domain.ContactSegments, list[domain.Transition]]:
        """``cs`` with the trackers of swept segments complete (``domain.adopt``), and the
        transitions of the segments that became evaluable by it."""
        seeded = self._seeded(tables, project_id, project)
        if not seeded:
            return cs, _NO_TRANSITIONS
        adopted, evaluable = domain.adopt(project, cs, seeded, now)
        if not evaluable:
            return adopted, _NO_TRANSITIONS
        first = domain.evaluate_segments(project, adopted, contact, evaluable, now)
        return first.state, first.transitions

    def _tables(self, ctx: Context) -> _Tables:
        views = self._views
        if views is None or views.ctx is not ctx:
            views = self._views = _Tables(ctx)
        return views

    def _load(
        self, ctx: Context, contact: ContactState, project: domain.ProjectSegments, *, is_new: bool
    ) -> tuple[_Owner, domain.ContactSegments, bool]:
        """The contact, its segment state (fresh when none is stored) and whether one is."""
        owner = _owner(contact)
        stored = self._tables(ctx).memberships.get(owner[0])
        if stored is None:
            return owner, domain.fresh(project, new_contact=is_new), False
        return owner, stored, True

    def _store(
        self,
        tables: _Tables,
        owner: _Owner,
        before: domain.ContactSegments,
        outcome: domain.Outcome,
        cause: str,
        *,
        stored: bool,
    ) -> None:
        """Keep ``outcome`` (``before``: the state it started from; ``stored``: ``before`` is the
        table's value): the state, the member rows that changed, the transitions, the timer."""
        after = outcome.state
        if after is before and stored and cause != "time":
            return  # nothing changed (no transition comes without a change of members)
        key, project_id, contact_id = owner
        ctx = tables.ctx
        if after is not before or not stored:
            tables.memberships.put(key, after)
            self._waiting(tables, key, before, after, stored=stored)
        if after.members is not before.members:
            self._rows(tables.segment_members, owner, before, after)
        if outcome.transitions:
            now = ctx.clock.now()
            told = [self._emit(ctx, owner, transition, now, cause) for transition in outcome.transitions]
            for listener in self.listeners:
                listener(ctx, project_id, contact_id, told)
        if after.wakes is before.wakes and cause != "time":
            return  # the same wake-ups: the timer stands
        wake_at = after.wake_at
        if wake_at != before.wake_at or cause == "time":  # a fired timer is gone: re-arm it
            timer = f"segments:{key}"
            if wake_at is None:
                ctx.cancel(timer)
            else:
                wake = SegmentWake(project_id=project_id, id=contact_id)
                ctx.schedule(timer, wake_at, topics.EVENTS, key, dumps(wake))

    @staticmethod
    def _waiting(
        tables: _Tables, key: str, before: domain.ContactSegments, after: domain.ContactSegments, *, stored: bool
    ) -> None:
        """Keep ``segment_waiting`` listing the contacts that buffer live facts or wait for a refresh."""
        if after.pending or after.seeding:
            if not stored or after.pending is not before.pending or after.seeding is not before.seeding:
                tables.waiting.put(key, True)
        elif stored and (before.pending or before.seeding):
            tables.waiting.delete(key)

    @staticmethod
    def _rows(
        rows: TypedTable[Member], owner: _Owner, before: domain.ContactSegments, after: domain.ContactSegments
    ) -> None:
        """The ``segment_members`` rows of the memberships that began, ended or changed version."""
        _, project_id, contact_id = owner
        members = after.members
        for segment_id in before.members:
            if segment_id not in members:
                rows.delete(member_key(project_id, segment_id, contact_id))
        values: dict[tuple[datetime, int], Member] = {}  # the segments entered together share a value
        for segment_id, membership in members.items():
            known = before.members.get(segment_id)
            if known is None or known.since != membership.since or known.version != membership.version:
                value = values.get((membership.since, membership.version))
                if value is None:
                    value = values[(membership.since, membership.version)] = Member(
                        since=membership.since, version=membership.version
                    )
                rows.put(member_key(project_id, segment_id, contact_id), value)

    @staticmethod
    def _emit(
        ctx: Context, owner: _Owner, transition: domain.Transition, at: datetime, cause: str
    ) -> tuple[str, bool, str]:
        """The transition's ``SegmentChange`` and history row; what the listeners are told of it."""
        key, project_id, contact_id = owner
        number = change_id(contact_id, transition.seq)
        change = SegmentChange(
            project_id=project_id,
            contact_id=contact_id,
            segment_id=transition.segment_id,
            version=transition.version,
            change="entered" if transition.entered else "exited",
            at=at,
            cause=cause,
            change_id=number,
        )
        row = SegmentChangeRow(
            project_id=project_id,
            segment_id=change.segment_id,
            contact_id=contact_id,
            version=change.version,
            change=change.change,
            at=at,
            cause=cause,
            change_id=number,
        )
        ctx.emit(topics.SEGMENT_CHANGES, key, dumps(change))
        ctx.emit(topics.ANALYTICS, key, dumps(row))
        return transition.segment_id, transition.entered, number
