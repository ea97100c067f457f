"""Kafka-side figures: how fast a worker processed, read from the broker after the fact; the faust peer's run.

Both processors are timed the same way, from what they wrote to Kafka (no instrumentation in either): from the
first input record appended after the clock started to the changelog record that made the last input record's
state durable, using the records' own timestamps (``CreateTime``, stamped by each producer on this machine's
clock when it hands the record over). :class:`CpuSampler` gives the CPU each used in that window.

- :func:`worker_window`: Spotzee's worker commits each batch of a partition with a changelog *marker*
  carrying the partition's next input offset (``spotzee/tables/changelog.py``); its events are done at the
  first marker, per partition, whose offset covers every record appended before the last 2xx.
- :func:`run_peer`: the textbook faust agent (``faust_peer.py``) writes one changelog record per table
  update, i.e. per event, and nothing else writes there; its events are done at its newest changelog record.
"""

from __future__ import annotations

import bisect
import contextlib
import sys
import threading
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import orjson
from bench_common import BenchError, progress
from bench_stacks import PARTITIONS, Proc, Stack, delete_topics, spawn, stop_all, wait_group
from kafka import KafkaAdminClient, KafkaConsumer, KafkaProducer, TopicPartition  # type: ignore[import-untyped, unused-ignore]
from kafka.admin import NewTopic  # type: ignore[import-untyped, unused-ignore]

from spotzee.runtime.kafka.admin import CONTACTS_CHANGELOG
from spotzee.streams import topics
from spotzee.tables.changelog import MARKER, marker_input_offset

PEER_SCRIPT = Path(__file__).resolve().parent / "faust_peer.py"
READ_TIMEOUT_S = 60.0
CPU_SAMPLE_INTERVAL_S = 0.05
PEER_WARMUP_USERS = 64
PEER_WARMUP_TIMEOUT_S = 120.0
PEER_LAND_TIMEOUT_S = 300.0
POLL_INTERVAL_S = 0.1
SETTLE_S = 1.0


# -- reading topics -----------------------------------------------------------------------------------------


@contextlib.contextmanager
def reader(bootstrap: str) -> Iterator[Any]:
    """A group-less consumer for offsets and records (nothing is committed).

    Large polls: with the default 500 records per poll, kafka-python reads a few thousand records/s here;
    CRCs unchecked: kafka-python computes CRC-32C in Python (~50 µs per record), and the broker is local."""
    consumer = KafkaConsumer(
        bootstrap_servers=bootstrap,
        group_id=None,
        enable_auto_commit=False,
        max_poll_records=100_000,
        check_crcs=False,
    )
    try:
        yield consumer
    finally:
        consumer.close()


def partitions(topic: str) -> list[Any]:
    return [TopicPartition(topic, index) for index in range(PARTITIONS)]


def end_offsets(consumer: Any, topic: str) -> dict[int, int]:
    return {tp.partition: int(offset) for tp, offset in consumer.end_offsets(partitions(topic)).items()}


def offsets_at(consumer: Any, topic: str, at_ms: int) -> dict[int, int | None]:
    """Per partition, the first offset whose timestamp is >= ``at_ms`` (``None``: no such record yet)."""
    found = consumer.offsets_for_times({tp: at_ms for tp in partitions(topic)})
    return {tp.partition: None if entry is None else int(entry.offset) for tp, entry in found.items()}


def records(consumer: Any, topic: str, partition: int, start: int, end: int) -> Iterator[Any]:
    """The records of ``topic``/``partition`` from offset ``start`` up to ``end`` (exclusive), in order."""
    tp = TopicPartition(topic, partition)
    consumer.assign([tp])
    consumer.seek(tp, start)
    deadline = time.monotonic() + READ_TIMEOUT_S
    while consumer.position(tp) < end:
        if time.monotonic() > deadline:
            raise BenchError(f"reading {topic}[{partition}] {start}..{end} took over {READ_TIMEOUT_S:.0f} s")
        for record in consumer.poll(timeout_ms=500).get(tp, []):
            if record.offset >= end:
                return
            yield record


def timestamp_at(consumer: Any, topic: str, partition: int, offset: int) -> int:
    """The timestamp (ms) of the record at ``offset``, or of the next one if compaction removed it."""
    for record in records(consumer, topic, partition, offset, offset + 1_000_000):
        return int(record.timestamp)
    raise BenchError(f"no record at or after {topic}[{partition}] offset {offset}")


def first_append_after(consumer: Any, topic: str, at_ms: int) -> int:
    """The timestamp (ms) of the first record appended to any partition of ``topic`` at or after ``at_ms``."""
    found = [
        (partition, offset) for partition, offset in offsets_at(consumer, topic, at_ms).items() if offset is not None
    ]
    if not found:
        raise BenchError(f"no record in {topic} since the clock started")
    return min(timestamp_at(consumer, topic, partition, offset) for partition, offset in found)


