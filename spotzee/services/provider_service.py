"""Delivery providers per project (SMTP, webhook, Twilio, Vonage): definitions with secrets that never leave.

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
    ProviderConfig,
    ProviderCreate,
    ProviderDefinition,
    ProviderPublic,
    ProviderUpdate,
    StoredProvider,
)
from spotzee.schemas.tenancy_models import ApiKey
from spotzee.services.catalogue import Catalogue, Definitions, Kind
from spotzee.streams.interface import Clock

log = logging.getLogger(__name__)

PROVIDER = Kind("provider", StoredProvider, "prv")


class Providers(Definitions[StoredProvider, ProviderDefinition]):
    """Reads open a provider's secrets (``get``) or show only whether each is set (``public``)."""

    def __init__(self, catalogue: Catalogue, clock: Clock, policy: OutboundPolicy, box: SecretBox) -> None:
        super().__init__(catalogue, clock, PROVIDER, ProviderDefinition)
        self.policy = policy
        self.box = box
        self._clear_warned: set[str] = set()

    def public(self, project_id: str, provider_id: str) -> ProviderPublic:
        """The API's view: secrets are not opened (only whether each is set)."""
        return ProviderPublic.from_stored(self.catalogue.get(PROVIDER, project_id, provider_id))

    def public_all(self, project_id: str) -> list[ProviderPublic]:
        return [ProviderPublic.from_stored(stored) for stored in self.catalogue.all(PROVIDER, project_id)]

    def first_for(self, project_id: str, channel: str) -> ProviderDefinition | None:
        """The provider a send on ``channel`` goes through (the first by creation), opened."""
        stored = self.catalogue.all(PROVIDER, project_id)
        return next((self.opened(item) for item in stored if item.channel == channel), None)

    async def create(self, actor: ApiKey, body: ProviderCreate) -> ProviderDefinition:
        await check_provider(body.config, self.policy)
        item = self.first_version(actor, _fields(body, body.config))
        await self.write(actor, "create", item, None)
        return item

    async def update(self, actor: ApiKey, provider_id: str, body: ProviderUpdate) -> ProviderDefinition:
        await check_provider(body.config, self.policy)
        current = self.get(actor.project, provider_id)
        item = self.next_version(current, _fields(body, body.with_secrets_from(current.config)))
        await self.write(actor, "update", item, current)
        return item

    async def delete(self, actor: ApiKey, provider_id: str) -> None:
        current = self.get(actor.project, provider_id)
        item = current.model_copy(update={"deleted": True, "version": current.version + 1})
        await self.write(actor, "delete", item, current)

    def opened(self, stored: StoredProvider) -> ProviderDefinition:
        if has_clear_secrets(stored) and stored.id not in self._clear_warned:
            self._clear_warned.add(stored.id)
            log.warning(
                "provider %s has secrets stored in clear (an earlier version): sealed at its next write", stored.id
            )
        return open_definition(stored, self.box)

    def encode(self, item: ProviderDefinition) -> bytes:
        return orjson.dumps(seal_definition(item, self.box).model_dump(mode="json"))

    def audit(self, item: ProviderDefinition) -> object:
        # The public view: a secret never reaches the history.
        return ProviderPublic.from_definition(item).model_dump(mode="json")


def _fields(body: ProviderCreate, config: ProviderConfig) -> dict[str, object]:
    return {"name": body.name, "channel": body.channel, "provider_type": body.type, "config": config}
