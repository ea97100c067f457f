"""Delivery providers admin API (secret key of the project); secrets are never returned."""

from __future__ import annotations

from fastapi import APIRouter, Response

from spotzee.api.bodies import BoundedJSONRoute
from spotzee.api.deps import SecretKeyDep, ServicesDep
from spotzee.schemas.provider_models import ProviderCreate, ProviderPublic, ProviderUpdate

router = APIRouter(prefix="/api/v1/providers", tags=["providers"], route_class=BoundedJSONRoute)


@router.post("", response_model=ProviderPublic, status_code=201)
async def create_provider(body: ProviderCreate, key: SecretKeyDep, services: ServicesDep) -> ProviderPublic:
    return ProviderPublic.from_definition(await services.providers.create(key, body))


@router.get("", response_model=dict[str, list[ProviderPublic]])
async def list_providers(key: SecretKeyDep, services: ServicesDep) -> dict[str, list[ProviderPublic]]:
    return {"items": services.providers.public_all(key.project_id or "")}


@router.get("/{provider_id}", response_model=ProviderPublic)
async def get_provider(provider_id: str, key: SecretKeyDep, services: ServicesDep) -> ProviderPublic:
    return services.providers.public(key.project_id or "", provider_id)


@router.put("/{provider_id}", response_model=ProviderPublic)
async def update_provider(
    provider_id: str, body: ProviderUpdate, key: SecretKeyDep, services: ServicesDep
) -> ProviderPublic:
    return ProviderPublic.from_definition(await services.providers.update(key, provider_id, body))


@router.delete("/{provider_id}", status_code=204)
async def delete_provider(provider_id: str, key: SecretKeyDep, services: ServicesDep) -> Response:
    await services.providers.delete(key, provider_id)
    return Response(status_code=204)
