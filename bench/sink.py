"""Analytics sink throughput: encoded analytics records -> rows/s in chDB, in-process (``make bench-sink``).

``python bench/sink.py [--records 200000] [--batch 5000] [--seed 7] [--bare] [--json]``

What runs: the sink's own code on the embedded runtime's path -- ``runtime/sink_loop._decoded`` (msgspec decode of
each outbox value into its row Struct) then ``AnalyticsSink.write`` (rows grouped by table, pivoted into columns,
one column-oriented clickhouse-connect insert per table with its ``insert_deduplication_token``) -- against chDB
opened through the project's ``ClickHouse`` wrapper in a temporary directory, with the migrations applied. No
RocksDB, no sink thread: the bench's thread calls them, batch after batch, as ``SinkLoop`` does.

Setup, not measured: ``--records`` analytics records, encoded with ``record_codec.dumps`` as the processors emit
them. Events come from ``bench/segments.py``'s ``live_bodies`` (90% track with the history's event mix and
properties, 10% identify changing a trait), each sent as analytics.js sends it: ``timestamp``/``sentAt`` and a
browser ``context`` (library, page, userAgent, locale, ip; ``--bare`` leaves it out, as the HTTP benchmarks do).
Each becomes the ``EventRow`` the contact processor writes (``raw`` is the event's JSON); an identify adds a
``ContactChangeRow`` per changed trait; every 20th event a ``SegmentChangeRow``, every 10th two ``JourneyStepRow``s
(a step completed, the next entered). One batch is written before the clock starts (the per-table DESCRIBE is not
counted), then the set-up's objects are frozen out of the garbage collector, as ``spotzee up`` does after start-up.

Measured per batch of ``--batch`` records (5,000, the default ``SPOTZEE_SINK_BATCH_ROWS``), wall time and process
CPU time: decode; then ``write``, split by wrappers this script installs (module and instance attributes, removed
afterwards) into pivot (``sink.columns_of``: the rows' fields as columns, datetimes as epoch milliseconds), engine
(chDB running the ``INSERT ... FROM INFILE``: parsing the Native block, sorting, compressing and writing the parts;
chDB's background merges count where they run), clickhouse-connect (the rest of ``ClickHouse.insert_columns``:
the Native block and the temp file chDB reads it from) and other (grouping by table, tokens). After the run every
table's ``count()`` must equal the rows written and the events' ``timestamp``, ``sent_at`` and ``received_at`` must
sum to the same epoch milliseconds as the records (the DateTime64(3) values are exact).

Figures (2 shared cores, load average ~5 from other work, so CPU µs/row is the steadier measure; default run:
200,000 records with a browser context, 1,219 B each, 4 tables per write), before -> after the msgspec sink,
alternating runs: decode 10.0 -> 2.6 µs/row; rows to Native (row lists + clickhouse-connect's pivot and datetime
conversion -> pivot + clickhouse-connect + other) 7.3 -> 5.7; chDB's engine ~10 either way. Rows per CPU second
37,000 -> 54,000, without the engine (the sink's own cost) 57,000 -> 120,000; wall 20,000 -> 34,000 rows/s. The
engine dominates: ~3-4 ms per insert whatever its size (a part per table per write) plus ~1.5 µs per row, so
``--batch 20000`` takes it from ~6.5 to ~2.8 µs/row (``--bare``: 82,000 -> 131,000 rows per CPU second).
"""

from __future__ import annotations

import argparse
import gc
import json
import random
import shutil
import sys
import tempfile
import time
import uuid
from collections import Counter
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import orjson
from bench_common import BenchError, progress
from segments import Scale, live_bodies

import spotzee.analytics.sink as sink_module
from spotzee.analytics.clickhouse import ClickHouse
from spotzee.analytics.migrations import migrate
from spotzee.analytics.sink import TABLES, AnalyticsSink, epoch_ms
from spotzee.runtime.sink_loop import _decoded
from spotzee.schemas.analytics_models import (
    AnalyticsRecord,
    ContactChangeRow,
    EventRow,
    JourneyStepRow,
    SegmentChangeRow,
)
from spotzee.streams.record_codec import dumps

