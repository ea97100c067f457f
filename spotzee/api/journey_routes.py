"""Journeys admin API (secret key of the project): drafts, versions, lifecycle."""

from __future__ import annotations

from typing import Annotated, Literal

from fastapi import Query
from starlette.concurrency import run_in_threadpool

from spotzee.api.admin_router import admin_router
from spotzee.api.deps import ProjectId, SecretKeyDep, ServicesDep
from spotzee.api.error_handlers import error_responses
from spotzee.schemas.journey_models import (
    JourneyCreate,
    JourneyEntered,
    JourneyEnterRequest,
    JourneyList,
    JourneyPublic,
)
from spotzee.schemas.journey_stats_models import JourneyStatsPublic
from spotzee.services.journey_stats import journey_stats

router = admin_router("/api/v1/journeys", "journeys")


@router.post("", response_model=JourneyPublic, status_code=201, responses=error_responses(400, 413, 503))
async def create_journey(body: JourneyCreate, key: SecretKeyDep, services: ServicesDep) -> JourneyPublic:
    return JourneyPublic.from_definition(await services.journeys.create(key, body))


@router.get("", response_model=JourneyList)
async def list_journeys(project_id: ProjectId, services: ServicesDep) -> JourneyList:
    """The project's journeys, and those whose stored definition can't be read (``quarantined``)."""
    items, quarantined = services.journeys.load(project_id)
    return JourneyList(items=[JourneyPublic.from_definition(j) for j in items], quarantined=quarantined)


@router.get("/{journey_id}", response_model=JourneyPublic, responses=error_responses(404, 409))
async def get_journey(journey_id: str, project_id: ProjectId, services: ServicesDep) -> JourneyPublic:
    return JourneyPublic.from_definition(services.journeys.get(project_id, journey_id))


@router.get("/{journey_id}/stats", response_model=JourneyStatsPublic, responses=error_responses(400, 404, 409, 503))
async def get_journey_stats(
    journey_id: str,
    project_id: ProjectId,
    services: ServicesDep,
    goal: Annotated[str | None, Query(min_length=1, max_length=512)] = None,
    within: Annotated[str | None, Query(max_length=32)] = None,
    alpha: Annotated[float, Query(gt=0, lt=1)] = 0.05,
) -> JourneyStatsPublic:
    """Per step entered / completed / waiting; per experiment variant, conversions to ``goal``
    (within ``within`` of the assignment, e.g. ``7d``) with a chi-squared p-value."""
    journey = services.journeys.get(project_id, journey_id)
    return await run_in_threadpool(journey_stats, services.clickhouse, journey, goal=goal, within=within, alpha=alpha)


@router.put("/{journey_id}", response_model=JourneyPublic, responses=error_responses(400, 404, 409, 413, 503))
async def update_journey(
    journey_id: str, body: JourneyCreate, key: SecretKeyDep, services: ServicesDep
) -> JourneyPublic:
    return JourneyPublic.from_definition(await services.journeys.update(key, journey_id, body))


@router.post(
    "/{journey_id}/enter",
    response_model=JourneyEntered,
    status_code=202,
    responses=error_responses(400, 404, 409, 413, 429, 503),
)
async def enter_journey(
    journey_id: str, body: JourneyEnterRequest, key: SecretKeyDep, services: ServicesDep
) -> JourneyEntered:
    """Accepted once durable; each contact enters when its partition processes the entry."""
    return JourneyEntered(accepted=await services.journeys.enter(key, journey_id, body))


@router.post("/{journey_id}/{action}", response_model=JourneyPublic, responses=error_responses(400, 404, 409, 503))
async def move_journey(
    journey_id: str, action: Literal["publish", "pause", "archive"], key: SecretKeyDep, services: ServicesDep
) -> JourneyPublic:
    return JourneyPublic.from_definition(await services.journeys.move(key, journey_id, action))
