"""The journey scheduler with a test clock, over an in-memory contact processor: which occurrence
fires when, what is persisted, missed occurrences, paused journeys, and exactly-once entries."""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from itertools import pairwise
from typing import Any

import pytest

from spotzee.domain.journeys import EntranceHistory
from spotzee.schemas.journey_models import JourneyDefinition
from spotzee.schemas.records import JourneyEntry, record_key
from spotzee.schemas.segment_models import ListMembership
from spotzee.schemas.structs import replace
from spotzee.services.scheduler import Scheduler, ScheduleState, state_key
from spotzee.streams.contact_processor import ContactProcessor
from spotzee.streams.journey_processor import JOURNEY_ENTRIES, JOURNEY_RUNS, JourneyRegistry
from spotzee.streams.record_codec import dumps, loads
from spotzee.streams.segment_processor import SegmentRegistry
from spotzee.testing import ManualClock, MemoryContext

PROJECT = "prj_1"
JOURNEY = "jrn_daily"
T0 = datetime(2026, 3, 2, 8, 30, tzinfo=UTC)  # a Monday, 30 minutes before the first occurrence
NINE = datetime(2026, 3, 2, 9, 0, tzinfo=UTC)
DAY = timedelta(days=1)


class MemoryRuntime:
    """What the scheduler uses of a runtime: appends go straight to an in-memory processor."""

    def __init__(self, ctx: MemoryContext) -> None:
        self.ctx = ctx
        self.definitions: dict[str, bytes] = {}
        self.appended: list[JourneyEntry] = []
        self.fail_after: int | None = None  # appends to accept before failing

    async def append(self, records: list[tuple[str, bytes]]) -> list[Any]:
        if self.fail_after is not None:
            if self.fail_after == 0:
                raise RuntimeError("log down")
            self.fail_after -= 1
        for key, value in records:
            self.appended.append(loads(JourneyEntry, value))
            self.ctx.send(key, value)
        return []

    def scan(self, table: str, prefix: str, after: str | None = None) -> Iterator[tuple[str, bytes]]:
        return ((k, v) for k, v in self.ctx.table(table).scan_prefix(prefix) if after is None or k > after)

    def put_definitions(self, items: list[tuple[str, bytes | None]], outbox: list[bytes]) -> None:
        for key, value in items:
            if value is None:
                self.definitions.pop(key, None)
            else:
                self.definitions[key] = value

    def scan_definitions(self, prefix: str) -> Iterator[tuple[str, bytes]]:
        return ((k, self.definitions[k]) for k in sorted(self.definitions) if k.startswith(prefix))


class World:
    def __init__(self, **trigger: Any) -> None:
        self.clock = ManualClock(T0)
        self.journeys = JourneyRegistry()
        self.segments = SegmentRegistry()
        processor = ContactProcessor(
            dedupe_window=timedelta(hours=1), recent_limit=10, segments=self.segments, journeys=self.journeys
        )
        self.ctx = MemoryContext(processor, self.clock)
        self.runtime = MemoryRuntime(self.ctx)
        self.zone = "UTC"
        for contact, list_id in (("ann", "lst_a"), ("bob", "lst_a"), ("carol", "lst_b")):
            record = ListMembership(
                project_id=PROJECT,
                id=contact,
                list_id=list_id,
                member=True,
                requested_at=T0,
                request_id="r1",
            )
            self.ctx.send(record_key(record), dumps(record))
        self.publish(**trigger)

    def publish(self, status: str = "live", updated_at: datetime = T0, version: int = 1, **trigger: Any) -> None:
        self.journeys.apply(
            JourneyDefinition.model_validate(
                {
                    "id": JOURNEY,
                    "project_id": PROJECT,
                    "version": version,
                    "status": status,
                    "created_at": T0 - DAY,
                    "updated_at": updated_at,
                    "name": "Daily digest",
                    "trigger": {
                        "type": "scheduled",
                        "cron": "0 9 * * *",
                        "audience": {"list_id": "lst_a"},
                        **trigger,
                    },
                    "entrance": {"reentry": "concurrent"},
                    "start": "wait",
                    "steps": {
                        "wait": {"type": "delay", "duration": {"value": 1, "unit": "hour"}, "next": "done"},
                        "done": {"type": "exit"},
                    },
                }
            )
        )

    def scheduler(self, **options: Any) -> Scheduler:
        return Scheduler(self.runtime, self.journeys, self.segments, lambda _: self.zone, self.clock, **options)  # type: ignore[arg-type]

    def at(self, when: datetime) -> World:
        self.clock.set(when)
        self.ctx.drain()  # timers due by then (runs finishing their delay)
        return self

    def tick(self, scheduler: Scheduler) -> float:
        return asyncio.run(scheduler.tick())

    def occurrences(self) -> list[tuple[str, datetime | None]]:
        return [(e.id, e.occurrence) for e in self.runtime.appended]

    def runs(self, contact: str) -> int:
        return len(list(self.ctx.table(JOURNEY_RUNS).scan_prefix(f"{PROJECT}:{contact}\x00")))

    def history(self, contact: str) -> EntranceHistory:
        raw = self.ctx.table(JOURNEY_ENTRIES).get(f"{PROJECT}:{contact}\x00{JOURNEY}")
        assert raw is not None
        return loads(EntranceHistory, raw)

    def stored(self) -> ScheduleState:
        return ScheduleState.model_validate_json(self.runtime.definitions[state_key(JOURNEY)])


