"""An in-memory ``Context`` for running processors in tests and tools, without a runtime.

Emitted ``events`` records are queued and delivered by ``drain`` (as a runtime would route them
to their partitions); other topics are collected per topic. Timers fire on ``drain`` once the
clock has passed them.
"""

from __future__ import annotations

import heapq
from collections import defaultdict, deque
from collections.abc import Iterator
from datetime import datetime

from spotzee.streams import topics
from spotzee.streams.interface import Clock, Processor


class MemoryTable:
    def __init__(self) -> None:
        self.data: dict[str, bytes] = {}

    def get(self, key: str) -> bytes | None:
        return self.data.get(key)

    def set(self, key: str, value: bytes) -> None:
        self.data[key] = value

    def delete(self, key: str) -> None:
        self.data.pop(key, None)

    def scan_prefix(self, prefix: str) -> Iterator[tuple[str, bytes]]:
        for key in sorted(self.data):
            if key.startswith(prefix):
                yield key, self.data[key]


class MemoryContext:
    def __init__(self, processor: Processor, clock: Clock) -> None:
        self.processor = processor
        self._clock = clock
        self.tables = {name: MemoryTable() for name in processor.tables}
        self.queue: deque[tuple[str, bytes]] = deque()
        self.outputs: dict[str, list[tuple[str, bytes]]] = defaultdict(list)
        self.timers: dict[str, tuple[datetime, str, str, bytes]] = {}
        self._due: list[tuple[datetime, int, str]] = []  # heap; stale entries skipped when popped
        self._seq = 0

    @property
    def clock(self) -> Clock:
        return self._clock

    def table(self, name: str) -> MemoryTable:
        return self.tables[name]

    def emit(self, topic: str, key: str, value: bytes) -> None:
        if topic == self.processor.topic:
            self.queue.append((key, value))
        else:
            self.outputs[topic].append((key, value))

    def schedule(
        self, timer_id: str, at: datetime, topic: str, key: str, value: bytes, *, keep_existing: bool = False
    ) -> None:
        if keep_existing and timer_id in self.timers:
            return
        self.timers[timer_id] = (at, topic, key, value)
        self._seq += 1
        heapq.heappush(self._due, (at, self._seq, timer_id))

    def cancel(self, timer_id: str) -> None:
        self.timers.pop(timer_id, None)

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
        while self.queue:
            key, value = self.queue.popleft()
            self.processor.process(self, key, value)

    def emitted(self, topic: str = topics.ANALYTICS) -> list[bytes]:
        return [value for _, value in self.outputs[topic]]
