"""Segments benchmark: real Spotzee processes on 127.0.0.1, driven over HTTP; one table, a column per runtime.

``python bench/segments.py [--scale default|full] [--runtime embedded|kafka|both]`` (``make bench-segments``).

Scale (``--scale``; ``--contacts`` / ``--history-events`` / ``--live-events`` override one figure):

- ``default``: 100,000 contacts, 1,000,000 past events, 20,000 live events; the Kafka runtime at a reduced scale
  (``--kafka-contacts``, default 10,000, past and live events scaled alike: 100,000 and 2,000) because it processes
  ~2x fewer events/s here and its sink (in the API process) drains ~2,500 ClickHouse rows/s, so the default scale
  would take ~10 minutes instead of ~2; the column header and the scale line say so;
- ``full``: 1,000,000 contacts, 10,000,000 past events, 200,000 live events, for both runtimes.

Per runtime (embedded: one ``spotzee up``; kafka: a broker, ``spotzee api --runtime kafka`` and
``--kafka-workers`` ``spotzee worker --no-sink``, see ``bench_stacks``):

1. **History** (``bench_history``, before the processes start): the default project and ``keys.json``, and the past
   ``track`` events (page_view, product_viewed, add_to_cart, login, purchase, refund, search) with properties,
   over the last 90 days, inserted into ClickHouse's ``events`` table through the stack's own ClickHouse client.
   Segment backfills read them from ``events_resolved``; the contact processor never sees them.
2. **19 standing segments** of mixed kinds (:func:`segment_rules`: attribute eq / in / not_in / between /
   ends_with, subscription, event with count / aggregate sum, max, avg / last_occurred / where / within,
   none / all / any, list, random, segment reference, everyone) and an empty static list ``VIP``.
3. **Contacts**: one ``identify`` per contact through ``POST /v1/batch`` (traits email, country, plan, age,
   subscriptions.email / .sms); the setup row is contacts / (``GET /health`` says processing lag 0 - first send);
   then the run waits until every identify is in ClickHouse. 5% of the contacts are imported into ``VIP`` (CSV).

   With ``--standing-segments live`` (default) the 19 segments exist before the contacts, so each contact is
   evaluated as it is created and nothing is backfilled; their event trackers only ever see live events (the
   history belongs to contacts they consider new). ``--standing-segments backfill`` creates them after the
   contacts and the list instead and times their build: each backfills from the history like the 20th (a rule
   that holds without history -- "Never refunded", "Everyone", attribute-only -- evaluates every contact in its
   sweep).
4. **(a) backfill**: a 20th segment (country, and purchase / product_viewed history) is created with the 19
   ready; time from the ``POST`` to ``GET /api/v1/segments/{id}`` saying ``ready`` (polled every 50 ms), and the CPU
   seconds the Spotzee processes used meanwhile (steadier than the wall time on a shared machine). The build is
   ClickHouse seeds for the contacts with matching history, then one sweep per partition (docs/segments.md); the
   build's own log line (contacts seeded one by one, each phase's duration) is printed to stderr.
5. **(b) throughput**: with all 20 ready, ``--live-events`` events (90% track with the history's mix, 10% identify
   changing plan / country / subscription / age) from ``--clients`` clients through ``POST /v1/batch``. After the
   last 2xx, 128 marker contacts (almost surely every partition) each send one purchase that puts them in the
   probe segment; processed = N / (``count`` of that segment reaches 128 - first send): a partition processes its
   records in order, so every live event ahead of a marker has been evaluated against the 20 segments.
6. **(c) latency**: ``--probes`` existing contacts, one at a time on the otherwise idle stack, each send one
   purchase of 1,500 (the probe segment is "purchase >= 1,000 within a day"; no generated amount reaches 1,000);
   latency = first ``GET /api/v1/contacts/{id}/segments`` (polled every 10 ms) that lists the segment - the 2xx
   of the event. Afterwards every probe must have its ``entered`` row in ClickHouse's ``segment_changes``.
7. **Checks**: segments whose size is known ("Everyone", "VIP list", "Holdout 10%") are compared with it; each
   mismatch is a ``WARN`` line on stderr and counted in the table (the numbers above are still printed).

Any non-2xx other than 429 (waited out and counted), a process that dies, or a wait that times out prints a
``FAIL`` line and exits non-zero. Every process and broker started here is stopped and the temporary directory
deleted (also on Ctrl-C or SIGTERM). Progress goes to stderr; the table (or ``--json``) and the wall time to stdout.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import math
import random
import shutil
import signal
import sys
import tempfile
import threading
import time
import uuid
from collections.abc import AsyncIterator, Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import httpx
import orjson
from bench_common import BenchError, percentile, progress
from bench_history import CATEGORIES, CURRENCIES, EVENT_MIX, LOGIN_METHODS, PAGES, QUERIES, contact_id
from bench_stacks import Stack, embedded_stack, kafka_broker, kafka_name, kafka_stack, run_command
from bench_traffic import post, send_all, sql

from spotzee.schemas.rules import SegmentRuleAdapter

BENCH_DIR = Path(__file__).resolve().parent
SCALES: dict[str, tuple[int, int, int]] = {  # contacts, past events, live events
    "default": (100_000, 1_000_000, 20_000),
    "full": (1_000_000, 10_000_000, 200_000),
}
DEFAULT_KAFKA_CONTACTS = 10_000
RUNTIMES = {"embedded": ("embedded",), "kafka": ("kafka",), "both": ("embedded", "kafka")}
STANDING = ("live", "backfill")
MAX_BATCH_EVENTS = 2500
MAX_IMPORT_ROWS = 100_000
VIP_SHARE = 0.05
MARKERS = 128
PROBE_AMOUNT = 1500
WHALE_AMOUNT = 1000
REQUEST_TIMEOUT_S = 120.0
MIN_WAIT_S = 600.0
SLOWEST_PER_S = 25  # a wait gives up after max(MIN_WAIT_S, contacts / SLOWEST_PER_S) (x19 for 19 backfills)
POLL_S = 0.1
BACKFILL_POLL_S = 0.05
PROBE_POLL_S = 0.01
PROBE_TIMEOUT_S = 60.0
PROBE_GAP_S = 0.02
KAFKA_LAG_SETTLE_S = 2.5

COUNTRIES = [("US", 30), ("GB", 10), ("DE", 10), ("FR", 10), ("IN", 8), ("BR", 8), ("JP", 6), ("CA", 6), ("ES", 6)]
COUNTRIES += [("AU", 6)]
PLANS = [("free", 55), ("starter", 25), ("pro", 15), ("enterprise", 5)]
DOMAINS = ["gmail.com", "yahoo.com", "outlook.com", "proton.me", "example.com"]


@dataclass(frozen=True)
class Scale:
    contacts: int
    history_events: int
    live_events: int
    reduced: bool = False


@dataclass(frozen=True)
class Config:
    scale_name: str
    runtimes: tuple[str, ...]
    scale: Scale
    kafka_scale: Scale
    kafka_workers: int
    standing: str
    probes: int
    clients: int
    batch_size: int
    seed: int
    as_json: bool


@dataclass
class Result:
    configuration: str
    contacts: int
    history_events: int
    live_events: int
    reduced: bool
    history_insert_s: float = math.nan
    identify_per_s: float = math.nan
    initial_build_s: float = math.nan
    backfill_s: float = math.nan
    backfill_cpu_s: float = math.nan  # CPU seconds the Spotzee processes used during (a): less noisy on a busy machine
    backfill_members: int = 0
    live_accepted_per_s: float = math.nan
    live_processed_per_s: float = math.nan
    membership_changes: int = 0
    latency_p50_ms: float = math.nan
    latency_p99_ms: float = math.nan
    latency_max_ms: float = math.nan
    probes: int = 0
    api_peak_rss_mib: float = math.nan
    worker_peak_rss_mib: tuple[float, ...] = ()
    retries_429: int = 0
    wall_s: float = math.nan
    segment_members: dict[str, int] = field(default_factory=dict)
    failed_checks: list[str] = field(default_factory=list)


@dataclass
class Session:
    """A running stack and the HTTP clients of one runtime's run."""

    stack: Stack
    project_id: str
    ingest: httpx.AsyncClient  # write key (HTTP Basic)
    api: httpx.AsyncClient  # secret key (Bearer): segments, lists, contacts
    admin: httpx.AsyncClient  # admin key (Bearer): SQL
    clients: int
    timeout: float  # how long one wait may take (see SLOWEST_PER_S)
    run_id: str = field(default_factory=lambda: uuid.uuid4().hex[:10])
    retries_429: int = 0


