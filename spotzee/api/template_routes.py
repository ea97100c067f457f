"""Templates admin API (secret key of the project)."""

from __future__ import annotations

from fastapi import Depends

from spotzee.api.admin_router import admin_router
from spotzee.api.contact_routes import resolve
from spotzee.api.deps import ProjectId, SecretKeyDep, ServicesDep
from spotzee.api.error_handlers import error_responses
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


router = admin_router("/api/v1/templates", "templates", dependencies=[Depends(_parse_off_the_loop)])
# Parsing and rendering run in worker processes: all of them busy is a 429.


@router.post("", response_model=TemplatePublic, status_code=201, responses=error_responses(400, 413, 429, 503))
async def create_template(body: TemplateCreate, key: SecretKeyDep, services: ServicesDep) -> TemplatePublic:
    return TemplatePublic.from_definition(await services.templates.create(key, body))


@router.get("", response_model=dict[str, list[TemplatePublic]])
async def list_templates(project_id: ProjectId, services: ServicesDep) -> dict[str, list[TemplatePublic]]:
    return {"items": [TemplatePublic.from_definition(t) for t in services.templates.all(project_id)]}


@router.get("/{template_id}", response_model=TemplatePublic, responses=error_responses(404, 409))
async def get_template(template_id: str, project_id: ProjectId, services: ServicesDep) -> TemplatePublic:
    return TemplatePublic.from_definition(services.templates.get(project_id, template_id))


@router.put("/{template_id}", response_model=TemplatePublic, responses=error_responses(400, 404, 409, 413, 429, 503))
async def update_template(
    template_id: str, body: TemplateCreate, key: SecretKeyDep, services: ServicesDep
) -> TemplatePublic:
    return TemplatePublic.from_definition(await services.templates.update(key, template_id, body))


@router.post(
    "/{template_id}/preview", response_model=TemplatePreview, responses=error_responses(400, 404, 409, 413, 429)
)
async def preview_template(
    template_id: str, body: TemplatePreviewRequest, project_id: ProjectId, services: ServicesDep
) -> TemplatePreview:
    template = services.templates.get(project_id, template_id)
    contact = resolve(services, project_id, body.contact_id)
    if contact is None:
        raise NotFound(f"contact {body.contact_id} not found")
    return await services.templates.preview(template, contact, body)
