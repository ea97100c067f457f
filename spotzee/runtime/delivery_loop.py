"""The embedded runtime's delivery agent: the ``sends`` topic -> providers, at most once per send_id.

A thread reads ``sends`` from its stored offset. For each send (the decisions are shared with
the Kafka runtime's agent: ``streams/delivery.py``):

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
from datetime import datetime
from itertools import islice

from spotzee.delivery import Deliverer, DeliveryResult
from spotzee.runtime.embedded import EmbeddedRuntime
from spotzee.runtime.rocks import DELIVERIES, META, U64
from spotzee.schemas.contacts import ContactState
from spotzee.schemas.messages import SendCommand
from spotzee.settings import Settings
from spotzee.streams import topics
from spotzee.streams.codec import dumps, loads
from spotzee.streams.contacts import CONTACTS
from spotzee.streams.delivery import OUTCOME_UNKNOWN, DeliveryState, RetryPolicy, attempting, next_action, outcome
from spotzee.streams.interface import Clock

log = logging.getLogger(__name__)

OFFSET = b"delivery_offset"


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
        self.policy = RetryPolicy(
            settings.delivery_max_attempts, settings.delivery_retry_base, settings.delivery_retry_cap
        )
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
        action = next_action(state, from_retry_index=retry_key is not None)
        if action in ("skip", "wait"):  # replayed, or waiting for its retry: the index brings it back
            self.runtime.commit_external(puts, [])
            return
        if action == "unknown" and state is not None:
            self._finish(command, state.attempts, OUTCOME_UNKNOWN, self.clock.now(), puts)
            return
        marker = attempting(command, state)
        self.runtime.commit_external([(DELIVERIES, _state_key(command.send_id), dumps(marker))], [])
        contact_raw = self.runtime.read(CONTACTS, f"{command.project_id}:{command.contact_id}")
        contact = loads(ContactState, contact_raw) if contact_raw is not None else None
        result = await self.deliverer.deliver(command, contact)
        self._finish(command, marker.attempts, result, self.clock.now(), puts)

    def _finish(
        self,
        command: SendCommand,
        attempts: int,
        result: DeliveryResult,
        now: datetime,
        puts: list[tuple[str, bytes, bytes | None]],
    ) -> None:
        done = outcome(command, attempts, result, now, self.policy)
        puts.append((DELIVERIES, _state_key(command.send_id), dumps(done.state)))
        if done.state.status == "retry" and done.state.due_at is not None:
            puts.append((DELIVERIES, _retry_key(done.state.due_at, command.send_id), b""))
        self.runtime.commit_external(puts, done.emits)
        self.delivered += done.state.status == "sent"
