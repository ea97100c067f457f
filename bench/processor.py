"""In-process cost model: CPU µs per event of the contact processor, split by stage (``make bench-processor``).

``python bench/processor.py [--events 20000] [--contacts 2000] [--batch 1000] [--json]``

What runs: the real ``ContactProcessor`` (``spotzee/streams/contact_processor.py``) inside a real
``EmbeddedRuntime`` (``spotzee/runtime/embedded/``) opened on a temporary data dir, without its threads and
without ClickHouse or delivery. The bench's main thread calls the runtime's own ``ProcessorLoop._pass`` -- the
body of the ``spotzee-processor`` thread's loop -- until the log is drained: per partition it reads a batch of
up to ``--batch`` records from the inbound log, runs each through the processor over a
``tables/overlay.BatchContext`` on the RocksDB store, and commits the batch in one synced ``WriteBatch``
(``commit.Commit``: tables, log offsets, emitted records routed to the outbox, the retained topics or back into
the log, timers); after each pass it fires due timers. Running the loop in the calling thread (instead of
starting the runtime's threads) puts all of the processor's work on one thread, so ``time.thread_time_ns``
measures it and nothing else (the appender, the API and the sink are not running; RocksDB's own background
threads are not counted).

Setup, not measured:
- definitions published as the API does and loaded as a starting runtime does: 20 segments (the 19 standing
  segments of ``bench/segments.py`` and its 20th, "US/CA electronics shoppers 30d") and 5 live journeys (the
  Probe and Flow journeys of ``bench/journeys.py`` triggered by events of the mix, and three more: segment
  entered, wait-for-event with a timeout, event-triggered gate + update) are stored under ``segment/<id>`` /
  ``journey/<id>`` with ``EmbeddedRuntime.put_definitions``, their barriers appended to every partition
  (processed before the warm-up), and the registries loaded with ``registry.load(runtime.scan_definitions(...))``;
- the records: ``IngestedMessage`` records made by the API's own ``build_record`` from Segment-spec items and
  encoded with ``record_codec.dumps``, all before any clock starts. First one ``identify`` per contact
  (``bench/segments.py``'s ``identify_bodies``: email, country, plan, age, subscriptions) and ``--warmup``
  live events: the warm-up pass, processed like the rest and not counted. Then ``--events`` live events
  (``bench/segments.py``'s ``live_bodies``: 90% track with the history's event mix, 10% identify changing a
  trait, over the contacts, skewed towards the lowest ids) are appended to the log with ``append_sync``;
- the clock is the production ``SystemClock``: timers due during the run (the Flow journey's 1 s delay) fire
  and their records are processed, as in production;
- then ``gc.freeze()``, as ``spotzee up`` does once started: the set-up's objects (definitions, the pre-built
  records, which production never holds) are not rescanned by every full collection of the run.

Measured: from the first batch of the live events until the log is empty (records emitted back into the log
and fired timers included), CPU time of the processing thread (``time.thread_time_ns``). Batches alternate:

- **instrumented** batches give the split by stage. Wrappers installed by this script only (monkeypatching
  module globals and class attributes, removed afterwards) around the functions of each stage (``STAGES``
  below, printed with the table) move a stack of stages; the thread's CPU time between two wrapper events goes
  to the stage on top of the stack (``other`` when empty), so nested stages are counted once, in the innermost
  one, and the stages add up exactly to the total;
- **plain** batches run with no wrapper installed and give the uninstrumented total, hence events/s on one core.

A partition's batches alternate between the two modes, and neighbouring partitions start opposite, so each mode
sees every partition (contacts) and every stretch of the run. Each mode's CPU is divided by the records its
batches processed; the time between batches (firing timers, the loop) is instrumented and spread over all
records; figures are then per live event (records / events x per record: re-entered records and timers are
part of the cost of the events that caused them). The wrappers cost (instrumented total - plain total) is shared
out over the stages by their number of wrapped calls, giving the "net of wrappers" column, which adds up to the
plain total; the CPU cost of a wrapped no-op, calibrated before the run, is printed beside it for comparison.
"""

