"""Read-only SQL over the ClickHouse history (installation admin key)."""

from __future__ import annotations

from fastapi import APIRouter
from starlette.concurrency import run_in_threadpool

from spotzee.analytics.sink import json_cell
from spotzee.api.deps import AdminKeyDep, ServicesDep
from spotzee.errors import Forbidden
from spotzee.schemas.analytics import SqlQuery, SqlResult

router = APIRouter(prefix="/api/v1", tags=["analytics"])


@router.post("/sql", response_model=SqlResult)
async def run_sql(body: SqlQuery, key: AdminKeyDep, services: ServicesDep) -> SqlResult:
    """Runs in a ``readonly=1`` session with time and row limits. ClickHouse history spans every project of
    the installation, so only the installation organisation's admin keys may query it."""
    if key.organisation_id != services.tenancy.installation_organisation():
        raise Forbidden("SQL over the history is for the installation organisation's admin keys")
    limit = services.settings.sql_max_rows
    columns, rows = await run_in_threadpool(services.analyst.query, body.query)
    truncated = len(rows) > limit
    return SqlResult(columns=columns, rows=[[json_cell(v) for v in row] for row in rows[:limit]], truncated=truncated)
