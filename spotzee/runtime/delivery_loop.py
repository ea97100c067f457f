"""The embedded runtime's delivery agent: the ``sends`` topic -> providers, at most once per send_id.

A thread reads ``sends`` from its stored offset, up to 100 sends (or due retries) per pass (the
decisions are shared with the Kafka runtime's agent: ``streams/delivery_decisions.py``):

1. a final state for a ``send_id`` (``deliveries`` family) means it was handled: skip (replay);
2. the ``attempting`` markers of every send of the pass are written in **one** synced write
   **before** any provider call;
3. the calls (``Deliverer``: consent now, template, provider, render), concurrently, at most
   ``SPOTZEE_DELIVERY_CONCURRENCY`` in flight;
4. one synced write: each final state (or ``retry`` with its due time in the retry index), its
   ``messages`` row, its delivery event (``message_sent`` / ``message_failed`` /
   ``message_suppressed``) back into ``events``, and the offset.

A crash between 2 and 4 leaves ``attempting``: the provider may or may not have taken those
messages, and they are **not** called again (at most once); they are recorded ``failed`` with
reason ``outcome unknown``. That is the residual window: the provider calls in flight when the
process died (at most one pass, 100 sends). Emails carry a ``Message-ID`` derived from the send_id
and webhooks an ``Idempotency-Key``, so a receiver can recognise a duplicate should an operator
re-send by hand.

Per-send work is kept small, as the sends of a pass have much in common: the template and the
provider (read, validated and its secrets opened) are looked up once per pass and kept for that
pass only (``BatchLookups``: an edit applies from the next pass on); the renders of the sends in
flight go to the template workers together (``TemplateWorkers(coalesce=True)``). The contact is
read for each send when its call starts (consent at send time).
"""

from __future__ import annotations

import asyncio
import contextlib
import contextvars
import importlib.util
import logging
import sys
import threading
from collections.abc import Callable, Iterator
from datetime import datetime
from itertools import islice
from typing import Protocol

from spotzee.providers.delivery_service import Deliverer, DeliveryResult
from spotzee.schemas.contact_models import ContactState
from spotzee.schemas.messages import SendCommand
from spotzee.schemas.provider_models import ProviderDefinition
from spotzee.schemas.structs import decode
from spotzee.schemas.template_models import TemplateDefinition
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
from spotzee.streams.interface import Clock
from spotzee.streams.record_codec import dumps, loads
from spotzee.tables.rocksdb_store import DELIVERIES, META, U64, RocksDB

log = logging.getLogger(__name__)

OFFSET = b"delivery_offset"
BATCH = 100  # sends (and due retries) per pass
IDLE_POLL_S = 0.05  # an idle loop looks again after this long even if nothing woke it


_BATCH: contextvars.ContextVar[dict[tuple[str, str, str], object]] = contextvars.ContextVar("delivery_batch")


class BatchLookups:
    """The deliverer's template and provider lookups, each answered once per batch of sends.

    ``batch()`` starts a batch in the current context: the calls of the batch (tasks made from
    it copy the context) share one memo, so a pass of 100 sends of one journey reads, validates
    and opens its template and provider once, not 100 times; outside a batch every lookup reads
    afresh. A lookup that raises (secrets unreadable) is not memoised: each send sees it."""

    def __init__(self, deliverer: Deliverer) -> None:
        self._template = deliverer.template
        self._provider_for = deliverer.provider_for
        deliverer.template = self.template
        deliverer.provider_for = self.provider_for

    @staticmethod
    def batch() -> None:
        _BATCH.set({})

    def template(self, project_id: str, template_id: str) -> TemplateDefinition | None:
        return self._memo(("template", project_id, template_id), self._template)  # type: ignore[return-value]

    def provider_for(self, project_id: str, channel: str) -> ProviderDefinition | None:
        return self._memo(("provider", project_id, channel), self._provider_for)  # type: ignore[return-value]

    @staticmethod
    def _memo(key: tuple[str, str, str], read: Callable[[str, str], object]) -> object:
        memo = _BATCH.get(None)
        if memo is None:
            return read(key[1], key[2])
        if key not in memo:
            memo[key] = read(key[1], key[2])
        return memo[key]


