"""Scheduled journeys fire on both runtimes: at an occurrence every member of the audience (a list,
a segment) enters once, nobody else does, and a restart doesn't fire the same occurrence again.

An hourly RRULE, and a clock in the API process (where the scheduler runs) that the test moves to
just after the next hour: no waiting for real hours.
"""

from __future__ import annotations

import time
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest

from tests.conftest import RUNTIMES
from tests.integration.test_journeys import publish
from tests.support import Stack, running_stack, wait_until

HOURLY = "DTSTART:20260101T000000Z\nRRULE:FREQ=HOURLY"


class MovableClock:
    """System time plus an offset the test sets (it only ever moves forward)."""

    def __init__(self) -> None:
        self.offset = timedelta(0)

    def now(self) -> datetime:
        return datetime.now(UTC) + self.offset

    def jump_to(self, when: datetime) -> None:
        self.offset = when - datetime.now(UTC)


def digest(audience: dict[str, str]) -> dict[str, Any]:
    """Each run notes its occurrence on the contact (the run's ``event``), then exits."""
    mark = "list_digest" if "list_id" in audience else "segment_digest"
    return {
        "name": "Hourly digest",
        "trigger": {"type": "scheduled", "rrule": HOURLY, "audience": audience},
        "entrance": {"reentry": "concurrent"},
        "start": "mark",
        "steps": {
            "mark": {
                "type": "update",
                "set": {mark: "{{ event.name }} {{ event.properties.occurrence }}"},
                "next": "done",
            },
            "done": {"type": "exit"},
        },
    }


def traits(stack: Stack, contact: str) -> dict[str, Any]:
    found: dict[str, Any] = stack.project.get(f"/api/v1/contacts/{contact}").json()["traits"]
    return found


def runs(stack: Stack, journey_id: str) -> dict[str, int]:
    """Runs per contact that went all the way (an exited row at the last step)."""
    rows = stack.sql(
        "SELECT contact_id, count(DISTINCT run_id), count() FROM journey_steps FINAL "
        f"WHERE journey_id = '{journey_id}' AND step_id = 'done' AND kind = 'exited' GROUP BY contact_id"
    )
    assert all(r[1] == r[2] for r in rows), rows
    return {r[0]: int(r[1]) for r in rows}


def settled_runs(stack: Stack, expected: dict[str, dict[str, int]], timeout: float = 60) -> None:
    def done() -> bool:
        stack.settle()
        return all(runs(stack, journey_id) == want for journey_id, want in expected.items())

    try:
        wait_until(done, timeout=timeout, interval=0.5)
    except AssertionError:
        assert {j: runs(stack, j) for j in expected} == expected
        raise


def next_hour(at: datetime) -> datetime:
    return at.replace(minute=0, second=0, microsecond=0) + timedelta(hours=1)


@pytest.mark.parametrize("runtime", RUNTIMES)
def test_an_occurrence_enters_the_audience_once_even_across_a_restart(
    runtime: str, request: pytest.FixtureRequest, tmp_path: Path
) -> None:
    bootstrap = request.getfixturevalue("kafka_bootstrap") if runtime == "kafka" else None
    clock = MovableClock()
    data = tmp_path / "data"
    same: dict[str, Any] = {}
    with running_stack(data, clock=clock, runtime=runtime, kafka_bootstrap=bootstrap) as stack:
        if runtime == "kafka":
            same["kafka_topic_prefix"] = stack.services.settings.kafka_topic_prefix
        project = stack.project
        list_id = project.post("/api/v1/lists", json={"name": "Digest readers"}).json()["id"]
        added = project.post(f"/api/v1/lists/{list_id}/members", json={"ids": ["ann", "bob"]})
        assert added.status_code in (200, 202), added.text
        for user, plan in (("ann", "pro"), ("dave", "pro"), ("carol", "free")):
            assert stack.ingest.post("/v1/identify", json={"userId": user, "traits": {"plan": plan}}).status_code == 200
        rule = {"type": "attribute", "path": "plan", "op": "eq", "value": "pro"}
        segment = project.post("/api/v1/segments", json={"name": "Pro", "rule": rule})
        assert segment.status_code == 201, segment.text
        segment_id = segment.json()["id"]
        wait_until(lambda: project.get(f"/api/v1/segments/{segment_id}").json()["status"] == "ready", timeout=60)
        stack.settle()
        by_list = publish(stack, digest({"list_id": list_id}))
        by_segment = publish(stack, digest({"segment_id": segment_id}))
        if runtime == "kafka":
            time.sleep(1.0)  # workers learn the journeys from the definitions topic
        assert runs(stack, by_list) == {}

        first = next_hour(clock.now())
        clock.jump_to(first + timedelta(seconds=1))
        once = {by_list: {"ann": 1, "bob": 1}, by_segment: {"ann": 1, "dave": 1}}
        settled_runs(stack, once)
        scheduler = stack.services.scheduler
        assert scheduler is not None
        wait_until(lambda: scheduler.fired == 2, timeout=10)
        time.sleep(1.5)  # a few more scheduler passes fire nothing more
        settled_runs(stack, once)
        occurrence = f"journey_scheduled {first:%Y-%m-%dT%H:%M:%S}Z"
        assert traits(stack, "ann")["list_digest"] == occurrence
        assert traits(stack, "ann")["segment_digest"] == occurrence
        assert traits(stack, "dave")["segment_digest"] == occurrence
        assert "list_digest" not in traits(stack, "dave")
        assert "list_digest" not in traits(stack, "carol")
        assert "segment_digest" not in traits(stack, "carol")

    with running_stack(data, clock=clock, runtime=runtime, kafka_bootstrap=bootstrap, **same) as stack:
        time.sleep(2.0)  # the restarted scheduler has looked: the occurrence was fired already
        settled_runs(stack, once)
        scheduler = stack.services.scheduler
        assert scheduler is not None
        assert scheduler.fired == 0

        clock.jump_to(first + timedelta(hours=1, seconds=1))  # the next occurrence
        settled_runs(stack, {by_list: {"ann": 2, "bob": 2}, by_segment: {"ann": 2, "dave": 2}})
