"""Project-scoped definitions (templates, providers, journeys) in the definitions store.

One helper for the pattern every catalogue shares: read ``<kind>/<id>`` scoped to the caller's
project, and write a definition together with its audit row in one atomic write.

Definitions are decoded one by one (``spotzee.streams.quarantine``): one that can't be read is
left out of every listing, shown to its own project as quarantined, and answers 409 when asked
for by id -- it never breaks another definition, another project or a restart.
"""

from __future__ import annotations

import secrets
from typing import Any, Protocol, TypeVar

from pydantic import BaseModel
from starlette.concurrency import run_in_threadpool

from spotzee.errors import Conflict, NotFound
from spotzee.runtime.base import Runtime
from spotzee.schemas.limits import QuarantinedDefinition
from spotzee.schemas.tenancy_models import ApiKey
from spotzee.services.tenancy_service import Tenancy
from spotzee.streams.quarantine import Unreadable, decode
from spotzee.streams.record_codec import dumps


class Scoped(Protocol):
    id: str
    project_id: str


D = TypeVar("D", bound=BaseModel)


def new_id(prefix: str) -> str:
    return f"{prefix}_{secrets.token_hex(8)}"


def quarantined_conflict(what: str, item: Unreadable) -> Conflict:
    return Conflict(
        f"{what} {item.id} is quarantined: its stored definition can't be read ({item.reason})",
        details=[{"path": "id", "reason": f"quarantined: {item.reason}"}],
    )


class Catalogue:
    def __init__(self, runtime: Runtime, tenancy: Tenancy) -> None:
        self.runtime = runtime
        self.tenancy = tenancy

    def get(self, kind: str, model: type[D], project_id: str, item_id: str, *, what: str) -> D:
        key = f"{kind}/{item_id}"
        raw = next((v for k, v in self.runtime.scan_definitions(key) if k == key), None)
        item = decode(key, raw, model.model_validate_json) if raw is not None else None
        if isinstance(item, Unreadable):
            if item.project_id != project_id:
                raise NotFound(f"{what} {item_id} not found")
            raise quarantined_conflict(what, item)
        if item is None or getattr(item, "project_id", None) != project_id or getattr(item, "deleted", False):
            raise NotFound(f"{what} {item_id} not found")
        return item

    def all(self, kind: str, model: type[D], project_id: str) -> list[D]:
        return self.load(kind, model, project_id)[0]

    def load(self, kind: str, model: type[D], project_id: str) -> tuple[list[D], list[QuarantinedDefinition]]:
        """The project's readable definitions of ``kind`` (by creation) and its quarantined ones."""
        found = []
        unreadable = []
        for key, raw in self.runtime.scan_definitions(f"{kind}/"):
            item = decode(key, raw, model.model_validate_json)
            if isinstance(item, Unreadable):
                if item.project_id == project_id:
                    unreadable.append(QuarantinedDefinition(id=item.id, reason=item.reason))
            elif getattr(item, "project_id", None) == project_id and not getattr(item, "deleted", False):
                found.append(item)
        found.sort(key=lambda d: (getattr(d, "created_at", None), getattr(d, "id", "")))
        return found, unreadable

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
