"""The embedded runtime's delivery agent: the ``sends`` topic -> providers, at most once per send_id.

A thread reads ``sends`` from its stored offset. For each send:

1. a final state for its ``send_id`` (``deliveries`` family) means it was handled: skip (replay);
2. ``attempting`` is written and synced **before** the provider call;
3. the call (``Deliverer``: consent now, template, provider, render);
4. one synced write: the final state (or ``retry`` with its due time in the retry index), a
   ``messages`` row, a delivery event (``message_sent`` / ``message_failed`` /
   ``message_suppressed``) back into ``events``, and the offset.

A crash between 2 and 4 leaves ``attempting``: the provider may or may not have taken the
message, and it is **not** called again (at most once); the send is recorded ``failed`` with
reason ``outcome unknown``. That is the residual window: the time of one provider call. Emails
carry a ``Message-ID`` derived from the send_id and webhooks an ``Idempotency-Key``, so a receiver
can recognise a duplicate should an operator re-send by hand.
"""

from __future__ import annotations

import asyncio
import logging
import threading
from datetime import datetime, timedelta
from itertools import islice
from typing import Literal

from spotzee.delivery import Deliverer, DeliveryResult
from spotzee.providers.retry import next_delay
from spotzee.runtime.embedded import EmbeddedRuntime
from spotzee.runtime.rocks import DELIVERIES, META, U64
from spotzee.schemas.analytics import DeadLetterRow
from spotzee.schemas.common import Model, UTCDateTime
from spotzee.schemas.contacts import ContactState
from spotzee.schemas.events import TrackMessage
from spotzee.schemas.messages import SendCommand, message_row
from spotzee.schemas.records import IngestedMessage
from spotzee.settings import Settings
from spotzee.streams import topics
from spotzee.streams.codec import dumps, loads
from spotzee.streams.contacts import CONTACTS
from spotzee.streams.interface import Clock

log = logging.getLogger(__name__)

OFFSET = b"delivery_offset"
FINAL = ("sent", "failed", "suppressed")
EVENT_NAMES = {"sent": "message_sent", "failed": "message_failed", "suppressed": "message_suppressed"}


class DeliveryState(Model):
    status: Literal["attempting", "retry", "sent", "failed", "suppressed"]
    attempts: int = 0
    due_at: UTCDateTime | None = None
    command: SendCommand


def _state_key(send_id: str) -> bytes:
    return b"s/" + send_id.encode()


def _retry_key(due_at: datetime, send_id: str) -> bytes:
    return b"r/%013d/" % int(due_at.timestamp() * 1000) + send_id.encode()


