"""In-process micro-benchmark of Segment-spec ingestion: ``POST /v1/batch`` through the ASGI app, on one core.

``python bench/ingest_api.py [--events 50000] [--batch-size 500] [--rounds 3] [--json]``

What runs: the real FastAPI app (``spotzee.api.app.create_app``) with every middleware and error handler, called
through ``httpx.ASGITransport`` in this process (no socket, no server). Its services are stand-ins, so nothing
but the route is measured: the write key's ``authenticate`` returns a fixed write key, the clock is the system
clock, and ``runtime.append`` returns at once after counting what it was given (the records are built and
encoded by the route, as in production: ``build``/``dumps`` are in the figure, the log's write is not).

Two workloads of ``--events`` events in ``--batch-size`` batches, serialised before the clock starts:

- ``bench mix``: the events ``bench/ingest.py`` sends (``bench_traffic.build_batches``: ~75% track, ~15% page,
  ~10% identify with an email, a ``timestamp`` and a ``messageId`` each);
- ``sdk-like``: what analytics.js-style SDKs send: every event with an ``anonymousId``, a ``messageId``, a
  ``timestamp``, ``originalTimestamp`` and a ``context`` (library, page, user agent, locale, IP), batch-level
  ``sentAt`` and ``integrations``; one in ten an ``identify`` with an email;
- ``sdk-like, track only``: the same without the identifies, whose email check (``email_validator``, about
  20-40 µs per email) is most of what the others add.

Measured per workload, best of ``--rounds``: events/s (wall, one request at a time on one core) and CPU µs per
event (``time.process_time`` over the round: the route, FastAPI, httpx's in-process transport). The first line of
the table, ``ASGI floor``, is the same app posting the same bodies to a route that only reads them: the cost of
the framework and the transport, which the ingestion route itself does not control.

Before / after the msgspec fast path (issue 11), one right after the other on the 2-core machine, 30,000 events,
best of 5, two alternating runs each. The "before" code (commit af1fc79: orjson, a regular expression over the
body for its depth, then per event ``orjson.dumps`` for its size and pydantic) could not start the whole app at
that commit, so both sides ran in a harness with the ingestion router alone (no middleware) -- hence slightly
lower CPU than this script prints:

| workload | before: events/s, CPU µs/event | after: events/s, CPU µs/event |
|---|---|---|
| bench mix | 27,200-29,100, 33.8-36.3 | 74,600-74,700, 12.7-13.2 |
| sdk-like | 18,500-18,600, 53.3-53.4 | 60,800-61,000, 15.8-16.2 |
| sdk-like, track only | 20,300-21,700, 45.7-48.8 | 84,400-87,700, 11.4-11.7 |

This script on the whole app, after: bench mix 89,000 events/s (11.2 µs), sdk-like 69,000 (14.4 µs), track only
79,000 (12.6 µs), ASGI floor 1.8 µs per event. Where the after figure goes, sdk-like track only, per event: the
body's depth and number checks 1.3 µs, the envelope 0.35, each event's msgspec decode 2.0 (about what an untyped
decode of the same bytes costs), the message and record 2.1, encoding the record 2.0, FastAPI and httpx 1.8.
An identify with an email adds 20-40 µs (``email_validator`` in ``domain/traits.py``).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import random
import sys
import time
import uuid
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from types import SimpleNamespace
from typing import Any

import httpx
import orjson
from bench_traffic import build_batches
from fastapi import Request

from spotzee.api.app import create_app
from spotzee.schemas.tenancy_models import ApiKey, KeyKind
from spotzee.settings import Settings
from spotzee.streams.interface import SystemClock

WRITE_KEY = "pk_bench"


@dataclass
class Result:
    workload: str
    events: int
    events_per_s: float
    cpu_us_per_event: float


class _Runtime:
    """``runtime.append`` that keeps nothing: the route's own work is what is measured."""

    def __init__(self) -> None:
        self.records = 0

    async def append(self, records: list[tuple[str, bytes]]) -> None:
        self.records += len(records)


def _services(runtime: _Runtime) -> Any:
    key = ApiKey(
        id="key_bench",
        kind=KeyKind.write,
        organisation_id="org_bench",
        project_id="prj_bench",
        name="bench",
        hash="",
        prefix="pk_",
        created_at=datetime.now(UTC),
    )
    tenancy = SimpleNamespace(authenticate=lambda raw, *, allowed: key)
    return SimpleNamespace(tenancy=tenancy, clock=SystemClock(), runtime=runtime)


def _app(runtime: _Runtime) -> Any:
    app = create_app(Settings())
    app.state.services = _services(runtime)

    @app.post("/bench/floor", include_in_schema=False)
    async def floor(request: Request) -> dict[str, bool]:
        await request.body()
        return {"success": True}

    return app