from __future__ import annotations

import argparse
import gc
import hashlib
import inspect
import json
import shutil
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any

import orjson
from bench_common import BenchError, progress
from journeys import flow_journey, probe_journey
from pydantic import BaseModel
from segments import NEW_SEGMENT, Scale, identify_bodies, live_bodies, segment_rules, validated

import spotzee.domain.contacts as contacts_domain
import spotzee.runtime.embedded.processor_loop as loop_module
import spotzee.streams.contact_processor as contact_module
import spotzee.streams.journey_processor as journey_module
import spotzee.streams.segment_processor as segment_module
from spotzee.api.ingest_routes import build_record
from spotzee.runtime.embedded.commit import Commit
from spotzee.runtime.embedded.embedded_runtime import EmbeddedRuntime
from spotzee.runtime.embedded.inbound_log import InboundLog
from spotzee.runtime.embedded.timers import Timers
from spotzee.schemas import structs
from spotzee.schemas.analytics_models import (
    AliasRow,
    ContactChangeRow,
    DeadLetterRow,
    EraseHistory,
    EventRow,
    JourneyStepRow,
    MessageRow,
    SegmentChangeRow,
)
from spotzee.schemas.journey_models import JourneyDefinition, JourneyStatus
from spotzee.schemas.records import JourneyBarrier, record_key
from spotzee.schemas.segment_models import ListDefinition, SegmentBarrier, SegmentDefinition, SegmentStatus
from spotzee.settings import Settings
from spotzee.streams import record_codec, topics
from spotzee.streams.contact_processor import ContactProcessor
from spotzee.streams.interface import SystemClock
from spotzee.streams.journey_processor import JourneyRegistry, JourneyRunner
from spotzee.streams.record_codec import dumps
from spotzee.streams.segment_processor import SegmentMemberships, SegmentRegistry
from spotzee.tables.overlay import BatchContext, OverlayTable
from spotzee.tables.table_specs import TableSpec

PROJECT = "prj_bench"
OTHER = "other"
ROW_CLASSES = (EventRow, ContactChangeRow, AliasRow, DeadLetterRow, SegmentChangeRow, JourneyStepRow, MessageRow)
SINK_ROWS = (*ROW_CLASSES, EraseHistory)

