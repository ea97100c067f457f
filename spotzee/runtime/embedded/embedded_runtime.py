"""The embedded runtime: the whole topology in one process, durable in RocksDB.

The numbered steps of docs/architecture.md's data flow, by module of this package:
- ``appender.py``: admission and the durable append, group-committed (steps 3-5);
- ``processor_loop.py``: partition batches through the processor, one atomic commit each (steps 6-8);
- ``timers.py``: timers, staged in that commit and fired after each pass (step 9);
- ``commit.py``: one synced write batch, and re-entry of records emitted to ``events`` (steps 8, 10);
- ``outbox.py``: the outbox and the retained topics, where other emitted records go (step 8);
- ``inbound_log.py``: the log's offsets, which all of these share.

``EmbeddedRuntime`` assembles them and owns the threads: ``spotzee-appender``,
``spotzee-processor`` (timers too, so they never race the state they belong to), and, when opened
with them, ``spotzee-sink`` (step 11: the outbox into ClickHouse, ``runtime/sink_loop.py``) and
``spotzee-delivery`` (the ``sends`` topic, ``runtime/delivery_loop.py``). A crash at any point
leaves either the whole batch or none of it: nothing lost, nothing twice.
"""

from __future__ import annotations

import asyncio
import threading
import time
import uuid
from collections.abc import Awaitable, Callable, Iterator

from spotzee.analytics.clickhouse import ClickHouse
from spotzee.analytics.sink import AnalyticsSink
from spotzee.errors import SpotzeeError
from spotzee.providers.delivery_service import Deliverer
from spotzee.runtime.delivery_loop import DeliveryLoop
from spotzee.runtime.embedded.appender import Appender
from spotzee.runtime.embedded.commit import Commit, Emit
from spotzee.runtime.embedded.inbound_log import InboundLog
from spotzee.runtime.embedded.outbox import Outbox
from spotzee.runtime.embedded.processor_loop import ProcessorLoop
from spotzee.runtime.embedded.timers import Timers
from spotzee.runtime.runtime_protocol import DONE, Health, Position, Sink
from spotzee.runtime.sink_loop import SinkLoop
from spotzee.settings import Settings
from spotzee.streams import topics
from spotzee.streams.interface import Clock, Processor
from spotzee.tables.rocksdb_store import DEFINITIONS, META, TABLE_PREFIX, U64, RocksDB

PARTITIONS = b"partitions"
EPOCH = b"epoch"
APPENDER, PROCESSOR = "spotzee-appender", "spotzee-processor"


