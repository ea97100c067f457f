"""The HTTP side of the benchmark: generated events, the load, the latency probes, the ClickHouse checks.

:func:`measure` runs one configuration against a running :class:`~bench_stacks.Stack`:

1. Warm-up: one batch of ``bench_warmup`` events over 64 users (almost surely every partition), waited for.
2. The clock starts. C clients post the pre-serialised ``/v1/batch`` bodies; meanwhile a separate client posts one
   ``bench_probe`` track event every ~100 ms (recording when its 2xx arrived) and a poller reads
   ``SELECT message_id FROM events WHERE event = 'bench_probe'`` every ~25 ms (recording when each probe is
   first seen; only probes from the first one not yet seen on, see :class:`Probes`). Latency of a probe =
   first seen - 2xx.
3. After the last 2xx, ``uniqExact(message_id)`` of the load's events is polled every 100 ms until it is N (a
   re-sent Kafka record could add a row twice; the final check below catches that). Probes then stop, and
   the poller waits for every acknowledged probe.
4. After a short settle, ``count()`` and ``uniqExact(message_id)`` must both be exactly N.
"""

from __future__ import annotations

import asyncio
import contextlib
import random
import time
import uuid
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any

import httpx
import orjson
from bench_common import BenchError, progress
from bench_stacks import Stack

LAND_TIMEOUT_S = 300.0
WARMUP_TIMEOUT_S = 120.0
PROBE_TIMEOUT_S = 60.0
POLL_INTERVAL_S = 0.1
PROBE_INTERVAL_S = 0.1
PROBE_POLL_INTERVAL_S = 0.025
SETTLE_S = 1.0
REQUEST_TIMEOUT_S = 120.0
WARMUP_USERS = 64
PROBE_USERS = 16

LOAD_PREFIX = "bench-"
COUNT_QUERY = f"SELECT count(), uniqExact(message_id) FROM events WHERE startsWith(message_id, '{LOAD_PREFIX}')"
PROBE_QUERY = "SELECT message_id FROM events WHERE event = 'bench_probe'"
WARMUP_QUERY = "SELECT uniqExact(message_id) FROM events WHERE event = 'bench_warmup'"

TRACK_EVENTS: list[tuple[str, int]] = [
    ("product_viewed", 30),
    ("page_view", 20),
    ("add_to_cart", 15),
    ("search", 12),
    ("checkout_started", 8),
    ("purchase", 8),
    ("signed_in", 7),
]
PAGES = ["Home", "Pricing", "Docs", "Blog", "Product", "Cart", "Checkout", "Account"]
PLANS = ["free", "starter", "pro", "enterprise"]
COUNTRIES = ["US", "GB", "DE", "FR", "IN", "BR", "JP", "CA", "AU", "ES"]
CURRENCIES = ["USD", "EUR", "GBP"]


@dataclass
class SendStats:
    latencies_ms: list[float] = field(default_factory=list)
    retries_429: int = 0
    last_ok: float = 0.0


@dataclass
class Probes:
    """Probe messageId -> when its 2xx arrived / when it was first seen in ClickHouse (perf_counter).

    Probe ids are ``probe-<run>-<7-digit index>``, so ``message_id >= id(low)`` selects every probe from ``low``
    on: the poller only asks for probes from the first one not yet accounted for, and answers stay small.
    """

    run_id: str = field(default_factory=lambda: uuid.uuid4().hex[:12])
    acked: dict[str, float] = field(default_factory=dict)
    seen: dict[str, float] = field(default_factory=dict)
    throttled: set[str] = field(default_factory=set)
    answered: int = 0
    low: int = 0
    stop: asyncio.Event = field(default_factory=asyncio.Event)
    sender_done: bool = False

    def message_id(self, index: int) -> str:
        return f"probe-{self.run_id}-{index:07d}"

    def query(self) -> str:
        """The probes not yet accounted for (and a few seen ones that came out of order)."""
        return f"{PROBE_QUERY} AND message_id >= '{self.message_id(self.low)}'"

    def advance(self) -> None:
        """Move ``low`` past every answered probe that was seen or throttled."""
        while self.low < self.answered and (
            self.message_id(self.low) in self.seen or self.message_id(self.low) in self.throttled
        ):
            self.low += 1

    def latencies_ms(self) -> list[float]:
        return [(self.seen[key] - acked) * 1000 for key, acked in self.acked.items() if key in self.seen]

    def missing(self) -> int:
        return sum(1 for key in self.acked if key not in self.seen)


