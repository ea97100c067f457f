"""Journeys inside the contact processor: triggers, runs, timers and effects.

A run belongs to one contact, so it lives in that contact's partition next to its state:
- ``journey_runs``: ``<contact key>\\0<run id>`` -> RunState (waiting runs; an exited run is
  deleted, its history is in ``journey_steps``);
- ``journey_run_ids``: ``<contact key>`` -> the ids of the contact's stored runs, in key order
  (every event shows the contact's runs: one read, not a scan; written when a run is stored or
  deleted, and once for a contact not indexed yet, listed by a scan);
- ``journey_entries``: ``<contact key>\\0<journey id>`` -> EntranceHistory (entrance rules);
- ``journey_counters``: balancer counters (``balancer_key``) -> count.

Inputs: a track event (``EventSeen`` for every waiting run, then event triggers), the contact's
segment transitions (``SegmentExited``, segment triggers), ``JourneyEntry`` records (API, link,
schedule) and ``JourneyWake`` timers. Effects become records: ``SendCommand`` on ``sends``
(and a ``queued`` row in ``messages``), a transition on ``journey-advance`` (and a
``journey_steps`` row), events and entries back on ``events``, attribute updates through the
contact reducer. Every effect carries a deterministic id, so a replayed batch repeats none.

The hot path: an event looks up the journeys its name triggers in the registry's per-project
index (not every journey), the tables are typed (values decoded once per batch, run state copied
on write by the machine) and nothing is validated per record: definitions were validated when
they were written, records and table values are msgspec Structs Spotzee wrote itself.
"""

from __future__ import annotations

import bisect
import logging
import threading
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any, Literal, NamedTuple

import msgspec
import orjson

from spotzee.domain import journeys as machine
from spotzee.domain.segments import compile, evaluate
from spotzee.domain.segments.engine import CompiledRule, matches
from spotzee.domain.segments.facts import EventFact, MembershipContext
from spotzee.domain.segments.membership import ContactSegments
from spotzee.domain.templates import contact_variables, event_variables, render_string
from spotzee.errors import SpotzeeError
from spotzee.schemas.analytics_models import JourneyStepRow
from spotzee.schemas.contact_models import ContactState
from spotzee.schemas.journey_models import (
    EventTrigger,
    JourneyDefinition,
    JourneyStatus,
    ScheduledTrigger,
    SegmentTrigger,
)
from spotzee.schemas.messages import JourneyAdvance, SendCommand, message_row, track_record
from spotzee.schemas.records import JourneyEntry, JourneyWake
from spotzee.schemas.rules import AllRule, AnyRule, EventRule, NoneRule, RuleNode
from spotzee.schemas.segment_models import HistoryFact
from spotzee.schemas.structs import Struct, convert, encode
from spotzee.streams import topics
from spotzee.streams.interface import Context
from spotzee.streams.quarantine import decode
from spotzee.streams.segment_processor import MEMBERSHIPS_TABLE
from spotzee.tables.keyspace import contact_key, journey_counter_prefix, sub_key, sub_prefix
from spotzee.tables.table_specs import TableSpec, TypedTable, typed

log = logging.getLogger(__name__)

JOURNEY_RUNS = "journey_runs"
JOURNEY_ENTRIES = "journey_entries"
JOURNEY_COUNTERS = "journey_counters"
JOURNEY_RUN_IDS = "journey_run_ids"
TABLES = (JOURNEY_RUNS, JOURNEY_ENTRIES, JOURNEY_COUNTERS, JOURNEY_RUN_IDS)
# Read again and again for the same contact: the run index (every event), entrance histories
# (every trigger) and the waiting runs themselves (every event of a contact with one).
CACHED_TABLES = (JOURNEY_RUN_IDS, JOURNEY_ENTRIES, JOURNEY_RUNS)


class ContactRuns(Struct, kw_only=True, gc=False):
    """The ids of a contact's stored runs, sorted (the order of their keys in ``journey_runs``); plain data,
    untracked by the cyclic collector (``gc=False``) like the runs."""

    run_ids: list[str] = msgspec.field(default_factory=list)


