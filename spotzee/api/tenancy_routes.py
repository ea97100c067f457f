"""Organisation admin API (admin key): projects, keys, and the audit history."""

from __future__ import annotations

import json
from datetime import datetime

from starlette.concurrency import run_in_threadpool

from spotzee.api.admin_router import admin_router
from spotzee.api.deps import AdminKeyDep, Cursor, PageLimit, SecretOrAdminKeyDep, ServicesDep
from spotzee.api.error_handlers import error_responses
from spotzee.errors import InvalidInput
from spotzee.schemas.tenancy_models import (
    AdminKeyCreate,
    AuditEntryPublic,
    AuditPage,
    KeyCreate,
    KeyIssued,
    KeyKind,
    KeyPublic,
    ProjectCreate,
    ProjectIssued,
    ProjectPublic,
)

router = admin_router("/api/v1", "tenancy")


@router.post("/projects", status_code=201, response_model=ProjectIssued, responses=error_responses(400, 413, 503))
async def create_project(body: ProjectCreate, key: AdminKeyDep, services: ServicesDep) -> ProjectIssued:
    return services.tenancy.create_project(key, body)


@router.get("/projects", response_model=list[ProjectPublic])
async def list_projects(key: AdminKeyDep, services: ServicesDep) -> list[ProjectPublic]:
    return services.tenancy.list_projects(key.organisation_id)


@router.get("/projects/{project_id}/keys", response_model=list[KeyPublic], responses=error_responses(404))
async def list_keys(project_id: str, key: AdminKeyDep, services: ServicesDep) -> list[KeyPublic]:
    return services.tenancy.list_keys(key.organisation_id, project_id)


@router.post(
    "/projects/{project_id}/keys",
    status_code=201,
    response_model=KeyIssued,
    responses=error_responses(400, 404, 413, 503),
)
async def create_key(project_id: str, body: KeyCreate, key: AdminKeyDep, services: ServicesDep) -> KeyIssued:
    return services.tenancy.create_key(key, project_id, body)


@router.get("/keys", response_model=list[KeyPublic])
async def list_admin_keys(key: AdminKeyDep, services: ServicesDep) -> list[KeyPublic]:
    """The organisation's admin keys (project keys are listed under their project)."""
    return services.tenancy.list_admin_keys(key.organisation_id)


@router.post("/keys", status_code=201, response_model=KeyIssued, responses=error_responses(400, 413, 503))
async def create_admin_key(body: AdminKeyCreate, key: AdminKeyDep, services: ServicesDep) -> KeyIssued:
    return services.tenancy.create_admin_key(key, body)


@router.post("/keys/{key_id}/rotate", status_code=201, response_model=KeyIssued, responses=error_responses(404, 503))
async def rotate_key(key_id: str, key: AdminKeyDep, services: ServicesDep) -> KeyIssued:
    return services.tenancy.rotate_key(key, key_id)


@router.delete("/keys/{key_id}", response_model=KeyPublic, responses=error_responses(404, 409, 503))
async def revoke_key(key_id: str, key: AdminKeyDep, services: ServicesDep) -> KeyPublic:
    return services.tenancy.revoke_key(key, key_id)


@router.get("/audit", response_model=AuditPage, responses=error_responses(400, 503))
async def audit(
    key: SecretOrAdminKeyDep, services: ServicesDep, limit: PageLimit = 100, cursor: Cursor = None
) -> AuditPage:
    """Newest first. An admin key sees its organisation; a secret key its own project."""
    where = ["organisation_id = {org:String}"]
    params: dict[str, object] = {"org": key.organisation_id, "limit": limit + 1}
    if key.kind is KeyKind.secret:
        where.append("project_id = {project:String}")
        params["project"] = key.project_id
    if cursor:
        at, _, audit_id = cursor.partition("|")
        try:
            params["cursor_at"] = datetime.fromisoformat(at)
        except ValueError as exc:
            raise InvalidInput(
                "cursor: not a cursor from this API", details=[{"path": "cursor", "reason": "malformed"}]
            ) from exc
        params["cursor_id"] = audit_id
        where.append("(at, audit_id) < ({cursor_at:DateTime64(3, 'UTC')}, {cursor_id:String})")
    sql = (
        "SELECT audit_id, organisation_id, project_id, actor_key_id, action, target, at, before, after "
        f"FROM audit_log FINAL WHERE {' AND '.join(where)} ORDER BY at DESC, audit_id DESC LIMIT {{limit:UInt32}}"
    )
    columns, rows = await run_in_threadpool(services.clickhouse.query, sql, parameters=params)
    entries = []
    for row in rows[:limit]:
        item = dict(zip(columns, row, strict=True))
        item["before"], item["after"] = json.loads(item["before"]), json.loads(item["after"])
        entries.append(AuditEntryPublic.model_validate(item))
    next_cursor = f"{entries[-1].at.isoformat()}|{entries[-1].audit_id}" if len(rows) > limit else None
    return AuditPage(items=entries, next_cursor=next_cursor)
