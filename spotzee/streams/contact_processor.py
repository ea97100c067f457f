"""The contact processor: a thin adapter that loads state, calls the domain, stores and emits.

Input: the ``events`` topic (key ``project:contact``). Tables:
- ``contacts``: ContactState per contact key;
- ``aliases``: AliasState at ids merged into another contact (later records are forwarded);
- ``dedupe``: ``<contact key>\\x00<messageId>`` -> first-seen time, swept by a per-contact timer.
- segment tables (``streams.segments``): per-contact segment state, current segment and list members.
Outputs: ``analytics`` rows and history mutations; ``events`` records to other contacts
(merge requests, forwarded messages, cascaded erasures); ``segment-changes``.
"""

from __future__ import annotations

import functools
import hashlib
import logging
import uuid
from collections.abc import Callable, Iterable, Iterator
from datetime import datetime, timedelta
from typing import Any, NamedTuple

import orjson

from spotzee.domain import contacts as domain
from spotzee.domain.event_time import effective_timestamp
from spotzee.domain.traits import TraitError, normalize_traits
from spotzee.schemas.analytics_models import AliasRow, ContactChangeRow, EraseHistory, EventRow
from spotzee.schemas.common import epoch_ms
from spotzee.schemas.contact_models import AliasState, ContactState, FieldChange
from spotzee.schemas.message_data import IdentifyData, TrackData, event_name
from spotzee.schemas.records import (
    ContactErase,
    ContactPatch,
    DedupeSweep,
    EventsRecord,
    IngestedMessage,
    JourneyBarrier,
    JourneyEntry,
    JourneyWake,
    MergeIn,
    MergeRequest,
    decode_record,
    record_key,
)
from spotzee.schemas.segment_models import HistoryFact, ListMembership, SegmentBarrier, SegmentRefresh, SegmentWake
from spotzee.schemas.structs import replace
from spotzee.streams import topics
from spotzee.streams.interface import Context
from spotzee.streams.journey_processor import CACHED_TABLES as JOURNEY_CACHED
from spotzee.streams.journey_processor import TABLES as JOURNEY_TABLES
from spotzee.streams.journey_processor import JourneyRegistry, JourneyRunner, SegmentTransition
from spotzee.streams.record_codec import dumps
from spotzee.streams.segment_processor import CACHED_TABLES as SEGMENT_CACHED
from spotzee.streams.segment_processor import TABLES as SEGMENT_TABLES
from spotzee.streams.segment_processor import SegmentMemberships, SegmentRegistry
from spotzee.tables.keyspace import contact_key, sub_key, sub_prefix
from spotzee.tables.table_specs import TableSpec, TypedTable, typed

log = logging.getLogger(__name__)


def _iso(moment: datetime) -> bytes:
    return moment.isoformat().encode()


def _from_iso(data: bytes) -> datetime:
    return datetime.fromisoformat(data.decode())


CONTACTS = TableSpec("contacts", ContactState)
ALIASES = TableSpec("aliases", AliasState)
# key -> when the messageId was first seen; stored as ISO text (the format it always had)
DEDUPE = TableSpec("dedupe", datetime, encoder=_iso, decoder=_from_iso)


class _Tables(NamedTuple):
    """The typed views of one context's contact tables."""

    contacts: TypedTable[ContactState]
    aliases: TypedTable[AliasState]
    dedupe: TypedTable[datetime]