class DeliveryLoop:
    def __init__(self, runtime: EmbeddedRuntime, deliverer: Deliverer, settings: Settings, clock: Clock) -> None:
        self.runtime = runtime
        self.deliverer = deliverer
        self.settings = settings
        self.clock = clock
        self.offset = runtime.db.get_u64(OFFSET)
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self.last_error: str | None = None
        self.delivered = 0

    def start(self) -> None:
        self._thread = threading.Thread(target=lambda: asyncio.run(self._run()), name="spotzee-delivery", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=30)

    def alive(self) -> bool:
        return self._thread is not None and self._thread.is_alive()

    async def _run(self) -> None:
        while not self._stop.is_set():
            try:
                busy = await self._pass()
                self.last_error = None
            except Exception as exc:  # keep going: the same send is tried again after a pause
                self.last_error = f"{type(exc).__name__}: {exc}"
                log.exception("delivery pass failed")
                busy = False
            if not busy:
                await asyncio.sleep(0.05)

    async def _pass(self) -> bool:
        busy = False
        for seq, raw in list(islice(self.runtime.topic_records(topics.SENDS, self.offset), 100)):
            await self._handle(loads(SendCommand, raw), next_offset=seq + 1)
            self.offset = seq + 1
            busy = True
        now = self.clock.now()
        for key, _ in list(islice(self.runtime.db.scan_prefix(DELIVERIES, "r/"), 100)):
            due_ms = int(key.split("/")[1])
            if due_ms > now.timestamp() * 1000:
                break
            raw_state = self.runtime.db.cf(DELIVERIES).get(_state_key(key.split("/", 2)[2]))
            if raw_state is None:
                self.runtime.commit_external([(DELIVERIES, key.encode(), None)], [])
                continue
            state = loads(DeliveryState, bytes(raw_state))
            await self._handle(state.command, next_offset=None, retry_key=key.encode())
            busy = True
        return busy

    async def _handle(self, command: SendCommand, *, next_offset: int | None, retry_key: bytes | None = None) -> None:
        puts: list[tuple[str, bytes, bytes | None]] = []
        if next_offset is not None:
            puts.append((META, OFFSET, U64.pack(next_offset)))
        if retry_key is not None:
            puts.append((DELIVERIES, retry_key, None))
        raw = self.runtime.db.cf(DELIVERIES).get(_state_key(command.send_id))
        state = loads(DeliveryState, bytes(raw)) if raw is not None else None
        now = self.clock.now()
        if state is not None and state.status in FINAL:
            self.runtime.commit_external(puts, [])  # a replayed send: handled already
            return
        if state is not None and state.status == "attempting":
            result = DeliveryResult(
                "failed", {"reason": "outcome unknown: stopped during the provider call; not retried (at most once)"}
            )
            self._finish(command, state.attempts, result, now, puts)
            return
        if state is not None and retry_key is None:
            self.runtime.commit_external(puts, [])  # waiting for its retry: the index brings it back
            return
        attempts = (state.attempts if state is not None else 0) + 1
        attempting = DeliveryState(status="attempting", attempts=attempts, command=command)
        self.runtime.commit_external([(DELIVERIES, _state_key(command.send_id), dumps(attempting))], [])
        contact_raw = self.runtime.read(CONTACTS, f"{command.project_id}:{command.contact_id}")
        contact = loads(ContactState, contact_raw) if contact_raw is not None else None
        result = await self.deliverer.deliver(command, contact)
        self._finish(command, attempts, result, self.clock.now(), puts)

    def _finish(
        self,
        command: SendCommand,
        attempts: int,
        result: DeliveryResult,
        now: datetime,
        puts: list[tuple[str, bytes, bytes | None]],
    ) -> None:
        key = f"{command.project_id}:{command.contact_id}"
        emits: list[tuple[str, str, bytes]] = []
        status = result.status
        detail = {**result.detail, "attempts": attempts}
        if status == "retry" and attempts < self.settings.delivery_max_attempts:
            delay = next_delay(
                attempts,
                result.retry_after,
                base=self.settings.delivery_retry_base,
                cap=self.settings.delivery_retry_cap,
            )
            due_at = now + timedelta(seconds=delay)
            state = DeliveryState(status="retry", attempts=attempts, due_at=due_at, command=command)
            puts += [
                (DELIVERIES, _state_key(command.send_id), dumps(state)),
                (DELIVERIES, _retry_key(due_at, command.send_id), b""),
            ]
            emits.append(
                (
                    topics.ANALYTICS,
                    key,
                    dumps(message_row(command, "retrying", now, {**detail, "due_at": due_at.isoformat()})),
                )
            )
            self.runtime.commit_external(puts, emits)
            return
        if status == "retry":
            status = "failed"
            detail["reason"] = f"gave up after {attempts} attempts: {detail.get('reason', '')}"
        final = DeliveryState(status=status, attempts=attempts, command=command)
        puts.append((DELIVERIES, _state_key(command.send_id), dumps(final)))
        emits.append((topics.ANALYTICS, key, dumps(message_row(command, status, now, detail))))
        if status == "failed":  # permanent: dead-lettered with its reason, the journey moves on
            dead = DeadLetterRow(
                project_id=command.project_id,
                dead_letter_id=f"{topics.SENDS}/{command.send_id}",
                topic=topics.SENDS,
                partition=0,
                offset=0,
                key=key,
                error=str(detail.get("reason", ""))[:2000],
                payload=command.model_dump_json(),
                at=now,
            )
            emits.append((topics.DEAD_LETTER, key, dumps(dead)))
        event = TrackMessage.model_validate(
            {
                "userId": command.contact_id,
                "event": EVENT_NAMES[status],
                "properties": {
                    "send_id": command.send_id,
                    "channel": command.channel,
                    "template_id": command.template_id,
                    "journey_id": command.journey_id,
                    "step_id": command.step_id,
                },
            }
        )
        ingested = IngestedMessage(
            project_id=command.project_id,
            message_id=f"{command.send_id}:{status}",
            received_at=now,
            message=event,
            raw=event.model_dump_json(by_alias=True),
            forwarded_to=command.contact_id,
        )
        emits.append((topics.EVENTS, key, dumps(ingested)))
        self.runtime.commit_external(puts, emits)
        self.delivered += status == "sent"
