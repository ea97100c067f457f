"""Ingestion benchmark: real Spotzee processes on 127.0.0.1, driven over HTTP; one table for every configuration.

Configurations (``--runtime embedded|kafka|all``, default all):

- **embedded**: one ``spotzee up`` process (``bench_stacks.embedded_stack``), ``--events`` events.
- **kafka N workers** for each N of ``--workers`` (default ``1,2``): a broker (``SPOTZEE_KAFKA_BOOTSTRAP``, else
  one started with ``deploy/kafka/kafka.sh`` and stopped at the end), and per configuration a fresh topic prefix
  with 8 partitions, ``spotzee api --runtime kafka`` (ingestion + the chDB sink) and N ``spotzee worker --no-sink``
  processes (``bench_stacks.kafka_stack``), ``--kafka-events`` events.

Each configuration (``bench_traffic.measure``) warms up, then sends Segment-spec events (track / identify / page
over ``--users`` users, unique ``messageId``s, serialised before the clock starts) through ``POST /v1/batch``
from ``--clients`` concurrent clients (as fast as they are accepted, or at ``--rate`` events/s: batches on a fixed
schedule, an offered load), with a latency probe alongside, and reports:

- **events/s accepted**: N / (last 2xx - first send).
- **events/s processed**: N / (time all N distinct messageIds are in ClickHouse - first send).
- **latency 2xx -> ClickHouse** p50 / p99: a ``bench_probe`` track event every ~100 ms from its own client;
  ClickHouse polled every ~25 ms; latency = first seen - its 2xx.
- **batch latency** p50 / p99: wall time of each accepted ``POST /v1/batch``.
- **peak RSS**: ``VmHWM`` of the API (or ``spotzee up``) process and of each worker, read before they stop.

Kafka configurations also report, read from the broker afterwards (``bench_kafka.py``):

- **worker events/s processed (state committed)**: N / (first record appended to ``events`` after the first send
  -> the changelog marker that commits the state of every record appended before the last 2xx), from the
  records' own timestamps.
- **faust peer events/s processed** (``--peer``, the default): the textbook faust agent (``faust_peer.py``: one
  ``Table`` counter per user, ``rocksdb://``) over the same events on the same broker, run once right after the
  first Kafka configuration while its processes stay up, idle; timed the same way through its table's changelog.
  And the **ratio** worker / peer.

Any non-2xx other than 429, a process that dies, events not all in ClickHouse within 300 s, a probe that never
shows up, or a final count other than exactly N rows and N distinct events prints a ``FAIL`` line and exits
non-zero. Every process and broker started here is stopped and the temporary directory deleted.
Progress goes to stderr; the table (or ``--json``) to stdout.
"""

from __future__ import annotations

import argparse
import json
import math
import shutil
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, replace
from pathlib import Path

from bench_common import BenchError, percentile, progress
from bench_kafka import CpuSampler, PeerResult, run_peer, worker_window
from bench_stacks import PARTITIONS, Stack, embedded_stack, kafka_broker, kafka_stack
from bench_traffic import Measurement, build_batches, measure

MAX_BATCH_EVENTS = 2500
DEFAULT_EVENTS = 100_000
DEFAULT_KAFKA_EVENTS = 10_000
RUNTIMES = {"embedded": ("embedded",), "kafka": ("kafka",), "all": ("embedded", "kafka")}


@dataclass(frozen=True)
class Config:
    runtimes: tuple[str, ...]
    workers: tuple[int, ...]
    events: int
    kafka_events: int
    clients: int
    batch_size: int
    users: int
    seed: int
    peer: bool
    as_json: bool
    rate: float = 0.0  # offered load, events/s; 0: as fast as the server accepts


