"""Test doubles for running processors and services without a runtime: for our tests and yours.

- ``ManualClock``: a clock that moves only when told to;
- ``MemoryContext``: a processor ``Context`` in memory (``send`` a record, ``drain`` what it caused);
- ``MemoryRuntime``: a ``runtime.base.Runtime`` in memory, appends processed at once.

Production code never imports this module.
"""

from __future__ import annotations

import heapq
from collections import defaultdict, deque
from collections.abc import Awaitable, Callable, Iterator
from datetime import UTC, datetime, timedelta

from spotzee.errors import LogUnavailable
from spotzee.runtime.runtime_protocol import DONE, Health, Position, Sink
from spotzee.streams import topics
from spotzee.streams.interface import Clock, Processor
from spotzee.tables.memory_store import MemoryTable

Timer = tuple[datetime, str, str, bytes]  # due, topic, key, value


class ManualClock:
    """A test clock that only moves when told to."""

    def __init__(self, start: datetime | None = None) -> None:
        self._now = start or datetime(2026, 1, 1, tzinfo=UTC)

    def now(self) -> datetime:
        return self._now

    def advance(self, delta: timedelta) -> None:
        self._now += delta

    def set(self, value: datetime) -> None:
        self._now = value


class MemoryContext:
    """An in-memory ``Context`` for running a processor in tests and tools, without a runtime.

    Records emitted to the processor's own topic are queued and delivered by ``drain`` (as a
    runtime would route them to their partitions); other topics are collected per topic
    (``outputs``, ``emitted``). Timers fire on ``drain`` once the clock has passed them.

    Writes, emits and timers apply at once. ``commit_record`` / ``rollback_record`` are the
    per-record savepoint of the runtimes' ``BatchContext``: a rollback undoes what was done since
    the last commit. ``drain`` commits after each record; a record that raises is not rolled back
    (the exception reaches the test, with the state as the record left it).
    """

    def __init__(self, processor: Processor, clock: Clock) -> None:
        self.processor = processor
        self._clock = clock
        self.tables = {name: MemoryTable() for name in processor.tables}
        self.queue: deque[tuple[str, bytes]] = deque()
        self.outputs: dict[str, list[tuple[str, bytes]]] = defaultdict(list)
        self.timers: dict[str, Timer] = {}
        self._due: list[tuple[datetime, int, str]] = []  # heap; stale entries skipped when popped
        self._seq = 0
        # Since the last commit: where each emit went (None: the queue), each timer's value before.
        self._emitted: list[str | None] = []
        self._timers_before: dict[str, Timer | None] = {}

    @property
    def clock(self) -> Clock:
        return self._clock

    def table(self, name: str) -> MemoryTable:
        return self.tables[name]

    def emit(self, topic: str, key: str, value: bytes) -> None:
        if topic == self.processor.topic:
            self.queue.append((key, value))
            self._emitted.append(None)
        else:
            self.outputs[topic].append((key, value))
            self._emitted.append(topic)

    def schedule(
        self, timer_id: str, at: datetime, topic: str, key: str, value: bytes, *, keep_existing: bool = False
    ) -> None:
        if keep_existing and timer_id in self.timers:
            return
        self._remember_timer(timer_id)
        self.timers[timer_id] = (at, topic, key, value)
        self._seq += 1
        heapq.heappush(self._due, (at, self._seq, timer_id))

    def cancel(self, timer_id: str) -> None:
        self._remember_timer(timer_id)
        self.timers.pop(timer_id, None)

    def commit_record(self) -> None:
        """Keep what was done since the last commit."""
        for table in self.tables.values():
            table.fold()
        self._emitted.clear()
        self._timers_before.clear()

    def rollback_record(self) -> None:
        """Undo the writes, emits and timer operations made since the last commit."""
        for table in self.tables.values():
            table.rollback()
        for topic in reversed(self._emitted):  # nothing is taken from the queue during a record
            if topic is None:
                self.queue.pop()
            else:
                self.outputs[topic].pop()
        for timer_id, before in self._timers_before.items():
            if before is None:
                self.timers.pop(timer_id, None)
            else:
                self.timers[timer_id] = before  # its heap entry (same due time) is still there
        self._emitted.clear()
        self._timers_before.clear()

    def send(self, key: str, value: bytes) -> None:
        """Deliver one input record, then everything it caused."""
        self.queue.append((key, value))
        self.drain()

    def drain(self) -> None:
        now = self._clock.now()
        fired: list[tuple[datetime, int, str]] = []
        while self._due and self._due[0][0] <= now:
            fired.append(heapq.heappop(self._due))
        for at, _, timer_id in fired:  # in due order, like the runtimes
            current = self.timers.get(timer_id)
            if current is None or current[0] != at:
                continue  # cancelled or rescheduled since
            del self.timers[timer_id]
            _, topic, key, value = current
            self.emit(topic, key, value)
        self.commit_record()
        while self.queue:
            key, value = self.queue.popleft()
            self.processor.process(self, key, value)
            self.commit_record()

    def emitted(self, topic: str = topics.ANALYTICS) -> list[bytes]:
        return [value for _, value in self.outputs[topic]]

    def _remember_timer(self, timer_id: str) -> None:
        if timer_id not in self._timers_before:
            self._timers_before[timer_id] = self.timers.get(timer_id)


