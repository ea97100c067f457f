"""The table contract, over every store implementation.

As quix-streams runs its transaction tests over every store type, these run over each store a
processor's ``Context`` can stand on:

- ``memory``: ``spotzee.testing.MemoryContext`` (``tables/memory_store.MemoryTable``);
- ``embedded``: ``tables/overlay.BatchContext`` over the embedded runtime's RocksDB, its batch
  committed as the processor loop commits it (``runtime/embedded/``);
- ``kafka``: ``BatchContext`` over a Kafka worker's ``tables/partition_store.PartitionStore``,
  its batch turned into changelog records and applied to the store as the Engine does
  (``runtime/kafka/partition_engine.py``), without a broker.

The contract: reads and scans see the record's and the batch's uncommitted writes, deletes
included, in key order; ``rollback_record`` undoes the current record alone (writes, emits,
timers); a timer with the same id replaces, ``cancel`` removes it, and ``keep_existing`` keeps a
timer that exists (stored, or scheduled earlier in the batch or the record, and not cancelled).
The batch contract (the runtimes' stores only: a memory context applies each record as it
commits) adds: nothing reaches the store before the batch commits, and a batch cancelled before
its commit (a crash, a revoked partition) leaves the store as it was.
"""

from __future__ import annotations

from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Protocol

import msgspec
import pytest

from spotzee.runtime.embedded.commit import Commit
from spotzee.runtime.embedded.inbound_log import InboundLog
from spotzee.runtime.embedded.outbox import Outbox
from spotzee.runtime.embedded.processor_loop import stage_tables
from spotzee.runtime.embedded.timers import Timers
from spotzee.runtime.kafka.partition_engine import batch_changes, batch_context
from spotzee.schemas.structs import Struct
from spotzee.settings import Settings
from spotzee.streams.interface import Context
from spotzee.tables import rocksdb_store
from spotzee.tables.overlay import BatchContext
from spotzee.tables.partition_store import DUE, TIMERS, PartitionStore
from spotzee.tables.rocksdb_store import TABLE_PREFIX, TIMER_INDEX, U64, RocksDB, decode_timer_value
from spotzee.tables.table_specs import StateCache, TableSpec, typed
from spotzee.testing import ManualClock, MemoryContext

TABLES = ("things", "others")
CACHE_LIMIT = 3  # small: evictions happen within a test
OUT = "out"  # a topic emits go to (not the processor's own: a memory context would run them)
T0 = datetime(2026, 1, 1, tzinfo=UTC)

StoredTimer = tuple[int, str, str, bytes]  # due ms, topic, key, value


class RecordContext(Context, Protocol):
    """A ``Context`` with the per-record savepoint every store gives the runtime."""

    def commit_record(self) -> None: ...

    def rollback_record(self) -> None: ...


class Backend(Protocol):
    ctx: RecordContext

    def commit_batch(self) -> None:
        """Commit the batch in progress into the store; the next batch starts."""

    def cancel_batch(self) -> None:
        """Drop the batch in progress without committing it; the next batch starts."""

    def stored(self, table: str, key: str) -> bytes | None:
        """What the store holds for ``key``, outside any batch."""

    def stored_timers(self) -> dict[str, StoredTimer]: ...

    def emitted(self) -> list[tuple[str, str, bytes]]:
        """The records emitted by the committed records of the batch."""

    def close(self) -> None: ...


class _Processor:
    topic = "events"
    tables = TABLES

    def process(self, ctx: Context, key: str, value: bytes) -> None:
        raise AssertionError("the contract drives the context directly")


class MemoryBackend:
    """A memory context applies each record as it commits: its batch is one record."""

    def __init__(self, clock: ManualClock) -> None:
        self.ctx = MemoryContext(_Processor(), clock)

    def commit_batch(self) -> None:
        self.ctx.commit_record()

    def cancel_batch(self) -> None:
        self.ctx.rollback_record()

    def stored(self, table: str, key: str) -> bytes | None:
        return self.ctx.table(table).data.get(key)

    def stored_timers(self) -> dict[str, StoredTimer]:
        return {
            timer_id: (int(at.timestamp() * 1000), topic, key, value)
            for timer_id, (at, topic, key, value) in self.ctx.timers.items()
        }

    def emitted(self) -> list[tuple[str, str, bytes]]:
        return [(OUT, key, value) for key, value in self.ctx.outputs[OUT]]

    def close(self) -> None:
        pass


