"""Segments admin API (secret key of the project): definitions, members, counts, previews."""

from __future__ import annotations

from fastapi import Response

from spotzee.api.admin_router import admin_router
from spotzee.api.deps import Cursor, PageLimit, ProjectId, SecretKeyDep, ServicesDep
from spotzee.api.error_handlers import error_responses
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

router = admin_router("/api/v1/segments", "segments")


def public(definition: SegmentDefinition) -> SegmentPublic:
    return SegmentPublic.model_validate(definition.model_dump(exclude={"type"}))


@router.post("", response_model=SegmentPublic, status_code=201, responses=error_responses(400, 413, 503))
async def create_segment(body: SegmentCreate, key: SecretKeyDep, services: ServicesDep) -> SegmentPublic:
    return public(await services.segments.create(key, body))


@router.get("", response_model=SegmentList)
async def list_segments(project_id: ProjectId, services: ServicesDep) -> SegmentList:
    """The project's segments, and those whose stored definition can't be read (``quarantined``)."""
    items = sorted(services.segments.live(project_id), key=lambda d: (d.created_at, d.id))
    return SegmentList(
        items=[public(services.segments.get(project_id, d.id)) for d in items],
        quarantined=services.segments.quarantined(project_id),
    )


@router.post("/preview", response_model=SegmentPreview, responses=error_responses(400, 413, 503))
async def preview_segment(body: SegmentPreviewRequest, project_id: ProjectId, services: ServicesDep) -> SegmentPreview:
    return await services.segments.preview(project_id, body.rule, body.sample)


@router.get("/{segment_id}", response_model=SegmentPublic, responses=error_responses(404, 409))
async def get_segment(segment_id: str, project_id: ProjectId, services: ServicesDep) -> SegmentPublic:
    return public(services.segments.get(project_id, segment_id))


@router.put("/{segment_id}", response_model=SegmentPublic, responses=error_responses(400, 404, 409, 413, 503))
async def update_segment(
    segment_id: str, body: SegmentCreate, key: SecretKeyDep, services: ServicesDep
) -> SegmentPublic:
    return public(await services.segments.update(key, segment_id, body))


@router.delete("/{segment_id}", status_code=204, responses=error_responses(404, 409, 503))
async def delete_segment(segment_id: str, key: SecretKeyDep, services: ServicesDep) -> Response:
    await services.segments.delete(key, segment_id)
    return Response(status_code=204)


@router.get("/{segment_id}/members", response_model=MembersPage, responses=error_responses(400, 404, 409))
async def segment_members(
    segment_id: str, project_id: ProjectId, services: ServicesDep, cursor: Cursor = None, limit: PageLimit = 100
) -> MembersPage:
    return services.segments.members(project_id, segment_id, cursor, limit)


@router.get("/{segment_id}/count", response_model=SegmentCount, responses=error_responses(404, 409))
async def segment_count(segment_id: str, project_id: ProjectId, services: ServicesDep) -> SegmentCount:
    definition = services.segments.get(project_id, segment_id)
    count = services.segments.count(project_id, segment_id)
    return SegmentCount(count=count, status=definition.status, version=definition.version)
