"""Assembles one process: a runtime (embedded or Kafka), ClickHouse, the sink and tenancy."""

from __future__ import annotations

import contextlib
import logging
import os
import secrets
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Protocol

from pydantic import SecretStr
from starlette.concurrency import run_in_threadpool

from spotzee.analytics.analyst import Analyst
from spotzee.analytics.clickhouse import ClickHouse
from spotzee.analytics.migrations import migrate
from spotzee.analytics.sink import AnalyticsSink
from spotzee.errors import NotFound
from spotzee.files import private_dir
from spotzee.logging import register_secret
from spotzee.providers.safety import OutboundPolicy
from spotzee.providers.sealing import secrets_box
from spotzee.runtime.embedded import EmbeddedRuntime
from spotzee.runtime.kafka.kafka_runtime import KafkaRuntime
from spotzee.runtime.sink_loop import SinkLoop
from spotzee.schemas.provider_models import ProviderDefinition
from spotzee.schemas.template_models import TemplateDefinition
from spotzee.services.template_workers import TemplateWorkers
from spotzee.services.tenancy_service import Tenancy
from spotzee.settings import Settings
from spotzee.streams.contact_processor import ContactProcessor
from spotzee.streams.interface import Clock, clock_from
from spotzee.streams.journey_processor import JourneyRegistry
from spotzee.streams.segment_processor import SegmentRegistry

if TYPE_CHECKING:
    from spotzee.runtime.delivery_loop import DeliveryLoop
    from spotzee.services.journey_service import Journeys
    from spotzee.services.list_service import Lists
    from spotzee.services.provider_service import Providers
    from spotzee.services.scheduler import Scheduler
    from spotzee.services.segment_service import Segments
    from spotzee.services.template_service import Templates

log = logging.getLogger(__name__)


class Sink(Protocol):
    """Whatever writes analytics records to ClickHouse in this process."""

    last_error: str | None

    def start(self) -> None: ...

    def stop(self) -> None: ...

    def alive(self) -> bool: ...

    @property
    def rows_written(self) -> int: ...


@dataclass
class Services:
    settings: Settings
    clock: Clock
    runtime: EmbeddedRuntime | KafkaRuntime
    clickhouse: ClickHouse
    analyst: Analyst  # checked, limited, read-only sessions for POST /api/v1/sql
    sink: Sink | None
    tenancy: Tenancy
    segments: Segments
    lists: Lists
    templates: Templates
    providers: Providers
    journeys: Journeys
    delivery: DeliveryLoop | None = None  # embedded runtime: the sends topic's consumer
    scheduler: Scheduler | None = None  # fires scheduled journeys (both runtimes)
    started: bool = field(default=False)

    @classmethod
    def open(cls, settings: Settings, clock: Clock | None = None, *, run_sink: bool = True) -> Services:
        from spotzee.services.catalogue import Catalogue
        from spotzee.services.journey_service import Journeys
        from spotzee.services.list_service import Lists
        from spotzee.services.provider_service import Providers
        from spotzee.services.scheduler import Scheduler
        from spotzee.services.segment_service import Segments
        from spotzee.services.template_service import Templates

        clock = clock or clock_from(settings.clock_shift_file)
        private_dir(settings.data_dir)
        box = secrets_box(settings.secrets_key, data_dir=settings.data_dir, embedded=settings.runtime == "embedded")
        outbound = outbound_policy(settings)
        registry = SegmentRegistry()
        journey_registry = JourneyRegistry()
        runtime = _open_runtime(settings, clock, registry, journey_registry)
        registry.load(runtime.scan_definitions("segment/"))
        journey_registry.load(runtime.scan_definitions("journey/"))
        try:
            clickhouse = ClickHouse.from_settings(settings)
            migrate(clickhouse)
            analyst = Analyst(
                lambda: clickhouse.read_only(
                    max_seconds=settings.sql_max_seconds,
                    max_rows=settings.sql_max_rows,
                    max_memory_bytes=settings.sql_max_memory_bytes,
                ),
                database=settings.clickhouse_database,
                max_rows=settings.sql_max_rows,
                max_result_bytes=settings.sql_max_result_bytes,
                max_concurrency=settings.sql_max_concurrency,
                max_seconds=settings.sql_max_seconds,
            )
        except Exception:
            runtime.close()
            raise
        sink: Sink | None
        if isinstance(runtime, EmbeddedRuntime):
            loop = SinkLoop(
                runtime.db,
                AnalyticsSink(clickhouse, epoch=runtime.epoch()),
                batch_rows=settings.sink_batch_rows,
                flush_interval=settings.sink_flush_interval,
                wakeup=runtime.outbox_wakeup,
            )
            runtime.sink_offset_reader = lambda: loop.offset
            sink = loop
        elif run_sink:
            from spotzee.runtime.kafka.sink_app import ThreadedSinkApp

            sink = ThreadedSinkApp(settings, clickhouse)
        else:
            sink = None
        tenancy = Tenancy(runtime, clock)
        if not isinstance(runtime, EmbeddedRuntime):
            runtime.on_definition(tenancy.on_definition)  # other API processes write definitions too
            runtime.on_definition(registry.on_definition)
            runtime.on_definition(journey_registry.on_definition)
        segments = Segments(settings, runtime, clickhouse, clock, tenancy, registry)
        lists = Lists(runtime, clock, tenancy, segments)
        catalogue = Catalogue(runtime, tenancy)
        templates = Templates(
            catalogue, clock, outbound, TemplateWorkers(settings.template_workers, settings.template_render_timeout)
        )
        providers = Providers(catalogue, clock, outbound, box)
        journeys = Journeys(catalogue, clock, segments, journey_registry)
        return cls(
            settings,
            clock,
            runtime,
            clickhouse,
            analyst,
            sink,
            tenancy,
            segments,
            lists,
            templates,
            providers,
            journeys,
            _delivery_loop(settings, runtime, clock, templates, providers),
            Scheduler(runtime, journey_registry, registry, tenancy.project_timezone, clock),
        )

    async def start(self) -> None:
        if isinstance(self.runtime, EmbeddedRuntime):
            if self.sink is not None:
                self.sink.start()
            self.runtime.start()
            if self.delivery is not None:
                self.delivery.start()
        else:
            await self.runtime.start()
            if self.sink is not None:
                self.sink.start()
        self.started = True
        self.segments.resume()
        if self.scheduler is not None:
            self.scheduler.start()
        log.info(
            "spotzee started: %s runtime, data dir %s, %d partitions",
            self.settings.runtime,
            self.settings.data_dir,
            self.settings.partitions,
        )

    async def stop(self) -> None:
        """Graceful: drain appends and processing, flush the sink, close stores."""
        if self.started:
            if self.scheduler is not None:
                await self.scheduler.stop()
            await self.segments.stop()
            if self.delivery is not None:
                await run_in_threadpool(self.delivery.stop)
            if isinstance(self.runtime, EmbeddedRuntime):
                await run_in_threadpool(self.runtime.stop)
            else:
                await self.runtime.stop()
            if self.sink is not None:
                await run_in_threadpool(self.sink.stop)
            self.started = False
        self.close()

    def close(self) -> None:
        self.templates.close()
        self.runtime.close()
        self.analyst.close()
        self.clickhouse.close()
        log.info("spotzee stopped")

    def stats(self) -> dict[str, float]:
        runtime = self.runtime
        return {
            "processing_lag_records": runtime.processing_lag(),
            "sink_lag_records": runtime.sink_lag(),
            "timers_pending": runtime.timers_pending(),
            "processed_records": runtime.processed_total,
            "dead_lettered_records": runtime.dead_lettered_total,
            "clickhouse_rows_written": self.sink.rows_written if self.sink is not None else 0,
        }


