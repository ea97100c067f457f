"""A real single-node Apache Kafka (KRaft) on loopback for tests, run through ``deploy/kafka/kafka.sh``.

Usage from a session fixture::

    @pytest.fixture(scope="session")
    def kafka_bootstrap(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
        yield from kafka_bootstrap_session(tmp_path_factory.mktemp("kafka"))

``SPOTZEE_KAFKA_BOOTSTRAP`` (``host:port``) makes the helpers use an existing broker instead of starting one.
The first start downloads Kafka's jars with Maven into ``~/.cache/spotzee/kafka`` (see kafka.sh).
"""

from __future__ import annotations

import atexit
import contextlib
import os
import signal
import socket
import subprocess
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parents[1]
KAFKA_SH = REPO_ROOT / "deploy" / "kafka" / "kafka.sh"
BOOTSTRAP_ENV = "SPOTZEE_KAFKA_BOOTSTRAP"

FETCH_TIMEOUT_S = 900.0
START_TIMEOUT_S = 180.0  # kafka.sh itself gives up after 90 s (SPOTZEE_KAFKA_START_TIMEOUT)
STOP_TIMEOUT_S = 60.0


class KafkaBrokerError(RuntimeError):
    """kafka.sh failed; the message carries its output (with the broker log tail on start failures)."""


def free_port() -> int:
    """A TCP port that is free on 127.0.0.1 right now."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


def _run_script(*args: str, timeout: float) -> None:
    proc = subprocess.run(
        ["bash", str(KAFKA_SH), *args],
        stdin=subprocess.DEVNULL,
        capture_output=True,
        text=True,
        timeout=timeout,
        check=False,
    )
    if proc.returncode != 0:
        raise KafkaBrokerError(
            f"kafka.sh {' '.join(args)} exited {proc.returncode}\n"
            f"--- stdout ---\n{proc.stdout}\n--- stderr ---\n{proc.stderr}"
        )


def fetch() -> None:
    """Download Kafka's jars into the cache (no-op when already there)."""
    _run_script("fetch", timeout=FETCH_TIMEOUT_S)


def _pid_running(pid: int) -> bool:
    """True while ``pid`` exists and is not a zombie (the broker is not our child, so we cannot wait on it)."""
    try:
        status = Path(f"/proc/{pid}/status").read_text()
    except (FileNotFoundError, ProcessLookupError, PermissionError):
        return False
    for line in status.splitlines():
        if line.startswith("State:"):
            return line.split()[1] not in {"Z", "X"}
    return True


@dataclass
class KafkaBroker:
    """A broker started by kafka.sh in ``base_dir``, listening on ``127.0.0.1:port``."""

    base_dir: Path
    port: int
    _stopped: bool = field(default=False, repr=False)

    @property
    def bootstrap(self) -> str:
        return f"127.0.0.1:{self.port}"

    @property
    def log_path(self) -> Path:
        return self.base_dir / "kafka.log"

    @property
    def pid(self) -> int | None:
        try:
            text = (self.base_dir / "kafka.pid").read_text().strip()
        except FileNotFoundError:
            return None
        return int(text) if text.isdigit() else None

    def is_running(self) -> bool:
        pid = self.pid
        return pid is not None and _pid_running(pid)

    def start(self) -> None:
        """Start (or start again) on the same port and data dir; returns once the broker is serving."""
        _run_script("start", str(self.base_dir), str(self.port), timeout=START_TIMEOUT_S)
        self._stopped = False

    def restart(self) -> None:
        """Bring the broker back after ``stop()`` or ``kill()``; data written before survives."""
        if self.is_running():
            self.stop()
        self.start()

    def stop(self) -> None:
        """Graceful shutdown: SIGTERM, up to 30 s, then SIGKILL."""
        _run_script("stop", str(self.base_dir), timeout=STOP_TIMEOUT_S)
        self._stopped = True

    def kill(self, timeout: float = 10.0) -> None:
        """SIGKILL the broker (simulated crash) and wait until it is gone."""
        pid = self.pid
        if pid is None:
            return
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGKILL)
        deadline = time.monotonic() + timeout
        while _pid_running(pid):
            if time.monotonic() > deadline:
                raise KafkaBrokerError(f"broker pid {pid} still alive {timeout}s after SIGKILL")
            time.sleep(0.05)
        with contextlib.suppress(FileNotFoundError):
            (self.base_dir / "kafka.pid").unlink()

    def log_tail(self, lines: int = 60) -> str:
        try:
            return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-lines:])
        except FileNotFoundError:
            return ""

    def _stop_at_exit(self) -> None:
        if not self._stopped and self.is_running():
            with contextlib.suppress(Exception):
                self.stop()


def start_broker(base_dir: Path, port: int | None = None) -> KafkaBroker:
    """Fetch Kafka if needed and start a fresh single-node broker in ``base_dir`` on a free loopback port.

    The broker is also stopped at interpreter exit if the caller forgets to.
    """
    base_dir = Path(base_dir).resolve()
    base_dir.mkdir(parents=True, exist_ok=True)
    fetch()
    broker = KafkaBroker(base_dir=base_dir, port=port if port is not None else free_port())
    broker.start()
    atexit.register(broker._stop_at_exit)
    return broker


def broker_from_env() -> str | None:
    """Bootstrap servers of an externally managed broker, from ``SPOTZEE_KAFKA_BOOTSTRAP``, if set."""
    value = os.environ.get(BOOTSTRAP_ENV, "").strip()
    return value or None


def kafka_bootstrap_session(base_dir: Path) -> Iterator[str]:
    """Generator for a session fixture: yields a bootstrap string, stopping the broker afterwards if we started it."""
    external = broker_from_env()
    if external is not None:
        yield external
        return
    broker = start_broker(base_dir)
    try:
        yield broker.bootstrap
    finally:
        broker.stop()
