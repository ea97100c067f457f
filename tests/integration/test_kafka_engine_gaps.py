"""The Kafka engine closes gaps between what it applied and the records it is handed (real broker, no mocks).

faust acks a batch's events even when the agent raised or was cancelled, and the engine drops a batch whose
store was revoked meanwhile; faust then commits those offsets and seeks to them after a rebalance. The
partition's stored input offset (from the changelog markers) is the truth: records between it and the first
record handed over are read back from the events topic and applied first, exactly once and in order.
"""

from __future__ import annotations

import itertools
import logging
from collections.abc import AsyncIterator
from pathlib import Path

import orjson
import pytest
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer
from kafka import KafkaAdminClient, KafkaConsumer, TopicPartition  # type: ignore[import-untyped, unused-ignore]

from spotzee.runtime.kafka import admin, partition_engine
from spotzee.runtime.kafka.config import aiokafka_config, kafka_python_config
from spotzee.runtime.kafka.partition_engine import Engine, InputRecord, KafkaClients
from spotzee.settings import Settings
from spotzee.streams import topics
from spotzee.streams.interface import Context
from spotzee.tables.changelog import MARKER, marker_input_offset
from spotzee.testing import ManualClock
from tests.support import kafka_settings

RECORDS = 100
KEYS = 5
PARTITION = 1
SEEN = "seen"


class SeenProcessor:
    """Appends every record's value to its key's list: a record applied twice, or out of order, shows."""

    topic = topics.EVENTS
    tables = (SEEN,)

    def process(self, ctx: Context, key: str, value: bytes) -> None:
        table = ctx.table(SEEN)
        seen = orjson.loads(table.get(key) or b"[]")
        table.set(key, orjson.dumps([*seen, orjson.loads(value)["n"]]))


def _key(n: int) -> str:
    return f"p:c{n % KEYS}"


def _clients(settings: Settings) -> KafkaClients:
    return KafkaClients(
        producer=lambda: AIOKafkaProducer(**aiokafka_config(settings), acks="all", enable_idempotence=True),
        consumer=lambda: AIOKafkaConsumer(
            **aiokafka_config(settings), enable_auto_commit=False, auto_offset_reset="earliest"
        ),
        topic_name=lambda base: admin.topic_name(settings, base),
        changelog_topic=admin.topic_name(settings, admin.CONTACTS_CHANGELOG),
        input_topic=admin.topic_name(settings, topics.EVENTS),
    )


@pytest.fixture
def settings(tmp_path: Path, kafka_bootstrap: str) -> Settings:
    settings = kafka_settings(tmp_path / "data", kafka_bootstrap, partitions=2)
    admin.create_topics(settings)
    return settings


@pytest.fixture
async def records(settings: Settings) -> list[InputRecord]:
    """RECORDS records on one partition of the events topic, as the engine is handed them."""
    producer = AIOKafkaProducer(**aiokafka_config(settings), acks="all", enable_idempotence=True)
    await producer.start()
    try:
        topic = admin.topic_name(settings, topics.EVENTS)
        out: list[InputRecord] = []
        for n in range(RECORDS):
            value = orjson.dumps({"n": n})
            meta = await producer.send_and_wait(topic, value=value, key=_key(n).encode(), partition=PARTITION)
            out.append(InputRecord(meta.offset, _key(n), value))
        return out
    finally:
        await producer.stop()


@pytest.fixture
async def engine(settings: Settings, tmp_path: Path) -> AsyncIterator[Engine]:
    engine = Engine(SeenProcessor(), ManualClock(), tmp_path / "state", _clients(settings))
    try:
        yield engine
    finally:
        await engine.close()


async def _seen(engine: Engine) -> dict[str, list[int]]:
    store = await engine.assign(PARTITION)
    return {key: orjson.loads(store.get(SEEN, key) or b"[]") for key in sorted({_key(n) for n in range(RECORDS)})}


def _expected(numbers: range) -> dict[str, list[int]]:
    return {_key(k): [n for n in numbers if _key(n) == _key(k)] for k in range(KEYS)}


def _markers(settings: Settings) -> list[int]:
    """The input offsets of the partition's changelog markers, in order."""
    tp = TopicPartition(admin.topic_name(settings, admin.CONTACTS_CHANGELOG), PARTITION)
    consumer = KafkaConsumer(**kafka_python_config(settings), enable_auto_commit=False)
    try:
        consumer.assign([tp])
        consumer.seek_to_beginning(tp)
        end = consumer.end_offsets([tp])[tp]
        out: list[int] = []
        while consumer.position(tp) < end:
            for record in consumer.poll(timeout_ms=1000).get(tp, []):
                if record.key == MARKER:
                    out.append(marker_input_offset(record.value))
        return out
    finally:
        consumer.close()


async def test_an_acked_but_never_applied_range_is_read_back_and_applied_once_in_order(
    engine: Engine, records: list[InputRecord], settings: Settings, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(partition_engine, "GAP_CHUNK", 8)  # the gap of 30 is read back in several batches
    await engine.process(PARTITION, records[:30])
    await engine.process(PARTITION, records[60:])  # 30..59 were acked by faust, never applied
    assert await _seen(engine) == _expected(range(RECORDS))
    assert engine.processed_total == RECORDS

    await engine.process(PARTITION, records)  # everything again (faust seeking back): nothing applied twice
    await engine.process(PARTITION, records[10:40])
    assert await _seen(engine) == _expected(range(RECORDS))
    assert engine.processed_total == RECORDS
    markers = _markers(settings)
    assert markers[0] == 30
    assert markers[-1] == RECORDS
    gap_batches = [b - a for a, b in itertools.pairwise(markers) if b <= 60]
    assert len(gap_batches) >= 4  # bounded batches, each committed by its marker
    assert max(gap_batches) <= 8


async def test_a_gap_filled_store_restores_from_the_changelog(
    engine: Engine, records: list[InputRecord], settings: Settings, tmp_path: Path
) -> None:
    await engine.process(PARTITION, records[50:])
    await engine.close()
    fresh = Engine(SeenProcessor(), ManualClock(), tmp_path / "other-worker", _clients(settings))
    try:
        assert await _seen(fresh) == _expected(range(RECORDS))
        assert fresh.stores[PARTITION].input_offset == RECORDS
        await fresh.process(PARTITION, records[70:])
        assert await _seen(fresh) == _expected(range(RECORDS))
        assert fresh.processed_total == 0
    finally:
        await fresh.close()


@pytest.mark.parametrize("deleted_before", [40, 60])
async def test_a_gap_partly_or_wholly_deleted_by_retention_applies_what_is_left(
    engine: Engine,
    records: list[InputRecord],
    settings: Settings,
    deleted_before: int,
    caplog: pytest.LogCaptureFixture,
) -> None:
    tp = TopicPartition(admin.topic_name(settings, topics.EVENTS), PARTITION)
    client = KafkaAdminClient(**kafka_python_config(settings))
    try:
        client.delete_records({tp: deleted_before})
    finally:
        client.close()
    with caplog.at_level(logging.WARNING, logger=partition_engine.__name__):
        await engine.process(PARTITION, records[60:])
    assert await _seen(engine) == _expected(range(deleted_before, RECORDS))
    assert engine.stores[PARTITION].input_offset == RECORDS
    assert f"input offsets 0..{deleted_before - 1} are no longer in the topic" in caplog.text