# -- command line -------------------------------------------------------------------------------


def positive_int(text: str) -> int:
    value = int(text.replace("_", ""))
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be >= 1, got {value}")
    return value


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description="Spotzee segments benchmark (see the module docstring).")
    parser.add_argument("--scale", choices=sorted(SCALES), default="default", help="default or full")
    parser.add_argument("--runtime", choices=sorted(RUNTIMES), default="both", help="what to run (default both)")
    parser.add_argument("--contacts", type=positive_int, help="override the scale's contacts")
    parser.add_argument("--history-events", type=positive_int, help="override the scale's past events")
    parser.add_argument("--live-events", type=positive_int, help="override the scale's live events")
    parser.add_argument(
        "--kafka-contacts",
        type=positive_int,
        help=f"Kafka runtime contacts, past and live events scaled alike (default scale: {DEFAULT_KAFKA_CONTACTS:,}; "
        "full: the full scale)",
    )
    parser.add_argument("--kafka-workers", type=positive_int, default=1, help="Kafka processor workers (default 1)")
    parser.add_argument(
        "--standing-segments",
        dest="standing",
        choices=STANDING,
        default="live",
        help="live (default): the 19 segments exist before the contacts are created; backfill: they are created "
        "after and backfilled over the contacts and their history (about 19x the (a) time)",
    )
    parser.add_argument("--probes", type=positive_int, default=200, help="latency probes (default 200)")
    parser.add_argument("--clients", type=positive_int, default=4, help="concurrent load clients (default 4)")
    parser.add_argument("--batch-size", type=positive_int, default=500, help="events per /v1/batch (default 500)")
    parser.add_argument("--seed", type=int, default=42, help="random seed for the generated data")
    parser.add_argument("--json", dest="as_json", action="store_true", help="print the results as JSON")
    return parser


def parse_args(argv: list[str] | None = None) -> Config:
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.batch_size > MAX_BATCH_EVENTS:
        parser.error(f"--batch-size is limited to {MAX_BATCH_EVENTS} events by the server")
    contacts, history, live = SCALES[args.scale]
    scale = Scale(args.contacts or contacts, args.history_events or history, args.live_events or live)
    kafka_contacts = args.kafka_contacts or (DEFAULT_KAFKA_CONTACTS if args.scale == "default" else scale.contacts)
    kafka_contacts = min(kafka_contacts, scale.contacts) if args.kafka_contacts is None else kafka_contacts
    ratio = kafka_contacts / scale.contacts
    kafka_scale = Scale(
        kafka_contacts,
        max(1, round(scale.history_events * ratio)),
        max(1, round(scale.live_events * ratio)),
        reduced=kafka_contacts < scale.contacts,
    )
    return Config(
        scale_name=args.scale,
        runtimes=RUNTIMES[args.runtime],
        scale=scale,
        kafka_scale=kafka_scale,
        kafka_workers=args.kafka_workers,
        standing=args.standing,
        probes=args.probes,
        clients=args.clients,
        batch_size=args.batch_size,
        seed=args.seed,
        as_json=args.as_json,
    )


