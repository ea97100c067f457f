"""Lists admin API (secret key of the project): static audiences, import and export."""

from __future__ import annotations

from typing import Annotated, Literal

from fastapi import APIRouter, Query, Request, Response
from fastapi.responses import StreamingResponse

from spotzee.api.bodies import BoundedJSONRoute
from spotzee.api.deps import SecretKeyDep, ServicesDep
from spotzee.api.ingest_routes import read_body
from spotzee.schemas.segment_models import (
    ImportResult,
    ListCreate,
    ListMembersChange,
    ListMembersChanged,
    ListPublic,
    MembersPage,
)

router = APIRouter(prefix="/api/v1/lists", tags=["lists"], route_class=BoundedJSONRoute)
MAX_IMPORT_BYTES = 50 * 1024 * 1024


@router.post("", response_model=ListPublic, status_code=201)
async def create_list(body: ListCreate, key: SecretKeyDep, services: ServicesDep) -> ListPublic:
    return services.lists.public(await services.lists.create(key, body))


@router.get("", response_model=dict[str, list[ListPublic]])
async def list_lists(key: SecretKeyDep, services: ServicesDep) -> dict[str, list[ListPublic]]:
    items = sorted(services.segments.lists(key.project_id or ""), key=lambda d: (d.created_at, d.id))
    return {"items": [services.lists.public(item) for item in items]}


@router.get("/{list_id}", response_model=ListPublic)
async def get_list(list_id: str, key: SecretKeyDep, services: ServicesDep) -> ListPublic:
    return services.lists.public(services.lists.get(key.project_id or "", list_id))


@router.delete("/{list_id}", status_code=204)
async def delete_list(list_id: str, key: SecretKeyDep, services: ServicesDep) -> Response:
    await services.lists.delete(key, list_id)
    return Response(status_code=204)


@router.post("/{list_id}/members", response_model=ListMembersChanged)
async def add_members(
    list_id: str, body: ListMembersChange, key: SecretKeyDep, services: ServicesDep
) -> ListMembersChanged:
    return ListMembersChanged(accepted=await services.lists.change(key, list_id, body.ids, member=True))


@router.post("/{list_id}/members/remove", response_model=ListMembersChanged)
async def remove_members(
    list_id: str, body: ListMembersChange, key: SecretKeyDep, services: ServicesDep
) -> ListMembersChanged:
    return ListMembersChanged(accepted=await services.lists.change(key, list_id, body.ids, member=False))


@router.delete("/{list_id}/members", response_model=ListMembersChanged)
async def delete_members(
    list_id: str, body: ListMembersChange, key: SecretKeyDep, services: ServicesDep
) -> ListMembersChanged:
    return ListMembersChanged(accepted=await services.lists.change(key, list_id, body.ids, member=False))


@router.get("/{list_id}/members", response_model=MembersPage)
async def list_members(
    list_id: str,
    key: SecretKeyDep,
    services: ServicesDep,
    cursor: str | None = None,
    limit: Annotated[int, Query(ge=1, le=1000)] = 100,
) -> MembersPage:
    return services.lists.members(key.project_id or "", list_id, cursor, limit)


@router.post("/{list_id}/import", response_model=ImportResult)
async def import_members(list_id: str, request: Request, key: SecretKeyDep, services: ServicesDep) -> ImportResult:
    services.lists.get(key.project_id or "", list_id)
    body = await read_body(request, MAX_IMPORT_BYTES)  # bounded as it streams; gzip accepted
    return await services.lists.import_rows(key, list_id, body, request.headers.get("content-type", ""))


@router.get("/{list_id}/export")
async def export_members(
    list_id: str, key: SecretKeyDep, services: ServicesDep, format: Literal["csv", "ndjson"] = "csv"
) -> StreamingResponse:
    rows = services.lists.export(key.project_id or "", list_id, format)
    media = "text/csv" if format == "csv" else "application/x-ndjson"
    return StreamingResponse(
        rows, media_type=media, headers={"content-disposition": f'attachment; filename="{list_id}.{format}"'}
    )
