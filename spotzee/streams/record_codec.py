"""Bytes <-> values for topics and tables: msgspec Structs inside the hot path, pydantic models for
definitions (JSON either way; see schemas/structs.py)."""

from __future__ import annotations

from typing import Any, TypeVar

import msgspec
from pydantic import BaseModel, TypeAdapter

from spotzee.schemas import structs

T = TypeVar("T")


def dumps(value: msgspec.Struct | BaseModel) -> bytes:
    if isinstance(value, msgspec.Struct):  # first: the hot path's case, and a cheaper check than pydantic's ABC
        return structs.encode(value)
    return value.model_dump_json(by_alias=False, exclude_none=False).encode()


def loads(kind: type[T], data: bytes) -> T:
    if isinstance(kind, type) and issubclass(kind, BaseModel):
        model: Any = kind
        result: T = model.model_validate_json(data)
        return result
    return structs.decode(kind, data)


def loads_union(adapter: TypeAdapter[T], data: bytes) -> T:
    return adapter.validate_json(data)
