"""``GET /health`` (liveness + readiness) and ``GET /metrics`` (Prometheus)."""

from __future__ import annotations

from fastapi import APIRouter
from fastapi.responses import JSONResponse, PlainTextResponse, Response
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest
from starlette.concurrency import run_in_threadpool

from spotzee.api.deps import MetricsDep, ServicesDep
from spotzee.api.error_handlers import envelope_responses, error_responses

router = APIRouter(tags=["operations"])


@router.get(
    "/health",
    responses={
        503: {"description": "Not ready (`status`: `degraded`): the same body, `ready` false"},
        **error_responses("default"),
    },
)
async def health(services: ServicesDep) -> JSONResponse:
    """Liveness and readiness: the log, the state store and ClickHouse (with the analytics sink)."""
    runtime = services.runtime.health()
    clickhouse = await run_in_threadpool(services.clickhouse.ping)
    sink = services.sink
    sink_ok = sink is None or (sink.alive() and sink.last_error is None)
    checks = {
        "log": "ok" if runtime.log else runtime.detail.get("log", "down"),
        "state": "ok" if runtime.state else runtime.detail.get("state", "down"),
        "clickhouse": "ok" if clickhouse and sink_ok else ((sink.last_error if sink else None) or "unreachable"),
    }
    ready = all(v == "ok" for v in checks.values())
    body = {
        "status": "ok" if ready else "degraded",
        "live": True,
        "ready": ready,
        "checks": checks,
        "processing_lag": services.runtime.processing_lag(),
        "sink_lag": services.runtime.sink_lag(),
    }
    return JSONResponse(body, status_code=200 if ready else 503)


@router.get("/metrics", response_class=PlainTextResponse, responses=envelope_responses("default"))
async def metrics(metrics: MetricsDep) -> Response:
    """Prometheus text exposition: ingestion counters and latency, processing and sink lag."""
    return Response(generate_latest(metrics.registry), media_type=CONTENT_TYPE_LATEST)
