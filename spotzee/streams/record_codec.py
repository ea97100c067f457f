"""Bytes <-> pydantic models for topics and tables. The schemas are the wire format (JSON)."""

from __future__ import annotations

from typing import TypeVar

from pydantic import BaseModel, TypeAdapter

M = TypeVar("M", bound=BaseModel)
T = TypeVar("T")


def dumps(model: BaseModel) -> bytes:
    return model.model_dump_json(by_alias=False, exclude_none=False).encode()


def loads(model: type[M], data: bytes) -> M:
    return model.model_validate_json(data)


def loads_union(adapter: TypeAdapter[T], data: bytes) -> T:
    return adapter.validate_json(data)
