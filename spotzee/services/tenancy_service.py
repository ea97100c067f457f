"""Organisations, projects and API keys, persisted in the definitions store.

Every change is written together with its audit row (who, what, when, before/after) in one
atomic write, so the ``audit_log`` history cannot miss an admin action.
"""

from __future__ import annotations

import json
import os
import secrets
import threading
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from pydantic import BaseModel, TypeAdapter

from spotzee.domain import keys as key_rules
from spotzee.errors import Conflict, Forbidden, NotFound, Unauthorized
from spotzee.files import private_dir
from spotzee.runtime.runtime_protocol import Runtime
from spotzee.schemas.analytics_models import AuditRow
from spotzee.schemas.segment_models import ListDefinition, SegmentDefinition
from spotzee.schemas.tenancy_models import (
    AdminKeyCreate,
    ApiKey,
    BootstrapKeys,
    Definition,
    KeyCreate,
    KeyIssued,
    KeyKind,
    KeyPublic,
    Organisation,
    Project,
    ProjectCreate,
    ProjectIssued,
    ProjectPublic,
)
from spotzee.streams.interface import Clock
from spotzee.streams.record_codec import dumps

_definition = TypeAdapter[Definition](Definition)
SYSTEM_ACTOR = "system"
# The definitions store holds other kinds too (segments, lists): tenancy reads only its own.
TENANCY_KINDS = ("organisation/", "project/", "api_key/")


def _new_id(prefix: str) -> str:
    return f"{prefix}_{secrets.token_hex(8)}"


@dataclass(frozen=True)
class Change:
    """One audited action: who (key and organisation) did what to which target of which project,
    and what the audit row keeps of it before and after (JSON-ready, never a secret)."""

    actor_id: str
    organisation_id: str
    action: str
    target: str
    project_id: str
    before: Any = None
    after: Any = None

    @classmethod
    def by(cls, actor: ApiKey, action: str, target: str, project_id: str, *, before: Any, after: Any) -> Change:
        return cls(actor.id, actor.organisation_id, action, target, project_id, before, after)