# Stage -> (what it covers, the functions whose calls it is made of: owner, attribute). Innermost wins.
STAGES: dict[str, tuple[str, list[tuple[object, str]]]] = {
    "decode": (
        "bytes -> Structs (msgspec): the record (records.decode_record), every table value read from the store "
        "(TableSpec.decode: ContactState, ContactSegments, runs, entrance histories, AliasState; once per batch, "
        "then the overlay and the state cache hold it decoded), barriered segment definitions "
        "(segment_processor.read_barriered)",
        [
            (contact_module, "decode_record"),
            (TableSpec, "decode"),
            (segment_module, "read_barriered"),
        ],
    ),
    "reduce": (
        "the contact reducer: domain.contacts.apply_message / apply_patch / merge_profiles",
        [
            (contacts_domain, "apply_message"),
            (contacts_domain, "apply_patch"),
            (contacts_domain, "merge_profiles"),
        ],
    ),
    "segments": (
        "SegmentMemberships.sync / after_message / after_change / refresh / wake / list_membership / leave / "
        "after_merge: the 20 rules' evaluation (domain.segments.membership), member rows, transitions, wakes",
        [
            (SegmentMemberships, name)
            for name in (
                "sync",
                "after_message",
                "after_change",
                "refresh",
                "wake",
                "list_membership",
                "leave",
                "after_merge",
            )
        ],
    ),
    "journeys": (
        "JourneyRunner.on_event / on_segments / on_entry / on_wake / on_leave: triggers, entrance rules, the step "
        "machine (domain.journeys), gates, effects (send commands, journey-advance records)",
        [(JourneyRunner, name) for name in ("on_event", "on_segments", "on_entry", "on_wake", "on_leave")],
    ),
    "encode": (
        "Structs -> bytes: table values at commit (TableSpec.encode, once per changed key per batch) and records "
        "to other topics (record_codec.dumps / structs.encode: segment-changes, journey-advance, sends, events), "
        "not analytics rows",
        [
            (TableSpec, "encode"),
            (contact_module, "dumps"),
            (journey_module, "encode"),
            (loop_module, "dumps"),
        ],
    ),
    "commit": (
        "BatchContext.commit_record (the per-record fold), processor_loop.stage_tables, Commit.__init__ / put / "
        "route / write (the synced write batch, its fsync's CPU), Timers.stage / fire_due",
        [
            (BatchContext, "commit_record"),
            (loop_module, "stage_tables"),
            (Commit, "__init__"),
            (Commit, "put"),
            (Commit, "route"),
            (Commit, "write"),
            (Timers, "stage"),
            (Timers, "fire_due"),
        ],
    ),
    "sink rows": (
        "the analytics rows for ClickHouse: ContactProcessor._event_row, contact_processor.change_rows, "
        "SegmentChangeRow(...), JourneyStepRow(...), messages.message_row, and record_codec.dumps of any row",
        [
            (ContactProcessor, "_event_row"),
            (contact_module, "change_rows"),
            (segment_module, "SegmentChangeRow"),
            (journey_module, "JourneyStepRow"),
            (journey_module, "message_row"),
        ],
    ),
    "reads": (
        "RocksDB reads: OverlayTable.get / scan_prefix / get_value / scan_values (table values, through the batch "
        "overlay and the state cache), "
        "InboundLog.read (the batch from the log), BatchContext._timer_exists, Timers._due",
        [
            (OverlayTable, "get"),
            (OverlayTable, "scan_prefix"),
            (OverlayTable, "get_value"),
            (OverlayTable, "scan_values"),
            (InboundLog, "read"),
            (BatchContext, "_timer_exists"),
            (Timers, "_due"),
        ],
    ),
    OTHER: (
        "the rest of the processor and the loop: ContactProcessor.process / _ingest glue (dedupe check and "
        "record, emits, HistoryFact, keys), BatchContext, the log delete and offset put",
        [],
    ),
}
ENCODE_STAGES = ("encode", "sink rows")  # record_codec.dumps goes to one or the other by what it encodes


# -- the stage clock and the wrappers ----------------------------------------------------------------


@dataclass
class StageClock:
    """Exclusive CPU time per stage: whatever runs between two wrapper events goes to the innermost stage."""

    into: dict[str, int] = field(default_factory=dict)  # ns per stage
    calls: dict[str, int] = field(default_factory=dict)  # wrapper entries per stage
    stack: list[str] = field(default_factory=list)
    mark: int = 0

    def start(self, split: Split) -> None:
        self.into, self.calls = split.ns, split.calls
        self.mark = time.thread_time_ns()

    def stop(self) -> None:
        now = time.thread_time_ns()
        self.into[self.stack[-1] if self.stack else OTHER] += now - self.mark
        self.mark = now

    def enter(self, stage: str) -> None:
        now = time.thread_time_ns()
        self.into[self.stack[-1] if self.stack else OTHER] += now - self.mark
        self.stack.append(stage)
        self.calls[stage] += 1
        self.mark = now

    def leave(self) -> None:
        now = time.thread_time_ns()
        self.into[self.stack.pop()] += now - self.mark
        self.mark = now


@dataclass
class Split:
    """CPU ns and wrapper entries per stage."""

    ns: dict[str, int] = field(default_factory=lambda: dict.fromkeys(STAGES, 0))
    calls: dict[str, int] = field(default_factory=lambda: dict.fromkeys(STAGES, 0))


