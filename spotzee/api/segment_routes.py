"""Segments admin API (secret key of the project): definitions, members, counts, previews."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Query, Response

from spotzee.api.bodies import BoundedJSONRoute
from spotzee.api.deps import SecretKeyDep, ServicesDep
from spotzee.schemas.rules import SegmentCreate
from spotzee.schemas.segment_models import (
    MembersPage,
    SegmentCount,
    SegmentDefinition,
    SegmentList,
    SegmentPreview,
    SegmentPreviewRequest,
    SegmentPublic,
)

router = APIRouter(prefix="/api/v1/segments", tags=["segments"], route_class=BoundedJSONRoute)


def public(definition: SegmentDefinition) -> SegmentPublic:
    return SegmentPublic.model_validate(definition.model_dump(exclude={"type"}))


@router.post("", response_model=SegmentPublic, status_code=201)
async def create_segment(body: SegmentCreate, key: SecretKeyDep, services: ServicesDep) -> SegmentPublic:
    return public(await services.segments.create(key, body))


@router.get("", response_model=SegmentList)
async def list_segments(key: SecretKeyDep, services: ServicesDep) -> SegmentList:
    """The project's segments, and those whose stored definition can't be read (``quarantined``)."""
    project_id = key.project_id or ""
    items = sorted(services.segments.live(project_id), key=lambda d: (d.created_at, d.id))
    return SegmentList(
        items=[public(services.segments.get(project_id, d.id)) for d in items],
        quarantined=services.segments.quarantined(project_id),
    )


@router.post("/preview", response_model=SegmentPreview)
async def preview_segment(body: SegmentPreviewRequest, key: SecretKeyDep, services: ServicesDep) -> SegmentPreview:
    return await services.segments.preview(key.project_id or "", body.rule, body.sample)


@router.get("/{segment_id}", response_model=SegmentPublic)
async def get_segment(segment_id: str, key: SecretKeyDep, services: ServicesDep) -> SegmentPublic:
    return public(services.segments.get(key.project_id or "", segment_id))


@router.put("/{segment_id}", response_model=SegmentPublic)
async def update_segment(
    segment_id: str, body: SegmentCreate, key: SecretKeyDep, services: ServicesDep
) -> SegmentPublic:
    return public(await services.segments.update(key, segment_id, body))


@router.delete("/{segment_id}", status_code=204)
async def delete_segment(segment_id: str, key: SecretKeyDep, services: ServicesDep) -> Response:
    await services.segments.delete(key, segment_id)
    return Response(status_code=204)


@router.get("/{segment_id}/members", response_model=MembersPage)
async def segment_members(
    segment_id: str,
    key: SecretKeyDep,
    services: ServicesDep,
    cursor: str | None = None,
    limit: Annotated[int, Query(ge=1, le=1000)] = 100,
) -> MembersPage:
    return services.segments.members(key.project_id or "", segment_id, cursor, limit)


@router.get("/{segment_id}/count", response_model=SegmentCount)
async def segment_count(segment_id: str, key: SecretKeyDep, services: ServicesDep) -> SegmentCount:
    project_id = key.project_id or ""
    definition = services.segments.get(project_id, segment_id)
    count = services.segments.count(project_id, segment_id)
    return SegmentCount(count=count, status=definition.status, version=definition.version)