@dataclass(frozen=True)
class Measurement:
    events: int
    accepted_s: float
    processed_s: float
    batch_latencies_ms: list[float]
    probe_latencies_ms: list[float]
    retries_429: int
    started_at: float  # wall clock (time.time()) at the first send, for figures read from Kafka afterwards
    accepted_at: float  # wall clock just after the last 2xx


@dataclass
class Clients:
    load: httpx.AsyncClient
    probe: httpx.AsyncClient
    admin: httpx.AsyncClient
    connections: int


# -- data -----------------------------------------------------------------------------------------


def iso(moment: datetime) -> str:
    return moment.isoformat(timespec="milliseconds").replace("+00:00", "Z")


def track_event(rng: random.Random, user_id: str) -> dict[str, Any]:
    names, weights = zip(*TRACK_EVENTS, strict=True)
    name = rng.choices(names, weights)[0]
    properties: dict[str, Any] = {"sku": f"SKU-{rng.randrange(5000):04d}"}
    if name == "purchase":
        properties |= {
            "amount": round(rng.lognormvariate(3.5, 0.8), 2),
            "currency": rng.choice(CURRENCIES),
            "items": rng.randint(1, 5),
        }
    elif name == "add_to_cart":
        properties |= {"price": round(rng.uniform(2, 300), 2), "quantity": rng.randint(1, 3)}
    elif name == "search":
        properties = {"query": rng.choice(["shoes", "shirt", "laptop", "desk", "lamp", "gift card"])}
    elif name == "page_view":
        properties = {"path": f"/{rng.choice(PAGES).lower()}"}
    return {"type": "track", "userId": user_id, "event": name, "properties": properties}


def identify_event(rng: random.Random, user_id: str) -> dict[str, Any]:
    traits = {
        "email": f"{user_id}@example.com",
        "plan": rng.choice(PLANS),
        "country": rng.choice(COUNTRIES),
        "logins": rng.randint(1, 400),
    }
    return {"type": "identify", "userId": user_id, "traits": traits}


def page_event(rng: random.Random, user_id: str) -> dict[str, Any]:
    name = rng.choice(PAGES)
    properties = {"path": f"/{name.lower()}", "title": f"{name} | Shop", "referrer": "https://www.google.com/"}
    return {"type": "page", "userId": user_id, "name": name, "properties": properties}


def generate_events(count: int, users: int, rng: random.Random) -> Iterator[dict[str, Any]]:
    """``count`` events: ~75% track, ~15% page, ~10% identify; timestamps over the last 30 days."""
    now = datetime.now(UTC)
    run_id = uuid.uuid4().hex[:12]
    for index in range(count):
        user_id = f"user-{rng.randrange(users):06d}"
        roll = rng.random()
        if roll < 0.10:
            event = identify_event(rng, user_id)
        elif roll < 0.25:
            event = page_event(rng, user_id)
        else:
            event = track_event(rng, user_id)
        event["messageId"] = f"{LOAD_PREFIX}{run_id}-{index}"
        event["timestamp"] = iso(now - timedelta(seconds=rng.uniform(0, 30 * 86400)))
        yield event


def build_batches(events: int, batch_size: int, users: int, seed: int) -> list[bytes]:
    """Every request body, serialised before the clock starts."""
    rng = random.Random(seed)
    bodies: list[bytes] = []
    batch: list[dict[str, Any]] = []
    for event in generate_events(events, users, rng):
        batch.append(event)
        if len(batch) == batch_size:
            bodies.append(orjson.dumps({"batch": batch}))
            batch = []
    if batch:
        bodies.append(orjson.dumps({"batch": batch}))
    return bodies


# -- HTTP -----------------------------------------------------------------------------------------


@contextlib.asynccontextmanager
async def open_clients(stack: Stack, connections: int) -> AsyncIterator[Clients]:
    """Load clients (``connections``), one probe client (its own connection), one admin (SQL) client."""
    json_headers = {"content-type": "application/json"}
    limits = httpx.Limits(max_connections=connections, max_keepalive_connections=connections)
    auth = (stack.write_key, "")
    admin_headers = {**json_headers, "Authorization": f"Bearer {stack.admin_key}"}
    async with (
        httpx.AsyncClient(
            base_url=stack.url, auth=auth, headers=json_headers, limits=limits, timeout=REQUEST_TIMEOUT_S
        ) as load,
        httpx.AsyncClient(base_url=stack.url, auth=auth, headers=json_headers, timeout=REQUEST_TIMEOUT_S) as probe,
        httpx.AsyncClient(base_url=stack.url, headers=admin_headers, timeout=REQUEST_TIMEOUT_S) as admin,
    ):
        yield Clients(load=load, probe=probe, admin=admin, connections=connections)


