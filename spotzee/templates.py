"""Message templates: definitions (versioned), validation at write time, previews for a contact."""

from __future__ import annotations

from spotzee.definitions import Catalogue, new_id
from spotzee.domain import templates as rendering
from spotzee.providers.destinations import check_template
from spotzee.providers.safety import OutboundPolicy
from spotzee.schemas.contacts import ContactState
from spotzee.schemas.templates import (
    TemplateCreate,
    TemplateDefinition,
    TemplatePreview,
    TemplatePreviewRequest,
)
from spotzee.schemas.tenancy import ApiKey
from spotzee.streams.codec import dumps
from spotzee.streams.interface import Clock

KIND = "template"


class Templates:
    def __init__(self, catalogue: Catalogue, clock: Clock, outbound: OutboundPolicy) -> None:
        self.catalogue = catalogue
        self.clock = clock
        self.outbound = outbound  # a webhook template's written-out host is vetted when written

    def get(self, project_id: str, template_id: str) -> TemplateDefinition:
        return self.catalogue.get(KIND, TemplateDefinition, project_id, template_id, what="template")

    def all(self, project_id: str) -> list[TemplateDefinition]:
        return self.catalogue.all(KIND, TemplateDefinition, project_id)

    async def create(self, actor: ApiKey, body: TemplateCreate) -> TemplateDefinition:
        await check_template(body.content, self.outbound)
        now = self.clock.now()
        item = TemplateDefinition(
            id=new_id("tpl"),
            project_id=actor.project_id or "",
            name=body.name,
            channel=body.channel,
            content=body.content,
            version=1,
            created_at=now,
            updated_at=now,
        )
        await self.catalogue.put(actor, "template.create", KIND, item, dumps(item), after=_audit(item))
        return item

    async def update(self, actor: ApiKey, template_id: str, body: TemplateCreate) -> TemplateDefinition:
        await check_template(body.content, self.outbound)
        current = self.get(actor.project_id or "", template_id)
        item = current.model_copy(
            update={
                "name": body.name,
                "channel": body.channel,
                "content": body.content,
                "version": current.version + 1,
                "updated_at": self.clock.now(),
            }
        )
        await self.catalogue.put(
            actor, "template.update", KIND, item, dumps(item), before=_audit(current), after=_audit(item)
        )
        return item

    def preview(
        self, template: TemplateDefinition, contact: ContactState, request: TemplatePreviewRequest
    ) -> TemplatePreview:
        """Render for one contact (a render error is a 400 naming the field); nothing is sent."""
        return rendering.preview(template, contact, request, unsubscribe_url="https://unsubscribe.example/preview")


def _audit(item: TemplateDefinition) -> dict[str, object]:
    return {"name": item.name, "channel": item.channel, "version": item.version}