RUNS = TableSpec(JOURNEY_RUNS, machine.RunState)
RUN_IDS = TableSpec(JOURNEY_RUN_IDS, ContactRuns)
ENTRIES = TableSpec(JOURNEY_ENTRIES, machine.EntranceHistory)
COUNTERS = TableSpec(JOURNEY_COUNTERS, int)  # the count as JSON: b"3", the bytes it always had
SEP = "\x00"
PAUSED_RECHECK = timedelta(minutes=1)  # how often a paused journey's due timers look again

UpdateContact = Callable[[Context, ContactState, dict[str, Any], str], ContactState]


@dataclass(frozen=True)
class _Live:
    """One project's live journeys, in the registry's order, and by what triggers them."""

    journeys: tuple[JourneyDefinition, ...] = ()
    by_event: dict[str, tuple[JourneyDefinition, ...]] = field(default_factory=dict)
    by_segment: dict[str, tuple[JourneyDefinition, ...]] = field(default_factory=dict)


_NO_LIVE = _Live()


class JourneyRegistry:
    """The journeys a process knows (latest definition of each), fed like the segment registry.

    Readers see an index of the live journeys per project, rebuilt when a definition changes (rare)
    and swapped in whole: an event looks up the journeys its name triggers, not every journey."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._journeys: dict[str, JourneyDefinition] = {}
        self._live: dict[str, _Live] = {}
        self._projects: frozenset[str] = frozenset()  # projects with a journey of any status

    def load(self, items: Iterator[tuple[str, bytes]]) -> None:
        for key, raw in items:
            self.on_definition(key, raw)

    def on_definition(self, key: str, value: bytes | None) -> None:
        if value is None or not key.startswith("journey/"):
            return
        journey = decode(key, value, JourneyDefinition.model_validate_json)  # unreadable: quarantined, skipped
        if isinstance(journey, JourneyDefinition):
            self.apply(journey)

    def apply(self, journey: JourneyDefinition) -> None:
        with self._lock:
            known = self._journeys.get(journey.id)
            if known is None or (known.version, known.updated_at) <= (journey.version, journey.updated_at):
                self._journeys[journey.id] = journey
                self._live = _index(self._journeys.values())
                self._projects = frozenset(j.project_id for j in self._journeys.values())

    def get(self, journey_id: str) -> JourneyDefinition | None:
        return self._journeys.get(journey_id)

    def all(self) -> list[JourneyDefinition]:
        with self._lock:
            return list(self._journeys.values())

    def has_journeys(self, project_id: str) -> bool:
        """Whether the project has any journey (live or not). A project without one has no runs that
        could react to anything: a run whose journey this registry does not know waits, untouched."""
        return project_id in self._projects

    def live(self, project_id: str) -> list[JourneyDefinition]:
        return list(self._live.get(project_id, _NO_LIVE).journeys)

    def triggered_by_event(self, project_id: str, name: str) -> tuple[JourneyDefinition, ...]:
        """The live journeys of the project whose trigger is the event ``name`` (filters not applied)."""
        return self._live.get(project_id, _NO_LIVE).by_event.get(name, ())

    def triggered_by_segment(self, project_id: str, segment_id: str) -> tuple[JourneyDefinition, ...]:
        """The live journeys of the project triggered by a change of ``segment_id``."""
        return self._live.get(project_id, _NO_LIVE).by_segment.get(segment_id, ())


def _index(journeys: Iterator[JourneyDefinition] | Any) -> dict[str, _Live]:
    grouped: dict[str, list[JourneyDefinition]] = {}
    for journey in journeys:
        if journey.status == JourneyStatus.live:
            grouped.setdefault(journey.project_id, []).append(journey)
    index: dict[str, _Live] = {}
    for project_id, live in grouped.items():
        by_event: dict[str, list[JourneyDefinition]] = {}
        by_segment: dict[str, list[JourneyDefinition]] = {}
        for journey in live:
            trigger = journey.trigger
            if isinstance(trigger, EventTrigger):
                by_event.setdefault(trigger.event, []).append(journey)
            elif isinstance(trigger, SegmentTrigger):
                by_segment.setdefault(trigger.segment_id, []).append(journey)
        index[project_id] = _Live(
            tuple(live),
            {name: tuple(found) for name, found in by_event.items()},
            {segment_id: tuple(found) for segment_id, found in by_segment.items()},
        )
    return index


@dataclass(frozen=True)
class SegmentTransition:
    segment_id: str
    entered: bool
    change_id: str


class _Counters(Mapping[str, int]):
    """One journey's balancer counters, read from the partition's table on demand."""

    def __init__(self, table: TypedTable[int], prefix: str) -> None:
        self.table = table
        self.prefix = prefix

    def __getitem__(self, key: str) -> int:
        count = self.table.get(self.prefix + key)
        if count is None:
            raise KeyError(key)
        return count

    def __iter__(self) -> Iterator[str]:
        return (key[len(self.prefix) :] for key, _ in self.table.scan_prefix(self.prefix))

    def __len__(self) -> int:
        return sum(1 for _ in self)


class _ContactVariables(Mapping[str, Any]):
    """``contact.*`` for a transition, built on first use: most steps never read the contact."""

    __slots__ = ("_contact", "_values")

    def __init__(self, contact: ContactState) -> None:
        self._contact = contact
        self._values: dict[str, object] | None = None

    def _built(self) -> dict[str, object]:
        if self._values is None:
            self._values = contact_variables(self._contact)
        return self._values

    def __getitem__(self, key: str) -> Any:
        return self._built()[key]

    def __iter__(self) -> Iterator[str]:
        return iter(self._built())

    def __len__(self) -> int:
        return len(self._built())


class _Tables(NamedTuple):
    """The typed views of one context's tables."""

    runs: TypedTable[machine.RunState]
    run_ids: TypedTable[ContactRuns]
    entries: TypedTable[machine.EntranceHistory]
    counters: TypedTable[int]
    segments: TypedTable[ContactSegments]


