"""Journeys and delivery benchmark: event -> email at a real SMTP server, and journey transitions/s.

For each runtime (embedded: one ``spotzee up``; Kafka: broker + worker + API, see ``bench_stacks``)
it starts an ``aiosmtpd`` server on loopback, registers it as the project's SMTP provider, creates
contacts (with an email address) through ``/v1/batch``, publishes two journeys and measures:

1. **Latency** (unloaded): ``--probes`` track calls, ``--rate`` per second, each entering the
   "Probe" journey (``gate`` -> ``send`` -> ``exit``); latency = from just before the HTTP call to
   the moment the SMTP server has the whole message (p50 / p99). Everything is on the path:
   ingestion, the contact processor, the journey transition, the ``sends`` topic, the delivery
   agent (consent, template render, unsubscribe link) and the SMTP conversation.
2. **Throughput** (loaded): one ``flow`` event for each of ``--contacts`` contacts, sent as fast as
   the API takes them, into "Flow" (``experiment`` -> ``balancer`` -> ``gate`` -> ``update`` ->
   ``send`` -> 1 s ``delay`` -> ``exit``). Journey transitions/s = ``entered`` rows in
   ``journey_steps`` / time from the first request until every run has exited (landed in
   ClickHouse); emails/s = emails received / time from the first request to the last email.

Checks (the run fails otherwise): every probe and every contact gets exactly one email (by
``Message-ID``, derived from the send id: no duplicates), and every run exits.

    .venv/bin/python bench/journeys.py [--runtime embedded|kafka|both] [--contacts N] [--probes N]

Without ``SPOTZEE_KAFKA_BOOTSTRAP`` the Kafka column fetches and starts a broker (``deploy/kafka``).
"""

from __future__ import annotations

import argparse
import asyncio
import email
import email.policy
import json
import math
import shutil
import signal
import sys
import tempfile
import threading
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import orjson
from aiosmtpd.controller import Controller
from aiosmtpd.smtp import SMTP as SMTPServer
from aiosmtpd.smtp import Envelope, Session
from bench_common import HOST, BenchError, percentile, progress
from bench_stacks import Stack, embedded_stack, free_port, kafka_broker, kafka_name, kafka_stack
from bench_traffic import send_all, sql

REQUEST_TIMEOUT_S = 60.0
POLL_S = 0.2
BATCH = 500
CLIENTS = 4
# The benchmark's SMTP server listens on loopback: allowed explicitly, as an operator allows a private relay.
RELAY_ENV = {"SPOTZEE_OUTBOUND_ALLOWED_NETWORKS": f'["{HOST}/32"]'}


# -- the SMTP server ----------------------------------------------------------------------------------


class Inbox:
    """Records when each message arrived, by subject and by Message-ID."""

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.arrived: dict[str, float] = {}  # subject -> perf_counter at arrival (first)
        self.message_ids: dict[str, int] = {}
        self.last_at = 0.0

    async def handle_DATA(self, server: SMTPServer, session: Session, envelope: Envelope) -> str:
        at = time.perf_counter()
        raw = envelope.original_content or envelope.content
        assert isinstance(raw, bytes)
        message = email.message_from_bytes(raw, policy=email.policy.default)
        with self.lock:
            self.arrived.setdefault(str(message["Subject"]), at)
            key = str(message["Message-ID"])
            self.message_ids[key] = self.message_ids.get(key, 0) + 1
            self.last_at = max(self.last_at, at)
        return "250 OK"

    def count(self, prefix: str) -> int:
        with self.lock:
            return sum(1 for subject in self.arrived if subject.startswith(prefix))

    def duplicates(self) -> int:
        with self.lock:
            return sum(n - 1 for n in self.message_ids.values())


# -- configuration and result -------------------------------------------------------------------------


@dataclass(frozen=True)
class Config:
    runtimes: tuple[str, ...]
    contacts: int
    probes: int
    rate: float
    timeout: float


@dataclass
class Result:
    name: str
    contacts: int = 0
    probes: int = 0
    latency_p50_ms: float = math.nan
    latency_p99_ms: float = math.nan
    latency_max_ms: float = math.nan
    transitions: int = 0
    transitions_per_s: float = math.nan
    emails_per_s: float = math.nan
    duplicates: int = 0
    wall_s: float = math.nan
    latencies: list[float] = field(default_factory=list, repr=False)