def outbound_policy(settings: Settings) -> OutboundPolicy:
    """Where tenant-configured connections may go: the same policy for every provider."""
    return OutboundPolicy.from_settings(settings.outbound_allow_private, settings.outbound_allowed_networks)


def unsubscribe_secret(settings: Settings) -> SecretStr:
    """The configured secret, else one made once for this data dir (``unsubscribe.key``, 0600)."""
    if settings.unsubscribe_secret is not None:
        return settings.unsubscribe_secret
    path = settings.data_dir / "unsubscribe.key"
    if not path.exists():
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        with os.fdopen(fd, "w") as handle:
            handle.write(secrets.token_urlsafe(48))
    secret = SecretStr(path.read_text().strip())
    register_secret(secret)
    return secret


def _delivery_loop(
    settings: Settings,
    runtime: EmbeddedRuntime | KafkaRuntime,
    clock: Clock,
    templates: Templates,
    providers: Providers,
) -> DeliveryLoop | None:
    if not isinstance(runtime, EmbeddedRuntime):
        return None  # the Kafka runtime delivers in its workers (runtime/kafka/kafka_delivery.py)
    from spotzee.providers.delivery_service import Deliverer, DeliverySettings
    from spotzee.runtime.delivery_loop import DeliveryLoop

    def template(project_id: str, template_id: str) -> TemplateDefinition | None:
        with contextlib.suppress(NotFound):
            return templates.get(project_id, template_id)
        return None

    def provider_for(project_id: str, channel: str) -> ProviderDefinition | None:
        return providers.first_for(project_id, channel)

    deliverer = Deliverer(
        DeliverySettings(
            public_base_url=settings.resolved_public_base_url(),
            unsubscribe_secret=unsubscribe_secret(settings),
            outbound=outbound_policy(settings),
        ),
        template,
        provider_for,
    )
    return DeliveryLoop(runtime, deliverer, settings, clock)


def _open_runtime(
    settings: Settings, clock: Clock, registry: SegmentRegistry, journeys: JourneyRegistry
) -> EmbeddedRuntime | KafkaRuntime:
    if settings.runtime == "kafka":
        return KafkaRuntime(settings, clock)
    processor = ContactProcessor(
        dedupe_window=settings.dedupe_window,
        recent_limit=settings.recent_events_per_contact,
        segments=registry,
        journeys=journeys,
    )
    return EmbeddedRuntime(settings, processor, clock)
