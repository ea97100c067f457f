"""Test support: a live Spotzee server on loopback, in-process, on a temporary data dir."""

from __future__ import annotations

import socket
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import uvicorn

from spotzee.api.app import create_app
from spotzee.schemas.tenancy import BootstrapKeys
from spotzee.services import Services
from spotzee.settings import Settings
from spotzee.streams.interface import Clock


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
        rows: list[list[Any]] = response.json()["rows"]
        return rows

    def scalar(self, query: str) -> Any:
        return self.sql(query)[0][0]

    def settle(self, timeout: float = 20.0) -> None:
        """Wait until everything appended is processed and written to ClickHouse."""
        runtime = self.services.runtime
        wait_until(lambda: runtime.processing_lag() == 0 and runtime.sink_lag() == 0, timeout)

    def log_size(self) -> int:
        return sum(self.services.runtime.next_offset)


@contextmanager
def running_stack(data_dir: Path, *, clock: Clock | None = None, **overrides: Any) -> Iterator[Stack]:
    port = free_port()
    settings = Settings(data_dir=data_dir, port=port, sink_flush_interval=0.05, **overrides)
    services = Services.open(settings, clock)
    keys = services.tenancy.bootstrap(data_dir)
    assert keys is not None
    app = create_app(settings, services=services)
    server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=port, log_level="warning", lifespan="on"))
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    wait_until(lambda: server.started, timeout=30)
    try:
        yield Stack(services, keys, f"http://127.0.0.1:{port}")
    finally:
        server.should_exit = True
        thread.join(timeout=60)
