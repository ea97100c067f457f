"""The textbook faust agent Spotzee's Kafka worker is compared with (issue 11, target 3).

A faust-streaming app written the way the faust documentation writes one: a topic of JSON events, one
``Table`` counter per user in the ``rocksdb://`` store (faust-streaming opens RocksDB through rocksdict when
python-rocksdb is absent, as here), one agent; everything else is faust's defaults. The topic is keyed by user
id, like the table, so the agent iterates the topic directly (no ``group_by``, no repartition topic): a user's
counter lives in the partition of the user's events, and faust sends each update to that partition of the
table's changelog. It runs with faust's own command line::

    python bench/faust_peer.py --bootstrap 127.0.0.1:9092 --app-id peer --data-dir /tmp/peer worker -l warn

``bench_kafka.run_peer`` runs it beside ``ingest.py``'s Kafka configurations.
"""

from __future__ import annotations

import argparse
import sys
from typing import Any

import faust


def build_app(bootstrap: str, app_id: str, data_dir: str) -> faust.App:
    app = faust.App(
        app_id,
        broker=f"kafka://{bootstrap}",
        store="rocksdb://",
        topic_partitions=8,
        datadir=data_dir,
        web_enabled=False,
    )
    events = app.topic(f"{app_id}-events", key_serializer="raw", value_serializer="json")
    counts = app.Table("counts", default=int)

    @app.agent(events)
    async def count_events(stream: faust.StreamT[Any]) -> None:
        async for event in stream:
            counts[event["userId"]] += 1

    return app


def main() -> None:
    parser = argparse.ArgumentParser(description="The textbook faust agent; other arguments go to faust's CLI.")
    parser.add_argument("--bootstrap", required=True, help="host:port of a Kafka broker")
    parser.add_argument("--app-id", required=True, help="app id = consumer group; the topic is <app id>-events")
    parser.add_argument("--data-dir", required=True, help="faust's datadir (the RocksDB tables live under it)")
    args, rest = parser.parse_known_args()
    sys.argv = [sys.argv[0], *rest]
    build_app(args.bootstrap, args.app_id, args.data_dir).main()


if __name__ == "__main__":
    main()
