"""One synced write batch of the embedded runtime, and re-entry (steps 8 and 10).

Steps of docs/architecture.md: every write that assigns log offsets or outbox sequence numbers --
the appender's append (step 4), a batch commit (step 8), fired timers (step 9), delivery's state
(``commit_external``), definitions -- is one ``Commit``: made and written under
``InboundLog.lock``, it stages on copies of the log's next offsets and of the outbox's next
sequence number, and those copies are kept only once the batch is written, so a failed write
moves nothing. ``route`` sends each emitted record where its topic goes: ``events`` back into the
log (``reenter``: step 10), the rest to ``outbox.Outbox``.
"""

from __future__ import annotations

from spotzee.errors import SpotzeeError
from spotzee.runtime.embedded.inbound_log import InboundLog
from spotzee.runtime.embedded.outbox import Outbox
from spotzee.runtime.runtime_protocol import Position
from spotzee.streams import topics
from spotzee.tables.rocksdb_store import LOG, LOG_KEY, encode_log_value

Emit = tuple[str, str, bytes]  # topic, key, value

_OUTBOX_TOPICS = (topics.ANALYTICS, topics.DEAD_LETTER)
_RETAINED_TOPICS = (topics.SEGMENT_CHANGES, topics.JOURNEY_ADVANCE, topics.SENDS)


class Commit:
    """Must be made, staged and written holding ``inbound.lock``."""

    def __init__(self, inbound: InboundLog, outbox: Outbox) -> None:
        self.inbound = inbound
        self.outbox = outbox
        self.db = inbound.db
        self.batch = inbound.db.batch()
        self.next_offset = list(inbound.next_offset)
        self.outbox_next = outbox.next
        self.topic_next: dict[str, int] = {}  # retained topics this batch appends to: their next sequence
        self._log_handle = inbound.db.handle(LOG)

    def append(self, key: str, value: bytes, partition: int | None = None) -> Position:
        """Put a record at the next offset of its partition (the key's, unless given)."""
        if partition is None:
            partition = topics.partition_for(key, self.inbound.partitions)
        offset = self.next_offset[partition]
        self.next_offset[partition] += 1
        self.batch.put(LOG_KEY.pack(partition, offset), encode_log_value(key, value), self._log_handle)
        return Position(partition, offset)

    def reenter(self, key: str, value: bytes) -> None:
        """Step 10: a record a processor (or a timer, or delivery) emits to ``events`` goes back
        into the log in the same write, at its own partition's next offset, and is processed
        there like any appended record (steps 6-9)."""
        self.append(key, value)

    def route(self, emits: list[Emit]) -> None:
        """Send each emitted record where its topic goes in this runtime.

        Records are gathered per destination first (their order within each kept), then staged a
        destination at a time: a batch emits several records per event, mostly analytics rows."""
        outbox: list[bytes] = []
        retained: dict[str, list[bytes]] = {}
        for topic, key, value in emits:
            if topic in _OUTBOX_TOPICS:
                outbox.append(value)
            elif topic == topics.EVENTS:
                self.reenter(key, value)
            elif topic in _RETAINED_TOPICS:
                found = retained.get(topic)
                if found is None:
                    found = retained[topic] = []
                found.append(value)
            else:
                raise SpotzeeError(f"topic {topic!r} is not bound in the embedded runtime")
        if outbox:
            self.outbox_next = self.outbox.stage_many(self.batch, self.outbox_next, outbox)
        for topic, values in retained.items():
            seq = self.topic_next.get(topic)
            if seq is None:
                seq = self.outbox.topic_next(topic)
            self.topic_next[topic] = self.outbox.retain_many(self.batch, topic, seq, values)

    def put(self, family: str, key: bytes, value: bytes | None) -> None:
        """A put (``None``: a delete) on column family ``family``, in this write."""
        self.db.stage(self.batch, family, key, value)

    def write(self) -> None:
        """Write the batch (synced), then keep the offsets and sequence numbers it moved."""
        if self.outbox_next != self.outbox.next:
            self.outbox.stage_next(self.batch, self.outbox_next)
        for topic, seq in self.topic_next.items():
            self.outbox.stage_topic_next(self.batch, topic, seq)
        self.db.write(self.batch)
        self.inbound.next_offset = self.next_offset
        self.outbox.next = self.outbox_next
        self.outbox.moved(self.topic_next)
