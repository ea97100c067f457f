"""The analytics sink against real ClickHouse (chDB): idempotent on replay, ordered mutations."""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator, Sequence
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from spotzee.analytics.clickhouse import ClickHouse
from spotzee.analytics.migrations import MIGRATIONS, migrate
from spotzee.analytics.sink import TABLES, AnalyticsSink, is_mutation
from spotzee.runtime.sink_loop import SINK_INFLIGHT, SinkLoop, _is_mutation_raw
from spotzee.schemas.analytics_models import (
    AliasRow,
    AnalyticsRecord,
    AuditRow,
    ContactChangeRow,
    DeadLetterRow,
    EraseHistory,
    EventRow,
    JourneyStepRow,
    MessageRow,
    SegmentChangeRow,
)
from spotzee.streams.record_codec import dumps
from spotzee.tables.rocksdb_store import META, OUTBOX, U64, RocksDB
from tests.support import wait_until

AT = datetime(2026, 3, 1, tzinfo=UTC)


def event(message_id: str, contact: str = "u1") -> EventRow:
    return EventRow(
        project_id="p", message_id=message_id, event_type="track", event="e", contact_id=contact, user_id=contact,
        anonymous_id="", timestamp=AT, original_timestamp=None, sent_at=None, received_at=AT,
        properties="{}", traits="{}", context="{}", raw="{}",
    )  # fmt: skip


@pytest.fixture
def clickhouse(tmp_path: Path) -> Iterator[ClickHouse]:
    ch = ClickHouse(f"chdb://{tmp_path / 'ch'}")
    migrate(ch)
    yield ch
    ch.close()


def count(ch: ClickHouse, sql: str = "SELECT count() FROM events") -> int:
    return int(ch.query(sql)[1][0][0])


def test_migrations_are_applied_once(clickhouse: ClickHouse) -> None:
    assert migrate(clickhouse) == []
    assert count(clickhouse, "SELECT count() FROM schema_migrations") == len(MIGRATIONS)
    _, rows = clickhouse.query(
        "SELECT name, sorting_key FROM system.tables WHERE database = currentDatabase() "
        "AND name != 'schema_migrations' AND engine != 'View'"
    )
    assert len(rows) == 8
    assert all(key.startswith("project_id") for _, key in rows)


def test_the_same_range_written_twice_lands_once(clickhouse: ClickHouse) -> None:
    sink = AnalyticsSink(clickhouse)
    records: list[tuple[int, AnalyticsRecord]] = [(i, event(f"m{i}")) for i in range(10, 20)]
    sink.write(records)
    sink.write(records)
    assert count(clickhouse) == 10
    sink.write([(20, event("m20"))])
    assert count(clickhouse) == 11


def test_merges_resolve_through_aliases_and_erase_deletes(clickhouse: ClickHouse) -> None:
    sink = AnalyticsSink(clickhouse)
    sink.write([(1, event("a", "anon")), (2, event("b", "u1")), (3, event("c", "u2"))])
    sink.write([(4, AliasRow(project_id="p", alias_id="anon", contact_id="u2", merged_at=AT))])
    later = AT.replace(hour=1)
    sink.write([(5, AliasRow(project_id="p", alias_id="anon", contact_id="u1", merged_at=later))])
    resolved = "SELECT message_id, contact_id, recorded_contact_id FROM events_resolved ORDER BY message_id"
    assert clickhouse.query(resolved)[1] == [["a", "u1", "anon"], ["b", "u1", "u1"], ["c", "u2", "u2"]]
    sink.write([(6, EraseHistory(project_id="p", contact_ids=["u1", "anon"]))])
    assert clickhouse.query("SELECT message_id FROM events")[1] == [["c"]]
    assert count(clickhouse, "SELECT count() FROM contact_aliases") == 0
    with pytest.raises(ValueError, match="alone"):
        sink.write([(7, EraseHistory(project_id="p", contact_ids=["x"])), (8, event("z"))])


def test_raw_mutation_detection_agrees_with_parsing() -> None:
    samples: list[AnalyticsRecord] = [
        event("m"),
        ContactChangeRow(
            project_id="p",
            contact_id="c",
            change_id="x",
            changed_at=AT,
            source="s",
            path="a",
            old_value="1",
            new_value="2",
        ),
        AliasRow(project_id="p", alias_id="a", contact_id="c", merged_at=AT),
        AuditRow(
            audit_id="a",
            organisation_id="o",
            project_id="p",
            actor_key_id="k",
            action="x",
            target="t",
            at=AT,
            before="",
            after="",
        ),
        DeadLetterRow(
            project_id="p", dead_letter_id="d", topic="t", partition=0, offset=0, key="k", error="e", payload="", at=AT
        ),
        EraseHistory(project_id="p", contact_ids=["a"]),
    ]
    for record in samples:
        assert _is_mutation_raw(dumps(record)) == is_mutation(record)


def test_sink_loop_rewrites_the_in_flight_range_after_a_crash(tmp_path: Path, clickhouse: ClickHouse) -> None:
    db = RocksDB(tmp_path / "rocks", ())
    try:
        for seq in range(5):
            db.cf(OUTBOX)[U64.pack(seq)] = dumps(event(f"m{seq}"))
        # The crash: the range was marked and inserted, but its commit never happened.
        db.cf(META)[SINK_INFLIGHT] = U64.pack(0) + U64.pack(4)
        AnalyticsSink(clickhouse).write([(seq, event(f"m{seq}")) for seq in range(5)])
        loop = SinkLoop(db, AnalyticsSink(clickhouse), batch_rows=100, flush_interval=0.01, wakeup=threading.Event())
        loop.start()
        db.cf(OUTBOX)[U64.pack(5)] = dumps(event("m5"))
        loop.wakeup.set()
        wait_until(lambda: loop.pending() == 0)
        loop.stop()
        assert count(clickhouse) == 6
        assert count(clickhouse, "SELECT uniqExact(message_id) FROM events") == 6
        assert db.cf(META).get(SINK_INFLIGHT) is None
    finally:
        db.close()


