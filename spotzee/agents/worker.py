"""The Kafka runtime's worker: faust-streaming apps binding the processors to Apache Kafka.

- ``processor`` app (consumer group PROCESSOR_GROUP): the contact agent consumes ``events`` in
  batches and commits them through the Engine (changelog + local RocksDB per partition); a timer
  task fires due timers; partitions are restored on assignment and closed on revocation. The
  delivery agent (``runtime/kafka/kafka_delivery.py``) delivers the ``sends`` partitions matching the
  events partitions owned here, reading contacts from the Engine's stores.
- ``sink`` app (consumer group SINK_GROUP): the analytics agent writes ``analytics`` batches to
  ClickHouse with per-partition offset-range dedupe tokens.
Either app runs in a worker process (``spotzee worker``); the sink may instead run in the API
process when ClickHouse is chDB (one process owns a chDB path).
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
from kafka.errors import KafkaError
from starlette.concurrency import run_in_threadpool

from spotzee.analytics.clickhouse import ClickHouse
from spotzee.analytics.sink import AnalyticsSink, is_mutation
from spotzee.errors import LogUnavailable
from spotzee.files import private_dir
from spotzee.runtime.kafka import admin, faust_codec
from spotzee.runtime.kafka.config import aiokafka_config, faust_broker_settings, make_producer
from spotzee.runtime.kafka.definitions_topic import DefinitionsReplica
from spotzee.runtime.kafka.kafka_delivery import build_delivery
from spotzee.runtime.kafka.partition_engine import Engine, InputRecord
from spotzee.schemas.analytics import AnalyticsRecord
from spotzee.settings import Settings
from spotzee.streams import topics
from spotzee.streams.contact_processor import ContactProcessor
from spotzee.streams.interface import Clock, clock_from
from spotzee.streams.journey_processor import JourneyRegistry
from spotzee.streams.segment_processor import SegmentRegistry

log = logging.getLogger(__name__)


def _app(settings: Settings, app_id: str) -> faust.App:
    faust_codec.register()
    datadir = settings.data_dir / "faust" / f"{settings.worker_id}-{app_id}"
    private_dir(datadir)
    return faust.App(
        app_id,
        **faust_broker_settings(settings),
        store="memory://",
        topic_partitions=settings.partitions,
        topic_replication_factor=settings.kafka_replication_factor,
        web_enabled=False,
        autodiscover=False,
        consumer_auto_offset_reset="earliest",
        broker_commit_interval=0.5,
        broker_session_timeout=settings.kafka_session_timeout,
        broker_heartbeat_interval=max(settings.kafka_session_timeout / 5, 0.5),
        producer_acks=-1,
        processing_guarantee="at_least_once",
        broker_max_poll_records=5000,  # faust's consumer thread hands over records in polls this large
        stream_buffer_maxsize=20000,
        datadir=str(datadir),
    )


def build_processor_app(settings: Settings, clock: Clock | None = None) -> tuple[faust.App, Engine]:
    app = _app(settings, admin.group_id(settings, admin.PROCESSOR_GROUP))
    events_name = admin.topic_name(settings, topics.EVENTS)
    # Definitions (projects, keys, segments; later journeys, templates) in every worker. Segment
    # definitions are loaded before any record is processed; barriers in the stream and the
    # follower bring later ones.
    definitions = DefinitionsReplica(settings)
    _load_definitions(definitions)
    registry = SegmentRegistry()
    registry.load(definitions.scan("segment/"))
    definitions.listeners.append(registry.on_definition)
    journeys = JourneyRegistry()
    journeys.load(definitions.scan("journey/"))
    definitions.listeners.append(journeys.on_definition)
    engine = Engine(
        ContactProcessor(
            dedupe_window=settings.dedupe_window,
            recent_limit=settings.recent_events_per_contact,
            segments=registry,
            journeys=journeys,
        ),
        clock or clock_from(settings.clock_shift_file),
        settings.data_dir / "kafka-state" / settings.worker_id,
        lambda: make_producer(settings),
        lambda base: admin.topic_name(settings, base),
        admin.topic_name(settings, admin.CONTACTS_CHANGELOG),
        lambda: AIOKafkaConsumer(**aiokafka_config(settings), enable_auto_commit=False, auto_offset_reset="earliest"),
    )
    delivery = build_delivery(settings, engine, definitions.scan)  # sends of the partitions owned here
    events = app.topic(events_name, key_serializer="raw", value_serializer="raw", partitions=settings.partitions)
    engine.definitions = definitions

    async def follow_definitions() -> None:
        log.info("definitions loaded: %d", len(definitions.items))
        await definitions.follow()

    app.task(follow_definitions)
    restoring: set[asyncio.Task[object]] = set()  # keep references: tasks are weakly held by the loop

    @app.agent(events, name="contacts")
    async def contacts(stream: Any) -> AsyncIterator[None]:
        await engine.start()
        async for batch in stream.take_events(settings.process_batch_size, within=0.05):
            by_partition: dict[int, list[InputRecord]] = defaultdict(list)
            for event in batch:
                message = event.message
                by_partition[message.partition].append(
                    InputRecord(message.offset, (message.key or b"").decode(), message.value or b"")
                )
            # Partitions commit independently: their acks and writes overlap.
            await asyncio.gather(*(engine.process(p, records) for p, records in by_partition.items()))
            yield None

    async def fire_timers() -> None:
        if engine.started:
            await engine.fire_timers()

    app.timer(interval=0.25)(fire_timers)
    if delivery is not None:
        app.timer(interval=0.25)(delivery.reconcile)

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
    return app, engine


def build_sink_app(settings: Settings, clickhouse: ClickHouse) -> tuple[faust.App, AnalyticsSink]:
    app = _app(settings, admin.group_id(settings, admin.SINK_GROUP))
    analytics_name = admin.topic_name(settings, topics.ANALYTICS)
    analytics = app.topic(
        analytics_name,
        key_serializer="raw",
        value_serializer=faust_codec.ANALYTICS_CODEC,
        partitions=settings.partitions,
    )
    sink = AnalyticsSink(clickhouse)

    @app.agent(analytics, name="analytics-sink")
    async def write(stream: Any) -> AsyncIterator[None]:
        async for batch in stream.take_events(settings.sink_batch_rows, within=settings.sink_flush_interval):
            by_partition: dict[int, list[tuple[int, AnalyticsRecord]]] = defaultdict(list)
            for event in batch:
                by_partition[event.message.partition].append((event.message.offset, event.value))
            for partition, records in by_partition.items():
                epoch = f"kafka:{analytics_name}:{partition}"
                for chunk in _ranges(records):
                    await run_in_threadpool(sink.write, chunk, epoch=epoch)
            yield None

    return app, sink


def _ranges(records: list[tuple[int, AnalyticsRecord]]) -> list[list[tuple[int, AnalyticsRecord]]]:
    """Rows in runs; every mutation alone, in order."""
    out: list[list[tuple[int, AnalyticsRecord]]] = []
    run: list[tuple[int, AnalyticsRecord]] = []
    for item in records:
        if is_mutation(item[1]):
            if run:
                out.append(run)
                run = []
            out.append([item])
        else:
            run.append(item)
    if run:
        out.append(run)
    return out


def _load_definitions(definitions: DefinitionsReplica, attempts: int = 12) -> None:
    """Definitions must be known before the first record is processed: wait for the broker
    (a worker may start before Kafka), then give up with a clear error."""
    delay = 1.0
    for attempt in range(1, attempts + 1):
        try:
            definitions.load()
            return
        except KafkaError as exc:
            if attempt == attempts:
                raise LogUnavailable(f"cannot read the definitions topic: {exc}") from exc
            log.warning("definitions topic unreachable (%s); retrying in %.0fs", exc, delay)
            time.sleep(delay)
            delay = min(delay * 2, 10.0)


def run_worker(settings: Settings, *, sink: bool, processor: bool = True) -> None:
    """Run the apps until SIGINT/SIGTERM (faust's worker handles signals and rebalances)."""
    apps: list[faust.App] = []
    clickhouse: ClickHouse | None = None
    if processor:
        apps.append(build_processor_app(settings)[0])
    if sink:
        clickhouse = ClickHouse.from_settings(settings)
        from spotzee.analytics.migrations import migrate

        migrate(clickhouse)
        apps.append(build_sink_app(settings, clickhouse)[0])
    if not apps:
        raise ValueError("nothing to run: enable the processor or the sink")
    worker = faust.Worker(*apps, loglevel=settings.log_level.lower(), quiet=True)
    try:
        worker.execute_from_commandline()
    finally:
        if clickhouse is not None:
            clickhouse.close()


def state_root(settings: Settings) -> Path:
    return settings.data_dir / "kafka-state" / settings.worker_id