class Tenancy:
    def __init__(
        self, runtime: Runtime, clock: Clock, token: Callable[[], str] = lambda: secrets.token_urlsafe(24)
    ) -> None:
        self.runtime = runtime
        self.clock = clock
        self._token = token
        self._lock = threading.Lock()
        self.organisations: dict[str, Organisation] = {}
        self.projects: dict[str, Project] = {}
        self.keys: dict[str, ApiKey] = {}
        self._by_hash: dict[str, ApiKey] = {}
        self.load()

    def load(self) -> None:
        for prefix in TENANCY_KINDS:
            for _, raw in self.runtime.scan_definitions(prefix):
                self._remember(_definition.validate_json(raw))

    def on_definition(self, key: str, value: bytes | None) -> None:
        """A definition written by another process (Kafka runtime: the definitions topic)."""
        if value is not None and key.startswith(TENANCY_KINDS):
            with self._lock:
                self._remember(_definition.validate_json(value))

    def _remember(self, item: Definition) -> None:
        if isinstance(item, Organisation):
            self.organisations[item.id] = item
        elif isinstance(item, Project):
            self.projects[item.id] = item
        else:
            self.keys[item.id] = item
            self._by_hash[item.hash] = item

    # -- authentication ----------------------------------------------------------------------

    def authenticate(self, raw_key: str, *, allowed: tuple[KeyKind, ...]) -> ApiKey:
        key = self._by_hash.get(key_rules.hash_key(raw_key)) if raw_key else None
        if key is None or not key.active:
            raise Unauthorized("unknown or revoked API key")
        if key.kind not in allowed:
            needed = " or ".join(f"{k.value} key ({key_rules.PREFIXES[k]}…)" for k in allowed)
            raise Forbidden(f"this endpoint needs a {needed}; a {key.kind.value} key can't use it")
        return key

    def installation_organisation(self) -> str | None:
        """The first organisation created: its admins operate the installation (e.g. SQL)."""
        if not self.organisations:
            return None
        return min(self.organisations.values(), key=lambda o: (o.created_at, o.id)).id

    # -- bootstrap ---------------------------------------------------------------------------

    def bootstrap(self, data_dir: Path) -> BootstrapKeys | None:
        """On an empty store: a default organisation, project and keys; ``keys.json`` (0600)."""
        with self._lock:
            if self.organisations:
                return None
            now = self.clock.now()
            org = Organisation(id=_new_id("org"), name="Default organisation", created_at=now)
            project = Project(id=_new_id("prj"), organisation_id=org.id, name="Default project", created_at=now)
            admin_raw, admin = self._make_key(KeyKind.admin, org.id, None, "bootstrap admin key")
            write_raw, write = self._make_key(KeyKind.write, org.id, project.id, "default write key")
            secret_raw, secret = self._make_key(KeyKind.secret, org.id, project.id, "default secret key")
            items: list[Definition] = [org, project, admin, write, secret]
            self._commit(
                items, Change(SYSTEM_ACTOR, org.id, "bootstrap", org.id, project.id, None, {"project": project.id})
            )
            keys = BootstrapKeys(
                organisation_id=org.id,
                project_id=project.id,
                write_key=write_raw,
                secret_key=secret_raw,
                admin_key=admin_raw,
            )
        private_dir(data_dir)
        path = data_dir / "keys.json"
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "w") as handle:
            handle.write(keys.model_dump_json(indent=2))
        os.chmod(path, 0o600)
        return keys

    # -- projects and keys ------------------------------------------------------------------

    def create_project(self, actor: ApiKey, body: ProjectCreate) -> ProjectIssued:
        with self._lock:
            project = Project(
                id=_new_id("prj"),
                organisation_id=actor.organisation_id,
                name=body.name,
                timezone=body.timezone,
                created_at=self.clock.now(),
            )
            write_raw, write = self._make_key(KeyKind.write, actor.organisation_id, project.id, "default write key")
            secret_raw, secret = self._make_key(KeyKind.secret, actor.organisation_id, project.id, "default secret key")
            self._commit(
                [project, write, secret],
                Change.by(actor, "project.create", project.id, project.id, before=None, after=_public(project)),
            )
        return ProjectIssued(
            **ProjectPublic.model_validate(project.model_dump(exclude={"type"})).model_dump(),
            write_key=KeyIssued(**KeyPublic.from_key(write).model_dump(), key=write_raw),
            secret_key=KeyIssued(**KeyPublic.from_key(secret).model_dump(), key=secret_raw),
        )

    def list_projects(self, organisation_id: str) -> list[ProjectPublic]:
        return [
            ProjectPublic.model_validate(p.model_dump(exclude={"type"}))
            for p in sorted(self.projects.values(), key=lambda p: (p.created_at, p.id))
            if p.organisation_id == organisation_id
        ]

    def project(self, organisation_id: str, project_id: str) -> Project:
        project = self.projects.get(project_id)
        if project is None or project.organisation_id != organisation_id:
            raise NotFound(f"project {project_id} not found")
        return project

    def project_timezone(self, project_id: str) -> str:
        """The project's time zone (scheduled journeys' last fallback); UTC for an unknown one."""
        project = self.projects.get(project_id)
        return project.timezone if project is not None else "UTC"

    def list_keys(self, organisation_id: str, project_id: str) -> list[KeyPublic]:
        self.project(organisation_id, project_id)
        return [
            KeyPublic.from_key(k)
            for k in sorted(self.keys.values(), key=lambda k: (k.created_at, k.id))
            if k.project_id == project_id
        ]

    def create_key(self, actor: ApiKey, project_id: str, body: KeyCreate) -> KeyIssued:
        with self._lock:
            self.project(actor.organisation_id, project_id)
            raw, key = self._make_key(body.kind, actor.organisation_id, project_id, body.name)
            self._commit([key], Change.by(actor, "key.create", key.id, project_id, before=None, after=_public(key)))
        return KeyIssued(**KeyPublic.from_key(key).model_dump(), key=raw)

    def create_admin_key(self, actor: ApiKey, body: AdminKeyCreate) -> KeyIssued:
        with self._lock:
            raw, key = self._make_key(KeyKind.admin, actor.organisation_id, None, body.name)
            self._commit([key], Change.by(actor, "key.create", key.id, "", before=None, after=_public(key)))
        return KeyIssued(**KeyPublic.from_key(key).model_dump(), key=raw)

    def list_admin_keys(self, organisation_id: str) -> list[KeyPublic]:
        return [
            KeyPublic.from_key(k)
            for k in sorted(self.keys.values(), key=lambda k: (k.created_at, k.id))
            if k.organisation_id == organisation_id and k.kind is KeyKind.admin
        ]

    def rotate_key(self, actor: ApiKey, key_id: str) -> KeyIssued:
        """Issue a replacement (same kind, project and name) and revoke the old key at once."""
        with self._lock:
            old = self._own_key(actor, key_id)
            raw, new = self._make_key(old.kind, old.organisation_id, old.project_id, old.name)
            revoked = old.model_copy(update={"revoked_at": self.clock.now()})
            self._commit(
                [revoked, new],
                Change.by(
                    actor,
                    "key.rotate",
                    old.id,
                    old.project,
                    before=_public(old),
                    after={"revoked": _public(revoked), "issued": _public(new)},
                ),
            )
        return KeyIssued(**KeyPublic.from_key(new).model_dump(), key=raw)

    def revoke_key(self, actor: ApiKey, key_id: str) -> KeyPublic:
        with self._lock:
            old = self._own_key(actor, key_id)
            admins = [
                k
                for k in self.keys.values()
                if k.kind is KeyKind.admin and k.active and k.organisation_id == old.organisation_id
            ]
            if old.kind is KeyKind.admin and len(admins) == 1:
                raise Conflict("this is the organisation's last active admin key: create or rotate another first")
            revoked = old.model_copy(update={"revoked_at": self.clock.now()})
            self._commit(
                [revoked],
                Change.by(actor, "key.revoke", old.id, old.project, before=_public(old), after=_public(revoked)),
            )
        return KeyPublic.from_key(revoked)

    def _own_key(self, actor: ApiKey, key_id: str) -> ApiKey:
        key = self.keys.get(key_id)
        if key is None or key.organisation_id != actor.organisation_id:
            raise NotFound(f"key {key_id} not found")
        if not key.active:
            raise NotFound(f"key {key_id} is already revoked")
        return key

    # -- audit of data actions (contacts) ---------------------------------------------------

    def audit(self, actor: ApiKey, action: str, target: str, project_id: str, before: Any, after: Any) -> None:
        self.commit([], Change.by(actor, action, target, project_id, before=before, after=after))

    def commit_definition(
        self, actor: ApiKey, action: str, item: SegmentDefinition | ListDefinition, before: BaseModel | None
    ) -> None:
        """Store a project's segment or list at ``<type>/<id>``, its audit row keeping the whole
        definition before and after."""
        key = f"{item.type}/{item.id}"
        before_view = before.model_dump(mode="json") if before else None
        change = Change.by(actor, action, key, item.project_id, before=before_view, after=item.model_dump(mode="json"))
        self.commit([(key, dumps(item))], change)

    def commit(self, writes: list[tuple[str, bytes | None]], change: Change) -> None:
        """Store ``writes`` (key, value) and the audit row of ``change`` in one atomic write."""
        self.runtime.put_definitions(writes, [dumps(self.audit_row(change))])

    # -- internals ----------------------------------------------------------------------------

    def _make_key(self, kind: KeyKind, organisation_id: str, project_id: str | None, name: str) -> tuple[str, ApiKey]:
        raw = key_rules.format_key(kind, self._token())
        key = ApiKey(
            id=_new_id("key"),
            kind=kind,
            organisation_id=organisation_id,
            project_id=project_id,
            hash=key_rules.hash_key(raw),
            prefix=key_rules.display_prefix(raw),
            name=name,
            created_at=self.clock.now(),
        )
        return raw, key

    def _commit(self, items: list[Definition], change: Change) -> None:
        self.commit([(f"{item.type}/{item.id}", dumps(item)) for item in items], change)
        for item in items:
            self._remember(item)

    def audit_row(self, change: Change) -> AuditRow:
        return AuditRow(
            audit_id=str(uuid.uuid4()),
            organisation_id=change.organisation_id,
            project_id=change.project_id,
            actor_key_id=change.actor_id,
            action=change.action,
            target=change.target,
            at=self.clock.now(),
            before=json.dumps(change.before, default=str),
            after=json.dumps(change.after, default=str),
        )


def _public(item: Project | ApiKey) -> dict[str, Any]:
    if isinstance(item, ApiKey):
        return KeyPublic.from_key(item).model_dump(mode="json")
    return item.model_dump(mode="json", exclude={"type"})
