"""Sends/s per channel on the embedded runtime, at loopback vendor servers in a process of their own.

One ``spotzee up``; the vendor servers (``bench/vendor_servers.py``: SMTP, a webhook receiver,
Twilio's and Vonage's SMS APIs with the strict rules of ``tests/vendors``) in a separate process,
so that their CPU is not the runtime's and is measured on its own. ``--sends`` contacts are created
(an email address, a phone number); then for each channel in turn a provider, a template and a
journey (``send`` -> ``exit``, triggered by ``send_<channel>``) are made and one trigger event per
contact is pushed through ``/v1/batch`` as fast as the API takes them. Per channel:

- **sends/s at the server**: messages accepted / (last message - first request), both at the server;
- **sends/s end to end**: messages / (last message - the first ``/v1/batch`` of the channel);
- **event -> message p50 / p99**: from the start of the ``/v1/batch`` call carrying the contact's
  event to the server having its message;
- **connections opened** at the server (connection reuse: a handful, not one per send);
- **failed / refused**: ``failed`` message rows in ClickHouse / requests the server refused;
- **CPU** of the Spotzee process and of the vendor process over the channel's window, % of a core,
  and the Spotzee process's CPU per send (the whole path: ingestion, the journey, delivery): on a
  shared machine the rate follows the CPU the process gets; the CPU per send does not.

Twilio and Vonage are both ``sms``: the Twilio provider is deleted before the Vonage one is made
(a project sends a channel through its first provider). Every contact must get exactly one message
per channel (no duplicate at the server) and a final message row; the run fails otherwise.

    .venv/bin/python bench/sends.py [--sends N] [--channels email,webhook,twilio,vonage] [--json]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import math
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import httpx
import orjson
from bench_common import HOST, BenchError, percentile, progress
from bench_stacks import Stack, embedded_stack
from bench_traffic import retry_after_seconds, sql

VENDOR_SERVERS = Path(__file__).resolve().parent / "vendor_servers.py"
TWILIO_ACCOUNT = "AC" + "0123456789abcdef" * 2  # as bench/vendor_servers.py expects them
TWILIO_TOKEN = "bench-twilio-auth-token"
VONAGE_KEY = "benchkey1"
VONAGE_SECRET = "bench-vonage-secret"
CHANNELS = ("email", "webhook", "twilio", "vonage")
BATCH = 500
CLIENTS = 4
POLL_S = 0.2
REQUEST_TIMEOUT_S = 60.0
# The vendor servers listen on loopback: allowed explicitly, as an operator allows a private relay.
RELAY_ENV = {"SPOTZEE_OUTBOUND_ALLOWED_NETWORKS": f'["{HOST}/32"]'}


@dataclass
class Result:
    channel: str
    sends: int = 0
    accepted: int = 0
    server_per_s: float = math.nan
    end_to_end_per_s: float = math.nan
    p50_ms: float = math.nan
    p99_ms: float = math.nan
    connections: int = 0
    failed: int = 0
    refused: int = 0
    duplicates: int = 0
    spotzee_cpu_pct: float = math.nan
    spotzee_cpu_ms_per_send: float = math.nan
    vendor_cpu_pct: float = math.nan
    latencies: list[float] = field(default_factory=list, repr=False)


# -- the vendor process ---------------------------------------------------------------------------


class Vendors:
    def __init__(self) -> None:
        self.process = subprocess.Popen(
            [sys.executable, str(VENDOR_SERVERS)], stdin=subprocess.PIPE, stdout=subprocess.PIPE
        )
        self.ports: dict[str, int] = self._line()["ports"]

    def _line(self) -> dict[str, Any]:
        assert self.process.stdout is not None
        line = self.process.stdout.readline()
        if not line:
            raise BenchError(f"the vendor servers exited with code {self.process.wait()}")
        loaded: dict[str, Any] = json.loads(line)
        return loaded

    def stats(self, channel: str) -> dict[str, Any]:
        assert self.process.stdin is not None
        self.process.stdin.write(f"stats {channel}\n".encode())
        self.process.stdin.flush()
        return self._line()

    def close(self) -> None:
        if self.process.stdin is not None:
            self.process.stdin.close()
        try:
            self.process.wait(timeout=10)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait()


# -- set-up per channel -----------------------------------------------------------------------------


def provider(channel: str, ports: dict[str, int]) -> dict[str, Any]:
    base = f"http://{HOST}:{ports.get(channel, 0)}"
    if channel == "email":
        config: dict[str, Any] = {"host": HOST, "port": ports["email"], "security": "none"}
        return {"name": "bench smtp", "channel": "email", "type": "smtp", "config": config}
    if channel == "webhook":
        return {"name": "bench hook", "channel": "webhook", "type": "webhook", "config": {"signing_secret": "s" * 32}}
    if channel == "twilio":
        config = {"account_sid": TWILIO_ACCOUNT, "auth_token": TWILIO_TOKEN, "from": "+14155550100", "base_url": base}
        return {"name": "bench twilio", "channel": "sms", "type": "twilio", "config": config}
    config = {"api_key": VONAGE_KEY, "api_secret": VONAGE_SECRET, "from": "Spotzee", "base_url": base}
    return {"name": "bench vonage", "channel": "sms", "type": "vonage", "config": config}


def template(channel: str, ports: dict[str, int]) -> dict[str, Any]:
    if channel == "email":
        content: dict[str, Any] = {
            "subject": "bench {{ contact.first_name }}",
            "text": "Hi {{ contact.first_name | default: 'there' }}",
            "html": "<p>Hi {{ contact.first_name | default: 'there' }}</p>",
            "from": "Bench <bench@example.com>",
        }
        return {"name": "bench email", "channel": "email", "content": content}
    if channel == "webhook":
        content = {"url": f"http://{HOST}:{ports['webhook']}/hook", "body": '{"text": "bench {{ contact.id }}"}'}
        return {"name": "bench hook", "channel": "webhook", "content": content}
    return {"name": f"bench {channel}", "channel": "sms", "content": {"body": "bench {{ contact.first_name }}"}}


def journey(channel: str, template_id: str) -> dict[str, Any]:
    send_channel = "sms" if channel in ("twilio", "vonage") else channel
    return {
        "name": f"Send {channel}",
        "trigger": {"type": "event", "event": f"send_{channel}"},
        "start": "send",
        "steps": {
            "send": {"type": "send", "channel": send_channel, "template_id": template_id, "next": "done"},
            "done": {"type": "exit"},
        },
    }


# -- the run ----------------------------------------------------------------------------------------


class Api:
    def __init__(self, stack: Stack, data_dir: Path, timeout: float) -> None:
        keys = json.loads((data_dir / "keys.json").read_text())
        headers = {"content-type": "application/json"}
        limits = httpx.Limits(max_connections=CLIENTS + 2, max_keepalive_connections=CLIENTS + 2)
        self.stack = stack
        self.timeout = timeout
        self.ingest = httpx.AsyncClient(
            base_url=stack.url, auth=(keys["write_key"], ""), headers=headers, limits=limits, timeout=REQUEST_TIMEOUT_S
        )
        self.project = httpx.AsyncClient(
            base_url=stack.url,
            headers={**headers, "Authorization": f"Bearer {keys['secret_key']}"},
            timeout=REQUEST_TIMEOUT_S,
        )
        self.admin = httpx.AsyncClient(
            base_url=stack.url,
            headers={**headers, "Authorization": f"Bearer {keys['admin_key']}"},
            timeout=REQUEST_TIMEOUT_S,
        )

    async def aclose(self) -> None:
        for client in (self.ingest, self.project, self.admin):
            await client.aclose()

    async def call(self, method: str, path: str, body: Any = None) -> Any:
        response = await self.project.request(method, path, json=body)
        if not response.is_success:
            raise BenchError(f"{method} {path} answered {response.status_code}: {response.text[:500]}")
        return response.json() if response.content else None

    async def scalar(self, query: str) -> int:
        return int((await sql(self.admin, query))[0][0])

    async def until(self, what: str, check: Any) -> None:
        deadline = time.monotonic() + self.timeout
        while not await check():
            if time.monotonic() > deadline:
                raise BenchError(f"FAIL: {what} not within {self.timeout:.0f} s")
            self.stack.check_alive()
            await asyncio.sleep(POLL_S)

    async def push(self, events: list[dict[str, Any]]) -> dict[str, float]:
        """``/v1/batch`` from ``CLIENTS`` senders as fast as accepted; when each user's batch was started."""
        queue: asyncio.Queue[list[dict[str, Any]]] = asyncio.Queue()
        for i in range(0, len(events), BATCH):
            queue.put_nowait(events[i : i + BATCH])
        started: dict[str, float] = {}

        async def sender() -> None:
            while not queue.empty():
                batch = queue.get_nowait()
                body = orjson.dumps({"batch": batch})
                while True:
                    at = time.monotonic()
                    response = await self.ingest.post("/v1/batch", content=body)
                    if response.status_code == 429:
                        await asyncio.sleep(retry_after_seconds(response))
                        continue
                    if not response.is_success:
                        raise BenchError(f"POST /v1/batch answered {response.status_code}: {response.text[:300]}")
                    break
                for event in batch:
                    started[event["userId"]] = at

        async with asyncio.TaskGroup() as group:
            for _ in range(CLIENTS):
                group.create_task(sender())
        return started


