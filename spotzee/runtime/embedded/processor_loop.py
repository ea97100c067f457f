"""The processor loop: steps 6, 7 and 8 of docs/architecture.md (and it runs step 9).

Step 6: the ``spotzee-processor`` thread loops over the partitions; for each one whose committed
offset is behind its next offset it reads up to ``SPOTZEE_PROCESS_BATCH_SIZE`` records and runs
them in offset order through the processor (step 7) with a ``tables/overlay.BatchContext``. A
record that raises is rolled back alone and replaced by a ``DeadLetterRow``: the partition is not
stalled. Step 8: one synced write per batch holds every table change, the deletion of the
processed log entries, the partition's committed offset, every emitted record (routed by
``commit.Commit``: ``events`` re-enter the log, step 10) and the timer operations
(``timers.Timers``). After each pass the same thread fires due timers (step 9). A failed commit
(disk) keeps the committed offset: the batch is read again 0.5 s later.
"""

from __future__ import annotations

import logging
import threading
import time

from spotzee.runtime.embedded.commit import Commit
from spotzee.runtime.embedded.inbound_log import InboundLog, committed_key
from spotzee.runtime.embedded.outbox import Outbox
from spotzee.runtime.embedded.timers import Timers
from spotzee.schemas.analytics_models import DeadLetterRow
from spotzee.streams import topics
from spotzee.streams.interface import Clock, Processor
from spotzee.streams.record_codec import dumps
from spotzee.tables.overlay import BatchContext, Decoded
from spotzee.tables.rocksdb_store import LOG, LOG_KEY, META, TABLE_PREFIX, U64
from spotzee.tables.table_specs import state_caches

log = logging.getLogger(__name__)


def stage_tables(commit: Commit, ctx: BatchContext) -> None:
    """Step 8: every table write of the batch (``None``: a delete) into its column family."""
    batch, db = commit.batch, commit.db
    put, delete = batch.put, batch.delete
    for name, table in ctx.tables.items():
        if not table.batch:
            continue
        handle = db.handle(TABLE_PREFIX + name)
        # ``table.encoded_batch()``, inlined: a value held decoded is encoded here, once, with its spec.
        for key, entry in table.batch.items():
            if entry is None:
                delete(key.encode(), handle)
            elif type(entry) is Decoded:
                put(key.encode(), entry.spec.encode(entry.value), handle)
            else:
                put(key.encode(), entry, handle)


class ProcessorLoop:
    def __init__(  # noqa: PLR0913 -- the loop's collaborators, each used on every batch
        self,
        inbound: InboundLog,
        outbox: Outbox,
        timers: Timers,
        processor: Processor,
        clock: Clock,
        batch_size: int,
        cache_entries: int = 0,
    ) -> None:
        self.inbound = inbound
        self.outbox = outbox
        self.timers = timers
        self.processor = processor
        self.clock = clock
        self.batch_size = batch_size
        self.caches = state_caches(processor, cache_entries)  # one store holds every partition
        self.running = False
        self.paused = threading.Event()
        self.processed_total = 0
        self.dead_lettered_total = 0
        self.last_error: str | None = None

    def run(self) -> None:
        """The ``spotzee-processor`` thread: passes over the partitions, then due timers."""
        while self.running:
            if self.paused.is_set():
                with self.inbound.wakeup:
                    self.inbound.wakeup.wait(timeout=0.05)
                continue
            worked = False
            try:
                worked = self._pass()
                self.last_error = None
            except Exception as exc:  # a commit failed (disk): keep the offset, retry later
                self.last_error = str(exc)
                log.exception("processing failed; retrying")
                time.sleep(0.5)
            if not worked:
                with self.inbound.wakeup:
                    self.inbound.wakeup.wait(timeout=0.05)

    def _pass(self) -> bool:
        worked = False
        for partition in range(self.inbound.partitions):
            if self.inbound.committed[partition] < self.inbound.next_offset[partition]:
                self._process_partition(partition)
                worked = True
        return self.timers.fire_due() or worked

    def _process_partition(self, partition: int) -> None:
        """Steps 6-8 for one batch of ``partition``."""
        start = self.inbound.committed[partition]
        records = self.inbound.read(partition, start, self.batch_size)
        if not records:
            return
        ctx = BatchContext(self.inbound.db, self.processor.tables, self.clock, caches=self.caches)
        dead = 0
        for offset, key, value in records:
            try:
                self.processor.process(ctx, key, value)
                ctx.commit_record()
            except Exception as exc:
                ctx.rollback_record()
                dead += 1
                self._dead_letter(ctx, partition, offset, key, value, exc)
                ctx.commit_record()
        last = records[-1][0]
        db = self.inbound.db
        with self.inbound.lock:
            commit = Commit(self.inbound, self.outbox)
            stage_tables(commit, ctx)
            commit.batch.delete_range(LOG_KEY.pack(partition, start), LOG_KEY.pack(partition, last + 1), db.handle(LOG))
            commit.batch.put(committed_key(partition), U64.pack(last + 1), db.handle(META))
            commit.route(ctx.batch.emits)
            self.timers.stage(commit, ctx.batch.timers)
            commit.write()
            self.inbound.committed[partition] = last + 1
        ctx.publish()
        self.processed_total += len(records)
        self.dead_lettered_total += dead
        self.outbox.wakeup.set()

    def _dead_letter(
        self, ctx: BatchContext, partition: int, offset: int, key: str, value: bytes, exc: Exception
    ) -> None:
        log.warning("record %s/%d (key %s) dead-lettered: %s", partition, offset, key, exc)
        row = DeadLetterRow(
            project_id=key.split(":", 1)[0],
            dead_letter_id=f"{topics.EVENTS}/{partition}/{offset}/{self.inbound.committed[partition]}",
            topic=topics.EVENTS,
            partition=partition,
            offset=offset,
            key=key,
            error=f"{type(exc).__name__}: {exc}"[:2000],
            payload=value.decode(errors="replace"),
            at=self.clock.now(),
        )
        ctx.emit(topics.DEAD_LETTER, key, dumps(row))
