"""The Kafka runtime's worker: the faust-streaming apps binding the processors to Apache Kafka.

- ``processor`` app (consumer group PROCESSOR_GROUP): the ``EventsFeed`` takes the ``events``
  records faust's consumer fetched, in the batches fetched (no faust message or event per record),
  and commits them per partition through the Engine (``runtime/kafka/partition_engine.py``:
  changelog + local RocksDB per partition), then the group's offsets; a timer task fires due
  timers; partitions are restored on assignment and closed on revocation. The delivery agent
  (``runtime/kafka/kafka_delivery.py``) delivers the ``sends`` partitions matching the events
  partitions owned here, reading contacts from the Engine's stores.
- ``sink`` app (consumer group SINK_GROUP, ``runtime/kafka/sink_app.py``): the analytics agent
  writes ``analytics`` batches to ClickHouse. It lives with the runtime because the API process
  runs it too when ClickHouse is chDB (one process owns a chDB path).
``spotzee worker`` runs either app or both (``run_worker``).
"""

from __future__ import annotations

import asyncio
import logging
import time
from pathlib import Path
from typing import Any

import faust
from aiokafka import AIOKafkaConsumer

from spotzee.analytics.clickhouse import ClickHouse
from spotzee.analytics.migrations import migrate
from spotzee.runtime.kafka import admin
from spotzee.runtime.kafka.broker_errors import BROKER_ERRORS, kafka_errors
from spotzee.runtime.kafka.config import aiokafka_config, make_producer
from spotzee.runtime.kafka.definitions_topic import DefinitionsReplica
from spotzee.runtime.kafka.faust_app import faust_app
from spotzee.runtime.kafka.kafka_delivery import KafkaDelivery, build_delivery
from spotzee.runtime.kafka.partition_engine import Engine, InputRecord, KafkaClients
from spotzee.runtime.kafka.records_feed import Record, RecordsFeed
from spotzee.runtime.kafka.sink_app import build_sink_app
from spotzee.services.suppression_service import suppression_lookup
from spotzee.settings import Settings
from spotzee.streams import topics
from spotzee.streams.contact_processor import ContactProcessor
from spotzee.streams.interface import Clock, clock_from
from spotzee.streams.journey_processor import JourneyRegistry
from spotzee.streams.segment_processor import SegmentRegistry

log = logging.getLogger(__name__)

DEFINITIONS_ATTEMPTS = 12


def build_processor_app(settings: Settings, clock: Clock | None = None) -> tuple[faust.App, Engine]:
    events_name = admin.topic_name(settings, topics.EVENTS)
    feed = EventsFeed(events_name, settings.process_batch_size)
    app = faust_app(settings, admin.group_id(settings, admin.PROCESSOR_GROUP), consumer_scheduler=feed.scheduler())
    # Definitions (projects, keys, segments, journeys, templates) in every worker. Segment
    # definitions are loaded before any record is processed; barriers in the stream and the
    # follower bring later ones.
    definitions = DefinitionsReplica(settings)
    _load_definitions(definitions)
    engine = _engine(settings, clock or clock_from(settings.clock_shift_file), definitions)
    delivery = build_delivery(settings, engine, definitions.scan)  # sends of the partitions owned here
    if delivery is not None:  # the suppression list: a point read of the replica per send
        delivery.deliverer.suppressed = suppression_lookup(definitions.items.get)
    # Subscribed like an agent's topic (faust's group then assigns its partitions here), but no agent reads
    # it: the feed takes its records; acks off, faust tracks no offsets of it (the feed commits them).
    events = app.topic(
        events_name, key_serializer="raw", value_serializer="raw", partitions=settings.partitions, acks=False
    )
    app.topics.add(events)
    feed.bind_engine(app, engine)

    async def follow_definitions() -> None:
        log.info("definitions loaded: %d", len(definitions.items))
        await definitions.follow()

    app.task(follow_definitions)
    _timers(app, engine, delivery, feed)
    _partition_signals(app, events_name, engine, delivery, feed)
    return app, engine


def _engine(settings: Settings, clock: Clock, definitions: DefinitionsReplica) -> Engine:
    """The contact processor over this worker's partition stores, its registries fed by ``definitions``."""
    registry = SegmentRegistry()
    registry.load(definitions.scan("segment/"))
    definitions.listeners.append(registry.on_definition)
    journeys = JourneyRegistry()
    journeys.load(definitions.scan("journey/"))
    definitions.listeners.append(journeys.on_definition)
    processor = ContactProcessor(
        dedupe_window=settings.dedupe_window,
        recent_limit=settings.recent_events_per_contact,
        segments=registry,
        journeys=journeys,
    )
    kafka = KafkaClients(
        producer=lambda: make_producer(settings),
        consumer=lambda: AIOKafkaConsumer(
            **aiokafka_config(settings), enable_auto_commit=False, auto_offset_reset="earliest"
        ),
        topic_name=lambda base: admin.topic_name(settings, base),
        changelog_topic=admin.topic_name(settings, admin.CONTACTS_CHANGELOG),
        input_topic=admin.topic_name(settings, topics.EVENTS),
    )
    per_partition = settings.state_cache_entries // max(settings.partitions, 1)
    return Engine(processor, clock, state_root(settings), kafka, per_partition)


