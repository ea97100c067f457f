"""A replica of the compacted ``definitions`` topic, in every process of the Kafka runtime.

``load()`` reads the topic to its end before a process serves or processes anything (so keys and
projects exist when the API starts); ``follow()`` then applies what other processes write.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterator

from aiokafka import AIOKafkaConsumer, TopicPartition
from kafka import KafkaConsumer
from kafka import TopicPartition as SyncTopicPartition

from spotzee.runtime.kafka import admin
from spotzee.runtime.kafka.config import aiokafka_config, kafka_python_config
from spotzee.settings import Settings
from spotzee.streams import topics

log = logging.getLogger(__name__)

Listener = Callable[[str, bytes | None], None]


class DefinitionsReplica:
    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self.topic = admin.topic_name(settings, topics.DEFINITIONS)
        self.items: dict[str, bytes] = {}
        self.listeners: list[Listener] = []
        self._end = 0

    def load(self) -> int:
        """Read the topic from the beginning to its current end (blocking); returns the count."""
        consumer = KafkaConsumer(
            **kafka_python_config(self.settings), enable_auto_commit=False, consumer_timeout_ms=1000
        )
        try:
            tp = SyncTopicPartition(self.topic, 0)
            consumer.assign([tp])
            consumer.seek_to_beginning(tp)
            end = consumer.end_offsets([tp])[tp]
            while consumer.position(tp) < end:
                for records in consumer.poll(timeout_ms=1000).values():
                    for record in records:
                        self.remember((record.key or b"").decode(), record.value)
            self._end = int(end)
        finally:
            consumer.close()
        return len(self.items)

    async def follow(self) -> None:
        """Apply later writes (runs until cancelled), telling the listeners."""
        consumer = AIOKafkaConsumer(**aiokafka_config(self.settings), enable_auto_commit=False)
        await consumer.start()
        try:
            tp = TopicPartition(self.topic, 0)
            consumer.assign([tp])
            consumer.seek(tp, self._end)
            async for message in consumer:
                key = (message.key or b"").decode()
                self.remember(key, message.value)
                for listener in self.listeners:
                    listener(key, message.value)
        finally:
            await consumer.stop()

    def remember(self, key: str, value: bytes | None) -> None:
        if value is None:
            self.items.pop(key, None)
        else:
            self.items[key] = value

    def scan(self, prefix: str) -> Iterator[tuple[str, bytes]]:
        for key in sorted(self.items):
            if key.startswith(prefix):
                yield key, self.items[key]
