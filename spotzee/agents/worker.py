"""The Kafka runtime's worker: the faust-streaming apps binding the processors to Apache Kafka.

- ``processor`` app (consumer group PROCESSOR_GROUP): the contact agent consumes ``events`` in
  batches and commits them through the Engine (``runtime/kafka/partition_engine.py``: changelog +
  local RocksDB per partition); a timer task fires due timers; partitions are restored on
  assignment and closed on revocation. The delivery agent (``runtime/kafka/kafka_delivery.py``)
  delivers the ``sends`` partitions matching the events partitions owned here, reading contacts
  from the Engine's stores.
- ``sink`` app (consumer group SINK_GROUP, ``runtime/kafka/sink_app.py``): the analytics agent
  writes ``analytics`` batches to ClickHouse. It lives with the runtime because the API process
  runs it too when ClickHouse is chDB (one process owns a chDB path).
``spotzee worker`` runs either app or both (``run_worker``).
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections import defaultdict
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import faust
from aiokafka import AIOKafkaConsumer
from faust.types import TP

from spotzee.analytics.clickhouse import ClickHouse
from spotzee.analytics.migrations import migrate
from spotzee.runtime.kafka import admin
from spotzee.runtime.kafka.broker_errors import BROKER_ERRORS, kafka_errors
from spotzee.runtime.kafka.config import aiokafka_config, make_producer
from spotzee.runtime.kafka.definitions_topic import DefinitionsReplica
from spotzee.runtime.kafka.faust_app import faust_app
from spotzee.runtime.kafka.kafka_delivery import KafkaDelivery, build_delivery
from spotzee.runtime.kafka.partition_engine import Engine, InputRecord, KafkaClients
from spotzee.runtime.kafka.sink_app import build_sink_app
from spotzee.settings import Settings
from spotzee.streams import topics
from spotzee.streams.contact_processor import ContactProcessor
from spotzee.streams.interface import Clock, clock_from
from spotzee.streams.journey_processor import JourneyRegistry
from spotzee.streams.segment_processor import SegmentRegistry

log = logging.getLogger(__name__)

DEFINITIONS_ATTEMPTS = 12


def build_processor_app(settings: Settings, clock: Clock | None = None) -> tuple[faust.App, Engine]:
    app = faust_app(settings, admin.group_id(settings, admin.PROCESSOR_GROUP))
    events_name = admin.topic_name(settings, topics.EVENTS)
    # Definitions (projects, keys, segments, journeys, templates) in every worker. Segment
    # definitions are loaded before any record is processed; barriers in the stream and the
    # follower bring later ones.
    definitions = DefinitionsReplica(settings)
    _load_definitions(definitions)
    engine = _engine(settings, clock or clock_from(settings.clock_shift_file), definitions)
    delivery = build_delivery(settings, engine, definitions.scan)  # sends of the partitions owned here
    events = app.topic(events_name, key_serializer="raw", value_serializer="raw", partitions=settings.partitions)

    async def follow_definitions() -> None:
        log.info("definitions loaded: %d", len(definitions.items))
        await definitions.follow()

    app.task(follow_definitions)
    _contact_agent(app, events, engine, settings.process_batch_size)
    _timers(app, engine, delivery)
    _partition_signals(app, events_name, engine, delivery)
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


def _contact_agent(app: faust.App, events: Any, engine: Engine, batch_size: int) -> None:
    @app.agent(events, name="contacts")
    async def contacts(stream: Any) -> AsyncIterator[None]:
        await engine.start()
        async for batch in stream.take_events(batch_size, within=0.05):
            by_partition: dict[int, list[InputRecord]] = defaultdict(list)
            for event in batch:
                message = event.message
                by_partition[message.partition].append(
                    InputRecord(message.offset, (message.key or b"").decode(), message.value or b"")
                )
            # Partitions commit independently: their acks and writes overlap.
            await asyncio.gather(*(engine.process(p, records) for p, records in by_partition.items()))
            yield None


def _timers(app: faust.App, engine: Engine, delivery: KafkaDelivery | None) -> None:
    async def fire_timers() -> None:
        if engine.started:
            await engine.fire_timers()

    app.timer(interval=0.25)(fire_timers)
    if delivery is not None:
        app.timer(interval=0.25)(delivery.reconcile)


def _partition_signals(app: faust.App, events_name: str, engine: Engine, delivery: KafkaDelivery | None) -> None:
    """Restore a partition's store on assignment; on revocation let its in-flight work finish."""
    restoring: set[asyncio.Task[object]] = set()  # keep references: tasks are weakly held by the loop

    async def on_assigned(sender: Any, *args: Any, signal: Any = None, **_: Any) -> None:
        assigned: set[TP] = args[0]
        for tp in assigned:
            if tp.topic == events_name:
                task: asyncio.Task[object] = asyncio.ensure_future(engine.assign(tp.partition))
                restoring.add(task)
                task.add_done_callback(restoring.discard)

    async def on_revoked(sender: Any, *args: Any, signal: Any = None, **_: Any) -> None:
        revoked: set[TP] = args[0]
        for tp in revoked:
            if tp.topic == events_name:
                if delivery is not None:
                    await delivery.stop_partition(tp.partition)  # its in-flight send finishes first
                await engine.revoke(tp.partition)

    async def on_shutdown(sender: Any, *args: Any, signal: Any = None, **_: Any) -> None:
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
    worker = faust.Worker(*apps, loglevel=settings.log_level.lower(), quiet=True)
    # No terminal spinner: faust installs it by lowering the root logger to DEBUG (every logger then
    # builds a record for each debug call -- aiokafka logs one per produced record, ~13% of the CPU).
    worker.spinner = None
    try:
        worker.execute_from_commandline()
    finally:
        if clickhouse is not None:
            clickhouse.close()


def state_root(settings: Settings) -> Path:
    """Where this worker keeps its partition stores."""
    return settings.data_dir / "kafka-state" / settings.worker_id
