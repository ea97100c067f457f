"""The runtime-neutral decisions of the delivery agents (streams/delivery_decisions.py)."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import orjson

from spotzee.providers.delivery_service import DeliveryResult
from spotzee.schemas.messages import SendCommand
from spotzee.schemas.structs import convert
from spotzee.streams import topics
from spotzee.streams.delivery_decisions import (
    OUTCOME_UNKNOWN,
    DeliveryState,
    RetryPolicy,
    attempting,
    next_action,
    outcome,
)

NOW = datetime(2026, 1, 1, tzinfo=UTC)
POLICY = RetryPolicy(max_attempts=3, base=2.0, cap=60.0)
COMMAND = SendCommand(
    project_id="p",
    contact_id="ada",
    send_id="run_1:mail:1",
    channel="email",
    template_id="tpl",
    journey_id="jrn",
    run_id="run_1",
    step_id="mail",
    variables={},
    queued_at=NOW,
)


def state(status: str, attempts: int = 1) -> DeliveryState:
    return convert({"status": status, "attempts": attempts, "command": COMMAND}, DeliveryState)


def test_next_action_covers_every_state() -> None:
    assert next_action(None, from_retry_index=False) == "attempt"
    for final in ("sent", "failed", "suppressed"):
        assert next_action(state(final), from_retry_index=False) == "skip"
        assert next_action(state(final), from_retry_index=True) == "skip"
    assert next_action(state("attempting"), from_retry_index=False) == "unknown"
    assert next_action(state("attempting"), from_retry_index=True) == "unknown"
    assert next_action(state("retry"), from_retry_index=False) == "wait"  # a copy: the index brings it back
    assert next_action(state("retry"), from_retry_index=True) == "attempt"


def test_attempting_counts_attempts() -> None:
    assert attempting(COMMAND, None).attempts == 1
    assert attempting(COMMAND, state("retry", attempts=2)).attempts == 3


def test_a_transient_result_waits_at_least_retry_after_and_the_same_on_a_replay() -> None:
    result = DeliveryResult("retry", {"reason": "429"}, retry_after=30.0)
    first = outcome(COMMAND, 1, result, NOW, POLICY)
    assert first.state.status == "retry"
    assert first.state.due_at is not None
    assert first.state.due_at >= NOW + timedelta(seconds=30)
    assert [topic for topic, _, _ in first.emits] == [topics.ANALYTICS]  # a retrying row only
    assert outcome(COMMAND, 1, result, NOW, POLICY).state.due_at == first.state.due_at  # seeded jitter


def test_the_last_transient_attempt_fails_and_is_dead_lettered() -> None:
    done = outcome(COMMAND, 3, DeliveryResult("retry", {"reason": "503"}), NOW, POLICY)
    assert done.state.status == "failed"
    assert [topic for topic, _, _ in done.emits] == [
        topics.ANALYTICS,
        topics.DEAD_LETTER,
        topics.ANALYTICS,
        topics.EVENTS,
    ]
    row = orjson.loads(done.emits[0][2])
    assert row["status"] == "failed"
    assert "gave up after 3 attempts: 503" in row["detail"]
    event = orjson.loads(done.emits[-1][2])
    assert event["message_id"] == "run_1:mail:1:failed"


def test_sent_and_suppressed_emit_a_row_and_an_event_and_no_dead_letter() -> None:
    for status, event_name in (("sent", "message_sent"), ("suppressed", "message_suppressed")):
        done = outcome(COMMAND, 1, DeliveryResult(status, {}), NOW, POLICY)  # type: ignore[arg-type]
        assert done.state.status == status
        assert [topic for topic, _, _ in done.emits] == [topics.ANALYTICS, topics.EVENTS]
        assert orjson.loads(done.emits[1][2])["message"]["event"] == event_name


def test_outcome_unknown_is_a_permanent_failure() -> None:
    done = outcome(COMMAND, 1, OUTCOME_UNKNOWN, NOW, POLICY)
    assert done.state.status == "failed"
    assert "outcome unknown" in orjson.loads(done.emits[0][2])["detail"]
