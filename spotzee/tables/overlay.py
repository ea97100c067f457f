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

from rocksdict import Rdict

from spotzee.streams.interface import Clock
from spotzee.tables.rocksdb_store import TABLE_PREFIX, TIMER_INDEX, RocksDB

_DELETED = None


@dataclass
class TimerOp:
    timer_id: str
    at: datetime | None  # None cancels
    topic: str = ""
    key: str = ""
    value: bytes = b""


class OverlayTable:
    def __init__(self, cf: Rdict) -> None:
        self.cf = cf
        self.batch: dict[str, bytes | None] = {}
        self.record: dict[str, bytes | None] = {}

    def get(self, key: str) -> bytes | None:
        if key in self.record:
            return self.record[key]
        if key in self.batch:
            return self.batch[key]
        value = self.cf.get(key.encode())
        return value if value is None else bytes(value)

    def set(self, key: str, value: bytes) -> None:
        self.record[key] = value

    def delete(self, key: str) -> None:
        self.record[key] = _DELETED

    def scan_prefix(self, prefix: str) -> Iterator[tuple[str, bytes]]:
        found: dict[str, bytes | None] = {}
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
            for key, value in overlay.items():
                if key.startswith(prefix):
                    found[key] = value
        for key in sorted(found):
            value = found[key]
            if value is not None:
                yield key, value

    def fold(self) -> None:
        self.batch.update(self.record)
        self.record.clear()

    def rollback(self) -> None:
        self.record.clear()


@dataclass
class Staged:
    emits: list[tuple[str, str, bytes]] = field(default_factory=list)
    timers: list[TimerOp] = field(default_factory=list)


class BatchContext:
    """One partition's batch in progress."""

    def __init__(
        self, db: RocksDB, tables: tuple[str, ...], clock: Clock, timer_exists: Callable[[str], bool] | None = None
    ) -> None:
        self._db = db
        self._clock = clock
        self._stored_timer_exists = timer_exists or (
            lambda timer_id: db.cf(TIMER_INDEX).get(timer_id.encode()) is not None
        )
        self.tables = {name: OverlayTable(db.cf(TABLE_PREFIX + name)) for name in tables}
        self.batch = Staged()
        self._record = Staged()
        # Whether each timer touched in this batch exists after the batch (folded) / the record.
        self._timers_batch: dict[str, bool] = {}
        self._timers_record: dict[str, bool] = {}

    @property
    def clock(self) -> Clock:
        return self._clock

    def table(self, name: str) -> OverlayTable:
        return self.tables[name]

    def emit(self, topic: str, key: str, value: bytes) -> None:
        self._record.emits.append((topic, key, value))

    def schedule(
        self, timer_id: str, at: datetime, topic: str, key: str, value: bytes, *, keep_existing: bool = False
    ) -> None:
        if keep_existing and self._timer_exists(timer_id):
            return
        self._record.timers.append(TimerOp(timer_id, at, topic, key, value))
        self._timers_record[timer_id] = True

    def cancel(self, timer_id: str) -> None:
        self._record.timers.append(TimerOp(timer_id, None))
        self._timers_record[timer_id] = False

    def _timer_exists(self, timer_id: str) -> bool:
        for staged in (self._timers_record, self._timers_batch):
            if timer_id in staged:
                return staged[timer_id]
        return self._stored_timer_exists(timer_id)

    def commit_record(self) -> None:
        for table in self.tables.values():
            table.fold()
        self.batch.emits.extend(self._record.emits)
        self.batch.timers.extend(self._record.timers)
        self._timers_batch.update(self._timers_record)
        self._timers_record.clear()
        self._record = Staged()

    def rollback_record(self) -> None:
        for table in self.tables.values():
            table.rollback()
        self._timers_record.clear()
        self._record = Staged()