@dataclass(frozen=True)
class Result:
    configuration: str
    events: int
    offered_per_s: float  # NaN: as fast as accepted
    clients: int
    batch_size: int
    accepted_per_s: float
    processed_per_s: float
    latency_p50_ms: float
    latency_p99_ms: float
    probes: int
    batch_p50_ms: float
    batch_p99_ms: float
    batch_max_ms: float
    api_peak_rss_mib: float
    worker_peak_rss_mib: tuple[float, ...]
    retries_429: int
    worker_processed_per_s: float = math.nan  # Kafka: N / (first event in the topic -> its state committed)
    worker_cpu_us_per_event: float = math.nan  # the workers' CPU in that window / N
    peer_processed_per_s: float = math.nan  # the faust peer of the same run, timed the same way
    peer_cpu_us_per_event: float = math.nan
    peer_ratio: float = math.nan  # worker_processed_per_s / peer_processed_per_s


# -- command line -------------------------------------------------------------------------------


def positive_int(text: str) -> int:
    value = int(text.replace("_", ""))
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be >= 1, got {value}")
    return value


def worker_counts(text: str) -> tuple[int, ...]:
    counts = tuple(positive_int(part) for part in text.split(",") if part.strip())
    if not counts:
        raise argparse.ArgumentTypeError("give at least one worker count, e.g. 1,2")
    return counts


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description="Spotzee ingestion benchmark (see the module docstring).")
    parser.add_argument("--runtime", choices=sorted(RUNTIMES), default="all", help="what to run (default all)")
    parser.add_argument("--workers", type=worker_counts, default=(1, 2), help="Kafka worker counts (default 1,2)")
    parser.add_argument("--events", type=positive_int, default=DEFAULT_EVENTS, help="embedded events (100000)")
    parser.add_argument(
        "--kafka-events",
        type=positive_int,
        help=f"events per Kafka configuration (min(--events, {DEFAULT_KAFKA_EVENTS}))",
    )
    parser.add_argument("--clients", type=positive_int, default=8, help="concurrent clients (default 8)")
    parser.add_argument("--batch-size", type=positive_int, default=500, help="events per /v1/batch (default 500)")
    parser.add_argument("--users", type=positive_int, default=50_000, help="distinct userIds (default 50000)")
    parser.add_argument("--seed", type=int, default=42, help="random seed for the generated data")
    parser.add_argument(
        "--peer",
        action=argparse.BooleanOptionalAction,
        default=True,
        help="Kafka runs: also run the textbook faust agent (bench/faust_peer.py) on the same broker (default on)",
    )
    parser.add_argument(
        "--rate",
        type=positive_int,
        help="offered load in events/s: batches sent on a fixed schedule (default: as fast as accepted); "
        "the 2xx -> ClickHouse latency at a given load, e.g. --rate 5000",
    )
    parser.add_argument("--json", dest="as_json", action="store_true", help="print the results as JSON")
    return parser


def parse_args(argv: list[str] | None = None) -> Config:
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.batch_size > MAX_BATCH_EVENTS:
        parser.error(f"--batch-size is limited to {MAX_BATCH_EVENTS} events by the server")
    kafka_events = args.kafka_events or min(args.events, DEFAULT_KAFKA_EVENTS)
    return Config(
        runtimes=RUNTIMES[args.runtime],
        workers=args.workers,
        events=args.events,
        kafka_events=kafka_events,
        clients=args.clients,
        batch_size=args.batch_size,
        users=args.users,
        seed=args.seed,
        peer=args.peer,
        as_json=args.as_json,
        rate=float(args.rate or 0),
    )


# -- run ------------------------------------------------------------------------------------------


def batches(config: Config, events: int) -> list[bytes]:
    progress(f"generating {events:,} events for {config.users:,} users")
    return build_batches(events, config.batch_size, config.users, config.seed)


