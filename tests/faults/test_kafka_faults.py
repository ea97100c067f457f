"""Kafka runtime fault tests: a worker killed mid-stream, a worker's state deleted, a broker stopped.

All run against a real Apache Kafka broker and real ``spotzee worker`` processes.
"""

from __future__ import annotations

import os
import shutil
import signal
import threading
import time
from pathlib import Path
from typing import Any

import httpx
import pytest
from kafka import KafkaConsumer, TopicPartition

from spotzee.runtime.kafka import admin
from spotzee.runtime.kafka.config import kafka_python_config
from spotzee.schemas.contact_models import ContactState
from spotzee.schemas.structs import to_builtins
from spotzee.settings import Settings
from spotzee.streams import topics
from spotzee.streams.contact_processor import CONTACTS, ContactProcessor
from spotzee.streams.record_codec import loads
from spotzee.tables.partition_store import PartitionStore
from spotzee.testing import ManualClock, MemoryContext
from tests.conftest import require_kafka_tools
from tests.kafka_broker import start_broker
from tests.support import Stack, running_stack, start_worker, stop_worker, wait_until

USERS = 200


def batch(index: int, size: int = 500) -> list[dict[str, Any]]:
    return [
        {
            "type": "track",
            "userId": f"user-{(index * size + i) % USERS}",
            "event": "tick" if i % 3 else "buy",
            "properties": {"n": index * size + i},
            "messageId": f"m-{index}-{i}",
        }
        for i in range(size)
    ]


def send(stack: Stack, index: int) -> int:
    try:
        return stack.ingest.post("/v1/batch", json={"batch": batch(index)}).status_code
    except httpx.HTTPError:
        return 0


def read_topic(settings: Settings, base: str) -> list[tuple[int, int, bytes, bytes]]:
    """Every record of a topic: (partition, offset, key, value), in partition order."""
    name = admin.topic_name(settings, base)
    consumer = KafkaConsumer(**kafka_python_config(settings), enable_auto_commit=False, consumer_timeout_ms=2000)
    try:
        tps = [TopicPartition(name, p) for p in range(settings.partitions)]
        consumer.assign(tps)
        consumer.seek_to_beginning(*tps)
        ends = consumer.end_offsets(tps)
        out: list[tuple[int, int, bytes, bytes]] = []
        while any(consumer.position(tp) < ends[tp] for tp in tps):
            for records in consumer.poll(timeout_ms=1000).values():
                out += [(r.partition, r.offset, r.key, r.value) for r in records]
        return sorted(out)
    finally:
        consumer.close()


def recompute(settings: Settings) -> dict[str, bytes]:
    """Contact state from the events topic alone, with the same processor in memory."""
    memory = MemoryContext(
        ContactProcessor(dedupe_window=settings.dedupe_window, recent_limit=settings.recent_events_per_contact),
        ManualClock(),
    )
    for _, _, key, value in read_topic(settings, topics.EVENTS):
        if value.startswith(b'{"type":"ingest"'):
            memory.send(key.decode(), value)
    return dict(memory.table(CONTACTS.name).data)


def comparable(raw: bytes) -> dict[str, Any]:
    return to_builtins(loads(ContactState, raw))


@pytest.fixture
def kafka(kafka_bootstrap: str) -> str:
    return kafka_bootstrap


def test_a_worker_killed_mid_stream_loses_and_doubles_nothing(tmp_path: Path, kafka: str) -> None:
    total_batches = 40  # 20,000 events
    with running_stack(tmp_path / "data", runtime="kafka", kafka_bootstrap=kafka, workers=2, partitions=8) as stack:
        # Every user enters this segment once, some before the kill and some after it.
        rule = {"type": "event", "name": "buy", "count": {"op": "gte", "value": 15}}
        segment_id = stack.project.post("/api/v1/segments", json={"name": "buyers", "rule": rule}).json()["id"]
        wait_until(lambda: stack.project.get(f"/api/v1/segments/{segment_id}").json()["status"] == "ready", 60)
        for index in range(total_batches):
            assert send(stack, index) == 200
            if index == total_batches // 2:
                os.kill(stack.workers[0].pid, signal.SIGKILL)  # the survivor takes over its partitions
        stack.settle(timeout=240)
        settings = stack.services.settings
        expected = recompute(settings)
        assert len(expected) == USERS
        for key, raw in expected.items():
            actual = stack.services.runtime.read(CONTACTS.name, key)
            assert actual is not None, key
            assert comparable(actual) == comparable(raw), key
        assert stack.scalar("SELECT count() FROM events FINAL") == total_batches * 500
        assert stack.scalar("SELECT uniqExact(message_id) FROM events") == total_batches * 500
        # Replayed batches re-emit the same transitions (same per-contact change ids): one each.
        assert stack.project.get(f"/api/v1/segments/{segment_id}/count").json()["count"] == USERS
        assert stack.scalar(f"SELECT count() FROM segment_changes FINAL WHERE segment_id = '{segment_id}'") == USERS
        assert stack.workers[1].poll() is None


