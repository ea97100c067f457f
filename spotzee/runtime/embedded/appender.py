"""Admission and the durable append: steps 3, 4 and 5 of docs/architecture.md.

Step 3: ``append`` refuses with ``LogUnavailable`` (503) when the runtime is not accepting and
with ``Overloaded`` (429) when the unprocessed backlog plus the request would exceed
``SPOTZEE_INBOUND_MAX_BACKLOG``; otherwise the request is queued and the handler awaits a future.
Step 4: the ``spotzee-appender`` thread takes the first queued request and every other one
already queued (until it holds ``APPEND_BATCH_MAX`` records) and writes all of them in one synced
write batch (group commit: one fsync for many requests, a request's records always together).
Step 5: the futures resolve once that write returned; the handler answers 2xx.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import queue

from spotzee.errors import LogUnavailable, Overloaded, SpotzeeError
from spotzee.runtime.embedded.commit import Commit
from spotzee.runtime.embedded.inbound_log import InboundLog
from spotzee.runtime.embedded.outbox import Outbox
from spotzee.runtime.runtime_protocol import Position
from spotzee.settings import Settings

APPEND_BATCH_MAX = 20_000

Request = tuple[list[tuple[str, bytes]], concurrent.futures.Future[list[Position]]]


class Appender:
    def __init__(self, inbound: InboundLog, outbox: Outbox, settings: Settings) -> None:
        self.inbound = inbound
        self.outbox = outbox
        self.settings = settings
        self.queue: queue.Queue[Request] = queue.Queue()
        self.accepting = False
        self.running = False

    def _check_open(self) -> None:
        if not self.accepting or self.inbound.db.closed:
            raise LogUnavailable("the log is not accepting writes")

    async def append(self, records: list[tuple[str, bytes]]) -> list[Position]:
        """Steps 3-5: admission, then wait until the appender thread has written the records."""
        self._check_open()
        if self.inbound.lag() + len(records) > self.settings.inbound_max_backlog:
            raise Overloaded(
                f"inbound backlog over {self.settings.inbound_max_backlog} records",
                retry_after=self.settings.retry_after_seconds,
            )
        future: concurrent.futures.Future[list[Position]] = concurrent.futures.Future()
        self.queue.put((records, future))
        return await asyncio.wrap_future(future)

    def append_sync(self, records: list[tuple[str, bytes]]) -> list[Position]:
        """Append from a non-async caller (the CLI, tests); same durability, no admission."""
        with self.inbound.lock:
            return self._write(records)

    async def broadcast(self, key: str, value: bytes) -> list[Position]:
        """Append one record to every partition (a control record, e.g. a segment barrier)."""
        self._check_open()

        def write() -> list[Position]:
            with self.inbound.lock:
                commit = Commit(self.inbound, self.outbox)
                positions = [commit.append(key, value, partition) for partition in range(self.inbound.partitions)]
                commit.write()
            self.inbound.notify()
            return positions

        return await asyncio.to_thread(write)

    def run(self) -> None:
        """The ``spotzee-appender`` thread (step 4): group commits until stopped and drained."""
        while self.running or not self.queue.empty():
            try:
                first = self.queue.get(timeout=0.05)
            except queue.Empty:
                continue
            self._commit_group(self._group(first))

    def _group(self, first: Request) -> list[Request]:
        """The first request and every one already queued, up to ``APPEND_BATCH_MAX`` records."""
        group = [first]
        size = len(first[0])
        while size < APPEND_BATCH_MAX:
            try:
                item = self.queue.get_nowait()
            except queue.Empty:
                break
            group.append(item)
            size += len(item[0])
        return group

    def _commit_group(self, group: list[Request]) -> None:
        try:
            with self.inbound.lock:
                positions = self._write([r for records, _ in group for r in records])
        except SpotzeeError as exc:
            for _, future in group:
                future.set_exception(exc)
            return
        except Exception as exc:  # map anything from RocksDB to the log being unavailable
            for _, future in group:
                future.set_exception(LogUnavailable(str(exc)))
            return
        start = 0
        for records, future in group:  # step 5: each request gets its own records' positions
            future.set_result(positions[start : start + len(records)])
            start += len(records)
        self.inbound.notify()

    def _write(self, records: list[tuple[str, bytes]]) -> list[Position]:
        """Must hold the log's lock."""
        commit = Commit(self.inbound, self.outbox)
        positions = [commit.append(key, value) for key, value in records]
        commit.write()
        return positions
