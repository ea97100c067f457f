"""Runs the faust analytics-sink app in a thread of its own (its own event loop).

The API process uses it when it owns ClickHouse (chDB: one process per path); workers with a
ClickHouse server run the same app through ``spotzee worker``.
"""

from __future__ import annotations

import asyncio
import logging
import threading

import faust

from spotzee.agents.worker import build_sink_app
from spotzee.analytics.clickhouse import ClickHouse
from spotzee.analytics.sink import AnalyticsSink
from spotzee.settings import Settings

log = logging.getLogger(__name__)


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