PROJECT = "prj_bench"
STAGES = ("decode", "write", "pivot", "insert", "engine")
USER_AGENT = (
    "Mozilla/5.0 (Macintosh; Intel Mac OS X 10_15_7) AppleWebKit/537.36 (KHTML, like Gecko) "
    "Chrome/126.0.0.0 Safari/537.36"
)
PAGES = ["/", "/pricing", "/docs", "/blog", "/product", "/cart", "/checkout", "/account"]


# -- records --------------------------------------------------------------------------------------------------


def browser_context(rng: random.Random, path: str) -> dict[str, Any]:
    return {
        "library": {"name": "analytics.js", "version": "next-1.70.0"},
        "page": {
            "path": path,
            "referrer": "https://www.google.com/",
            "search": "",
            "title": f"{path.strip('/').title() or 'Home'} | Shop",
            "url": f"https://shop.example.com{path}",
        },
        "userAgent": USER_AGENT,
        "locale": rng.choice(["en-US", "en-GB", "de-DE", "fr-FR"]),
        "ip": f"203.0.113.{rng.randrange(1, 255)}",
    }


def _json(value: Any) -> str:
    return orjson.dumps(value).decode()


def iso(moment: datetime) -> str:
    return moment.isoformat(timespec="milliseconds").replace("+00:00", "Z")


def generate(count: int, seed: int, bare: bool) -> list[AnalyticsRecord]:
    """``count`` records in the mix the processors emit for the live events (module docstring)."""
    rng = random.Random(seed)
    run_id = uuid.uuid4().hex[:8]
    scale = Scale(contacts=10_000, history_events=0, live_events=max(100, count))
    items = (item for body in live_bodies(scale, 500, seed, run_id) for item in orjson.loads(body)["batch"])
    now = datetime.now(UTC).replace(microsecond=0)
    traits: dict[str, dict[str, Any]] = {}
    out: list[AnalyticsRecord] = []
    for index, item in enumerate(items):
        received_at = now + timedelta(microseconds=index * 1_337)
        sent_at = received_at - timedelta(milliseconds=rng.randrange(20, 400))
        timestamp = sent_at - timedelta(milliseconds=rng.randrange(0, 50))
        item["timestamp"], item["sentAt"] = iso(timestamp), iso(sent_at)
        if not bare:
            item["context"] = browser_context(rng, rng.choice(PAGES))
        user_id = item["userId"]
        out.append(
            EventRow(
                project_id=PROJECT,
                message_id=item["messageId"],
                event_type=item["type"],
                event=item.get("event", item["type"]),
                contact_id=user_id,
                user_id=user_id,
                anonymous_id="",
                timestamp=datetime.fromisoformat(item["timestamp"]),
                original_timestamp=datetime.fromisoformat(item["timestamp"]),
                sent_at=datetime.fromisoformat(item["sentAt"]),
                received_at=received_at,
                properties=_json(item.get("properties", {})),
                traits=_json(item.get("traits", {})),
                context=_json(item.get("context", {})),
                raw=_json(item),
            )
        )
        for path, new in item.get("traits", {}).items():
            old = traits.setdefault(user_id, {}).get(path)
            traits[user_id][path] = new
            out.append(
                ContactChangeRow(
                    project_id=PROJECT,
                    contact_id=user_id,
                    change_id=str(uuid.UUID(int=rng.getrandbits(128))),
                    changed_at=received_at,
                    source="identify",
                    path=path,
                    old_value=_json(old),
                    new_value=_json(new),
                )
            )
        if index % 20 == 0:
            out.append(
                SegmentChangeRow(
                    project_id=PROJECT,
                    segment_id=f"seg_{rng.randrange(20):02d}",
                    contact_id=user_id,
                    version=1,
                    change=rng.choice(["entered", "exited"]),
                    at=received_at,
                    cause=f"event:{item['messageId']}",
                    change_id=str(uuid.UUID(int=rng.getrandbits(128))),
                )
            )
        if index % 10 == 0:
            run = str(uuid.UUID(int=rng.getrandbits(128)))
            for seq, (step, kind) in enumerate((("wait_1", "completed"), ("send_1", "entered"))):
                out.append(
                    JourneyStepRow(
                        project_id=PROJECT,
                        journey_id="jrn_flow",
                        journey_version=3,
                        run_id=run,
                        contact_id=user_id,
                        step_id=step,
                        visit=1,
                        kind=kind,
                        at=received_at,
                        seq=seq,
                        detail=_json({"cause": f"event:{item['messageId']}", "step_type": step.split("_")[0]}),
                    )
                )
        if len(out) >= count:
            break
    return out[:count]