def trim_http_client_overheads() -> None:
    """Two per-request costs of the HTTP client stack that buy nothing here (measured with py-spy
    on bench/sends.py, SMS over Twilio: ~9 % and ~6 % of the delivery thread's CPU):

    - httpcore asks ``import sniffio`` at every lock and connection check; without sniffio
      installed each ask is a failed import, searched for on disk again. Recording the absence
      once makes it a dict lookup, with the same answer (not installed: asyncio);
    - httpx logs every request at INFO ("HTTP Request: POST ..."): a log line per send. Each
      send's outcome is recorded in its message row and delivery event; httpx's warnings and
      errors still reach the log."""
    if "sniffio" not in sys.modules and importlib.util.find_spec("sniffio") is None:
        sys.modules["sniffio"] = None  # type: ignore[assignment]
    logging.getLogger("httpx").setLevel(logging.WARNING)


def _state_key(send_id: str) -> bytes:
    return b"s/" + send_id.encode()


def _retry_key(due_at: datetime, send_id: str) -> bytes:
    return b"r/%013d/" % int(due_at.timestamp() * 1000) + send_id.encode()


class DeliveryStore(Protocol):
    """What the loop needs of the embedded runtime that runs it (``runtime/embedded/``)."""

    @property
    def db(self) -> RocksDB: ...

    def topic_records(self, topic: str, start: int = 0) -> Iterator[tuple[int, bytes]]: ...

    def commit_external(
        self, puts: list[tuple[str, bytes, bytes | None]], emits: list[tuple[str, str, bytes]]
    ) -> None: ...

    def read(self, table: str, key: str) -> bytes | None: ...


