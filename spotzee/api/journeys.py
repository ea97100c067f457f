"""Journeys admin API (secret key of the project): drafts, versions, lifecycle."""

from __future__ import annotations

from typing import Literal

from fastapi import APIRouter

from spotzee.api.deps import SecretKeyDep, ServicesDep
from spotzee.schemas.journeys import JourneyCreate, JourneyEntered, JourneyEnterRequest, JourneyPublic

router = APIRouter(prefix="/api/v1/journeys", tags=["journeys"])


@router.post("", response_model=JourneyPublic, status_code=201)
async def create_journey(body: JourneyCreate, key: SecretKeyDep, services: ServicesDep) -> JourneyPublic:
    return JourneyPublic.from_definition(await services.journeys.create(key, body))


@router.get("", response_model=dict[str, list[JourneyPublic]])
async def list_journeys(key: SecretKeyDep, services: ServicesDep) -> dict[str, list[JourneyPublic]]:
    return {"items": [JourneyPublic.from_definition(j) for j in services.journeys.all(key.project_id or "")]}


@router.get("/{journey_id}", response_model=JourneyPublic)
async def get_journey(journey_id: str, key: SecretKeyDep, services: ServicesDep) -> JourneyPublic:
    return JourneyPublic.from_definition(services.journeys.get(key.project_id or "", journey_id))


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
