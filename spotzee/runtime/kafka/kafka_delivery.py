"""The Kafka runtime's delivery agent: the ``sends`` topic -> providers, at most once per send_id.

Where it runs. In the processor worker, next to the contact processor, partitioned like it:
``sends`` is keyed by contact (``project:contact``) with as many partitions as ``events``, and
both are written with the same partitioner, so sends partition *p* holds the sends of the
contacts whose state is in the Engine's store of events partition *p*. The worker that owns
events partition *p* (consumer group ``spotzee-processor``) also delivers sends partition *p*: a
task per owned partition reads it with its own consumer (no consumer group: it follows the
Engine's assignment), and reads each send's contact **from that partition's store at send time**
(consent now: an unsubscribe processed before the send is delivered suppresses it, even if the
send was queued earlier).

Its state lives in the partition's store and goes through the same changelog as the contact
state (``Engine.write``: acked with ``acks=all`` before the local write), so it moves with the
partition: the worker that takes a partition over restores it with the rest.

- ``__deliveries``: ``send_id`` -> ``DeliveryState`` (``streams/delivery_decisions.py``, shared with the
  embedded agent);
- ``__delivery_due``: the retry index (due time | send_id): retries wait there, not in the
  stream, so a failing send never blocks the sends behind it;
- ``__delivery_outbox``: a send's records (``messages`` row, delivery event, dead letter) between
  the write of its final state and their acks;
- ``__delivery_meta``: ``offset``, the next ``sends`` offset to read.

Sends are handled in batches (a fetch of up to 100 records, or the due retries): (1) a final
state: skip; ``retry``: wait for the index; (2) the ``attempting`` markers of the batch are written
to the changelog and acked **before** any provider call (the offset is not advanced, due entries
stay); (3) the calls (``Deliverer``, reading the contact now), concurrently, at most
``SPOTZEE_DELIVERY_CONCURRENCY`` in flight; (4) one changelog write: every final state (or
``retry`` + its due entry), the records in the outbox, the offset past the batch, the due entries
handled; (5) the records to ``analytics`` / ``events`` / ``dead-letter``, acked, then the outbox
entries deleted. A partition's task drains its outbox when it starts, so records are
at-least-once (their consumers dedupe: ReplacingMergeTree ids, messageId ``<send_id>:<status>``).

The residual window and how it is closed: a worker killed (or a partition lost) between (2) and
(4) leaves ``attempting``. Whoever owns the partition next reads the send again (its offset was
not advanced; a retry is still in the due index) and finds ``attempting``: the provider may or
may not have the message, so it is **not** called again (at most once per send_id, across
crashes and rebalances) and the send is recorded ``failed`` with reason ``outcome unknown``
(dead-lettered, ``message_failed``). The window is the provider calls of one batch in flight. Emails carry a
``Message-ID`` derived from the send_id and webhooks an ``Idempotency-Key``, so a receiver can
recognise a duplicate should an operator re-send by hand. On a graceful revocation the
partition's in-flight send finishes first (bounded), so a rebalance doesn't open the window.
A worker that keeps running after losing its group membership without noticing (a zombie) is
not fenced, as for the contact state.

Partitions run in parallel, and within a partition the sends of a batch run concurrently: a
slow provider holds its batch (up to the call timeout), not the partition for good.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any

import msgspec
import orjson
from aiokafka import AIOKafkaConsumer, TopicPartition

from spotzee.providers.delivery_service import Deliverer, DeliveryResult, DeliverySettings, Scan, definition_lookups
from spotzee.providers.safety import OutboundPolicy
from spotzee.providers.sealing import SecretBox
from spotzee.runtime.delivery_loop import BatchLookups, trim_http_client_overheads
from spotzee.runtime.kafka import admin
from spotzee.runtime.kafka.config import aiokafka_config
from spotzee.runtime.kafka.partition_engine import Changes, Emit, Engine, due_key
from spotzee.schemas.analytics_models import DeadLetterRow
from spotzee.schemas.contact_models import ContactState
from spotzee.schemas.messages import SendCommand
from spotzee.schemas.structs import decode
from spotzee.services.template_workers import TemplateWorkers
from spotzee.settings import Settings
from spotzee.streams import topics
from spotzee.streams.contact_processor import CONTACTS
from spotzee.streams.delivery_decisions import (
    OUTCOME_UNKNOWN,
    DeliveryState,
    RetryPolicy,
    attempting,
    next_action,
    outcome,
)
from spotzee.streams.record_codec import dumps, loads
from spotzee.tables.changelog import changelog_key
from spotzee.tables.partition_store import DELIVERIES, DELIVERY_DUE, DELIVERY_META, DELIVERY_OUTBOX, PartitionStore
from spotzee.tables.rocksdb_store import TABLE_PREFIX, U64

log = logging.getLogger(__name__)

DUE = DELIVERY_DUE
OUTBOX = DELIVERY_OUTBOX
META = DELIVERY_META
OFFSET = "offset"
FETCH_RECORDS = 100
STOP_GRACE_SECONDS = 10.0


@dataclass(frozen=True)
class Item:
    """A send in hand: from the topic (``next_offset``) or from the retry index (``due``)."""

    command: SendCommand
    next_offset: int | None
    due: str | None
    offset: int


class Revoked(Exception):
    """The partition left this worker: its next owner carries on from the changelog."""


class KafkaDelivery:
    """Runs one :class:`PartitionDelivery` per events partition the Engine has ready."""

    def __init__(
        self,
        engine: Engine,
        deliverer: Deliverer,
        settings: Settings,
        sends_topic: str,
        consumer_factory: Callable[[], AIOKafkaConsumer],
    ) -> None:
        self.engine = engine
        self.deliverer = deliverer
        self.policy = RetryPolicy(
            settings.delivery_max_attempts, settings.delivery_retry_base, settings.delivery_retry_cap
        )
        self.concurrency = settings.delivery_concurrency
        self.sends_topic = sends_topic
        self.consumer_factory = consumer_factory
        self.partitions: dict[int, PartitionDelivery] = {}
        self.delivered = 0
        # Renders in worker processes, killed at the deadline: a slow template fails its send only.
        # (coalesced, and lookups once per batch: as the embedded agent, ``runtime/delivery_loop.py``)
        self.workers = TemplateWorkers(settings.template_workers, settings.template_render_timeout, coalesce=True)
        deliverer.workers = self.workers
        self.lookups = BatchLookups(deliverer)
        trim_http_client_overheads()

    async def reconcile(self) -> None:
        """Start delivering partitions whose store is ready; forget those that ended."""
        for partition, delivery in list(self.partitions.items()):
            if delivery.task.done():
                self.partitions.pop(partition, None)
        for partition, store in list(self.engine.stores.items()):
            if partition not in self.partitions and store.ready.is_set() and not store.db.closed:
                self.partitions[partition] = PartitionDelivery(self, partition, store)

    async def stop_partition(self, partition: int, grace: float = STOP_GRACE_SECONDS) -> None:
        """Before the Engine gives a partition up: let its in-flight send finish (bounded). It
        stays in ``partitions`` meanwhile, so that ``reconcile`` doesn't start another."""
        delivery = self.partitions.get(partition)
        if delivery is not None:
            try:
                await delivery.stop(grace)
            finally:
                if self.partitions.get(partition) is delivery:
                    del self.partitions[partition]

    async def close(self) -> None:
        await asyncio.gather(*(self.stop_partition(p) for p in list(self.partitions)))
        await self.deliverer.aclose()  # the kept senders' connections
        self.workers.close()


