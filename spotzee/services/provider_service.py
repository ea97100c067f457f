"""Delivery providers per project (SMTP, webhook): definitions with secrets that never leave.

A provider's destinations are vetted by the outbound policy before it is stored (400 with the
field path), and its secret fields are sealed in the definitions store (``providers.sealing``).
"""

from __future__ import annotations

import logging

import orjson

from spotzee.providers.destinations import check_provider
from spotzee.providers.safety import OutboundPolicy
from spotzee.providers.sealing import SecretBox, has_clear_secrets, open_definition, seal_definition
from spotzee.schemas.provider_models import (
    ProviderCreate,
    ProviderDefinition,
    ProviderPublic,
    ProviderUpdate,
    StoredProvider,
)
from spotzee.schemas.tenancy_models import ApiKey
from spotzee.services.catalogue import Catalogue, new_id
from spotzee.streams.interface import Clock

log = logging.getLogger(__name__)

KIND = "provider"


class Providers:
    def __init__(self, catalogue: Catalogue, clock: Clock, policy: OutboundPolicy, box: SecretBox) -> None:
        self.catalogue = catalogue
        self.clock = clock
        self.policy = policy
        self.box = box
        self._clear_warned: set[str] = set()

    def get(self, project_id: str, provider_id: str) -> ProviderDefinition:
        return self._open(self.catalogue.get(KIND, StoredProvider, project_id, provider_id, what="provider"))

    def public(self, project_id: str, provider_id: str) -> ProviderPublic:
        """The API's view: secrets are not opened (only whether each is set)."""
        return ProviderPublic.from_stored(
            self.catalogue.get(KIND, StoredProvider, project_id, provider_id, what="provider")
        )

    def public_all(self, project_id: str) -> list[ProviderPublic]:
        return [ProviderPublic.from_stored(stored) for stored in self.catalogue.all(KIND, StoredProvider, project_id)]

    def first_for(self, project_id: str, channel: str) -> ProviderDefinition | None:
        """The provider a send on ``channel`` goes through (the first by creation), opened."""
        stored = self.catalogue.all(KIND, StoredProvider, project_id)
        return next((self._open(item) for item in stored if item.channel == channel), None)

    async def create(self, actor: ApiKey, body: ProviderCreate) -> ProviderDefinition:
        await check_provider(body.config, self.policy)
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
        await check_provider(body.config, self.policy)
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

    def _open(self, stored: StoredProvider) -> ProviderDefinition:
        if has_clear_secrets(stored) and stored.id not in self._clear_warned:
            self._clear_warned.add(stored.id)
            log.warning(
                "provider %s has secrets stored in clear (an earlier version): sealed at its next write", stored.id
            )
        return open_definition(stored, self.box)

    async def _put(
        self, actor: ApiKey, action: str, item: ProviderDefinition, before: ProviderDefinition | None
    ) -> None:
        # Audit rows carry the public view: a secret never reaches the history.
        await self.catalogue.put(
            actor,
            action,
            KIND,
            item,
            orjson.dumps(seal_definition(item, self.box).model_dump(mode="json")),
            before=ProviderPublic.from_definition(before).model_dump(mode="json") if before else None,
            after=ProviderPublic.from_definition(item).model_dump(mode="json"),
        )