async def create_contacts(api: Api, ids: list[str]) -> None:
    progress(f"creating {len(ids)} contacts")
    events = [
        {
            "type": "identify",
            "userId": user,
            "messageId": f"id-{user}",
            "traits": {"email": f"{user}@example.com", "phone": f"+1415{i:07d}", "first_name": user},
        }
        for i, user in enumerate(ids)
    ]
    await api.push(events)
    query = "SELECT uniqExact(message_id) FROM events WHERE startsWith(message_id, 'id-')"

    async def created() -> bool:
        return await api.scalar(query) >= len(ids)

    await api.until("contacts created", created)


async def run_channel(api: Api, vendors: Vendors, channel: str, ids: list[str]) -> Result:
    result = Result(channel, sends=len(ids))
    provider_id = (await api.call("POST", "/api/v1/providers", provider(channel, vendors.ports)))["id"]
    template_id = (await api.call("POST", "/api/v1/templates", template(channel, vendors.ports)))["id"]
    journey_id = (await api.call("POST", "/api/v1/journeys", journey(channel, template_id)))["id"]
    await api.call("POST", f"/api/v1/journeys/{journey_id}/publish")
    await asyncio.sleep(0.5)
    progress(f"{channel}: {len(ids)} sends")
    before = vendors.stats(channel)
    spotzee_cpu = api.stack.api.cpu_s()
    events = [
        {"type": "track", "userId": user, "event": f"send_{channel}", "messageId": f"{channel}-{user}"} for user in ids
    ]
    t0 = time.monotonic()
    started = await api.push(events)

    async def all_arrived() -> bool:
        stats = vendors.stats(channel)
        return int(stats["accepted"]) + int(stats["rejected"]) >= len(ids)

    await api.until(f"every {channel} message at the server", all_arrived)
    after = vendors.stats(channel)
    spotzee_cpu = api.stack.api.cpu_s() - spotzee_cpu
    final = (
        f"SELECT count() FROM messages FINAL WHERE journey_id = '{journey_id}' "
        "AND status IN ('sent', 'failed', 'suppressed')"
    )

    async def all_final() -> bool:
        return await api.scalar(final) >= len(ids)

    await api.until(f"every {channel} message row final in ClickHouse", all_final)
    failed = f"SELECT count() FROM messages FINAL WHERE journey_id = '{journey_id}' AND status = 'failed'"
    result.failed = await api.scalar(failed)
    arrived: dict[str, float] = after["arrived"]
    window = after["last_at"] - t0
    result.accepted = int(after["accepted"]) - int(before["accepted"])
    result.refused = int(after["rejected"]) - int(before["rejected"])
    result.duplicates = int(after["duplicates"]) - int(before["duplicates"])
    result.connections = int(after["connections"]) - int(before["connections"])
    result.server_per_s = result.accepted / max(1e-9, after["last_at"] - after["first_at"])
    result.end_to_end_per_s = result.accepted / window
    result.latencies = [(arrived[user] - started[user]) * 1000 for user in ids if user in arrived]
    result.p50_ms = percentile(result.latencies, 50)
    result.p99_ms = percentile(result.latencies, 99)
    result.spotzee_cpu_pct = 100 * spotzee_cpu / window
    result.spotzee_cpu_ms_per_send = 1000 * spotzee_cpu / len(ids)
    result.vendor_cpu_pct = 100 * (after["cpu_s"] - before["cpu_s"]) / window
    if after["rejections"]:
        progress(f"{channel}: the server refused: {after['rejections']}")
    if result.duplicates or len(result.latencies) != len(ids):
        raise BenchError(
            f"FAIL: {channel}: {len(result.latencies)} of {len(ids)} contacts got a message, "
            f"{result.duplicates} duplicates"
        )
    if channel == "twilio":  # Vonage is the project's next SMS provider
        await api.call("DELETE", f"/api/v1/providers/{provider_id}")
    return result