class PartitionDelivery:
    def __init__(self, agent: KafkaDelivery, partition: int, store: PartitionStore) -> None:
        self.agent = agent
        self.engine = agent.engine
        self.partition = partition
        self.store = store
        self.stopping = asyncio.Event()
        self.pending: Changes = {}  # offsets and index deletions, written with the next write
        self.task = asyncio.ensure_future(self._run())

    async def stop(self, grace: float) -> None:
        """Finish the send in hand (up to ``grace`` seconds: a rebalance waits for it), else
        abandon it: it is cancelled and never writes again (``Engine.write`` refuses a store that
        is no longer the partition's), and the next owner records it ``outcome unknown``."""
        self.stopping.set()
        done, _ = await asyncio.wait({self.task}, timeout=grace)
        if not done:
            log.warning("partition %d: a provider call still running after %.0fs; abandoned", self.partition, grace)
            self.task.cancel()

    # -- the loop -----------------------------------------------------------------------------

    async def _run(self) -> None:
        while not self.stopping.is_set() and not self.store.db.closed:
            try:
                await self._consume()
            except Revoked:
                return
            except asyncio.CancelledError:
                raise
            except Exception:  # e.g. the broker away: start again from the stored offset
                log.exception("partition %d: delivery failed; restarting from the stored offset", self.partition)
                self.pending.clear()
                await asyncio.sleep(1.0)

    async def _consume(self) -> None:
        tp = TopicPartition(self.agent.sends_topic, self.partition)
        consumer = self.agent.consumer_factory()
        await consumer.start()
        try:
            consumer.assign([tp])
            consumer.seek(tp, self._offset())
            await self._drain_outbox()
            while not self.stopping.is_set():
                if self.store.db.closed:
                    raise Revoked
                batches = await consumer.getmany(tp, timeout_ms=200, max_records=FETCH_RECORDS)
                await self._records(batches.get(tp, []))
                await self._due_retries()
                if self.pending:
                    await self._write([], {})
        finally:
            await consumer.stop()

    async def _records(self, messages: list[Any]) -> None:
        """A fetched batch: runs of send commands are handled together; a record that is not a
        send command is dead-lettered in its place."""
        run: list[Item] = []
        for message in messages:
            if self.stopping.is_set():
                break
            try:
                command = decode(SendCommand, message.value or b"")
            except (msgspec.DecodeError, ValueError) as exc:  # not a send command: dead-lettered
                await self._handle(run)
                run = []
                await self._poison(message.offset, message.key or b"", message.value or b"", exc)
                continue
            run.append(Item(command, next_offset=message.offset + 1, due=None, offset=message.offset))
        await self._handle(run)

    async def _due_retries(self) -> None:
        now = due_key(self.engine.clock.now(), "\x7f")
        due: list[Item] = []
        for key, value in self._scan(DUE, limit=FETCH_RECORDS):
            if key > now or self.stopping.is_set():
                break
            state = self._state(value.decode())
            if state is None:
                self.pending[changelog_key(DUE, key)] = None
                continue
            due.append(Item(state.command, next_offset=None, due=key, offset=0))
        await self._handle(due)

    # -- sends ----------------------------------------------------------------------------------

    async def _handle(self, items: list[Item]) -> None:
        """Sends together: every ``attempting`` marker acked in one changelog write before any
        provider call; the calls concurrent (``SPOTZEE_DELIVERY_CONCURRENCY``); the final states,
        outbox and offset in one write; then the records, and the outbox cleared."""
        if not items:
            return
        tail = _tail(items)
        finals: list[tuple[Item, int, DeliveryResult]] = []
        calls = self._attempts(items, finals)
        if calls:  # durable before any call
            await self._write([], {changelog_key(DELIVERIES, i.command.send_id): dumps(m) for i, m in calls})
        limit = asyncio.Semaphore(self.agent.concurrency)
        self.agent.lookups.batch()  # this partition's calls below share their lookups
        results = await asyncio.gather(*(self._call(item.command, limit) for item, _ in calls))
        finals += [(item, marker.attempts, result) for (item, marker), result in zip(calls, results, strict=True)]
        await self._finish(finals, tail)

    def _attempts(
        self, items: list[Item], finals: list[tuple[Item, int, DeliveryResult]]
    ) -> list[tuple[Item, DeliveryState]]:
        """The sends of the batch to call now, each with its ``attempting`` marker; those stopped
        during a call before go to ``finals`` (outcome unknown); the rest wait or were handled."""
        calls: list[tuple[Item, DeliveryState]] = []
        seen: set[str] = set()
        for item in items:
            send_id = item.command.send_id
            if send_id in seen:  # a replayed duplicate within the batch: the first decides
                continue
            seen.add(send_id)
            state = self._state(send_id)
            action = next_action(state, from_retry_index=item.due is not None)
            if action in ("skip", "wait"):  # replayed, or waiting for its retry (the index brings it back)
                continue
            if action == "unknown" and state is not None:
                log.warning("send %s: stopped during its provider call before; not called again", send_id)
                finals.append((item, state.attempts, OUTCOME_UNKNOWN))
                continue
            calls.append((item, attempting(item.command, state)))
        return calls

    async def _call(self, command: SendCommand, limit: asyncio.Semaphore) -> DeliveryResult:
        async with limit:
            contact = self._contact(command)
            try:
                return await self.agent.deliverer.deliver(command, contact)
            except Exception:  # a bug, not a provider answer: this send only, never called again
                log.exception("send %s: delivery raised; recorded as outcome unknown", command.send_id)
                return OUTCOME_UNKNOWN

    async def _finish(self, finals: list[tuple[Item, int, DeliveryResult]], tail: Changes) -> None:
        now = self.engine.clock.now()
        changes: Changes = dict(tail)
        emits: list[Emit] = []
        for item, attempts, result in finals:
            command = item.command
            done = outcome(
                command, attempts, result, now, self.agent.policy, partition=self.partition, offset=item.offset
            )
            changes[changelog_key(DELIVERIES, command.send_id)] = dumps(done.state)
            if done.state.status == "retry" and done.state.due_at is not None:
                changes[changelog_key(DUE, due_key(done.state.due_at, command.send_id))] = command.send_id.encode()
            changes[changelog_key(OUTBOX, command.send_id)] = _outbox(done.emits)
            emits += done.emits
            self.agent.delivered += done.state.status == "sent"
        await self._write([], changes)  # with the pending offset and index deletions
        if finals:
            await self._write(emits, {changelog_key(OUTBOX, item.command.send_id): None for item, _, _ in finals})

    async def _poison(self, offset: int, key: bytes, value: bytes, exc: Exception) -> None:
        text = key.decode(errors="replace")
        log.warning("sends %d/%d is not a send command; dead-lettered: %s", self.partition, offset, exc)
        row = DeadLetterRow(
            project_id=text.split(":", 1)[0],
            dead_letter_id=f"{topics.SENDS}/{self.partition}/{offset}",
            topic=topics.SENDS,
            partition=self.partition,
            offset=offset,
            key=text,
            error=f"{type(exc).__name__}: {exc}"[:2000],
            payload=value.decode(errors="replace"),
            at=self.engine.clock.now(),
        )
        emits: list[Emit] = [(topics.ANALYTICS, text, dumps(row)), (topics.DEAD_LETTER, text, dumps(row))]
        await self._write(emits, {changelog_key(META, OFFSET): U64.pack(offset + 1)})

    # -- state ------------------------------------------------------------------------------------

    async def _write(self, emits: list[Emit], changes: Changes) -> None:
        merged = {**self.pending, **changes}
        if not await self.engine.write(self.store, emits, merged):
            raise Revoked
        self.pending.clear()

    async def _drain_outbox(self) -> None:
        """Records of final states whose acks a stopped worker never saw: send them (again)."""
        for send_id, value in self._scan(OUTBOX, limit=10_000):
            await self._write(_emits(value), {changelog_key(OUTBOX, send_id): None})

    def _offset(self) -> int:
        raw = self.store.get(META, OFFSET)
        return int(U64.unpack(raw)[0]) if raw is not None else 0

    def _contact(self, command: SendCommand) -> ContactState | None:
        """The contact as the partition's store has it now (the last committed batch)."""
        if self.store.db.closed:
            raise Revoked
        raw = self.store.get(CONTACTS.name, f"{command.project_id}:{command.contact_id}")
        return loads(ContactState, raw) if raw is not None else None

    def _state(self, send_id: str) -> DeliveryState | None:
        if self.store.db.closed:
            raise Revoked
        raw = self.store.get(DELIVERIES, send_id)
        return decode(DeliveryState, raw) if raw is not None else None

    def _scan(self, table: str, limit: int) -> list[tuple[str, bytes]]:
        if self.store.db.closed:
            raise Revoked
        out: list[tuple[str, bytes]] = []
        it = self.store.db.cf(TABLE_PREFIX + table).iter()
        it.seek_to_first()
        while it.valid() and len(out) < limit:
            out.append((bytes(it.key()).decode(), bytes(it.value())))
            it.next()
        return out