def timed(fn: Callable[..., Any], stage: str, clock: StageClock) -> Callable[..., Any]:
    if inspect.isgeneratorfunction(fn):

        def timed_generator(*args: Any, **kwargs: Any) -> Iterator[Any]:
            clock.enter(stage)
            try:
                gen = fn(*args, **kwargs)
            finally:
                clock.leave()
            while True:  # only the generator's own steps are timed, not what its caller does with them
                clock.enter(stage)
                try:
                    item = next(gen)
                except StopIteration:
                    return
                finally:
                    clock.leave()
                yield item

        return timed_generator

    def timed_call(*args: Any, **kwargs: Any) -> Any:
        clock.enter(stage)
        try:
            return fn(*args, **kwargs)
        finally:
            clock.leave()

    return timed_call


def timed_dumps(fn: Callable[[BaseModel], bytes], clock: StageClock) -> Callable[[BaseModel], bytes]:
    def dumps_by_kind(model: BaseModel) -> bytes:
        clock.enter("sink rows" if isinstance(model, SINK_ROWS) else "encode")
        try:
            return fn(model)
        finally:
            clock.leave()

    return dumps_by_kind


class Instruments:
    """The wrappers of ``STAGES``, installed for instrumented batches and removed for plain ones."""

    def __init__(self, clock: StageClock) -> None:
        self.patches: list[tuple[object, str, object, object]] = []  # owner, attribute, original, wrapper
        for stage, (_, targets) in STAGES.items():
            for owner, name in targets:
                if name not in vars(owner):  # the code moved on: say so rather than fail the whole run
                    print(
                        f"bench: {getattr(owner, '__name__', owner)}.{name} not found; not instrumented",
                        file=sys.stderr,
                    )
                    continue
                original = vars(owner)[name]
                self.patches.append((owner, name, original, self._wrap(original, name, stage, clock)))
        self.installed = False

    @staticmethod
    def _wrap(original: object, name: str, stage: str, clock: StageClock) -> object:
        if original in (record_codec.dumps, structs.encode):  # records or rows: the stage depends on which
            return timed_dumps(original, clock)  # type: ignore[arg-type]
        if isinstance(original, staticmethod):
            return staticmethod(timed(original.__func__, stage, clock))
        return timed(original, stage, clock)  # type: ignore[arg-type]

    def install(self) -> None:
        for owner, name, _, wrapper in self.patches:
            setattr(owner, name, wrapper)
        self.installed = True

    def uninstall(self) -> None:
        for owner, name, original, _ in self.patches:
            setattr(owner, name, original)
        self.installed = False


@dataclass
class Tally:
    """What the measured phase accumulated."""

    instrumented: Split = field(default_factory=Split)  # the instrumented batches
    between: Split = field(default_factory=Split)  # outside batches (firing timers, the loop)
    instrumented_records: int = 0
    plain_ns: int = 0
    plain_records: int = 0
    batches: int = 0


class Driver:
    """Runs the runtime's processor loop in this thread, batches alternating instrumented / plain."""

    def __init__(self, runtime: EmbeddedRuntime) -> None:
        self.runtime = runtime
        self.loop = runtime.processor_loop
        self.clock = StageClock()
        self.instruments = Instruments(self.clock)
        self.tally = Tally()
        self.partition_batches: dict[int, int] = {}
        self._process_partition = self.loop._process_partition
        self.loop._process_partition = self._batch  # type: ignore[method-assign]

    def drain(self) -> None:
        """Process until the log is empty (what the ``spotzee-processor`` thread does), timed by stage."""
        self.instruments.install()
        self.clock.start(self.tally.between)
        try:
            while self.runtime.processing_lag() > 0:
                self.loop._pass()
        finally:
            self.clock.stop()
            self.instruments.uninstall()

    def _batch(self, partition: int) -> None:
        tally = self.tally
        self.clock.stop()  # the time since the last wrapper event belongs to "between"
        before = self.loop.processed_total
        # Each partition alternates from one batch to its next, and neighbouring partitions start opposite.
        seen = self.partition_batches[partition] = self.partition_batches.get(partition, -1) + 1
        if (seen + partition) % 2 == 0:
            self.clock.start(tally.instrumented)
            self._process_partition(partition)
            self.clock.stop()
            tally.instrumented_records += self.loop.processed_total - before
        else:
            self.instruments.uninstall()
            started = time.thread_time_ns()
            self._process_partition(partition)
            tally.plain_ns += time.thread_time_ns() - started
            tally.plain_records += self.loop.processed_total - before
            self.instruments.install()
        tally.batches += 1
        self.clock.start(tally.between)

    def reset(self) -> None:
        self.tally = Tally()


