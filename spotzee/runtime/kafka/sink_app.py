"""The analytics sink of the Kafka runtime: a faust app, run by a worker or in the API process.

``build_sink_app`` (consumer group SINK_GROUP): the analytics agent writes ``analytics`` batches
to ClickHouse with per-partition offset-range dedupe tokens. ``spotzee worker`` runs it with a
ClickHouse server (``agents/worker.py``); the API process runs it in a thread of its own, with
its own event loop (``ThreadedSinkApp``), when it owns ClickHouse (chDB: one process per path).
"""

from __future__ import annotations

import asyncio
import logging
import threading
from collections import defaultdict
from collections.abc import AsyncIterator
from typing import Any

import faust
from starlette.concurrency import run_in_threadpool

from spotzee.analytics.clickhouse import ClickHouse
from spotzee.analytics.sink import AnalyticsSink, is_mutation
from spotzee.runtime.kafka import admin, faust_codec
from spotzee.runtime.kafka.faust_app import faust_app
from spotzee.schemas.analytics_models import AnalyticsRecord
from spotzee.settings import Settings
from spotzee.streams import topics

log = logging.getLogger(__name__)

Records = list[tuple[int, AnalyticsRecord]]


def build_sink_app(settings: Settings, clickhouse: ClickHouse) -> tuple[faust.App, AnalyticsSink]:
    app = faust_app(settings, admin.group_id(settings, admin.SINK_GROUP))
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
            by_partition: dict[int, Records] = defaultdict(list)
            for event in batch:
                by_partition[event.message.partition].append((event.message.offset, event.value))
            for partition, records in by_partition.items():
                epoch = f"kafka:{analytics_name}:{partition}"
                for chunk in _ranges(records):
                    await run_in_threadpool(sink.write, chunk, epoch=epoch)
            yield None

    return app, sink


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
