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
    template_routes,
    tenancy_routes,
    unsubscribe_routes,
)
from spotzee.api.metrics import Metrics
from spotzee.schemas.events import MESSAGE_TYPES
from spotzee.services.container import Services
from spotzee.settings import Settings
from spotzee.streams.interface import Clock


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
        unsubscribe_routes.router,
        tenancy_routes.router,
        sql_routes.router,
        health_routes.router,
    ):
        app.include_router(router)
    return app
