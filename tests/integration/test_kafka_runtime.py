"""What only the Kafka runtime has: dead-letter topic, batched changelog, timers on workers."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
from kafka import KafkaProducer

from spotzee.runtime.kafka import admin
from spotzee.runtime.kafka.config import kafka_python_config
from spotzee.schemas.analytics_models import DeadLetterRow
from spotzee.schemas.structs import decode
from spotzee.streams import topics
from spotzee.streams.contact_processor import DEDUPE
from tests.faults.test_kafka_faults import read_topic
from tests.support import Stack, running_stack, wait_until


@pytest.fixture
def kafka_stack(tmp_path: Path, kafka_bootstrap: str) -> Iterator[Stack]:
    with running_stack(tmp_path / "data", runtime="kafka", kafka_bootstrap=kafka_bootstrap) as stack:
        yield stack


@pytest.fixture
def short_dedupe_stack(tmp_path: Path, kafka_bootstrap: str) -> Iterator[Stack]:
    with running_stack(tmp_path / "data", runtime="kafka", kafka_bootstrap=kafka_bootstrap, dedupe_window=3) as stack:
        yield stack


def test_a_poison_record_goes_to_the_dead_letter_topic_and_the_partition_moves_on(kafka_stack: Stack) -> None:
    stack = kafka_stack
    settings = stack.services.settings
    key = f"{stack.keys.project_id}:u1"
    producer = KafkaProducer(**kafka_python_config(settings), acks="all")
    producer.send(admin.topic_name(settings, topics.EVENTS), key=key.encode(), value=b"{not a record").get(timeout=10)
    producer.close()
    assert stack.ingest.post("/v1/track", json={"userId": "u1", "event": "after", "messageId": "ok"}).status_code == 200
    stack.settle()
    assert stack.project.get("/api/v1/contacts/u1").json()["events"]["after"]["count"] == 1
    (dead,) = read_topic(settings, topics.DEAD_LETTER)
    row = decode(DeadLetterRow, dead[3])
    assert row.key == key
    assert row.payload == "{not a record"
    assert "DecodeError" in row.error  # msgspec's: the record is not a record
    assert stack.sql("SELECT key, payload FROM dead_letters") == [[key, "{not a record"]]


def test_state_changes_are_batched_in_the_changelog(kafka_stack: Stack) -> None:
    stack = kafka_stack
    events = [{"type": "track", "userId": f"u{i % 5}", "event": "e", "messageId": f"m{i}"} for i in range(2000)]
    for start in range(0, len(events), 500):
        assert stack.ingest.post("/v1/batch", json={"batch": events[start : start + 500]}).status_code == 200
    stack.settle()
    changelog = read_topic(stack.services.settings, admin.CONTACTS_CHANGELOG)
    # Per event the processor writes the contact and a dedupe entry; per batch only the last value
    # of each key reaches the changelog (plus the dedupe entries and one marker).
    by_table: dict[str, int] = {}
    for record in changelog:
        table = record[2].split(b"\x00")[0].decode() or "marker"
        by_table[table] = by_table.get(table, 0) + 1
    assert by_table["dedupe"] == len(events)  # the dedupe entries are state of their own, one per message
    assert by_table["contacts"] < len(events) / 10, by_table  # 5 contacts: one record per batch, not per event
    assert by_table["marker"] < len(events) / 10, by_table
    assert stack.scalar("SELECT count() FROM events") == 2000


def test_timers_fire_on_the_workers(short_dedupe_stack: Stack) -> None:
    stack = short_dedupe_stack
    stack.ingest.post("/v1/track", json={"userId": "u1", "event": "e", "messageId": "same"})
    stack.ingest.post("/v1/track", json={"userId": "u1", "event": "e", "messageId": "same"})
    stack.settle()
    assert stack.project.get("/api/v1/contacts/u1").json()["events"]["e"]["count"] == 1
    runtime = stack.services.runtime
    assert runtime.read(DEDUPE.name, f"{stack.keys.project_id}:u1\x00same") is not None
    # the 3 s dedupe window passes: the sweep timer removes the entry; the same id counts again
    wait_until(lambda: runtime.read(DEDUPE.name, f"{stack.keys.project_id}:u1\x00same") is None, timeout=30)
    stack.ingest.post("/v1/track", json={"userId": "u1", "event": "e", "messageId": "same"})
    stack.settle()
    assert stack.project.get("/api/v1/contacts/u1").json()["events"]["e"]["count"] == 2