class JourneyRunner:
    def __init__(self, registry: JourneyRegistry, update_contact: UpdateContact) -> None:
        self.registry = registry
        self.update_contact = update_contact
        self._compiled: dict[int, tuple[RuleNode, CompiledRule, frozenset[str], frozenset[str]]] = {}
        self._heard: dict[str, tuple[JourneyDefinition, frozenset[str]]] = {}  # journey id -> names its runs hear
        self._last: tuple[Context, _Tables] | None = None

    def _tables(self, ctx: Context) -> _Tables:
        """The typed tables of ``ctx``, made once per context (a batch) rather than per use. The
        pair is replaced whole, and holding the context keeps its identity from being reused."""
        last = self._last
        if last is not None and last[0] is ctx:
            return last[1]
        tables = _Tables(
            typed(ctx, RUNS),
            typed(ctx, RUN_IDS),
            typed(ctx, ENTRIES),
            typed(ctx, COUNTERS),
            typed(ctx, MEMBERSHIPS_TABLE),
        )
        self._last = (ctx, tables)
        return tables

    # -- inputs ---------------------------------------------------------------------------------

    def on_event(self, ctx: Context, contact: ContactState, fact: HistoryFact) -> None:
        """A track event: waiting runs see it first (waits, exits), then triggers may enter."""
        if not self.registry.has_journeys(contact.project_id):
            return  # no journey, so no run to see it and no trigger: the run index is not even read
        runs = self._runs(ctx, _key(contact))
        if runs:
            seen: machine.EventSeen | None = None
            name = fact.name
            # Each run (and each new one) sees the contact as the previous transitions left it.
            for run in runs:
                if self._deaf(run, name):
                    continue  # the transition would ignore the event: not even built
                if seen is None:
                    seen = machine.EventSeen(
                        name=name, properties=fact.properties, message_id=fact.message_id, timestamp=fact.timestamp
                    )
                contact = self._apply(ctx, contact, run.journey_id, run, seen)
        for journey in self.registry.triggered_by_event(contact.project_id, fact.name):
            if machine.event_triggers(journey.trigger, fact.name, fact.properties):
                event = machine.EventData(
                    name=fact.name, properties=fact.properties, message_id=fact.message_id, timestamp=fact.timestamp
                )
                contact = self._enter(ctx, contact, journey, _Trigger(fact.message_id, event, ctx.clock.now()))

    def _deaf(self, run: machine.RunState, name: str) -> bool:
        """Whether an event ``name`` leaves ``run`` as it is, told from its journey's definition alone: a
        run of a live journey, on its version, that neither waits for nor exits on an event of that name
        (``machine.refusal`` would refuse it: "not waiting for an event" / "not the awaited event"). A run
        of a journey not live, or of another version, is left to ``_apply`` (held, archived, migrated)."""
        journey = self.registry.get(run.journey_id)
        if journey is None or journey.status != JourneyStatus.live or journey.version != run.journey_version:
            return False
        known = self._heard.get(journey.id)
        if known is None or known[0] is not journey:  # once per definition
            known = self._heard[journey.id] = (journey, machine.heard_events(journey))
        return name not in known[1]

    def on_segments(self, ctx: Context, contact: ContactState, transitions: list[SegmentTransition]) -> None:
        if not self.registry.has_journeys(contact.project_id):
            return  # see on_event
        for transition in transitions:
            if not transition.entered:
                exited = machine.SegmentExited(segment_id=transition.segment_id)
                for run in self._runs(ctx, _key(contact)):
                    contact = self._apply(ctx, contact, run.journey_id, run, exited)
            change: Literal["entered", "exited"] = "entered" if transition.entered else "exited"
            for journey in self.registry.triggered_by_segment(contact.project_id, transition.segment_id):
                if machine.segment_triggers(journey.trigger, transition.segment_id, change):
                    key = f"segment:{transition.segment_id}:{change}:{transition.change_id}"
                    event = machine.EventData(
                        name=f"segment_{change}", properties={"segment_id": transition.segment_id}
                    )
                    contact = self._enter(ctx, contact, journey, _Trigger(key, event, ctx.clock.now()))

    def on_entry(self, ctx: Context, contact: ContactState, record: JourneyEntry) -> None:
        journey = self.registry.get(record.journey_id)
        if journey is None or journey.status != JourneyStatus.live or journey.project_id != record.project_id:
            log.info("entry %s into journey %s dropped: not live", record.entry_id, record.journey_id)
            return
        event = None
        if record.event is not None:
            event = convert(record.event, machine.EventData)
        elif record.payload is not None:
            event = machine.EventData(name="journey_entry", properties=record.payload)
        if record.occurrence is not None:  # a schedule's: once per occurrence, even after the run exited
            if not isinstance(journey.trigger, ScheduledTrigger):
                log.info("entry %s into journey %s dropped: no longer scheduled", record.entry_id, journey.id)
                return
            key = machine.schedule_key(journey.id, record.occurrence)
            self._enter(ctx, contact, journey, _Trigger(key, event, record.at, record.occurrence))
            return
        self._enter(ctx, contact, journey, _Trigger(f"entry:{record.entry_id}", event, record.at))

    def on_wake(self, ctx: Context, contact: ContactState | None, record: JourneyWake) -> None:
        if contact is None:
            return
        run = self._tables(ctx).runs.get(sub_key(_key(contact), record.run_id))
        if run is None:
            return  # the run ended meanwhile: a stale timer
        self._apply(ctx, contact, run.journey_id, run, machine.Wake(step_id=record.step_id, visit=record.visit))

    def on_leave(self, ctx: Context, contact: ContactState, reason: str) -> None:
        """The contact is erased or merged away: its runs end and its journey state goes."""
        owner = _key(contact)
        for run in self._runs(ctx, owner):
            contact = self._apply(ctx, contact, run.journey_id, run, machine.Exit(reason=reason))
        tables = self._tables(ctx)
        for key, _ in list(tables.entries.scan_prefix(sub_prefix(owner))):
            tables.entries.delete(key)
        tables.run_ids.delete(owner)  # listed again by a scan if a run is left (its journey unknown)

    # -- runs -----------------------------------------------------------------------------------

    def _runs(self, ctx: Context, owner: str) -> list[machine.RunState]:
        """The contact's stored runs, in key order."""
        runs = self._tables(ctx).runs
        found = []
        for run_id in self._run_ids(ctx, owner):
            run = runs.get(sub_key(owner, run_id))
            if run is not None:
                found.append(run)
        return found

    def _run_ids(self, ctx: Context, owner: str) -> list[str]:
        """The ids of the contact's stored runs (sorted), from its index; a contact not indexed yet
        (new, or stored before the index existed) is listed by a scan once and indexed."""
        tables = self._tables(ctx)
        known = tables.run_ids.get(owner)
        if known is not None:
            return known.run_ids
        prefix = sub_prefix(owner)
        run_ids = [key[len(prefix) :] for key, _ in tables.runs.scan_prefix(prefix)]
        tables.run_ids.put(owner, ContactRuns(run_ids=run_ids))
        return run_ids

    def _store_run(self, ctx: Context, owner: str, state: machine.RunState, new: bool) -> None:
        tables = self._tables(ctx)
        tables.runs.put(sub_key(owner, state.run_id), state)
        if new:
            run_ids = list(self._run_ids(ctx, owner))  # a copy: the index's list may be shared
            bisect.insort(run_ids, state.run_id)
            tables.run_ids.put(owner, ContactRuns(run_ids=run_ids))

    def _drop_run(self, ctx: Context, owner: str, run_id: str) -> None:
        tables = self._tables(ctx)
        tables.runs.delete(sub_key(owner, run_id))
        run_ids = self._run_ids(ctx, owner)
        if run_id in run_ids:
            tables.run_ids.put(owner, ContactRuns(run_ids=[rid for rid in run_ids if rid != run_id]))

    def _enter(
        self, ctx: Context, contact: ContactState, journey: JourneyDefinition, trigger: _Trigger
    ) -> ContactState:
        """Start a run if the entrance rules allow; the contact as the run's first transition left it."""
        occurrence = trigger.occurrence
        entries = self._tables(ctx).entries
        owner = _key(contact)
        history_key = sub_key(owner, journey.id)
        history = entries.get(history_key) or machine.EntranceHistory()
        now = ctx.clock.now()
        if occurrence is None and not machine.may_enter(journey, history, now):
            return contact  # refused, as a replay of the trigger would be too: no run id needed
        run_id = machine.run_id_for(journey.id, contact.id, trigger.key)
        if run_id in history.active_run_ids or run_id in self._run_ids(ctx, owner):
            return contact  # a replayed trigger
        if occurrence is not None:
            if machine.repeated_occurrence(history, occurrence):
                return contact  # this occurrence (or a later one) was handled for the contact already
            history = machine.record_occurrence(history, occurrence)
        if not machine.may_enter(journey, history, now):
            if occurrence is not None:  # considered once: a repeat of the occurrence stays refused
                entries.put(history_key, history)
            return contact
        entries.put(history_key, machine.record_entry(history, run_id, now))
        enter = machine.Enter(run_id=run_id, contact_id=contact.id, event=trigger.event, at=trigger.at)
        return self._apply(ctx, contact, journey.id, None, enter)

    def _apply(
        self,
        ctx: Context,
        contact: ContactState,
        journey_id: str,
        run: machine.RunState | None,
        input: machine.JourneyInput,
    ) -> ContactState:
        """One transition of a run; the contact as its effects (``update`` steps) left it."""
        journey = self.registry.get(journey_id)
        if journey is None:
            return contact  # a definition this process doesn't know (yet): the run waits for it
        now = ctx.clock.now()
        live = journey.status == JourneyStatus.live
        owner = _key(contact)
        if run is not None and live:
            refused = machine.refusal(journey, run, input, now)
            if refused is not None:  # what most waiting runs do with an event: nothing, told from the stored run
                _rearm_if_early(ctx, contact, owner, run, input, refused)
                return contact
        if run is not None and not live:
            held = _held(ctx, contact, owner, journey, run, input, now)
            if held is None:
                return contact
            input = held
        env = machine.JourneyEnv(
            evaluate_rule=lambda rule: self._gate(ctx, contact, owner, rule, now),
            render=_render,
            contact=_ContactVariables(contact),
            timezone=contact.timezone,
            default_timezone=journey.timezone or "UTC",
            balancer_counts=_Counters(self._tables(ctx).counters, _counter_prefix(journey)),
        )
        outcome = machine.transition(journey, run, input, now, env)
        if outcome.ignored is not None or outcome.state is None:
            if run is not None and outcome.ignored is not None:
                _rearm_if_early(ctx, contact, owner, run, input, outcome.ignored)
            return contact
        state = outcome.state
        self._keep(ctx, contact, owner, journey.id, run, outcome, now)
        carrying = _Carrying(ctx, journey, state, now, owner)
        # Most effects are history lines (2-3 per step walked): written here, as ``_record_step`` does, with
        # what every line of the transition shares read once (an update step changes the contact's state,
        # never its project or id).
        pid, cid, jid, version, run_id = contact.project_id, contact.id, journey.id, state.journey_version, state.run_id
        emit = ctx.emit
        for seq, effect in enumerate(outcome.effects):
            if type(effect) is machine.StepRecorded:
                step_id, visit, kind, at, detail = effect.step_id, effect.visit, effect.kind, effect.at, effect.detail
                advance = JourneyAdvance(
                    project_id=pid,
                    contact_id=cid,
                    journey_id=jid,
                    journey_version=version,
                    run_id=run_id,
                    step_id=step_id,
                    visit=visit,
                    kind=kind,
                    at=at,
                    detail=detail,
                )
                emit(topics.JOURNEY_ADVANCE, owner, encode(advance))
                row = JourneyStepRow(
                    project_id=pid,
                    journey_id=jid,
                    journey_version=version,
                    run_id=run_id,
                    contact_id=cid,
                    step_id=step_id,
                    visit=visit,
                    kind=kind,
                    at=at,
                    seq=seq,
                    detail=orjson.dumps(detail, default=str).decode(),
                )
                emit(topics.ANALYTICS, owner, encode(row))
            else:
                contact = self._carry_out(carrying, contact, effect, seq)
        return contact

    def _keep(  # noqa: PLR0913 -- the transition as ``_apply`` made it
        self,
        ctx: Context,
        contact: ContactState,
        owner: str,
        journey_id: str,
        run: machine.RunState | None,
        outcome: machine.Outcome,
        now: datetime,
    ) -> None:
        """The run as the transition left it: stored (or dropped when it exited), its timer armed or
        cancelled."""
        state = outcome.state
        assert state is not None
        if state.status == "exited":
            if run is not None:  # a run that ends in its first transition was never stored
                self._drop_run(ctx, owner, state.run_id)
            self._record_exit(ctx, owner, journey_id, state.run_id, now)
        else:
            self._store_run(ctx, owner, state, new=run is None)
        wake = outcome.timer
        if wake is not None and outcome.wake_at is not None:
            _arm(ctx, contact, owner, state.run_id, wake, outcome.wake_at)
        elif run is not None and run.wake_at is not None:
            ctx.cancel(_timer_id(owner, state.run_id))

    def _record_exit(self, ctx: Context, owner: str, journey_id: str, run_id: str, now: datetime) -> None:
        entries = self._tables(ctx).entries
        history_key = sub_key(owner, journey_id)
        history = entries.get(history_key)
        if history is not None:
            entries.put(history_key, machine.record_exit(history, run_id, now))

    # -- effects --------------------------------------------------------------------------------

    def _carry_out(self, carrying: _Carrying, contact: ContactState, effect: machine.Effect, seq: int) -> ContactState:
        """An effect other than a history line (``_apply`` records those)."""
        ctx, journey, run, now, key = carrying
        pid = contact.project_id
        if isinstance(effect, machine.SendMessage):
            command = SendCommand(
                project_id=pid,
                contact_id=contact.id,
                send_id=effect.send_id,
                channel=effect.channel,
                template_id=effect.template_id,
                journey_id=journey.id,
                run_id=run.run_id,
                step_id=effect.step_id,
                variables=effect.variables,
                queued_at=now,
            )
            ctx.emit(topics.SENDS, key, encode(command))
            ctx.emit(topics.ANALYTICS, key, encode(message_row(command, "queued", now)))
        elif isinstance(effect, machine.UpdateContact):
            traits: dict[str, Any] = dict(effect.set)
            traits.update({path: None for path in effect.unset})
            return self.update_contact(ctx, contact, traits, f"journey:{run.run_id}")
        elif isinstance(effect, machine.EmitEvent):
            ingested = track_record(
                project_id=pid,
                message_id=effect.message_id,
                user_id=contact.user_id or contact.id,
                event=effect.name,
                properties=effect.properties,
                received_at=now,
                forwarded_to=contact.id,
            )
            ctx.emit(topics.EVENTS, key, encode(ingested))
        elif isinstance(effect, machine.EnterJourney):
            entry = JourneyEntry(
                project_id=pid,
                id=contact.id,
                journey_id=effect.journey_id,
                entry_id=effect.entry_id,
                event=effect.event.as_variables() if effect.event is not None else None,
                create_contact=False,
                at=effect.at,
            )
            if effect.at > now:
                ctx.schedule(f"journey-link:{key}:{effect.entry_id}", effect.at, topics.EVENTS, key, encode(entry))
            else:
                ctx.emit(topics.EVENTS, key, encode(entry))
        elif isinstance(effect, machine.BalancerTaken):
            counters = self._tables(ctx).counters
            counter = _counter_prefix(journey) + effect.counter_key
            counters.put(counter, (counters.get(counter) or 0) + 1)
        elif isinstance(effect, machine.VariantAssigned):
            visit = run.visits.get(effect.step_id, run.visit)
            self._record_step(
                carrying, contact, effect.step_id, visit, "variant", now, {"variant": effect.variant}, seq
            )
        return contact

    @staticmethod
    def _record_step(  # noqa: PLR0913 -- one history line: its position, kind, time and detail
        carrying: _Carrying,
        contact: ContactState,
        step_id: str,
        visit: int,
        kind: str,
        at: datetime,
        detail: dict[str, Any],
        seq: int,
    ) -> None:
        """A transition's line on ``journey-advance`` and its ``journey_steps`` row (a variant's; ``_apply``
        writes the lines of ``StepRecorded`` effects itself, the same records)."""
        ctx, journey, run, _, key = carrying
        advance = JourneyAdvance(
            project_id=contact.project_id,
            contact_id=contact.id,
            journey_id=journey.id,
            journey_version=run.journey_version,
            run_id=run.run_id,
            step_id=step_id,
            visit=visit,
            kind=kind,
            at=at,
            detail=detail,
        )
        ctx.emit(topics.JOURNEY_ADVANCE, key, encode(advance))
        row = JourneyStepRow(
            project_id=contact.project_id,
            journey_id=journey.id,
            journey_version=run.journey_version,
            run_id=run.run_id,
            contact_id=contact.id,
            step_id=step_id,
            visit=visit,
            kind=kind,
            at=at,
            seq=seq,
            detail=orjson.dumps(detail, default=str).decode(),
        )
        ctx.emit(topics.ANALYTICS, key, encode(row))

    # -- gate rules ---------------------------------------------------------------------------

    def _gate(self, ctx: Context, contact: ContactState, owner: str, rule: RuleNode, now: datetime) -> bool:
        """A gate's rule for this contact now. Event conditions read the segment trackers when a
        segment keeps the same condition (complete for this contact); otherwise the contact's
        recent events (bounded: ``SPOTZEE_RECENT_EVENTS_PER_CONTACT``)."""
        known = self._compiled.get(id(rule))
        if known is None or known[0] is not rule:  # compiled once per definition's rule
            compiled_rule = compile(rule)
            known = self._compiled[id(rule)] = (
                rule,
                compiled_rule,
                frozenset(compiled_rule.trackers),
                frozenset(_event_names(rule)),
            )
        _, compiled, trackers, names = known
        cs = self._tables(ctx).segments.get(owner) or ContactSegments()
        # Membership is looked up by id: the stored list and dict answer ``in`` as sets of them would.
        context = MembershipContext(lists=cs.lists, segments=cs.members)
        if not trackers or trackers.issubset(cs.complete):
            return bool(matches(compiled, cs.state, contact, now, context))
        # Only events the rule names can count (``oracle.in_scope`` compares the name first).
        facts = [
            EventFact(name=e.event, timestamp=e.timestamp, properties=e.properties)
            for e in contact.recent_events
            if e.event in names
        ]
        return evaluate(rule, contact, facts, now, context)


