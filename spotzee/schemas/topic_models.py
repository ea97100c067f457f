"""Subscription topics: the JSON the API accepts (``TopicCreate``, ``TopicUpdate``), what is stored, what is shown.

A project defines the topics its contacts can subscribe to ("Product news", "Weekly digest"):
``POST /api/v1/topics`` takes ``{"name", "description", "default"}``, where ``default`` is the
consent a contact has before choosing (``opted_in`` or ``opted_out``; omitted: ``opted_out``, the
choice that never sends to someone who did not ask). Names are unique per project, ignoring case
and surrounding spaces; the limits below are checked before anything is stored.
"""

from __future__ import annotations

import unicodedata
from datetime import datetime
from typing import Annotated, Final, Literal

from pydantic import AfterValidator, Field, StringConstraints, field_validator

from spotzee.schemas.common import Model, UTCDateTime
from spotzee.schemas.limits import QuarantinedDefinition

MAX_TOPIC_NAME: Final = 200  # characters, once surrounding spaces are removed
MAX_TOPIC_DESCRIPTION: Final = 2_000  # characters
# Topics a project may have (deleted ones don't count): every one is listed on the preference
# page a contact sees, and each create scans the project's topics for a duplicate name.
MAX_TOPICS_PER_PROJECT: Final = 100

TopicDefault = Literal["opted_in", "opted_out"]


def _no_control_characters(value: str, *, allowed: str = "") -> str:
    # Names and descriptions are shown on a contact's preference page: no invisible controls.
    bad = next((c for c in value if unicodedata.category(c) == "Cc" and c not in allowed), None)
    if bad is not None:
        raise ValueError(f"must not contain control characters (found U+{ord(bad):04X})")
    return value


def _name(value: str) -> str:
    return _no_control_characters(value)


def _description(value: str) -> str:
    return _no_control_characters(value, allowed="\n\r\t")


TopicName = Annotated[
    str,
    StringConstraints(strip_whitespace=True, min_length=1, max_length=MAX_TOPIC_NAME),
    AfterValidator(_name),
]
TopicDescription = Annotated[str, Field(max_length=MAX_TOPIC_DESCRIPTION), AfterValidator(_description)]


def name_key(name: str) -> str:
    """What makes two names the same topic: case-insensitive (``casefold``), NFKC-normalised."""
    return unicodedata.normalize("NFKC", name).casefold()


class TopicCreate(Model):
    """``POST /api/v1/topics``: the server assigns the id."""

    name: TopicName
    description: TopicDescription | None = None
    default: TopicDefault = "opted_out"


class TopicUpdate(Model):
    """``PUT /api/v1/topics/{id}``: the fields sent replace the stored ones; a field omitted keeps
    its value (``"description": null`` clears the description)."""

    name: TopicName | None = None
    description: TopicDescription | None = None
    default: TopicDefault | None = None

    @field_validator("name", "default")
    @classmethod
    def _not_null(cls, value: str | None) -> str | None:
        # Only a value sent is validated: an omitted field keeps the stored value, null can't.
        if value is None:
            raise ValueError("may be omitted (to keep the stored value) but not null")
        return value

    def changes(self) -> dict[str, object]:
        """The fields the body sent (``name`` and ``default`` can't be cleared: null is refused)."""
        return {field: getattr(self, field) for field in self.model_fields_set}


class TopicDefinition(Model):
    """A stored topic (definitions key ``topic/<id>``); ``version`` grows on every edit."""

    type: Literal["topic"] = "topic"
    id: str
    project_id: str
    name: str
    description: str | None
    default: TopicDefault
    version: int
    created_at: UTCDateTime
    updated_at: UTCDateTime
    deleted: bool = False


class TopicPublic(Model):
    id: str
    project_id: str
    name: str
    description: str | None
    default: TopicDefault
    version: int
    created_at: datetime
    updated_at: datetime

    @classmethod
    def from_definition(cls, definition: TopicDefinition) -> TopicPublic:
        return cls.model_validate(definition.model_dump(exclude={"type", "deleted"}))


class TopicList(Model):
    items: list[TopicPublic]
    quarantined: list[QuarantinedDefinition]  # stored but unreadable: see docs/api.md
