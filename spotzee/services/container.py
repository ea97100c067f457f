"""Assembles one process: ClickHouse, a runtime (embedded or Kafka) and the application services.

``Services.open`` opens ClickHouse, then the runtime the settings name (``runtime/factory.py``),
then the services over it; ``start`` / ``stop`` start and drain the runtime (which owns what it
runs here: processing, timers, the analytics sink, delivery) and the services' own tasks.
"""

from __future__ import annotations

import contextlib
import logging
import os
import secrets
from dataclasses import dataclass, field

from pydantic import SecretStr
from starlette.concurrency import run_in_threadpool

from spotzee.analytics.analyst import Analyst
from spotzee.analytics.clickhouse import ClickHouse
from spotzee.analytics.migrations import migrate
from spotzee.errors import NotFound
from spotzee.files import private_dir
from spotzee.logging import register_secret
from spotzee.providers.delivery_service import Deliverer, DeliverySettings
from spotzee.providers.safety import OutboundPolicy
from spotzee.providers.sealing import secrets_box
from spotzee.runtime.factory import RuntimeParts, open_runtime
from spotzee.runtime.runtime_protocol import Runtime, Sink
from spotzee.schemas.provider_models import ProviderDefinition
from spotzee.schemas.template_models import TemplateDefinition
from spotzee.services.catalogue import Catalogue
from spotzee.services.journey_service import Journeys
from spotzee.services.list_service import Lists
from spotzee.services.provider_service import Providers
from spotzee.services.scheduler import Scheduler
from spotzee.services.segment_service import Segments
from spotzee.services.suppression_service import IsSuppressed, Suppressions
from spotzee.services.template_service import Templates
from spotzee.services.template_workers import TemplateWorkers
from spotzee.services.tenancy_service import Tenancy
from spotzee.services.topic_service import Topics
from spotzee.settings import Settings
from spotzee.streams.interface import Clock, clock_from
from spotzee.streams.journey_processor import JourneyRegistry
from spotzee.streams.segment_processor import SegmentRegistry

log = logging.getLogger(__name__)


@dataclass
class Services:
    settings: Settings
    clock: Clock
    runtime: Runtime
    clickhouse: ClickHouse
    analyst: Analyst  # checked, limited, read-only sessions for POST /api/v1/sql
    tenancy: Tenancy
    segments: Segments
    lists: Lists
    templates: Templates
    providers: Providers
    journeys: Journeys
    topics: Topics  # subscription topics (consent per topic comes later)
    suppressions: Suppressions  # the project-wide suppression list (checked at send time)
    scheduler: Scheduler | None = None  # fires scheduled journeys (both runtimes)
    started: bool = field(default=False)

    @classmethod
    def open(cls, settings: Settings, clock: Clock | None = None, *, run_sink: bool = True) -> Services:
        """``run_sink``: the Kafka runtime also runs the analytics sink here (the embedded one always does)."""
        clock = clock or clock_from(settings.clock_shift_file)
        private_dir(settings.data_dir)
        box = secrets_box(settings.secrets_key, data_dir=settings.data_dir, embedded=settings.runtime == "embedded")
        outbound = outbound_policy(settings)
        registry = SegmentRegistry()
        journey_registry = JourneyRegistry()
        clickhouse, analyst = _open_clickhouse(settings)

        def deliverer() -> Deliverer:
            # Called by the runtime when it starts, once the templates and providers below exist.
            made = _deliverer(settings, templates, providers, suppressions.is_suppressed)
            made.write_back = runtime.append  # an unregistered push token leaves its contact through the log
            return made

        try:
            runtime = open_runtime(
                settings, clock, RuntimeParts(registry, journey_registry, clickhouse, run_sink, deliverer)
            )
        except Exception:
            analyst.close()
            clickhouse.close()
            raise
        registry.load(runtime.scan_definitions("segment/"))
        journey_registry.load(runtime.scan_definitions("journey/"))
        tenancy = Tenancy(runtime, clock)
        for listener in (tenancy.on_definition, registry.on_definition, journey_registry.on_definition):
            runtime.on_definition(listener)  # other API processes write definitions too (Kafka runtime)
        segments = Segments(settings, runtime, clickhouse, clock, tenancy, registry)
        lists = Lists(runtime, clock, tenancy, segments)
        catalogue = Catalogue(runtime, tenancy)
        templates = Templates(
            catalogue, clock, outbound, TemplateWorkers(settings.template_workers, settings.template_render_timeout)
        )
        providers = Providers(catalogue, clock, outbound, box)
        journeys = Journeys(catalogue, clock, segments, journey_registry)
        suppressions = Suppressions(runtime, tenancy, clock)
        return cls(
            settings,
            clock,
            runtime,
            clickhouse,
            analyst,
            tenancy,
            segments,
            lists,
            templates,
            providers,
            journeys,
            Topics(catalogue, clock),
            suppressions,
            Scheduler(runtime, journey_registry, registry, tenancy.project_timezone, clock),
        )

    @property
    def sink(self) -> Sink | None:
        """The analytics sink the runtime runs in this process, if any (``/health`` checks it)."""
        return self.runtime.sink

    async def start(self) -> None:
        await self.runtime.start()
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
        """Graceful: the scheduler and segment builds, then the runtime drains (appends,
        processing, deliveries, the sink); then everything is closed."""
        if self.started:
            if self.scheduler is not None:
                await self.scheduler.stop()
            await self.segments.stop()
            await run_in_threadpool(self.runtime.stop)
            self.started = False
        self.close()

    def close(self) -> None:
        self.templates.close()
        self.runtime.close()
        self.analyst.close()
        self.clickhouse.close()
        log.info("spotzee stopped")

    def stats(self) -> dict[str, float]:
        return self.runtime.stats()


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


def _open_clickhouse(settings: Settings) -> tuple[ClickHouse, Analyst]:
    """The sink's session (migrated) and the analyst's read-only sessions for ``POST /api/v1/sql``."""
    clickhouse = ClickHouse.from_settings(settings)
    try:
        migrate(clickhouse)
    except Exception:
        clickhouse.close()
        raise
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
    return clickhouse, analyst


def _deliverer(
    settings: Settings, templates: Templates, providers: Providers, is_suppressed: IsSuppressed
) -> Deliverer:
    """The embedded runtime's deliverer: templates and providers through the catalogue services
    (the Kafka runtime's workers read the definitions topic: ``runtime/kafka/kafka_delivery.py``)."""

    def template(project_id: str, template_id: str) -> TemplateDefinition | None:
        with contextlib.suppress(NotFound):
            return templates.get(project_id, template_id)
        return None

    def provider_for(project_id: str, channel: str) -> ProviderDefinition | None:
        return providers.first_for(project_id, channel)

    return Deliverer(
        DeliverySettings(
            public_base_url=settings.resolved_public_base_url(),
            unsubscribe_secret=unsubscribe_secret(settings),
            outbound=outbound_policy(settings),
        ),
        template,
        provider_for,
        suppressed=is_suppressed,
    )