class EmbeddedBackend:
    def __init__(self, path: Path, clock: ManualClock) -> None:
        self.clock = clock
        self.db = RocksDB(path / "rocksdb", TABLES)
        self.inbound = InboundLog(self.db, partitions=1)
        self.outbox = Outbox(self.db, Settings(data_dir=path))
        self.timers = Timers(self.inbound, self.outbox, clock)
        self.caches = {"things": StateCache(CACHE_LIMIT)}  # "others" uncached: both paths run
        self.ctx: BatchContext = self._context()

    def _context(self) -> BatchContext:
        return BatchContext(self.db, TABLES, self.clock, caches=self.caches)

    def commit_batch(self) -> None:
        """As the processor loop's commit, without a log: the tables and the timers, one write."""
        with self.inbound.lock:
            commit = Commit(self.inbound, self.outbox)
            stage_tables(commit, self.ctx)
            self.timers.stage(commit, self.ctx.batch.timers)
            commit.write()
        self.ctx.publish()
        self.ctx = self._context()

    def cancel_batch(self) -> None:
        self.ctx = self._context()

    def stored(self, table: str, key: str) -> bytes | None:
        value = self.db.cf(TABLE_PREFIX + table).get(key.encode())
        return None if value is None else bytes(value)

    def stored_timers(self) -> dict[str, StoredTimer]:
        out: dict[str, StoredTimer] = {}
        for raw_id, due in self.db.cf(TIMER_INDEX).items():
            topic, key, value = decode_timer_value(bytes(self.db.cf(rocksdb_store.TIMERS)[bytes(due)]))
            out[bytes(raw_id).decode()] = (U64.unpack_from(bytes(due))[0], topic, key, value)
        return out

    def emitted(self) -> list[tuple[str, str, bytes]]:
        return list(self.ctx.batch.emits)

    def close(self) -> None:
        self.db.close()


class KafkaBackend:
    def __init__(self, path: Path, clock: ManualClock) -> None:
        self.clock = clock
        self.store = PartitionStore(path, 0, TABLES)
        self.caches = {"things": StateCache(CACHE_LIMIT)}
        self.ctx: BatchContext = batch_context(self.store, TABLES, clock, self.caches)
        self.batches = 0

    def commit_batch(self) -> None:
        """As the Engine's commit once the changelog is acked: the changes applied to the store."""
        self.batches += 1
        changes = batch_changes(self.store, self.ctx, TABLES)
        self.store.apply(changes, input_offset=self.batches, changelog_offset=self.batches)
        self.ctx.publish()
        self.ctx = batch_context(self.store, TABLES, self.clock, self.caches)

    def cancel_batch(self) -> None:
        self.ctx = batch_context(self.store, TABLES, self.clock, self.caches)

    def stored(self, table: str, key: str) -> bytes | None:
        return self.store.get(table, key)

    def stored_timers(self) -> dict[str, StoredTimer]:
        out: dict[str, StoredTimer] = {}
        for raw_id, due in self.store.db.cf(TABLE_PREFIX + TIMERS).items():
            topic, key, value = decode_timer_value(self.store.get(DUE, bytes(due).decode()) or b"")
            out[bytes(raw_id).decode()] = (int(bytes(due).decode().split("|", 1)[0], 16), topic, key, value)
        return out

    def emitted(self) -> list[tuple[str, str, bytes]]:
        return list(self.ctx.batch.emits)

    def close(self) -> None:
        self.store.close()


def _open(kind: str, path: Path) -> Backend:
    clock = ManualClock(T0)
    if kind == "memory":
        return MemoryBackend(clock)
    if kind == "embedded":
        return EmbeddedBackend(path, clock)
    return KafkaBackend(path, clock)


@pytest.fixture(params=["memory", "embedded", "kafka"])
def backend(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Backend]:
    opened = _open(request.param, tmp_path)
    yield opened
    opened.close()


@pytest.fixture(params=["embedded", "kafka"])
def batched(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Backend]:
    """The stores whose batches commit as a whole (the runtimes')."""
    opened = _open(request.param, tmp_path)
    yield opened
    opened.close()


def _scan(backend: Backend, prefix: str, table: str = "things") -> list[tuple[str, bytes]]:
    return list(backend.ctx.table(table).scan_prefix(prefix))


def _seed(backend: Backend, **values: bytes) -> None:
    """Committed state to start from."""
    for key, value in values.items():
        backend.ctx.table("things").set(key, value)
    backend.ctx.commit_record()
    backend.commit_batch()


# -- reads, writes, deletes ------------------------------------------------------------------------