def result_of(
    config: Config, stack: Stack, measured: Measurement, worker_s: float = math.nan, worker_cpu_s: float = math.nan
) -> Result:
    """The row values of one configuration; RSS is read here, while the processes still run."""
    return Result(
        configuration=stack.name,
        events=measured.events,
        offered_per_s=config.rate or math.nan,
        clients=config.clients,
        batch_size=config.batch_size,
        accepted_per_s=measured.events / measured.accepted_s,
        processed_per_s=measured.events / measured.processed_s,
        latency_p50_ms=percentile(measured.probe_latencies_ms, 50),
        latency_p99_ms=percentile(measured.probe_latencies_ms, 99),
        probes=len(measured.probe_latencies_ms),
        batch_p50_ms=percentile(measured.batch_latencies_ms, 50),
        batch_p99_ms=percentile(measured.batch_latencies_ms, 99),
        batch_max_ms=max(measured.batch_latencies_ms),
        api_peak_rss_mib=stack.api.peak_rss_mib(),
        worker_peak_rss_mib=tuple(worker.peak_rss_mib() for worker in stack.workers),
        retries_429=measured.retries_429,
        worker_processed_per_s=measured.events / worker_s,
        worker_cpu_us_per_event=worker_cpu_s / measured.events * 1e6,
    )


def run_embedded(config: Config, root: Path) -> Result:
    bodies = batches(config, config.events)
    with embedded_stack(root) as stack:
        return result_of(config, stack, measure(stack, bodies, config.events, config.clients, config.rate))


def run_kafka(config: Config, root: Path) -> tuple[list[Result], PeerResult | None]:
    """Each Kafka configuration; the faust peer runs once, right after the first one is measured, while that
    configuration's API and workers stay up with nothing to do."""
    bodies = batches(config, config.kafka_events)
    results: list[Result] = []
    peer: PeerResult | None = None
    with kafka_broker(root) as (bootstrap, own_broker):
        for workers in config.workers:
            with kafka_stack(root / f"kafka-{workers}", bootstrap, workers, own_broker=own_broker) as stack:
                with CpuSampler(stack.workers) as worker_cpu:
                    measured = measure(stack, bodies, config.kafka_events, config.clients, config.rate)
                window = worker_window(stack, measured.started_at, measured.accepted_at)
                progress(f"{stack.name}: state of all {measured.events:,} events committed in {window.seconds:.2f} s")
                results.append(result_of(config, stack, measured, window.seconds, worker_cpu.between(window)))
                if config.peer and peer is None:
                    progress("faust peer: next, on the same broker; the Spotzee processes stay up, idle")
                    idle = [stack.api, *stack.workers]
                    peer = run_peer(root / "faust-peer", bootstrap, bodies, idle, own_broker=own_broker)
    if peer is not None:
        rate, cpu = peer.processed_per_s, peer.cpu_us_per_event
        results = [
            replace(
                result,
                peer_processed_per_s=rate,
                peer_cpu_us_per_event=cpu,
                peer_ratio=result.worker_processed_per_s / rate,
            )
            for result in results
        ]
    return results, peer


def run(config: Config) -> tuple[list[Result], PeerResult | None]:
    root = Path(tempfile.mkdtemp(prefix="spotzee-bench-"))
    try:
        results: list[Result] = []
        peer: PeerResult | None = None
        if "embedded" in config.runtimes:
            results.append(run_embedded(config, root / "embedded"))
        if "kafka" in config.runtimes:
            kafka_results, peer = run_kafka(config, root)
            results += kafka_results
        return results, peer
    finally:
        shutil.rmtree(root, ignore_errors=True)


# -- report ---------------------------------------------------------------------------------------


def number(value: float, decimals: int = 0) -> str:
    return "-" if math.isnan(value) else f"{value:,.{decimals}f}"


def workers_rss(result: Result) -> str:
    if not result.worker_peak_rss_mib:
        return "- (in-process)"
    return " / ".join(number(value) for value in result.worker_peak_rss_mib)


def offered(result: Result) -> str:
    return "as accepted" if math.isnan(result.offered_per_s) else number(result.offered_per_s)