class DeliveryLoop:
    def __init__(self, runtime: DeliveryStore, deliverer: Deliverer, settings: Settings, clock: Clock) -> None:
        self.runtime = runtime
        self.deliverer = deliverer
        self.settings = settings
        self.clock = clock
        self.offset = runtime.db.get_u64(OFFSET)
        self.policy = RetryPolicy(
            settings.delivery_max_attempts, settings.delivery_retry_base, settings.delivery_retry_cap
        )
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self.last_error: str | None = None
        self.delivered = 0
        # Renders in worker processes, killed at the deadline: a slow template fails its send only.
        # (coalesced: the renders of the sends in flight share a round trip per worker)
        self.workers = TemplateWorkers(settings.template_workers, settings.template_render_timeout, coalesce=True)
        deliverer.workers = self.workers
        self.lookups = BatchLookups(deliverer)
        trim_http_client_overheads()
        self._warming: asyncio.Task[None] | None = None
        # Set from other threads (``wake``) when a send is committed: an idle loop starts its next
        # pass at once rather than after its poll interval (event -> email latency).
        self._loop: asyncio.AbstractEventLoop | None = None
        self._wakeup: asyncio.Event | None = None

    def start(self) -> None:
        self._thread = threading.Thread(target=lambda: asyncio.run(self._run()), name="spotzee-delivery", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        self.wake()  # an idle loop sees the stop now, not at its next poll
        if self._thread is not None:
            self._thread.join(timeout=30)
        self.workers.close()

    def alive(self) -> bool:
        return self._thread is not None and self._thread.is_alive()

    def wake(self) -> None:
        """Thread-safe: sends were committed; an idle pass starts now."""
        loop, wakeup = self._loop, self._wakeup
        if loop is not None and wakeup is not None:
            with contextlib.suppress(RuntimeError):  # the loop is closing: it stops anyway
                loop.call_soon_threadsafe(wakeup.set)

    async def _idle(self) -> None:
        """Until woken by a committed send, or the poll interval (due retries, a missed wake)."""
        wakeup = self._wakeup
        if wakeup is None:
            await asyncio.sleep(IDLE_POLL_S)
            return
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(wakeup.wait(), IDLE_POLL_S)
        wakeup.clear()

    async def _run(self) -> None:
        self._loop, self._wakeup = asyncio.get_running_loop(), asyncio.Event()
        # Template workers start beside the first passes, not before them (the task is kept: a
        # task nobody references may be collected before it finishes).
        self._warming = asyncio.create_task(self.workers.warm())
        while not self._stop.is_set():
            try:
                busy = await self._pass()
                self.last_error = None
            except Exception as exc:  # keep going: the same send is tried again after a pause
                self.last_error = f"{type(exc).__name__}: {exc}"
                log.exception("delivery pass failed")
                busy = False
            if not busy:
                await self._idle()
        await self.deliverer.aclose()  # the kept senders' connections, on the loop that made them

    async def _pass(self) -> bool:
        sends = list(islice(self.runtime.topic_records(topics.SENDS, self.offset), BATCH))
        if sends:
            await self._handle([(decode(SendCommand, raw), None) for _, raw in sends], next_offset=sends[-1][0] + 1)
            self.offset = sends[-1][0] + 1
        now = self.clock.now()
        due: list[tuple[SendCommand, bytes | None]] = []
        orphans: list[tuple[str, bytes, bytes | None]] = []
        for key, _ in list(islice(self.runtime.db.scan_prefix(DELIVERIES, "r/"), BATCH)):
            due_ms = int(key.split("/")[1])
            if due_ms > now.timestamp() * 1000:
                break
            raw_state = self.runtime.db.cf(DELIVERIES).get(_state_key(key.split("/", 2)[2]))
            if raw_state is None:
                orphans.append((DELIVERIES, key.encode(), None))
                continue
            due.append((decode(DeliveryState, bytes(raw_state)).command, key.encode()))
        if orphans:
            self.runtime.commit_external(orphans, [])
        if due:
            await self._handle(due, next_offset=None)
        return bool(sends or due or orphans)

    async def _handle(self, items: list[tuple[SendCommand, bytes | None]], *, next_offset: int | None) -> None:
        """A batch of sends (from the topic, or retries from their index: ``retry_key``).

        Every ``attempting`` marker of the batch is written in one synced write before any
        provider call; the calls run concurrently (at most ``delivery_concurrency``); the final
        states, rows, events and the topic offset are one synced write after all of them.
        """
        finals: list[tuple[str, bytes, bytes | None]] = []
        if next_offset is not None:
            finals.append((META, OFFSET, U64.pack(next_offset)))
        emits: list[tuple[str, str, bytes]] = []
        calls = self._attempts(items, finals, emits)
        if calls:
            markers: list[tuple[str, bytes, bytes | None]] = [
                (DELIVERIES, _state_key(command.send_id), dumps(marker)) for command, marker in calls
            ]
            self.runtime.commit_external(markers, [])
        limit = asyncio.Semaphore(self.settings.delivery_concurrency)
        self.lookups.batch()  # the calls below (tasks of this context) share their lookups
        results = await asyncio.gather(*(self._call(command, limit) for command, _ in calls))
        now = self.clock.now()
        for (command, marker), result in zip(calls, results, strict=True):
            self._settle(command, marker.attempts, result, now, finals, emits)
        if finals or emits:
            self.runtime.commit_external(finals, emits)

    def _attempts(
        self,
        items: list[tuple[SendCommand, bytes | None]],
        finals: list[tuple[str, bytes, bytes | None]],
        emits: list[tuple[str, str, bytes]],
    ) -> list[tuple[SendCommand, DeliveryState]]:
        """The sends of the batch to call now, each with its ``attempting`` marker; the others
        settled into ``finals``/``emits`` (outcome unknown) or left to their retry index."""
        calls: list[tuple[SendCommand, DeliveryState]] = []
        seen: set[str] = set()
        for command, retry_key in items:
            if retry_key is not None:
                finals.append((DELIVERIES, retry_key, None))
            if command.send_id in seen:  # a replayed duplicate within the batch: the first decides
                continue
            seen.add(command.send_id)
            raw = self.runtime.db.cf(DELIVERIES).get(_state_key(command.send_id))
            state = decode(DeliveryState, bytes(raw)) if raw is not None else None
            action = next_action(state, from_retry_index=retry_key is not None)
            if action in ("skip", "wait"):  # replayed, or waiting for its retry: the index brings it back
                continue
            if action == "unknown" and state is not None:
                self._settle(command, state.attempts, OUTCOME_UNKNOWN, self.clock.now(), finals, emits)
                continue
            calls.append((command, attempting(command, state)))
        return calls

    async def _call(self, command: SendCommand, limit: asyncio.Semaphore) -> DeliveryResult:
        async with limit:
            contact_raw = self.runtime.read(CONTACTS.name, f"{command.project_id}:{command.contact_id}")
            contact = loads(ContactState, contact_raw) if contact_raw is not None else None
            try:
                return await self.deliverer.deliver(command, contact)
            except Exception:  # a bug, not a provider answer: this send only, never called again
                log.exception("send %s: delivery raised; recorded as outcome unknown", command.send_id)
                return OUTCOME_UNKNOWN

    def _settle(
        self,
        command: SendCommand,
        attempts: int,
        result: DeliveryResult,
        now: datetime,
        puts: list[tuple[str, bytes, bytes | None]],
        emits: list[tuple[str, str, bytes]],
    ) -> None:
        done = outcome(command, attempts, result, now, self.policy)
        puts.append((DELIVERIES, _state_key(command.send_id), dumps(done.state)))
        if done.state.status == "retry" and done.state.due_at is not None:
            puts.append((DELIVERIES, _retry_key(done.state.due_at, command.send_id), b""))
        emits.extend(done.emits)
        self.delivered += done.state.status == "sent"