# -- generated data -----------------------------------------------------------------------------


def weighted(rng: random.Random, choices: list[tuple[str, int]]) -> str:
    names, weights = zip(*choices, strict=True)
    return str(rng.choices(names, weights)[0])


def contact_traits(rng: random.Random, index: int) -> dict[str, Any]:
    user_id = contact_id(index)
    return {
        "email": f"{user_id}@{rng.choice(DOMAINS)}",
        "country": weighted(rng, COUNTRIES),
        "plan": weighted(rng, PLANS),
        "age": rng.randint(18, 75),
        "subscriptions": {
            "email": "subscribed" if rng.random() < 0.8 else "unsubscribed",
            "sms": "subscribed" if rng.random() < 0.3 else "unsubscribed",
        },
    }


def amount(rng: random.Random) -> float:
    """The distribution of the history: 5 + 890 * u^4 (median ~60, always below 1,000)."""
    return round(5 + 890 * rng.random() ** 4, 2)


def track_properties(rng: random.Random, name: str) -> dict[str, Any]:
    sku = f"SKU-{rng.randrange(5000):04d}"
    price = round(rng.uniform(2, 300), 2)
    if name == "purchase":
        return {
            "amount": amount(rng),
            "currency": rng.choice(CURRENCIES),
            "items": rng.randint(1, 5),
            "category": rng.choice(CATEGORIES),
        }
    if name == "refund":
        return {"amount": amount(rng), "reason": rng.choice(["damaged", "late", "wrong_size", "changed_mind"])}
    if name == "page_view":
        return {"path": rng.choice(PAGES)}
    if name == "product_viewed":
        return {"sku": sku, "category": rng.choice(CATEGORIES), "price": price}
    if name == "add_to_cart":
        return {"sku": sku, "price": price, "quantity": rng.randint(1, 3)}
    if name == "login":
        return {"method": rng.choice(LOGIN_METHODS)}
    return {"query": rng.choice(QUERIES)}


def batches(events: list[dict[str, Any]], batch_size: int) -> list[bytes]:
    return [orjson.dumps({"batch": events[i : i + batch_size]}) for i in range(0, len(events), batch_size)]


def identify_bodies(contacts: int, batch_size: int, seed: int, run_id: str) -> list[bytes]:
    rng = random.Random(seed)
    events = [
        {
            "type": "identify",
            "userId": contact_id(index),
            "traits": contact_traits(rng, index),
            "messageId": f"seg-contact-{run_id}-{index}",
        }
        for index in range(contacts)
    ]
    return batches(events, batch_size)


def live_bodies(scale: Scale, batch_size: int, seed: int, run_id: str) -> list[bytes]:
    """90% track events (the history's mix, over the contacts), 10% identify changing a trait; no timestamps."""
    rng = random.Random(seed + 1)
    names, weights = zip(*EVENT_MIX, strict=True)
    events: list[dict[str, Any]] = []
    for index in range(scale.live_events):
        user_id = contact_id(min(scale.contacts - 1, int(scale.contacts * rng.random() ** 1.25)))
        message_id = f"seg-live-{run_id}-{index}"
        if rng.random() < 0.10:
            traits: dict[str, Any] = rng.choice(
                [
                    {"plan": weighted(rng, PLANS)},
                    {"country": weighted(rng, COUNTRIES)},
                    {"subscriptions": {"email": rng.choice(["subscribed", "unsubscribed"])}},
                    {"age": rng.randint(18, 75)},
                ]
            )
            events.append({"type": "identify", "userId": user_id, "traits": traits, "messageId": message_id})
            continue
        name = rng.choices(names, weights)[0]
        properties = track_properties(rng, name)
        events.append(
            {"type": "track", "userId": user_id, "event": name, "properties": properties, "messageId": message_id}
        )
    return batches(events, batch_size)


# -- segments -----------------------------------------------------------------------------------


def event(name: str, **conditions: Any) -> dict[str, Any]:
    return {"type": "event", "name": name, **conditions}


def attribute(path: str, op: str, value: Any = None, **extra: Any) -> dict[str, Any]:
    rule = {"type": "attribute", "path": path, "op": op, **extra}
    if value is not None:
        rule["value"] = value
    return rule


def days(last: int) -> dict[str, Any]:
    return {"last": last, "unit": "day"}


WHALE = "Whales today (probe segment)"


