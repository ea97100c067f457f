"""The inbound log (column family ``log``) and its offsets: what steps 4, 6, 8 and 10 share.

Steps of docs/architecture.md: the appender (step 4) and re-entry (step 10) put records at their
partition's next offset; the processor loop reads a partition from its committed offset (step 6)
and, in its commit, deletes what it processed and moves the committed offset (step 8).

``lock`` serialises every write that assigns log offsets or outbox sequence numbers; such a write
advances copies of the offsets (``commit.Commit``) that are kept only once it is written, so a
failed write moves nothing. ``wakeup`` is what the processor loop waits on between passes.
"""

from __future__ import annotations

import threading

from spotzee.tables.rocksdb_store import LOG, LOG_KEY, RocksDB, decode_log_value


def committed_key(partition: int) -> bytes:
    """The ``meta`` key of a partition's committed offset (the next offset to process)."""
    return b"committed/%d" % partition


class InboundLog:
    def __init__(self, db: RocksDB, partitions: int) -> None:
        self.db = db
        self.partitions = partitions
        self.lock = threading.Lock()
        self.wakeup = threading.Condition()
        self.committed = [db.get_u64(committed_key(p)) for p in range(partitions)]
        self.next_offset = [self._recover_next_offset(p) for p in range(partitions)]

    def notify(self) -> None:
        """Wake the processor loop: there are records (or timers) to look at."""
        with self.wakeup:
            self.wakeup.notify_all()

    def read(self, partition: int, start: int, limit: int) -> list[tuple[int, str, bytes]]:
        """Up to ``limit`` records ``(offset, key, value)`` of ``partition`` from offset ``start``."""
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

    def lag(self) -> int:
        """Records appended and not processed yet, over every partition."""
        return sum(self.partition_lag())

    def partition_lag(self) -> list[int]:
        return [n - c for n, c in zip(self.next_offset, self.committed, strict=True)]

    def _recover_next_offset(self, partition: int) -> int:
        """The last log key of ``partition`` + 1, else its committed offset (processed entries are deleted)."""
        it = self.db.cf(LOG).iter()
        it.seek_for_prev(LOG_KEY.pack(partition, 2**64 - 1))
        if it.valid():
            p, offset = LOG_KEY.unpack(bytes(it.key()))
            if p == partition:
                return int(offset) + 1
        return self.committed[partition]
