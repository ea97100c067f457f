"""A topic's records, in the batches faust's consumer fetched them, to one handler task per partition.

faust keeps the consumer group (subscription, rebalances, the assignment signals), the fetching and the
timers; its per-record machinery for the feed's topic (a Message and an Event per record, channel queues,
acks, a codec call per value) is bypassed: the consumer hands each fetched record map to the app's
scheduler (``scheduler()``), which gives the feed's topic's record lists to ``take`` and the rest to
faust. One task per owned partition hands the records held, in offset order, to ``handle`` in batches of
up to ``batch_size``; ``handle`` returns the next offset it made durable (or None), and the consumer
group's committed offsets are those offsets: never ahead of what was handled. A partition holding
``high`` records is paused until it is down to one batch. A failed batch is put back and retried after
``RETRY_DELAY_S``.

Two feeds: the processor's events feed (``agents/worker.py``: the Engine applies each batch) and the
analytics sink's (``runtime/kafka/sink_app.py``: each batch is written to ClickHouse).
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable, Callable, Iterator, Mapping
from typing import Any, TypeAlias, cast

import faust
from aiokafka import ConsumerRecord
from faust.transport.consumer import Consumer as FaustConsumer
from faust.transport.utils import DefaultSchedulingStrategy
from faust.types import TP

log = logging.getLogger(__name__)

HIGH_WATER_BATCHES = 4  # a partition holding this many batches of records is paused ...
HIGH_WATER_RECORDS = 5000  # ... or at least this many records
RETRY_DELAY_S = 1.0
STOP_TIMEOUT_S = 30.0

Record: TypeAlias = "ConsumerRecord[bytes, bytes]"
Handler: TypeAlias = Callable[[int, list[Record]], Awaitable[int | None]]


class RecordsFeed:
    """Fetched records of ``topic`` to ``handle(partition, records) -> next durable offset | None``.

    ``linger``: seconds a partition's records may wait for more before a batch smaller than
    ``batch_size`` is handed over (0: at once). A batch is handed over as soon as a full one is held;
    while a batch is being handled, what is fetched meanwhile waits and goes together next."""

    def __init__(self, topic: str, batch_size: int, handle: Handler | None = None, *, linger: float = 0.0) -> None:
        self.topic = topic
        self.batch_size = batch_size
        self.linger = linger
        self.high = max(HIGH_WATER_BATCHES * batch_size, HIGH_WATER_RECORDS)
        self.pending: dict[int, list[Record]] = {}
        self.owned: set[int] = set()
        self.applied: dict[int, int] = {}  # partition -> next offset made durable, not committed yet
        self.paused: set[int] = set()
        self.stopping = False
        self._handle = handle
        self._since: dict[int, float] = {}  # partition -> when its oldest held record arrived
        self._busy: dict[int, asyncio.Lock] = {}  # held while a partition's batch is being handled
        self._wakeups: dict[int, asyncio.Event] = {}
        self._tasks: dict[int, asyncio.Task[None]] = {}
        self._app: faust.App | None = None

    def bind(self, app: faust.App, handle: Handler | None = None) -> None:
        self._app = app
        if handle is not None:
            self._handle = handle

    @property
    def app(self) -> faust.App:
        if self._app is None:
            raise RuntimeError("feed not bound to an app")
        return self._app

    def scheduler(self) -> type[DefaultSchedulingStrategy]:
        """faust's consumer scheduler class for the app: the feed's topic's records go to ``take``."""
        feed = self

        class RecordsToFeed(DefaultSchedulingStrategy):
            def iterate(self, records: Mapping[TP, list[Any]]) -> Iterator[tuple[TP, Any]]:
                return super().iterate(feed.take(records))

        return RecordsToFeed

    # -- from the consumer -------------------------------------------------------------------------

    def take(self, records: Mapping[TP, list[Any]]) -> Mapping[TP, list[Any]]:
        """Keep the feed's topic's records of a fetch (per partition, in order); the rest for faust."""
        rest: dict[TP, list[Any]] = {}
        for tp, batch in records.items():
            if tp.topic != self.topic:
                rest[tp] = batch
                continue
            pending = self.pending.setdefault(tp.partition, [])
            if not pending:
                self._since[tp.partition] = time.monotonic()
            pending.extend(batch)
            if len(pending) >= self.high and tp.partition not in self.paused:
                self.paused.add(tp.partition)
                self.app.consumer.pause_partitions([TP(self.topic, tp.partition)])
            self._wake(tp.partition)
        return rest

    # -- assignment (faust's signals) -------------------------------------------------------------

    def assign(self, partitions: set[int]) -> None:
        """Records of these partitions are ours to handle; whatever is held for others is dropped."""
        for partition in set(self.pending) - partitions:
            self._drop(partition)
        self.owned = set(partitions)
        for partition in partitions:
            self._wake(partition)

    def revoke(self, partitions: set[int]) -> None:
        """Stop handling these partitions: what is held is dropped (the next owner reads from the
        committed offsets); a batch in flight finishes (``settle`` waits for it)."""
        self.owned -= partitions
        for partition in partitions:
            self._drop(partition)

    async def settle(self, partitions: set[int]) -> None:
        """Wait until no batch of ``partitions`` is being handled."""
        for partition in partitions:
            busy = self._busy.get(partition)
            if busy is not None:
                async with busy:
                    pass

    def _drop(self, partition: int) -> None:
        self.pending.pop(partition, None)
        self.paused.discard(partition)  # faust pauses and resumes every partition around a rebalance

    # -- handling ------------------------------------------------------------------------------------

    def _wake(self, partition: int) -> None:
        wakeup = self._wakeups.setdefault(partition, asyncio.Event())
        task = self._tasks.get(partition)
        if (task is None or task.done()) and not self.stopping:
            self._tasks[partition] = asyncio.ensure_future(self._loop(partition, wakeup))
        wakeup.set()

    async def _loop(self, partition: int, wakeup: asyncio.Event) -> None:
        try:
            while not self.stopping:
                await wakeup.wait()
                wakeup.clear()
                while partition in self.owned and self.pending.get(partition) and not self.stopping:
                    if not await self._lingered(partition, wakeup):
                        continue
                    await self._handle_next(partition)
        except Exception:  # the next fetch or assignment of the partition starts another loop
            log.exception("%s partition %d: the feed's loop failed", self.topic, partition)

    async def _lingered(self, partition: int, wakeup: asyncio.Event) -> bool:
        """True once the partition holds a full batch or its oldest record waited ``linger``."""
        if self.linger <= 0 or len(self.pending.get(partition, ())) >= self.batch_size:
            return True
        left = self._since.get(partition, 0.0) + self.linger - time.monotonic()
        if left <= 0:
            return True
        try:
            await asyncio.wait_for(wakeup.wait(), timeout=left)
            wakeup.clear()
        except TimeoutError:
            pass
        return False  # check again: more may have come, or the partition was revoked

    async def _handle_next(self, partition: int) -> None:
        if self._handle is None:
            raise RuntimeError("feed has no handler")
        pending = self.pending[partition]
        batch = pending[: self.batch_size]
        del pending[: self.batch_size]
        self._since[partition] = time.monotonic()
        if partition in self.paused and len(pending) <= self.batch_size:
            self.paused.discard(partition)
            self.app.consumer.resume_partitions([TP(self.topic, partition)])
        busy = self._busy.setdefault(partition, asyncio.Lock())
        async with busy:
            try:
                # ``owned`` was checked with no await since: a revoked partition is never handled here.
                durable = await self._handle(partition, batch)
            except Exception:
                log.exception("%s partition %d: %d records failed; retrying", self.topic, partition, len(batch))
                if partition in self.owned:
                    self.pending.setdefault(partition, [])[:0] = batch
                await asyncio.sleep(RETRY_DELAY_S)
                return
        if durable is not None:
            self.applied[partition] = durable

    # -- consumer group offsets ------------------------------------------------------------------

    async def commit(self, partitions: set[int] | None = None) -> None:
        """Commit the offsets made durable since the last commit (of ``partitions``; default: those
        owned) as the consumer group's offsets. Skipped during a rebalance, except for the partitions
        being revoked (faust commits its own offsets there too)."""
        if partitions is None:
            if self.app.rebalancing:
                return
            partitions = self.owned
        offsets = {TP(self.topic, p): self.applied.pop(p) for p in list(self.applied) if p in partitions}
        if not offsets:
            return
        # faust's consumer commits a {TP: offset} map for the group (it skips partitions no longer
        # assigned); it has no public call for offsets other than its acked messages'.
        if not await cast(FaustConsumer, self.app.consumer)._commit(offsets):
            for tp, offset in offsets.items():  # not committed (a rebalance): the next commit tries again
                if tp.partition in self.owned:
                    self.applied.setdefault(tp.partition, offset)

    async def stop(self) -> None:
        """Let each partition's batch in flight finish, then commit what was made durable."""
        self.stopping = True
        for wakeup in self._wakeups.values():
            wakeup.set()
        tasks = list(self._tasks.values())
        if tasks:
            _, late = await asyncio.wait(tasks, timeout=STOP_TIMEOUT_S)
            for task in late:
                task.cancel()
        try:
            await self.commit(self.owned)
        except Exception as exc:  # stopping anyway: the next owner re-handles from the committed offsets
            log.warning("%s: final offset commit failed: %s", self.topic, exc)
