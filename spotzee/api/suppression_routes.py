"""The project's suppression list (secret key of the project); see docs/api.md "Suppressions".

Addresses in paths are URL-encoded (``%2B`` for the ``+`` of a phone; a push token's ``/`` as
``%2F``); the ``{address:path}`` parameter also accepts an unencoded ``/``.
"""

from __future__ import annotations

from typing import Annotated

from fastapi import Query, Response

from spotzee.api.admin_router import admin_router
from spotzee.api.deps import Cursor, ProjectId, SecretKeyDep, ServicesDep
from spotzee.api.error_handlers import error_responses
from spotzee.schemas.suppression_models import (
    DEFAULT_PAGE,
    MAX_PAGE,
    SuppressionChannel,
    SuppressionCreate,
    SuppressionList,
    SuppressionPublic,
)

router = admin_router("/api/v1/suppressions", "suppressions")


@router.post(
    "",
    response_model=SuppressionPublic,
    status_code=201,
    responses={
        **error_responses(400, 409, 413, 503),
        200: {"model": SuppressionPublic, "description": "Already on the list: the existing entry, unchanged"},
    },
)
async def add_suppression(
    body: SuppressionCreate, key: SecretKeyDep, services: ServicesDep, response: Response
) -> SuppressionPublic:
    """201 with the new entry; 200 with the existing one when the address is already on the list."""
    entry, created = await services.suppressions.create(key, body)
    if not created:
        response.status_code = 200
    return SuppressionPublic.from_entry(entry)


@router.get("", response_model=SuppressionList, responses=error_responses(400))
async def list_suppressions(
    project_id: ProjectId,
    services: ServicesDep,
    channel: SuppressionChannel | None = None,
    address: Annotated[str | None, Query(max_length=4096, description="one address (normalised)")] = None,
    cursor: Cursor = None,
    limit: Annotated[int, Query(ge=1, le=MAX_PAGE)] = DEFAULT_PAGE,
) -> SuppressionList:
    items, next_cursor = services.suppressions.page(project_id, channel, address, cursor, limit)
    return SuppressionList(items=[SuppressionPublic.from_entry(e) for e in items], next_cursor=next_cursor)


@router.get("/{channel}/{address:path}", response_model=SuppressionPublic, responses=error_responses(400, 404, 409))
async def get_suppression(
    channel: SuppressionChannel, address: str, project_id: ProjectId, services: ServicesDep
) -> SuppressionPublic:
    return SuppressionPublic.from_entry(services.suppressions.get(project_id, channel, address))


@router.delete("/{channel}/{address:path}", status_code=204, responses=error_responses(400, 404, 409, 503))
async def remove_suppression(
    channel: SuppressionChannel, address: str, key: SecretKeyDep, services: ServicesDep
) -> Response:
    await services.suppressions.delete(key, channel, address)
    return Response(status_code=204)
