"""The worker's events feed (raw record batches from faust's consumer to the Engine) under load and rebalances.

Real broker, real ``spotzee worker`` processes. The feed commits the consumer group's offsets itself, from
what the Engine applied: a committed offset must never be ahead of the state committed to the changelog
(its markers carry each partition's next input offset), and workers joining and leaving mid-stream must
lose and double nothing.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from kafka import KafkaAdminClient, KafkaConsumer, TopicPartition  # type: ignore[import-untyped, unused-ignore]

from spotzee.runtime.kafka import admin
from spotzee.runtime.kafka.config import kafka_python_config
from spotzee.settings import Settings
from spotzee.streams import topics
from spotzee.streams.contact_processor import CONTACTS
from spotzee.tables.changelog import MARKER, marker_input_offset
from tests.faults.test_kafka_faults import comparable, recompute, send
from tests.support import Stack, running_stack, start_worker, stop_worker

BATCHES = 24  # of 500 events


class Markers:
    """The highest next-input offset of each partition's changelog markers, read as far as the changelog's end."""

    def __init__(self, settings: Settings) -> None:
        self.topic = admin.topic_name(settings, admin.CONTACTS_CHANGELOG)
        self.tps = [TopicPartition(self.topic, p) for p in range(settings.partitions)]
        self.consumer = KafkaConsumer(**kafka_python_config(settings), enable_auto_commit=False)
        self.consumer.assign(self.tps)
        self.consumer.seek_to_beginning(*self.tps)
        self.applied = dict.fromkeys(range(settings.partitions), 0)

    def catch_up(self) -> dict[int, int]:
        ends = self.consumer.end_offsets(self.tps)
        while any(self.consumer.position(tp) < ends[tp] for tp in self.tps):
            for tp, records in self.consumer.poll(timeout_ms=500).items():
                for record in records:
                    if record.key == MARKER:
                        self.applied[tp.partition] = max(self.applied[tp.partition], marker_input_offset(record.value))
        return dict(self.applied)

    def close(self) -> None:
        self.consumer.close()


def committed_offsets(client: Any, settings: Settings) -> dict[int, int]:
    events = admin.topic_name(settings, topics.EVENTS)
    group = admin.group_id(settings, admin.PROCESSOR_GROUP)
    found = client.list_group_offsets([group]).get(group, {})
    return {tp.partition: int(meta.offset) for tp, meta in found.items() if tp.topic == events and meta.offset >= 0}


def end_offsets(settings: Settings) -> dict[int, int]:
    consumer = KafkaConsumer(**kafka_python_config(settings), enable_auto_commit=False)
    try:
        name = admin.topic_name(settings, topics.EVENTS)
        found = consumer.end_offsets([TopicPartition(name, p) for p in range(settings.partitions)])
        return {tp.partition: int(offset) for tp, offset in found.items()}
    finally:
        consumer.close()


def sending(stack: Stack, batches: range, pause_s: float = 0.0) -> Iterator[int]:
    for index in batches:
        assert send(stack, index) == 200
        time.sleep(pause_s)
        yield index


def test_group_offsets_never_run_ahead_of_the_state_committed_to_the_changelog(
    tmp_path: Path, kafka_bootstrap: str
) -> None:
    with running_stack(tmp_path / "data", runtime="kafka", kafka_bootstrap=kafka_bootstrap) as stack:
        settings = stack.services.settings
        done = threading.Event()

        def sender() -> None:
            try:
                for _ in sending(stack, range(BATCHES)):
                    pass
            finally:
                done.set()

        thread = threading.Thread(target=sender)
        thread.start()
        markers = Markers(settings)
        client = KafkaAdminClient(**kafka_python_config(settings))
        checks = 0
        try:
            while not done.is_set() or checks < 5:
                committed = committed_offsets(client, settings)  # first the commits, then the state
                applied = markers.catch_up()
                for partition, offset in committed.items():
                    assert offset <= applied[partition], (partition, offset, applied[partition])
                checks += 1
                time.sleep(0.05)
            thread.join()
            stack.settle(timeout=120)
            ends = end_offsets(settings)
            assert committed_offsets(client, settings) == ends
            assert markers.catch_up() == ends
        finally:
            client.close()
            markers.close()
        assert checks >= 5
        assert stack.scalar("SELECT count() FROM events FINAL") == BATCHES * 500


def test_workers_joining_and_leaving_mid_stream_lose_and_double_nothing(tmp_path: Path, kafka_bootstrap: str) -> None:
    with running_stack(
        tmp_path / "data", runtime="kafka", kafka_bootstrap=kafka_bootstrap, workers=1, partitions=8
    ) as stack:
        settings = stack.services.settings
        for _ in sending(stack, range(0, 8), pause_s=0.1):
            pass
        stack.workers.append(start_worker(settings, "worker-2"))  # joins: a rebalance while records are held
        for _ in sending(stack, range(8, 16), pause_s=0.1):
            pass
        stop_worker(stack.workers[0])  # leaves gracefully: its partitions move with their offsets committed
        for _ in sending(stack, range(16, BATCHES), pause_s=0.1):
            pass
        stack.settle(timeout=240)
        expected = recompute(settings)
        for key, raw in expected.items():
            actual = stack.services.runtime.read(CONTACTS.name, key)
            assert actual is not None, key
            assert comparable(actual) == comparable(raw), key
        assert stack.scalar("SELECT count() FROM events FINAL") == BATCHES * 500
        assert stack.scalar("SELECT uniqExact(message_id) FROM events") == BATCHES * 500
        assert stack.workers[1].poll() is None