# -- windows and CPU ----------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Window:
    """From the first input record appended to the state of the last one made durable (epoch ms)."""

    first_ms: int
    done_ms: int

    @property
    def seconds(self) -> float:
        return max(self.done_ms - self.first_ms, 1) / 1000


class CpuSampler:
    """CPU seconds used by some processes, sampled every 50 ms by a thread, for the CPU spent in a window
    known only afterwards (linear between samples; /proc counts in 10 ms ticks)."""

    def __init__(self, procs: list[Proc]) -> None:
        self.procs = procs
        self.samples: list[tuple[float, float]] = []
        self.stop = threading.Event()
        self.thread = threading.Thread(target=self.run, name="cpu-sampler", daemon=True)

    def __enter__(self) -> CpuSampler:
        self.sample()
        self.thread.start()
        return self

    def __exit__(self, *_: object) -> None:
        self.stop.set()
        self.thread.join()

    def sample(self) -> None:
        with contextlib.suppress(OSError):  # a process that exited: the run fails elsewhere
            self.samples.append((time.time(), sum(proc.cpu_s() for proc in self.procs)))

    def run(self) -> None:
        while not self.stop.wait(CPU_SAMPLE_INTERVAL_S):
            self.sample()
        self.sample()

    def at(self, moment: float) -> float:
        times = [at for at, _ in self.samples]
        index = bisect.bisect_left(times, moment)
        if index == 0 or index == len(times):
            raise BenchError(f"no CPU samples around {moment:.3f} (sampled {times[0]:.3f}..{times[-1]:.3f})")
        (t0, c0), (t1, c1) = self.samples[index - 1], self.samples[index]
        return c0 + (c1 - c0) * (moment - t0) / (t1 - t0)

    def between(self, window: Window) -> float:
        """CPU seconds used from ``window.first_ms`` to ``window.done_ms``."""
        return self.at(window.done_ms / 1000) - self.at(window.first_ms / 1000)


# -- the Spotzee worker -----------------------------------------------------------------------------------------


def worker_window(stack: Stack, started_at: float, accepted_at: float) -> Window:
    """From the first record in ``events`` after ``started_at`` to the state of every record appended by
    ``accepted_at`` (the last 2xx) committed: per partition, the first changelog marker whose next input
    offset covers them (the marker is the batch's commit point; its partition is the input's)."""
    events = stack.topic_prefix + topics.EVENTS
    changelog = stack.topic_prefix + CONTACTS_CHANGELOG
    with reader(stack.kafka_bootstrap) as consumer:
        first_ms = first_append_after(consumer, events, int(started_at * 1000))
        ends = end_offsets(consumer, events)
        after = offsets_at(consumer, events, int(accepted_at * 1000) + 1)
        changelog_ends = end_offsets(consumer, changelog)
        done_ms = first_ms
        for partition in range(PARTITIONS):
            target = after[partition]
            target = ends[partition] if target is None else target
            if target == 0:
                continue
            # The marker covering the last record comes after it: search from that record's time on.
            since = offsets_at(consumer, changelog, timestamp_at(consumer, events, partition, target - 1))[partition]
            done_ms = max(done_ms, covering_marker_ms(consumer, changelog, partition, since, changelog_ends, target))
    return Window(first_ms, done_ms)


def covering_marker_ms(
    consumer: Any, changelog: str, partition: int, since: int | None, ends: dict[int, int], target: int
) -> int:
    if since is not None:
        for record in records(consumer, changelog, partition, since, ends[partition]):
            if record.key == MARKER and record.value is not None and marker_input_offset(record.value) >= target:
                return int(record.timestamp)
    raise BenchError(f"FAIL: no changelog marker in {changelog}[{partition}] covers input offset {target - 1}")


# -- the faust peer -----------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class PeerResult:
    events: int
    produced_per_s: float  # kafka-python from the bench process, while the agent consumes
    processed_s: float  # newest changelog record - first load record appended
    processed_per_s: float
    cpu_us_per_event: float  # the peer process's CPU in that window / N
    others_cpu_s: float  # CPU seconds the idle processes passed to run_peer used in that window
    changelog_records: int  # warm-up + N; more means faust processed some events twice
    peak_rss_mib: float


def peer_records(bodies: list[bytes]) -> list[tuple[bytes, bytes]]:
    """(key, value) of every event in the ``/v1/batch`` bodies: its user id, and its JSON as sent."""
    return [
        (str(event["userId"]).encode(), orjson.dumps(event)) for body in bodies for event in orjson.loads(body)["batch"]
    ]