# -- timing ---------------------------------------------------------------------------------------------------


@dataclass
class Clock:
    """Wall and process CPU seconds per stage; ``insert`` is the whole of ``ClickHouse.insert_columns``, ``engine``
    the part of it in chDB (subtracted from ``insert`` when reported)."""

    seconds: dict[str, float] = field(default_factory=lambda: dict.fromkeys(STAGES, 0.0))
    cpu: dict[str, float] = field(default_factory=lambda: dict.fromkeys(STAGES, 0.0))
    calls: Counter[str] = field(default_factory=Counter)
    on: bool = False

    def timed(self, stage: str, fn: Callable[..., Any]) -> Callable[..., Any]:
        def call(*args: Any, **kwargs: Any) -> Any:
            if not self.on:
                return fn(*args, **kwargs)
            start, cpu = time.perf_counter(), time.process_time()
            try:
                return fn(*args, **kwargs)
            finally:
                self.seconds[stage] += time.perf_counter() - start
                self.cpu[stage] += time.process_time() - cpu
                self.calls[stage] += 1

        return call

    def measure(self, stage: str, fn: Callable[[], Any]) -> Any:
        """``fn()`` timed as ``stage`` (a stage of the loop itself, not a wrapped function)."""
        return self.timed(stage, fn)()


class Wrappers:
    """Times ``sink.columns_of``, the sink's ``ClickHouse.insert_columns`` and chDB's query call (the insert's
    statement); ``uninstall`` puts the originals back."""

    def __init__(self, clock: Clock, clickhouse: ClickHouse) -> None:
        self.clock = clock
        self.clickhouse = clickhouse
        self.backend = getattr(clickhouse.client, "_backend", None)
        self.engine_timed = self.backend is not None and hasattr(self.backend, "_run")

    def install(self) -> None:
        self.columns_of = sink_module.columns_of
        sink_module.columns_of = self.clock.timed("pivot", self.columns_of)
        self.clickhouse.insert_columns = self.clock.timed("insert", self.clickhouse.insert_columns)
        if self.engine_timed:
            self.backend._run = self.clock.timed("engine", self.backend._run)

    def uninstall(self) -> None:
        sink_module.columns_of = self.columns_of
        del self.clickhouse.insert_columns
        if self.engine_timed:
            del self.backend._run


# -- the run --------------------------------------------------------------------------------------------------


@dataclass
class Config:
    records: int
    batch: int
    seed: int
    bare: bool
    as_json: bool


def batches(encoded: list[bytes], size: int, first_seq: int) -> Iterator[list[tuple[int, bytes]]]:
    for start in range(0, len(encoded), size):
        yield [(first_seq + start + i, value) for i, value in enumerate(encoded[start : start + size])]


@dataclass(frozen=True)
class Expected:
    """What ClickHouse must hold after the run: rows per table, and the events' datetimes summed as epoch ms."""

    rows: dict[str, int]
    event_ms: tuple[int, int, int]
    mix: dict[str, float]

    @classmethod
    def of(cls, records: list[AnalyticsRecord]) -> Expected:
        events = [record for record in records if isinstance(record, EventRow)]
        sums = [
            sum(epoch_ms(getattr(e, name)) or 0 for e in events) for name in ("timestamp", "sent_at", "received_at")
        ]
        classes = Counter(type(record).__name__ for record in records)
        return cls(
            rows=dict(Counter(TABLES[type(record)].name for record in records)),
            event_ms=(sums[0], sums[1], sums[2]),
            mix={name: count / len(records) for name, count in classes.most_common()},
        )