class ContactProcessor:
    topic = topics.EVENTS
    tables: tuple[str, ...] = (CONTACTS.name, ALIASES.name, DEDUPE.name, *SEGMENT_TABLES, *JOURNEY_TABLES)
    # Read on (almost) every record of a contact: worth keeping decoded across batches.
    cached_tables: tuple[str, ...] = (CONTACTS.name, ALIASES.name, *SEGMENT_CACHED, *JOURNEY_CACHED)

    def __init__(
        self,
        *,
        dedupe_window: timedelta,
        recent_limit: int,
        segments: SegmentRegistry | None = None,
        journeys: JourneyRegistry | None = None,
    ) -> None:
        self.dedupe_window = dedupe_window
        self.recent_limit = recent_limit
        self.registry = segments or SegmentRegistry()
        self.segments = SegmentMemberships(self.registry)
        self.journey_registry = journeys or JourneyRegistry()
        self.journeys = JourneyRunner(self.journey_registry, self._journey_update)
        self.segments.listeners.append(self._segment_transitions)
        self._last: tuple[Context, _Tables] | None = None
        # What each record does to the contact it is keyed by (barriers aside: see ``process``).
        self._handlers: dict[type[Any], Callable[[Context, Any], None]] = {
            IngestedMessage: self._ingest,
            MergeRequest: self._merge_request,
            MergeIn: self._merge_in,
            ContactPatch: self._patch,
            ContactErase: self._erase,
            DedupeSweep: self._sweep,
            SegmentRefresh: self._segment_refresh,
            SegmentWake: self._segment_wake,
            ListMembership: self._list_membership,
            JourneyEntry: self._journey_entry,
            JourneyWake: self._journey_wake,
        }

    def process(self, ctx: Context, key: str, value: bytes) -> None:
        record: EventsRecord = decode_record(value)
        if isinstance(record, SegmentBarrier):
            self.segments.barrier(ctx, record.parsed())
            return
        if isinstance(record, JourneyBarrier):
            self.journey_registry.apply(record.parsed())
            return
        self.segments.sync(ctx, record.project_id)
        handle = self._handlers.get(type(record))
        if handle is not None:
            handle(ctx, record)

    # -- records ---------------------------------------------------------------------------

    def _segment_refresh(self, ctx: Context, record: SegmentRefresh) -> None:
        # An id merged away has no state: its refresh is dropped (the backfill lists the target).
        self.segments.refresh(ctx, self._state(ctx, record_key(record)), record)

    def _segment_wake(self, ctx: Context, record: SegmentWake) -> None:
        self.segments.wake(ctx, self._state(ctx, record_key(record)), record)

    def _journey_wake(self, ctx: Context, record: JourneyWake) -> None:
        self.journeys.on_wake(ctx, self._state(ctx, record_key(record)), record)

    def _ingest(self, ctx: Context, record: IngestedMessage) -> None:
        contact_id = record.contact_id
        key = contact_key(record.project_id, contact_id)  # record_key(record), its contact id read once
        now = ctx.clock.now()
        tables = self._tables(ctx)
        # A message seen within the dedupe window is dropped; the first sighting is kept, and swept later
        dedupe_key = sub_key(key, record.message_id)
        seen = tables.dedupe.get(dedupe_key)
        if seen is not None and seen > now - self.dedupe_window:
            return
        tables.dedupe.put(dedupe_key, now)
        self._keep_sweep(ctx, key, record.project_id, contact_id, now)
        alias = tables.aliases.get(key)
        if alias is not None:  # ``_forward_if_merged``
            forwarded = replace(record, forwarded_to=alias.merged_into)
            ctx.emit(topics.EVENTS, record_key(forwarded), dumps(forwarded))
            return
        contacts = tables.contacts
        state = contacts.get(key)
        outcome = domain.apply_message(
            state,
            record.message,
            project_id=record.project_id,
            contact_id=contact_id,
            message_id=record.message_id,
            received_at=record.received_at,
            recent_limit=self.recent_limit,
        )
        contacts.put(key, outcome.state)
        for source in outcome.merge_sources:
            request = MergeRequest(
                project_id=record.project_id, source_id=source, target_id=contact_id, requested_at=now
            )
            ctx.emit(topics.EVENTS, record_key(request), dumps(request))
        ctx.emit(topics.ANALYTICS, key, dumps(self._event_row(record, contact_id)))
        source = "identify" if isinstance(record.message, IdentifyData) else record.message.type
        rows = change_rows(record.project_id, contact_id, outcome.changes, now, source, record.message_id)
        _emit_changes(ctx, rows)
        message = record.message
        fact = (
            HistoryFact(
                message_id=record.message_id,
                name=message.event,
                timestamp=effective_timestamp(message, record.received_at),
                properties=message.properties,
            )
            if isinstance(message, TrackData)
            else None
        )
        self.segments.after_message(
            ctx,
            outcome.state,
            is_new=state is None,
            fact=fact,
            changes=outcome.changes,
            cause=f"event:{record.message_id}",
        )
        if fact is not None:
            self.journeys.on_event(ctx, contacts.get(key) or outcome.state, fact)

    def _merge_request(self, ctx: Context, record: MergeRequest) -> None:
        key = record_key(record)
        if record.source_id == record.target_id:
            return
        alias = self._alias(ctx, key)
        if alias is not None:
            # An id belongs to the first contact it was merged into; later claims are ignored.
            if alias.merged_into != record.target_id:
                log.info(
                    "merge of %s into %s ignored: already merged into %s", key, record.target_id, alias.merged_into
                )
            return
        state = self._state(ctx, key)
        if state is not None:
            self.journeys.on_leave(ctx, state, f"merged:{record.target_id}")
        typed(ctx, CONTACTS).delete(key)
        source_segments = self.segments.leave(ctx, record.project_id, record.source_id, f"merged:{record.target_id}")
        merged = AliasState(
            project_id=record.project_id, id=record.source_id, merged_into=record.target_id, merged_at=ctx.clock.now()
        )
        typed(ctx, ALIASES).put(key, merged)
        hand_over = MergeIn(
            project_id=record.project_id,
            source_id=record.source_id,
            target_id=record.target_id,
            source_state=state,
            merged_at=merged.merged_at,
            source_segments=source_segments.decode() if source_segments is not None else None,
        )
        ctx.emit(topics.EVENTS, record_key(hand_over), dumps(hand_over))

    def _merge_in(self, ctx: Context, record: MergeIn) -> None:
        key = record_key(record)
        if self._forward_if_merged(ctx, key, record, "target_id"):
            return
        target = self._state(ctx, key)
        if target is not None and record.source_id in target.anonymous_ids:
            return  # already merged: a replayed hand-over must not count twice
        now = ctx.clock.now()
        outcome = domain.merge_profiles(
            target,
            record.source_state,
            source_id=record.source_id,
            target_id=record.target_id,
            project_id=record.project_id,
            now=now,
            recent_limit=self.recent_limit,
        )
        typed(ctx, CONTACTS).put(key, outcome.state)
        pid = record.project_id
        # History is re-attributed by mapping, not by rewriting rows: every id now merged into the
        # target (the source and whatever was merged into it before) maps to it in contact_aliases.
        moved = [record.source_id, *(record.source_state.anonymous_ids if record.source_state else [])]
        for alias_id in moved:
            row = AliasRow(project_id=pid, alias_id=alias_id, contact_id=record.target_id, merged_at=record.merged_at)
            ctx.emit(topics.ANALYTICS, key, dumps(row))
        rows = change_rows(pid, record.target_id, outcome.changes, now, "merge", f"merge:{record.source_id}")
        _emit_changes(ctx, rows)
        source_segments = record.source_segments.encode() if record.source_segments is not None else None
        self.segments.after_merge(ctx, outcome.state, source_segments, record.source_id, outcome.changes)

    def _patch(self, ctx: Context, record: ContactPatch) -> None:
        key = record_key(record)
        # Merged since the link was made: the contact lives on under the target, created at another
        # time, so only "it exists" still applies there.
        if self._forward_if_merged(ctx, key, replace(record, only_created_ms=None), "id"):
            return
        state = self._state(ctx, key)
        if record.only_existing and (
            state is None
            or (record.only_created_ms is not None and epoch_ms(state.created_at) != record.only_created_ms)
        ):
            return  # an unsubscribe link of an erased contact: it names nobody any more
        now = ctx.clock.now()
        outcome = domain.apply_patch(
            state,
            record.traits,
            project_id=record.project_id,
            contact_id=record.id,
            now=now,
            remove_devices=record.remove_devices,
        )
        typed(ctx, CONTACTS).put(key, outcome.state)
        _emit_changes(ctx, change_rows(record.project_id, record.id, outcome.changes, now, "api", record.request_id))
        self.segments.after_change(ctx, outcome.state, outcome.changes, f"api:{record.request_id}")

    def _journey_entry(self, ctx: Context, record: JourneyEntry) -> None:
        key = record_key(record)
        if self._forward_if_merged(ctx, key, record, "id"):
            return
        state = self._state(ctx, key)
        now = ctx.clock.now()
        if state is None and not record.create_contact:
            return  # a delayed link for a contact erased meanwhile
        if state is None:  # entering a journey by id creates the contact, like a list import
            outcome = domain.apply_patch(None, {}, project_id=record.project_id, contact_id=record.id, now=now)
            typed(ctx, CONTACTS).put(key, outcome.state)
            self.segments.after_change(ctx, outcome.state, outcome.changes, f"journey_entry:{record.entry_id}")
            state = self._state(ctx, key) or outcome.state
        self.journeys.on_entry(ctx, state, record)

    def _journey_update(self, ctx: Context, contact: ContactState, traits: dict[str, Any], cause: str) -> ContactState:
        """A journey's ``update`` step: the same semantics, validation and history as an API patch
        (paths as in segment rules: ``plan`` or ``traits.plan``). An invalid value is skipped."""
        key = contact_key(contact.project_id, contact.id)
        now = ctx.clock.now()
        cleaned: dict[str, Any] = {}
        for path, value in traits.items():
            name = path.removeprefix("traits.")
            try:
                cleaned.update(normalize_traits({name: value}, prefix="traits"))
            except TraitError as exc:
                log.warning("journey update of %s skipped for %s: %s", name, key, exc)
        traits = cleaned
        outcome = domain.apply_patch(
            self._state(ctx, key), traits, project_id=contact.project_id, contact_id=contact.id, now=now
        )
        typed(ctx, CONTACTS).put(key, outcome.state)
        _emit_changes(ctx, change_rows(contact.project_id, contact.id, outcome.changes, now, "journey", cause))
        self.segments.after_change(ctx, outcome.state, outcome.changes, cause)
        return outcome.state

    def _segment_transitions(
        self, ctx: Context, project_id: str, contact_id: str, transitions: list[tuple[str, bool, str]]
    ) -> None:
        state = self._state(ctx, contact_key(project_id, contact_id))
        if state is None:
            return  # erased or merged away: its runs were ended already
        self.journeys.on_segments(ctx, state, [SegmentTransition(*t) for t in transitions])

    def _list_membership(self, ctx: Context, record: ListMembership) -> None:
        key = record_key(record)
        if self._forward_if_merged(ctx, key, record, "id"):
            return
        state = self._state(ctx, key)
        if state is None and not record.member:
            return  # removing a contact that doesn't exist: nothing to do
        now = ctx.clock.now()
        if state is None or record.traits:
            outcome = domain.apply_patch(
                state, record.traits, project_id=record.project_id, contact_id=record.id, now=now
            )
            typed(ctx, CONTACTS).put(key, outcome.state)
            rows = change_rows(record.project_id, record.id, outcome.changes, now, "import", record.request_id)
            _emit_changes(ctx, rows)
            self.segments.after_change(ctx, outcome.state, outcome.changes, f"import:{record.request_id}")
            contact = outcome.state
        else:
            contact = state
        self.segments.list_membership(ctx, contact, record.list_id, record.member, is_new=state is None)

    def _erase(self, ctx: Context, record: ContactErase) -> None:
        key = record_key(record)
        alias = self._alias(ctx, key)
        if record.only_if_merged_into is not None and (
            alias is None or alias.merged_into not in record.only_if_merged_into
        ):
            return  # this id belongs to someone else (or was never merged): not ours to erase
        state = self._state(ctx, key)
        if state is not None:
            self.journeys.on_leave(ctx, state, "erased")
        typed(ctx, CONTACTS).delete(key)  # first: its segment exits must not trigger journeys
        self.segments.leave(ctx, record.project_id, record.id, "erased")
        typed(ctx, ALIASES).delete(key)
        dedupe = typed(ctx, DEDUPE)
        for entry, _ in list(dedupe.scan_prefix(sub_prefix(key))):
            dedupe.delete(entry)
        ctx.cancel(self._sweep_timer(key))
        if record.only_if_merged_into is not None:
            return  # the root erase deletes the history of every id of the contact
        # anonymous_ids holds every id merged into this contact, also through chains (A -> U2 -> U1).
        ids = [record.id, *(state.anonymous_ids if state else [])]
        for other in ids[1:]:
            cascade = ContactErase(
                project_id=record.project_id,
                id=other,
                requested_at=record.requested_at,
                request_id=record.request_id,
                only_if_merged_into=ids,
            )
            ctx.emit(topics.EVENTS, record_key(cascade), dumps(cascade))
        ctx.emit(topics.ANALYTICS, key, dumps(EraseHistory(project_id=record.project_id, contact_ids=ids)))

    def _sweep(self, ctx: Context, record: DedupeSweep) -> None:
        key = record_key(record)
        now = ctx.clock.now()
        dedupe = typed(ctx, DEDUPE)
        oldest: datetime | None = None
        for entry, seen in list(dedupe.scan_prefix(sub_prefix(key))):
            if seen <= now - self.dedupe_window:
                dedupe.delete(entry)
            else:
                oldest = seen if oldest is None else min(oldest, seen)
        if oldest is not None:
            ctx.schedule(self._sweep_timer(key), oldest + self.dedupe_window, topics.EVENTS, key, dumps(record))

    # -- helpers ---------------------------------------------------------------------------

    def _tables(self, ctx: Context) -> _Tables:
        """The typed tables of ``ctx``, made once per context (a batch) rather than per use (see
        ``JourneyRunner._tables``)."""
        last = self._last
        if last is not None and last[0] is ctx:
            return last[1]
        tables = _Tables(typed(ctx, CONTACTS), typed(ctx, ALIASES), typed(ctx, DEDUPE))
        self._last = (ctx, tables)
        return tables

    def _state(self, ctx: Context, key: str) -> ContactState | None:
        return self._tables(ctx).contacts.get(key)

    def _forward_if_merged(
        self,
        ctx: Context,
        key: str,
        record: IngestedMessage | MergeIn | ContactPatch | ListMembership | JourneyEntry,
        field: str,
    ) -> bool:
        """An id merged into another contact forwards its records there (``field`` names the target)."""
        alias = self._alias(ctx, key)
        if alias is None:
            return False
        forwarded = replace(record, **{field: alias.merged_into})
        ctx.emit(topics.EVENTS, record_key(forwarded), dumps(forwarded))
        return True

    def _alias(self, ctx: Context, key: str) -> AliasState | None:
        return self._tables(ctx).aliases.get(key)

    def _keep_sweep(self, ctx: Context, key: str, project_id: str, contact_id: str, now: datetime) -> None:
        """The contact's dedupe sweep, armed unless it is already."""
        ctx.schedule(
            self._sweep_timer(key),
            now + self.dedupe_window,
            topics.EVENTS,
            key,
            _sweep_record(project_id, contact_id),
            keep_existing=True,
        )

    @staticmethod
    def _sweep_timer(key: str) -> str:
        return f"dedupe-sweep:{key}"

    @staticmethod
    def _event_row(record: IngestedMessage, contact_id: str) -> EventRow:
        message = record.message
        return EventRow(
            project_id=record.project_id,
            message_id=record.message_id,
            event_type=message.type,
            event=event_name(message),
            contact_id=contact_id,
            user_id=message.user_id or "",
            anonymous_id=message.anonymous_id or "",
            timestamp=effective_timestamp(message, record.received_at),
            original_timestamp=message.timestamp or message.original_timestamp,
            sent_at=message.sent_at,
            received_at=record.received_at,
            properties=_json(getattr(message, "properties", {})),
            traits=_json(getattr(message, "traits", {})),
            context=_json(message.context),
            raw=record.raw,
        )


