"""The FastAPI application: one process's services, started in the lifespan."""

from __future__ import annotations

from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager

from fastapi import FastAPI, Request, Response
from starlette.concurrency import run_in_threadpool

from spotzee.api import (
    contact_routes,
    error_handlers,
    health_routes,
    ingest_routes,
    journey_routes,
    list_routes,
    provider_routes,
    segment_routes,
    sql_routes,
    suppression_routes,
    template_routes,
    tenancy_routes,
    topic_routes,
    unsubscribe_routes,
)
from spotzee.api.metrics import Metrics
from spotzee.schemas.events import MESSAGE_TYPES
from spotzee.services.container import Services
from spotzee.settings import Settings
from spotzee.streams.interface import Clock

DESCRIPTION = """
Apps send behaviour to the **ingestion** routes (`/v1/*`, the Segment spec: existing Segment and
RudderStack libraries work by changing the host); marketers and the console define segments, lists,
templates, providers and journeys through the **admin API** (`/api/v1/*`); analysts query the
history in ClickHouse SQL (`POST /api/v1/sql`).

**Keys.** Ingestion takes a project's write key (`pk_…`) as the HTTP Basic username, the password
empty (scheme `writeKey`; or `writeKey` in the body). The admin API takes `Authorization: Bearer`
(scheme `bearerKey`) with a project's secret key (`sk_…`: its contacts, segments, lists, templates,
providers, journeys and audit) or an organisation's admin key (`ak_…`: projects, keys, audit, SQL).
The project is always the key's, never the body's. A missing, unknown or revoked key is a 401; a key
of the wrong kind a 403.

**Errors.** Every error has one body, `{"error": {"code", "message", "details": [{"path", "reason"}]}}`
(`ErrorResponse`); a malformed body, field or parameter is a **400** whose `details[].path` names
the field (`batch[2].userId`, `rule.rules[1].count.op`, `(body)`). A 429 carries `Retry-After`.

**Limits.** Ingestion: 32 KB per event, 500 KB and 2,500 events per batch (gzip accepted). Admin
JSON bodies: 4 MiB, 256 levels of nesting. A 2xx from ingestion means every event of the request is
durable in the log; processing follows asynchronously.

Health: `GET /health`; Prometheus metrics: `GET /metrics`. Guides: `docs/api.md` in the repository.
"""

TAGS = [
    {"name": "ingestion", "description": "Segment-spec calls with the write key (HTTP Basic)."},
    {"name": "contacts", "description": "Read, patch and erase (GDPR) contacts; secret key."},
    {"name": "segments", "description": "Dynamic segments: definitions, members, counts, previews; secret key."},
    {"name": "lists", "description": "Static lists: members, CSV/NDJSON import and export; secret key."},
    {"name": "templates", "description": "Message templates (Liquid) and previews for a contact; secret key."},
    {"name": "providers", "description": "Delivery providers (SMTP, webhook); secrets are never returned; secret key."},
    {"name": "topics", "description": "Subscription topics (name, description, default consent); secret key."},
    {"name": "suppressions", "description": "The suppression list: addresses never sent to; secret key."},
    {"name": "journeys", "description": "Journeys: drafts, versions, lifecycle, API entry, stats; secret key."},
    {"name": "tenancy", "description": "Projects, keys and the audit history; admin key (audit: secret key too)."},
    {"name": "analytics", "description": "Read-only SQL over the ClickHouse history; installation admin key."},
    {"name": "unsubscribe", "description": "Signed unsubscribe links (RFC 8058 one-click); no key."},
    {"name": "operations", "description": "Liveness, readiness and Prometheus metrics; no key."},
]


def create_app(settings: Settings, *, clock: Clock | None = None, services: Services | None = None) -> FastAPI:
    """``services`` may be given already open (the CLI bootstraps keys before serving)."""
    metrics = Metrics()

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        opened: Services = services if services is not None else await run_in_threadpool(Services.open, settings, clock)
        app.state.services = opened
        metrics.watch(opened.stats)
        await opened.start()
        try:
            yield
        finally:
            await opened.stop()

    app = FastAPI(
        title="Spotzee",
        version="0.1.0",
        summary="Customer-engagement engine: Segment-compatible ingestion, contacts, ClickHouse history.",
        description=DESCRIPTION,
        openapi_tags=TAGS,
        lifespan=lifespan,
    )
    app.state.metrics = metrics
    error_handlers.install(app)

    @app.middleware("http")
    async def count_ingest(request: Request, call_next: Callable[[Request], Awaitable[Response]]) -> Response:
        response = await call_next(request)
        if request.url.path.startswith("/v1/"):
            endpoint = request.url.path.removeprefix("/v1/")
            label = endpoint if endpoint in (*MESSAGE_TYPES, "batch") else "other"
            metrics.ingest_requests.labels(endpoint=label, status=str(response.status_code)).inc()
        return response

    for router in (
        ingest_routes.router,
        contact_routes.router,
        segment_routes.router,
        list_routes.router,
        template_routes.router,
        provider_routes.router,
        journey_routes.router,
        topic_routes.router,
        suppression_routes.router,
        unsubscribe_routes.router,
        tenancy_routes.router,
        sql_routes.router,
        health_routes.router,
    ):
        app.include_router(router)
    return app
