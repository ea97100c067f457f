"""Assembles one process: the runtime, ClickHouse, the sink and tenancy, started and stopped together."""

from __future__ import annotations

import logging
from dataclasses import dataclass, field

from spotzee.analytics.clickhouse import ClickHouse
from spotzee.analytics.migrations import migrate
from spotzee.analytics.sink import AnalyticsSink
from spotzee.runtime.embedded import EmbeddedRuntime
from spotzee.runtime.sink_loop import SinkLoop
from spotzee.settings import Settings
from spotzee.streams.contacts import ContactProcessor
from spotzee.streams.interface import Clock, SystemClock
from spotzee.tenancy import Tenancy

log = logging.getLogger(__name__)


@dataclass
class Services:
    settings: Settings
    clock: Clock
    runtime: EmbeddedRuntime
    clickhouse: ClickHouse
    analyst: ClickHouse  # read-only session for POST /api/v1/sql
    sink: SinkLoop
    tenancy: Tenancy
    started: bool = field(default=False)

    @classmethod
    def open(cls, settings: Settings, clock: Clock | None = None) -> Services:
        clock = clock or SystemClock()
        settings.data_dir.mkdir(parents=True, exist_ok=True)
        processor = ContactProcessor(
            dedupe_window=settings.dedupe_window, recent_limit=settings.recent_events_per_contact
        )
        runtime = EmbeddedRuntime(settings, processor, clock)
        try:
            clickhouse = ClickHouse.from_settings(settings)
            migrate(clickhouse)
            analyst = clickhouse.read_only(max_seconds=settings.sql_max_seconds, max_rows=settings.sql_max_rows)
        except Exception:
            runtime.close()
            raise
        sink = SinkLoop(
            runtime.db,
            AnalyticsSink(clickhouse, epoch=runtime.epoch()),
            batch_rows=settings.sink_batch_rows,
            flush_interval=settings.sink_flush_interval,
            wakeup=runtime.outbox_wakeup,
        )
        runtime.sink_offset_reader = lambda: sink.offset
        tenancy = Tenancy(runtime, clock)
        return cls(settings, clock, runtime, clickhouse, analyst, sink, tenancy)

    def start(self) -> None:
        self.sink.start()
        self.runtime.start()
        self.started = True
        log.info("spotzee started: data dir %s, %d partitions", self.settings.data_dir, self.settings.partitions)

    def stop(self) -> None:
        """Graceful: drain appends and processing, flush the sink, close stores."""
        if self.started:
            self.runtime.stop()
            self.sink.stop()
            self.started = False
        self.runtime.close()
        self.analyst.close()
        self.clickhouse.close()
        log.info("spotzee stopped")