def _outbox(emits: list[Emit]) -> bytes:
    return orjson.dumps([[topic, key, value.decode()] for topic, key, value in emits])


def _emits(raw: bytes) -> list[Emit]:
    return [(str(topic), str(key), str(value).encode()) for topic, key, value in orjson.loads(raw)]


def build_delivery(settings: Settings, engine: Engine, scan: Scan) -> KafkaDelivery | None:
    """The worker's delivery agent, or None (logged) when it can't sign unsubscribe links the API
    accepts: workers and API processes must share ``SPOTZEE_UNSUBSCRIBE_SECRET``."""
    if settings.unsubscribe_secret is None:
        log.error(
            "SPOTZEE_UNSUBSCRIBE_SECRET is not set: this worker does not deliver (sends wait on their topic); "
            "set it, the same on every API process and worker, and SPOTZEE_PUBLIC_BASE_URL"
        )
        return None
    if settings.secrets_key is None:
        log.error(
            "SPOTZEE_SECRETS_KEY is not set: this worker does not deliver (sends wait on their topic); "
            "set it, the same on every API process and worker, to open provider secrets"
        )
        return None
    box = SecretBox(settings.secrets_key)
    log.info("provider secrets key id %s (the API processes must show the same)", box.key_id)
    template, provider_for = definition_lookups(scan, box)
    deliverer = Deliverer(
        DeliverySettings(
            public_base_url=settings.resolved_public_base_url(),
            unsubscribe_secret=settings.unsubscribe_secret,
            outbound=OutboundPolicy.from_settings(settings.outbound_allow_private, settings.outbound_allowed_networks),
        ),
        template,
        provider_for,
    )
    deliverer.write_back = _appender(engine, admin.topic_name(settings, topics.EVENTS))
    return KafkaDelivery(
        engine,
        deliverer,
        settings,
        admin.topic_name(settings, topics.SENDS),
        lambda: AIOKafkaConsumer(**aiokafka_config(settings), enable_auto_commit=False, auto_offset_reset="earliest"),
    )


def _appender(engine: Engine, events_topic: str) -> Callable[[list[tuple[str, bytes]]], Awaitable[None]]:
    """Records appended to ``events`` with the engine's producer, as the API appends them (keyed:
    the contact's partition): an unregistered push token's removal (``Deliverer.write_back``)."""

    async def append(records: list[tuple[str, bytes]]) -> None:
        futures = [await engine.producer.send(events_topic, value=value, key=key.encode()) for key, value in records]
        await asyncio.gather(*futures)

    return append


def _tail(items: list[Item]) -> Changes:
    """What moves only with the finals: the offset past the batch and its retries out of the index
    (a crash before the finals reads these sends again, and finds their markers)."""
    tail: Changes = {}
    for item in items:
        if item.next_offset is not None:
            tail[changelog_key(META, OFFSET)] = U64.pack(item.next_offset)
        if item.due is not None:
            tail[changelog_key(DUE, item.due)] = None
    return tail