def segment_rules(list_id: str, repeat_buyers_id: str | None) -> list[tuple[str, dict[str, Any]]]:
    """The 19 standing segments; ``repeat_buyers_id`` is the id of "Repeat buyers 30d" once it exists (the
    segment-reference rule needs it, so it comes last)."""
    rules: list[tuple[str, dict[str, Any]]] = [
        ("France", attribute("country", "eq", "FR")),
        ("Paid plans", attribute("plan", "in", ["pro", "enterprise"])),
        ("Age 25-34", attribute("age", "between", [25, 34])),
        ("Gmail addresses", attribute("email", "ends_with", "@gmail.com")),
        ("Outside DE/FR/ES/IT", attribute("country", "not_in", ["DE", "FR", "ES", "IT"])),
        ("Email subscribers", {"type": "subscription", "channel": "email", "state": "subscribed"}),
        ("Repeat buyers 30d", event("purchase", count={"op": "gte", "value": 2}, within=days(30))),
        (
            "High lifetime value",
            event("purchase", aggregate={"fn": "sum", "property": "amount", "op": "gte", "value": 500}),
        ),
        (
            "Dormant (no login for 30 days)",
            event("login", last_occurred={"op": "more_than", "value": 30, "unit": "day"}),
        ),
        (
            "Pricing page 2+ in 14d",
            event(
                "page_view",
                where=[{"path": "path", "op": "eq", "value": "/pricing"}],
                count={"op": "gte", "value": 2},
                within=days(14),
            ),
        ),
        ("Never refunded", {"type": "none", "rules": [event("refund")]}),
        (
            "Cart abandoners 7d",
            {
                "type": "all",
                "rules": [
                    event("add_to_cart", within=days(7)),
                    {"type": "none", "rules": [event("purchase", within=days(7))]},
                ],
            },
        ),
        (
            "Enterprise or big ticket",
            {
                "type": "any",
                "rules": [
                    attribute("plan", "eq", "enterprise"),
                    event("purchase", aggregate={"fn": "max", "property": "amount", "op": "gte", "value": 600}),
                ],
            },
        ),
        (
            "EUR shoppers avg >= 50",
            event(
                "purchase",
                where=[{"path": "currency", "op": "eq", "value": "EUR"}],
                aggregate={"fn": "avg", "property": "amount", "op": "gte", "value": 50},
            ),
        ),
        ("VIP list", {"type": "list", "list_id": list_id}),
        ("Holdout 10%", {"type": "random", "percent": 10, "seed": "holdout"}),
        ("Everyone", {"type": "everyone"}),
        (
            WHALE,
            event("purchase", where=[{"path": "amount", "op": "gte", "value": WHALE_AMOUNT}], within=days(1)),
        ),
    ]
    if repeat_buyers_id is not None:
        rules.append(
            (
                "Engaged subscribers",
                {
                    "type": "all",
                    "rules": [
                        {"type": "segment", "segment_id": repeat_buyers_id},
                        {"type": "subscription", "channel": "email", "state": "subscribed"},
                    ],
                },
            )
        )
    return rules


NEW_SEGMENT = (
    "US/CA electronics shoppers 30d",
    {
        "type": "all",
        "rules": [
            attribute("country", "in", ["US", "CA"]),
            {
                "type": "any",
                "rules": [
                    event(
                        "purchase", where=[{"path": "category", "op": "eq", "value": "electronics"}], within=days(30)
                    ),
                    event(
                        "product_viewed",
                        where=[{"path": "category", "op": "eq", "value": "electronics"}],
                        count={"op": "gte", "value": 3},
                        within=days(30),
                    ),
                ],
            },
        ],
    },
)


def validated(rule: dict[str, Any]) -> dict[str, Any]:
    """The rule, after ``spotzee.schemas.rules.SegmentRuleAdapter`` accepted it (a typo fails before any run)."""
    SegmentRuleAdapter.validate_python(rule)
    return rule


def check_rules() -> None:
    for _, rule in [*segment_rules("lst_x", "seg_x"), NEW_SEGMENT]:
        validated(rule)
    if len(segment_rules("lst_x", "seg_x")) != 19:
        raise BenchError("the benchmark defines 19 standing segments")


# -- HTTP -----------------------------------------------------------------------------------------


@contextlib.asynccontextmanager
async def open_session(stack: Stack, clients: int, timeout: float) -> AsyncIterator[Session]:
    keys = json.loads((Path(stack_data_dir(stack)) / "keys.json").read_text())
    json_headers = {"content-type": "application/json"}
    limits = httpx.Limits(max_connections=clients + 2, max_keepalive_connections=clients + 2)
    async with (
        httpx.AsyncClient(
            base_url=stack.url,
            auth=(keys["write_key"], ""),
            headers=json_headers,
            limits=limits,
            timeout=REQUEST_TIMEOUT_S,
        ) as ingest,
        httpx.AsyncClient(
            base_url=stack.url,
            headers={**json_headers, "Authorization": f"Bearer {keys['secret_key']}"},
            timeout=REQUEST_TIMEOUT_S,
        ) as api,
        httpx.AsyncClient(
            base_url=stack.url,
            headers={**json_headers, "Authorization": f"Bearer {keys['admin_key']}"},
            timeout=REQUEST_TIMEOUT_S,
        ) as admin,
    ):
        yield Session(stack, keys["project_id"], ingest, api, admin, clients, timeout)


def stack_data_dir(stack: Stack) -> Path:
    """The API's data dir (where keys.json is): the API process's working directory is its parent."""
    return stack.api.log_path.parent / "data"


async def request(client: httpx.AsyncClient, method: str, path: str, **kwargs: Any) -> Any:
    """One admin API call; its JSON, or a BenchError on anything but 2xx."""
    try:
        response = await client.request(method, path, **kwargs)
    except httpx.HTTPError as exc:
        raise BenchError(f"{method} {path} failed: {exc!r}") from exc
    if not response.is_success:
        raise BenchError(f"{method} {path} answered {response.status_code}: {response.text[:500]}")
    return response.json() if response.content else None


async def send(session: Session, bodies: list[bytes]) -> tuple[float, float]:
    """Send every body from ``session.clients`` clients; (first send, last 2xx) on perf_counter."""
    started = time.perf_counter()
    try:
        stats = await send_all(session.ingest, bodies, session.clients)
    except* BenchError as errors:
        raise errors.exceptions[0] from None
    session.retries_429 += stats.retries_429
    return started, stats.last_ok


async def wait_until(session: Session, what: str, check: Callable[[], Any], timeout: float | None = None) -> float:
    """Poll the async ``check`` until it is true; returns when it was; BenchError after ``timeout``
    (default ``session.timeout``)."""
    timeout = timeout or session.timeout
    deadline = time.perf_counter() + timeout
    while True:
        if await check():
            return time.perf_counter()
        if time.perf_counter() > deadline:
            raise BenchError(f"FAIL: {what} not within {timeout:.0f} s")
        session.stack.check_alive()
        await asyncio.sleep(POLL_S)


