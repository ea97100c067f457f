"""One RocksDB database (rocksdict) with a column family per concern."""

from __future__ import annotations

import gc
import struct
from collections.abc import Iterator
from pathlib import Path

from rocksdict import ColumnFamily, Options, Rdict, WriteBatch, WriteOptions

from spotzee.errors import LogUnavailable

LOG = "log"  # (partition u16, offset u64) -> key_len u32 | key | value
META = "meta"  # offsets, sequences, the sink's in-flight range
OUTBOX = "outbox"  # seq u64 -> analytics record (what the ClickHouse sink has not written yet)
TIMERS = "timers"  # (due_ms u64, timer_id) -> topic_len u16 | topic | key_len u32 | key | value
TIMER_INDEX = "timer_index"  # timer_id -> due key
DEFINITIONS = "definitions"  # kind/id -> definition JSON (the compacted `definitions` topic's model)
DELIVERIES = "deliveries"  # delivery state per send_id, and the retry index
TOPICS = "topics"  # (topic_len u16 | topic | seq u64) -> record: topics with no consumer in this process yet
TABLE_PREFIX = "t_"  # one column family per processor table

BASE_FAMILIES = (LOG, META, OUTBOX, TIMERS, TIMER_INDEX, DEFINITIONS, TOPICS, DELIVERIES)

U64 = struct.Struct(">Q")
LOG_KEY = struct.Struct(">HQ")
U32 = struct.Struct(">I")
U16 = struct.Struct(">H")


def _options() -> Options:
    opts = Options(raw_mode=True)
    opts.create_if_missing(True)
    opts.create_missing_column_families(True)
    return opts


class RocksDB:
    """The process's RocksDB: column families by name, atomic synced batch writes."""

    def __init__(self, path: Path, tables: tuple[str, ...], *, sync: bool = True) -> None:
        """``sync=False`` for stores that are caches of a durable log (a Kafka worker's partition
        state, the API's replica): a write batch stays atomic, only the fsync is skipped, and a
        crash loses at most the newest batches, which are replayed from the changelog."""
        path.mkdir(parents=True, exist_ok=True)
        families = {name: Options(raw_mode=True) for name in (*BASE_FAMILIES, *(TABLE_PREFIX + t for t in tables))}
        self.db = Rdict(str(path), _options(), column_families=families)
        self._cfs = {name: self.db.get_column_family(name) for name in families}
        self._handles = {name: self.db.get_column_family_handle(name) for name in families}
        self._sync = WriteOptions()
        self._sync.sync = sync
        self.closed = False

    def cf(self, name: str) -> Rdict:
        return self._cfs[name]

    def handle(self, name: str) -> ColumnFamily:
        return self._handles[name]

    def batch(self) -> WriteBatch:
        return WriteBatch(raw_mode=True)

    def write(self, batch: WriteBatch) -> None:
        """Write atomically and fsync the WAL: durable when this returns."""
        if self.closed:
            raise LogUnavailable("the log is closed")
        try:
            self.db.write(batch, self._sync)
        except Exception as exc:  # rocksdict raises plain exceptions for I/O errors
            raise LogUnavailable(f"log write failed: {exc}") from exc

    def scan_prefix(self, name: str, prefix: str, after: str | None = None) -> Iterator[tuple[str, bytes]]:
        """Entries of a column family whose (UTF-8) key starts with ``prefix``, in key order;
        with ``after``, only keys greater than it (a page cursor)."""
        it = self._cfs[name].iter()
        it.seek((after if after is not None and after > prefix else prefix).encode())
        while it.valid():
            key = bytes(it.key()).decode()
            if not key.startswith(prefix):
                break
            if after is None or key > after:
                yield key, bytes(it.value())
            it.next()

    def stage(self, batch: WriteBatch, name: str, key: bytes, value: bytes | None) -> None:
        """Add a put (or, for ``None``, a delete) on column family ``name`` to ``batch``."""
        if value is None:
            batch.delete(key, self._handles[name])
        else:
            batch.put(key, value, self._handles[name])

    def get_u64(self, key: bytes, default: int = 0) -> int:
        raw = self._cfs[META].get(key)
        return default if raw is None else int(U64.unpack(bytes(raw))[0])

    def close(self) -> None:
        if not self.closed:
            self.closed = True
            for cf in self._cfs.values():
                cf.close()
            # Column-family handles and iterators keep the database (and its LOCK) alive
            # until they are collected: drop ours and collect, so the path can be reopened.
            self._cfs.clear()
            self._handles.clear()
            self.db.close()
            gc.collect()


def encode_log_value(key: str, value: bytes) -> bytes:
    k = key.encode()
    return U32.pack(len(k)) + k + value


def decode_log_value(raw: bytes) -> tuple[str, bytes]:
    (n,) = U32.unpack_from(raw)
    return raw[4 : 4 + n].decode(), raw[4 + n :]


def encode_timer_value(topic: str, key: str, value: bytes) -> bytes:
    t = topic.encode()
    return U16.pack(len(t)) + t + encode_log_value(key, value)


def decode_timer_value(raw: bytes) -> tuple[str, str, bytes]:
    (n,) = U16.unpack_from(raw)
    topic = raw[2 : 2 + n].decode()
    key, value = decode_log_value(raw[2 + n :])
    return topic, key, value