def parse_args(argv: list[str] | None) -> Config:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "--runtime", choices=("embedded", "kafka", "both"), default="both", help="what to run (default both)"
    )
    parser.add_argument("--contacts", type=int, default=5000, help="contacts through the Flow journey (default 5000)")
    parser.add_argument("--probes", type=int, default=200, help="latency probes (default 200)")
    parser.add_argument("--rate", type=float, default=20.0, help="latency probes per second (default 20)")
    parser.add_argument("--timeout", type=float, default=300.0, help="seconds any phase may take (default 300)")
    args = parser.parse_args(argv)
    runtimes = ("embedded", "kafka") if args.runtime == "both" else (args.runtime,)
    return Config(runtimes, args.contacts, args.probes, args.rate, args.timeout)


# -- the journeys -------------------------------------------------------------------------------------


def probe_journey(template_id: str) -> dict[str, Any]:
    return {
        "name": "Probe",
        "trigger": {"type": "event", "event": "probe"},
        "entrance": {"reentry": "concurrent"},
        "start": "check",
        "steps": {
            "check": {
                "type": "gate",
                "rule": {"type": "attribute", "path": "plan", "op": "eq", "value": "free"},
                "yes": "mail",
                "no": "done",
            },
            "mail": {"type": "send", "channel": "email", "template_id": template_id, "next": "done"},
            "done": {"type": "exit"},
        },
    }


def flow_journey(template_id: str) -> dict[str, Any]:
    return {
        "name": "Flow",
        "trigger": {"type": "event", "event": "flow"},
        "start": "ab",
        "steps": {
            "ab": {
                "type": "experiment",
                "variants": [{"name": "A", "weight": 1, "next": "rr"}, {"name": "B", "weight": 1, "next": "rr"}],
            },
            "rr": {"type": "balancer", "mode": "round_robin", "paths": ["gate", "gate"]},
            "gate": {
                "type": "gate",
                "rule": {"type": "attribute", "path": "plan", "op": "eq", "value": "free"},
                "yes": "tag",
                "no": "done",
            },
            "tag": {"type": "update", "set": {"stage": "flowed"}, "next": "mail"},
            "mail": {"type": "send", "channel": "email", "template_id": template_id, "next": "wait"},
            "wait": {"type": "delay", "duration": {"value": 1, "unit": "second"}, "next": "done"},
            "done": {"type": "exit"},
        },
    }


def template(subject: str) -> dict[str, Any]:
    return {
        "name": "Bench",
        "channel": "email",
        "content": {
            "subject": subject,
            "text": "Hi {{ contact.first_name | default: 'there' }}",
            "html": "<p>Hi {{ contact.first_name | default: 'there' }}</p>",
            "from": "Bench <bench@example.com>",
        },
    }


# -- the phases ---------------------------------------------------------------------------------------


@dataclass
class Api:
    stack: Stack
    ingest: httpx.AsyncClient
    project: httpx.AsyncClient
    admin: httpx.AsyncClient
    timeout: float

    async def call(self, method: str, path: str, body: Any = None) -> Any:
        response = await self.project.request(method, path, json=body)
        if not response.is_success:
            raise BenchError(f"{method} {path} answered {response.status_code}: {response.text[:500]}")
        return response.json() if response.content else None

    async def until(self, what: str, check: Callable[[], Awaitable[bool]]) -> float:
        deadline = time.perf_counter() + self.timeout
        while not await check():
            if time.perf_counter() > deadline:
                raise BenchError(f"FAIL: {what} not within {self.timeout:.0f} s")
            self.stack.check_alive()
            await asyncio.sleep(POLL_S)
        return time.perf_counter()

    async def scalar(self, query: str) -> int:
        return int((await sql(self.admin, query))[0][0])