@functools.lru_cache(maxsize=4096)
def _sweep_record(project_id: str, contact_id: str) -> bytes:
    """A contact's ``DedupeSweep`` record: offered with every message (and mostly not kept, the timer being
    armed already), always the same bytes for the contact -- encoded once for the contacts seen lately."""
    return dumps(DedupeSweep(project_id=project_id, id=contact_id))


def change_rows(
    project_id: str, contact_id: str, changes: list[FieldChange], at: datetime, source: str, cause: str
) -> Iterator[ContactChangeRow]:
    """The ``contact_changes`` rows of ``changes``; ids derived from the cause, so a replay
    writes the same rows."""
    key = contact_key(project_id, contact_id)
    for change in changes:
        yield ContactChangeRow(
            project_id=project_id,
            contact_id=contact_id,
            change_id=_uuid5_url(f"{key}|{cause}|{change.path}"),
            changed_at=at,
            source=source,
            path=change.path,
            old_value=_json(change.old),
            new_value=_json(change.new),
        )


def _emit_changes(ctx: Context, rows: Iterable[ContactChangeRow]) -> None:
    for row in rows:
        ctx.emit(topics.ANALYTICS, contact_key(row.project_id, row.contact_id), dumps(row))


_URL_NAMESPACE = uuid.NAMESPACE_URL.bytes


def _uuid5_url(name: str) -> str:
    """``str(uuid.uuid5(uuid.NAMESPACE_URL, name))``, without building a UUID object (one per changed
    attribute of every message: the UUID class costs several times the hash)."""
    digest = bytearray(hashlib.sha1(_URL_NAMESPACE + name.encode()).digest()[:16])
    digest[6] = (digest[6] & 0x0F) | 0x50  # version 5
    digest[8] = (digest[8] & 0x3F) | 0x80  # RFC 4122 variant
    h = digest.hex()
    return f"{h[:8]}-{h[8:12]}-{h[12:16]}-{h[16:20]}-{h[20:]}"


def _json(value: Any) -> str:
    return orjson.dumps(value, default=str).decode()