async def wait_no_lag(session: Session, after: float) -> float:
    """When ``GET /health`` first said ``processing_lag`` 0 (after ``after``) and kept saying it for
    LAG_SETTLE_S: 0 for the embedded runtime (exact), KAFKA_LAG_SETTLE_S for Kafka (its API polls the
    consumer group's lag every second, so a single 0 may be stale)."""
    settle = KAFKA_LAG_SETTLE_S if session.stack.workers else 0.0
    deadline = time.perf_counter() + session.timeout
    first_zero: float | None = None
    while True:
        asked = time.perf_counter()
        health = (await session.ingest.get("/health")).json()
        if asked >= after and int(health["processing_lag"]) == 0:
            first_zero = asked if first_zero is None else first_zero
            if time.perf_counter() - first_zero >= settle:
                return first_zero
        else:
            first_zero = None
        if time.perf_counter() > deadline:
            raise BenchError(f"FAIL: processing lag not 0 within {session.timeout:.0f} s")
        session.stack.check_alive()
        await asyncio.sleep(POLL_S)


async def landed(session: Session, prefix: str) -> int:
    query = f"SELECT uniqExact(message_id) FROM events WHERE startsWith(message_id, '{prefix}')"
    return int((await sql(session.admin, query))[0][0])


# -- phases ---------------------------------------------------------------------------------------


async def create_contacts(session: Session, scale: Scale, config: Config, result: Result) -> None:
    bodies = identify_bodies(scale.contacts, config.batch_size, config.seed, session.run_id)
    progress(f"{session.stack.name}: creating {scale.contacts:,} contacts (identify, {len(bodies):,} batches)")
    started, last_ok = await send(session, bodies)
    finished = await wait_no_lag(session, last_ok)
    result.identify_per_s = scale.contacts / (finished - started)
    progress(f"{session.stack.name}: contacts processed at {result.identify_per_s:,.0f}/s; waiting for ClickHouse")
    prefix = f"seg-contact-{session.run_id}-"

    async def done() -> bool:
        return await landed(session, prefix) >= scale.contacts

    await wait_until(session, "every identify in ClickHouse", done)  # backfills read ClickHouse: let the sink finish


async def create_vip_list(session: Session) -> str:
    return str((await request(session.api, "POST", "/api/v1/lists", json={"name": "VIP"}))["id"])


async def import_vip_list(session: Session, list_id: str, scale: Scale, seed: int) -> None:
    """5% of the contacts, imported from CSV (id plus a ``tier`` attribute); waits until the list holds them."""
    rng = random.Random(seed + 2)
    members = sorted(rng.sample(range(scale.contacts), max(1, int(scale.contacts * VIP_SHARE))))
    for start in range(0, len(members), MAX_IMPORT_ROWS):
        rows = "".join(f"{contact_id(index)},gold\r\n" for index in members[start : start + MAX_IMPORT_ROWS])
        answer = await request(
            session.api,
            "POST",
            f"/api/v1/lists/{list_id}/import",
            content=("id,tier\r\n" + rows).encode(),
            headers={"content-type": "text/csv"},
        )
        if answer["rejected"]:
            raise BenchError(f"list import rejected rows: {answer['errors'][:3]}")

    async def imported() -> bool:
        return int((await request(session.api, "GET", f"/api/v1/lists/{list_id}"))["count"]) >= len(members)

    await wait_until(session, "the VIP list import", imported)
    progress(f"{session.stack.name}: VIP list {list_id} holds {len(members):,} contacts")


async def create_segment(session: Session, name: str, rule: dict[str, Any]) -> str:
    created = await request(session.api, "POST", "/api/v1/segments", json={"name": name, "rule": validated(rule)})
    return str(created["id"])


async def segment_statuses(session: Session) -> dict[str, str]:
    items = (await request(session.api, "GET", "/api/v1/segments"))["items"]
    return {str(item["id"]): str(item["status"]) for item in items}


async def create_standing_segments(
    session: Session, list_id: str, result: Result, *, contacts_exist: bool
) -> dict[str, str]:
    """The 19 segments, created back to back; waits until all are ready. Returns name -> id."""
    progress(f"{session.stack.name}: creating 19 segments")
    started = time.perf_counter()
    ids: dict[str, str] = {}
    for name, rule in segment_rules(list_id, None):
        ids[name] = await create_segment(session, name, rule)
    name, rule = segment_rules(list_id, ids["Repeat buyers 30d"])[-1]
    ids[name] = await create_segment(session, name, rule)

    async def all_ready() -> bool:
        statuses = await segment_statuses(session)
        return all(statuses.get(segment_id) == "ready" for segment_id in ids.values())

    builds = session.timeout * (len(ids) if contacts_exist else 1)
    result.initial_build_s = await wait_until(session, "the 19 segments ready", all_ready, builds) - started
    progress(f"{session.stack.name}: 19 segments ready after {result.initial_build_s:.1f} s")
    return ids


async def backfill_new_segment(session: Session, result: Result) -> str:
    name, rule = NEW_SEGMENT
    progress(f"{session.stack.name}: (a) creating a 20th segment, {name!r}")
    procs = [session.stack.api, *session.stack.workers]
    cpu_before = sum(proc.cpu_s() for proc in procs)
    started = time.perf_counter()
    segment_id = await create_segment(session, name, rule)
    deadline = started + session.timeout
    while True:
        segment = await request(session.api, "GET", f"/api/v1/segments/{segment_id}")
        if segment["status"] == "ready":
            break
        if time.perf_counter() > deadline:
            raise BenchError(f"FAIL: the new segment was not ready within {session.timeout:.0f} s")
        session.stack.check_alive()
        await asyncio.sleep(BACKFILL_POLL_S)
    result.backfill_s = time.perf_counter() - started
    result.backfill_cpu_s = sum(proc.cpu_s() for proc in procs) - cpu_before
    result.backfill_members = int((await request(session.api, "GET", f"/api/v1/segments/{segment_id}/count"))["count"])
    progress(
        f"{session.stack.name}: (a) ready after {result.backfill_s:.2f} s ({result.backfill_cpu_s:.2f} CPU s of the "
        f"Spotzee processes), {result.backfill_members:,} members"
    )
    progress(f"{session.stack.name}: (a) {build_log_line(session.stack, segment_id)}")
    return segment_id


