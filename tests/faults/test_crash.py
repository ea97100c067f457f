"""SIGKILL the server right after 2xx responses; restart: nothing lost, nothing doubled.

The server runs as a real process (``python -m spotzee up``). Clients send batches with
messageIds; whatever got a 2xx must be in ClickHouse and in contact state exactly once after
a restart, also when the client re-sends batches (acknowledged or not) to the new process.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import httpx

from tests.support import free_port, wait_until

USERS = 40
BATCH = 250
TICKS_TO_ENTER = 200  # every user crosses it while the server is being killed and restarted


@contextmanager
def server(data_dir: Path, port: int, extra_env: dict[str, str] | None = None) -> Iterator[subprocess.Popen[bytes]]:
    env = {**os.environ, "SPOTZEE_SINK_FLUSH_INTERVAL": "0.05", "SPOTZEE_LOG_LEVEL": "WARNING", **(extra_env or {})}
    log = (data_dir.parent / f"server-{port}-{time.time_ns()}.log").open("wb")
    proc = subprocess.Popen(
        [sys.executable, "-m", "spotzee", "up", "--data-dir", str(data_dir), "--port", str(port)],
        stdout=log,
        stderr=subprocess.STDOUT,
        env=env,
    )
    try:
        wait_until(lambda: _healthy(port) or proc.poll() is not None, timeout=60, interval=0.1)
        assert proc.poll() is None, f"server exited: {proc.returncode}"
        yield proc
    finally:
        if proc.poll() is None:
            proc.kill()
        proc.wait()
        log.close()


def _healthy(port: int) -> bool:
    try:
        return httpx.get(f"http://127.0.0.1:{port}/health", timeout=1).status_code == 200
    except httpx.HTTPError:
        return False


def batch(index: int) -> list[dict[str, Any]]:
    return [
        {
            "type": "track",
            "userId": f"user-{(index * BATCH + i) % USERS}",
            "event": "tick",
            "messageId": f"m-{index}-{i}",
        }
        for i in range(BATCH)
    ]


def send(port: int, write_key: str, index: int) -> bool:
    try:
        response = httpx.post(
            f"http://127.0.0.1:{port}/v1/batch", json={"batch": batch(index)}, auth=(write_key, ""), timeout=10
        )
    except httpx.HTTPError:
        return False
    return response.status_code == 200


def test_sigkill_after_2xx_loses_nothing_and_doubles_nothing(tmp_path: Path) -> None:
    data = tmp_path / "data"
    port = free_port()
    batches = 60
    acked: set[int] = set()
    with server(data, port) as proc:
        keys = json.loads((data / "keys.json").read_text())
        write_key = keys["write_key"]
        # A segment each user enters mid-stream: its transitions must survive the kills exactly once.
        created = httpx.post(
            f"http://127.0.0.1:{port}/api/v1/segments",
            json={
                "name": "ticking",
                "rule": {"type": "event", "name": "tick", "count": {"op": "gte", "value": TICKS_TO_ENTER}},
            },
            headers={"Authorization": f"Bearer {keys['secret_key']}"},
        )
        assert created.status_code == 201, created.text
        segment_id = created.json()["id"]
        # A second sender keeps requests in flight while the first one's 2xx trigger the kill.
        stop = threading.Event()

        def background() -> None:
            i = batches
            while not stop.is_set():
                if send(port, write_key, i):
                    acked.add(i)
                i += 1

        helper = threading.Thread(target=background, daemon=True)
        helper.start()
        for index in range(batches):
            if send(port, write_key, index):
                acked.add(index)
        os.kill(proc.pid, signal.SIGKILL)  # right after the last 2xx: processing and sink are mid-way
        stop.set()
        helper.join()
    assert set(range(batches)) <= acked
    sent_upto = max(acked) + 1

    # Restart, kill again while it recovers, restart once more.
    with server(data, port) as proc:
        time.sleep(0.3)
        os.kill(proc.pid, signal.SIGKILL)
    with server(data, port):
        admin = httpx.Client(
            base_url=f"http://127.0.0.1:{port}", headers={"Authorization": f"Bearer {keys['admin_key']}"}
        )
        # The client re-sends everything it sent (acked or not): messageIds must not double.
        for index in range(sent_upto):
            assert send(port, write_key, index)
        wait_until(lambda: _lags(port) == (0, 0), timeout=120)
        expected = sent_upto * BATCH

        def sql(query: str) -> Any:
            response = admin.post("/api/v1/sql", json={"query": query})
            assert response.status_code == 200, response.text
            return response.json()["rows"][0][0]

        assert sql("SELECT count() FROM events") == expected
        assert sql("SELECT uniqExact(message_id) FROM events") == expected
        project = httpx.Client(
            base_url=f"http://127.0.0.1:{port}", headers={"Authorization": f"Bearer {keys['secret_key']}"}
        )
        total = sum(project.get(f"/api/v1/contacts/user-{u}").json()["events"]["tick"]["count"] for u in range(USERS))
        assert total == expected
        per_user = sum(1 for index in range(sent_upto) for event in batch(index) if event["userId"] == "user-0")
        assert project.get("/api/v1/contacts/user-0").json()["events"]["tick"]["count"] == per_user
        # Every user entered once: no membership change lost or doubled by the kills.
        assert project.get(f"/api/v1/segments/{segment_id}/count").json()["count"] == USERS
        transitions = f"FROM segment_changes FINAL WHERE segment_id = '{segment_id}'"
        assert sql(f"SELECT count() {transitions}") == USERS
        assert sql(f"SELECT uniqExact(contact_id) {transitions} AND change = 'entered'") == USERS


def _lags(port: int) -> tuple[int, int]:
    body = httpx.get(f"http://127.0.0.1:{port}/health", timeout=5).json()
    return body["processing_lag"], body["sink_lag"]