async def run_all(stack: Stack, data_dir: Path, vendors: Vendors, args: argparse.Namespace) -> list[Result]:
    api = Api(stack, data_dir, args.timeout)
    try:
        ids = [f"c{i}" for i in range(args.sends)]
        await create_contacts(api, ids)
        return [await run_channel(api, vendors, channel, ids) for channel in args.channels]
    finally:
        await api.aclose()


# -- report -----------------------------------------------------------------------------------------


def number(value: float, decimals: int = 0) -> str:
    return "-" if math.isnan(value) else f"{value:,.{decimals}f}"


CHANNEL_NAMES = {"email": "email (SMTP)", "webhook": "webhook", "twilio": "SMS (Twilio)", "vonage": "SMS (Vonage)"}


def format_table(results: list[Result]) -> str:
    rows = [
        ("sends", [f"{r.sends:,}" for r in results]),
        ("sends/s at the server (first request -> last message)", [number(r.server_per_s) for r in results]),
        ("sends/s end to end (first /v1/batch -> last message)", [number(r.end_to_end_per_s) for r in results]),
        ("event -> message p50 / p99 ms", [f"{number(r.p50_ms)} / {number(r.p99_ms)}" for r in results]),
        ("connections opened at the server", [str(r.connections) for r in results]),
        ("failed (message rows) / refused (server)", [f"{r.failed} / {r.refused}" for r in results]),
        (
            "CPU % of a core: spotzee up / vendor server",
            [f"{number(r.spotzee_cpu_pct)} / {number(r.vendor_cpu_pct)}" for r in results],
        ),
        (
            "spotzee up CPU ms per send (ingest, journey, delivery)",
            [number(r.spotzee_cpu_ms_per_send, 2) for r in results],
        ),
    ]
    header = ["embedded runtime", *[CHANNEL_NAMES[r.channel] for r in results]]
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join([label, *cells]) + " |" for label, cells in rows]
    return "\n".join(lines)


