"""The embedded runtime: durable inbound log, partitioned processing, timers and the outbox.

Threads:
- the appender group-commits API appends into the log (one fsync for many requests);
- the processor runs each partition's backlog through the processor in batches, committing
  state + offset + emitted records + timers in one synced RocksDB write batch, and fires due
  timers (in the same thread, so timers never race the state they belong to);
- the sink (runtime/sink_loop.py) drains the outbox into ClickHouse.
A crash at any point leaves either the whole batch or none of it: nothing lost, nothing twice.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import logging
import queue
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from datetime import datetime

from rocksdict import WriteBatch

from spotzee.errors import LogUnavailable, Overloaded, SpotzeeError
from spotzee.runtime.base import Health, Position
from spotzee.schemas.analytics import DeadLetterRow
from spotzee.settings import Settings
from spotzee.streams import topics
from spotzee.streams.interface import Clock, Processor
from spotzee.streams.record_codec import dumps
from spotzee.tables.overlay import BatchContext
from spotzee.tables.rocksdb_store import (
    DEFINITIONS,
    LOG,
    LOG_KEY,
    META,
    OUTBOX,
    TABLE_PREFIX,
    TIMER_INDEX,
    TIMERS,
    TOPICS,
    U16,
    U64,
    RocksDB,
    decode_log_value,
    decode_timer_value,
    encode_log_value,
    encode_timer_value,
)

log = logging.getLogger(__name__)

OUTBOX_NEXT = b"outbox_next"
PARTITIONS = b"partitions"
EPOCH = b"epoch"
APPEND_BATCH_MAX = 20_000


def _committed_key(partition: int) -> bytes:
    return b"committed/%d" % partition


def _ms(at: datetime) -> int:
    return int(at.timestamp() * 1000)


class EmbeddedRuntime:
    def __init__(self, settings: Settings, processor: Processor, clock: Clock) -> None:
        self.settings = settings
        self.processor = processor
        self.clock = clock
        self.partitions = settings.partitions
        self.db = RocksDB(settings.data_dir / "rocksdb", processor.tables)
        self._check_partitions()
        self.commit_lock = threading.Lock()
        self.committed = [self.db.get_u64(_committed_key(p)) for p in range(self.partitions)]
        self.next_offset = [self._recover_next_offset(p) for p in range(self.partitions)]
        self.outbox_next = self.db.get_u64(OUTBOX_NEXT)
        self.topic_next: dict[str, int] = {}
        self.wakeup = threading.Condition()
        self.outbox_wakeup = threading.Event()
        self._appends: queue.Queue[tuple[list[tuple[str, bytes]], concurrent.futures.Future[list[Position]]]] = (
            queue.Queue()
        )
        self._accepting = False
        self._running = False
        self._paused = threading.Event()
        self._threads: list[threading.Thread] = []
        self.processed_total = 0
        self.dead_lettered_total = 0
        self.last_error: str | None = None
        self.sink_offset_reader: Callable[[], int] | None = None

    # -- lifecycle -------------------------------------------------------------------------

    def start(self) -> None:
        self._running = True
        self._accepting = True
        for target, name in ((self._append_loop, "spotzee-appender"), (self._process_loop, "spotzee-processor")):
            thread = threading.Thread(target=target, name=name, daemon=True)
            thread.start()
            self._threads.append(thread)

    def stop_accepting(self) -> None:
        """The first step of a graceful stop: appends answer LogUnavailable (HTTP 503) from now on."""
        self._accepting = False

    def stop(self, drain_timeout: float = 30.0) -> None:
        """Graceful: refuse new appends, finish pending appends, process the backlog, stop."""
        self.stop_accepting()
        deadline = time.monotonic() + drain_timeout
        while (not self._appends.empty() or self.processing_lag() > 0) and time.monotonic() < deadline:
            if self._paused.is_set():
                break
            time.sleep(0.01)
        self._running = False
        with self.wakeup:
            self.wakeup.notify_all()
        for thread in self._threads:
            thread.join(timeout=10)
        self._threads.clear()

    def close(self) -> None:
        self.db.close()

    def pause(self) -> None:
        """Stop processing (appends still land in the log); for maintenance and tests."""
        self._paused.set()

    def resume(self) -> None:
        self._paused.clear()
        with self.wakeup:
            self.wakeup.notify_all()

    # -- appends ---------------------------------------------------------------------------

    async def append(self, records: list[tuple[str, bytes]]) -> list[Position]:
        if not self._accepting or self.db.closed:
            raise LogUnavailable("the log is not accepting writes")
        if self.processing_lag() + len(records) > self.settings.inbound_max_backlog:
            raise Overloaded(
                f"inbound backlog over {self.settings.inbound_max_backlog} records",
                retry_after=self.settings.retry_after_seconds,
            )
        future: concurrent.futures.Future[list[Position]] = concurrent.futures.Future()
        self._appends.put((records, future))
        return await asyncio.wrap_future(future)

    def append_sync(self, records: list[tuple[str, bytes]]) -> list[Position]:
        """Append from a non-async caller (the CLI, tests); same durability."""
        with self.commit_lock:
            return self._write_log(records)

    def _append_loop(self) -> None:
        while self._running or not self._appends.empty():
            try:
                first = self._appends.get(timeout=0.05)
            except queue.Empty:
                continue
            group = [first]
            size = len(first[0])
            while size < APPEND_BATCH_MAX:
                try:
                    item = self._appends.get_nowait()
                except queue.Empty:
                    break
                group.append(item)
                size += len(item[0])
            try:
                with self.commit_lock:
                    positions = self._write_log([r for records, _ in group for r in records])
            except SpotzeeError as exc:
                for _, future in group:
                    future.set_exception(exc)
                continue
            except Exception as exc:  # map anything from RocksDB to the log being unavailable
                for _, future in group:
                    future.set_exception(LogUnavailable(str(exc)))
                continue
            start = 0
            for records, future in group:
                future.set_result(positions[start : start + len(records)])
                start += len(records)
            with self.wakeup:
                self.wakeup.notify_all()

    def _write_log(self, records: list[tuple[str, bytes]]) -> list[Position]:
        """Must hold commit_lock."""
        batch = self.db.batch()
        handle = self.db.handle(LOG)
        next_offset = list(self.next_offset)
        positions = []
        for key, value in records:
            partition = topics.partition_for(key, self.partitions)
            offset = next_offset[partition]
            next_offset[partition] += 1
            batch.put(LOG_KEY.pack(partition, offset), encode_log_value(key, value), handle)
            positions.append(Position(partition, offset))
        self.db.write(batch)
        self.next_offset = next_offset
        return positions

    def commit_external(self, puts: list[tuple[str, bytes, bytes | None]], emits: list[tuple[str, str, bytes]]) -> None:
        """One synced write of state outside the processor (delivery) and the records it emits."""
        with self.commit_lock:
            batch = self.db.batch()
            for family, key, value in puts:
                self.db.stage(batch, family, key, value)
            next_offset, outbox_next = self._stage_emits(batch, emits)
            self.db.write(batch)
            self.next_offset, self.outbox_next = next_offset, outbox_next
        self.outbox_wakeup.set()
        with self.wakeup:
            self.wakeup.notify_all()

    async def broadcast(self, key: str, value: bytes) -> list[Position]:
        """Append one record to every partition (a control record, e.g. a segment barrier)."""
        if not self._accepting or self.db.closed:
            raise LogUnavailable("the log is not accepting writes")

        def write() -> list[Position]:
            with self.commit_lock:
                batch = self.db.batch()
                positions = []
                for partition in range(self.partitions):
                    offset = self.next_offset[partition]
                    batch.put(LOG_KEY.pack(partition, offset), encode_log_value(key, value), self.db.handle(LOG))
                    positions.append(Position(partition, offset))
                self.db.write(batch)
                self.next_offset = [n + 1 for n in self.next_offset]
            with self.wakeup:
                self.wakeup.notify_all()
            return positions

        return await asyncio.to_thread(write)

    async def wait_sink(self, timeout: float) -> bool:
        """Wait until ClickHouse holds every analytics row emitted so far."""
        target = self.outbox_next
        deadline = time.monotonic() + timeout
        self.outbox_wakeup.set()
        while time.monotonic() < deadline:
            if self.sink_offset_reader is None or self.sink_offset_reader() >= target:
                return True
            await asyncio.sleep(0.02)
        return False

    async def wait_processed(self, positions: list[Position], timeout: float) -> bool:
        deadline = time.monotonic() + timeout
        while not all(self.committed[p.partition] > p.offset for p in positions):
            if time.monotonic() >= deadline:
                return False
            await asyncio.sleep(0.005)
        return True

    # -- processing ------------------------------------------------------------------------

    def _process_loop(self) -> None:
        while self._running:
            if self._paused.is_set():
                with self.wakeup:
                    self.wakeup.wait(timeout=0.05)
                continue
            worked = False
            try:
                for partition in range(self.partitions):
                    if self.committed[partition] < self.next_offset[partition]:
                        self._process_partition(partition)
                        worked = True
                worked = self._fire_timers() or worked
                self.last_error = None
            except Exception as exc:  # a commit failed (disk): keep the offset, retry later
                self.last_error = str(exc)
                log.exception("processing failed; retrying")
                time.sleep(0.5)
            if not worked:
                with self.wakeup:
                    self.wakeup.wait(timeout=0.05)

    def _read_log(self, partition: int, start: int, limit: int) -> list[tuple[int, str, bytes]]:
        out: list[tuple[int, str, bytes]] = []
        it = self.db.cf(LOG).iter()
        it.seek(LOG_KEY.pack(partition, start))
        while it.valid() and len(out) < limit:
            p, offset = LOG_KEY.unpack(bytes(it.key()))
            if p != partition:
                break
            key, value = decode_log_value(bytes(it.value()))
            out.append((offset, key, value))
            it.next()
        return out

    def _process_partition(self, partition: int) -> None:
        start = self.committed[partition]
        records = self._read_log(partition, start, self.settings.process_batch_size)
        if not records:
            return
        ctx = BatchContext(self.db, self.processor.tables, self.clock)
        dead = 0
        for offset, key, value in records:
            try:
                self.processor.process(ctx, key, value)
                ctx.commit_record()
            except Exception as exc:
                ctx.rollback_record()
                dead += 1
                self._dead_letter(ctx, partition, offset, key, value, exc)
                ctx.commit_record()
        last = records[-1][0]
        with self.commit_lock:
            batch = self.db.batch()
            for name, table in ctx.tables.items():
                for k, v in table.batch.items():
                    self.db.stage(batch, TABLE_PREFIX + name, k.encode(), v)
            batch.delete_range(LOG_KEY.pack(partition, start), LOG_KEY.pack(partition, last + 1), self.db.handle(LOG))
            batch.put(_committed_key(partition), U64.pack(last + 1), self.db.handle(META))
            next_offset, outbox_next = self._stage_emits(batch, ctx.batch.emits)
            self._stage_timers(batch, ctx)
            self.db.write(batch)
            self.next_offset = next_offset
            self.outbox_next = outbox_next
            self.committed[partition] = last + 1
        self.processed_total += len(records)
        self.dead_lettered_total += dead
        self.outbox_wakeup.set()

    def _dead_letter(
        self, ctx: BatchContext, partition: int, offset: int, key: str, value: bytes, exc: Exception
    ) -> None:
        log.warning("record %s/%d (key %s) dead-lettered: %s", partition, offset, key, exc)
        row = DeadLetterRow(
            project_id=key.split(":", 1)[0],
            dead_letter_id=f"{topics.EVENTS}/{partition}/{offset}/{self.committed[partition]}",
            topic=topics.EVENTS,
            partition=partition,
            offset=offset,
            key=key,
            error=f"{type(exc).__name__}: {exc}"[:2000],
            payload=value.decode(errors="replace"),
            at=self.clock.now(),
        )
        ctx.emit(topics.DEAD_LETTER, key, dumps(row))

    def _stage_emits(self, batch: WriteBatch, emits: list[tuple[str, str, bytes]]) -> tuple[list[int], int]:
        """Must hold commit_lock. Routes emitted records: events -> log, analytics -> outbox."""
        next_offset = list(self.next_offset)
        outbox_next = self.outbox_next
        log_handle, outbox_handle = self.db.handle(LOG), self.db.handle(OUTBOX)
        for topic, key, value in emits:
            if topic == topics.EVENTS:
                partition = topics.partition_for(key, self.partitions)
                batch.put(LOG_KEY.pack(partition, next_offset[partition]), encode_log_value(key, value), log_handle)
                next_offset[partition] += 1
            elif topic in (topics.ANALYTICS, topics.DEAD_LETTER):
                batch.put(U64.pack(outbox_next), value, outbox_handle)
                outbox_next += 1
            elif topic in (topics.SEGMENT_CHANGES, topics.JOURNEY_ADVANCE, topics.SENDS):
                self._stage_topic_record(batch, topic, value)
            else:
                raise SpotzeeError(f"topic {topic!r} is not bound in the embedded runtime")
        if outbox_next != self.outbox_next:
            batch.put(OUTBOX_NEXT, U64.pack(outbox_next), self.db.handle(META))
        return next_offset, outbox_next

    def _stage_topic_record(self, batch: WriteBatch, topic: str, value: bytes) -> None:
        """Must hold commit_lock. Appends to a retained topic (``TOPICS``): the last
        ``topic_retention_records`` records stay for its consumers; older ones are trimmed."""
        seq = self.topic_next.get(topic)
        if seq is None:
            seq = self.db.get_u64(b"topic_next/" + topic.encode())
        prefix = U16.pack(len(topic)) + topic.encode()
        handle = self.db.handle(TOPICS)
        batch.put(prefix + U64.pack(seq), value, handle)
        retention = self.settings.topic_retention_records
        if seq >= retention and seq % 1000 == 0:
            batch.delete_range(prefix + U64.pack(0), prefix + U64.pack(seq - retention + 1), handle)
        self.topic_next[topic] = seq + 1
        batch.put(b"topic_next/" + topic.encode(), U64.pack(seq + 1), self.db.handle(META))

    def topic_records(self, topic: str, start: int = 0) -> Iterator[tuple[int, bytes]]:
        """Records of a retained topic from sequence ``start`` (what a future consumer reads)."""
        prefix = U16.pack(len(topic)) + topic.encode()
        it = self.db.cf(TOPICS).iter()
        it.seek(prefix + U64.pack(start))
        while it.valid():
            key = bytes(it.key())
            if not key.startswith(prefix):
                break
            yield U64.unpack_from(key, len(prefix))[0], bytes(it.value())
            it.next()

    def _stage_timers(self, batch: WriteBatch, ctx: BatchContext) -> None:
        timers, index = self.db.handle(TIMERS), self.db.handle(TIMER_INDEX)
        pending: dict[str, bytes | None] = {}
        for op in ctx.batch.timers:
            old = (
                pending.get(op.timer_id)
                if op.timer_id in pending
                else self.db.cf(TIMER_INDEX).get(op.timer_id.encode())
            )
            if old is not None:
                batch.delete(bytes(old), timers)
            if op.at is None:
                batch.delete(op.timer_id.encode(), index)
                pending[op.timer_id] = None
                continue
            due_key = U64.pack(_ms(op.at)) + op.timer_id.encode()
            batch.put(due_key, encode_timer_value(op.topic, op.key, op.value), timers)
            batch.put(op.timer_id.encode(), due_key, index)
            pending[op.timer_id] = due_key

    def _fire_timers(self, limit: int = 5000) -> bool:
        """Deliver due timers to their topics; delete them in the same write batch."""
        now_ms = _ms(self.clock.now())
        due: list[tuple[bytes, str, str, bytes]] = []
        it = self.db.cf(TIMERS).iter()
        it.seek_to_first()
        while it.valid() and len(due) < limit:
            raw_key = bytes(it.key())
            if U64.unpack_from(raw_key)[0] > now_ms:
                break
            topic, key, value = decode_timer_value(bytes(it.value()))
            due.append((raw_key, topic, key, value))
            it.next()
        if not due:
            return False
        with self.commit_lock:
            batch = self.db.batch()
            for raw_key, _, _, _ in due:
                batch.delete(raw_key, self.db.handle(TIMERS))
                batch.delete(raw_key[8:], self.db.handle(TIMER_INDEX))
            next_offset, outbox_next = self._stage_emits(batch, [(t, k, v) for _, t, k, v in due])
            self.db.write(batch)
            self.next_offset, self.outbox_next = next_offset, outbox_next
        return True

    # -- reads, lag, health ----------------------------------------------------------------

    def read(self, table: str, key: str) -> bytes | None:
        value = self.db.cf(TABLE_PREFIX + table).get(key.encode())
        return None if value is None else bytes(value)

    def scan(self, table: str, prefix: str, after: str | None = None) -> Iterator[tuple[str, bytes]]:
        return self.db.scan_prefix(TABLE_PREFIX + table, prefix, after)

    def processing_lag(self) -> int:
        return sum(n - c for n, c in zip(self.next_offset, self.committed, strict=True))

    def partition_lag(self) -> list[int]:
        return [n - c for n, c in zip(self.next_offset, self.committed, strict=True)]

    def sink_lag(self) -> int:
        if self.sink_offset_reader is None:
            return 0
        return max(0, self.outbox_next - self.sink_offset_reader())

    def timers_pending(self) -> int:
        it, count = self.db.cf(TIMER_INDEX).iter(), 0
        it.seek_to_first()
        while it.valid():
            count += 1
            it.next()
        return count

    def health(self) -> Health:
        detail: dict[str, str] = {}
        log_ok = (
            self._accepting
            and not self.db.closed
            and any(t.name == "spotzee-appender" and t.is_alive() for t in self._threads)
        )
        state_ok = (
            not self.db.closed
            and any(t.name == "spotzee-processor" and t.is_alive() for t in self._threads)
            and self.last_error is None
        )
        if not log_ok:
            detail["log"] = "not accepting writes"
        if not state_ok:
            detail["state"] = self.last_error or "processor not running"
        return Health(log=log_ok, state=state_ok, detail=detail)

    # -- definitions -------------------------------------------------------------------------

    def put_definitions(self, items: list[tuple[str, bytes | None]], outbox: list[bytes]) -> None:
        with self.commit_lock:
            batch = self.db.batch()
            for key, value in items:
                self.db.stage(batch, DEFINITIONS, key.encode(), value)
            _, outbox_next = self._stage_emits(batch, [(topics.ANALYTICS, "", v) for v in outbox])
            self.db.write(batch)
            self.outbox_next = outbox_next
        self.outbox_wakeup.set()

    def scan_definitions(self, prefix: str) -> Iterator[tuple[str, bytes]]:
        return self.db.scan_prefix(DEFINITIONS, prefix)

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

    def _recover_next_offset(self, partition: int) -> int:
        it = self.db.cf(LOG).iter()
        it.seek_for_prev(LOG_KEY.pack(partition, 2**64 - 1))
        if it.valid():
            p, offset = LOG_KEY.unpack(bytes(it.key()))
            if p == partition:
                return int(offset) + 1
        return self.committed[partition]
