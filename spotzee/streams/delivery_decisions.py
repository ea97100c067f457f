"""What happens to one send, whatever the runtime: the decisions of the delivery agents.

Both delivery agents (``runtime/delivery_loop.py``, embedded; ``runtime/kafka/kafka_delivery.py``,
Kafka) keep a ``DeliveryState`` per ``send_id`` and follow the same steps; only where the state
lives and how a write is made durable differ. For each send (read from ``sends`` or brought back
by the retry index):

1. :func:`next_action` on the stored state: ``skip`` (a final state: a replayed send), ``wait``
   (a retry is scheduled: the retry index brings it back), ``unknown`` (``attempting`` is stored:
   a previous process stopped during the provider call; it is **not** called again) or
   ``attempt``;
2. for ``attempt``: :func:`attempting` is stored durably **before** the provider call, then the
   call (``Deliverer``: consent now, template, provider, render);
3. :func:`outcome` turns the result into the state to store (final, or ``retry`` with its due
   time) and the records to emit with it: a ``messages`` row, for a final state a delivery event
   back into ``events`` (``message_sent`` / ``message_failed`` / ``message_suppressed``, messageId
   ``<send_id>:<status>``) and, for a permanent failure, a dead letter (the ``dead-letter`` topic
   and the ``dead_letters`` table).
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Literal, TypedDict, Unpack

from spotzee.providers.delivery_service import DeliveryResult
from spotzee.providers.retry import next_delay, seeded_rng
from spotzee.schemas.analytics_models import DeadLetterRow
from spotzee.schemas.messages import SendCommand, message_row, track_record
from spotzee.schemas.records import IngestedMessage
from spotzee.schemas.structs import Struct, encode
from spotzee.streams import topics
from spotzee.streams.record_codec import dumps

FINAL = ("sent", "failed", "suppressed")
EVENT_NAMES = {"sent": "message_sent", "failed": "message_failed", "suppressed": "message_suppressed"}
OUTCOME_UNKNOWN = DeliveryResult(
    "failed", {"reason": "outcome unknown: stopped during the provider call; not retried (at most once)"}
)

Action = Literal["skip", "wait", "unknown", "attempt"]
Emit = tuple[str, str, bytes]


class DeliveryState(Struct, kw_only=True):
    """A send's state in the agent's ``deliveries`` store (a msgspec Struct: the JSON pydantic wrote)."""

    status: Literal["attempting", "retry", "sent", "failed", "suppressed"]
    attempts: int = 0
    due_at: datetime | None = None
    command: SendCommand


@dataclass(frozen=True)
class RetryPolicy:
    max_attempts: int
    base: float
    cap: float


@dataclass(frozen=True)
class Outcome:
    state: DeliveryState  # final, or ``retry`` with ``due_at`` (the caller indexes it)
    emits: list[Emit]


def next_action(state: DeliveryState | None, *, from_retry_index: bool) -> Action:
    if state is not None and state.status in FINAL:
        return "skip"
    if state is not None and state.status == "attempting":
        return "unknown"
    if state is not None and not from_retry_index:
        return "wait"  # a copy of a send waiting for its retry (sends are at-least-once)
    return "attempt"


def attempting(command: SendCommand, state: DeliveryState | None) -> DeliveryState:
    """The marker stored (durably) before the provider call: attempt number included."""
    attempts = (state.attempts if state is not None else 0) + 1
    return DeliveryState(status="attempting", attempts=attempts, command=command)


class ReadAt(TypedDict, total=False):
    """Where the send command was read from, which a dead letter names (0 when not given)."""

    partition: int
    offset: int


def outcome(
    command: SendCommand,
    attempts: int,
    result: DeliveryResult,
    now: datetime,
    policy: RetryPolicy,
    **read_at: Unpack[ReadAt],
) -> Outcome:
    key = f"{command.project_id}:{command.contact_id}"
    status = result.status
    detail: dict[str, object] = {**result.detail, "attempts": attempts}
    if status == "retry" and attempts < policy.max_attempts:
        rng = seeded_rng(command.send_id, attempts)  # a replayed decision draws the same jitter
        delay = next_delay(attempts, result.retry_after, base=policy.base, cap=policy.cap, rng=rng)
        due_at = now + timedelta(seconds=delay)
        row = message_row(command, "retrying", now, {**detail, "due_at": due_at.isoformat()})
        return Outcome(
            DeliveryState(status="retry", attempts=attempts, due_at=due_at, command=command),
            [(topics.ANALYTICS, key, dumps(row))],
        )
    if status == "retry":
        status = "failed"
        detail["reason"] = f"gave up after {attempts} attempts: {detail.get('reason', '')}"
    emits: list[Emit] = [(topics.ANALYTICS, key, dumps(message_row(command, status, now, detail)))]
    if status == "failed":  # permanent: dead-lettered with its reason, the journey moves on
        dead = DeadLetterRow(
            project_id=command.project_id,
            dead_letter_id=f"{topics.SENDS}/{command.send_id}",
            topic=topics.SENDS,
            partition=read_at.get("partition", 0),
            offset=read_at.get("offset", 0),
            key=key,
            error=str(detail.get("reason", ""))[:2000],
            payload=encode(command).decode(),
            at=now,
        )
        emits += [(topics.DEAD_LETTER, key, dumps(dead)), (topics.ANALYTICS, key, dumps(dead))]
    emits.append((topics.EVENTS, key, dumps(delivery_event(command, status, now))))
    return Outcome(DeliveryState(status=status, attempts=attempts, command=command), emits)


def delivery_event(command: SendCommand, status: str, now: datetime) -> IngestedMessage:
    """The contact's track event for a final status (messageId ``<send_id>:<status>``: replays dedupe)."""
    return track_record(
        project_id=command.project_id,
        message_id=f"{command.send_id}:{status}",
        user_id=command.contact_id,
        event=EVENT_NAMES[status],
        properties={
            "send_id": command.send_id,
            "channel": command.channel,
            "template_id": command.template_id,
            "journey_id": command.journey_id,
            "step_id": command.step_id,
        },
        received_at=now,
        forwarded_to=command.contact_id,
    )
