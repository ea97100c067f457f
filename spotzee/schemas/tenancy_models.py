"""Organisations, projects and API keys: stored definitions and their API models."""

from __future__ import annotations

from enum import StrEnum
from typing import Annotated, Any, Literal

from pydantic import AfterValidator, Field

from spotzee.domain.traits import normalize_timezone
from spotzee.schemas.common import Model, UTCDateTime


class KeyKind(StrEnum):
    write = "write"  # pk_… : ingestion only
    secret = "secret"  # sk_… : admin API of its own project
    admin = "admin"  # ak_… : the organisation: projects, keys, audit, SQL


class Organisation(Model):
    type: Literal["organisation"] = "organisation"
    id: str
    name: str
    created_at: UTCDateTime


class Project(Model):
    type: Literal["project"] = "project"
    id: str
    organisation_id: str
    name: str
    timezone: str = "UTC"
    created_at: UTCDateTime


class ApiKey(Model):
    """A key as stored: only the SHA-256 of the secret, never the secret."""

    type: Literal["api_key"] = "api_key"
    id: str
    kind: KeyKind
    organisation_id: str
    project_id: str | None
    hash: str
    prefix: str = Field(description="The first characters, to recognise a key in lists and logs.")
    name: str = ""
    created_at: UTCDateTime
    revoked_at: UTCDateTime | None = None

    @property
    def active(self) -> bool:
        return self.revoked_at is None

    @property
    def project(self) -> str:
        """The project a write or secret key belongs to; ``""`` for an organisation admin key
        (which names no project: scoped reads with it find nothing)."""
        return self.project_id or ""


Definition = Annotated[Organisation | Project | ApiKey, Field(discriminator="type")]


class ProjectCreate(Model):
    name: Annotated[str, Field(min_length=1, max_length=200)]
    timezone: Annotated[str, Field(max_length=64), AfterValidator(normalize_timezone)] = "UTC"


class AdminKeyCreate(Model):
    name: Annotated[str, Field(max_length=200)] = ""


class KeyCreate(Model):
    kind: Literal[KeyKind.write, KeyKind.secret]
    name: Annotated[str, Field(max_length=200)] = ""


class KeyPublic(Model):
    id: str
    kind: KeyKind
    organisation_id: str
    project_id: str | None
    prefix: str
    name: str
    created_at: UTCDateTime
    revoked_at: UTCDateTime | None

    @classmethod
    def from_key(cls, key: ApiKey) -> KeyPublic:
        return cls.model_validate(key.model_dump(exclude={"type", "hash"}))


class KeyIssued(KeyPublic):
    """Returned once, when a key is created or rotated: the only time the secret is shown."""

    key: str


class ProjectPublic(Model):
    id: str
    organisation_id: str
    name: str
    timezone: str
    created_at: UTCDateTime


class ProjectIssued(ProjectPublic):
    write_key: KeyIssued
    secret_key: KeyIssued


class AuditEntryPublic(Model):
    audit_id: str
    organisation_id: str
    project_id: str
    actor_key_id: str
    action: str
    target: str
    at: UTCDateTime
    before: Any
    after: Any


class AuditPage(Model):
    items: list[AuditEntryPublic]
    next_cursor: str | None


class BootstrapKeys(Model):
    """The content of ``DATA_DIR/keys.json``."""

    organisation_id: str
    project_id: str
    write_key: str
    secret_key: str
    admin_key: str
