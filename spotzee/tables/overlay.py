"""Both runtimes' ``Context``: a per-batch overlay over RocksDB with per-record savepoints.

Writes of a record are staged in a record overlay; a record that raises is rolled back alone
(``rollback_record``; the runtime dead-letters it), the others fold into the batch overlay
(``commit_record``), and the runtime commits the whole batch: the embedded runtime -- state,
offsets, emitted records and timers -- in one RocksDB write batch (``runtime/embedded/``), a Kafka
worker through the changelog into its partition store (``runtime/kafka/partition_engine.py``).
Nothing reaches the store before that commit, so a batch that is dropped leaves it as it was.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any, TypeVar

import msgspec
from rocksdict import Rdict

from spotzee.streams.interface import Clock
from spotzee.tables.rocksdb_store import TABLE_PREFIX, TIMER_INDEX, RocksDB
from spotzee.tables.table_specs import StateCache, TableSpec

V = TypeVar("V")

_DELETED = None


# What a batch stages lives until it commits: long enough for the collector to promote every tracked
# object of it to the oldest generation, whose growth triggers the full collections (which rescan every
# cached state). These holders reference plain data only, so they can be left untracked (gc=False).


class TimerOp(msgspec.Struct, gc=False):
    timer_id: str
    at: datetime | None  # None cancels
    topic: str = ""
    key: str = ""
    value: bytes = b""


class Decoded(msgspec.Struct, gc=False):
    """A value held decoded in an overlay: encoded with its spec only when the batch commits."""

    value: Any
    spec: TableSpec[Any]


Entry = bytes | Decoded | None  # None: deleted


class OverlayTable:
    """One table of a batch: the record's writes over the batch's over the store (and its cache).

    Values are kept as the processor handed them (``Decoded``) until the batch commits, and values
    read from the store are decoded once per batch (``_read``); ``encoded_batch`` gives the bytes to
    commit and ``publish`` passes the committed values to the ``StateCache`` afterwards."""

    def __init__(self, cf: Rdict, cache: StateCache | None = None, touched: list[OverlayTable] | None = None) -> None:
        self.cf = cf
        self.cache = cache
        self.batch: dict[str, Entry] = {}
        self.record: dict[str, Entry] = {}
        self._read: dict[str, Any] = {}  # key -> value decoded from the store (or the cache) this batch
        # The keys of ``_read`` decoded from the store (not found in the cache): only these are new to the
        # cache at ``publish`` (a value found there is there already, and was made most recent when read).
        self._loaded: list[str] = []
        # The batch context's list of tables the record in progress wrote to: this table joins it on
        # its first write of a record, so a record's end folds (or rolls back) only those tables.
        self._touched = touched

    # -- bytes ---------------------------------------------------------------------------------

    def get(self, key: str) -> bytes | None:
        entry = self._staged(key)
        if entry is _UNSTAGED:
            value = self.cf.get(key.encode())
            return value if value is None else bytes(value)
        return _bytes(entry)  # type: ignore[arg-type]

    def set(self, key: str, value: bytes) -> None:
        self._write(key, value)

    def delete(self, key: str) -> None:
        self._write(key, _DELETED)

    def _write(self, key: str, entry: Entry) -> None:
        record = self.record
        if not record and self._touched is not None:
            self._touched.append(self)
        record[key] = entry

    def scan_prefix(self, prefix: str) -> Iterator[tuple[str, bytes]]:
        for key, entry in self._scan(prefix):
            yield key, _bytes(entry)  # type: ignore[misc]

    # -- values --------------------------------------------------------------------------------

    def get_value(self, key: str, spec: TableSpec[V]) -> V | None:
        # The hottest call of a batch (several per record): the lookups inlined, no exception on a miss.
        record = self.record
        if key in record:
            return _value(record[key], spec)
        batch = self.batch
        if key in batch:
            return _value(batch[key], spec)
        value = self._read.get(key, _UNSTAGED)
        if value is not _UNSTAGED:
            return value  # type: ignore[no-any-return]
        found, value = self.cache.get(key) if self.cache is not None else (False, None)
        if not found:
            raw = self.cf.get(key.encode())
            value = None if raw is None else spec.decode(bytes(raw))
            self._loaded.append(key)
        self._read[key] = value
        return value  # type: ignore[no-any-return]

    def put_value(self, key: str, value: V, spec: TableSpec[V]) -> None:
        self._write(key, Decoded(value, spec))

    def scan_values(self, prefix: str, spec: TableSpec[V]) -> Iterator[tuple[str, V]]:
        for key, entry in self._scan(prefix):
            value = _value(entry, spec)
            if value is not None:
                yield key, value

    # -- the batch -----------------------------------------------------------------------------

    def fold(self) -> None:
        if self.record:  # most records touch a few of the tables
            self.batch.update(self.record)
            self.record.clear()

    def rollback(self) -> None:
        self.record.clear()

    def encoded_batch(self) -> Iterator[tuple[str, bytes | None]]:
        """Every key the batch changed and its final bytes (None: deleted), each encoded once."""
        for key, entry in self.batch.items():
            yield key, _bytes(entry)

    def publish(self) -> None:
        """After the batch committed: the cache learns what the store now holds."""
        cache = self.cache
        if cache is None:
            return
        read = self._read
        for key in self._loaded:
            cache.put(key, read[key])
        for key, entry in self.batch.items():
            if type(entry) is Decoded:
                cache.put(key, entry.value)
            elif entry is None:
                cache.put(key, None)
            else:
                cache.discard(key)  # written as bytes: decoded on its next read

    def _staged(self, key: str) -> Entry | object:
        record = self.record
        if key in record:
            return record[key]
        batch = self.batch
        if key in batch:
            return batch[key]
        return _UNSTAGED

    def _scan(self, prefix: str) -> Iterator[tuple[str, Entry]]:
        found: dict[str, Entry] = {}
        it = self.cf.iter()
        it.seek(prefix.encode())
        encoded = prefix.encode()
        while it.valid():
            raw_key = bytes(it.key())
            if not raw_key.startswith(encoded):
                break
            found[raw_key.decode()] = bytes(it.value())
            it.next()
        for overlay in (self.batch, self.record):
            for key, entry in overlay.items():
                if key.startswith(prefix):
                    found[key] = entry
        for key in sorted(found):
            entry = found[key]
            if entry is not None:
                yield key, entry


_UNSTAGED = object()


def _bytes(entry: Entry) -> bytes | None:
    if isinstance(entry, Decoded):
        return entry.spec.encode(entry.value)
    return entry


def _value(entry: Entry, spec: TableSpec[V]) -> V | None:
    if entry is None:
        return None
    if isinstance(entry, Decoded):
        return entry.value  # type: ignore[no-any-return]
    return spec.decode(entry)


@dataclass
class Staged:
    emits: list[tuple[str, str, bytes]] = field(default_factory=list)
    timers: list[TimerOp] = field(default_factory=list)


class BatchContext:
    """One partition's batch in progress."""

    def __init__(
        self,
        db: RocksDB,
        tables: tuple[str, ...],
        clock: Clock,
        timer_exists: Callable[[str], bool] | None = None,
        caches: dict[str, StateCache] | None = None,
    ) -> None:
        self._db = db
        self.clock = clock  # an attribute, not a property: read several times per record
        self._stored_timer_exists = timer_exists or (
            lambda timer_id: db.cf(TIMER_INDEX).get(timer_id.encode()) is not None
        )
        caches = caches or {}
        self._touched: list[OverlayTable] = []  # tables the record in progress wrote to
        self.tables = {
            name: OverlayTable(db.cf(TABLE_PREFIX + name), caches.get(name), self._touched) for name in tables
        }
        # Emits and timer operations go straight into the batch's lists; a record's savepoint is where
        # they stood when it started (a rollback cuts them back there).
        self.batch = Staged()
        self._emits_mark = 0
        self._timers_mark = 0
        # Whether each timer touched in this batch exists after the batch (folded) / the record.
        self._timers_batch: dict[str, bool] = {}
        self._timers_record: dict[str, bool] = {}
        self._stored_timers: dict[str, bool] = {}

    def table(self, name: str) -> OverlayTable:
        return self.tables[name]

    def emit(self, topic: str, key: str, value: bytes) -> None:
        self.batch.emits.append((topic, key, value))

    def schedule(
        self, timer_id: str, at: datetime, topic: str, key: str, value: bytes, *, keep_existing: bool = False
    ) -> None:
        if keep_existing and self._timer_exists(timer_id):
            return
        self.batch.timers.append(TimerOp(timer_id, at, topic, key, value))
        self._timers_record[timer_id] = True

    def cancel(self, timer_id: str) -> None:
        self.batch.timers.append(TimerOp(timer_id, None))
        self._timers_record[timer_id] = False

    def _timer_exists(self, timer_id: str) -> bool:
        for staged in (self._timers_record, self._timers_batch):
            if timer_id in staged:
                return staged[timer_id]
        known = self._stored_timers.get(timer_id)
        if known is None:  # the store does not change during a batch: one read per timer per batch
            known = self._stored_timers[timer_id] = self._stored_timer_exists(timer_id)
        return known

    def publish(self) -> None:
        """The batch committed: hand its values to the state caches."""
        for table in self.tables.values():
            table.publish()

    def commit_record(self) -> None:
        touched = self._touched
        if touched:
            for table in touched:
                table.fold()
            touched.clear()
        self._emits_mark = len(self.batch.emits)
        self._timers_mark = len(self.batch.timers)
        if self._timers_record:
            self._timers_batch.update(self._timers_record)
            self._timers_record.clear()

    def rollback_record(self) -> None:
        touched = self._touched
        for table in touched:
            table.rollback()
        touched.clear()
        del self.batch.emits[self._emits_mark :]
        del self.batch.timers[self._timers_mark :]
        self._timers_record.clear()
