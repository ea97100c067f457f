"""Subscription topics per project: versioned definitions with names unique per project.

A topic is a definition like a template (``Catalogue``: ``topic/<id>`` in the definitions store,
an audit row per write, unreadable ones quarantined); this service adds what a topic needs
beyond that: its name is unique in its project (ignoring case), and a project has at most
``MAX_TOPICS_PER_PROJECT`` of them. Both are checked and the write made under one lock, so two
requests to this process can't both pass the check; two API processes of the Kafka runtime
writing the same name at the same instant could (the definitions topic has no conditional write).
"""

from __future__ import annotations

import asyncio

from spotzee.errors import Conflict
from spotzee.schemas.tenancy_models import ApiKey
from spotzee.schemas.topic_models import (
    MAX_TOPICS_PER_PROJECT,
    TopicCreate,
    TopicDefinition,
    TopicUpdate,
    name_key,
)
from spotzee.services.catalogue import Catalogue, Definitions, Kind
from spotzee.streams.interface import Clock

TOPIC = Kind("topic", TopicDefinition, "tpc")


class Topics(Definitions[TopicDefinition, TopicDefinition]):
    def __init__(self, catalogue: Catalogue, clock: Clock) -> None:
        super().__init__(catalogue, clock, TOPIC, TopicDefinition)
        self._writing = asyncio.Lock()  # check-then-write of names and the count is one step

    async def create(self, actor: ApiKey, body: TopicCreate) -> TopicDefinition:
        async with self._writing:
            existing = self.all(actor.project)
            if len(existing) >= MAX_TOPICS_PER_PROJECT:
                raise Conflict(
                    f"the project has {len(existing)} topics, the most it may have: delete one first",
                    details=[{"path": "(body)", "reason": f"at most {MAX_TOPICS_PER_PROJECT} topics per project"}],
                )
            _unique(body.name, existing, None)
            item = self.first_version(actor, body.model_dump())
            await self.write(actor, "create", item, None)
            return item

    async def update(self, actor: ApiKey, topic_id: str, body: TopicUpdate) -> TopicDefinition:
        async with self._writing:
            current = self.get(actor.project, topic_id)
            if body.name is not None:
                _unique(body.name, self.all(actor.project), topic_id)
            item = self.next_version(current, body.changes())
            await self.write(actor, "update", item, current)
            return item

    async def delete(self, actor: ApiKey, topic_id: str) -> None:
        """Stored as deleted (``version`` + 1): from then on 404, and its name is free again."""
        async with self._writing:
            current = self.get(actor.project, topic_id)
            await self.write(actor, "delete", self.next_version(current, {"deleted": True}), current)


def _unique(name: str, topics: list[TopicDefinition], topic_id: str | None) -> None:
    """409 when another of the project's topics has ``name`` (ignoring case)."""
    key = name_key(name)
    taken = next((t for t in topics if t.id != topic_id and name_key(t.name) == key), None)
    if taken is not None:
        raise Conflict(
            f"topic {taken.id} is already named {taken.name!r}: topic names are unique per project, ignoring case",
            details=[{"path": "name", "reason": f"already used by topic {taken.id}"}],
        )