def produce(bootstrap: str, topic: str, items: list[tuple[bytes, bytes]]) -> float:
    """Send every record (acks from all in-sync replicas, as Spotzee's API waits for) and flush; seconds taken."""
    producer = KafkaProducer(bootstrap_servers=bootstrap, acks="all", linger_ms=5, batch_size=256 * 1024)
    try:
        started = time.perf_counter()
        for key, value in items:
            producer.send(topic, key=key, value=value)
        producer.flush()
        return time.perf_counter() - started
    finally:
        producer.close()


def wait_changelog(proc: Proc, consumer: Any, changelog: str, expected: int, timeout_s: float) -> int:
    """Poll the changelog's end offsets every 100 ms until they add up to ``expected``; the total seen."""
    deadline = time.monotonic() + timeout_s
    while (total := sum(end_offsets(consumer, changelog).values())) < expected:
        if time.monotonic() > deadline:
            raise BenchError(f"FAIL: the faust peer made {total:,} of {expected:,} table updates in {timeout_s:.0f} s")
        proc.check_alive()
        time.sleep(POLL_INTERVAL_S)
    return total


def newest_record_ms(consumer: Any, topic: str) -> int:
    return max(
        timestamp_at(consumer, topic, partition, end - 1)
        for partition, end in end_offsets(consumer, topic).items()
        if end
    )


@contextlib.contextmanager
def peer_process(root: Path, bootstrap: str, app_id: str) -> Iterator[Proc]:
    command = [sys.executable, str(PEER_SCRIPT), "--bootstrap", bootstrap, "--app-id", app_id]
    command += ["--data-dir", str(root / "data"), "worker", "-l", "warn"]
    proc = spawn("faust peer", command, root / "peer.log")
    try:
        yield proc
    finally:
        stop_all([proc])


def run_peer(root: Path, bootstrap: str, bodies: list[bytes], others: list[Proc], *, own_broker: bool) -> PeerResult:
    """The textbook faust agent over the events of ``bodies``, on ``bootstrap``, in its own process.

    1. A fresh app id (= consumer group) and its topic ``<app id>-events`` with 8 partitions, created here;
       the app creates its changelog ``<app id>-counts-changelog`` itself; data dir ``root/data``.
    2. The worker starts; once its group is Stable, one event for each of 64 warm-up users is produced and
       waited for (every partition assigned, the table open and written).
    3. The clock starts; the load, serialised before, is produced with kafka-python as fast as it goes while
       the agent consumes it (as the API appends while the Spotzee worker consumes).
    4. Done when the changelog's end offsets add up to warm-up + N (polled every 100 ms); timed from the
       records as the module doc says. ``others`` (the idle Spotzee processes): their CPU in that window.
    """
    items = peer_records(bodies)
    app_id = f"spotzee-bench-peer-{uuid.uuid4().hex[:10]}"
    topic, changelog = f"{app_id}-events", f"{app_id}-counts-changelog"
    progress(f"faust peer: app {app_id}, topic {topic} ({PARTITIONS} partitions)")
    admin = KafkaAdminClient(bootstrap_servers=bootstrap, client_id="spotzee-bench")
    try:
        admin.create_topics([NewTopic(topic, PARTITIONS, 1)])
    finally:
        admin.close()
    try:
        with peer_process(root, bootstrap, app_id) as proc, reader(bootstrap) as consumer:
            wait_group(bootstrap, app_id, 1, proc.check_alive)
            warmup = [
                (f"warmup-{i}".encode(), orjson.dumps({"userId": f"warmup-{i}"})) for i in range(PEER_WARMUP_USERS)
            ]
            produce(bootstrap, topic, warmup)
            wait_changelog(proc, consumer, changelog, PEER_WARMUP_USERS, PEER_WARMUP_TIMEOUT_S)
            progress(f"faust peer: warmed up; producing {len(items):,} events")
            with CpuSampler([proc]) as peer_cpu, CpuSampler(others) as others_cpu:
                started_ms = int(time.time() * 1000)
                produce_s = produce(bootstrap, topic, items)
                expected = PEER_WARMUP_USERS + len(items)
                wait_changelog(proc, consumer, changelog, expected, PEER_LAND_TIMEOUT_S)
            window = Window(first_append_after(consumer, topic, started_ms), newest_record_ms(consumer, changelog))
            time.sleep(SETTLE_S)
            total = sum(end_offsets(consumer, changelog).values())
            if total != expected:
                progress(f"WARN: the faust peer made {total:,} table updates for {expected:,} events")
            progress(f"faust peer: {len(items):,} events processed in {window.seconds:.2f} s")
            return PeerResult(
                events=len(items),
                produced_per_s=len(items) / produce_s,
                processed_s=window.seconds,
                processed_per_s=len(items) / window.seconds,
                cpu_us_per_event=peer_cpu.between(window) / len(items) * 1e6,
                others_cpu_s=others_cpu.between(window),
                changelog_records=total,
                peak_rss_mib=proc.peak_rss_mib(),
            )
    finally:
        if not own_broker:
            delete_topics(bootstrap, app_id)
