"""One partition's state on a Kafka worker: a local RocksDB, restorable from the changelog."""

from __future__ import annotations

import asyncio
import shutil
from pathlib import Path

from spotzee.tables.changelog import SEP, split_key
from spotzee.tables.rocksdb_store import META, TABLE_PREFIX, U64, RocksDB

INPUT_OFFSET = b"input_offset"  # next input offset to process
CHANGELOG_OFFSET = b"changelog_offset"  # next changelog offset to read
TIMERS = "__timers"  # timer_id -> due key
DUE = "__due"  # due_ms u64 | timer_id -> topic | key | value (tables/rocksdb_store.py encoding)
TIMER_TABLES = (TIMERS, DUE)
# The delivery agent's (runtime/kafka/kafka_delivery.py), in every partition store and its changelog.
DELIVERIES = "__deliveries"  # send_id -> DeliveryState
DELIVERY_DUE = "__delivery_due"  # due_ms hex | send_id -> send_id: the retry index
DELIVERY_OUTBOX = "__delivery_outbox"  # send_id -> records of a final state not yet acked
DELIVERY_META = "__delivery_meta"  # "offset" -> next sends offset (u64)
RUNTIME_TABLES = (*TIMER_TABLES, DELIVERIES, DELIVERY_DUE, DELIVERY_OUTBOX, DELIVERY_META)


class PartitionStore:
    def __init__(self, root: Path, partition: int, tables: tuple[str, ...]) -> None:
        self.partition = partition
        self.path = root / f"partition-{partition}"
        self.tables = tables
        self.db = RocksDB(self.path, (*tables, *RUNTIME_TABLES), sync=False)  # the changelog is the durable copy
        self.lock = asyncio.Lock()
        self.ready = asyncio.Event()

    @property
    def input_offset(self) -> int:
        return self.db.get_u64(INPUT_OFFSET)

    @property
    def changelog_offset(self) -> int:
        return self.db.get_u64(CHANGELOG_OFFSET)

    def get(self, table: str, key: str) -> bytes | None:
        value = self.db.cf(TABLE_PREFIX + table).get(key.encode())
        return None if value is None else bytes(value)

    def get_raw(self, changelog_key: bytes) -> bytes | None:
        table, key = split_key(changelog_key)
        return self.get(table, key)

    def apply(self, changes: dict[bytes, bytes | None], *, input_offset: int | None, changelog_offset: int) -> None:
        """Write changelog-shaped changes and the offsets in one RocksDB batch."""
        batch = self.db.batch()
        for raw_key, value in changes.items():
            table, key = raw_key.decode().split(SEP, 1)
            self.db.stage(batch, TABLE_PREFIX + table, key.encode(), value)
        meta = self.db.handle(META)
        if input_offset is not None:
            batch.put(INPUT_OFFSET, U64.pack(input_offset), meta)
        batch.put(CHANGELOG_OFFSET, U64.pack(changelog_offset), meta)
        self.db.write(batch)

    def close(self) -> None:
        self.db.close()

    def destroy(self) -> None:
        self.close()
        shutil.rmtree(self.path, ignore_errors=True)
