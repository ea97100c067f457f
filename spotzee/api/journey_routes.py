"""Journeys admin API (secret key of the project): drafts, versions, lifecycle."""

from __future__ import annotations

from typing import Annotated, Literal

from fastapi import APIRouter, Query
from starlette.concurrency import run_in_threadpool

from spotzee.api.bodies import BoundedJSONRoute
from spotzee.api.deps import SecretKeyDep, ServicesDep
from spotzee.schemas.journey_models import (
    JourneyCreate,
    JourneyEntered,
    JourneyEnterRequest,
    JourneyList,
    JourneyPublic,
)
from spotzee.schemas.journey_stats_models import JourneyStatsPublic
from spotzee.services.journey_stats import journey_stats

router = APIRouter(prefix="/api/v1/journeys", tags=["journeys"], route_class=BoundedJSONRoute)


@router.post("", response_model=JourneyPublic, status_code=201)
async def create_journey(body: JourneyCreate, key: SecretKeyDep, services: ServicesDep) -> JourneyPublic:
    return JourneyPublic.from_definition(await services.journeys.create(key, body))


@router.get("", response_model=JourneyList)
async def list_journeys(key: SecretKeyDep, services: ServicesDep) -> JourneyList:
    """The project's journeys, and those whose stored definition can't be read (``quarantined``)."""
    items, quarantined = services.journeys.load(key.project_id or "")
    return JourneyList(items=[JourneyPublic.from_definition(j) for j in items], quarantined=quarantined)


@router.get("/{journey_id}", response_model=JourneyPublic)
async def get_journey(journey_id: str, key: SecretKeyDep, services: ServicesDep) -> JourneyPublic:
    return JourneyPublic.from_definition(services.journeys.get(key.project_id or "", journey_id))


@router.get("/{journey_id}/stats", response_model=JourneyStatsPublic)
async def get_journey_stats(
    journey_id: str,
    key: SecretKeyDep,
    services: ServicesDep,
    goal: Annotated[str | None, Query(min_length=1, max_length=512)] = None,
    within: Annotated[str | None, Query(max_length=32)] = None,
    alpha: Annotated[float, Query(gt=0, lt=1)] = 0.05,
) -> JourneyStatsPublic:
    """Per step entered / completed / waiting; per experiment variant, conversions to ``goal``
    (within ``within`` of the assignment, e.g. ``7d``) with a chi-squared p-value."""
    journey = services.journeys.get(key.project_id or "", journey_id)
    return await run_in_threadpool(journey_stats, services.clickhouse, journey, goal=goal, within=within, alpha=alpha)


@router.put("/{journey_id}", response_model=JourneyPublic)
async def update_journey(
    journey_id: str, body: JourneyCreate, key: SecretKeyDep, services: ServicesDep
) -> JourneyPublic:
    return JourneyPublic.from_definition(await services.journeys.update(key, journey_id, body))


@router.post("/{journey_id}/enter", response_model=JourneyEntered, status_code=202)
async def enter_journey(
    journey_id: str, body: JourneyEnterRequest, key: SecretKeyDep, services: ServicesDep
) -> JourneyEntered:
    """Accepted once durable; each contact enters when its partition processes the entry."""
    return JourneyEntered(accepted=await services.journeys.enter(key, journey_id, body))


@router.post("/{journey_id}/{action}", response_model=JourneyPublic)
async def move_journey(
    journey_id: str, action: Literal["publish", "pause", "archive"], key: SecretKeyDep, services: ServicesDep
) -> JourneyPublic:
    return JourneyPublic.from_definition(await services.journeys.move(key, journey_id, action))