class EventsFeed(RecordsFeed):
    """The events topic's records, in the batches faust's consumer fetched them, straight to the Engine
    (``runtime/kafka/records_feed.py``): one task per partition applies the records it holds, in order,
    in batches of up to ``batch_size`` through ``Engine.process`` (which skips what was applied and reads
    back any gap); the consumer group's offsets are the Engine's input offsets after each applied batch --
    never ahead of what was applied."""

    def __init__(self, topic: str, batch_size: int) -> None:
        super().__init__(topic, batch_size)
        self._engine: Engine | None = None

    def bind_engine(self, app: faust.App, engine: Engine) -> None:
        self._engine = engine
        self.bind(app, self._apply)

    @property
    def engine(self) -> Engine:
        if self._engine is None:
            raise RuntimeError("feed not bound to an engine")
        return self._engine

    async def _apply(self, partition: int, batch: list[Record]) -> int | None:
        records = [InputRecord(r.offset, r.key.decode() if r.key else "", r.value or b"") for r in batch]
        return await self.engine.process(partition, records)


def _timers(app: faust.App, engine: Engine, delivery: KafkaDelivery | None, feed: EventsFeed) -> None:
    async def fire_timers() -> None:
        if engine.started:
            await engine.fire_timers()

    async def commit_offsets() -> None:
        await feed.commit()

    app.timer(interval=0.25)(fire_timers)
    app.timer(interval=app.conf.broker_commit_interval)(commit_offsets)
    if delivery is not None:
        app.timer(interval=0.25)(delivery.reconcile)


def _partition_signals(
    app: faust.App, events_name: str, engine: Engine, delivery: KafkaDelivery | None, feed: EventsFeed
) -> None:
    """Restore a partition's store on assignment; on revocation let its in-flight work finish and
    commit what it applied."""
    restoring: set[asyncio.Task[object]] = set()  # keep references: tasks are weakly held by the loop

    async def on_assigned(sender: Any, *args: Any, signal: Any = None, **_: Any) -> None:
        assigned = {tp.partition for tp in args[0] if tp.topic == events_name}
        for partition in assigned:
            task: asyncio.Task[object] = asyncio.ensure_future(engine.assign(partition))
            restoring.add(task)
            task.add_done_callback(restoring.discard)
        feed.assign(assigned)

    async def on_revoked(sender: Any, *args: Any, signal: Any = None, **_: Any) -> None:
        revoked = {tp.partition for tp in args[0] if tp.topic == events_name}
        feed.revoke(revoked)
        for partition in revoked:
            if delivery is not None:
                await delivery.stop_partition(partition)  # its in-flight send finishes first
            await engine.revoke(partition)  # its in-flight batch finishes first
        await feed.commit(revoked)

    async def on_shutdown(sender: Any, *args: Any, signal: Any = None, **_: Any) -> None:
        await feed.stop()
        if delivery is not None:
            await delivery.close()
        await engine.close()

    # faust's stubs type receivers as returning None | a callable; coroutine receivers are what it awaits.
    app.on_partitions_assigned.connect(on_assigned)  # type: ignore[arg-type]
    app.on_partitions_revoked.connect(on_revoked)  # type: ignore[arg-type]
    app.on_before_shutdown.connect(on_shutdown)  # type: ignore[arg-type]


def _load_definitions(definitions: DefinitionsReplica, attempts: int = DEFINITIONS_ATTEMPTS) -> None:
    """Definitions must be known before the first record is processed: wait for the broker
    (a worker may start before Kafka), then give up with a clear error."""
    delay = 1.0
    for _ in range(attempts - 1):
        try:
            definitions.load()
            return
        except BROKER_ERRORS as exc:
            log.warning("definitions topic unreachable (%s); retrying in %.0fs", exc, delay)
            time.sleep(delay)
            delay = min(delay * 2, 10.0)
    with kafka_errors("cannot read the definitions topic"):  # the last attempt
        definitions.load()


def run_worker(settings: Settings, *, sink: bool, processor: bool = True) -> None:
    """Run the apps until SIGINT/SIGTERM (faust's worker handles signals and rebalances)."""
    apps: list[faust.App] = []
    clickhouse: ClickHouse | None = None
    if processor:
        apps.append(build_processor_app(settings)[0])
    if sink:
        clickhouse = ClickHouse.from_settings(settings)
        migrate(clickhouse)
        apps.append(build_sink_app(settings, clickhouse)[0])
    if not apps:
        raise ValueError("nothing to run: enable the processor or the sink")
    worker = faust_worker(apps, settings)
    try:
        worker.execute_from_commandline()
    finally:
        if clickhouse is not None:
            clickhouse.close()


def faust_worker(apps: list[faust.App], settings: Settings) -> faust.Worker:
    """faust's worker for ``apps``, leaving logging as ``spotzee worker`` configured it.

    ``override_logging=False``: mode would otherwise replace the root handlers with its own, and
    Spotzee's redacting formatter (``spotzee.logging``: no secret reaches a log line) with them.
    No terminal spinner: faust installs it by lowering the root logger to DEBUG (every logger then
    builds a record for each debug call -- aiokafka logs one per produced record, ~13% of the CPU)."""
    worker = faust.Worker(*apps, loglevel=settings.log_level.lower(), quiet=True, override_logging=False)
    worker.spinner = None
    return worker


def state_root(settings: Settings) -> Path:
    """Where this worker keeps its partition stores."""
    return settings.data_dir / "kafka-state" / settings.worker_id
