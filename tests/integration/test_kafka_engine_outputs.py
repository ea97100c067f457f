"""The Kafka engine's outputs: record batches on the partitions the default partitioner picks (real broker).

The engine appends a batch's emits into one record batch per topic partition instead of one ``send`` per record,
so it computes each record's partition itself; a contact's outputs must land where the API's producer (aiokafka's
default partitioner: murmur2 of the key) would put them, in emit order.
"""

from __future__ import annotations

import random
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, TopicPartition
from aiokafka.partitioner import DefaultPartitioner
from aiokafka.partitioner import murmur2 as aiokafka_murmur2

from spotzee.runtime.kafka import admin
from spotzee.runtime.kafka.config import aiokafka_config
from spotzee.runtime.kafka.partition_engine import Engine, InputRecord, KafkaClients, KeyPartitioner, murmur2
from spotzee.settings import Settings
from spotzee.streams import topics
from spotzee.streams.interface import Context
from spotzee.testing import ManualClock
from tests.support import kafka_settings

PARTITIONS = 8
RECORDS = 400


def test_murmur2_is_aiokafkas_for_every_length_and_tail() -> None:
    rng = random.Random(3)
    for length in range(0, 130):
        for _ in range(20):
            key = rng.randbytes(length)
            assert murmur2(key) == aiokafka_murmur2(key), key
    assert murmur2(b"\xff" * 37) == aiokafka_murmur2(b"\xff" * 37)


def test_the_key_partitioner_picks_the_default_partitioners_partition() -> None:
    rng = random.Random(7)
    keys = [b"", b"a", b"audit", *(f"prj_{rng.getrandbits(40):x}:user-{i}".encode() for i in range(3000))]
    keys += [rng.randbytes(rng.randrange(1, 64)) for _ in range(1000)]
    partitioner = KeyPartitioner(limit=500)  # smaller than the keys: the memo is cleared and refilled
    default = DefaultPartitioner()
    for count in (1, 3, 8, 12, 64):
        every = list(range(count))
        for key in keys:
            assert partitioner.partition(key, count) == default(key, every, every), (key, count)
            assert partitioner.partition(key, count) == default(key, every, every), (key, count)  # memoised
    assert len(partitioner._known) <= 500


class Echo:
    """Emits each record's value to the analytics topic under its key; keeps no state."""

    topic = topics.EVENTS
    tables: tuple[str, ...] = ()

    def process(self, ctx: Context, key: str, value: bytes) -> None:
        ctx.emit(topics.ANALYTICS, key, value)


@pytest.fixture
def settings(tmp_path: Path, kafka_bootstrap: str) -> Settings:
    settings = kafka_settings(tmp_path / "data", kafka_bootstrap, partitions=PARTITIONS)
    admin.create_topics(settings)
    return settings


@pytest.fixture
async def engine(settings: Settings, tmp_path: Path) -> AsyncIterator[Engine]:
    clients = KafkaClients(
        producer=lambda: AIOKafkaProducer(**aiokafka_config(settings), acks="all", enable_idempotence=True),
        consumer=lambda: AIOKafkaConsumer(
            **aiokafka_config(settings), enable_auto_commit=False, auto_offset_reset="earliest"
        ),
        topic_name=lambda base: admin.topic_name(settings, base),
        changelog_topic=admin.topic_name(settings, admin.CONTACTS_CHANGELOG),
        input_topic=admin.topic_name(settings, topics.EVENTS),
    )
    engine = Engine(Echo(), ManualClock(), tmp_path / "state", clients)
    try:
        yield engine
    finally:
        await engine.close()


async def _read(settings: Settings, topic: str) -> dict[int, list[tuple[bytes, bytes]]]:
    """Every record of ``topic``: per partition, (key, value) in offset order."""
    consumer = AIOKafkaConsumer(**aiokafka_config(settings), enable_auto_commit=False, auto_offset_reset="earliest")
    await consumer.start()
    try:
        tps = [TopicPartition(topic, p) for p in range(PARTITIONS)]
        consumer.assign(tps)
        await consumer.seek_to_beginning(*tps)
        ends = await consumer.end_offsets(tps)
        out: dict[int, list[tuple[bytes, bytes]]] = {p: [] for p in range(PARTITIONS)}
        while [tp for tp in tps if await consumer.position(tp) < ends[tp]]:
            for tp, records in (await consumer.getmany(timeout_ms=1000)).items():
                out[tp.partition] += [(r.key or b"", r.value or b"") for r in records]
        return out
    finally:
        await consumer.stop()


async def test_emits_land_on_the_partition_the_apis_producer_picks_in_emit_order(
    engine: Engine, settings: Settings
) -> None:
    keys = [f"prj_x:user-{i % 97}" for i in range(RECORDS)]
    records = [InputRecord(offset, key, f"{offset}".encode()) for offset, key in enumerate(keys)]
    await engine.process(0, records[: RECORDS // 2])
    await engine.process(0, records[RECORDS // 2 :])

    # Where the API's producer (send with a key, default partitioner) puts each key.
    probe_topic = admin.topic_name(settings, topics.SEGMENT_CHANGES)
    producer = AIOKafkaProducer(**aiokafka_config(settings))
    await producer.start()
    try:
        for key in sorted(set(keys)):
            await producer.send_and_wait(probe_topic, key=key.encode(), value=b"probe")
    finally:
        await producer.stop()
    expected_partition = {key: p for p, items in (await _read(settings, probe_topic)).items() for key, _ in items}

    emitted = await _read(settings, admin.topic_name(settings, topics.ANALYTICS))
    assert sum(len(items) for items in emitted.values()) == RECORDS
    assert len({p for p, items in emitted.items() if items}) > 1  # spread over partitions, not all on one
    for partition, items in emitted.items():
        for raw_key, _ in items:
            assert expected_partition[raw_key] == partition, raw_key
        for raw_key in {k for k, _ in items}:
            offsets = [int(value) for k, value in items if k == raw_key]
            assert offsets == sorted(offsets), raw_key  # a key's outputs in emit order