@asynccontextmanager
async def open_api(stack: Stack, data_dir: Path, timeout: float) -> AsyncIterator[Api]:
    keys = json.loads((data_dir / "keys.json").read_text())
    headers = {"content-type": "application/json"}
    limits = httpx.Limits(max_connections=CLIENTS + 2, max_keepalive_connections=CLIENTS + 2)
    async with (
        httpx.AsyncClient(
            base_url=stack.url,
            auth=(keys["write_key"], ""),
            headers=headers,
            limits=limits,
            timeout=REQUEST_TIMEOUT_S,
        ) as ingest,
        httpx.AsyncClient(
            base_url=stack.url,
            headers={**headers, "Authorization": f"Bearer {keys['secret_key']}"},
            timeout=REQUEST_TIMEOUT_S,
        ) as project,
        httpx.AsyncClient(
            base_url=stack.url,
            headers={**headers, "Authorization": f"Bearer {keys['admin_key']}"},
            timeout=REQUEST_TIMEOUT_S,
        ) as admin,
    ):
        yield Api(stack, ingest, project, admin, timeout)


def batches(events: list[dict[str, Any]]) -> list[bytes]:
    return [orjson.dumps({"batch": events[i : i + BATCH]}) for i in range(0, len(events), BATCH)]


async def create_contacts(api: Api, ids: list[str]) -> None:
    events = [
        {
            "type": "identify",
            "userId": user,
            "messageId": f"id-{user}",
            "traits": {"email": f"{user}@example.com", "plan": "free", "first_name": user},
        }
        for user in ids
    ]
    await send_all(api.ingest, batches(events), CLIENTS)
    query = "SELECT uniqExact(message_id) FROM events WHERE startsWith(message_id, 'id-')"
    await api.until("contacts created", lambda: _at_least(api, query, len(ids)))


async def _at_least(api: Api, query: str, expected: int) -> bool:
    return await api.scalar(query) >= expected


async def measure_latency(api: Api, inbox: Inbox, config: Config, result: Result) -> None:
    progress(f"{result.name}: {config.probes} latency probes at {config.rate:g}/s")
    sent: dict[str, float] = {}
    interval = 1.0 / config.rate
    for index in range(config.probes):
        subject = f"probe {index}"
        body = {"userId": f"p{index % 50}", "event": "probe", "properties": {"probe": subject}}
        sent[subject] = time.perf_counter()
        response = await api.ingest.post("/v1/track", json=body)
        if response.status_code != 200:
            raise BenchError(f"POST /v1/track answered {response.status_code}: {response.text[:300]}")
        await asyncio.sleep(max(0.0, sent[subject] + interval - time.perf_counter()))

    async def all_arrived() -> bool:
        return inbox.count("probe ") >= config.probes

    await api.until("every probe email", all_arrived)
    with inbox.lock:
        result.latencies = [(inbox.arrived[s] - t) * 1000 for s, t in sent.items()]
    result.probes = config.probes
    result.latency_p50_ms = percentile(result.latencies, 50)
    result.latency_p99_ms = percentile(result.latencies, 99)
    result.latency_max_ms = max(result.latencies)


async def measure_throughput(api: Api, inbox: Inbox, flow_id: str, ids: list[str], result: Result) -> None:
    progress(f"{result.name}: {len(ids)} contacts through Flow")
    events = [{"type": "track", "userId": user, "event": "flow", "messageId": f"flow-{user}"} for user in ids]
    bodies = batches(events)
    started = time.perf_counter()
    await send_all(api.ingest, bodies, CLIENTS)
    exited = f"SELECT count() FROM journey_steps FINAL WHERE journey_id = '{flow_id}' AND kind = 'exited'"
    done = await api.until("every Flow run exited", lambda: _at_least(api, exited, len(ids)))
    entered = f"SELECT count() FROM journey_steps FINAL WHERE journey_id = '{flow_id}' AND kind = 'entered'"
    result.transitions = await api.scalar(entered)
    result.transitions_per_s = result.transitions / (done - started)

    async def all_mail() -> bool:
        return inbox.count("flow ") >= len(ids)

    await api.until("every Flow email", all_mail)
    result.emails_per_s = len(ids) / (inbox.last_at - started)
    result.contacts = len(ids)


