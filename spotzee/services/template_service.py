"""Message templates: definitions (versioned), validation at write time, previews for a contact.

Parsing (create/update) and rendering (preview) run in worker processes (``TemplateWorkers``), never
on the event loop: a template at the size limits takes up to a second to parse, and a hostile one
is stopped at the hard deadline (``SPOTZEE_TEMPLATE_RENDER_TIMEOUT``) by killing its worker.
"""

from __future__ import annotations

from spotzee.domain import templates as rendering
from spotzee.providers.destinations import check_template
from spotzee.providers.safety import OutboundPolicy
from spotzee.schemas.contact_models import ContactState
from spotzee.schemas.template_models import (
    TemplateCreate,
    TemplateDefinition,
    TemplatePreview,
    TemplatePreviewRequest,
)
from spotzee.schemas.tenancy_models import ApiKey
from spotzee.services.catalogue import Catalogue, new_id
from spotzee.services.template_workers import TemplateWorkers
from spotzee.streams.interface import Clock
from spotzee.streams.record_codec import dumps

KIND = "template"


class Templates:
    def __init__(
        self, catalogue: Catalogue, clock: Clock, outbound: OutboundPolicy, workers: TemplateWorkers | None = None
    ) -> None:
        self.catalogue = catalogue
        self.clock = clock
        self.outbound = outbound  # a webhook template's written-out host is vetted when written
        self.workers = workers or TemplateWorkers(size=2, deadline=2.0)

    def close(self) -> None:
        self.workers.close()

    def get(self, project_id: str, template_id: str) -> TemplateDefinition:
        return self.catalogue.get(KIND, TemplateDefinition, project_id, template_id, what="template")

    def all(self, project_id: str) -> list[TemplateDefinition]:
        return self.catalogue.all(KIND, TemplateDefinition, project_id)

    async def check(self, body: TemplateCreate) -> None:
        """Parse every template field in a worker: 400 naming each field that fails."""
        await self.workers.call(rendering.check_content, body.content)

    async def create(self, actor: ApiKey, body: TemplateCreate) -> TemplateDefinition:
        await self.check(body)
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
        current = self.get(actor.project_id or "", template_id)
        await self.check(body)
        await check_template(body.content, self.outbound)
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

    async def preview(
        self, template: TemplateDefinition, contact: ContactState, request: TemplatePreviewRequest
    ) -> TemplatePreview:
        """Render for one contact in a worker (a render error is a 400 naming the field); nothing is sent."""
        return await self.workers.call(
            rendering.preview, template, contact, request, unsubscribe_url="https://unsubscribe.example/preview"
        )


def _audit(item: TemplateDefinition) -> dict[str, object]:
    return {"name": item.name, "channel": item.channel, "version": item.version}