def test_a_deleted_worker_store_is_restored_from_the_changelog(tmp_path: Path, kafka: str) -> None:
    with running_stack(tmp_path / "data", runtime="kafka", kafka_bootstrap=kafka) as stack:
        for index in range(4):
            assert send(stack, index) == 200
        stack.ingest.post("/v1/identify", json={"userId": "user-1", "anonymousId": "anon-x", "traits": {"plan": "pro"}})
        stack.settle()
        settings = stack.services.settings
        before = {key: comparable(raw) for key, raw in _replica(stack).items()}
        worker_dir = settings.data_dir / "workers" / "kafka-state" / "worker-1"
        assert worker_dir.exists()
        stop_worker(stack.workers[0])
        shutil.rmtree(worker_dir)
        stack.workers[0] = start_worker(settings, "worker-1")
        assert send(stack, 10) == 200  # processing continues on the restored state
        stack.settle()
        stop_worker(stack.workers[0])
        restored: dict[str, dict[str, Any]] = {}
        for partition in range(settings.partitions):
            store = PartitionStore(worker_dir, partition, ContactProcessor.tables)
            try:
                for key, raw in _scan(store):
                    restored[key] = comparable(raw)
            finally:
                store.close()
        after = {key: comparable(raw) for key, raw in _replica(stack).items()}
        assert restored == after
        changed = {key for key in before if before[key] != after[key]}
        assert changed <= {f"{stack.keys.project_id}:user-{u}" for u in range(USERS)}
        user = f"{stack.keys.project_id}:user-1"
        assert after[user]["traits"] == {"plan": "pro"}
        assert after[user]["version"] > before[user]["version"]


def test_a_stopped_broker_answers_503_and_keeps_every_acknowledged_event(tmp_path: Path) -> None:
    require_kafka_tools()
    broker = start_broker(tmp_path / "broker")
    acked: list[int] = []
    refused: list[int] = []
    stop = threading.Event()
    try:
        with running_stack(
            tmp_path / "data", runtime="kafka", kafka_bootstrap=broker.bootstrap, kafka_request_timeout=3.0
        ) as stack:

            def sender() -> None:
                index = 0
                while not stop.is_set():
                    status = send(stack, index)
                    if status == 200:
                        acked.append(index)
                    elif status == 503:
                        refused.append(index)
                    else:
                        time.sleep(0.2)  # e.g. a timeout on our side: neither acked nor refused
                    index += 1

            # A daemon, stopped in any case: a failed assertion must not leave it spinning (pytest
            # would never exit).
            thread = threading.Thread(target=sender, daemon=True)
            thread.start()
            wait_until(lambda: len(acked) >= 3, timeout=60)
            # The broker goes away under a worker that is processing (one starting up while the
            # broker is gone is another scenario): wait for its first commit.
            settings = stack.services.settings
            wait_until(
                lambda: any(r.committed > 0 for r in admin.consumer_lag(settings, [admin.PROCESSOR_GROUP])),
                timeout=120,
                interval=0.5,
            )
            broker.stop()
            wait_until(lambda: len(refused) >= 2, timeout=60)
            assert stack.client().get("/health").status_code == 503
            broker.restart()
            acked_before_restart = len(acked)
            wait_until(lambda: len(acked) >= acked_before_restart + 3, timeout=120)
            stop.set()
            thread.join()
            stack.settle(timeout=180)
            # Counted per batch: a list of every id would pass the SQL API's row limit.
            landed = dict(
                stack.sql(
                    "SELECT toUInt32(splitByChar('-', message_id)[2]) AS batch, uniqExact(message_id)"
                    " FROM events GROUP BY batch"
                )
            )
            short = {i: landed.get(i, 0) for i in acked if landed.get(i, 0) != 500}
            assert short == {}, f"acknowledged batches missing events (batch: events landed of 500): {short}"
            assert refused, "the API never answered 503 while the broker was down"
    finally:
        stop.set()
        broker.stop()


def _replica(stack: Stack) -> dict[str, bytes]:
    runtime = stack.services.runtime
    out: dict[str, bytes] = {}
    it = runtime.replica.cf("t_" + CONTACTS.name).iter()
    it.seek_to_first()
    while it.valid():
        out[bytes(it.key()).decode()] = bytes(it.value())
        it.next()
    return out


def _scan(store: PartitionStore) -> list[tuple[str, bytes]]:
    out = []
    it = store.db.cf("t_" + CONTACTS.name).iter()
    it.seek_to_first()
    while it.valid():
        out.append((bytes(it.key()).decode(), bytes(it.value())))
        it.next()
    return out
