"""Templates admin API (secret key of the project)."""

from __future__ import annotations

from fastapi import APIRouter, Depends

from spotzee.api.bodies import BoundedJSONRoute
from spotzee.api.contact_routes import resolve
from spotzee.api.deps import SecretKeyDep, ServicesDep
from spotzee.errors import NotFound
from spotzee.schemas.template_models import (
    TemplateCreate,
    TemplatePreview,
    TemplatePreviewRequest,
    TemplatePublic,
    defer_liquid_parsing,
)


async def _parse_off_the_loop() -> None:
    """Runs (as an async dependency: in the request's own task) before the body is validated:
    the body's template fields are then checked for size only, and the service parses them in a
    worker process. Parsing a template at the size limits takes up to a second."""
    defer_liquid_parsing()


router = APIRouter(
    prefix="/api/v1/templates",
    tags=["templates"],
    dependencies=[Depends(_parse_off_the_loop)],
    route_class=BoundedJSONRoute,
)


@router.post("", response_model=TemplatePublic, status_code=201)
async def create_template(body: TemplateCreate, key: SecretKeyDep, services: ServicesDep) -> TemplatePublic:
    return TemplatePublic.from_definition(await services.templates.create(key, body))


@router.get("", response_model=dict[str, list[TemplatePublic]])
async def list_templates(key: SecretKeyDep, services: ServicesDep) -> dict[str, list[TemplatePublic]]:
    return {"items": [TemplatePublic.from_definition(t) for t in services.templates.all(key.project_id or "")]}


@router.get("/{template_id}", response_model=TemplatePublic)
async def get_template(template_id: str, key: SecretKeyDep, services: ServicesDep) -> TemplatePublic:
    return TemplatePublic.from_definition(services.templates.get(key.project_id or "", template_id))


@router.put("/{template_id}", response_model=TemplatePublic)
async def update_template(
    template_id: str, body: TemplateCreate, key: SecretKeyDep, services: ServicesDep
) -> TemplatePublic:
    return TemplatePublic.from_definition(await services.templates.update(key, template_id, body))


@router.post("/{template_id}/preview", response_model=TemplatePreview)
async def preview_template(
    template_id: str, body: TemplatePreviewRequest, key: SecretKeyDep, services: ServicesDep
) -> TemplatePreview:
    project_id = key.project_id or ""
    template = services.templates.get(project_id, template_id)
    contact = resolve(services, project_id, body.contact_id)
    if contact is None:
        raise NotFound(f"contact {body.contact_id} not found")
    return await services.templates.preview(template, contact, body)
