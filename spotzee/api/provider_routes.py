"""Delivery providers admin API (secret key of the project); secrets are never returned."""

from __future__ import annotations

from fastapi import Response

from spotzee.api.admin_router import admin_router
from spotzee.api.deps import ProjectId, SecretKeyDep, ServicesDep
from spotzee.api.error_handlers import error_responses
from spotzee.schemas.provider_models import ProviderCreate, ProviderPublic, ProviderUpdate

router = admin_router("/api/v1/providers", "providers")


@router.post("", response_model=ProviderPublic, status_code=201, responses=error_responses(400, 413, 503))
async def create_provider(body: ProviderCreate, key: SecretKeyDep, services: ServicesDep) -> ProviderPublic:
    return ProviderPublic.from_definition(await services.providers.create(key, body))


@router.get("", response_model=dict[str, list[ProviderPublic]])
async def list_providers(project_id: ProjectId, services: ServicesDep) -> dict[str, list[ProviderPublic]]:
    return {"items": services.providers.public_all(project_id)}


@router.get("/{provider_id}", response_model=ProviderPublic, responses=error_responses(404, 409))
async def get_provider(provider_id: str, project_id: ProjectId, services: ServicesDep) -> ProviderPublic:
    return services.providers.public(project_id, provider_id)


@router.put("/{provider_id}", response_model=ProviderPublic, responses=error_responses(400, 404, 409, 413, 503))
async def update_provider(
    provider_id: str, body: ProviderUpdate, key: SecretKeyDep, services: ServicesDep
) -> ProviderPublic:
    return ProviderPublic.from_definition(await services.providers.update(key, provider_id, body))


@router.delete("/{provider_id}", status_code=204, responses=error_responses(404, 409, 503))
async def delete_provider(provider_id: str, key: SecretKeyDep, services: ServicesDep) -> Response:
    await services.providers.delete(key, provider_id)
    return Response(status_code=204)
