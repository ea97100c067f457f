"""Delivery providers per project (SMTP, webhook): definitions with secrets that never leave."""

from __future__ import annotations

import orjson

from spotzee.definitions import Catalogue, new_id
from spotzee.schemas.providers import ProviderCreate, ProviderDefinition, ProviderPublic, ProviderUpdate
from spotzee.schemas.tenancy import ApiKey
from spotzee.streams.interface import Clock

KIND = "provider"


class Providers:
    def __init__(self, catalogue: Catalogue, clock: Clock) -> None:
        self.catalogue = catalogue
        self.clock = clock

    def get(self, project_id: str, provider_id: str) -> ProviderDefinition:
        return self.catalogue.get(KIND, ProviderDefinition, project_id, provider_id, what="provider")

    def all(self, project_id: str) -> list[ProviderDefinition]:
        return self.catalogue.all(KIND, ProviderDefinition, project_id)

    async def create(self, actor: ApiKey, body: ProviderCreate) -> ProviderDefinition:
        now = self.clock.now()
        item = ProviderDefinition(
            id=new_id("prv"),
            project_id=actor.project_id or "",
            name=body.name,
            channel=body.channel,
            provider_type=body.type,
            config=body.config,
            version=1,
            created_at=now,
            updated_at=now,
        )
        await self._put(actor, "provider.create", item, None)
        return item

    async def update(self, actor: ApiKey, provider_id: str, body: ProviderUpdate) -> ProviderDefinition:
        current = self.get(actor.project_id or "", provider_id)
        item = current.model_copy(
            update={
                "name": body.name,
                "channel": body.channel,
                "provider_type": body.type,
                "config": body.with_secrets_from(current.config),
                "version": current.version + 1,
                "updated_at": self.clock.now(),
            }
        )
        await self._put(actor, "provider.update", item, current)
        return item

    async def delete(self, actor: ApiKey, provider_id: str) -> None:
        current = self.get(actor.project_id or "", provider_id)
        item = current.model_copy(update={"deleted": True, "version": current.version + 1})
        await self._put(actor, "provider.delete", item, current)

    async def _put(
        self, actor: ApiKey, action: str, item: ProviderDefinition, before: ProviderDefinition | None
    ) -> None:
        # Audit rows carry the public view: a secret never reaches the history.
        await self.catalogue.put(
            actor,
            action,
            KIND,
            item,
            orjson.dumps(item.storage_dump()),
            before=ProviderPublic.from_definition(before).model_dump(mode="json") if before else None,
            after=ProviderPublic.from_definition(item).model_dump(mode="json"),
        )