async def post(client: httpx.AsyncClient, path: str, body: bytes) -> httpx.Response:
    try:
        return await client.post(path, content=body)
    except httpx.HTTPError as exc:
        raise BenchError(f"POST {path} failed: {exc!r}") from exc


async def sql(client: httpx.AsyncClient, query: str) -> list[list[Any]]:
    response = await post(client, "/api/v1/sql", orjson.dumps({"query": query}))
    if response.status_code != 200:
        raise BenchError(f"POST /api/v1/sql answered {response.status_code}: {response.text[:500]}")
    rows: list[list[Any]] = response.json()["rows"]
    return rows


def retry_after_seconds(response: httpx.Response) -> float:
    try:
        return max(0.0, float(response.headers.get("retry-after", "1")))
    except ValueError:
        return 1.0


# -- load -----------------------------------------------------------------------------------------


async def post_batch(client: httpx.AsyncClient, body: bytes, stats: SendStats) -> None:
    """POST one batch until it is accepted; 429s are waited out and counted."""
    while True:
        started = time.perf_counter()
        response = await post(client, "/v1/batch", body)
        finished = time.perf_counter()
        if response.status_code == 429:
            stats.retries_429 += 1
            await asyncio.sleep(retry_after_seconds(response))
            continue
        if not response.is_success:
            raise BenchError(f"POST /v1/batch answered {response.status_code}: {response.text[:500]}")
        stats.latencies_ms.append((finished - started) * 1000)
        stats.last_ok = finished
        return


async def client_worker(client: httpx.AsyncClient, queue: asyncio.Queue[tuple[float, bytes]], stats: SendStats) -> None:
    while True:
        try:
            due, body = queue.get_nowait()
        except asyncio.QueueEmpty:
            return
        wait = due - time.perf_counter()
        if wait > 0:  # an offered load: this batch is not due yet
            await asyncio.sleep(wait)
        await post_batch(client, body, stats)


async def send_all(
    client: httpx.AsyncClient, bodies: list[bytes], connections: int, events: int = 0, rate: float = 0.0
) -> SendStats:
    """Send every body from ``connections`` concurrent senders: as fast as they are accepted, or,
    with ``rate`` (events/s over ``events`` in all), each batch at its due time on a fixed schedule
    (an offered load: a batch late because the server is slow is sent at once, never skipped)."""
    queue: asyncio.Queue[tuple[float, bytes]] = asyncio.Queue()
    started = time.perf_counter()
    seconds_per_body = events / len(bodies) / rate if rate > 0 and bodies else 0.0
    for index, body in enumerate(bodies):
        queue.put_nowait((started + index * seconds_per_body, body))
    stats = SendStats()
    async with asyncio.TaskGroup() as group:
        for _ in range(connections):
            group.create_task(client_worker(client, queue, stats))
    return stats


async def wait_processed(stack: Stack, client: httpx.AsyncClient, expected: int) -> float:
    """Poll until ``expected`` distinct load events are in ClickHouse; returns when that was seen."""
    deadline = time.perf_counter() + LAND_TIMEOUT_S
    while True:
        _, unique = (await sql(client, COUNT_QUERY))[0]
        if int(unique) >= expected:
            return time.perf_counter()
        if time.perf_counter() > deadline:
            raise BenchError(f"FAIL: {unique} of {expected} events in ClickHouse after {LAND_TIMEOUT_S:.0f} s")
        stack.check_alive()
        await asyncio.sleep(POLL_INTERVAL_S)


async def check_exact(client: httpx.AsyncClient, expected: int) -> None:
    """After a settle: exactly ``expected`` rows, all distinct (nothing lost, nothing written twice)."""
    await asyncio.sleep(SETTLE_S)
    rows, unique = (int(value) for value in (await sql(client, COUNT_QUERY))[0])
    if rows != expected or unique != expected:
        raise BenchError(f"FAIL: ClickHouse holds {rows} rows / {unique} distinct events, expected exactly {expected}")


# -- warm-up and probes -----------------------------------------------------------------------------


async def warm_up(stack: Stack, clients: Clients) -> None:
    """One event per warm-up user, then wait until all are in ClickHouse: the whole pipeline is running."""
    run_id = uuid.uuid4().hex[:12]
    batch = [
        {"type": "track", "userId": f"warmup-{index}", "event": "bench_warmup", "messageId": f"warmup-{run_id}-{index}"}
        for index in range(WARMUP_USERS)
    ]
    response = await post(clients.probe, "/v1/batch", orjson.dumps({"batch": batch}))
    if not response.is_success:
        raise BenchError(f"warm-up batch answered {response.status_code}: {response.text[:500]}")
    deadline = time.perf_counter() + WARMUP_TIMEOUT_S
    while int((await sql(clients.admin, WARMUP_QUERY))[0][0]) < WARMUP_USERS:
        if time.perf_counter() > deadline:
            raise BenchError(f"the warm-up events did not reach ClickHouse within {WARMUP_TIMEOUT_S:.0f} s")
        stack.check_alive()
        await asyncio.sleep(POLL_INTERVAL_S)