class MemoryRuntime:
    """A ``Runtime`` in memory, for tests of code written against the runtime interface.

    An append runs its records through a ``MemoryContext`` (``ctx``) before it returns: no log,
    no threads, no lag; due timers fire on the next append or ``ctx.drain()``. Definitions are a
    dict; their audit rows join ``ctx.outputs["analytics"]``, as the runtimes put them in the
    analytics stream. Appends are refused (``LogUnavailable``) once ``stop`` was called. No
    analytics sink: ``wait_sink`` returns at once.
    """

    def __init__(self, processor: Processor, clock: Clock, partitions: int = 1) -> None:
        self.ctx = MemoryContext(processor, clock)
        self.partitions = partitions
        self.definitions: dict[str, bytes] = {}
        self.appended = 0
        self._next_offset = [0] * partitions
        self._accepting = True

    # -- lifecycle

    def start(self) -> Awaitable[None]:
        self._accepting = True
        return DONE

    def stop(self) -> None:
        self._accepting = False

    def close(self) -> None:
        """Nothing to release."""

    def health(self) -> Health:
        return Health(log=self._accepting, state=True, detail={} if self._accepting else {"log": "stopped"})

    def stats(self) -> dict[str, float]:
        return {
            "processing_lag_records": 0,
            "sink_lag_records": 0,
            "timers_pending": len(self.ctx.timers),
            "processed_records": self.appended,
            "dead_lettered_records": 0,
            "clickhouse_rows_written": 0,
        }

    @property
    def sink(self) -> Sink | None:
        return None

    # -- the log

    async def append(self, records: list[tuple[str, bytes]]) -> list[Position]:
        if not self._accepting:
            raise LogUnavailable("the log is not accepting writes")
        positions = []
        for key, value in records:
            positions.append(self._position(topics.partition_for(key, self.partitions)))
            self.ctx.send(key, value)
        self.appended += len(records)
        return positions

    async def broadcast(self, key: str, value: bytes) -> list[Position]:
        """One record per partition, as the runtimes do (all of them reach the one context)."""
        if not self._accepting:
            raise LogUnavailable("the log is not accepting writes")
        positions = []
        for partition in range(self.partitions):
            positions.append(self._position(partition))
            self.ctx.send(key, value)
        return positions

    async def wait_processed(self, positions: list[Position], timeout: float) -> bool:
        return True  # processed before the append returned

    async def wait_sink(self, timeout: float) -> bool:
        return True

    def processing_lag(self) -> int:
        return 0

    def sink_lag(self) -> int:
        return 0

    # -- state

    def read(self, table: str, key: str) -> bytes | None:
        return self.ctx.table(table).get(key)

    def scan(self, table: str, prefix: str, after: str | None = None) -> Iterator[tuple[str, bytes]]:
        return ((k, v) for k, v in self.ctx.table(table).scan_prefix(prefix) if after is None or k > after)

    # -- definitions

    def put_definitions(self, items: list[tuple[str, bytes | None]], outbox: list[bytes]) -> None:
        for key, value in items:
            if value is None:
                self.definitions.pop(key, None)
            else:
                self.definitions[key] = value
        self.ctx.outputs[topics.ANALYTICS].extend(("", row) for row in outbox)

    def scan_definitions(self, prefix: str) -> Iterator[tuple[str, bytes]]:
        return ((k, self.definitions[k]) for k in sorted(self.definitions) if k.startswith(prefix))

    def on_definition(self, listener: Callable[[str, bytes | None], None]) -> None:
        """No other process writes these definitions: ``listener`` is never called."""

    def _position(self, partition: int) -> Position:
        offset = self._next_offset[partition]
        self._next_offset[partition] += 1
        return Position(partition, offset)