def build_log_line(stack: Stack, segment_id: str) -> str:
    """What the build logged when the segment became ready (how many contacts were seeded one by one,
    the phases' durations), from the log of the process that ran it (the API's)."""
    try:
        lines = stack.api.log_path.read_text(errors="replace").splitlines()
    except OSError:
        return "(no build log)"
    return next((line for line in reversed(lines) if f"segment {segment_id} v1 ready" in line), "(no build log line)")


async def segment_count(session: Session, segment_id: str) -> int:
    return int((await request(session.api, "GET", f"/api/v1/segments/{segment_id}/count"))["count"])


async def membership_changes(session: Session) -> int:
    query = "SELECT count() FROM segment_changes WHERE NOT startsWith(cause, 'backfill:')"
    return int((await sql(session.admin, query))[0][0])


async def live_stream(session: Session, scale: Scale, config: Config, whale_id: str, result: Result) -> None:
    bodies = live_bodies(scale, config.batch_size, config.seed, session.run_id)
    before = await segment_count(session, whale_id)
    if before:
        raise BenchError(f"the probe segment has {before} members before the live stream; expected none")
    changes_before = await membership_changes(session)
    progress(f"{session.stack.name}: (b) sending {scale.live_events:,} live events from {session.clients} clients")
    started, last_ok = await send(session, bodies)
    result.live_accepted_per_s = scale.live_events / (last_ok - started)
    markers = [
        {
            "type": "track",
            "userId": f"marker-{session.run_id}-{index}",
            "event": "purchase",
            "properties": {"amount": PROBE_AMOUNT, "currency": "USD", "items": 1, "category": "electronics"},
            "messageId": f"seg-marker-{session.run_id}-{index}",
        }
        for index in range(MARKERS)
    ]
    response = await post(session.ingest, "/v1/batch", orjson.dumps({"batch": markers}))
    if not response.is_success:
        raise BenchError(f"the marker batch answered {response.status_code}: {response.text[:500]}")
    progress(f"{session.stack.name}: (b) all accepted after {last_ok - started:.1f} s; waiting for the markers")

    async def processed() -> bool:
        return await segment_count(session, whale_id) >= MARKERS

    finished = await wait_until(session, "the live events processed (markers in the probe segment)", processed)
    result.live_processed_per_s = scale.live_events / (finished - started)
    progress(f"{session.stack.name}: (b) processed at {result.live_processed_per_s:,.0f} events/s")

    async def sunk() -> bool:
        return await landed(session, f"seg-marker-{session.run_id}-") >= MARKERS

    await wait_until(session, "the markers in ClickHouse", sunk)
    result.membership_changes = await membership_changes(session) - changes_before


async def probe_latencies(session: Session, scale: Scale, config: Config, whale_id: str) -> list[float]:
    """One probe at a time: a purchase of PROBE_AMOUNT, then poll the contact's segments until it is in."""
    rng = random.Random(config.seed + 3)
    probes = [contact_id(index) for index in rng.sample(range(scale.contacts), min(config.probes, scale.contacts))]
    progress(f"{session.stack.name}: (c) {len(probes)} latency probes, one at a time")
    latencies: list[float] = []
    for index, user_id in enumerate(probes):
        body = {
            "userId": user_id,
            "event": "purchase",
            "properties": {"amount": PROBE_AMOUNT, "currency": "EUR", "items": 1, "category": "home"},
            "messageId": f"seg-probe-{session.run_id}-{index}",
        }
        response = await post(session.ingest, "/v1/track", orjson.dumps(body))
        if not response.is_success:
            raise BenchError(f"POST /v1/track (probe) answered {response.status_code}: {response.text[:500]}")
        acked = time.perf_counter()
        while True:
            items = (await request(session.api, "GET", f"/api/v1/contacts/{user_id}/segments"))["items"]
            if any(item["id"] == whale_id for item in items):
                latencies.append((time.perf_counter() - acked) * 1000)
                break
            if time.perf_counter() - acked > PROBE_TIMEOUT_S:
                raise BenchError(
                    f"FAIL: probe {user_id} not in the probe segment {PROBE_TIMEOUT_S:.0f} s after its 2xx"
                )
            await asyncio.sleep(PROBE_POLL_S)
        await asyncio.sleep(PROBE_GAP_S)
    ids = ", ".join(f"'{user_id}'" for user_id in probes)
    query = (
        f"SELECT uniqExact(contact_id) FROM segment_changes WHERE segment_id = '{whale_id}' "
        f"AND change = 'entered' AND contact_id IN ({ids})"
    )

    async def recorded() -> bool:
        return int((await sql(session.admin, query))[0][0]) >= len(probes)

    await wait_until(session, "an 'entered' row in segment_changes for every probe", recorded, PROBE_TIMEOUT_S)
    return latencies