async def run_phases(
    stack: Stack, data_dir: Path, config: Config, result: Result, smtp_port: int, inbox: Inbox
) -> None:
    async with open_api(stack, data_dir, config.timeout) as api:
        provider = {
            "name": "bench relay",
            "channel": "email",
            "type": "smtp",
            "config": {"host": HOST, "port": smtp_port, "security": "none"},
        }
        await api.call("POST", "/api/v1/providers", provider)
        probe_tpl = (await api.call("POST", "/api/v1/templates", template("{{ event.probe }}")))["id"]
        flow_tpl = (await api.call("POST", "/api/v1/templates", template("flow {{ contact.first_name }}")))["id"]
        journeys = []
        for body in (probe_journey(probe_tpl), flow_journey(flow_tpl)):
            journey_id = (await api.call("POST", "/api/v1/journeys", body))["id"]
            await api.call("POST", f"/api/v1/journeys/{journey_id}/publish")
            journeys.append(journey_id)
        ids = [f"c{i}" for i in range(config.contacts)]
        progress(f"{result.name}: creating {len(ids) + 50} contacts")
        await create_contacts(api, ids + [f"p{i}" for i in range(50)])
        await asyncio.sleep(2.0)  # Kafka workers learn the journeys from the definitions topic
        await measure_latency(api, inbox, config, result)
        await measure_throughput(api, inbox, journeys[1], ids, result)
        result.duplicates = inbox.duplicates()
        if result.duplicates:
            raise BenchError(f"FAIL: {result.duplicates} duplicate emails (same Message-ID)")


def run_one(runtime: str, config: Config, root: Path) -> Result:
    started = time.perf_counter()
    inbox = Inbox()
    smtp_port = free_port()
    controller = Controller(inbox, hostname=HOST, port=smtp_port)
    controller.start()
    try:
        if runtime == "embedded":
            result = Result("embedded")
            with embedded_stack(root, RELAY_ENV) as stack:
                asyncio.run(run_phases(stack, root / "data", config, result, smtp_port, inbox))
        else:
            result = Result(kafka_name(1))
            with (
                kafka_broker(root) as (bootstrap, own_broker),
                kafka_stack(root, bootstrap, 1, own_broker=own_broker, env=RELAY_ENV) as stack,
            ):
                asyncio.run(run_phases(stack, root / "data", config, result, smtp_port, inbox))
    finally:
        controller.stop()
    result.wall_s = time.perf_counter() - started
    return result


# -- report -------------------------------------------------------------------------------------------


def number(value: float, decimals: int = 0) -> str:
    return "-" if math.isnan(value) else f"{value:,.{decimals}f}"


def format_table(results: list[Result]) -> str:
    rows = [
        ("latency probes (event -> email at the SMTP server)", [f"{r.probes:,}" for r in results]),
        (
            "  p50 / p99 / max ms",
            [f"{number(r.latency_p50_ms)} / {number(r.latency_p99_ms)} / {number(r.latency_max_ms)}" for r in results],
        ),
        ("contacts through Flow (7 steps, a send, a 1 s delay)", [f"{r.contacts:,}" for r in results]),
        ("journey transitions (steps entered)", [f"{r.transitions:,}" for r in results]),
        (
            "journey transitions/s (until every run exited, in ClickHouse)",
            [number(r.transitions_per_s) for r in results],
        ),
        ("emails/s at the SMTP server", [number(r.emails_per_s) for r in results]),
        ("duplicate emails", [str(r.duplicates) for r in results]),
        ("wall time s", [number(r.wall_s, 1) for r in results]),
    ]
    header = ["metric", *[r.name for r in results]]
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join([label, *cells]) + " |" for label, cells in rows]
    return "\n".join(lines)


def interrupt(signum: int, frame: object) -> None:
    raise KeyboardInterrupt


def main(argv: list[str] | None = None) -> int:
    config = parse_args(argv)
    signal.signal(signal.SIGTERM, interrupt)
    wall = time.perf_counter()
    root = Path(tempfile.mkdtemp(prefix="spotzee-bench-journeys-"))
    try:
        results = [run_one(runtime, config, root / runtime) for runtime in config.runtimes]
    except BenchError as exc:
        print(str(exc) if str(exc).startswith("FAIL") else f"FAIL: {exc}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print("FAIL: interrupted (everything started was stopped)", file=sys.stderr)
        return 130
    finally:
        shutil.rmtree(root, ignore_errors=True)
    print(format_table(results))
    print(f"total wall time: {time.perf_counter() - wall:.1f} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
