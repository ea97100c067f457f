"""Read-only SQL over the ClickHouse history (installation admin key)."""

from __future__ import annotations

from starlette.concurrency import run_in_threadpool

from spotzee.analytics.sink import json_cell
from spotzee.api.admin_router import admin_router
from spotzee.api.deps import AdminKeyDep, ServicesDep
from spotzee.api.error_handlers import error_responses
from spotzee.errors import Forbidden
from spotzee.schemas.analytics_models import SqlQuery, SqlResult

router = admin_router("/api/v1", "analytics")


@router.post("/sql", response_model=SqlResult, responses=error_responses(400, 413, 429, 503))
async def run_sql(body: SqlQuery, key: AdminKeyDep, services: ServicesDep) -> SqlResult:
    """One SELECT over the analytics tables, checked on ClickHouse's parse of it (functions and tables
    allow-listed) and run in a ``readonly=1`` session with time, memory, row, result-size and
    concurrency limits (docs/analytics.md). ClickHouse history spans every project of the
    installation, so only the installation organisation's admin keys may query it."""
    if key.organisation_id != services.tenancy.installation_organisation():
        raise Forbidden("SQL over the history is for the installation organisation's admin keys")
    columns, rows, truncated = await run_in_threadpool(services.analyst.query, body.query, cell=json_cell)
    return SqlResult(columns=columns, rows=rows, truncated=truncated)
