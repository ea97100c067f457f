"""The API process's side of the Kafka runtime.

- appends: an idempotent producer with ``acks=all``: a 2xx only after the broker's ack; a broker
  that can't be reached within ``kafka_request_timeout`` is LogUnavailable (HTTP 503);
- reads: a read replica of processor state, fed by the changelog topic (complete batches only,
  the same rule as a restoring worker), so ``GET /api/v1/contacts/{id}`` is local and fast;
- definitions: the compacted ``definitions`` topic, loaded before serving and followed after;
- lag: the processor and sink consumer groups' lag, polled in the background (429 above bound);
- the analytics sink, when this process runs it (chDB: ``sink_app.ThreadedSinkApp``).
Broker failures become LogUnavailable through ``broker_errors.kafka_errors``.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Callable, Iterator

from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, TopicPartition
from aiokafka.errors import KafkaError
from kafka import KafkaProducer

from spotzee.analytics.clickhouse import ClickHouse
from spotzee.errors import LogUnavailable, Overloaded
from spotzee.runtime.kafka import admin
from spotzee.runtime.kafka.broker_errors import BROKER_ERRORS, kafka_errors, with_type
from spotzee.runtime.kafka.config import aiokafka_config, kafka_python_config, make_producer
from spotzee.runtime.kafka.definitions_topic import DefinitionsReplica
from spotzee.runtime.kafka.sink_app import ThreadedSinkApp
from spotzee.runtime.runtime_protocol import Health, Position, Sink
from spotzee.settings import Settings
from spotzee.streams import topics
from spotzee.streams.contact_processor import ContactProcessor
from spotzee.streams.interface import Clock
from spotzee.tables.changelog import Replay
from spotzee.tables.rocksdb_store import META, TABLE_PREFIX, U64, RocksDB

log = logging.getLogger(__name__)


class KafkaRuntime:
    """``clickhouse``: also run the analytics sink (the faust sink app) in this process."""

    def __init__(self, settings: Settings, clock: Clock, *, clickhouse: ClickHouse | None = None) -> None:
        self.settings = settings
        self.clock = clock
        self.partitions = settings.partitions
        self.events_topic = admin.topic_name(settings, topics.EVENTS)
        self.analytics_topic = admin.topic_name(settings, topics.ANALYTICS)
        self.definitions_topic = admin.topic_name(settings, topics.DEFINITIONS)
        self.changelog_topic = admin.topic_name(settings, admin.CONTACTS_CHANGELOG)
        tables = ContactProcessor.tables
        self.replica = RocksDB(settings.data_dir / "kafka-replica", tables, sync=False)  # rebuilt from the changelog
        self.replica_input = [self.replica.get_u64(b"input/%d" % p) for p in range(self.partitions)]
        self.definitions = DefinitionsReplica(settings)
        self._unreachable = f"Kafka unreachable at {settings.kafka_bootstrap}"
        with kafka_errors(self._unreachable, on_error=lambda _: self.replica.close()):
            self._sync_producer = KafkaProducer(**kafka_python_config(settings), acks="all", retries=5)
            self.definitions.load()
        self.producer: AIOKafkaProducer | None = None
        self._sink = None if clickhouse is None else ThreadedSinkApp(settings, clickhouse)
        self._loop: asyncio.AbstractEventLoop | None = None
        self._tasks: list[asyncio.Task[None]] = []
        self._lag: dict[str, int] = {admin.PROCESSOR_GROUP: 0, admin.SINK_GROUP: 0}
        self._lag_error: str | None = None
        self._replica_error: str | None = None
        self._last_send_error: str | None = None
        self._accepting = False

    # -- lifecycle --------------------------------------------------------------------------

    async def start(self) -> None:
        """The producer and the background tasks, on this (the serving) loop; then the sink."""
        self._loop = asyncio.get_running_loop()
        self.producer = make_producer(self.settings)
        with kafka_errors(self._unreachable):
            await self.producer.start()
        self._tasks = [
            asyncio.create_task(self._follow_replica()),
            asyncio.create_task(self.definitions.follow()),
            asyncio.create_task(self._poll_lag()),
        ]
        self._accepting = True
        if self._sink is not None:
            self._sink.start()

    def stop_accepting(self) -> None:
        """The first step of a graceful stop: appends answer LogUnavailable (HTTP 503) from now on."""
        self._accepting = False

    def stop(self) -> None:
        """Refuse appends, stop the tasks and the producer (on the serving loop: this blocks until
        they are stopped, so call it from a worker thread), then stop the sink."""
        self.stop_accepting()
        if self._loop is not None:
            if self._on_serving_loop():
                raise RuntimeError(
                    "KafkaRuntime.stop blocks until the serving loop stops its tasks: call it from a thread"
                )
            asyncio.run_coroutine_threadsafe(self._stop_on_loop(), self._loop).result()
        if self._sink is not None:
            self._sink.stop()

    def _on_serving_loop(self) -> bool:
        try:
            return asyncio.get_running_loop() is self._loop
        except RuntimeError:  # no loop runs in this thread
            return False

    async def _stop_on_loop(self) -> None:
        for task in self._tasks:
            task.cancel()
        for task in self._tasks:
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await task
        self._tasks.clear()
        if self.producer is not None:
            await self.producer.stop()

    def close(self) -> None:
        self._sync_producer.close(timeout=5)
        self.replica.close()

    @property
    def sink(self) -> Sink | None:
        return self._sink

    # -- appends -------------------------------------------------------------------------------

    async def _healthy_producer(self) -> AIOKafkaProducer:
        """The producer, replaced after a failure: a producer that lost the broker mid-request
        can stay wedged (pending batches, idempotence sequence) after the broker returns."""
        if self.producer is not None and self._last_send_error is None:
            return self.producer
        old, self.producer = self.producer, None
        if old is not None:
            with contextlib.suppress(Exception):
                await asyncio.wait_for(old.stop(), timeout=self.settings.kafka_request_timeout)
        fresh = make_producer(self.settings)
        with kafka_errors(self._unreachable):
            try:
                await asyncio.wait_for(fresh.start(), timeout=self.settings.kafka_request_timeout)
            except BROKER_ERRORS:
                with contextlib.suppress(Exception):
                    await fresh.stop()
                raise
        self.producer = fresh
        return fresh

    async def append(self, records: list[tuple[str, bytes]]) -> list[Position]:
        if not self._accepting:
            raise LogUnavailable("the log is not accepting writes")
        if self._lag[admin.PROCESSOR_GROUP] + len(records) > self.settings.inbound_max_backlog:
            raise Overloaded(
                f"processing lag over {self.settings.inbound_max_backlog} records",
                retry_after=self.settings.retry_after_seconds,
            )
        producer = await self._healthy_producer()
        with kafka_errors("the broker did not acknowledge the events", detail=with_type, on_error=self._send_failed):
            futures = [await producer.send(self.events_topic, value=value, key=key.encode()) for key, value in records]
            metadata = await asyncio.wait_for(asyncio.gather(*futures), timeout=self.settings.kafka_request_timeout)
        self._last_send_error = None
        return [Position(m.partition, m.offset) for m in metadata]

    async def broadcast(self, key: str, value: bytes) -> list[Position]:
        """Append one record to every partition of ``events`` (a control record: segment barrier)."""
        if not self._accepting:
            raise LogUnavailable("the log is not accepting writes")
        producer = await self._healthy_producer()
        with kafka_errors("the broker did not acknowledge the record", detail=with_type, on_error=self._send_failed):
            futures = [
                await producer.send(self.events_topic, value=value, key=key.encode(), partition=p)
                for p in range(self.partitions)
            ]
            metadata = await asyncio.wait_for(asyncio.gather(*futures), timeout=self.settings.kafka_request_timeout)
        return [Position(m.partition, m.offset) for m in metadata]

    def _send_failed(self, error: str) -> None:
        """Remembered for health, and so the next append starts a fresh producer."""
        self._last_send_error = error

    async def wait_sink(self, timeout: float) -> bool:
        """Wait until the sink group has committed every analytics record produced so far."""
        deadline = time.monotonic() + timeout
        rows = await asyncio.to_thread(admin.consumer_lag, self.settings, [admin.SINK_GROUP])
        targets = {(r.topic, r.partition): r.end for r in rows}
        while time.monotonic() < deadline:
            rows = await asyncio.to_thread(admin.consumer_lag, self.settings, [admin.SINK_GROUP])
            committed = {(r.topic, r.partition): r.committed for r in rows}
            if all(committed.get(tp, 0) >= end for tp, end in targets.items()):
                return True
            await asyncio.sleep(0.2)
        return False

    async def wait_processed(self, positions: list[Position], timeout: float) -> bool:
        deadline = time.monotonic() + timeout
        while not all(self.replica_input[p.partition] > p.offset for p in positions):
            if time.monotonic() >= deadline:
                return False
            await asyncio.sleep(0.01)
        return True

    # -- state reads (replica) -------------------------------------------------------------------

    def read(self, table: str, key: str) -> bytes | None:
        value = self.replica.cf(TABLE_PREFIX + table).get(key.encode())
        return None if value is None else bytes(value)

    def scan(self, table: str, prefix: str, after: str | None = None) -> Iterator[tuple[str, bytes]]:
        return self.replica.scan_prefix(TABLE_PREFIX + table, prefix, after)

    async def _follow_replica(self) -> None:
        consumer = AIOKafkaConsumer(
            **aiokafka_config(self.settings), enable_auto_commit=False, auto_offset_reset="earliest"
        )
        await consumer.start()
        try:
            tps = [TopicPartition(self.changelog_topic, p) for p in range(self.partitions)]
            consumer.assign(tps)
            for tp in tps:
                consumer.seek(tp, self.replica.get_u64(b"changelog/%d" % tp.partition))
            replays = {tp.partition: Replay() for tp in tps}
            while True:
                try:
                    batches = await consumer.getmany(timeout_ms=200, max_records=10_000)
                    for tp, messages in batches.items():
                        replay = replays[tp.partition]
                        for message in messages:
                            replay.add(message.offset, message.key or b"", message.value)
                        self._apply(tp.partition, replay)
                    self._replica_error = None
                except KafkaError as exc:
                    self._replica_error = str(exc)
                    await asyncio.sleep(1)
        finally:
            await consumer.stop()

    def _apply(self, partition: int, replay: Replay) -> None:
        applied = replay.take_applied()
        if replay.marker_offset is None or replay.input_offset is None:
            return
        batch = self.replica.batch()
        for raw_key, value in applied.items():
            table, _, key = raw_key.decode().partition("\x00")
            if table not in ContactProcessor.tables:
                continue  # timers are the workers' business
            self.replica.stage(batch, TABLE_PREFIX + table, key.encode(), value)
        meta = self.replica.handle(META)
        batch.put(b"input/%d" % partition, U64.pack(replay.input_offset), meta)
        batch.put(b"changelog/%d" % partition, U64.pack(replay.marker_offset + 1), meta)
        self.replica.write(batch)
        self.replica_input[partition] = replay.input_offset

    # -- lag, health ---------------------------------------------------------------------------

    async def _poll_lag(self) -> None:
        while True:
            try:
                for group in (admin.PROCESSOR_GROUP, admin.SINK_GROUP):
                    self._lag[group] = await asyncio.to_thread(admin.total_lag, self.settings, group)
                self._lag_error = None
            except Exception as exc:  # the broker may be down: health shows it
                self._lag_error = str(exc)
            await asyncio.sleep(1.0)

    def processing_lag(self) -> int:
        return self._lag[admin.PROCESSOR_GROUP]

    def sink_lag(self) -> int:
        return self._lag[admin.SINK_GROUP]

    def health(self) -> Health:
        detail: dict[str, str] = {}
        log_ok = self._accepting and self._last_send_error is None and self._lag_error is None
        if not log_ok:
            detail["log"] = self._last_send_error or self._lag_error or "not accepting writes"
        state_ok = self._replica_error is None and bool(self._tasks) and not self._tasks[0].done()
        if not state_ok:
            detail["state"] = self._replica_error or "read replica not running"
        return Health(log=log_ok, state=state_ok, detail=detail)

    def stats(self) -> dict[str, float]:
        """Processing, timers and dead letters happen on the workers: zero here."""
        return {
            "processing_lag_records": self.processing_lag(),
            "sink_lag_records": self.sink_lag(),
            "timers_pending": 0,
            "processed_records": 0,
            "dead_lettered_records": 0,
            "clickhouse_rows_written": self._sink.rows_written if self._sink is not None else 0,
        }

    # -- definitions ------------------------------------------------------------------------------

    def put_definitions(self, items: list[tuple[str, bytes | None]], outbox: list[bytes]) -> None:
        """Definitions to the compacted topic, then their audit rows; each acked before returning."""
        with kafka_errors("the broker did not acknowledge the definitions"):
            futures = [self._sync_producer.send(self.definitions_topic, key=k.encode(), value=v) for k, v in items]
            futures += [self._sync_producer.send(self.analytics_topic, key=b"audit", value=v) for v in outbox]
            for future in futures:
                future.get(timeout=self.settings.kafka_request_timeout)
        for key, value in items:
            self.definitions.remember(key, value)

    def scan_definitions(self, prefix: str) -> Iterator[tuple[str, bytes]]:
        return self.definitions.scan(prefix)

    def on_definition(self, listener: Callable[[str, bytes | None], None]) -> None:
        self.definitions.listeners.append(listener)
