"""The analytics sink of the Kafka runtime: a faust app, run by a worker or in the API process.

``build_sink_app`` (consumer group SINK_GROUP): the ``analytics`` records, in the batches the
consumer fetched (``runtime/kafka/records_feed.py``), are written to ClickHouse with per-partition
offset-range dedupe tokens. ``spotzee worker`` runs it with a
ClickHouse server (``agents/worker.py``); the API process runs it in a thread of its own, with
its own event loop (``ThreadedSinkApp``), when it owns ClickHouse (chDB: one process per path).
"""

from __future__ import annotations

import asyncio
import logging
import threading
from typing import Any

import faust
from starlette.concurrency import run_in_threadpool

from spotzee.analytics.clickhouse import ClickHouse
from spotzee.analytics.sink import AnalyticsSink, is_mutation
from spotzee.runtime.kafka import admin
from spotzee.runtime.kafka.faust_app import faust_app
from spotzee.runtime.kafka.records_feed import Record, RecordsFeed
from spotzee.schemas.analytics_models import AnalyticsRecord, decode_analytics
from spotzee.settings import Settings
from spotzee.streams import topics

log = logging.getLogger(__name__)

Records = list[tuple[int, AnalyticsRecord]]
MIN_PARTITION_BATCH = 1000  # rows per partition batch at the least: fewer makes ClickHouse parts too small


def build_sink_app(settings: Settings, clickhouse: ClickHouse) -> tuple[faust.App, AnalyticsSink]:
    """The sink's faust app: the ``analytics`` records fetched go through a ``RecordsFeed`` (no faust
    message, event or ack per record); each partition's batch (up to its share of
    ``SPOTZEE_SINK_BATCH_ROWS``, at least 1,000, or what arrived within ``SPOTZEE_SINK_FLUSH_INTERVAL``)
    is decoded and written in ranges, and the group's offsets are committed only past what ClickHouse
    acknowledged."""
    analytics_name = admin.topic_name(settings, topics.ANALYTICS)
    # SPOTZEE_SINK_BATCH_ROWS is the batch across partitions, as faust's take_events had it: each partition
    # batches its share, so a backlog being caught up holds at most a few such shares per partition (the
    # feed pauses a partition at HIGH_WATER_BATCHES batches or HIGH_WATER_RECORDS), not 20,000 rows each.
    per_partition = max(settings.sink_batch_rows // max(settings.partitions, 1), MIN_PARTITION_BATCH)
    feed = RecordsFeed(analytics_name, per_partition, linger=settings.sink_flush_interval)
    app = faust_app(settings, admin.group_id(settings, admin.SINK_GROUP), consumer_scheduler=feed.scheduler())
    # Subscribed like an agent's topic (faust's group then assigns its partitions here), but no agent
    # reads it: the feed takes its records and commits their offsets.
    analytics = app.topic(
        analytics_name, key_serializer="raw", value_serializer="raw", partitions=settings.partitions, acks=False
    )
    app.topics.add(analytics)
    sink = AnalyticsSink(clickhouse)

    async def write(partition: int, batch: list[Record]) -> int:
        epoch = f"kafka:{analytics_name}:{partition}"
        await run_in_threadpool(_write, sink, batch, epoch)
        return int(batch[-1].offset) + 1

    feed.bind(app, write)
    _signals(app, feed)
    return app, sink


def _write(sink: AnalyticsSink, batch: list[Record], epoch: str) -> None:
    """Decode (msgspec, one call per record) and write one partition's batch, in ranges (in a worker thread)."""
    decode = decode_analytics
    for chunk in _ranges([(r.offset, decode(r.value or b"")) for r in batch]):
        sink.write(chunk, epoch=epoch)


def _signals(app: faust.App, feed: RecordsFeed) -> None:
    """Partitions assigned are fed; revoked ones finish their batch in flight and commit it; the group's
    offsets are committed every ``broker_commit_interval``."""

    async def on_assigned(sender: Any, *args: Any, signal: Any = None, **_: Any) -> None:
        feed.assign({tp.partition for tp in args[0] if tp.topic == feed.topic})

    async def on_revoked(sender: Any, *args: Any, signal: Any = None, **_: Any) -> None:
        revoked = {tp.partition for tp in args[0] if tp.topic == feed.topic}
        feed.revoke(revoked)
        await feed.settle(revoked)
        await feed.commit(revoked)

    async def on_shutdown(sender: Any, *args: Any, signal: Any = None, **_: Any) -> None:
        await feed.stop()

    async def commit_offsets() -> None:
        await feed.commit()

    app.timer(interval=app.conf.broker_commit_interval)(commit_offsets)
    # faust's stubs type receivers as returning None | a callable; coroutine receivers are what it awaits.
    app.on_partitions_assigned.connect(on_assigned)  # type: ignore[arg-type]
    app.on_partitions_revoked.connect(on_revoked)  # type: ignore[arg-type]
    app.on_before_shutdown.connect(on_shutdown)  # type: ignore[arg-type]


def _ranges(records: Records) -> list[Records]:
    """Rows in runs; every mutation alone, in order."""
    out: list[Records] = []
    run: Records = []
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


class ThreadedSinkApp:
    def __init__(self, settings: Settings, clickhouse: ClickHouse) -> None:
        self.settings = settings
        self.clickhouse = clickhouse
        self.last_error: str | None = None
        self._thread: threading.Thread | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._stop: asyncio.Event | None = None
        self._app: faust.App | None = None
        self._sink: AnalyticsSink | None = None
        self._started = threading.Event()

    @property
    def rows_written(self) -> int:
        return 0 if self._sink is None else self._sink.rows_written

    def start(self) -> None:
        self._thread = threading.Thread(target=self._run, name="spotzee-kafka-sink", daemon=True)
        self._thread.start()
        self._started.wait(timeout=60)

    def _run(self) -> None:
        loop = asyncio.new_event_loop()
        asyncio.set_event_loop(loop)
        self._loop = loop
        try:
            loop.run_until_complete(self._main())
        except Exception as exc:
            self.last_error = f"{type(exc).__name__}: {exc}"
            log.exception("analytics sink stopped")
        finally:
            self._started.set()
            loop.close()

    async def _main(self) -> None:
        self._stop = asyncio.Event()
        self._app, self._sink = build_sink_app(self.settings, self.clickhouse)
        await self._app.start()
        self._started.set()
        try:
            await self._stop.wait()
        finally:
            await self._app.stop()

    def alive(self) -> bool:
        return self._thread is not None and self._thread.is_alive()

    def stop(self) -> None:
        if self._loop is not None and self._stop is not None and self.alive():
            self._loop.call_soon_threadsafe(self._stop.set)
        if self._thread is not None:
            self._thread.join(timeout=30)