def _iso(moment: datetime) -> str:
    return moment.isoformat(timespec="milliseconds").replace("+00:00", "Z")


def sdk_like_batches(events: int, batch_size: int, seed: int, *, identify_every: int = 10) -> list[bytes]:
    rng = random.Random(seed)
    now = datetime.now(UTC)
    bodies = []
    for start in range(0, events, batch_size):
        batch = []
        for index in range(start, min(events, start + batch_size)):
            anonymous_id = str(uuid.UUID(int=rng.getrandbits(128), version=4))
            happened = now - timedelta(seconds=rng.uniform(0, 3600))
            event: dict[str, Any] = {
                "type": "track",
                "event": rng.choice(["Product Viewed", "Product Added", "Order Completed", "Signed In"]),
                "anonymousId": anonymous_id,
                "messageId": f"ajs-next-{uuid.UUID(int=rng.getrandbits(128), version=4)}",
                "timestamp": _iso(happened),
                "originalTimestamp": _iso(happened),
                "properties": {"sku": f"SKU-{rng.randrange(5000):04d}", "price": round(rng.uniform(2, 300), 2)},
                "context": {
                    "library": {"name": "analytics.js", "version": "next-1.70.0"},
                    "page": {
                        "path": "/products/shoes",
                        "referrer": "https://www.google.com/",
                        "title": "Shoes | Shop",
                        "url": "https://shop.example.com/products/shoes",
                    },
                    "userAgent": "Mozilla/5.0 (X11; Linux x86_64) AppleWebKit/537.36 (KHTML, like Gecko)",
                    "locale": "en-GB",
                    "ip": f"10.0.{rng.randrange(256)}.{rng.randrange(256)}",
                },
            }
            if identify_every and index % identify_every == 0:
                event = {**event, "type": "identify", "userId": f"user-{index}", "traits": {"email": f"u{index}@x.io"}}
                del event["event"], event["properties"]
            batch.append(event)
        bodies.append(orjson.dumps({"batch": batch, "sentAt": _iso(now), "integrations": {}}))
    return bodies


async def _post_all(client: httpx.AsyncClient, path: str, bodies: list[bytes]) -> None:
    headers = {"content-type": "application/json"}
    for body in bodies:
        response = await client.post(path, content=body, headers=headers, auth=(WRITE_KEY, ""))
        if response.status_code != 200:
            raise SystemExit(f"FAIL: {path} answered {response.status_code}: {response.text[:500]}")


async def _measure(name: str, path: str, bodies: list[bytes], events: int, rounds: int) -> Result:
    runtime = _Runtime()
    app = _app(runtime)
    async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://bench") as client:
        await _post_all(client, path, bodies[:2])  # warm-up: imports, first-call caches
        best: tuple[float, float] | None = None
        for _ in range(rounds):
            wall, cpu = time.perf_counter(), time.process_time()
            await _post_all(client, path, bodies)
            wall, cpu = time.perf_counter() - wall, time.process_time() - cpu
            if best is None or wall < best[0]:
                best = (wall, cpu)
    assert best is not None
    return Result(name, events, events / best[0], best[1] / events * 1e6)


async def run(args: argparse.Namespace) -> list[Result]:
    mix = build_batches(args.events, args.batch_size, users=10_000, seed=7)
    sdk = sdk_like_batches(args.events, args.batch_size, seed=11)
    track_only = sdk_like_batches(args.events, args.batch_size, seed=11, identify_every=0)
    return [
        await _measure("ASGI floor (body read only)", "/bench/floor", mix, args.events, args.rounds),
        await _measure("bench mix", "/v1/batch", mix, args.events, args.rounds),
        await _measure("sdk-like", "/v1/batch", sdk, args.events, args.rounds),
        await _measure("sdk-like, track only", "/v1/batch", track_only, args.events, args.rounds),
    ]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--events", type=int, default=50_000)
    parser.add_argument("--batch-size", type=int, default=500)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args()
    results = asyncio.run(run(args))
    if args.json:
        print(json.dumps([result.__dict__ for result in results]))
        return
    print(f"POST /v1/batch in process, {args.batch_size}-event batches, best of {args.rounds} (one core)\n")
    print(f"| {'workload':<28} | {'events':>7} | {'events/s':>9} | {'CPU µs/event':>12} |")
    print(f"|{'-' * 30}|{'-' * 9}|{'-' * 11}|{'-' * 14}|")
    for r in results:
        print(f"| {r.workload:<28} | {r.events:>7,} | {r.events_per_s:>9,.0f} | {r.cpu_us_per_event:>12.2f} |")
    sys.stdout.flush()


if __name__ == "__main__":
    main()
