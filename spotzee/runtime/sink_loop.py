"""Drives the analytics sink from the embedded runtime's outbox, exactly once.

Before writing a range it records the range (``sink_inflight``) durably; after, it deletes the
range from the outbox and advances ``sink_offset`` in one write batch. After a crash the same
range is written again with the same tokens, so ClickHouse keeps one copy.
"""

from __future__ import annotations

import logging
import threading
import time

from spotzee.analytics.sink import AnalyticsSink, is_mutation
from spotzee.schemas.analytics_models import AnalyticsRecord, decode_analytics
from spotzee.tables.rocksdb_store import META, OUTBOX, U64, RocksDB

log = logging.getLogger(__name__)

SINK_OFFSET = b"sink_offset"
SINK_INFLIGHT = b"sink_inflight"


class SinkLoop:
    def __init__(
        self, db: RocksDB, sink: AnalyticsSink, *, batch_rows: int, flush_interval: float, wakeup: threading.Event
    ) -> None:
        self.db = db
        self.sink = sink
        self.batch_rows = batch_rows
        self.flush_interval = flush_interval
        self.wakeup = wakeup
        self.offset = db.get_u64(SINK_OFFSET)
        self._running = False
        self._thread: threading.Thread | None = None
        self.last_error: str | None = None
        self.last_flush_at = 0.0
        # Records read while the batch fills: each poll reads only what is new (a batch of tens of
        # thousands of records is not re-read every 50 ms while it waits for its flush interval).
        self._filling: list[tuple[int, bytes]] = []

    def start(self) -> None:
        self._recover()
        self._running = True
        self._thread = threading.Thread(target=self._loop, name="spotzee-sink", daemon=True)
        self._thread.start()

    def stop(self, drain_timeout: float = 30.0) -> None:
        deadline = time.monotonic() + drain_timeout
        while self.pending() > 0 and time.monotonic() < deadline and self.last_error is None:
            self.wakeup.set()
            time.sleep(0.02)
        self._running = False
        self.wakeup.set()
        if self._thread is not None:
            self._thread.join(timeout=30)

    @property
    def rows_written(self) -> int:
        return self.sink.rows_written

    def alive(self) -> bool:
        return self._thread is not None and self._thread.is_alive()

    def pending(self) -> int:
        it = self.db.cf(OUTBOX).iter()
        it.seek_to_last()
        if not it.valid():
            return 0
        return max(0, int(U64.unpack(bytes(it.key()))[0]) + 1 - self.offset)

    def _recover(self) -> None:
        raw = self.db.cf(META).get(SINK_INFLIGHT)
        if raw is None:
            return
        first, last = U64.unpack_from(raw, 0)[0], U64.unpack_from(raw, 8)[0]
        records = [r for r in self._read(first, last - first + 1) if r[0] <= last]
        log.info("re-writing in-flight analytics range %d..%d after restart", first, last)
        self.sink.write(records)
        self._commit(first, last)

    def _loop(self) -> None:
        waiting_since: float | None = None
        while self._running:
            try:
                raw = self._fill()
                if not raw:
                    waiting_since = None
                    self.wakeup.wait(timeout=0.1)
                    self.wakeup.clear()
                    continue
                now = time.monotonic()
                waiting_since = waiting_since or now
                full = len(raw) >= self.batch_rows or any(_is_mutation_raw(value) for _, value in raw)
                remaining = self.flush_interval - (now - waiting_since)
                if not full and remaining > 0 and self._running:
                    time.sleep(min(remaining, 0.05))  # let the batch fill; nothing is parsed meanwhile
                    continue
                written = self._write_range(self._cut(_decoded(raw)))
                del self._filling[:written]
                waiting_since = None
                self.last_error = None
            except Exception as exc:
                self.last_error = str(exc)
                log.exception("analytics sink failed; retrying")
                time.sleep(1.0)

    @staticmethod
    def _cut(records: list[tuple[int, AnalyticsRecord]]) -> list[tuple[int, AnalyticsRecord]]:
        """A range is rows up to the first mutation, or that mutation alone."""
        if is_mutation(records[0][1]):
            return records[:1]
        for i, (_, record) in enumerate(records):
            if is_mutation(record):
                return records[:i]
        return records

    def _fill(self) -> list[tuple[int, bytes]]:
        """The batch being filled, topped up from the outbox to ``batch_rows`` records."""
        filling = self._filling
        if len(filling) < self.batch_rows:
            start = filling[-1][0] + 1 if filling else self.offset
            filling += self._read_raw(start, self.batch_rows - len(filling))
        return filling

    def _write_range(self, records: list[tuple[int, AnalyticsRecord]]) -> int:
        """Write and commit one range; how many records it held."""
        first, last = records[0][0], records[-1][0]
        batch = self.db.batch()
        batch.put(SINK_INFLIGHT, U64.pack(first) + U64.pack(last), self.db.handle(META))
        self.db.write(batch)
        self.sink.write(records)
        self._commit(first, last)
        self.last_flush_at = time.time()
        return len(records)

    def _commit(self, first: int, last: int) -> None:
        batch = self.db.batch()
        batch.delete_range(U64.pack(first), U64.pack(last + 1), self.db.handle(OUTBOX))
        batch.put(SINK_OFFSET, U64.pack(last + 1), self.db.handle(META))
        batch.delete(SINK_INFLIGHT, self.db.handle(META))
        self.db.write(batch)
        self.offset = last + 1

    def _read(self, start: int, limit: int) -> list[tuple[int, AnalyticsRecord]]:
        return _decoded(self._read_raw(start, limit))

    def _read_raw(self, start: int, limit: int) -> list[tuple[int, bytes]]:
        out: list[tuple[int, bytes]] = []
        it = self.db.cf(OUTBOX).iter()
        it.seek(U64.pack(start))
        while it.valid() and len(out) < limit:
            out.append((int(U64.unpack(bytes(it.key()))[0]), bytes(it.value())))
            it.next()
        return out


def _decoded(raw: list[tuple[int, bytes]]) -> list[tuple[int, AnalyticsRecord]]:
    """msgspec decodes each record into its row Struct: Spotzee wrote them, nothing is re-validated.
    One call per record: a single decode of the batch joined into a JSON array measured ~40% slower."""
    decode = decode_analytics
    return [(seq, decode(value)) for seq, value in raw]


_MUTATION_PREFIXES = (b'{"type":"erase_history"',)


def _is_mutation_raw(value: bytes) -> bool:
    """Mutations are recognised without parsing: records are dumped with ``type`` first."""
    return value.startswith(_MUTATION_PREFIXES)