def test_reads_see_the_records_own_writes_and_deletes(backend: Backend) -> None:
    _seed(backend, a=b"1")
    things = backend.ctx.table("things")
    assert things.get("a") == b"1"
    assert things.get("missing") is None
    things.set("b", b"2")
    things.delete("a")
    assert (things.get("a"), things.get("b")) == (None, b"2")
    things.set("a", b"3")
    assert things.get("a") == b"3"
    backend.ctx.table("others").set("a", b"other")
    assert things.get("a") == b"3"  # tables are apart
    backend.ctx.commit_record()
    assert (things.get("a"), things.get("b")) == (b"3", b"2")  # the next record of the batch sees them


def test_deleting_an_absent_key_is_a_no_op(backend: Backend) -> None:
    things = backend.ctx.table("things")
    things.delete("never")
    backend.ctx.commit_record()
    backend.commit_batch()
    assert backend.ctx.table("things").get("never") is None
    assert _scan(backend, "") == []


def test_scans_merge_the_store_the_batch_and_the_record_in_key_order(backend: Backend) -> None:
    _seed(backend, a1=b"s1", a2=b"s2", a4=b"s4", b1=b"s5")
    things = backend.ctx.table("things")
    things.set("a3", b"batch")  # an earlier record of the batch
    things.delete("a2")
    backend.ctx.commit_record()
    things.set("a0", b"record")  # the current record
    things.set("a1", b"overwritten")
    things.delete("a3")
    things.delete("a4")
    things.set("a4", b"back")
    assert _scan(backend, "a") == [("a0", b"record"), ("a1", b"overwritten"), ("a4", b"back")]
    assert _scan(backend, "") == [("a0", b"record"), ("a1", b"overwritten"), ("a4", b"back"), ("b1", b"s5")]
    assert _scan(backend, "a1") == [("a1", b"overwritten")]
    assert _scan(backend, "c") == []
    assert _scan(backend, "a", table="others") == []


def test_a_committed_batch_is_what_the_next_batch_reads(backend: Backend) -> None:
    _seed(backend, a=b"1", b=b"2", c=b"3")
    things = backend.ctx.table("things")
    things.set("a", b"new")
    things.delete("b")
    backend.ctx.commit_record()
    backend.commit_batch()
    assert [backend.stored("things", k) for k in "abc"] == [b"new", None, b"3"]
    assert _scan(backend, "") == [("a", b"new"), ("c", b"3")]


# -- per-record rollback (the savepoint) -------------------------------------------------------------


def test_rollback_undoes_the_current_record_only(backend: Backend) -> None:
    _seed(backend, a=b"stored", b=b"stored")
    ctx = backend.ctx
    ctx.table("things").set("c", b"first record")
    ctx.emit(OUT, "k", b"first")
    ctx.commit_record()
    ctx.table("things").set("a", b"second record")
    ctx.table("things").delete("b")
    ctx.table("things").delete("c")
    ctx.table("things").set("d", b"second record")
    ctx.table("others").set("x", b"second record")
    ctx.emit(OUT, "k", b"second")
    ctx.rollback_record()
    assert _scan(backend, "") == [("a", b"stored"), ("b", b"stored"), ("c", b"first record")]
    assert _scan(backend, "", table="others") == []
    ctx.commit_record()  # nothing left to commit
    assert backend.emitted() == [(OUT, "k", b"first")]
    backend.commit_batch()
    assert [backend.stored("things", k) for k in "abcd"] == [b"stored", b"stored", b"first record", None]


def test_rollback_undoes_the_records_timers(backend: Backend) -> None:
    ctx = backend.ctx
    ctx.schedule("kept", T0 + timedelta(minutes=1), OUT, "k", b"kept")
    ctx.commit_record()
    ctx.schedule("dropped", T0 + timedelta(minutes=2), OUT, "k", b"dropped")
    ctx.schedule("kept", T0 + timedelta(minutes=3), OUT, "k", b"moved")
    ctx.rollback_record()
    ctx.schedule("kept", T0 + timedelta(minutes=4), OUT, "k", b"ignored", keep_existing=True)  # still exists
    ctx.commit_record()
    ctx.cancel("kept")
    ctx.rollback_record()
    backend.commit_batch()
    assert backend.stored_timers() == {"kept": (_ms(T0 + timedelta(minutes=1)), OUT, "k", b"kept")}


# -- timers: replace, cancel, keep existing ----------------------------------------------------------


