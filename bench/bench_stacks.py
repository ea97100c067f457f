"""The processes a benchmark configuration runs against, each on 127.0.0.1 and a temporary directory.

- :func:`embedded_stack`: one ``spotzee up`` process.
- :func:`kafka_broker`: the broker of ``SPOTZEE_KAFKA_BOOTSTRAP`` if set, else a single-node KRaft broker started
  with ``deploy/kafka/kafka.sh`` (stopped again afterwards).
- :func:`kafka_stack`: a fresh topic prefix, ``spotzee topics create``, N ``spotzee worker --no-sink`` processes
  (the contact processor) and one ``spotzee api --runtime kafka`` (ingestion, reads, and the chDB sink in-process).

Every process logs to a file next to its data; a process that dies shows the tail of its log in the error.
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import socket
import subprocess
import sys
import time
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

import httpx
from bench_common import HOST, BenchError, progress
from kafka import KafkaAdminClient  # type: ignore[import-untyped, unused-ignore]

KAFKA_SH = Path(__file__).resolve().parents[1] / "deploy" / "kafka" / "kafka.sh"
PARTITIONS = 8
PROCESSOR_GROUP = "spotzee-processor"
HEALTH_TIMEOUT_S = 120.0
GROUP_TIMEOUT_S = 120.0
COMMAND_TIMEOUT_S = 300.0
STOP_TIMEOUT_S = 60.0


@dataclass
class Proc:
    """A started process and the file its output goes to."""

    name: str
    process: subprocess.Popen[bytes]
    log_path: Path

    def peak_rss_mib(self) -> float:
        """``VmHWM`` (peak resident set) of the process, in MiB."""
        for line in Path(f"/proc/{self.process.pid}/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024
        raise BenchError(f"no VmHWM in /proc/{self.process.pid}/status ({self.name})")

    def cpu_s(self) -> float:
        """User + system CPU seconds the process has used so far."""
        fields = Path(f"/proc/{self.process.pid}/stat").read_text().rsplit(")", 1)[1].split()
        return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")

    def check_alive(self) -> None:
        if self.process.poll() is not None:
            raise BenchError(f"{self.name} exited with code {self.process.returncode}:\n{log_tail(self.log_path)}")


@dataclass
class Stack:
    """A running Spotzee installation: where to send events and SQL, and the processes behind it."""

    name: str
    url: str
    write_key: str
    admin_key: str
    api: Proc
    workers: list[Proc] = field(default_factory=list)
    kafka_bootstrap: str = ""  # Kafka runtime: the broker and this installation's topic prefix
    topic_prefix: str = ""

    def check_alive(self) -> None:
        for proc in [self.api, *self.workers]:
            proc.check_alive()


# -- processes ------------------------------------------------------------------------------------


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind((HOST, 0))
        return int(sock.getsockname()[1])


def log_tail(log_path: Path, lines: int = 30) -> str:
    try:
        return "\n".join(log_path.read_text(errors="replace").splitlines()[-lines:])
    except OSError:
        return f"(no log at {log_path})"


def spotzee_command(*args: str) -> list[str]:
    return [sys.executable, "-m", "spotzee", *args]


def spawn(name: str, command: list[str], log_path: Path, env: dict[str, str] | None = None) -> Proc:
    """Start ``command`` with its output in ``log_path`` (cwd: the log's directory)."""
    progress(f"starting {name}: {' '.join(command[1:])}")
    log_path.parent.mkdir(parents=True, exist_ok=True)
    with log_path.open("wb") as log:
        process = subprocess.Popen(command, stdout=log, stderr=subprocess.STDOUT, cwd=log_path.parent, env=env)
    return Proc(name, process, log_path)


def stop_all(procs: list[Proc]) -> None:
    """SIGTERM to every running process at once, then wait; SIGKILL whatever is left after the timeout."""
    running = [proc for proc in procs if proc.process.poll() is None]
    for proc in running:
        proc.process.send_signal(signal.SIGTERM)
    deadline = time.monotonic() + STOP_TIMEOUT_S
    for proc in running:
        try:
            proc.process.wait(timeout=max(0.1, deadline - time.monotonic()))
        except subprocess.TimeoutExpired:
            progress(f"{proc.name} did not stop within {STOP_TIMEOUT_S:.0f} s of SIGTERM; sending SIGKILL")
            proc.process.kill()
            proc.process.wait()


def run_command(command: list[str], env: dict[str, str] | None = None) -> str:
    """Run a short command to completion; its output, or a BenchError with it."""
    try:
        done = subprocess.run(command, env=env, capture_output=True, text=True, timeout=COMMAND_TIMEOUT_S, check=False)
    except subprocess.TimeoutExpired as exc:
        raise BenchError(f"{' '.join(command)} did not finish within {COMMAND_TIMEOUT_S:.0f} s") from exc
    if done.returncode != 0:
        raise BenchError(f"{' '.join(command)} exited with {done.returncode}:\n{done.stdout}{done.stderr}")
    return done.stdout


def wait_healthy(stack: Stack) -> None:
    """Until ``GET /health`` answers 200, checking that every process of the stack is still running."""
    deadline = time.monotonic() + HEALTH_TIMEOUT_S
    while time.monotonic() < deadline:
        stack.check_alive()
        with contextlib.suppress(httpx.HTTPError):
            if httpx.get(f"{stack.url}/health", timeout=5).status_code == 200:
                return
        time.sleep(0.2)
    raise BenchError(f"GET /health did not return 200 within {HEALTH_TIMEOUT_S:.0f} s:\n{log_tail(stack.api.log_path)}")


def read_keys(data_dir: Path) -> tuple[str, str]:
    keys = json.loads((data_dir / "keys.json").read_text())
    return str(keys["write_key"]), str(keys["admin_key"])


def open_stack(name: str, api: Proc, port: int, data_dir: Path, workers: list[Proc]) -> Stack:
    stack = Stack(name=name, url=f"http://{HOST}:{port}", write_key="", admin_key="", api=api, workers=workers)
    wait_healthy(stack)
    stack.write_key, stack.admin_key = read_keys(data_dir)
    return stack


# -- embedded ---------------------------------------------------------------------------------------


@contextlib.contextmanager
def embedded_stack(root: Path, env: dict[str, str] | None = None) -> Iterator[Stack]:
    """``spotzee up`` on ``root/data`` (the whole stack in one process); ``env``: extra settings."""
    port = free_port()
    data_dir = root / "data"
    command = spotzee_command("up", "--data-dir", str(data_dir), "--port", str(port), "--host", HOST)
    server = spawn("server", command, root / "server.log", {**os.environ, **(env or {})})
    try:
        yield open_stack("embedded", server, port, data_dir, [])
    finally:
        stop_all([server])


# -- Kafka ------------------------------------------------------------------------------------------


@contextlib.contextmanager
def kafka_broker(root: Path) -> Iterator[tuple[str, bool]]:
    """(bootstrap, started here): ``SPOTZEE_KAFKA_BOOTSTRAP``'s broker, else one started in ``root/kafka``."""
    existing = os.environ.get("SPOTZEE_KAFKA_BOOTSTRAP")
    if existing:
        progress(f"using the Kafka broker at {existing} (SPOTZEE_KAFKA_BOOTSTRAP)")
        yield existing, False
        return
    run_command(["bash", str(KAFKA_SH), "fetch"])
    broker_dir = root / "kafka"
    port = free_port()
    progress(f"starting a Kafka broker on {HOST}:{port} (deploy/kafka/kafka.sh)")
    try:
        run_command(["bash", str(KAFKA_SH), "start", str(broker_dir), str(port)])
        yield f"{HOST}:{port}", True
    finally:
        progress("stopping the Kafka broker")
        subprocess.run(["bash", str(KAFKA_SH), "stop", str(broker_dir)], capture_output=True, check=False)


def kafka_env(bootstrap: str, prefix: str) -> dict[str, str]:
    return {
        **os.environ,
        "SPOTZEE_KAFKA_BOOTSTRAP": bootstrap,
        "SPOTZEE_KAFKA_TOPIC_PREFIX": prefix,
        "SPOTZEE_PARTITIONS": str(PARTITIONS),
        # Workers deliver: they sign unsubscribe links with the secret the API verifies, and open
        # the provider secrets the API sealed.
        "SPOTZEE_UNSUBSCRIBE_SECRET": uuid.uuid4().hex + uuid.uuid4().hex,
        "SPOTZEE_SECRETS_KEY": uuid.uuid4().hex + uuid.uuid4().hex,
    }


def start_worker(root: Path, env: dict[str, str], index: int) -> Proc:
    """``spotzee worker --no-sink``: the contact processor only (the chDB sink runs in the API process)."""
    worker_id = f"worker-{index}"
    command = spotzee_command("worker", "--no-sink", "--data-dir", str(root / "data" / "workers"))
    command += ["--worker-id", worker_id]
    return spawn(worker_id, command, root / f"{worker_id}.log", {**env, "SPOTZEE_LOG_LEVEL": "WARNING"})


def start_kafka_api(root: Path, env: dict[str, str], port: int) -> Proc:
    command = spotzee_command("api", "--runtime", "kafka", "--data-dir", str(root / "data"))
    command += ["--port", str(port), "--host", HOST]
    return spawn("api", command, root / "api.log", env)


def group_state(client: KafkaAdminClient, group: str) -> tuple[str, int]:
    """(state, member count) of a consumer group."""
    described = client.describe_groups([group])[group]
    return str(described["group_state"]), len(described["members"])


def wait_group_stable(stack: Stack, bootstrap: str, group: str, members: int) -> None:
    """Until ``group`` is Stable with ``members`` members: every worker holds its partitions."""
    wait_group(bootstrap, group, members, stack.check_alive)


def wait_group(bootstrap: str, group: str, members: int, check_alive: Callable[[], None]) -> None:
    """Until ``group`` is Stable with ``members`` members, calling ``check_alive`` between polls."""
    client = KafkaAdminClient(bootstrap_servers=bootstrap, client_id="spotzee-bench")
    try:
        deadline = time.monotonic() + GROUP_TIMEOUT_S
        state, count = group_state(client, group)
        while (state, count) != ("Stable", members):
            if time.monotonic() > deadline:
                raise BenchError(f"group {group} is {state} with {count} members, not Stable with {members}")
            check_alive()
            time.sleep(0.5)
            state, count = group_state(client, group)
    finally:
        client.close()


def delete_topics(bootstrap: str, prefix: str) -> None:
    """Best effort: drop this configuration's topics from a broker this run did not start."""
    with contextlib.suppress(Exception):
        client = KafkaAdminClient(bootstrap_servers=bootstrap, client_id="spotzee-bench")
        try:
            names = [name for name in client.list_topics() if name.startswith(prefix)]
            if names:
                client.delete_topics(names)
        finally:
            client.close()


def kafka_name(workers: int) -> str:
    return f"kafka {workers} worker{'' if workers == 1 else 's'}"


@contextlib.contextmanager
def kafka_stack(
    root: Path,
    bootstrap: str,
    workers: int,
    *,
    own_broker: bool,
    prepare: Callable[[dict[str, str]], None] | None = None,
    env: dict[str, str] | None = None,
) -> Iterator[Stack]:
    """A fresh installation on ``bootstrap``: its own topic prefix, N workers and the API.

    ``prepare(env)``, if given, runs once the topics exist and before any process starts (``env``: the
    installation's environment), e.g. to fill ``root/data`` (the API's data dir) first. ``env``: extra
    settings for every process.
    """
    prefix = f"b{uuid.uuid4().hex[:10]}."
    env = {**kafka_env(bootstrap, prefix), **(env or {})}
    progress(f"creating the topics with prefix {prefix} ({PARTITIONS} partitions)")
    run_command(spotzee_command("topics", "create"), env)
    procs: list[Proc] = []
    try:
        if prepare is not None:
            prepare(env)
        port = free_port()
        env["SPOTZEE_PUBLIC_BASE_URL"] = f"http://{HOST}:{port}"  # links in messages point at the API
        procs += [start_worker(root, env, index) for index in range(1, workers + 1)]
        api = start_kafka_api(root, env, port)
        procs.append(api)
        stack = open_stack(kafka_name(workers), api, port, root / "data", procs[:-1])
        stack.kafka_bootstrap, stack.topic_prefix = bootstrap, prefix
        wait_group_stable(stack, bootstrap, prefix + PROCESSOR_GROUP, workers)
        yield stack
    finally:
        stop_all(procs)
        if not own_broker:
            delete_topics(bootstrap, prefix)