def test_the_audience_enters_at_the_occurrence_with_the_schedule_key_and_event() -> None:
    world = World()
    scheduler = world.scheduler()
    assert world.tick(scheduler) == 0.5  # 30 minutes to go: look again in half a second
    assert world.runtime.appended == []
    world.at(NINE - timedelta(seconds=0.25))
    assert world.tick(scheduler) == pytest.approx(0.25)  # wakes right at the occurrence
    world.at(NINE)
    world.tick(scheduler)
    assert world.occurrences() == [("ann", NINE), ("bob", NINE)]  # list members only, not carol
    entry = world.runtime.appended[0]
    assert entry.entry_id == f"schedule:{JOURNEY}:2026-03-02T09:00:00Z"
    assert entry.event == {
        "name": "journey_scheduled",
        "properties": {"occurrence": "2026-03-02T09:00:00Z"},
        "message_id": None,
        "timestamp": "2026-03-02T09:00:00Z",
    }
    assert not entry.create_contact
    assert (world.runs("ann"), world.runs("bob"), world.runs("carol")) == (1, 1, 0)
    assert world.history("ann").last_occurrence == NINE
    assert world.stored().last_occurrence == NINE
    assert world.stored().current is None
    world.at(NINE + timedelta(seconds=30))
    world.tick(scheduler)
    assert len(world.runtime.appended) == 2  # once per occurrence
    world.at(NINE + DAY)
    world.tick(scheduler)
    assert world.occurrences()[2:] == [("ann", NINE + DAY), ("bob", NINE + DAY)]


def test_the_schedule_is_read_in_the_trigger_zone_else_the_journey_else_the_project() -> None:
    world = World()
    world.zone = "Europe/Paris"  # the project's: 09:00 there is 08:00 UTC in March
    scheduler = world.scheduler()
    journey = world.journeys.get(JOURNEY)
    assert journey is not None
    assert scheduler.due(journey, NINE) is None  # 08:00 UTC was before it went live (08:30)
    assert scheduler.due(journey, NINE + DAY) == NINE + DAY - timedelta(hours=1)
    world.publish(version=2, timezone="America/New_York")  # the trigger's zone wins
    journey = world.journeys.get(JOURNEY)
    assert journey is not None
    assert scheduler.due(journey, NINE + timedelta(hours=5)) == NINE + timedelta(hours=5)  # 09:00 EST = 14:00 UTC
    assert scheduler.due(journey, NINE) is None


def test_a_restart_does_not_fire_the_same_occurrence_again() -> None:
    world = World()
    world.at(NINE)
    world.tick(world.scheduler())
    world.at(NINE + timedelta(minutes=5))
    world.tick(world.scheduler())  # a new process: reads the stored progress
    assert len(world.runtime.appended) == 2


def test_the_most_recent_missed_occurrence_fires_once_at_start_up() -> None:
    world = World()
    world.at(NINE)
    world.tick(world.scheduler())
    world.at(NINE + 3 * DAY + timedelta(hours=1))  # down for three days
    scheduler = world.scheduler()
    world.tick(scheduler)
    world.tick(scheduler)
    assert world.occurrences()[2:] == [("ann", NINE + 3 * DAY), ("bob", NINE + 3 * DAY)]
    assert world.stored().last_occurrence == NINE + 3 * DAY