def test_every_row_type_lands_in_its_table_with_its_datetimes_to_the_millisecond(clickhouse: ClickHouse) -> None:
    at = datetime(2026, 3, 1, 12, 30, 15, 123999, tzinfo=UTC)  # DateTime64(3) keeps .123 (floored, as before)
    rows: list[AnalyticsRecord] = [
        EventRow(
            project_id="p", message_id="m", event_type="track", event="e", contact_id="c", user_id="c",
            anonymous_id="", timestamp=at, original_timestamp=at - timedelta(milliseconds=5), sent_at=None,
            received_at=at.replace(tzinfo=None),  # naive: taken as UTC, as the pydantic rows did
            properties='{"a":1}', traits="{}", context="{}", raw="{}",
        ),
        ContactChangeRow(
            project_id="p", contact_id="c", change_id="x", changed_at=at, source="s", path="a", old_value="1",
            new_value="2",
        ),
        AliasRow(project_id="p", alias_id="a", contact_id="c", merged_at=at),
        AuditRow(
            audit_id="a", organisation_id="o", project_id="p", actor_key_id="k", action="x", target="t", at=at,
            before="", after="",
        ),
        DeadLetterRow(
            project_id="p", dead_letter_id="d", topic="t", partition=65535, offset=2**63, key="k", error="e",
            payload="", at=at,
        ),
        SegmentChangeRow(
            project_id="p", segment_id="s", contact_id="c", version=4_000_000_000, change="entered", at=at,
            cause="x", change_id="y",
        ),
        JourneyStepRow(
            project_id="p", journey_id="j", journey_version=1, run_id="r", contact_id="c", step_id="s", visit=1,
            kind="entered", at=at, seq=0, detail="{}",
        ),
        MessageRow(
            project_id="p", send_id="s", contact_id="c", channel="email", template_id="t", journey_id="",
            run_id="", step_id="", status="queued", at=at, detail="{}",
        ),
    ]  # fmt: skip
    sink = AnalyticsSink(clickhouse)
    sink.write(list(enumerate(rows)))
    assert sink.rows_written == len(rows) == len(TABLES)
    ms = int(at.timestamp()) * 1000 + 123
    for row in rows:
        table = TABLES[type(row)]
        names = [table.columns[i] for i in table.datetimes]
        select = ", ".join(f"toUnixTimestamp64Milli({name})" for name in names)
        assert clickhouse.query(f"SELECT {select} FROM {table.name}")[1] == [
            [None if getattr(row, name) is None else ms - (5 if name == "original_timestamp" else 0) for name in names]
        ]
    _, values = clickhouse.query("SELECT partition, offset FROM dead_letters")
    assert values == [[65535, 2**63]]
    _, values = clickhouse.query("SELECT version FROM segment_changes")
    assert values == [[4_000_000_000]]


class _RecordingSink(AnalyticsSink):
    """The real sink, remembering the ranges it was given."""

    def __init__(self, clickhouse: ClickHouse) -> None:
        super().__init__(clickhouse)
        self.ranges: list[list[int]] = []

    def write(self, records: Sequence[tuple[int, AnalyticsRecord]], *, epoch: str | None = None) -> None:
        self.ranges.append([seq for seq, _ in records])
        super().write(records, epoch=epoch)


def test_a_filling_batch_is_read_once_and_written_whole_with_a_mutation_alone(
    tmp_path: Path, clickhouse: ClickHouse
) -> None:
    """Records arriving while a batch waits for its flush interval join it (read once, not re-read
    each poll); the batch goes out as one range, and an erase between rows is written alone."""
    db = RocksDB(tmp_path / "rocks", ())
    sink = _RecordingSink(clickhouse)
    loop = SinkLoop(db, sink, batch_rows=1000, flush_interval=0.5, wakeup=threading.Event())
    reads: list[tuple[int, int]] = []
    read_raw = loop._read_raw

    def counted(start: int, limit: int) -> list[tuple[int, bytes]]:
        out = read_raw(start, limit)
        reads.append((start, len(out)))
        return out

    loop._read_raw = counted  # type: ignore[method-assign]
    try:
        loop.start()
        for seq in range(3):
            db.cf(OUTBOX)[U64.pack(seq)] = dumps(event(f"m{seq}"))
            time.sleep(0.1)  # each arrives while the batch is still filling
        wait_until(lambda: loop.pending() == 0)
        db.cf(OUTBOX)[U64.pack(3)] = dumps(event("m3"))
        db.cf(OUTBOX)[U64.pack(4)] = dumps(EraseHistory(project_id="p", contact_ids=["nobody"]))
        db.cf(OUTBOX)[U64.pack(5)] = dumps(event("m5"))
        loop.wakeup.set()
        wait_until(lambda: loop.pending() == 0)
        loop.stop()
        assert sink.ranges == [[0, 1, 2], [3], [4], [5]]
        assert count(clickhouse, "SELECT uniqExact(message_id) FROM events") == 5
        # Every record was read from the outbox exactly once.
        read_seqs = [seq for start, size in reads for seq in range(start, start + size)]
        assert sorted(read_seqs) == list(range(6))
    finally:
        db.close()