async def send_probe(client: httpx.AsyncClient, probes: Probes, index: int) -> None:
    message_id = probes.message_id(index)
    body = {"userId": f"probe-{index % PROBE_USERS}", "event": "bench_probe", "messageId": message_id}
    response = await post(client, "/v1/track", orjson.dumps(body))
    if response.status_code == 429:
        probes.throttled.add(message_id)
    elif response.is_success:
        probes.acked[message_id] = time.perf_counter()
    else:
        raise BenchError(f"POST /v1/track (probe) answered {response.status_code}: {response.text[:500]}")
    probes.answered = index + 1


async def probe_sender(client: httpx.AsyncClient, probes: Probes) -> None:
    """One probe every PROBE_INTERVAL_S (never two at once) until ``probes.stop``."""
    index = 0
    next_at = time.perf_counter()
    try:
        while not probes.stop.is_set():
            await send_probe(client, probes, index)
            index += 1
            next_at = max(next_at + PROBE_INTERVAL_S, time.perf_counter())
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(probes.stop.wait(), timeout=next_at - time.perf_counter())
    finally:
        probes.sender_done = True


async def probe_poller(stack: Stack, client: httpx.AsyncClient, probes: Probes) -> None:
    """Record when each probe is first seen; after the sender is done, wait for every acknowledged probe."""
    deadline: float | None = None
    while True:
        rows = await sql(client, probes.query())
        now = time.perf_counter()
        for (message_id,) in rows:
            probes.seen.setdefault(message_id, now)
        probes.advance()
        if probes.sender_done:
            if probes.missing() == 0:
                return
            deadline = deadline or now + PROBE_TIMEOUT_S
            if now > deadline:
                raise BenchError(f"FAIL: {probes.missing()} acknowledged probes never reached ClickHouse")
        stack.check_alive()
        await asyncio.sleep(PROBE_POLL_INTERVAL_S)


# -- one configuration ------------------------------------------------------------------------------


async def load_and_wait(stack: Stack, clients: Clients, bodies: list[bytes], events: int, rate: float) -> Measurement:
    """Send the load, wait until ClickHouse holds it; times are from the first send."""
    started, started_at = time.perf_counter(), time.time()
    stats = await send_all(clients.load, bodies, clients.connections, events, rate)
    accepted_s, accepted_at = stats.last_ok - started, time.time()
    progress(f"{stack.name}: all {events:,} accepted after {accepted_s:.1f} s; waiting for ClickHouse")
    processed_s = await wait_processed(stack, clients.admin, events) - started
    return Measurement(
        events, accepted_s, processed_s, stats.latencies_ms, [], stats.retries_429, started_at, accepted_at
    )


async def measure_async(
    stack: Stack, bodies: list[bytes], events: int, connections: int, rate: float = 0.0
) -> Measurement:
    async with open_clients(stack, connections) as clients:
        await warm_up(stack, clients)
        probes = Probes()
        progress(f"{stack.name}: sending {events:,} events in {len(bodies):,} batches from {connections} clients")
        try:
            async with asyncio.TaskGroup() as group:
                group.create_task(probe_sender(clients.probe, probes))
                group.create_task(probe_poller(stack, clients.admin, probes))
                result = await load_and_wait(stack, clients, bodies, events, rate)
                probes.stop.set()
        except* BenchError as errors:
            raise errors.exceptions[0] from None
        await check_exact(clients.admin, events)
    progress(f"{stack.name}: {len(probes.acked)} probes, {len(probes.throttled)} throttled (429)")
    return Measurement(
        result.events,
        result.accepted_s,
        result.processed_s,
        result.batch_latencies_ms,
        probes.latencies_ms(),
        result.retries_429,
        result.started_at,
        result.accepted_at,
    )


def measure(stack: Stack, bodies: list[bytes], events: int, connections: int, rate: float = 0.0) -> Measurement:
    """Warm up, then send ``bodies`` (``events`` events; at ``rate`` events/s if given) with latency
    probes alongside; see the module doc."""
    return asyncio.run(measure_async(stack, bodies, events, connections, rate))
