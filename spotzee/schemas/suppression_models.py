"""The suppression list: addresses a project never sends to, whatever a contact's consent says.

``POST /api/v1/suppressions`` takes ``{"channel", "address", "reason", "note"}``; the address is
normalised for its channel before anything is stored or looked up (at send time too), so
``Ada@Example.COM`` and ``ada@example.com`` are one entry: an email as the contact's ``email``
trait is normalised (``normalize_email``: IDNA, the domain lower-cased), then lower-cased whole; a
phone (sms, whatsapp) as E.164; a push token as given. An entry is stored in the definitions store at
``suppression/<project_id>/<channel>/<sha256 of the address, 32 hex>`` (``suppression_key``):
a fixed-length key whatever the address holds, read by a point lookup at send time.
"""

from __future__ import annotations

import hashlib
import re
import unicodedata
from typing import Annotated, Final, Literal

from pydantic import Field, ValidationInfo, field_validator

from spotzee.domain.traits import normalize_email, normalize_phone
from spotzee.schemas.common import Model, UTCDateTime

# Entries a project may have. Every Kafka worker (and the embedded process) holds the whole
# definitions store in memory, so the list is bounded: 100,000 entries are ~35 MB per project in
# every worker (~45 MB with the index of an API process). A larger list needs a store of its own.
MAX_SUPPRESSIONS_PER_PROJECT: Final = 100_000
MAX_ADDRESS: Final = 4_096  # characters: push tokens (an APNs token is 64, an FCM one ~160)
MAX_NOTE: Final = 1_000  # characters
MAX_PAGE: Final = 1_000  # entries per page of GET /api/v1/suppressions
DEFAULT_PAGE: Final = 100

SuppressionChannel = Literal["email", "sms", "whatsapp", "push"]
SuppressionReason = Literal["manual", "bounce", "complaint", "stop", "unsubscribe"]
CHANNELS: Final[tuple[str, ...]] = ("email", "sms", "whatsapp", "push")
_TOKEN: Final = re.compile(r"[\x21-\x7e]+")  # printable ASCII without spaces: what push services issue
KEY_HASH_LENGTH: Final = 32  # hex characters of the address's SHA-256 in the key (128 bits)


def normalised_address(channel: str, address: str) -> str:
    """The form an address is stored and looked up in (``ValueError`` saying why it isn't one)."""
    if len(address) > MAX_ADDRESS:
        raise ValueError(f"at most {MAX_ADDRESS} characters")
    if channel == "email":
        # As the contact's email trait (the domain lower-cased, IDNA decoded to its Unicode form),
        # then the local part lower-cased too: mailboxes that differ only in case are one
        # mailbox everywhere in practice, and a list that says "don't send" errs towards not sending.
        return normalize_email(address.strip()).lower()
    if channel in ("sms", "whatsapp"):
        return normalize_phone(address)
    if channel == "push":
        if not _TOKEN.fullmatch(address):
            raise ValueError("a push token is printable ASCII without spaces")
        return address
    raise ValueError(f"unknown channel {channel!r}")


def address_hash(address: str) -> str:
    return hashlib.sha256(address.encode()).hexdigest()[:KEY_HASH_LENGTH]


def project_prefix(project_id: str) -> str:
    return f"suppression/{project_id}/"


def suppression_key(project_id: str, channel: str, address: str) -> str:
    """The definitions key of a normalised address's entry."""
    return f"{project_prefix(project_id)}{channel}/{address_hash(address)}"


def _note(value: str | None) -> str | None:
    if value is not None:
        bad = next((c for c in value if unicodedata.category(c) == "Cc" and c not in "\n\r\t"), None)
        if bad is not None:
            raise ValueError(f"must not contain control characters (found U+{ord(bad):04X})")
    return value


class SuppressionCreate(Model):
    """``POST /api/v1/suppressions``."""

    channel: SuppressionChannel
    address: Annotated[str, Field(min_length=1, max_length=MAX_ADDRESS)]
    reason: SuppressionReason = "manual"
    note: Annotated[str | None, Field(max_length=MAX_NOTE)] = None

    @field_validator("address")
    @classmethod
    def _normalised(cls, value: str, info: ValidationInfo) -> str:
        channel = info.data.get("channel")
        if channel is None:  # the channel is refused on its own path: nothing to normalise for
            return value
        return normalised_address(channel, value)

    @field_validator("note")
    @classmethod
    def _plain_note(cls, value: str | None) -> str | None:
        return _note(value)


class SuppressionEntry(Model):
    """A stored entry (definitions key ``suppression_key(project_id, channel, address)``)."""

    type: Literal["suppression"] = "suppression"
    project_id: str
    channel: SuppressionChannel
    address: str
    reason: SuppressionReason
    note: str | None
    created_at: UTCDateTime


class SuppressionPublic(Model):
    channel: SuppressionChannel
    address: str
    reason: SuppressionReason
    note: str | None
    created_at: UTCDateTime

    @classmethod
    def from_entry(cls, entry: SuppressionEntry) -> SuppressionPublic:
        return cls.model_validate(entry.model_dump(exclude={"type", "project_id"}))


class SuppressionList(Model):
    items: list[SuppressionPublic]
    next_cursor: str | None  # pass as ``cursor`` for the next page; null on the last one
