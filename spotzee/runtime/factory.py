"""Opens the runtime the settings name, with what it runs in this process."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

from spotzee.analytics.clickhouse import ClickHouse
from spotzee.providers.delivery_service import Deliverer
from spotzee.runtime.embedded.embedded_runtime import EmbeddedRuntime
from spotzee.runtime.kafka.kafka_runtime import KafkaRuntime
from spotzee.runtime.runtime_protocol import Runtime
from spotzee.settings import Settings
from spotzee.streams.contact_processor import ContactProcessor
from spotzee.streams.interface import Clock
from spotzee.streams.journey_processor import JourneyRegistry
from spotzee.streams.segment_processor import SegmentRegistry


@dataclass(frozen=True)
class RuntimeParts:
    """What a runtime is opened with besides the settings and the clock."""

    segments: SegmentRegistry  # the contact processor's definitions (embedded: it processes here)
    journeys: JourneyRegistry
    clickhouse: ClickHouse  # where the analytics sink writes
    run_sink: bool = True  # Kafka: also run the analytics sink in this process (embedded: always)
    deliverer: Callable[[], Deliverer] | None = None  # embedded: deliver sends here (Kafka: the workers do)


def open_runtime(settings: Settings, clock: Clock, parts: RuntimeParts) -> Runtime:
    if settings.runtime == "kafka":
        # The API process's side: appends, a read replica, definitions; processing runs on the workers.
        return KafkaRuntime(settings, clock, clickhouse=parts.clickhouse if parts.run_sink else None)
    processor = ContactProcessor(
        dedupe_window=settings.dedupe_window,
        recent_limit=settings.recent_events_per_contact,
        segments=parts.segments,
        journeys=parts.journeys,
    )
    return EmbeddedRuntime(settings, processor, clock, clickhouse=parts.clickhouse, deliverer=parts.deliverer)
