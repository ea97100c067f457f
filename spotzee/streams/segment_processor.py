"""Segment membership inside the contact processor: load, call the pure domain, store, emit.

Tables (all keyed so that the owner of the contact's partition is their only writer):
- ``memberships``: ContactSegments per contact key (tracker slots, memberships, lists, wakes);
- ``segment_members``: ``project:segment_id\\x00contact_id`` -> Member (current members, in
  contact order: the members API pages through it);
- ``list_members``: ``project:list_id\\x00contact_id`` -> Member (version 0).

Outputs per transition: a ``SegmentChange`` on ``segment-changes`` and a ``SegmentChangeRow``
for the ClickHouse ``segment_changes`` history. One timer per contact (``segments:<key>``)
re-delivers a ``SegmentWake`` at the earliest instant a time-dependent segment may flip.
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Iterable
from datetime import datetime

from pydantic import TypeAdapter
from pydantic_core import from_json

from spotzee.domain.segments import membership as domain
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
from spotzee.streams import topics
from spotzee.streams.interface import Context
from spotzee.streams.quarantine import Unreadable, decode, quarantine
from spotzee.streams.record_codec import dumps, loads

MEMBERSHIPS = "memberships"
SEGMENT_MEMBERS = "segment_members"
LIST_MEMBERS = "list_members"
SEGMENT_DEFINITIONS = "segment_definitions"  # project id -> {segment id: definition} seen in barriers
TABLES = (MEMBERSHIPS, SEGMENT_MEMBERS, LIST_MEMBERS, SEGMENT_DEFINITIONS)
SEP = "\x00"

_definition = TypeAdapter[SegmentDefinition | ListDefinition](SegmentDefinition | ListDefinition)


def member_key(project_id: str, segment_or_list_id: str, contact_id: str) -> str:
    return f"{project_id}:{segment_or_list_id}{SEP}{contact_id}"


def member_prefix(project_id: str, segment_or_list_id: str) -> str:
    return f"{project_id}:{segment_or_list_id}{SEP}"


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


def _rank(definition: SegmentDefinition) -> int:
    return {"building": 0, "ready": 1, "deleted": 2}[definition.status.value]


TransitionListener = Callable[[Context, str, str, list[tuple[str, bool, str]]], None]


_barriered = TypeAdapter[dict[str, SegmentDefinition]](dict[str, SegmentDefinition])


def read_barriered(project_id: str, raw: bytes) -> dict[str, SegmentDefinition]:
    """A partition's barriered definitions of a project, each decoded on its own: one that is
    unreadable (stored by an older version) is quarantined and dropped, the others stand. The
    registry still has every readable definition from the definitions store."""
    key = f"{SEGMENT_DEFINITIONS}/{project_id}"
    items = decode(key, raw, from_json)
    if isinstance(items, Unreadable) or not isinstance(items, dict):
        return {}
    found: dict[str, SegmentDefinition] = {}
    for segment_id, data in items.items():
        try:
            found[segment_id] = SegmentDefinition.model_validate(data)
        except Exception as exc:  # this one definition only
            quarantine(f"{key}/{segment_id}", raw, exc)
    return found


class SegmentMemberships:
    """The processor side of segments, called by ContactProcessor for every contact record."""

    def __init__(self, registry: SegmentRegistry) -> None:
        self.registry = registry
        self._applied: set[bytes] = set()  # barrier states applied already (partitions differ)
        # Told (project, contact, [(segment id, entered, change id)]) after each stored change:
        # journeys trigger on segment entry and exit.
        self.listeners: list[TransitionListener] = []

    # -- definitions that travel with the partition ---------------------------------------------

    def barrier(self, ctx: Context, definition: SegmentDefinition) -> None:
        """Adopt the definition and keep it in the partition's state: whoever owns the partition
        later (a worker taking it over, restoring from the changelog) evaluates every record after
        the barrier against it, whatever its own definitions replica has seen so far."""
        self.registry.apply(definition)
        table = ctx.table(SEGMENT_DEFINITIONS)
        raw = table.get(definition.project_id)
        known = read_barriered(definition.project_id, raw) if raw is not None else {}
        current = known.get(definition.id)
        if current is None or (current.version, _rank(current)) < (definition.version, _rank(definition)):
            known[definition.id] = definition
            table.set(definition.project_id, _barriered.dump_json(known))

    def sync(self, ctx: Context, project_id: str) -> None:
        """Before a record of ``project_id``: apply the definitions barriered in this partition
        (one point read; parsed only when they changed)."""
        raw = ctx.table(SEGMENT_DEFINITIONS).get(project_id)
        if raw is None or raw in self._applied:
            return
        for definition in read_barriered(project_id, raw).values():
            self.registry.apply(definition)
        if len(self._applied) > 4096:
            self._applied.clear()
        self._applied.add(raw)

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
        project = self.registry.project(contact.project_id)
        if not project.segments and ctx.table(MEMBERSHIPS).get(self._key(contact)) is None:
            return  # nothing to keep yet: a contact seen before any segment is backfilled later
        cs = self._load(ctx, contact, project, is_new=is_new)
        outcome = domain.on_event(project, cs, contact, fact, changes, ctx.clock.now())
        self._store(ctx, contact.project_id, contact.id, cs, outcome, cause)

    def after_change(self, ctx: Context, contact: ContactState, changes: list[FieldChange], cause: str) -> None:
        self.after_message(ctx, contact, is_new=False, fact=None, changes=changes, cause=cause)

    def refresh(self, ctx: Context, contact: ContactState | None, record: SegmentRefresh) -> None:
        if contact is None:
            return  # erased or merged away since the backfill listed it
        project = self.registry.project(contact.project_id)
        cs = self._load(ctx, contact, project, is_new=False)
        outcome = domain.on_refresh(
            project,
            cs,
            contact,
            segment_id=record.segment_id,
            version=record.version,
            tracker_keys=record.tracker_keys,
            facts=record.facts,
            last=record.last,
            now=ctx.clock.now(),
        )
        self._store(ctx, contact.project_id, contact.id, cs, outcome, f"backfill:v{record.version}")

    def wake(self, ctx: Context, contact: ContactState | None, record: SegmentWake) -> None:
        if contact is None:
            return
        project = self.registry.project(contact.project_id)
        cs = self._load(ctx, contact, project, is_new=False)
        outcome = domain.on_wake(project, cs, contact, ctx.clock.now())
        self._store(ctx, contact.project_id, contact.id, cs, outcome, "time")

    def list_membership(self, ctx: Context, contact: ContactState, list_id: str, member: bool, is_new: bool) -> None:
        now = ctx.clock.now()
        rows = ctx.table(LIST_MEMBERS)
        key = member_key(contact.project_id, list_id, contact.id)
        if member:
            if rows.get(key) is None:
                rows.set(key, dumps(Member(since=now, version=0)))
        else:
            rows.delete(key)
        project = self.registry.project(contact.project_id)
        cs = self._load(ctx, contact, project, is_new=is_new)
        outcome = domain.on_lists(project, cs, contact, list_id, member, now)
        self._store(ctx, contact.project_id, contact.id, cs, outcome, f"list:{list_id}")

    def leave(self, ctx: Context, project_id: str, contact_id: str, cause: str) -> bytes | None:
        """The contact is erased or merged into another: exit everything, drop its rows and
        timer; returns its stored state (handed over to a merge target)."""
        key = f"{project_id}:{contact_id}"
        raw = ctx.table(MEMBERSHIPS).get(key)
        if raw is None:
            return None
        cs = loads(domain.ContactSegments, raw)
        outcome = domain.on_leave(cs)
        for list_id in cs.lists:
            ctx.table(LIST_MEMBERS).delete(member_key(project_id, list_id, contact_id))
        self._store(ctx, project_id, contact_id, cs, outcome, cause)
        ctx.table(MEMBERSHIPS).delete(key)
        return raw

    def after_merge(
        self,
        ctx: Context,
        contact: ContactState,
        source_segments: bytes | None,
        source_id: str,
        changes: list[FieldChange],
    ) -> None:
        project = self.registry.project(contact.project_id)
        target = self._load(ctx, contact, project, is_new=False)
        source = loads(domain.ContactSegments, source_segments) if source_segments is not None else None
        if source is not None:
            for list_id in source.lists:  # the source's list memberships move to the target
                row = member_key(contact.project_id, list_id, contact.id)
                if ctx.table(LIST_MEMBERS).get(row) is None:
                    ctx.table(LIST_MEMBERS).set(row, dumps(Member(since=ctx.clock.now(), version=0)))
        outcome = domain.on_merge(project, target, source, contact, changes, ctx.clock.now())
        self._store(ctx, contact.project_id, contact.id, target, outcome, f"merge:{source_id}")

    # -- helpers --------------------------------------------------------------------------------

    @staticmethod
    def _key(contact: ContactState) -> str:
        return f"{contact.project_id}:{contact.id}"

    def _load(
        self, ctx: Context, contact: ContactState, project: domain.ProjectSegments, *, is_new: bool
    ) -> domain.ContactSegments:
        raw = ctx.table(MEMBERSHIPS).get(self._key(contact))
        if raw is None:
            return domain.fresh(project, new_contact=is_new)
        return loads(domain.ContactSegments, raw)

    def _store(
        self,
        ctx: Context,
        project_id: str,
        contact_id: str,
        before: domain.ContactSegments,
        outcome: domain.Outcome,
        cause: str,
    ) -> None:
        key = f"{project_id}:{contact_id}"
        after = outcome.state
        ctx.table(MEMBERSHIPS).set(key, dumps(after))
        rows = ctx.table(SEGMENT_MEMBERS)
        for segment_id in before.members.keys() - after.members.keys():
            rows.delete(member_key(project_id, segment_id, contact_id))
        values: dict[tuple[datetime, int], bytes] = {}  # the segments entered together share a value
        for segment_id, membership in after.members.items():
            known = before.members.get(segment_id)
            if known is None or known.since != membership.since or known.version != membership.version:
                value = values.get((membership.since, membership.version))
                if value is None:
                    value = values[(membership.since, membership.version)] = dumps(
                        Member(since=membership.since, version=membership.version)
                    )
                rows.set(member_key(project_id, segment_id, contact_id), value)
        now = ctx.clock.now()
        for transition in outcome.transitions:
            self._emit(ctx, project_id, contact_id, transition, now, cause)
        if outcome.transitions:
            told = [(t.segment_id, t.entered, change_id(contact_id, t.seq)) for t in outcome.transitions]
            for listener in self.listeners:
                listener(ctx, project_id, contact_id, told)
        wake_at, was = after.wake_at, before.wake_at
        if wake_at != was or cause == "time":  # a fired timer is gone: re-arm it
            timer = f"segments:{key}"
            if wake_at is None:
                ctx.cancel(timer)
            else:
                wake = SegmentWake(project_id=project_id, id=contact_id)
                ctx.schedule(timer, wake_at, topics.EVENTS, key, dumps(wake))

    @staticmethod
    def _emit(
        ctx: Context, project_id: str, contact_id: str, transition: domain.Transition, at: datetime, cause: str
    ) -> None:
        key = f"{project_id}:{contact_id}"
        change = SegmentChange(
            project_id=project_id,
            contact_id=contact_id,
            segment_id=transition.segment_id,
            version=transition.version,
            change="entered" if transition.entered else "exited",
            at=at,
            cause=cause,
            change_id=change_id(contact_id, transition.seq),
        )
        ctx.emit(topics.SEGMENT_CHANGES, key, dumps(change))
        ctx.emit(topics.ANALYTICS, key, dumps(SegmentChangeRow(**change.model_dump(exclude={"type"}))))