# -- definitions ----------------------------------------------------------------------------------------


def segment_id(name: str) -> str:
    return "seg_" + hashlib.sha1(name.encode()).hexdigest()[:16]


def segment_definitions(list_id: str, now: datetime) -> list[SegmentDefinition]:
    """``bench/segments.py``'s 19 standing segments and its 20th, ready."""
    rules = [*segment_rules(list_id, segment_id("Repeat buyers 30d")), NEW_SEGMENT]
    return [
        SegmentDefinition(
            id=segment_id(name),
            project_id=PROJECT,
            name=name,
            rule=validated(rule),
            version=1,
            status=SegmentStatus.ready,
            created_at=now,
            updated_at=now,
            ready_at=now,
        )
        for name, rule in rules
    ]


def journey_bodies() -> list[dict[str, Any]]:
    """Five journeys whose triggers the live events fire (bench/journeys.py's two, on events of the mix)."""
    send_then_exit = {
        "mail": {"type": "send", "channel": "email", "template_id": "tpl_welcome", "next": "done"},
        "done": {"type": "exit"},
    }
    return [
        {**probe_journey("tpl_receipt"), "name": "Purchase receipt", "trigger": {"type": "event", "event": "purchase"}},
        {**flow_journey("tpl_flow"), "name": "Product flow", "trigger": {"type": "event", "event": "product_viewed"}},
        {
            "name": "Welcome to a paid plan",
            "trigger": {"type": "segment", "segment_id": segment_id("Paid plans"), "on": "entered"},
            "start": "mail",
            "steps": send_then_exit,
        },
        {
            "name": "Cart abandonment",
            "trigger": {"type": "event", "event": "add_to_cart"},
            "entrance": {"reentry": "after_exit"},
            "start": "wait",
            "steps": {
                "wait": {
                    "type": "wait_for_event",
                    "event": "purchase",
                    "within": {"value": 1, "unit": "day"},
                    "yes": "done",
                    "timeout": "remind",
                },
                "remind": {"type": "send", "channel": "email", "template_id": "tpl_cart", "next": "done"},
                "done": {"type": "exit"},
            },
        },
        {
            "name": "Login nudge",
            "trigger": {"type": "event", "event": "login"},
            "entrance": {"reentry": "after_exit", "cooldown": {"value": 1, "unit": "hour"}},
            "exit_when": [{"type": "event", "event": "purchase"}],
            "start": "check",
            "steps": {
                "check": {
                    "type": "gate",
                    "rule": {"type": "event", "name": "purchase", "within": {"last": 30, "unit": "day"}},
                    "yes": "tag",
                    "no": "nudge",
                },
                "tag": {"type": "update", "set": {"recent_buyer": True}, "next": "done"},
                "nudge": {"type": "send", "channel": "push", "template_id": "tpl_nudge", "next": "done"},
                "done": {"type": "exit"},
            },
        },
    ]


def journey_definitions(now: datetime) -> list[JourneyDefinition]:
    return [
        JourneyDefinition.model_validate(
            {
                **body,
                "id": f"jrn_bench{index}",
                "project_id": PROJECT,
                "version": 1,
                "status": JourneyStatus.live,
                "created_at": now,
                "updated_at": now,
            }
        )
        for index, body in enumerate(journey_bodies())
    ]


