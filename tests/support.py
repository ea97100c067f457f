"""Test support: a live Spotzee server on loopback, in-process, on a temporary data dir."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import uvicorn

from spotzee.api.app import create_app
from spotzee.runtime.kafka import admin
from spotzee.schemas.tenancy_models import BootstrapKeys
from spotzee.services.container import Services
from spotzee.settings import Settings
from spotzee.streams.interface import Clock

# Tests run their SMTP and HTTP receivers on loopback: a stack that sends to them allows it, as an
# operator with a relay on the same host would (SPOTZEE_OUTBOUND_ALLOWED_NETWORKS='["127.0.0.0/8"]').
LOOPBACK_RELAY: dict[str, Any] = {"outbound_allowed_networks": ["127.0.0.0/8"]}
LOOPBACK_RELAY_ENV: dict[str, str] = {"SPOTZEE_OUTBOUND_ALLOWED_NETWORKS": '["127.0.0.0/8"]'}


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def wait_until(predicate: Callable[[], bool], timeout: float = 20.0, interval: float = 0.05) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return
        time.sleep(interval)
    raise AssertionError(f"condition not met within {timeout}s")


@dataclass
class Stack:
    services: Services
    keys: BootstrapKeys
    base_url: str
    workers: list[subprocess.Popen[bytes]] = field(default_factory=list)

    @property
    def runtime(self) -> str:
        return self.services.settings.runtime

    def client(self, key: str | None = None, *, basic: bool = False) -> httpx.Client:
        if key is None:
            return httpx.Client(base_url=self.base_url, timeout=30)
        if basic:
            return httpx.Client(base_url=self.base_url, timeout=30, auth=(key, ""))
        return httpx.Client(base_url=self.base_url, timeout=30, headers={"Authorization": f"Bearer {key}"})

    @property
    def ingest(self) -> httpx.Client:
        return self.client(self.keys.write_key, basic=True)

    @property
    def admin(self) -> httpx.Client:
        return self.client(self.keys.admin_key)

    @property
    def project(self) -> httpx.Client:
        return self.client(self.keys.secret_key)

    def sql(self, query: str) -> list[list[Any]]:
        response = self.admin.post("/api/v1/sql", json={"query": query})
        assert response.status_code == 200, response.text
        body = response.json()
        # The SQL API cuts results at SPOTZEE_SQL_MAX_ROWS: a test reading a cut result would
        # take rows it never saw for rows that are missing. Aggregate instead.
        assert not body["truncated"], f"the result of {query!r} was cut at the SQL API's row limit"
        rows: list[list[Any]] = body["rows"]
        return rows

    def scalar(self, query: str) -> Any:
        return self.sql(query)[0][0]

    def settle(self, timeout: float = 30.0) -> None:
        """Wait until everything appended is processed and written to ClickHouse."""
        runtime = self.services.runtime
        if self.runtime == "embedded":
            # Twice in a row: a settled send emits its delivery event and rows, which are processed
            # and sunk in turn; an email at the SMTP server is not yet a settled send.
            quiet_embedded = [0]

            def drained() -> bool:
                idle = runtime.processing_lag() == 0 and runtime.delivery_lag() == 0 and runtime.sink_lag() == 0
                quiet_embedded[0] = quiet_embedded[0] + 1 if idle else 0
                return quiet_embedded[0] >= 2

            wait_until(drained, timeout)
            return
        settings = self.services.settings
        quiet = [0]

        def caught_up() -> bool:
            rows = admin.consumer_lag(settings, [admin.PROCESSOR_GROUP, admin.SINK_GROUP])
            ends = {r.partition: r.end for r in rows if r.topic.endswith(".events")}
            done = all(r.lag == 0 for r in rows) and all(runtime.replica_input[p] >= end for p, end in ends.items())
            quiet[0] = quiet[0] + 1 if done else 0
            return quiet[0] >= 2  # twice in a row: nothing emitted by the last batch is still on its way

        try:
            wait_until(caught_up, timeout, interval=0.1)
        except AssertionError as exc:  # say what was behind
            rows = admin.consumer_lag(settings, [admin.PROCESSOR_GROUP, admin.SINK_GROUP])
            lagging = [(r.group, r.topic, r.partition, r.committed, r.end) for r in rows if r.lag]
            raise AssertionError(
                f"not settled in {timeout}s: lagging {lagging}, replica input {runtime.replica_input}, "
                f"workers alive {[p.poll() is None for p in self.workers]}"
            ) from exc

    def log_size(self) -> int:
        if self.runtime == "embedded":
            return sum(self.services.runtime.next_offset)
        rows = admin.consumer_lag(self.services.settings, [admin.PROCESSOR_GROUP])
        return sum(r.end for r in rows)


def kafka_settings(data_dir: Path, bootstrap: str, **overrides: Any) -> Settings:
    """Settings of a fresh Kafka installation: its own topic prefix (and so consumer groups)."""
    values: dict[str, Any] = {
        "data_dir": data_dir,
        "runtime": "kafka",
        "kafka_bootstrap": bootstrap,
        "kafka_topic_prefix": f"t{uuid.uuid4().hex[:10]}.",
        "partitions": 4,
        "sink_flush_interval": 0.05,
        "unsubscribe_secret": uuid.uuid4().hex + uuid.uuid4().hex,  # shared by the API and the workers
        "secrets_key": uuid.uuid4().hex + uuid.uuid4().hex,  # seals provider secrets; the workers open them
        **overrides,
    }
    return Settings(**values)


def worker_env(settings: Settings, worker_id: str) -> dict[str, str]:
    shift = {"SPOTZEE_CLOCK_SHIFT_FILE": str(settings.clock_shift_file)} if settings.clock_shift_file else {}
    return {
        **os.environ,
        **shift,
        "SPOTZEE_RUNTIME": "kafka",
        "SPOTZEE_KAFKA_BOOTSTRAP": settings.kafka_bootstrap,
        "SPOTZEE_KAFKA_TOPIC_PREFIX": settings.kafka_topic_prefix,
        "SPOTZEE_PARTITIONS": str(settings.partitions),
        "SPOTZEE_DATA_DIR": str(settings.data_dir / "workers"),
        "SPOTZEE_WORKER_ID": worker_id,
        "SPOTZEE_DEDUPE_WINDOW": str(int(settings.dedupe_window.total_seconds())),
        "SPOTZEE_LOG_LEVEL": "WARNING",
        # Delivery: links point at the API and are signed with the secret it verifies.
        "SPOTZEE_PUBLIC_BASE_URL": settings.resolved_public_base_url(),
        # Workers connect to providers: the same outbound policy as the API.
        "SPOTZEE_OUTBOUND_ALLOW_PRIVATE": str(settings.outbound_allow_private).lower(),
        "SPOTZEE_OUTBOUND_ALLOWED_NETWORKS": json.dumps(settings.outbound_allowed_networks),
        "SPOTZEE_DELIVERY_MAX_ATTEMPTS": str(settings.delivery_max_attempts),
        "SPOTZEE_DELIVERY_RETRY_BASE": str(settings.delivery_retry_base),
        "SPOTZEE_DELIVERY_RETRY_CAP": str(settings.delivery_retry_cap),
        **(
            {"SPOTZEE_UNSUBSCRIBE_SECRET": settings.unsubscribe_secret.get_secret_value()}
            if settings.unsubscribe_secret
            else {}
        ),
        **({"SPOTZEE_SECRETS_KEY": settings.secrets_key.get_secret_value()} if settings.secrets_key else {}),
    }


def start_worker(settings: Settings, worker_id: str) -> subprocess.Popen[bytes]:
    """A ``spotzee worker`` process (contact processor only; the sink runs in the API process)."""
    log_path = settings.data_dir / f"{worker_id}.log"
    log_path.parent.mkdir(parents=True, exist_ok=True)
    with log_path.open("ab") as log:
        return subprocess.Popen(
            [sys.executable, "-m", "spotzee", "worker", "--no-sink"],
            stdout=log,
            stderr=subprocess.STDOUT,
            env=worker_env(settings, worker_id),
        )


def stop_worker(proc: subprocess.Popen[bytes]) -> None:
    if proc.poll() is None:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


@contextmanager
def running_stack(
    data_dir: Path,
    *,
    clock: Clock | None = None,
    runtime: str = "embedded",
    kafka_bootstrap: str | None = None,
    workers: int = 1,
    **overrides: Any,
) -> Iterator[Stack]:
    port = free_port()
    if runtime == "kafka":
        assert kafka_bootstrap is not None, "the Kafka runtime needs a broker"
        settings = kafka_settings(data_dir, kafka_bootstrap, port=port, **overrides)
        admin.create_topics(settings)
        procs = [start_worker(settings, f"worker-{i + 1}") for i in range(workers)]
    else:
        settings = Settings(data_dir=data_dir, port=port, sink_flush_interval=0.05, **overrides)
        procs = []
    try:
        services = Services.open(settings, clock)
        # A restart on the same data dir: the keys made the first time.
        keys = services.tenancy.bootstrap(data_dir) or BootstrapKeys.model_validate_json(
            (data_dir / "keys.json").read_text()
        )
        app = create_app(settings, services=services)
        server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=port, log_level="warning", lifespan="on"))
        thread = threading.Thread(target=server.run, daemon=True)
        thread.start()
        wait_until(lambda: server.started, timeout=60)
        try:
            yield Stack(services, keys, f"http://127.0.0.1:{port}", procs)
        finally:
            server.should_exit = True
            thread.join(timeout=60)
    finally:
        for proc in procs:
            stop_worker(proc)


def files_holding(root: Path, needle: bytes) -> list[Path]:
    """Files under ``root`` whose bytes contain ``needle``. The server may be running: ClickHouse's
    temporary insert directories come and go, so a directory or file that vanishes during the walk
    is skipped (``os.walk`` ignores a directory it can no longer list), never an error."""
    found = []
    for directory, _, names in os.walk(root):
        for name in names:
            path = Path(directory) / name
            try:
                if path.is_file() and needle in path.read_bytes():
                    found.append(path)
            except FileNotFoundError:
                continue
    return found
