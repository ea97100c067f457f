"""A timer fires no earlier than its time, and a journey run woken early waits for its own time.

Timer keys are milliseconds: rounded down, a timer fired up to 1 ms before its time, and a run
woken before its ``wake_at`` ignored the wake as early and then waited forever (seen as a run that
never exited under load). Keys now round up; and a run still takes a wake that comes early (another
worker's clock behind the one that armed it) by arming its timer again for its own time."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

from hypothesis import given
from hypothesis import strategies as st

from spotzee.domain.journeys import RunState
from spotzee.runtime.embedded.timers import _due_ms, _ms
from spotzee.runtime.kafka.partition_engine import due_key, now_key
from spotzee.streams.journey_processor import JOURNEY_RUNS
from spotzee.streams.record_codec import loads
from tests.unit.test_journey_recompute import T0, TRIGGER, Incremental, live_journey

instants = st.datetimes(min_value=datetime(2020, 1, 1), max_value=datetime(2040, 1, 1), timezones=st.just(UTC))


@given(at=instants, early=st.integers(1, 5_000))
def test_a_timer_is_never_due_before_its_time_and_at_most_a_millisecond_after(at: datetime, early: int) -> None:
    now = at - timedelta(microseconds=early)
    assert _due_ms(at) > _ms(now)  # embedded: not due a microsecond to 5 ms early
    assert due_key(at, "t") > now_key(now)  # Kafka: the same rule on its string keys
    late = at + timedelta(milliseconds=1)
    assert _due_ms(at) <= _ms(late)
    assert due_key(at, "t") <= now_key(late)


def test_a_run_woken_early_arms_its_timer_again_and_exits_on_time() -> None:
    journey = live_journey(
        {
            "name": "Wait a second",
            "trigger": {"type": "event", "event": TRIGGER},
            "start": "wait",
            "steps": {
                "wait": {"type": "delay", "duration": {"value": 1, "unit": "second"}, "next": "done"},
                "done": {"type": "exit"},
            },
        }
    )
    live = Incremental(journey)
    live.message("m1", {"type": "track", "userId": "u1", "event": TRIGGER})
    ((timer_id, (wake_at, _, key, value)),) = [(t, v) for t, v in live.ctx.timers.items() if t.startswith("journey:")]
    assert wake_at == T0 + timedelta(seconds=1)

    # Another worker fires it half a millisecond early (its clock ahead of this one's).
    del live.ctx.timers[timer_id]
    live.clock.set(wake_at - timedelta(microseconds=500))
    live.ctx.send(key, value)
    (run_raw,) = live.ctx.table(JOURNEY_RUNS).data.values()
    assert loads(RunState, run_raw).status == "waiting"
    assert live.ctx.timers[timer_id][0] == wake_at  # armed again for the run's own time

    live.advance(timedelta(milliseconds=1), on_time=True)
    assert live.ctx.table(JOURNEY_RUNS).data == {}  # woken on time: exited
