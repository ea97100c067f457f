"""The hot path's codec: msgspec ``Struct``s for records on topics, table values and analytics rows.

Pydantic stays the contract at the edges (API bodies, definitions, OpenAPI): it validates what
comes from outside. Inside the processor, the sink and the workers everything was written by
Spotzee itself, so it is decoded and encoded by msgspec without re-validation: about 7x faster than
pydantic on a contact's state (bench/README.md). A shape that exists on both sides (an edge model
and its Struct) has one set of field names, and tests/unit/test_struct_models.py checks that the two
round-trip into each other on generated values.

Wire format: JSON, snake_case field names, tagged unions on a ``type`` field, datetimes in RFC 3339
with ``Z`` -- the same bytes pydantic wrote before, so stored state and logged records stay readable.
"""

from __future__ import annotations

import functools
from collections.abc import Hashable
from typing import Any, TypeVar, cast

import msgspec

T = TypeVar("T")
S = TypeVar("S", bound=msgspec.Struct)


class Struct(msgspec.Struct, kw_only=True):
    """Base of every internal value: unknown fields ignored (a newer writer may add one).

    msgspec applies ``kw_only`` to the fields a class itself declares, so every subclass repeats
    ``kw_only=True``: fields are then passed by name and may be declared in any order."""


class Tagged(Struct, tag_field="type"):
    """Base of the members of a tagged union: ``type`` is written first and picks the class on decode.

    Each subclass names its tag (``tag="ingest"``) and mirrors it as a ``ClassVar`` ``type`` so code reads
    ``record.type`` as it did on the pydantic models."""


def _fallback(value: Any) -> Any:
    """Values JSON has no type for (a Decimal, a UUID that reached a free-form dict) as their text."""
    return str(value)


_encoder = msgspec.json.Encoder(enc_hook=_fallback)


def encode(value: Any) -> bytes:
    """One value (a Struct, or builtins holding Structs) as JSON bytes."""
    return _encoder.encode(value)


@functools.cache
def decoder(kind: Any) -> msgspec.json.Decoder[Any]:
    """The cached decoder of one type (a Struct, a tagged union, ``dict[str, Any]``...)."""
    return msgspec.json.Decoder(kind)


def decode(kind: type[T], data: bytes | str) -> T:
    result: T = decoder(cast(Hashable, kind)).decode(data)
    return result


def to_builtins(value: Any) -> Any:
    """Dicts, lists and strings (datetimes as RFC 3339) of a Struct: what ``model_dump(mode="json")`` gave."""
    return msgspec.to_builtins(value, enc_hook=_fallback)


def convert(value: Any, kind: type[T]) -> T:
    """Builtins (or an edge model's ``model_dump()``) into ``kind``, checking the types."""
    result: T = msgspec.convert(value, kind, from_attributes=True)
    return result


def replace(value: S, **changes: Any) -> S:
    """A copy of ``value`` with ``changes`` (pydantic's ``model_copy(update=...)``)."""
    return msgspec.structs.replace(value, **changes)


def deep_copy(value: S) -> S:
    """An independent copy (nested lists and dicts too): one encode and one decode, faster than copy.deepcopy."""
    return decode(type(value), encode(value))
