"""The embedded runtime: poison records, timers on an injected clock, recovery of offsets."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from pathlib import Path

from spotzee.runtime.embedded.embedded_runtime import EmbeddedRuntime
from spotzee.schemas.analytics_models import DeadLetterRow, EventRow, analytics_record_adapter
from spotzee.settings import Settings
from spotzee.streams.interface import Context
from spotzee.tables.rocksdb_store import OUTBOX
from spotzee.testing import ManualClock
from tests.support import wait_until


class Recorder:
    """A processor that counts per key, schedules a timer on request, and chokes on 'poison'."""

    topic = "events"
    tables: tuple[str, ...] = ("counts",)

    def process(self, ctx: Context, key: str, value: bytes) -> None:
        if value == b"poison":
            ctx.table("counts").set(key, b"must not be kept")
            raise ValueError("cannot digest this")
        counts = ctx.table("counts")
        counts.set(key, str(int(counts.get(key) or b"0") + 1).encode())
        if value.startswith(b"remind:"):
            seconds = int(value.split(b":")[1])
            ctx.schedule(f"t:{key}", ctx.clock.now() + timedelta(seconds=seconds), "events", key, b"reminded")
        if value == b"cancel":
            ctx.cancel(f"t:{key}")


def runtime(path: Path, clock: ManualClock, partitions: int = 3) -> EmbeddedRuntime:
    rt = EmbeddedRuntime(Settings(data_dir=path, partitions=partitions), Recorder(), clock)  # type: ignore[arg-type]
    rt.start()
    return rt


def settle(rt: EmbeddedRuntime) -> None:
    wait_until(lambda: rt.processing_lag() == 0, timeout=10, interval=0.01)


def test_a_poison_record_is_dead_lettered_and_does_not_stall_its_partition(tmp_path: Path) -> None:
    clock = ManualClock()
    rt = runtime(tmp_path, clock, partitions=1)
    try:
        rt.append_sync([("p:a", b"x"), ("p:b", b"poison"), ("p:a", b"y")])
        settle(rt)
        assert rt.read("counts", "p:a") == b"2"
        assert rt.read("counts", "p:b") is None  # the poison record's own writes were rolled back
        outbox = [analytics_record_adapter.validate_json(bytes(v)) for v in rt.db.cf(OUTBOX).values()]
        assert len(outbox) == 1
        assert isinstance(outbox[0], DeadLetterRow)
        assert outbox[0].key == "p:b"
        assert "cannot digest" in outbox[0].error
        assert rt.dead_lettered_total == 1
    finally:
        rt.stop()
        rt.close()


def test_timers_fire_when_the_clock_passes_them_and_can_be_cancelled(tmp_path: Path) -> None:
    clock = ManualClock(datetime(2026, 1, 1, tzinfo=UTC))
    rt = runtime(tmp_path, clock)
    try:
        rt.append_sync([("p:a", b"remind:60"), ("p:b", b"remind:60")])
        settle(rt)
        assert rt.timers_pending() == 2
        rt.append_sync([("p:b", b"cancel")])
        settle(rt)
        assert rt.timers_pending() == 1
        clock.advance(timedelta(seconds=59))
        rt.append_sync([("p:c", b"tick")])
        settle(rt)
        assert rt.read("counts", "p:a") == b"1"
        clock.advance(timedelta(seconds=2))
        wait_until(lambda: rt.read("counts", "p:a") == b"2")
        assert rt.timers_pending() == 0
        assert rt.read("counts", "p:b") == b"2"  # remind + cancel, never reminded
    finally:
        rt.stop()
        rt.close()


def test_offsets_state_and_timers_survive_a_restart(tmp_path: Path) -> None:
    clock = ManualClock(datetime(2026, 1, 1, tzinfo=UTC))
    rt = runtime(tmp_path, clock)
    rt.pause()
    rt.append_sync([("p:a", b"1"), ("p:a", b"remind:10"), ("p:b", b"1")])
    assert rt.processing_lag() == 3
    rt.stop()
    rt.close()
    rt = runtime(tmp_path, clock)  # unprocessed records are still in the log
    try:
        settle(rt)
        assert (rt.read("counts", "p:a"), rt.read("counts", "p:b")) == (b"2", b"1")
        assert rt.timers_pending() == 1
        rt.stop()
        rt.close()
        rt = runtime(tmp_path, clock)
        clock.advance(timedelta(seconds=11))
        # state becomes readable a moment before the committed offset moves: wait for both
        wait_until(lambda: rt.read("counts", "p:a") == b"3" and rt.processing_lag() == 0)
    finally:
        rt.stop()
        rt.close()


def test_emitted_analytics_go_to_the_outbox_in_the_same_commit(tmp_path: Path) -> None:
    from spotzee.streams.contact_processor import ContactProcessor  # the real processor

    clock = ManualClock()
    rt = EmbeddedRuntime(
        Settings(data_dir=tmp_path, partitions=2),
        ContactProcessor(dedupe_window=timedelta(hours=1), recent_limit=5),
        clock,
    )
    rt.start()
    try:
        from pydantic import TypeAdapter

        from spotzee.schemas.events import SegmentMessage
        from spotzee.schemas.message_data import message_data
        from spotzee.schemas.records import IngestedMessage, record_key
        from spotzee.streams.record_codec import dumps

        message = TypeAdapter[SegmentMessage](SegmentMessage).validate_python(
            {"type": "track", "userId": "u", "event": "e"}
        )
        record = IngestedMessage(
            project_id="p", message_id="m", received_at=clock.now(), message=message_data(message), raw="{}"
        )
        rt.append_sync([(record_key(record), dumps(record))])
        settle(rt)
        rows = [analytics_record_adapter.validate_json(bytes(v)) for v in rt.db.cf(OUTBOX).values()]
        assert [type(r) for r in rows] == [EventRow]
        assert rt.outbox_next == 1
    finally:
        rt.stop()
        rt.close()