async def run_phases(stack: Stack, scale: Scale, config: Config, result: Result) -> None:
    async with open_session(stack, config.clients, max(MIN_WAIT_S, scale.contacts / SLOWEST_PER_S)) as session:
        list_id = await create_vip_list(session)
        if config.standing == "live":  # built while there are no contacts yet: nothing to backfill
            ids = await create_standing_segments(session, list_id, result, contacts_exist=False)
            await create_contacts(session, scale, config, result)
            await import_vip_list(session, list_id, scale, config.seed)
        else:  # backfilled over the contacts and their history, like the 20th
            await create_contacts(session, scale, config, result)
            await import_vip_list(session, list_id, scale, config.seed)
            ids = await create_standing_segments(session, list_id, result, contacts_exist=True)
        new_id = await backfill_new_segment(session, result)
        ids[NEW_SEGMENT[0]] = new_id
        await live_stream(session, scale, config, ids[WHALE], result)
        latencies = await probe_latencies(session, scale, config, ids[WHALE])
        result.latency_p50_ms = percentile(latencies, 50)
        result.latency_p99_ms = percentile(latencies, 99)
        result.latency_max_ms = max(latencies)
        result.probes = len(latencies)
        result.retries_429 = session.retries_429
        for name, segment_id in ids.items():
            result.segment_members[name] = await segment_count(session, segment_id)
    progress(f"{stack.name}: members per segment: {json.dumps(result.segment_members)}")
    result.failed_checks = membership_checks(result.segment_members, scale)
    for failed in result.failed_checks:
        progress(f"{stack.name}: WARN membership check failed: {failed}")
    result.api_peak_rss_mib = stack.api.peak_rss_mib()
    result.worker_peak_rss_mib = tuple(worker.peak_rss_mib() for worker in stack.workers)


def membership_checks(members: dict[str, int], scale: Scale) -> list[str]:
    """Segments whose size is known exactly or nearly: every contact (the markers too) is in "Everyone"; 5% are in
    the VIP list; "Holdout 10%" holds about 10%. The table counts failures; each is printed on stderr."""
    everyone = scale.contacts + MARKERS
    vip = max(1, int(scale.contacts * VIP_SHARE))
    failed = []
    if members["Everyone"] != everyone:
        failed.append(f"'Everyone' has {members['Everyone']:,} members, expected {everyone:,} (contacts + markers)")
    if members["VIP list"] != vip:
        failed.append(f"'VIP list' has {members['VIP list']:,} members, expected {vip:,}")
    low, high = 0.1 * everyone - 4 * math.sqrt(0.09 * everyone), 0.1 * everyone + 4 * math.sqrt(0.09 * everyone)
    if not low <= members["Holdout 10%"] <= high:
        failed.append(f"'Holdout 10%' has {members['Holdout 10%']:,} members, expected {low:,.0f} .. {high:,.0f}")
    return failed


# -- runtimes -------------------------------------------------------------------------------------


def prepare_history(data_dir: Path, runtime: str, scale: Scale, seed: int, env: dict[str, str] | None) -> float:
    """``bench_history`` in a subprocess on ``data_dir``: the project, keys.json and the past events."""
    progress(f"{runtime}: inserting {scale.history_events:,} past events for {scale.contacts:,} contacts")
    command = [sys.executable, str(BENCH_DIR / "bench_history.py"), str(data_dir), "--runtime", runtime]
    command += ["--events", str(scale.history_events), "--contacts", str(scale.contacts), "--seed", str(seed)]
    answer = json.loads(run_command(command, env).strip().splitlines()[-1])
    if int(answer["events"]) != scale.history_events:
        raise BenchError(f"ClickHouse holds {answer['events']} past events, expected {scale.history_events}")
    progress(f"{runtime}: past events inserted in {answer['insert_s']:.1f} s")
    return float(answer["insert_s"])


def new_result(name: str, scale: Scale) -> Result:
    return Result(name, scale.contacts, scale.history_events, scale.live_events, scale.reduced)


def run_embedded(config: Config, root: Path) -> Result:
    started = time.perf_counter()
    scale = config.scale
    result = new_result("embedded", scale)
    result.history_insert_s = prepare_history(root / "data", "embedded", scale, config.seed, None)
    with embedded_stack(root) as stack:
        asyncio.run(run_phases(stack, scale, config, result))
    result.wall_s = time.perf_counter() - started
    return result


def run_kafka(config: Config, root: Path) -> Result:
    setup = KafkaSetup(config, root)
    try:
        setup.prepare()
        return setup.run()
    finally:
        setup.close()


class KafkaSetup:
    """The Kafka runtime's stack (broker, topics, history, API and workers up, group Stable), prepared apart from
    its phases: with both runtimes, in a thread while the embedded runtime runs -- nothing of that preparation is
    measured -- and the phases run after the embedded runtime has stopped, alone on the machine."""

    def __init__(self, config: Config, root: Path) -> None:
        self.config = config
        self.root = root
        self.result = new_result(kafka_name(config.kafka_workers), config.kafka_scale)
        self.exits = contextlib.ExitStack()
        self.stack: Stack | None = None
        self.error: BaseException | None = None
        self.prepared_s = math.nan
        self.thread: threading.Thread | None = None

    def prepare(self) -> None:
        started = time.perf_counter()
        scale, config = self.config.kafka_scale, self.config

        def history(env: dict[str, str]) -> None:
            self.result.history_insert_s = prepare_history(self.root / "data", "kafka", scale, config.seed, env)

        try:
            bootstrap, own_broker = self.exits.enter_context(kafka_broker(self.root))
            stack = kafka_stack(self.root, bootstrap, config.kafka_workers, own_broker=own_broker, prepare=history)
            self.stack = self.exits.enter_context(stack)
            progress(f"{self.stack.name}: stack ready")
        except BaseException as exc:  # re-raised by run() in the main thread
            self.error = exc
        finally:
            self.prepared_s = time.perf_counter() - started

    def start(self) -> None:
        """``prepare`` in a thread (see the class docstring)."""
        self.thread = threading.Thread(target=self.prepare, name="kafka-setup", daemon=True)
        self.thread.start()

    def run(self) -> Result:
        """The phases, once the stack is ready; wall time = preparation + phases (the overlap is not counted)."""
        if self.thread is not None:
            self.thread.join()
        if self.error is not None:
            raise self.error
        assert self.stack is not None
        started = time.perf_counter()
        asyncio.run(run_phases(self.stack, self.config.kafka_scale, self.config, self.result))
        self.result.wall_s = self.prepared_s + time.perf_counter() - started
        return self.result

    def close(self) -> None:
        if self.thread is not None:
            self.thread.join()
        self.exits.close()