def test_the_same_timer_id_replaces(backend: Backend) -> None:
    ctx = backend.ctx
    ctx.schedule("t", T0 + timedelta(minutes=1), OUT, "k", b"one")
    ctx.commit_record()
    backend.commit_batch()
    backend.ctx.schedule("t", T0 + timedelta(minutes=5), OUT, "k", b"two")
    backend.ctx.schedule("t", T0 + timedelta(minutes=3), OUT, "k", b"three")
    backend.ctx.commit_record()
    backend.commit_batch()
    assert backend.stored_timers() == {"t": (_ms(T0 + timedelta(minutes=3)), OUT, "k", b"three")}


def test_cancel_removes_a_stored_timer_or_one_of_the_batch(backend: Backend) -> None:
    ctx = backend.ctx
    ctx.schedule("stored", T0 + timedelta(minutes=1), OUT, "k", b"stored")
    ctx.commit_record()
    backend.commit_batch()
    ctx = backend.ctx
    ctx.schedule("batch", T0 + timedelta(minutes=2), OUT, "k", b"batch")
    ctx.commit_record()
    ctx.cancel("stored")
    ctx.cancel("batch")
    ctx.cancel("never scheduled")
    ctx.commit_record()
    backend.commit_batch()
    assert backend.stored_timers() == {}


def test_keep_existing_keeps_a_timer_that_exists_and_schedules_one_that_does_not(backend: Backend) -> None:
    ctx = backend.ctx
    ctx.schedule("stored", T0 + timedelta(minutes=1), OUT, "k", b"stored")
    ctx.commit_record()
    backend.commit_batch()
    ctx = backend.ctx
    later = T0 + timedelta(hours=1)
    ctx.schedule("stored", later, OUT, "k", b"no", keep_existing=True)  # in the store
    ctx.schedule("batch", T0 + timedelta(minutes=2), OUT, "k", b"batch")
    ctx.commit_record()
    ctx.schedule("batch", later, OUT, "k", b"no", keep_existing=True)  # an earlier record of the batch
    ctx.schedule("record", T0 + timedelta(minutes=3), OUT, "k", b"record")
    ctx.schedule("record", later, OUT, "k", b"no", keep_existing=True)  # earlier in this record
    ctx.schedule("new", later, OUT, "k", b"new", keep_existing=True)  # none: scheduled
    ctx.commit_record()
    backend.commit_batch()
    assert backend.stored_timers() == {
        "stored": (_ms(T0 + timedelta(minutes=1)), OUT, "k", b"stored"),
        "batch": (_ms(T0 + timedelta(minutes=2)), OUT, "k", b"batch"),
        "record": (_ms(T0 + timedelta(minutes=3)), OUT, "k", b"record"),
        "new": (_ms(later), OUT, "k", b"new"),
    }


def test_keep_existing_schedules_after_a_cancel(backend: Backend) -> None:
    ctx = backend.ctx
    ctx.schedule("t", T0 + timedelta(minutes=1), OUT, "k", b"old")
    ctx.commit_record()
    backend.commit_batch()
    ctx = backend.ctx
    ctx.cancel("t")
    ctx.commit_record()
    ctx.schedule("t", T0 + timedelta(minutes=9), OUT, "k", b"new", keep_existing=True)
    ctx.commit_record()
    backend.commit_batch()
    assert backend.stored_timers() == {"t": (_ms(T0 + timedelta(minutes=9)), OUT, "k", b"new")}


# -- the batch: nothing before its commit, nothing of a cancelled one ----------------------------------


def test_nothing_reaches_the_store_before_the_batch_commits(batched: Backend) -> None:
    _seed(batched, a=b"stored")
    ctx = batched.ctx
    ctx.table("things").set("a", b"uncommitted")
    ctx.table("things").set("b", b"uncommitted")
    ctx.schedule("t", T0, OUT, "k", b"v")
    ctx.commit_record()
    assert (batched.stored("things", "a"), batched.stored("things", "b")) == (b"stored", None)
    assert batched.stored_timers() == {}


def test_a_cancelled_batch_leaves_the_store_as_it_was(batched: Backend) -> None:
    _seed(batched, a=b"stored", b=b"stored")
    ctx = batched.ctx
    ctx.schedule("kept", T0, OUT, "k", b"kept")
    ctx.commit_record()
    batched.commit_batch()
    ctx = batched.ctx
    ctx.table("things").set("a", b"lost")
    ctx.table("things").delete("b")
    ctx.cancel("kept")
    ctx.schedule("lost", T0, OUT, "k", b"lost")
    ctx.emit(OUT, "k", b"lost")
    ctx.commit_record()
    batched.cancel_batch()
    assert _scan(batched, "") == [("a", b"stored"), ("b", b"stored")]
    assert batched.emitted() == []
    batched.commit_batch()
    assert (batched.stored("things", "a"), batched.stored("things", "b")) == (b"stored", b"stored")
    assert batched.stored_timers() == {"kept": (_ms(T0), OUT, "k", b"kept")}