def run(config: Config, root: Path) -> dict[str, Any]:
    progress(f"generating {config.records + config.batch:,} records")
    records = generate(config.records + config.batch, config.seed, config.bare)
    encoded = [dumps(record) for record in records]
    expected, mix = Expected.of(records), Expected.of(records[config.batch :]).mix
    del records  # only bytes stay: the run's own objects are the sink's
    gc.collect()
    warmup, measured = encoded[: config.batch], encoded[config.batch :]
    clickhouse = ClickHouse(f"chdb://{root / 'clickhouse'}")
    try:
        migrate(clickhouse)
        sink = AnalyticsSink(clickhouse, epoch="bench")
        for batch in batches(warmup, config.batch, 0):
            sink.write(_decoded(batch))
        clock = Clock()
        wrappers = Wrappers(clock, clickhouse)
        wrappers.install()
        gc.collect()
        gc.freeze()  # as ``spotzee up`` does after start-up (cli.py): set-up objects stay out of collections
        writes = 0
        progress(f"writing {len(measured):,} records in batches of {config.batch:,}")
        clock.on = True
        cpu = time.process_time()
        wall = time.perf_counter()
        try:
            for batch in batches(measured, config.batch, len(warmup)):
                decoded = clock.measure("decode", lambda batch=batch: _decoded(batch))
                clock.measure("write", lambda decoded=decoded: sink.write(decoded))
                writes += 1
        finally:
            clock.on = False
            wall = time.perf_counter() - wall
            cpu = time.process_time() - cpu
            wrappers.uninstall()
            gc.unfreeze()
        check(clickhouse, expected)
        sizes = sum(map(len, measured)) / len(measured)
        return result(config, Measured(len(measured), sizes, mix, writes, wall, cpu), clock)
    finally:
        clickhouse.close()


def check(clickhouse: ClickHouse, expected: Expected) -> None:
    """Every row landed once, and datetimes to the millisecond."""
    for table, rows in expected.rows.items():
        _, answer = clickhouse.query(f"SELECT count() FROM {table}")
        if int(answer[0][0]) != rows:
            raise BenchError(f"{table}: {answer[0][0]} rows in ClickHouse, {rows} written")
    _, answer = clickhouse.query(
        "SELECT sum(toUnixTimestamp64Milli(timestamp)), sum(toUnixTimestamp64Milli(assumeNotNull(sent_at))), "
        "sum(toUnixTimestamp64Milli(received_at)) FROM events"
    )
    if tuple(int(v) for v in answer[0]) != expected.event_ms:
        raise BenchError(f"events datetimes differ: ClickHouse sums {answer[0]}, records {expected.event_ms}")


@dataclass(frozen=True)
class Measured:
    rows: int
    record_bytes: float
    mix: dict[str, float]
    writes: int
    wall_s: float
    cpu_s: float


def result(config: Config, m: Measured, clock: Clock) -> dict[str, Any]:
    rows = m.rows

    def split(seconds: dict[str, float]) -> dict[str, float]:
        engine = seconds["engine"]
        stages = {
            "decode": seconds["decode"],
            "pivot": seconds["pivot"],
            "clickhouse-connect": seconds["insert"] - engine,
            "engine": engine,
            "other": seconds["write"] - seconds["pivot"] - seconds["insert"],
        }
        return {stage: s / rows * 1e6 for stage, s in stages.items()}

    wall_total = clock.seconds["decode"] + clock.seconds["write"]
    cpu_total = clock.cpu["decode"] + clock.cpu["write"]
    return {
        "records": rows,
        "batch": config.batch,
        "writes": m.writes,
        "inserts": clock.calls["insert"],
        "bare": config.bare,
        "mix": m.mix,
        "encoded_bytes_per_record": m.record_bytes,
        "engine_timed": clock.calls["engine"] > 0,
        "wall_us_per_row": split(clock.seconds),
        "cpu_us_per_row": split(clock.cpu),
        "rows_per_s": rows / wall_total,
        "rows_per_s_decode": rows / clock.seconds["decode"],
        "rows_per_s_write": rows / clock.seconds["write"],
        "rows_per_cpu_s": rows / cpu_total,
        "rows_per_cpu_s_without_engine": rows / (cpu_total - clock.cpu["engine"]),
        "wall_s": m.wall_s,
        "process_cpu_s": m.cpu_s,
    }