def publish(runtime: EmbeddedRuntime, now: datetime) -> tuple[int, int]:
    """Store the definitions and append their barriers (as the services do), then load the registries (as
    ``Services.open`` does on start); returns (segments, live journeys) the processor's registries hold."""
    vip = ListDefinition(id="lst_bench_vip", project_id=PROJECT, name="VIP", created_at=now)
    segments = segment_definitions(vip.id, now)
    journeys = journey_definitions(now)
    items: list[tuple[str, bytes | None]] = [(f"list/{vip.id}", dumps(vip))]
    items += [(f"segment/{s.id}", dumps(s)) for s in segments]
    items += [(f"journey/{j.id}", dumps(j)) for j in journeys]
    runtime.put_definitions(items, [])
    barriers = [
        (
            f"{PROJECT}:__segment__{s.id}",
            dumps(SegmentBarrier.of(s, f"__segment__{s.id}")),
        )
        for s in segments
    ]
    barriers += [(f"{PROJECT}:journey:{j.id}", dumps(JourneyBarrier.of(j))) for j in journeys]
    inbound = runtime.inbound
    with inbound.lock:  # Appender.broadcast's write: each barrier on every partition, one synced write
        commit = Commit(inbound, runtime.outbox)
        for key, value in barriers:
            for partition in range(inbound.partitions):
                commit.append(key, value, partition)
        commit.write()
    processor = runtime.processor
    assert isinstance(processor, ContactProcessor)
    processor.registry.load(runtime.scan_definitions("segment/"))
    processor.journey_registry.load(runtime.scan_definitions("journey/"))
    return len(processor.registry.project(PROJECT).segments), len(processor.journey_registry.live(PROJECT))


# -- records ------------------------------------------------------------------------------------------


def encoded(bodies: list[bytes]) -> list[tuple[str, bytes]]:
    """``POST /v1/batch`` bodies -> the log records the API appends (``build_record``, ``dumps``)."""
    out: list[tuple[str, bytes]] = []
    for body in bodies:
        received_at = SystemClock().now()
        for index, item in enumerate(orjson.loads(body)["batch"]):
            record = build_record(item, path=f"batch[{index}]", project_id=PROJECT, received_at=received_at)
            out.append((record_key(record), dumps(record)))
    return out


def append(runtime: EmbeddedRuntime, records: list[tuple[str, bytes]], chunk: int = 2500) -> None:
    for start in range(0, len(records), chunk):
        runtime.append_sync(records[start : start + chunk])


# -- the run --------------------------------------------------------------------------------------------


@dataclass
class Config:
    events: int
    contacts: int
    batch: int
    warmup: int
    seed: int
    as_json: bool


@dataclass
class Counts:
    """What the measured phase produced, read from the runtime."""

    records: int = 0
    dead_lettered: int = 0
    analytics_rows: int = 0
    topics: dict[str, int] = field(default_factory=dict)


def snapshot(runtime: EmbeddedRuntime) -> Counts:
    retained = (topics.SEGMENT_CHANGES, topics.JOURNEY_ADVANCE, topics.SENDS)
    return Counts(
        runtime.processed_total,
        runtime.dead_lettered_total,
        runtime.outbox.next,
        {t: runtime.outbox.topic_next(t) for t in retained},
    )


def delta(after: Counts, before: Counts) -> Counts:
    return Counts(
        after.records - before.records,
        after.dead_lettered - before.dead_lettered,
        after.analytics_rows - before.analytics_rows,
        {t: n - before.topics[t] for t, n in after.topics.items()},
    )


def open_runtime(config: Config, root: Path) -> EmbeddedRuntime:
    """The embedded runtime as ``runtime/factory.open_runtime`` makes it, minus ClickHouse and delivery."""
    settings = Settings(data_dir=root / "data", process_batch_size=config.batch)
    processor = ContactProcessor(
        dedupe_window=settings.dedupe_window,
        recent_limit=settings.recent_events_per_contact,
        segments=SegmentRegistry(),
        journeys=JourneyRegistry(),
    )
    return EmbeddedRuntime(settings, processor, SystemClock())


@dataclass
class Measured:
    """The measured phase: the tally, what it produced, and its context."""

    tally: Tally
    counts: Counts
    events: int
    definitions: tuple[int, int]  # segments, live journeys in the registries
    wall_s: float
    process_cpu_s: float
    wrapper_ns: float  # calibrated CPU cost of one wrapped call


