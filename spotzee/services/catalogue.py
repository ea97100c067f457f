"""Project-scoped, versioned definitions (templates, providers, journeys) in the definitions store.

``Catalogue[S, D]`` is the create/read/update shared by every kind of them: a definition lives at
``<kind>/<id>``, is read only by its own project (404 for any other), gets a fresh
``<prefix>_<16 hex>`` id and version 1 when created, ``version + 1`` on every edit, and each
write is stored together with its audit row in one atomic write. A kind's service subclasses it
and adds its own checks; ``S`` is the form the store holds and ``D`` the form the service hands
out (the same model, except for providers, whose stored form has its secrets sealed).

Definitions are decoded one by one (``spotzee.streams.quarantine``): one that can't be read is
left out of every listing, shown to its own project as quarantined, and answers 409 when asked
for by id -- it never breaks another definition, another project or a restart.
"""

from __future__ import annotations

import secrets
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from typing import Any, Generic, Protocol, Self, TypeVar, cast

from pydantic import BaseModel, TypeAdapter, ValidationError
from starlette.concurrency import run_in_threadpool

from spotzee.errors import Conflict, InvalidInput, NotFound, validation_details
from spotzee.runtime.runtime_protocol import Runtime
from spotzee.schemas.limits import QuarantinedDefinition
from spotzee.schemas.tenancy_models import ApiKey
from spotzee.services.tenancy_service import Change, Tenancy
from spotzee.streams.interface import Clock
from spotzee.streams.quarantine import Unreadable, decode
from spotzee.streams.record_codec import dumps


class Versioned(Protocol):
    """What every catalogued definition has."""

    @property
    def id(self) -> str: ...

    @property
    def project_id(self) -> str: ...

    @property
    def version(self) -> int: ...

    def model_copy(self, *, update: Mapping[str, Any] | None = None, deep: bool = False) -> Self: ...


S = TypeVar("S", bound=BaseModel)
D = TypeVar("D", bound=Versioned)


def new_id(prefix: str) -> str:
    return f"{prefix}_{secrets.token_hex(8)}"


def quarantined_conflict(what: str, item: Unreadable) -> Conflict:
    return Conflict(
        f"{what} {item.id} is quarantined: its stored definition can't be read ({item.reason})",
        details=[{"path": "id", "reason": f"quarantined: {item.reason}"}],
    )


@dataclass(frozen=True)
class Kind(Generic[S]):
    """One kind of definition: the name its keys, audit actions and errors use, the model the
    store holds, and the prefix of its ids."""

    name: str
    stored: type[S]
    id_prefix: str

    def key(self, item_id: str) -> str:
        return f"{self.name}/{item_id}"


class Catalogue:
    """The definitions store as the catalogues read and write it (one per process, shared)."""

    def __init__(self, runtime: Runtime, tenancy: Tenancy) -> None:
        self.runtime = runtime
        self.tenancy = tenancy

    def get(self, kind: Kind[S], project_id: str, item_id: str) -> S:
        """One of the project's definitions: 404 when it is another project's, deleted or absent,
        409 when it is the project's but quarantined."""
        key = kind.key(item_id)
        raw = next((v for k, v in self.runtime.scan_definitions(key) if k == key), None)
        item = decode(key, raw, kind.stored.model_validate_json) if raw is not None else None
        if isinstance(item, Unreadable):
            if item.project_id != project_id:
                raise NotFound(f"{kind.name} {item_id} not found")
            raise quarantined_conflict(kind.name, item)
        if item is None or not _visible(item, project_id):
            raise NotFound(f"{kind.name} {item_id} not found")
        return item

    def all(self, kind: Kind[S], project_id: str) -> list[S]:
        return self.load(kind, project_id)[0]

    def load(self, kind: Kind[S], project_id: str) -> tuple[list[S], list[QuarantinedDefinition]]:
        """The project's readable definitions of ``kind`` (by creation) and its quarantined ones."""
        found = []
        unreadable = []
        for item in self._decoded(kind):
            if isinstance(item, Unreadable):
                if item.project_id == project_id:
                    unreadable.append(QuarantinedDefinition(id=item.id, reason=item.reason))
            elif _visible(item, project_id):
                found.append(item)
        found.sort(key=lambda d: (getattr(d, "created_at", None), getattr(d, "id", "")))
        return found, unreadable

    async def put(self, key: str, stored: bytes, change: Change) -> None:
        """Store ``stored`` at ``key`` with the audit row of ``change`` (never a secret in it)."""
        await run_in_threadpool(self.tenancy.commit, [(key, stored)], change)

    def _decoded(self, kind: Kind[S]) -> Iterator[S | Unreadable]:
        for key, raw in self.runtime.scan_definitions(f"{kind.name}/"):
            yield decode(key, raw, kind.stored.model_validate_json)