def run(config: Config) -> list[Result]:
    root = Path(tempfile.mkdtemp(prefix="spotzee-bench-segments-"))
    kafka: KafkaSetup | None = None
    try:
        results: list[Result] = []
        if "embedded" in config.runtimes and "kafka" in config.runtimes:
            kafka = KafkaSetup(config, root / "kafka")
            kafka.start()  # prepared while the embedded runtime runs; measured after it
        if "embedded" in config.runtimes:
            results.append(run_embedded(config, root / "embedded"))
        if kafka is not None:
            results.append(kafka.run())
        elif "kafka" in config.runtimes:
            results.append(run_kafka(config, root / "kafka"))
        return results
    finally:
        if kafka is not None:
            kafka.close()
        shutil.rmtree(root, ignore_errors=True)


# -- report ---------------------------------------------------------------------------------------


def number(value: float, decimals: int = 0) -> str:
    return "-" if math.isnan(value) else f"{value:,.{decimals}f}"


def column_name(result: Result) -> str:
    return f"{result.configuration} (reduced scale)" if result.reduced else result.configuration


def table_rows(results: list[Result]) -> list[tuple[str, list[str]]]:
    def row(name: str, cell: Callable[[Result], str]) -> tuple[str, list[str]]:
        return name, [cell(result) for result in results]

    return [
        row("contacts", lambda r: f"{r.contacts:,}"),
        row("past events (ClickHouse)", lambda r: f"{r.history_events:,}"),
        row("live events", lambda r: f"{r.live_events:,}"),
        row("setup: 19 segments built together, s", lambda r: number(r.initial_build_s, 1)),
        row("setup: identify/s processed (contacts created)", lambda r: number(r.identify_per_s)),
        row("(a) backfill of a new (20th) segment, s", lambda r: number(r.backfill_s, 2)),
        row("(a) CPU s of the Spotzee processes in that backfill", lambda r: number(r.backfill_cpu_s, 2)),
        row("(a) contacts evaluated/s in that backfill", lambda r: number(r.contacts / r.backfill_s)),
        row("(a) members of the new segment", lambda r: f"{r.backfill_members:,}"),
        row("(b) live events/s accepted", lambda r: number(r.live_accepted_per_s)),
        row("(b) live events/s processed, 20 segments", lambda r: number(r.live_processed_per_s)),
        row("(b) membership changes during (b)", lambda r: f"{r.membership_changes:,}"),
        row("(c) event -> membership p50 ms", lambda r: number(r.latency_p50_ms)),
        row("(c) event -> membership p99 ms", lambda r: number(r.latency_p99_ms)),
        row("(c) probes", lambda r: str(r.probes)),
        row("peak RSS MiB, API / server", lambda r: number(r.api_peak_rss_mib)),
        row(
            "peak RSS MiB, each worker",
            lambda r: " / ".join(number(v) for v in r.worker_peak_rss_mib) or "- (in-process)",
        ),
        row("429 retries", lambda r: str(r.retries_429)),
        row("membership checks failed (stderr)", lambda r: str(len(r.failed_checks))),
        row("wall time of the runtime, s", lambda r: number(r.wall_s)),
    ]


def format_table(results: list[Result]) -> str:
    header = ("metric", [column_name(result) for result in results])
    rows = [header, *table_rows(results)]
    names = max(len(name) for name, _ in rows)
    widths = [max(len(cells[index]) for _, cells in rows) for index in range(len(results))]

    def line(name: str, cells: list[str]) -> str:
        return "  ".join([f"{name:<{names}}", *(f"{cell:>{width}}" for cell, width in zip(cells, widths, strict=True))])

    separator = line("-" * names, ["-" * width for width in widths])
    return "\n".join([line(*header), separator, *(line(*row) for row in rows[1:])])


def scale_line(config: Config, results: list[Result]) -> str:
    text = f"scale: {config.scale_name}; standing segments: {config.standing}"
    for result in results:
        if result.reduced:
            text += (
                f"; {result.configuration} at a reduced scale ({result.contacts:,} contacts, "
                f"{result.history_events:,} past and {result.live_events:,} live events; --kafka-contacts)"
            )
    return text


def results_json(config: Config, results: list[Result], wall_s: float) -> str:
    def rounded(value: object) -> object:
        if isinstance(value, float):
            return None if math.isnan(value) else round(value, 2)
        if isinstance(value, tuple | list):
            return [rounded(item) for item in value]
        return value

    data = [{key: rounded(value) for key, value in asdict(result).items()} for result in results]
    header = {"scale": config.scale_name, "standing_segments": config.standing}
    return json.dumps({**header, "wall_s": round(wall_s, 1), "results": data}, indent=2)


def interrupt(signum: int, frame: object) -> None:
    raise KeyboardInterrupt


def main(argv: list[str] | None = None) -> int:
    config = parse_args(argv)
    signal.signal(signal.SIGTERM, interrupt)  # stop what was started, as on Ctrl-C
    wall = time.perf_counter()
    try:
        check_rules()
        results = run(config)
    except BenchError as exc:
        print(str(exc) if str(exc).startswith("FAIL") else f"FAIL: {exc}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print("FAIL: interrupted (everything started was stopped)", file=sys.stderr)
        return 130
    wall_s = time.perf_counter() - wall
    if config.as_json:
        print(results_json(config, results, wall_s))
    else:
        print(scale_line(config, results))
        print(format_table(results))
        print(f"total wall time: {wall_s:.1f} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
