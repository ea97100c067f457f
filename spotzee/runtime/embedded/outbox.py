"""Where the records a commit emits for consumers outside the processor go (step 8's outputs).

Steps of docs/architecture.md: a commit (step 8) puts every ``analytics`` and ``dead-letter``
record in the outbox (column family ``outbox``) under the next sequence number, which the sink
thread drains into ClickHouse (step 11, ``runtime/sink_loop.py``); records of the retained topics
(``segment-changes``, ``journey-advance``, ``sends``) go to column family ``topics``, where their
consumers read them (``sends``: the delivery loop, ``runtime/delivery_loop.py``).
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Iterator

from rocksdict import WriteBatch

from spotzee.settings import Settings
from spotzee.tables.rocksdb_store import META, OUTBOX, TOPICS, U16, U64, RocksDB

OUTBOX_NEXT = b"outbox_next"


def _topic_prefix(topic: str) -> bytes:
    return U16.pack(len(topic)) + topic.encode()


class Outbox:
    def __init__(self, db: RocksDB, settings: Settings) -> None:
        self.db = db
        self.retention = settings.topic_retention_records
        self.next = db.get_u64(OUTBOX_NEXT)  # moved by ``commit.Commit`` once its batch is written
        self.wakeup = threading.Event()  # set after a commit that may have filled the outbox: the sink looks
        self._topic_next: dict[str, int] = {}
        # Called (holding the log's lock, so: quick) with the retained topics a written batch added
        # records to: their consumers wake at once instead of at their next poll.
        self.topic_listeners: list[Callable[[set[str]], None]] = []

    def stage(self, batch: WriteBatch, seq: int, value: bytes) -> None:
        """Must hold the log's lock. Put one analytics record at sequence ``seq``."""
        batch.put(U64.pack(seq), value, self.db.handle(OUTBOX))

    def stage_many(self, batch: WriteBatch, seq: int, values: list[bytes]) -> int:
        """Must hold the log's lock. ``stage`` of each of ``values`` from sequence ``seq`` on (a batch's
        analytics records, several per event: one loop, the handle looked up once); the next sequence."""
        put, pack, handle = batch.put, U64.pack, self.db.handle(OUTBOX)
        for value in values:
            put(pack(seq), value, handle)
            seq += 1
        return seq

    def stage_next(self, batch: WriteBatch, outbox_next: int) -> None:
        """Must hold the log's lock. Record the next sequence number in the same batch."""
        batch.put(OUTBOX_NEXT, U64.pack(outbox_next), self.db.handle(META))

    def topic_next(self, topic: str) -> int:
        """The sequence number the next record of ``topic`` gets (its consumers' end)."""
        seq = self._topic_next.get(topic)
        return seq if seq is not None else self.db.get_u64(b"topic_next/" + topic.encode())

    def retain(self, batch: WriteBatch, topic: str, seq: int, value: bytes) -> None:
        """Must hold the log's lock. Put one record of a retained topic (``TOPICS``) at ``seq``: the
        last ``topic_retention_records`` records stay for its consumers; older ones are trimmed."""
        self.retain_many(batch, topic, seq, [value])

    def retain_many(self, batch: WriteBatch, topic: str, seq: int, values: list[bytes]) -> int:
        """Must hold the log's lock. ``retain`` of each of ``values`` from sequence ``seq`` on; the next
        sequence."""
        prefix = _topic_prefix(topic)
        put, pack, handle, retention = batch.put, U64.pack, self.db.handle(TOPICS), self.retention
        for value in values:
            put(prefix + pack(seq), value, handle)
            if seq >= retention and seq % 1000 == 0:
                batch.delete_range(prefix + pack(0), prefix + pack(seq - retention + 1), handle)
            seq += 1
        return seq

    def stage_topic_next(self, batch: WriteBatch, topic: str, seq: int) -> None:
        """Must hold the log's lock. Record a retained topic's next sequence number in the same batch."""
        batch.put(b"topic_next/" + topic.encode(), U64.pack(seq), self.db.handle(META))

    def moved(self, topic_next: dict[str, int]) -> None:
        """A batch with records of these topics was written: their next sequence numbers."""
        if not topic_next:
            return
        self._topic_next.update(topic_next)
        if self.topic_listeners:
            moved = set(topic_next)
            for listener in self.topic_listeners:
                listener(moved)

    def topic_records(self, topic: str, start: int = 0) -> Iterator[tuple[int, bytes]]:
        """Records of a retained topic from sequence ``start`` (what its consumer reads)."""
        prefix = _topic_prefix(topic)
        it = self.db.cf(TOPICS).iter()
        it.seek(prefix + U64.pack(start))
        while it.valid():
            key = bytes(it.key())
            if not key.startswith(prefix):
                break
            yield U64.unpack_from(key, len(prefix))[0], bytes(it.value())
            it.next()