class EmbeddedRuntime:
    """``clickhouse``: run the analytics sink into it. ``deliverer``: run the delivery loop with
    the deliverer it makes, called on ``start`` (its template and provider lookups read
    definitions through this runtime, so they are built after it)."""

    def __init__(
        self,
        settings: Settings,
        processor: Processor,
        clock: Clock,
        *,
        clickhouse: ClickHouse | None = None,
        deliverer: Callable[[], Deliverer] | None = None,
    ) -> None:
        self.settings = settings
        self.processor = processor
        self.clock = clock
        self.partitions = settings.partitions
        self.db = RocksDB(settings.data_dir / "rocksdb", processor.tables)
        self._check_partitions()
        self.inbound = InboundLog(self.db, self.partitions)
        self.outbox = Outbox(self.db, settings)
        self.timers = Timers(self.inbound, self.outbox, clock)
        self.appender = Appender(self.inbound, self.outbox, settings)
        self.processor_loop = ProcessorLoop(
            self.inbound,
            self.outbox,
            self.timers,
            processor,
            clock,
            settings.process_batch_size,
            settings.state_cache_entries,
        )
        self._sink = None if clickhouse is None else self._sink_loop(clickhouse)
        self._deliverer = deliverer
        self._sink_started = False
        self.delivery: DeliveryLoop | None = None
        self._threads: list[threading.Thread] = []

    # -- lifecycle -------------------------------------------------------------------------

    def start(self) -> Awaitable[None]:
        """Start the sink, the appender and processor threads, then delivery. The call does it all
        (a test or a tool may call it outside an event loop); the result is already done."""
        if self._sink is not None:
            self._sink.start()
            self._sink_started = True
        self.processor_loop.running = True
        self.appender.running = True
        self.appender.accepting = True
        for target, name in ((self.appender.run, APPENDER), (self.processor_loop.run, PROCESSOR)):
            thread = threading.Thread(target=target, name=name, daemon=True)
            thread.start()
            self._threads.append(thread)
        if self._deliverer is not None:
            self.delivery = delivery = DeliveryLoop(self, self._deliverer(), self.settings, self.clock)
            self.outbox.topic_listeners.append(lambda moved: delivery.wake() if topics.SENDS in moved else None)
            delivery.start()
        return DONE

    def stop_accepting(self) -> None:
        """The first step of a graceful stop: appends answer LogUnavailable (HTTP 503) from now on."""
        self.appender.accepting = False

    def stop(self, drain_timeout: float = 30.0) -> None:
        """Graceful: stop delivery, refuse new appends, finish pending appends, process the
        backlog, stop the threads, then drain the outbox into ClickHouse and stop the sink."""
        if self.delivery is not None:
            self.delivery.stop()
        self.stop_accepting()
        deadline = time.monotonic() + drain_timeout
        while (not self.appender.queue.empty() or self.processing_lag() > 0) and time.monotonic() < deadline:
            if self.processor_loop.paused.is_set():
                break
            time.sleep(0.01)
        self.processor_loop.running = False
        self.appender.running = False
        self.inbound.notify()
        for thread in self._threads:
            thread.join(timeout=10)
        self._threads.clear()
        if self._sink is not None and self._sink_started:
            self._sink.stop()
            self._sink_started = False

    def close(self) -> None:
        self.db.close()

    def pause(self) -> None:
        """Stop processing (appends still land in the log); for maintenance and tests."""
        self.processor_loop.paused.set()

    def resume(self) -> None:
        self.processor_loop.paused.clear()
        self.inbound.notify()

    @property
    def sink(self) -> Sink | None:
        return self._sink

    # -- appends (steps 3-5: appender.py) ----------------------------------------------------

    async def append(self, records: list[tuple[str, bytes]]) -> list[Position]:
        return await self.appender.append(records)

    def append_sync(self, records: list[tuple[str, bytes]]) -> list[Position]:
        """Append from a non-async caller (the CLI, tests); same durability."""
        return self.appender.append_sync(records)

    async def broadcast(self, key: str, value: bytes) -> list[Position]:
        """Append one record to every partition (a control record, e.g. a segment barrier)."""
        return await self.appender.broadcast(key, value)

    def commit_external(self, puts: list[tuple[str, bytes, bytes | None]], emits: list[Emit]) -> None:
        """One synced write of state outside the processor (delivery) and the records it emits."""
        with self.inbound.lock:
            commit = Commit(self.inbound, self.outbox)
            for family, key, value in puts:
                commit.put(family, key, value)
            commit.route(emits)
            commit.write()
        self.outbox.wakeup.set()
        self.inbound.notify()

    async def wait_sink(self, timeout: float) -> bool:
        """Wait until ClickHouse holds every analytics row emitted so far (at once without a sink)."""
        target = self.outbox.next
        deadline = time.monotonic() + timeout
        self.outbox.wakeup.set()
        while time.monotonic() < deadline:
            if self._sink is None or self._sink.offset >= target:
                return True
            await asyncio.sleep(0.02)
        return False

    async def wait_processed(self, positions: list[Position], timeout: float) -> bool:
        deadline = time.monotonic() + timeout
        while not all(self.inbound.committed[p.partition] > p.offset for p in positions):
            if time.monotonic() >= deadline:
                return False
            await asyncio.sleep(0.005)
        return True

    def topic_records(self, topic: str, start: int = 0) -> Iterator[tuple[int, bytes]]:
        """Records of a retained topic from sequence ``start`` (what its consumer reads)."""
        return self.outbox.topic_records(topic, start)

    # -- reads, lag, health, stats ---------------------------------------------------------------

    def read(self, table: str, key: str) -> bytes | None:
        value = self.db.cf(TABLE_PREFIX + table).get(key.encode())
        return None if value is None else bytes(value)

    def scan(self, table: str, prefix: str, after: str | None = None) -> Iterator[tuple[str, bytes]]:
        return self.db.scan_prefix(TABLE_PREFIX + table, prefix, after)

    def processing_lag(self) -> int:
        return self.inbound.lag()

    def partition_lag(self) -> list[int]:
        return self.inbound.partition_lag()

    def sink_lag(self) -> int:
        if self._sink is None:
            return 0
        return max(0, self.outbox.next - self._sink.offset)

    def delivery_lag(self) -> int:
        """Sends on the ``sends`` topic the delivery loop has not settled yet (their finals written)."""
        if self.delivery is None:
            return 0
        return max(0, self.outbox.topic_next(topics.SENDS) - self.delivery.offset)

    def timers_pending(self) -> int:
        return self.timers.pending()

    def health(self) -> Health:
        detail: dict[str, str] = {}
        log_ok = self.appender.accepting and not self.db.closed and self._thread_alive(APPENDER)
        state_ok = not self.db.closed and self._thread_alive(PROCESSOR) and self.last_error is None
        if not log_ok:
            detail["log"] = "not accepting writes"
        if not state_ok:
            detail["state"] = self.last_error or "processor not running"
        return Health(log=log_ok, state=state_ok, detail=detail)

    def stats(self) -> dict[str, float]:
        return {
            "processing_lag_records": self.processing_lag(),
            "sink_lag_records": self.sink_lag(),
            "delivery_lag_records": self.delivery_lag(),
            "timers_pending": self.timers_pending(),
            "processed_records": self.processed_total,
            "dead_lettered_records": self.dead_lettered_total,
            "clickhouse_rows_written": self._sink.rows_written if self._sink is not None else 0,
        }

    def _thread_alive(self, name: str) -> bool:
        return any(t.name == name and t.is_alive() for t in self._threads)

    # What the processor loop counts, read by stats, health and tests.
    @property
    def processed_total(self) -> int:
        return self.processor_loop.processed_total

    @property
    def dead_lettered_total(self) -> int:
        return self.processor_loop.dead_lettered_total

    @property
    def last_error(self) -> str | None:
        return self.processor_loop.last_error

    # The log's offsets and the processor's wake-up, read by tests and tools.
    @property
    def committed(self) -> list[int]:
        return self.inbound.committed

    @property
    def next_offset(self) -> list[int]:
        return self.inbound.next_offset

    @property
    def outbox_next(self) -> int:
        return self.outbox.next

    @property
    def wakeup(self) -> threading.Condition:
        return self.inbound.wakeup

    # -- definitions -------------------------------------------------------------------------

    def put_definitions(self, items: list[tuple[str, bytes | None]], outbox: list[bytes]) -> None:
        with self.inbound.lock:
            commit = Commit(self.inbound, self.outbox)
            for key, value in items:
                commit.put(DEFINITIONS, key.encode(), value)
            commit.route([(topics.ANALYTICS, "", v) for v in outbox])
            commit.write()
        self.outbox.wakeup.set()

    def scan_definitions(self, prefix: str) -> Iterator[tuple[str, bytes]]:
        return self.db.scan_prefix(DEFINITIONS, prefix)

    def on_definition(self, listener: Callable[[str, bytes | None], None]) -> None:
        """Only this process writes these definitions: ``listener`` is never called."""

    # -- the data dir ----------------------------------------------------------------------------

    def _check_partitions(self) -> None:
        """The partition count is fixed when the data dir is created: keys hash onto it."""
        stored = self.db.cf(META).get(PARTITIONS)
        if stored is None:
            batch = self.db.batch()
            batch.put(PARTITIONS, U64.pack(self.partitions), self.db.handle(META))
            self.db.write(batch)
        elif (found := int(U64.unpack(bytes(stored))[0])) != self.partitions:
            self.db.close()
            raise SpotzeeError(
                f"this data dir was created with {found} partitions; start it with --partitions {found} "
                f"(SPOTZEE_PARTITIONS), not {self.partitions}"
            )

    def epoch(self) -> str:
        """A random id of this data dir's sequences, made once (the sink's dedupe tokens use it)."""
        stored = self.db.cf(META).get(EPOCH)
        if stored is not None:
            return bytes(stored).decode()
        value = uuid.uuid4().hex
        batch = self.db.batch()
        batch.put(EPOCH, value.encode(), self.db.handle(META))
        self.db.write(batch)
        return value

    def _sink_loop(self, clickhouse: ClickHouse) -> SinkLoop:
        return SinkLoop(
            self.db,
            AnalyticsSink(clickhouse, epoch=self.epoch()),
            batch_rows=self.settings.sink_batch_rows,
            flush_interval=self.settings.sink_flush_interval,
            wakeup=self.outbox.wakeup,
        )
