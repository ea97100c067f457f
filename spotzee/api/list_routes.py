"""Lists admin API (secret key of the project): static audiences, import and export."""

from __future__ import annotations

from typing import Literal

from fastapi import Request, Response
from fastapi.responses import StreamingResponse

from spotzee.api.admin_router import admin_router
from spotzee.api.deps import Cursor, PageLimit, ProjectId, SecretKeyDep, ServicesDep
from spotzee.api.error_handlers import error_responses
from spotzee.api.ingest_routes import read_body
from spotzee.schemas.segment_models import (
    ImportResult,
    ListCreate,
    ListMembersChange,
    ListMembersChanged,
    ListPublic,
    MembersPage,
)

router = admin_router("/api/v1/lists", "lists")
MAX_IMPORT_BYTES = 50 * 1024 * 1024
# A membership change goes through the log: 429 and 503 as for ingestion.
CHANGE_ERRORS = error_responses(400, 404, 413, 429, 503)


@router.post("", response_model=ListPublic, status_code=201, responses=error_responses(400, 413, 503))
async def create_list(body: ListCreate, key: SecretKeyDep, services: ServicesDep) -> ListPublic:
    return services.lists.public(await services.lists.create(key, body))


@router.get("", response_model=dict[str, list[ListPublic]])
async def list_lists(project_id: ProjectId, services: ServicesDep) -> dict[str, list[ListPublic]]:
    items = sorted(services.segments.lists(project_id), key=lambda d: (d.created_at, d.id))
    return {"items": [services.lists.public(item) for item in items]}


@router.get("/{list_id}", response_model=ListPublic, responses=error_responses(404))
async def get_list(list_id: str, project_id: ProjectId, services: ServicesDep) -> ListPublic:
    return services.lists.public(services.lists.get(project_id, list_id))


@router.delete("/{list_id}", status_code=204, responses=error_responses(404, 409, 429, 503))
async def delete_list(list_id: str, key: SecretKeyDep, services: ServicesDep) -> Response:
    await services.lists.delete(key, list_id)
    return Response(status_code=204)


@router.post("/{list_id}/members", response_model=ListMembersChanged, responses=CHANGE_ERRORS)
async def add_members(
    list_id: str, body: ListMembersChange, key: SecretKeyDep, services: ServicesDep
) -> ListMembersChanged:
    return ListMembersChanged(accepted=await services.lists.change(key, list_id, body.ids, member=True))


@router.post("/{list_id}/members/remove", response_model=ListMembersChanged, responses=CHANGE_ERRORS)
async def remove_members(
    list_id: str, body: ListMembersChange, key: SecretKeyDep, services: ServicesDep
) -> ListMembersChanged:
    """``DELETE /{list_id}/members`` as a POST, for clients that can't send a DELETE with a body."""
    return ListMembersChanged(accepted=await services.lists.change(key, list_id, body.ids, member=False))


@router.delete("/{list_id}/members", response_model=ListMembersChanged, responses=CHANGE_ERRORS)
async def delete_members(
    list_id: str, body: ListMembersChange, key: SecretKeyDep, services: ServicesDep
) -> ListMembersChanged:
    return await remove_members(list_id, body, key, services)


@router.get("/{list_id}/members", response_model=MembersPage, responses=error_responses(400, 404))
async def list_members(
    list_id: str, project_id: ProjectId, services: ServicesDep, cursor: Cursor = None, limit: PageLimit = 100
) -> MembersPage:
    return services.lists.members(project_id, list_id, cursor, limit)


# The route reads its own body (up to 50 MB, gzip accepted), so FastAPI can't describe it.
_IMPORT_BODY = {
    "requestBody": {
        "required": True,
        "content": {
            "text/csv": {"schema": {"type": "string"}, "example": "id,email\nu1,ada@example.com\n"},
            "application/json": {"schema": {"type": "array", "items": {"type": "object"}}},
            "application/x-ndjson": {"schema": {"type": "string"}},
        },
    }
}


@router.post("/{list_id}/import", response_model=ImportResult, responses=CHANGE_ERRORS, openapi_extra=_IMPORT_BODY)
async def import_members(
    list_id: str, request: Request, key: SecretKeyDep, project_id: ProjectId, services: ServicesDep
) -> ImportResult:
    services.lists.get(project_id, list_id)
    body = await read_body(request, MAX_IMPORT_BYTES)  # bounded as it streams; gzip accepted
    return await services.lists.import_rows(key, list_id, body, request.headers.get("content-type", ""))


@router.get("/{list_id}/export", responses=error_responses(400, 404))
async def export_members(
    list_id: str, project_id: ProjectId, services: ServicesDep, format: Literal["csv", "ndjson"] = "csv"
) -> StreamingResponse:
    rows = services.lists.export(project_id, list_id, format)
    media = "text/csv" if format == "csv" else "application/x-ndjson"
    return StreamingResponse(
        rows, media_type=media, headers={"content-disposition": f'attachment; filename="{list_id}.{format}"'}
    )