def table_rows(results: list[Result]) -> list[tuple[str, list[str]]]:
    def row(name: str, cell: Callable[[Result], str]) -> tuple[str, list[str]]:
        return name, [cell(result) for result in results]

    return [
        row("events", lambda r: f"{r.events:,}"),
        row("clients x batch size", lambda r: f"{r.clients} x {r.batch_size}"),
        row(
            "offered load events/s", lambda r: "as accepted" if math.isnan(r.offered_per_s) else number(r.offered_per_s)
        ),
        row("events/s accepted (until last 2xx)", lambda r: number(r.accepted_per_s)),
        row("events/s processed (all in ClickHouse)", lambda r: number(r.processed_per_s)),
        row("worker events/s processed (state committed)", lambda r: number(r.worker_processed_per_s)),
        row("faust peer events/s processed (same run)", lambda r: number(r.peer_processed_per_s)),
        row("ratio worker / faust peer", lambda r: number(r.peer_ratio, 2)),
        row("worker CPU µs per event (workers' CPU / N)", lambda r: number(r.worker_cpu_us_per_event)),
        row("faust peer CPU µs per event", lambda r: number(r.peer_cpu_us_per_event)),
        row("latency 2xx -> ClickHouse p50 ms", lambda r: number(r.latency_p50_ms)),
        row("latency 2xx -> ClickHouse p99 ms", lambda r: number(r.latency_p99_ms)),
        row("latency probes", lambda r: str(r.probes)),
        row("batch latency p50 ms", lambda r: number(r.batch_p50_ms)),
        row("batch latency p99 ms", lambda r: number(r.batch_p99_ms)),
        row("peak RSS MiB, API / server", lambda r: number(r.api_peak_rss_mib)),
        row("peak RSS MiB, each worker", workers_rss),
        row("429 retries", lambda r: str(r.retries_429)),
    ]


def format_table(results: list[Result], peer: PeerResult | None) -> str:
    header = ("metric", [result.configuration for result in results])
    rows = [header, *table_rows(results)]
    names = max(len(name) for name, _ in rows)
    widths = [max(len(cells[index]) for _, cells in rows) for index in range(len(results))]

    def line(name: str, cells: list[str]) -> str:
        return "  ".join([f"{name:<{names}}", *(f"{cell:>{width}}" for cell, width in zip(cells, widths, strict=True))])

    separator = line("-" * names, ["-" * width for width in widths])
    lines = [line(*header), separator, *(line(*row) for row in rows[1:])]
    if peer is not None:
        lines += ["", peer_line(peer)]
    return "\n".join(lines)


def peer_line(peer: PeerResult) -> str:
    return (
        f"faust peer (bench/faust_peer.py, same broker, after the first Kafka configuration): {peer.events:,} events, "
        f"produced {number(peer.produced_per_s)}/s, processed {number(peer.processed_per_s)}/s, "
        f"{peer.changelog_records:,} changelog records, peak RSS {number(peer.peak_rss_mib)} MiB; "
        f"in {number(peer.processed_s, 1)} s the idle Spotzee processes used {number(peer.others_cpu_s, 1)} CPU s"
    )


def results_json(results: list[Result], peer: PeerResult | None) -> str:
    def rounded(value: object) -> object:
        if isinstance(value, float):
            return None if math.isnan(value) else round(value, 1)
        if isinstance(value, tuple | list):
            return [rounded(item) for item in value]
        return value

    data = [{key: rounded(value) for key, value in asdict(result).items()} for result in results]
    peer_data = None if peer is None else {key: rounded(value) for key, value in asdict(peer).items()}
    return json.dumps({"partitions": PARTITIONS, "results": data, "faust_peer": peer_data}, indent=2)


def main(argv: list[str] | None = None) -> int:
    config = parse_args(argv)
    wall = time.perf_counter()
    try:
        results, peer = run(config)
    except BenchError as exc:
        print(str(exc) if str(exc).startswith("FAIL") else f"FAIL: {exc}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print("FAIL: interrupted (everything started was stopped)", file=sys.stderr)
        return 130
    print(results_json(results, peer) if config.as_json else format_table(results, peer))
    progress(f"done in {time.perf_counter() - wall:.1f} s wall time")
    return 0


if __name__ == "__main__":
    sys.exit(main())
