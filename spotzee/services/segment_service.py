"""Segments as the API sees them: definitions, versions, backfill jobs, members, previews.

A definition change (create, edit, delete) is written to the definitions store, then built
(docs/segments.md, "Backfill"):

1. a ``SegmentBarrier`` carrying the definition goes to every partition; once each partition has
   processed it, its processor evaluates the new version for every new event (live events of
   contacts not yet backfilled are buffered per contact);
2. wait until ClickHouse holds every analytics row emitted before the barriers, so the history
   query below misses no event the live path didn't see;
3. one query computes the rule's tracker seeds per contact (``analytics/segment_seeds.py``), for
   contacts whose history matches only; each of them gets a ``SegmentRefresh`` with its seeds;
4. the contacts that refused their seed (it may count a live fact they buffered) or wait after a
   merge get their past events as facts, deduplicated there by messageId;
5. a sweep per partition: every contact without a seed starts from the empty trackers (no
   record, no write of its own); members, waiting contacts and -- for a rule that can hold
   without history -- every contact are evaluated;
6. when every record is processed the version is ``ready``. ``progress {total, done}``: seeded
   contacts + fallback contacts + partitions, and how many of them are processed.

Every step is idempotent: a job interrupted by a restart runs again from step 1.
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import contextlib
import logging
import re
import secrets
import time
from collections import defaultdict
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

import msgspec
import orjson
from pydantic import TypeAdapter, ValidationError
from starlette.concurrency import run_in_threadpool

from spotzee.analytics.clickhouse import ClickHouse
from spotzee.analytics.segment_seeds import SeedQuery
from spotzee.domain.segments import compile, evaluate, find_cycle, segment_references
from spotzee.domain.segments.facts import EventFact, MembershipContext
from spotzee.domain.segments.membership import ContactSegments
from spotzee.errors import Conflict, InvalidInput, NotFound, Overloaded, SpotzeeError
from spotzee.runtime.runtime_protocol import Position, Runtime
from spotzee.schemas.common import as_utc
from spotzee.schemas.contact_models import ContactState
from spotzee.schemas.limits import QuarantinedDefinition
from spotzee.schemas.rules import ListRule, RuleNode, SegmentCreate
from spotzee.schemas.segment_models import (
    BuildProgress,
    HistoryFact,
    ListDefinition,
    Member,
    MemberPublic,
    MembersPage,
    SegmentBarrier,
    SegmentDefinition,
    SegmentPreview,
    SegmentRefresh,
    SegmentStatus,
)
from spotzee.schemas.structs import encode, replace
from spotzee.schemas.tenancy_models import ApiKey
from spotzee.services.catalogue import quarantined_conflict
from spotzee.services.tenancy_service import Tenancy
from spotzee.settings import Settings
from spotzee.streams.contact_processor import CONTACTS
from spotzee.streams.interface import Clock
from spotzee.streams.quarantine import Unreadable, decode
from spotzee.streams.record_codec import dumps, loads
from spotzee.streams.segment_processor import (
    MEMBERSHIPS,
    SEGMENT_MEMBERS,
    SEGMENT_WAITING,
    SegmentRegistry,
    member_prefix,
)

log = logging.getLogger(__name__)

_definition = TypeAdapter[SegmentDefinition | ListDefinition](SegmentDefinition | ListDefinition)
REFRESH_BATCH = 2000  # records per append (one in flight while the next are built)
_CURSOR = re.compile(r"[A-Za-z0-9_-]+")
CONTACTS_PER_QUERY = 2000


def encode_cursor(contact_id: str) -> str:
    return base64.urlsafe_b64encode(contact_id.encode()).decode().rstrip("=")


def decode_cursor(cursor: str) -> str:
    try:
        if not _CURSOR.fullmatch(cursor):
            raise binascii.Error("not URL-safe base64")
        return base64.urlsafe_b64decode(cursor + "=" * (-len(cursor) % 4)).decode()
    except (binascii.Error, UnicodeDecodeError) as exc:
        raise InvalidInput(
            "cursor: not a cursor this API returned", details=[{"path": "cursor", "reason": "invalid"}]
        ) from exc


def members_page(runtime: Runtime, table: str, prefix: str, cursor: str | None, limit: int) -> MembersPage:
    """One page of a members table (segment or list), in contact id order, after ``cursor``."""
    after = prefix + decode_cursor(cursor) if cursor else None
    items: list[MemberPublic] = []
    for key, raw in runtime.scan(table, prefix, after):
        member = loads(Member, raw)
        items.append(MemberPublic(id=key[len(prefix) :], since=member.since, version=member.version))
        if len(items) > limit:
            break
    more = len(items) > limit
    items = items[:limit]
    return MembersPage(items=items, next_cursor=encode_cursor(items[-1].id) if more and items else None)


def list_references(rule: RuleNode) -> set[str]:
    if isinstance(rule, ListRule):
        return {rule.list_id}
    children = getattr(rule, "rules", None)
    if children is None:
        return set()
    return set().union(*(list_references(child) for child in children))


def history_facts(
    clickhouse: ClickHouse, project_id: str, names: list[str], contacts: list[str]
) -> dict[str, list[HistoryFact]]:
    """Past track events of ``contacts`` with one of ``names``, from ClickHouse (merges resolved;
    of the rows of one messageId, the latest)."""
    _, rows = clickhouse.query(
        "SELECT contact_id, message_id, event, timestamp, properties FROM events_resolved "
        "WHERE project_id = {p:String} AND event_type = 'track' AND event IN {names:Array(String)} "
        "AND contact_id IN {ids:Array(String)} ORDER BY contact_id, timestamp",
        parameters={"p": project_id, "names": names, "ids": contacts},
    )
    history: dict[str, dict[str, HistoryFact]] = defaultdict(dict)
    for contact_id, message_id, event, timestamp, properties in rows:
        history[contact_id][message_id] = HistoryFact(
            message_id=message_id,
            name=event,
            timestamp=as_utc(timestamp),  # ClickHouse's DateTime64 comes back naive: it is UTC
            properties=orjson.loads(properties or "{}"),
        )
    return {cid: list(facts.values()) for cid, facts in history.items()}


_Record = tuple[str, bytes, bool]  # key, value, the last record of its contact


class _Phases:
    """How long each step of a build took (logged with its outcome)."""

    def __init__(self) -> None:
        self._mark = time.perf_counter()
        self.seconds: dict[str, float] = {}

    def end(self, phase: str) -> None:
        now = time.perf_counter()
        self.seconds[phase] = now - self._mark
        self._mark = now

    def __str__(self) -> str:
        return ", ".join(f"{phase} {seconds:.3f} s" for phase, seconds in self.seconds.items())


@dataclass
class _Sent:
    """A build's appended records: each batch's positions and how many units of ``progress``
    (contacts, partitions) it completes once processed."""

    progress: BuildProgress
    batches: list[tuple[list[Position], int]] = field(default_factory=list)
    counted: int = 0  # the first batches known processed
    done: int = 0  # their units
    inflight: tuple[asyncio.Future[list[Position]], int] | None = None  # an append not yet durable

    def add(self, positions: list[Position], units: int) -> None:
        self.batches.append((positions, units))


class Segments:
    def __init__(
        self,
        settings: Settings,
        runtime: Runtime,
        clickhouse: ClickHouse,
        clock: Clock,
        tenancy: Tenancy,
        registry: SegmentRegistry,
    ) -> None:
        self.settings = settings
        self.runtime = runtime
        self.clickhouse = clickhouse
        self.clock = clock
        self.tenancy = tenancy
        self.registry = registry
        self.progress: dict[str, BuildProgress] = {}
        self._jobs: dict[str, asyncio.Task[None]] = {}

    # -- definitions ------------------------------------------------------------------------------

    def _decoded(self, prefix: str) -> Iterator[SegmentDefinition | ListDefinition | Unreadable]:
        """Every definition under ``prefix``, one by one: an unreadable one is quarantined."""
        for key, raw in self.runtime.scan_definitions(prefix):
            yield decode(key, raw, _definition.validate_json)

    def definitions(self, project_id: str) -> list[SegmentDefinition]:
        return [
            item
            for item in self._decoded("segment/")
            if isinstance(item, SegmentDefinition) and item.project_id == project_id
        ]

    def quarantined(self, project_id: str) -> list[QuarantinedDefinition]:
        """The project's segments whose stored definition can't be read."""
        return [
            QuarantinedDefinition(id=item.id, reason=item.reason)
            for item in self._decoded("segment/")
            if isinstance(item, Unreadable) and item.project_id == project_id
        ]

    def lists(self, project_id: str) -> list[ListDefinition]:
        return [
            item
            for item in self._decoded("list/")
            if isinstance(item, ListDefinition) and item.project_id == project_id and not item.deleted
        ]

    def get(self, project_id: str, segment_id: str) -> SegmentDefinition:
        key = f"segment/{segment_id}"
        raw = next((v for k, v in self.runtime.scan_definitions(key) if k == key), None)
        item = decode(key, raw, _definition.validate_json) if raw is not None else None
        if isinstance(item, Unreadable) and item.project_id == project_id:
            raise quarantined_conflict("segment", item)
        if not isinstance(item, SegmentDefinition) or item.project_id != project_id or item.status == "deleted":
            raise NotFound(f"segment {segment_id} not found")
        progress = self.progress.get(segment_id)
        if progress is not None and item.status == SegmentStatus.building:
            item = item.model_copy(update={"progress": progress})
        return item

    def live(self, project_id: str) -> list[SegmentDefinition]:
        return [d for d in self.definitions(project_id) if d.status != SegmentStatus.deleted]

    def _validate_references(self, project_id: str, segment_id: str, rule: RuleNode) -> None:
        live = {d.id: d.rule for d in self.live(project_id)}
        for ref in sorted(segment_references(rule)):
            if ref not in live and ref != segment_id:
                raise InvalidInput(
                    f"rule: segment {ref} does not exist in this project",
                    details=[{"path": "rule", "reason": f"unknown segment {ref}"}],
                )
        live[segment_id] = rule
        cycle = find_cycle(live)
        if cycle is not None:
            raise InvalidInput(
                f"rule: segments would reference each other in a cycle: {' -> '.join(cycle)}",
                details=[{"path": "rule", "reason": "cycle: " + " -> ".join(cycle)}],
            )
        lists = {item.id for item in self.lists(project_id)}
        for list_id in sorted(list_references(rule) - lists):
            raise InvalidInput(
                f"rule: list {list_id} does not exist in this project",
                details=[{"path": "rule", "reason": f"unknown list {list_id}"}],
            )

    async def create(self, actor: ApiKey, body: SegmentCreate) -> SegmentDefinition:
        project_id = actor.project
        segment_id = f"seg_{secrets.token_hex(8)}"
        self._validate_references(project_id, segment_id, body.rule)
        now = self.clock.now()
        definition = SegmentDefinition(
            id=segment_id,
            project_id=project_id,
            name=body.name,
            description=body.description,
            rule=body.rule,
            version=1,
            status=SegmentStatus.building,
            created_at=now,
            updated_at=now,
        )
        await self._write(actor, "segment.create", definition, None)
        self._start(definition)
        return definition

    async def update(self, actor: ApiKey, segment_id: str, body: SegmentCreate) -> SegmentDefinition:
        project_id = actor.project
        current = self.get(project_id, segment_id)
        self._validate_references(project_id, segment_id, body.rule)
        definition = current.model_copy(
            update={
                "name": body.name,
                "description": body.description,
                "rule": body.rule,
                "version": current.version + 1,
                "status": SegmentStatus.building,
                "progress": BuildProgress(),
                "updated_at": self.clock.now(),
                "ready_at": None,
            }
        )
        await self._write(actor, "segment.update", definition, current)
        self._start(definition)
        return definition

    async def delete(self, actor: ApiKey, segment_id: str) -> None:
        project_id = actor.project
        current = self.get(project_id, segment_id)
        users = sorted(d.id for d in self.live(project_id) if segment_id in segment_references(d.rule))
        if users:
            raise Conflict(
                f"segment {segment_id} is used by segment(s) {', '.join(users)}: change or delete those first",
                details=[{"path": "id", "reason": f"referenced by {', '.join(users)}"}],
            )
        definition = current.model_copy(
            update={"version": current.version + 1, "status": SegmentStatus.deleted, "updated_at": self.clock.now()}
        )
        await self._write(actor, "segment.delete", definition, current)
        self._start(definition)

    async def _write(
        self, actor: ApiKey, action: str, definition: SegmentDefinition, before: SegmentDefinition | None
    ) -> None:
        await run_in_threadpool(self.tenancy.commit_definition, actor, action, definition, before)
        self.registry.apply(definition)

    # -- building ---------------------------------------------------------------------------------

    def resume(self) -> None:
        """Restart the builds a previous process left unfinished (an unreadable definition is
        quarantined and left alone: it can't stop a start)."""
        for item in self._decoded("segment/"):
            if isinstance(item, SegmentDefinition) and item.status == SegmentStatus.building:
                self.registry.apply(item)
                self._start(item)

    def _start(self, definition: SegmentDefinition) -> None:
        previous = self._jobs.pop(definition.id, None)
        if previous is not None:
            previous.cancel()
        task = asyncio.get_running_loop().create_task(self._build(definition))
        self._jobs[definition.id] = task
        task.add_done_callback(
            lambda t: self._jobs.pop(definition.id, None) if self._jobs.get(definition.id) is t else None
        )

    async def stop(self) -> None:
        for task in list(self._jobs.values()):
            task.cancel()
        for task in list(self._jobs.values()):
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await task
        self._jobs.clear()

    async def _build(self, definition: SegmentDefinition) -> None:
        delay = 1.0
        while True:
            try:
                await self._build_once(definition)
                return
            except asyncio.CancelledError:
                raise
            except Exception as exc:  # the log or ClickHouse may be down: retry, the job is idempotent
                log.warning("segment %s v%d build failed (%s); retrying", definition.id, definition.version, exc)
                await asyncio.sleep(delay)
                delay = min(delay * 2, 30.0)

    async def _build_once(self, definition: SegmentDefinition) -> None:
        timeout = self.settings.segment_backfill_timeout
        phases = _Phases()
        partitions = await self._barrier(definition, timeout)  # steps 1 and 2
        phases.end("barrier")
        progress = BuildProgress(total=0, done=0)
        self.progress[definition.id] = progress
        sent = _Sent(progress)
        if definition.status != SegmentStatus.deleted:
            await self._seed(definition, sent, phases)  # step 3
            await self._wait(sent, timeout)
            phases.end("seeds")
            await self._fall_back(definition, sent)  # step 4
            await self._wait(sent, timeout)
            phases.end("fallback")
        sweep = SegmentRefresh(
            project_id=definition.project_id,
            id=f"__segment__{definition.id}",
            segment_id=definition.id,
            version=definition.version,
            tracker_keys=[],
            sweep=True,
        )
        progress.total += partitions
        sent.add(
            await self.runtime.broadcast(f"{definition.project_id}:{sweep.id}", dumps(sweep)), partitions
        )  # step 5
        await self._wait(sent, timeout)  # step 6: the version is ready once every record is processed
        phases.end("sweep")
        progress.done = progress.total
        current = self.registry.definition(definition.id)
        if current is not None and current.version != definition.version:
            return  # edited meanwhile: the newer version's build takes over
        if definition.status == SegmentStatus.deleted:
            return
        ready = definition.model_copy(
            update={"status": SegmentStatus.ready, "progress": progress, "ready_at": self.clock.now()}
        )
        await run_in_threadpool(self.runtime.put_definitions, [(f"segment/{definition.id}", dumps(ready))], [])
        self.registry.apply(ready)
        log.info(
            "segment %s v%d ready: %d contacts seeded or refreshed one by one, %d partitions swept (%s)",
            definition.id,
            definition.version,
            progress.total - partitions,
            partitions,
            phases,
        )

    async def _wait(self, sent: _Sent, timeout: float) -> None:
        for positions, _ in sent.batches:
            if not await self.runtime.wait_processed(positions, timeout):
                raise SpotzeeError("segment backfill not processed in time")

    async def _barrier(self, definition: SegmentDefinition, timeout: float) -> int:
        """The definition's barrier processed on every partition, and the sink caught up with it;
        returns the number of partitions."""
        barrier = SegmentBarrier.of(definition, f"__segment__{definition.id}")
        positions = await self.runtime.broadcast(f"{definition.project_id}:{barrier.id}", dumps(barrier))
        if not await self.runtime.wait_processed(positions, timeout):
            raise SpotzeeError("segment barrier not processed in time")
        if not await self.runtime.wait_sink(timeout):
            raise SpotzeeError("analytics sink did not catch up in time")
        return len(positions)

    async def _seed(self, definition: SegmentDefinition, sent: _Sent, phases: _Phases) -> None:
        """Step 3: one query for the seeds of the rule's trackers; a refresh for each contact with
        matching history (every other contact starts from the empty trackers at the sweep)."""
        trackers = compile(definition.rule).trackers
        if not trackers:
            return  # attributes, lists, segments only: the sweep evaluates from state
        found = await run_in_threadpool(
            SeedQuery(trackers).run, self.clickhouse, definition.project_id, self.clock.now()
        )
        phases.end("query")
        sent.progress.total += len(found.contacts)
        keys = sorted(trackers)
        records: list[_Record] = []
        for contact_id in sorted(found.contacts):
            seeded = found.contacts[contact_id]
            key = f"{definition.project_id}:{contact_id}"
            *chunks, last = self._refreshes(definition, contact_id, keys, seeded.facts)
            records += [(key, dumps(chunk), False) for chunk in chunks]
            # the seeds go with the last chunk, after the replayed trackers' facts
            seeds = msgspec.Raw(encode(seeded.slots))
            last = replace(last, seeds=seeds, replayed=found.replayed, seeded_at=found.seeded_at)
            records.append((key, dumps(last), True))
            if len(records) >= REFRESH_BATCH:
                await self._flush(records, sent)
        await self._flush(records, sent, every=True)

    async def _flush(self, records: list[_Record], sent: _Sent, *, every: bool = False) -> None:
        """Append the queued records in batches (all of them with ``every``), each counted for the
        contacts whose last record it holds. One append is in flight while the caller builds the
        next records (a contact's records stay in order: an append starts when the last one ended)."""
        while len(records) >= REFRESH_BATCH or (every and records):
            batch = records[:REFRESH_BATCH]
            del records[:REFRESH_BATCH]
            await self._landed(sent)
            units = sum(1 for *_, last in batch if last)
            sent.inflight = (asyncio.ensure_future(self._append([(key, value) for key, value, _ in batch])), units)
        if every:
            await self._landed(sent)

    async def _landed(self, sent: _Sent) -> None:
        """The append in flight, done and counted."""
        if sent.inflight is not None:
            appending, units = sent.inflight
            sent.inflight = None
            sent.add(await appending, units)
            await self._account(sent)

    async def _fall_back(self, definition: SegmentDefinition, sent: _Sent) -> None:
        """Step 4: the contacts still waiting for this segment's history (a seed refused because
        live facts it may count were buffered, a merge) get it as facts, deduplicated there."""
        contacts = await run_in_threadpool(self._waiting_for, definition)
        if not contacts:
            return
        compiled = compile(definition.rule)
        names = sorted({t.event for t in compiled.trackers.values()})
        sent.progress.total += len(contacts)
        await self._refresh_all(definition, contacts, sorted(compiled.trackers), names, sent)

    def _waiting_for(self, definition: SegmentDefinition) -> list[str]:
        """Contacts whose segment state waits for a refresh of ``definition``'s segment."""
        pid = definition.project_id
        found: list[str] = []
        for key, _ in self.runtime.scan(SEGMENT_WAITING, f"{pid}:"):
            raw = self.runtime.read(MEMBERSHIPS, key)
            if raw is not None and definition.id in loads(ContactSegments, raw).seeding:
                found.append(key[len(pid) + 1 :])
        return found

    async def _refresh_all(
        self, definition: SegmentDefinition, contacts: list[str], tracker_keys: list[str], names: list[str], sent: _Sent
    ) -> None:
        """Append each contact's ``SegmentRefresh`` records with its history, group by group."""
        pid = definition.project_id
        records: list[_Record] = []
        for start in range(0, len(contacts), CONTACTS_PER_QUERY):
            group = contacts[start : start + CONTACTS_PER_QUERY]
            history = await run_in_threadpool(history_facts, self.clickhouse, pid, names, group) if names else {}
            for contact_id in group:
                for record in self._refreshes(definition, contact_id, tracker_keys, history.get(contact_id, [])):
                    records.append((f"{pid}:{contact_id}", dumps(record), record.last))
            await self._flush(records, sent)
        await self._flush(records, sent, every=True)

    async def _append(self, records: list[tuple[str, bytes]]) -> list[Position]:
        while True:
            try:
                return await self.runtime.append(records)
            except Overloaded as exc:  # backfill yields to live traffic
                await asyncio.sleep(min(exc.retry_after, 1))

    async def _account(self, sent: _Sent) -> None:
        """Count the contacts (and partitions) whose records are processed (cheap check, no waiting;
        batches in the order they were appended: ``done`` is a lower bound)."""
        while sent.counted < len(sent.batches):
            positions, units = sent.batches[sent.counted]
            if not await self.runtime.wait_processed(positions, 0):
                break
            sent.counted += 1
            sent.done += units
        sent.progress.done = min(sent.done, sent.progress.total)

    def _refreshes(
        self, definition: SegmentDefinition, contact_id: str, tracker_keys: list[str], facts: list[HistoryFact]
    ) -> Iterator[SegmentRefresh]:
        size = self.settings.segment_backfill_chunk
        chunks = [facts[i : i + size] for i in range(0, len(facts), size)] or [[]]
        for i, chunk in enumerate(chunks):
            yield SegmentRefresh(
                project_id=definition.project_id,
                id=contact_id,
                segment_id=definition.id,
                version=definition.version,
                tracker_keys=tracker_keys,
                facts=chunk,
                last=i == len(chunks) - 1,
            )

    def _history(self, project_id: str, names: list[str], contacts: list[str]) -> dict[str, list[HistoryFact]]:
        return history_facts(self.clickhouse, project_id, names, contacts)

    # -- membership reads -------------------------------------------------------------------------

    def members(self, project_id: str, segment_id: str, cursor: str | None, limit: int) -> MembersPage:
        self.get(project_id, segment_id)
        return members_page(self.runtime, SEGMENT_MEMBERS, member_prefix(project_id, segment_id), cursor, limit)

    def count(self, project_id: str, segment_id: str) -> int:
        return sum(1 for _ in self.runtime.scan(SEGMENT_MEMBERS, member_prefix(project_id, segment_id)))

    def of_contact(self, contact: ContactState) -> list[tuple[SegmentDefinition, Any]]:
        raw = self.runtime.read(MEMBERSHIPS, f"{contact.project_id}:{contact.id}")
        if raw is None:
            return []
        cs = loads(ContactSegments, raw)
        found = []
        for segment_id, membership in sorted(cs.members.items()):
            with contextlib.suppress(NotFound, Conflict):  # deleted meanwhile, or quarantined
                found.append((self.get(contact.project_id, segment_id), membership))
        return found

    # -- preview ----------------------------------------------------------------------------------

    async def preview(self, project_id: str, rule: RuleNode, sample: int) -> SegmentPreview:
        """Count and sample for an unsaved rule: a full evaluation of every contact over its
        complete history (ClickHouse), with current list and segment memberships."""
        self._validate_references(project_id, "__preview__", rule)
        return await run_in_threadpool(self._preview, project_id, rule, sample)

    def _preview(self, project_id: str, rule: RuleNode, sample: int) -> SegmentPreview:
        compiled = compile(rule)
        names = sorted({t.event for t in compiled.trackers.values()})
        now = self.clock.now()
        count, evaluated = 0, 0
        picked: list[str] = []
        batch: list[ContactState] = []

        def flush() -> None:
            nonlocal count, evaluated
            history = self._history(project_id, names, [c.id for c in batch]) if names else {}
            for contact in batch:
                facts = [
                    EventFact(name=f.name, timestamp=f.timestamp, properties=f.properties)
                    for f in history.get(contact.id, [])
                ]
                raw = self.runtime.read(MEMBERSHIPS, f"{project_id}:{contact.id}")
                cs = loads(ContactSegments, raw) if raw is not None else ContactSegments()
                context = MembershipContext(lists=frozenset(cs.lists), segments=frozenset(cs.members))
                evaluated += 1
                if evaluate(rule, contact, facts, now, context):
                    count += 1
                    if len(picked) < sample:
                        picked.append(contact.id)
            batch.clear()

        for _, raw in self.runtime.scan(CONTACTS.name, f"{project_id}:"):
            try:
                batch.append(loads(ContactState, raw))
            except ValidationError:
                continue
            if len(batch) >= CONTACTS_PER_QUERY:
                flush()
        if batch:
            flush()
        return SegmentPreview(count=count, contacts_evaluated=evaluated, sample=sorted(picked))