def calibrate(rounds: int = 100_000) -> float:
    """CPU ns one wrapped call adds (a wrapped no-op minus a plain one), to net the wrappers out per stage."""
    clock = StageClock()
    clock.start(Split())

    def noop() -> None:
        return None

    wrapped = timed(noop, "decode", clock)
    started = time.thread_time_ns()
    for _ in range(rounds):
        wrapped()
    middle = time.thread_time_ns()
    for _ in range(rounds):
        noop()
    return max(0.0, ((middle - started) - (time.thread_time_ns() - middle)) / rounds)


def run(config: Config, root: Path) -> dict[str, Any]:
    wrapper_ns = calibrate()
    runtime = open_runtime(config, root)
    try:
        now = SystemClock().now()
        definitions = publish(runtime, now)
        progress(f"published {definitions[0]} segments and {definitions[1]} live journeys; building records")
        run_id = now.strftime("%H%M%S")
        contacts = encoded(identify_bodies(config.contacts, 2500, config.seed, run_id))
        warm = encoded(live_bodies(Scale(config.contacts, 0, config.warmup), 2500, config.seed + 100, f"w{run_id}"))
        live = encoded(live_bodies(Scale(config.contacts, 0, config.events), 2500, config.seed, run_id))
        driver = Driver(runtime)
        # As ``spotzee up`` does once started: what set-up made (definitions, the pre-built records) is out of
        # the collector's way, so full collections during the run scan only what processing keeps alive.
        gc.collect()
        gc.freeze()
        started = time.perf_counter()
        append(runtime, contacts + warm)
        driver.drain()
        progress(
            f"warm-up: {len(contacts):,} identify + {len(warm):,} live events in {time.perf_counter() - started:.1f} s"
        )
        append(runtime, live)
        driver.reset()
        before = snapshot(runtime)
        wall, cpu = time.perf_counter(), time.process_time()
        driver.drain()
        wall, cpu = time.perf_counter() - wall, time.process_time() - cpu
        counts = delta(snapshot(runtime), before)
        if counts.dead_lettered:
            raise BenchError(f"{counts.dead_lettered} records were dead-lettered: the benchmark is broken")
        progress(f"measured: {len(live):,} live events, {counts.records:,} records in {wall:.1f} s")
        return result(config, Measured(driver.tally, counts, len(live), definitions, wall, cpu, wrapper_ns))
    finally:
        gc.unfreeze()
        runtime.close()


def result(config: Config, m: Measured) -> dict[str, Any]:
    tally, counts = m.tally, m.counts
    if not tally.instrumented_records or not tally.plain_records:
        raise BenchError("too few batches to alternate instrumented and plain ones: raise --events")
    per_event = counts.records / m.events  # records per live event (re-entered records and timers included)

    def per_live_event(inside: float, between: float) -> float:
        """A quantity of the instrumented batches and of the time between batches, per live event."""
        return (inside / tally.instrumented_records + between / counts.records) * per_event

    inst, between = tally.instrumented, tally.between
    stages = {s: per_live_event(inst.ns[s], between.ns[s]) / 1000 for s in STAGES}
    calls = {s: per_live_event(inst.calls[s], between.calls[s]) for s in STAGES}
    plain = (tally.plain_ns / tally.plain_records + sum(between.ns.values()) / counts.records) * per_event / 1000
    # What the wrappers cost, measured (instrumented - plain total), shared out by wrapped calls: the net
    # figures add up to the plain total. The calibrated cost of a wrapped no-op is printed beside it.
    per_call_us = max(0.0, (sum(stages.values()) - plain) / sum(calls.values()))
    net = {s: stages[s] - calls[s] * per_call_us for s in STAGES}
    return {
        "events": m.events,
        "contacts": config.contacts,
        "batch": config.batch,
        "segments": m.definitions[0],
        "live_journeys": m.definitions[1],
        "records_processed": counts.records,
        "batches": tally.batches,
        "analytics_rows_per_event": counts.analytics_rows / m.events,
        "retained_records_per_event": {t: n / m.events for t, n in counts.topics.items()},
        "stages_us_per_event": stages,
        "stages_net_us_per_event": net,
        "wrapped_calls_per_event": calls,
        "wrapper_ns_per_call": per_call_us * 1000,
        "wrapper_ns_per_call_calibrated": m.wrapper_ns,
        "total_us_per_event": sum(stages.values()),
        "net_total_us_per_event": sum(net.values()),
        "plain_total_us_per_event": plain,
        "events_per_s_one_core": 1e6 / plain,
        "wall_s": m.wall_s,
        "process_cpu_s": m.process_cpu_s,
    }