def format_table(r: dict[str, Any]) -> str:
    mix = ", ".join(f"{share:.0%} {name}" for name, share in r["mix"].items())
    wall, cpu = r["wall_us_per_row"], r["cpu_us_per_row"]
    wall_total, cpu_total = sum(wall.values()), sum(cpu.values())
    lines = [
        f"Analytics sink into chDB: {r['records']:,} records ({mix}), {r['encoded_bytes_per_record']:.0f} B each "
        f"encoded{' (bare events)' if r['bare'] else ''}; {r['writes']} writes of {r['batch']:,} records "
        f"({r['inserts'] / r['writes']:.1f} tables each)",
        "",
        f"{'stage':<20} {'wall µs/row':>12} {'CPU µs/row':>11} {'CPU share':>10}",
    ]
    what = {
        "decode": "msgspec: bytes -> row Structs (sink_loop._decoded)",
        "pivot": "rows -> columns, datetimes -> epoch ms (sink.columns_of)",
        "clickhouse-connect": "Native block, temp file (ClickHouse.insert_columns less the engine)",
        "engine": "chDB: INSERT ... FROM INFILE (parse, sort, compress, write parts)",
        "other": "grouping by table, tokens (the rest of AnalyticsSink.write)",
    }
    for stage in wall:
        lines.append(
            f"{stage:<20} {wall[stage]:>12.2f} {cpu[stage]:>11.2f} {cpu[stage] / cpu_total:>10.1%}  {what[stage]}"
        )
    lines += [
        f"{'total':<20} {wall_total:>12.2f} {cpu_total:>11.2f} {1:>10.0%}",
        "",
        f"rows/s end to end (decode + write): {r['rows_per_s']:,.0f} wall, {r['rows_per_cpu_s']:,.0f} per CPU second",
        f"rows/s decode only: {r['rows_per_s_decode']:,.0f}; write only: {r['rows_per_s_write']:,.0f} (wall)",
        f"rows per CPU second without chDB's engine (the sink's own cost): {r['rows_per_cpu_s_without_engine']:,.0f}",
        f"wall {r['wall_s']:.2f} s, process CPU {r['process_cpu_s']:.2f} s (chDB's threads included)",
    ]
    if not r["engine_timed"]:
        lines.append("(chDB's query call could not be timed: engine is counted in clickhouse-connect)")
    return "\n".join(lines)


def positive_int(text: str) -> int:
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError("must be at least 1")
    return value


def parse_args(argv: list[str] | None) -> Config:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0] if __doc__ else None)
    parser.add_argument("--records", type=positive_int, default=200_000, help="records measured (default 200,000)")
    parser.add_argument("--batch", type=positive_int, default=5_000, help="records per write (default 5,000)")
    parser.add_argument("--seed", type=int, default=7)
    parser.add_argument("--bare", action="store_true", help="events without a browser context")
    parser.add_argument("--json", dest="as_json", action="store_true", help="print the figures as JSON")
    args = parser.parse_args(argv)
    return Config(args.records, args.batch, args.seed, args.bare, args.as_json)


def main(argv: list[str] | None = None) -> int:
    config = parse_args(argv)
    root = Path(tempfile.mkdtemp(prefix="spotzee-bench-sink-"))
    try:
        figures = run(config, root)
    except BenchError as exc:
        print(f"FAIL {exc}", file=sys.stderr)
        return 1
    finally:
        shutil.rmtree(root, ignore_errors=True)
    print(json.dumps(figures, indent=2) if config.as_json else format_table(figures))
    return 0


if __name__ == "__main__":
    sys.exit(main())