def _ms(at: datetime) -> int:
    return int(at.timestamp() * 1000)


# -- typed tables: values decoded once, encoded at commit, cached across batches ----------------------


class Thing(Struct, kw_only=True):
    name: str
    tags: list[str] = msgspec.field(default_factory=list)


THINGS = TableSpec("things", Thing)
OTHERS = TableSpec("others", Thing)


@pytest.mark.parametrize("spec", [THINGS, OTHERS], ids=["cached", "uncached"])
def test_typed_values_round_trip_through_a_commit(backend: Backend, spec: TableSpec[Thing]) -> None:
    table = typed(backend.ctx, spec)
    table.put("a", Thing(name="a", tags=["x"]))
    assert table.get("a") == Thing(name="a", tags=["x"])
    assert backend.ctx.table(spec.name).get("a") == b'{"name":"a","tags":["x"]}'  # bytes on demand
    backend.ctx.commit_record()
    backend.commit_batch()
    assert backend.stored(spec.name, "a") == b'{"name":"a","tags":["x"]}'
    assert typed(backend.ctx, spec).get("a") == Thing(name="a", tags=["x"])
    assert typed(backend.ctx, spec).get("missing") is None


@pytest.mark.parametrize("spec", [THINGS, OTHERS], ids=["cached", "uncached"])
def test_typed_rollback_and_scans_see_what_bytes_do(backend: Backend, spec: TableSpec[Thing]) -> None:
    table = typed(backend.ctx, spec)
    table.put("k1", Thing(name="one"))
    table.put("k2", Thing(name="two"))
    backend.ctx.commit_record()
    backend.commit_batch()
    table = typed(backend.ctx, spec)
    assert table.get("k1") == Thing(name="one")
    table.put("k1", Thing(name="changed"))
    table.delete("k2")
    table.put("k3", Thing(name="three"))
    assert [k for k, _ in table.scan_prefix("k")] == ["k1", "k3"]
    backend.ctx.rollback_record()
    assert table.get("k1") == Thing(name="one")
    assert [(k, v.name) for k, v in table.scan_prefix("k")] == [("k1", "one"), ("k2", "two")]
    backend.ctx.table(spec.name).set("k2", b'{"name":"raw bytes"}')  # a bytes write reads back as a value
    assert table.get("k2") == Thing(name="raw bytes")
    backend.ctx.commit_record()
    backend.commit_batch()
    assert typed(backend.ctx, spec).get("k2") == Thing(name="raw bytes")


def test_a_cancelled_batch_leaves_the_cache_as_the_store(batched: Backend) -> None:
    table = typed(batched.ctx, THINGS)
    table.put("a", Thing(name="committed"))
    batched.ctx.commit_record()
    batched.commit_batch()
    assert typed(batched.ctx, THINGS).get("a") == Thing(name="committed")  # now cached
    typed(batched.ctx, THINGS).put("a", Thing(name="lost"))
    typed(batched.ctx, THINGS).put("b", Thing(name="lost"))
    batched.ctx.commit_record()
    batched.cancel_batch()  # a crash before the commit
    assert typed(batched.ctx, THINGS).get("a") == Thing(name="committed")
    assert typed(batched.ctx, THINGS).get("b") is None
    assert batched.stored("things", "b") is None


def test_the_cache_is_bounded_and_never_serves_a_stale_value(batched: Backend) -> None:
    for i in range(CACHE_LIMIT * 3):
        typed(batched.ctx, THINGS).put(f"k{i}", Thing(name=str(i)))
        batched.ctx.commit_record()
        batched.commit_batch()
    cache = batched.caches["things"]  # type: ignore[attr-defined]
    assert len(cache) == CACHE_LIMIT
    for i in range(CACHE_LIMIT * 3):  # evicted keys come back from the store
        assert typed(batched.ctx, THINGS).get(f"k{i}") == Thing(name=str(i))
    typed(batched.ctx, THINGS).delete("k0")
    batched.ctx.commit_record()
    batched.commit_batch()
    assert typed(batched.ctx, THINGS).get("k0") is None