def format_table(r: dict[str, Any]) -> str:
    total, net_total, plain = r["total_us_per_event"], r["net_total_us_per_event"], r["plain_total_us_per_event"]
    lines = [
        f"ContactProcessor over the embedded store: {r['events']:,} live events (90% track, 10% identify) on "
        f"{r['contacts']:,} contacts; {r['segments']} segments, {r['live_journeys']} live journeys; batches of "
        f"{r['batch']:,} ({r['batches']} batches, {r['records_processed']:,} records with re-entries and timers)",
        "",
        f"{'stage':<12} {'CPU µs/event':>13} {'net of wrappers':>16} {'share':>7} {'wrapped calls':>14}",
    ]
    for stage, value in r["stages_us_per_event"].items():
        net = r["stages_net_us_per_event"][stage]
        calls = r["wrapped_calls_per_event"][stage]
        lines.append(f"{stage:<12} {value:>13.1f} {net:>16.1f} {net / net_total:>7.1%} {calls:>14.1f}")
    lines += [
        f"{'total':<12} {total:>13.1f} {net_total:>16.1f} {1:>7.0%} "
        f"{sum(r['wrapped_calls_per_event'].values()):>14.1f}",
        f"{'plain total':<12} {plain:>13.1f}   (batches run without wrappers: they cost "
        f"{r['wrapper_ns_per_call']:.0f} ns per wrapped call here, a wrapped no-op "
        f"{r['wrapper_ns_per_call_calibrated']:.0f} ns)",
        f"events/s on one core: {r['events_per_s_one_core']:,.0f} (1 / plain total)",
        f"per event: {r['analytics_rows_per_event']:.2f} analytics rows, "
        + ", ".join(f"{n:.2f} {t}" for t, n in r["retained_records_per_event"].items()),
        f"wall {r['wall_s']:.1f} s, process CPU {r['process_cpu_s']:.1f} s (all threads, RocksDB's included)",
        "",
        "stages (a nested call counts in the innermost stage):",
    ]
    lines += [f"  {stage}: {what}" for stage, (what, _) in STAGES.items()]
    return "\n".join(lines)


def positive_int(text: str) -> int:
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError("must be at least 1")
    return value


def parse_args(argv: list[str] | None) -> Config:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0] if __doc__ else None)
    parser.add_argument("--events", type=positive_int, default=20_000, help="live events measured (default 20,000)")
    parser.add_argument("--contacts", type=positive_int, default=2_000, help="contacts (default 2,000)")
    parser.add_argument(
        "--batch", type=positive_int, default=1_000, help="records per partition batch (default 1,000, the runtime's)"
    )
    parser.add_argument("--warmup", type=int, default=2_000, help="live events of the warm-up pass (default 2,000)")
    parser.add_argument("--seed", type=int, default=7)
    parser.add_argument("--json", dest="as_json", action="store_true", help="print the figures as JSON")
    args = parser.parse_args(argv)
    return Config(args.events, args.contacts, args.batch, max(0, args.warmup), args.seed, args.as_json)


def main(argv: list[str] | None = None) -> int:
    config = parse_args(argv)
    root = Path(tempfile.mkdtemp(prefix="spotzee-bench-processor-"))
    try:
        figures = run(config, root)
    except BenchError as exc:
        print(f"FAIL {exc}", file=sys.stderr)
        return 1
    finally:
        shutil.rmtree(root, ignore_errors=True)
    print(json.dumps(figures, indent=2) if config.as_json else format_table(figures))
    return 0


if __name__ == "__main__":
    sys.exit(main())
