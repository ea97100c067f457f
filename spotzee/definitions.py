"""Project-scoped definitions (templates, providers, journeys) in the definitions store.

One helper for the pattern every catalogue shares: read ``<kind>/<id>`` scoped to the caller's
project, and write a definition together with its audit row in one atomic write.
"""

from __future__ import annotations

import secrets
from typing import Any, Protocol, TypeVar

from pydantic import BaseModel
from starlette.concurrency import run_in_threadpool

from spotzee.errors import NotFound
from spotzee.runtime.base import Runtime
from spotzee.schemas.tenancy import ApiKey
from spotzee.streams.codec import dumps
from spotzee.tenancy import Tenancy


class Scoped(Protocol):
    id: str
    project_id: str


D = TypeVar("D", bound=BaseModel)


def new_id(prefix: str) -> str:
    return f"{prefix}_{secrets.token_hex(8)}"


class Catalogue:
    def __init__(self, runtime: Runtime, tenancy: Tenancy) -> None:
        self.runtime = runtime
        self.tenancy = tenancy

    def get(self, kind: str, model: type[D], project_id: str, item_id: str, *, what: str) -> D:
        key = f"{kind}/{item_id}"
        raw = next((v for k, v in self.runtime.scan_definitions(key) if k == key), None)
        item = model.model_validate_json(raw) if raw is not None else None
        if item is None or getattr(item, "project_id", None) != project_id or getattr(item, "deleted", False):
            raise NotFound(f"{what} {item_id} not found")
        return item

    def all(self, kind: str, model: type[D], project_id: str) -> list[D]:
        found = []
        for _, raw in self.runtime.scan_definitions(f"{kind}/"):
            item = model.model_validate_json(raw)
            if getattr(item, "project_id", None) == project_id and not getattr(item, "deleted", False):
                found.append(item)
        return sorted(found, key=lambda d: (getattr(d, "created_at", None), getattr(d, "id", "")))

    async def put(
        self,
        actor: ApiKey,
        action: str,
        kind: str,
        item: Scoped,
        stored: bytes,
        *,
        before: Any = None,
        after: Any = None,
    ) -> None:
        """Store ``stored`` at ``<kind>/<id>`` with its audit row (``before``/``after`` as given:
        never secrets)."""
        row = self.tenancy.audit_row(
            actor.id, action, f"{kind}/{item.id}", item.project_id, actor.organisation_id, before, after
        )
        await run_in_threadpool(self.runtime.put_definitions, [(f"{kind}/{item.id}", stored)], [dumps(row)])