def _visible(item: BaseModel, project_id: str) -> bool:
    return getattr(item, "project_id", None) == project_id and not getattr(item, "deleted", False)


class Definitions(Generic[S, D]):
    """One kind's create/read/update over the ``Catalogue``; its service subclasses it.

    Reads return ``D`` (``opened`` from the stored ``S``); writes take ``D`` and store
    ``encode(item)`` with an audit row of ``audit(before)`` / ``audit(item)``. The hooks default to
    a kind whose stored form is its definition."""

    def __init__(self, catalogue: Catalogue, clock: Clock, kind: Kind[S], model: type[D]) -> None:
        self.catalogue = catalogue
        self.clock = clock
        self.kind = kind
        self._validate = TypeAdapter(model).validate_python

    # -- reads ------------------------------------------------------------------------------------

    def get(self, project_id: str, item_id: str) -> D:
        return self.opened(self.catalogue.get(self.kind, project_id, item_id))

    def all(self, project_id: str) -> list[D]:
        return [self.opened(item) for item in self.catalogue.all(self.kind, project_id)]

    def load(self, project_id: str) -> tuple[list[D], list[QuarantinedDefinition]]:
        """The project's definitions (by creation) and its quarantined (unreadable) ones."""
        found, unreadable = self.catalogue.load(self.kind, project_id)
        return [self.opened(item) for item in found], unreadable

    # -- writes -----------------------------------------------------------------------------------

    def first_version(self, actor: ApiKey, fields: Mapping[str, Any]) -> D:
        """Version 1 of a new definition in the actor's project: ``fields`` and a fresh id."""
        now = self.clock.now()
        return self.validated(
            {
                **fields,
                "id": new_id(self.kind.id_prefix),
                "project_id": actor.project,
                "version": 1,
                "created_at": now,
                "updated_at": now,
            }
        )

    def next_version(self, current: D, changes: Mapping[str, Any]) -> D:
        """``current`` with ``changes``: the next version, updated now."""
        return current.model_copy(update={**changes, "version": current.version + 1, "updated_at": self.clock.now()})

    def validated(self, data: Mapping[str, Any]) -> D:
        """The definition ``data`` makes; a check the body alone could not make fails as 400."""
        try:
            return self._validate(data)
        except ValidationError as exc:
            details = validation_details(exc)
            raise InvalidInput("; ".join(f"{d['path']}: {d['reason']}" for d in details), details=details) from exc

    async def write(self, actor: ApiKey, verb: str, item: D, before: D | None) -> None:
        """Store ``item`` with the audit row of ``<kind>.<verb>``."""
        change = Change.by(
            actor,
            f"{self.kind.name}.{verb}",
            self.kind.key(item.id),
            item.project_id,
            before=self.audit_before(before) if before is not None else None,
            after=self.audit(item),
        )
        await self.catalogue.put(self.kind.key(item.id), self.encode(item), change)

    # -- what a kind may change -------------------------------------------------------------------

    def opened(self, stored: S) -> D:
        """The definition ``stored`` holds (default: the stored form is the definition)."""
        return cast(D, stored)

    def encode(self, item: D) -> bytes:
        """The bytes the store keeps for ``item``."""
        return dumps(cast(BaseModel, item))

    def audit(self, item: D) -> object:
        """What the audit row keeps of a version: never a secret."""
        return cast(BaseModel, item).model_dump(mode="json")

    def audit_before(self, item: D) -> object:
        """What the audit row keeps of the version replaced (default: as ``audit``)."""
        return self.audit(item)