def test_an_occurrence_missed_by_more_than_the_limit_is_skipped() -> None:
    world = World()
    world.at(NINE)
    world.tick(world.scheduler())
    world.at(NINE + DAY + timedelta(hours=2))
    scheduler = world.scheduler(missed_limit=timedelta(hours=1))
    world.tick(scheduler)
    assert len(world.runtime.appended) == 2  # 09:00 is two hours old: skipped
    world.at(NINE + 2 * DAY)
    world.tick(scheduler)
    assert world.occurrences()[2:] == [("ann", NINE + 2 * DAY), ("bob", NINE + 2 * DAY)]


@pytest.mark.parametrize("status", ["draft", "paused", "archived"])
def test_journeys_that_are_not_live_do_not_fire(status: str) -> None:
    world = World()
    world.publish(status=status, version=2)
    world.at(NINE)
    world.tick(world.scheduler())
    assert world.runtime.appended == []


def test_a_journey_published_after_an_occurrence_does_not_fire_it() -> None:
    world = World()
    world.publish(updated_at=NINE + timedelta(minutes=10), version=2)
    world.at(NINE + timedelta(minutes=20))
    scheduler = world.scheduler()
    world.tick(scheduler)
    assert world.runtime.appended == []
    world.at(NINE + DAY)
    world.tick(scheduler)
    assert world.occurrences() == [("ann", NINE + DAY), ("bob", NINE + DAY)]


def test_a_paused_and_resumed_journey_does_not_fire_what_it_missed() -> None:
    world = World()
    scheduler = world.scheduler()
    world.publish(status="paused", updated_at=NINE - timedelta(minutes=5), version=2)
    world.at(NINE)
    world.tick(scheduler)
    world.publish(status="live", updated_at=NINE + timedelta(minutes=5), version=3)
    world.at(NINE + timedelta(minutes=6))
    world.tick(scheduler)
    assert world.runtime.appended == []


def test_the_processor_refuses_a_repeated_occurrence_even_after_the_run_exited() -> None:
    world = World()
    world.at(NINE)
    world.tick(world.scheduler())
    first = list(world.runtime.appended)
    world.at(NINE + timedelta(hours=2))  # the runs waited their hour and exited
    assert world.runs("ann") == 0
    assert world.history("ann").entries == 1
    for entry in first:  # the same occurrence emitted again (a crash, a second API process)
        world.ctx.send(record_key(entry), dumps(entry))
    earlier = replace(first[0], occurrence=NINE - DAY, entry_id="schedule:x")
    world.ctx.send(record_key(earlier), dumps(earlier))  # an earlier occurrence, late
    assert (world.history("ann").entries, world.history("bob").entries) == (1, 1)
    assert world.runs("ann") == 0


def test_a_crash_in_the_middle_resumes_after_the_last_page_written() -> None:
    world = World()
    world.at(NINE)
    world.runtime.fail_after = 1  # the first page (ann) goes out, the second fails
    with pytest.raises(RuntimeError):
        world.tick(world.scheduler(page=1))
    assert world.stored().current == NINE
    assert world.stored().last_occurrence is None
    world.runtime.fail_after = None
    world.at(NINE + timedelta(seconds=5))
    world.tick(world.scheduler(page=1))  # a restart: picks up at bob
    assert world.occurrences() == [("ann", NINE), ("bob", NINE)]
    assert world.stored().last_occurrence == NINE


def test_the_loop_sleeps_until_the_occurrence() -> None:
    world = World(cron=None, rrule="DTSTART:20260302T090000Z\nRRULE:FREQ=HOURLY;COUNT=3")
    scheduler = world.scheduler()
    end = NINE + timedelta(hours=2, minutes=30)
    woke: list[datetime] = []

    async def sleep(seconds: float) -> None:
        world.clock.advance(timedelta(seconds=seconds))
        woke.append(world.clock.now())
        if world.clock.now() >= end:
            raise asyncio.CancelledError

    with pytest.raises(asyncio.CancelledError):
        asyncio.run(scheduler.run(sleep))
    assert world.occurrences() == [(c, NINE + h * timedelta(hours=1)) for h in range(3) for c in ("ann", "bob")]
    assert all(e.at == e.occurrence for e in world.runtime.appended)  # woke exactly at each one
    assert max(b - a for a, b in pairwise(woke)) <= timedelta(seconds=0.5)  # never sleeps past a poll
