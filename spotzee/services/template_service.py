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
from spotzee.services.catalogue import Catalogue, Definitions, Kind
from spotzee.services.template_workers import TemplateWorkers
from spotzee.streams.interface import Clock

TEMPLATE = Kind("template", TemplateDefinition, "tpl")


class Templates(Definitions[TemplateDefinition, TemplateDefinition]):
    def __init__(
        self, catalogue: Catalogue, clock: Clock, outbound: OutboundPolicy, workers: TemplateWorkers | None = None
    ) -> None:
        super().__init__(catalogue, clock, TEMPLATE, TemplateDefinition)
        self.outbound = outbound  # a webhook template's written-out host is vetted when written
        self.workers = workers or TemplateWorkers(size=2, deadline=2.0)

    def close(self) -> None:
        self.workers.close()

    async def check(self, body: TemplateCreate) -> None:
        """Parse every template field in a worker: 400 naming each field that fails."""
        await self.workers.call(rendering.check_content, body.content)

    async def create(self, actor: ApiKey, body: TemplateCreate) -> TemplateDefinition:
        await self.check(body)
        await check_template(body.content, self.outbound)
        item = self.first_version(actor, _fields(body))
        await self.write(actor, "create", item, None)
        return item

    async def update(self, actor: ApiKey, template_id: str, body: TemplateCreate) -> TemplateDefinition:
        current = self.get(actor.project, template_id)
        await self.check(body)
        await check_template(body.content, self.outbound)
        item = self.next_version(current, _fields(body))
        await self.write(actor, "update", item, current)
        return item

    async def preview(
        self, template: TemplateDefinition, contact: ContactState, request: TemplatePreviewRequest
    ) -> TemplatePreview:
        """Render for one contact in a worker (a render error is a 400 naming the field); nothing is sent."""
        return await self.workers.call(
            rendering.preview, template, contact, request, unsubscribe_url="https://unsubscribe.example/preview"
        )

    def audit(self, item: TemplateDefinition) -> object:
        return {"name": item.name, "channel": item.channel, "version": item.version}


def _fields(body: TemplateCreate) -> dict[str, object]:
    return {"name": body.name, "channel": body.channel, "content": body.content}