def _event_names(rule: RuleNode) -> Iterator[str]:
    """The event names a rule's event conditions count (the only events ``evaluate`` reads)."""
    if isinstance(rule, EventRule):
        yield rule.name
    elif isinstance(rule, AllRule | AnyRule | NoneRule):
        for child in rule.rules:
            yield from _event_names(child)


def _render(template: str, variables: Mapping[str, Any]) -> str:
    if "{" not in template:  # no Liquid markup: the text is its own rendering
        return template
    scope = dict(variables)
    scope["event"] = event_variables(variables.get("event")) or {}  # as templates see it
    try:
        return render_string(template, scope)
    except SpotzeeError as exc:  # an update/event value that can't render stays as written
        log.warning("journey value not rendered: %s", exc)
        return template


class _Trigger(NamedTuple):
    """What enters a contact into a journey: the key its run id is made of, the run's ``event``,
    when, and the occurrence when a schedule fired it (entered once per occurrence)."""

    key: str
    event: machine.EventData | None
    at: datetime
    occurrence: datetime | None = None


class _Carrying(NamedTuple):
    """A run's transition whose effects are being carried out, when it was made, the contact's key."""

    ctx: Context
    journey: JourneyDefinition
    run: machine.RunState
    now: datetime
    key: str


def _held(  # noqa: PLR0913 -- the run, where and when, as ``_apply`` has them
    ctx: Context,
    contact: ContactState,
    owner: str,
    journey: JourneyDefinition,
    run: machine.RunState,
    input: machine.JourneyInput,
    now: datetime,
) -> machine.JourneyInput | None:
    """What a run of a journey that is not live gets instead of ``input``; None: nothing (it holds)."""
    if journey.status == JourneyStatus.archived:
        return machine.Exit(reason="journey_archived")  # archiving ends the runs in flight
    if isinstance(input, machine.Exit):
        return input
    # Paused (or back to draft): runs hold. A due timer is re-armed; events pass unseen.
    if isinstance(input, machine.Wake) and run.wake_at is not None:
        _arm(ctx, contact, owner, run.run_id, input, now + PAUSED_RECHECK)
    return None