def interrupt(signum: int, frame: object) -> None:
    raise KeyboardInterrupt


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--sends", type=int, default=5000, help="contacts, one send each per channel (default 5000)")
    parser.add_argument("--channels", default=",".join(CHANNELS), help=f"comma-separated, of {', '.join(CHANNELS)}")
    parser.add_argument("--timeout", type=float, default=300.0, help="seconds any phase may take (default 300)")
    parser.add_argument("--json", action="store_true", help="print the results as JSON instead of a table")
    args = parser.parse_args(argv)
    args.channels = [c for c in args.channels.split(",") if c]
    unknown = set(args.channels) - set(CHANNELS)
    if unknown:
        parser.error(f"unknown channels {sorted(unknown)}")
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    signal.signal(signal.SIGTERM, interrupt)
    wall = time.monotonic()
    root = Path(tempfile.mkdtemp(prefix="spotzee-bench-sends-"))
    vendors = Vendors()
    try:
        with embedded_stack(root, RELAY_ENV) as stack:
            results = asyncio.run(run_all(stack, root / "data", vendors, args))
    except BenchError as exc:
        print(str(exc) if str(exc).startswith("FAIL") else f"FAIL: {exc}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print("FAIL: interrupted (everything started was stopped)", file=sys.stderr)
        return 130
    finally:
        vendors.close()
        shutil.rmtree(root, ignore_errors=True)
    if args.json:
        print(json.dumps([{k: v for k, v in asdict(r).items() if k != "latencies"} for r in results], indent=2))
    else:
        print(format_table(results))
        print(f"total wall time: {time.monotonic() - wall:.1f} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
