"""Ingestion benchmark: a real ``spotzee up`` server, driven over HTTP on 127.0.0.1.

What it does, in order:

1. Starts ``python -m spotzee up`` as a subprocess on a fresh temporary data directory and a free
   port, waits for ``GET /health`` to answer 200, and reads the write and admin keys from
   ``keys.json``.
2. Builds N Segment-spec events up front (so generating them costs nothing during the run): a
   deterministic mix of ``track`` (purchase with an amount, product_viewed, add_to_cart, ...),
   ``identify`` (email, plan, country) and ``page`` calls over ``--users`` distinct users, each
   with a unique ``messageId``. They are serialised into ``POST /v1/batch`` bodies of B events.
3. C concurrent clients (one ``httpx.AsyncClient``, C connections, HTTP Basic with the write key)
   take batches from a shared queue and post them. A 429 is honoured (sleep ``Retry-After``,
   resend the same batch, count a retry); any other non-2xx or a transport error aborts the run.

What it measures:

- **events/s accepted**: N / (time of the last 2xx - time of the first send).
- **batch latency** p50 / p99 / max: wall time of each ``POST /v1/batch`` that returned 2xx (ms).
- **events/s landed in ClickHouse**: after the last 2xx, ``SELECT count() FROM events`` is polled
  through ``POST /api/v1/sql`` every ~100 ms until it equals N (timeout 300 s); the rate is
  N / (time the count reached N - time of the first send).
- **exactly-once**: the count is checked once more after a short settle; anything but N prints a
  FAIL line and the script exits non-zero.
- **server peak RSS**: ``VmHWM`` from ``/proc/<pid>/status`` of the server, just before it is stopped.

The server is then stopped with SIGTERM (SIGKILL after 60 s) and the temporary directory deleted.
Progress goes to stderr; the result table (or ``--json``) goes to stdout.
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
import socket
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import httpx
import orjson

HOST = "127.0.0.1"
HEALTH_TIMEOUT_S = 120.0
LAND_TIMEOUT_S = 300.0
POLL_INTERVAL_S = 0.1
SETTLE_S = 1.0
STOP_TIMEOUT_S = 60.0
REQUEST_TIMEOUT_S = 120.0
MAX_BATCH_EVENTS = 2500

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


class BenchError(Exception):
    """A failure that ends the run with a non-zero exit code."""


@dataclass(frozen=True)
class Config:
    events: int
    clients: int
    batch_size: int
    users: int
    seed: int
    as_json: bool


@dataclass
class Server:
    process: subprocess.Popen[bytes]
    root: Path
    url: str
    write_key: str
    admin_key: str

    @property
    def log_path(self) -> Path:
        return self.root / "server.log"


@dataclass
class SendStats:
    latencies_ms: list[float] = field(default_factory=list)
    retries_429: int = 0
    last_ok: float = 0.0


@dataclass(frozen=True)
class Result:
    events: int
    clients: int
    batch_size: int
    accepted_per_s: float
    landed_per_s: float
    latency_p50_ms: float
    latency_p99_ms: float
    latency_max_ms: float
    server_peak_rss_mib: float
    retries_429: int


# -- command line -------------------------------------------------------------------------------


def positive_int(text: str) -> int:
    value = int(text.replace("_", ""))
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be >= 1, got {value}")
    return value


def parse_args(argv: list[str] | None = None) -> Config:
    parser = argparse.ArgumentParser(description="Spotzee ingestion benchmark (see the module docstring).")
    parser.add_argument("--events", type=positive_int, default=100_000, help="events to send (default 100000)")
    parser.add_argument("--clients", type=positive_int, default=8, help="concurrent clients (default 8)")
    parser.add_argument("--batch-size", type=positive_int, default=500, help="events per /v1/batch (default 500)")
    parser.add_argument("--users", type=positive_int, default=50_000, help="distinct userIds (default 50000)")
    parser.add_argument("--seed", type=int, default=42, help="random seed for the generated data")
    parser.add_argument("--json", dest="as_json", action="store_true", help="print the result as JSON")
    args = parser.parse_args(argv)
    if args.batch_size > MAX_BATCH_EVENTS:
        parser.error(f"--batch-size is limited to {MAX_BATCH_EVENTS} events by the server")
    return Config(args.events, args.clients, args.batch_size, args.users, args.seed, args.as_json)


def progress(message: str) -> None:
    print(f"[bench] {message}", file=sys.stderr, flush=True)


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
        event["messageId"] = f"bench-{run_id}-{index}"
        event["timestamp"] = iso(now - timedelta(seconds=rng.uniform(0, 30 * 86400)))
        yield event


def build_batches(config: Config) -> list[bytes]:
    """Every request body, serialised before the clock starts."""
    rng = random.Random(config.seed)
    bodies: list[bytes] = []
    batch: list[dict[str, Any]] = []
    for event in generate_events(config.events, config.users, rng):
        batch.append(event)
        if len(batch) == config.batch_size:
            bodies.append(orjson.dumps({"batch": batch}))
            batch = []
    if batch:
        bodies.append(orjson.dumps({"batch": batch}))
    return bodies


# -- server ---------------------------------------------------------------------------------------


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind((HOST, 0))
        return int(sock.getsockname()[1])


def start_server(root: Path, port: int) -> subprocess.Popen[bytes]:
    """``spotzee up`` on ``root/data``, bound to 127.0.0.1; its output goes to ``root/server.log``."""
    command = [sys.executable, "-m", "spotzee", "up", "--data-dir", str(root / "data"), "--port", str(port)]
    command += ["--host", HOST]
    progress(f"starting: {' '.join(command)}")
    with (root / "server.log").open("wb") as log:
        return subprocess.Popen(command, stdout=log, stderr=subprocess.STDOUT, cwd=root)


def wait_healthy(process: subprocess.Popen[bytes], url: str, log_path: Path) -> None:
    deadline = time.monotonic() + HEALTH_TIMEOUT_S
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise BenchError(f"server exited with code {process.returncode}:\n{log_tail(log_path)}")
        with contextlib.suppress(httpx.HTTPError):
            if httpx.get(f"{url}/health", timeout=5).status_code == 200:
                return
        time.sleep(0.2)
    raise BenchError(f"GET /health did not return 200 within {HEALTH_TIMEOUT_S:.0f} s:\n{log_tail(log_path)}")


def read_keys(data_dir: Path) -> tuple[str, str]:
    keys = json.loads((data_dir / "keys.json").read_text())
    return str(keys["write_key"]), str(keys["admin_key"])


def log_tail(log_path: Path, lines: int = 30) -> str:
    try:
        return "\n".join(log_path.read_text(errors="replace").splitlines()[-lines:])
    except OSError:
        return "(no server log)"


def peak_rss_mib(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    raise BenchError(f"no VmHWM in /proc/{pid}/status")


def stop_server(process: subprocess.Popen[bytes]) -> None:
    if process.poll() is not None:
        return
    process.send_signal(signal.SIGTERM)
    try:
        process.wait(timeout=STOP_TIMEOUT_S)
    except subprocess.TimeoutExpired:
        progress(f"server did not stop within {STOP_TIMEOUT_S:.0f} s of SIGTERM; sending SIGKILL")
        process.kill()
        process.wait()


# -- load -----------------------------------------------------------------------------------------


def retry_after_seconds(response: httpx.Response) -> float:
    try:
        return max(0.0, float(response.headers.get("retry-after", "1")))
    except ValueError:
        return 1.0


async def post_batch(client: httpx.AsyncClient, body: bytes, stats: SendStats) -> None:
    """POST one batch until it is accepted; 429s are waited out and counted."""
    while True:
        started = time.perf_counter()
        try:
            response = await client.post("/v1/batch", content=body)
        except httpx.HTTPError as exc:
            raise BenchError(f"POST /v1/batch failed: {exc!r}") from exc
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


async def client_worker(client: httpx.AsyncClient, queue: asyncio.Queue[bytes], stats: SendStats) -> None:
    while True:
        try:
            body = queue.get_nowait()
        except asyncio.QueueEmpty:
            return
        await post_batch(client, body, stats)


async def send_all(server: Server, bodies: list[bytes], clients: int) -> tuple[float, SendStats]:
    """Send every body from ``clients`` concurrent workers; returns (start time, stats)."""
    queue: asyncio.Queue[bytes] = asyncio.Queue()
    for body in bodies:
        queue.put_nowait(body)
    stats = SendStats()
    limits = httpx.Limits(max_connections=clients, max_keepalive_connections=clients)
    headers = {"content-type": "application/json"}
    async with httpx.AsyncClient(
        base_url=server.url,
        auth=(server.write_key, ""),
        headers=headers,
        limits=limits,
        timeout=REQUEST_TIMEOUT_S,
    ) as client:
        started = time.perf_counter()
        try:
            async with asyncio.TaskGroup() as group:
                for _ in range(clients):
                    group.create_task(client_worker(client, queue, stats))
        except* BenchError as errors:
            raise errors.exceptions[0] from None
    return started, stats


async def count_events(client: httpx.AsyncClient) -> int:
    response = await client.post("/api/v1/sql", json={"query": "SELECT count() FROM events"})
    if response.status_code != 200:
        raise BenchError(f"POST /api/v1/sql answered {response.status_code}: {response.text[:500]}")
    return int(response.json()["rows"][0][0])


async def wait_landed(server: Server, expected: int) -> tuple[float, int]:
    """Poll the events count until it reaches ``expected``; returns (time reached, final count)."""
    headers = {"Authorization": f"Bearer {server.admin_key}"}
    async with httpx.AsyncClient(base_url=server.url, headers=headers, timeout=REQUEST_TIMEOUT_S) as client:
        deadline = time.perf_counter() + LAND_TIMEOUT_S
        count = await count_events(client)
        while count < expected:
            if time.perf_counter() > deadline:
                raise BenchError(f"FAIL: {count} of {expected} events in ClickHouse after {LAND_TIMEOUT_S:.0f} s")
            await asyncio.sleep(POLL_INTERVAL_S)
            count = await count_events(client)
        reached = time.perf_counter()
        await asyncio.sleep(SETTLE_S)
        return reached, await count_events(client)


# -- report ---------------------------------------------------------------------------------------


def percentile(values: list[float], q: float) -> float:
    """Nearest-rank percentile (``q`` in 0..100)."""
    ordered = sorted(values)
    rank = max(1, math.ceil(q / 100 * len(ordered)))
    return ordered[rank - 1]


def table_rows(result: Result) -> list[tuple[str, str]]:
    return [
        ("events", f"{result.events:,}"),
        ("clients", str(result.clients)),
        ("batch size", str(result.batch_size)),
        ("events/s accepted", f"{result.accepted_per_s:,.0f}"),
        ("events/s landed in ClickHouse", f"{result.landed_per_s:,.0f}"),
        ("batch latency p50 ms", f"{result.latency_p50_ms:,.1f}"),
        ("batch latency p99 ms", f"{result.latency_p99_ms:,.1f}"),
        ("batch latency max ms", f"{result.latency_max_ms:,.1f}"),
        ("server peak RSS MiB", f"{result.server_peak_rss_mib:,.1f}"),
        ("429 retries", str(result.retries_429)),
    ]


def format_table(rows: list[tuple[str, str]]) -> str:
    names = max(len("metric"), *(len(name) for name, _ in rows))
    values = max(len("value"), *(len(value) for _, value in rows))
    lines = [f"{'metric':<{names}}  {'value':>{values}}", f"{'-' * names}  {'-' * values}"]
    lines += [f"{name:<{names}}  {value:>{values}}" for name, value in rows]
    return "\n".join(lines)


def result_json(result: Result) -> str:
    data = {key: round(value, 1) if isinstance(value, float) else value for key, value in vars(result).items()}
    return json.dumps(data, indent=2)


# -- run ------------------------------------------------------------------------------------------


def open_server(root: Path) -> Server:
    port = free_port()
    process = start_server(root, port)
    url = f"http://{HOST}:{port}"
    wait_healthy(process, url, root / "server.log")
    write_key, admin_key = read_keys(root / "data")
    return Server(process=process, root=root, url=url, write_key=write_key, admin_key=admin_key)


async def measure(server: Server, config: Config, bodies: list[bytes]) -> Result:
    progress(f"sending {config.events:,} events in {len(bodies):,} batches from {config.clients} clients")
    started, stats = await send_all(server, bodies, config.clients)
    accepted_s = stats.last_ok - started
    progress(f"all accepted after {accepted_s:.1f} s; waiting for ClickHouse to hold {config.events:,} events")
    landed_at, final_count = await wait_landed(server, config.events)
    if final_count != config.events:
        raise BenchError(f"FAIL: ClickHouse holds {final_count} events, expected exactly {config.events}")
    return Result(
        events=config.events,
        clients=config.clients,
        batch_size=config.batch_size,
        accepted_per_s=config.events / accepted_s,
        landed_per_s=config.events / (landed_at - started),
        latency_p50_ms=percentile(stats.latencies_ms, 50),
        latency_p99_ms=percentile(stats.latencies_ms, 99),
        latency_max_ms=max(stats.latencies_ms),
        server_peak_rss_mib=peak_rss_mib(server.process.pid),
        retries_429=stats.retries_429,
    )


def run(config: Config) -> Result:
    progress(f"generating {config.events:,} events for {config.users:,} users")
    bodies = build_batches(config)
    root = Path(tempfile.mkdtemp(prefix="spotzee-bench-"))
    server: Server | None = None
    try:
        server = open_server(root)
        return asyncio.run(measure(server, config, bodies))
    except BenchError:
        if server is not None and server.process.poll() is not None:
            progress(f"server exited with code {server.process.returncode}:\n{log_tail(server.log_path)}")
        raise
    finally:
        if server is not None:
            progress("stopping the server (SIGTERM)")
            stop_server(server.process)
        shutil.rmtree(root, ignore_errors=True)


def main(argv: list[str] | None = None) -> int:
    config = parse_args(argv)
    wall = time.perf_counter()
    try:
        result = run(config)
    except BenchError as exc:
        print(str(exc) if str(exc).startswith("FAIL") else f"FAIL: {exc}", file=sys.stderr)
        return 1
    print(result_json(result) if config.as_json else format_table(table_rows(result)))
    progress(f"done in {time.perf_counter() - wall:.1f} s wall time")
    return 0


if __name__ == "__main__":
    sys.exit(main())