def _rearm_if_early(
    ctx: Context,
    contact: ContactState,
    owner: str,
    run: machine.RunState,
    input: machine.JourneyInput,
    ignored: str,
) -> None:
    """A run's own timer that came before its time (armed by a worker whose clock runs ahead of this
    one's) comes back at the run's ``wake_at``: ignored and not re-armed, the run would wait forever."""
    if ignored == machine.TIMER_EARLY and isinstance(input, machine.Wake) and run.wake_at is not None:
        _arm(ctx, contact, owner, run.run_id, input, run.wake_at)


def _timer_id(owner: str, run_id: str) -> str:
    return f"journey:{sub_key(owner, run_id)}"  # one timer per run: arming again replaces it


def _arm(ctx: Context, contact: ContactState, owner: str, run_id: str, wake: machine.Wake, at: datetime) -> None:
    """Deliver ``wake`` to the run at ``at`` (a ``JourneyWake`` through the events topic)."""
    record = JourneyWake(
        project_id=contact.project_id, id=contact.id, run_id=run_id, step_id=wake.step_id, visit=wake.visit
    )
    ctx.schedule(_timer_id(owner, run_id), at, topics.EVENTS, owner, encode(record))


def _counter_prefix(journey: JourneyDefinition) -> str:
    return journey_counter_prefix(journey.project_id, journey.id)


def _key(contact: ContactState) -> str:
    return contact_key(contact.project_id, contact.id)
