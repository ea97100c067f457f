"""Prometheus metrics of one app instance (own registry, so tests can run many apps)."""

from __future__ import annotations

from collections.abc import Callable, Iterable

from prometheus_client import CollectorRegistry, Counter, Histogram
from prometheus_client.core import GaugeMetricFamily, Metric
from prometheus_client.registry import Collector


class _LagCollector(Collector):
    def __init__(self, read: Callable[[], dict[str, float]]) -> None:
        self.read = read

    def collect(self) -> Iterable[Metric]:
        values = self.read()
        for name, help_text in (
            ("spotzee_processing_lag_records", "Records appended to the log and not yet processed."),
            ("spotzee_sink_lag_records", "Analytics records not yet written to ClickHouse."),
            ("spotzee_delivery_lag_records", "Sends not yet settled by this process's delivery agent."),
            ("spotzee_timers_pending", "Timers scheduled and not yet fired."),
            ("spotzee_processed_records", "Records processed since start."),
            ("spotzee_dead_lettered_records", "Records sent to the dead-letter topic since start."),
            ("spotzee_clickhouse_rows_written", "Rows written to ClickHouse since start."),
        ):
            key = name.removeprefix("spotzee_")
            if key in values:
                yield GaugeMetricFamily(name, help_text, value=values[key])


class Metrics:
    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        self.ingest_requests = Counter(
            "spotzee_ingest_requests",
            "Ingestion requests by endpoint and HTTP status.",
            ["endpoint", "status"],
            registry=self.registry,
        )
        self.ingest_events = Counter(
            "spotzee_ingest_events", "Events in ingestion requests by outcome.", ["status"], registry=self.registry
        )
        self.ingest_latency = Histogram(
            "spotzee_ingest_latency_seconds",
            "Ingestion request latency (until durable).",
            ["endpoint"],
            registry=self.registry,
        )

    def watch(self, read: Callable[[], dict[str, float]]) -> None:
        self.registry.register(_LagCollector(read))
