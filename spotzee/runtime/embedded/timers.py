"""Timers of the embedded runtime (step 9, and the timer part of step 8's commit).

Steps of docs/architecture.md: a batch's ``schedule``/``cancel`` calls are staged into its commit
(step 8) in column families ``timers`` (due ms u64 | timer id -> topic, key, value) and
``timer_index`` (timer id -> its ``timers`` key). After each pass over the partitions the processor
thread fires the timers due by ``clock.now()`` (step 9): one write deletes them and routes their
records like any emitted record (``events`` re-enter the log: step 10). Firing on the processor
thread means a timer never races the state it belongs to.
"""

from __future__ import annotations

import math
from datetime import datetime

from spotzee.runtime.embedded.commit import Commit, Emit
from spotzee.runtime.embedded.inbound_log import InboundLog
from spotzee.runtime.embedded.outbox import Outbox
from spotzee.streams.interface import Clock
from spotzee.tables.overlay import TimerOp
from spotzee.tables.rocksdb_store import TIMER_INDEX, TIMERS, U64, decode_timer_value, encode_timer_value

FIRE_LIMIT = 5000  # timers fired per pass


def _ms(at: datetime) -> int:
    return int(at.timestamp() * 1000)


def _due_ms(at: datetime) -> int:
    """A timer's key: its time rounded *up* to the millisecond, so that a pass at ``_ms(now)`` fires
    it only once ``now >= at`` (rounded down, a timer fired up to 1 ms early, and a journey run woken
    before its ``wake_at`` took the wake for an early one)."""
    return math.ceil(at.timestamp() * 1000)


class Timers:
    def __init__(self, inbound: InboundLog, outbox: Outbox, clock: Clock) -> None:
        self.inbound = inbound
        self.outbox = outbox
        self.db = inbound.db
        self.clock = clock

    def stage(self, commit: Commit, ops: list[TimerOp]) -> None:
        """Step 8: a batch's timer operations, in order (the same id replaces; ``at=None`` cancels)."""
        timers, index = self.db.handle(TIMERS), self.db.handle(TIMER_INDEX)
        pending: dict[str, bytes | None] = {}
        for op in ops:
            old = pending[op.timer_id] if op.timer_id in pending else self.db.cf(TIMER_INDEX).get(op.timer_id.encode())
            if old is not None:
                commit.batch.delete(bytes(old), timers)
            if op.at is None:
                commit.batch.delete(op.timer_id.encode(), index)
                pending[op.timer_id] = None
                continue
            due_key = U64.pack(_due_ms(op.at)) + op.timer_id.encode()
            commit.batch.put(due_key, encode_timer_value(op.topic, op.key, op.value), timers)
            commit.batch.put(op.timer_id.encode(), due_key, index)
            pending[op.timer_id] = due_key

    def fire_due(self, limit: int = FIRE_LIMIT) -> bool:
        """Step 9: deliver due timers to their topics, deleting them in the same write batch."""
        due = self._due(_ms(self.clock.now()), limit)
        if not due:
            return False
        with self.inbound.lock:
            commit = Commit(self.inbound, self.outbox)
            for raw_key, _ in due:
                commit.batch.delete(raw_key, self.db.handle(TIMERS))
                commit.batch.delete(raw_key[8:], self.db.handle(TIMER_INDEX))
            commit.route([emit for _, emit in due])
            commit.write()
        return True

    def pending(self) -> int:
        it, count = self.db.cf(TIMER_INDEX).iter(), 0
        it.seek_to_first()
        while it.valid():
            count += 1
            it.next()
        return count

    def _due(self, now_ms: int, limit: int) -> list[tuple[bytes, Emit]]:
        due: list[tuple[bytes, Emit]] = []
        it = self.db.cf(TIMERS).iter()
        it.seek_to_first()
        while it.valid() and len(due) < limit:
            raw_key = bytes(it.key())
            if U64.unpack_from(raw_key)[0] > now_ms:
                break
            due.append((raw_key, decode_timer_value(bytes(it.value()))))
            it.next()
        return due
