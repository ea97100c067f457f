"""Definitions are decoded one at a time: one that can't be read is set aside, never fatal.

A stored definition that fails to decode (written by an older version with looser limits, or
damaged) is *quarantined*: the caller gets an ``Unreadable`` in its place and skips it, the log
gets one line per key and stored value (its key and the error, never its content), and the API
lists it to its project (``quarantined`` in the segment and journey listings). Everything else
of every project goes on working, and a process starts whatever its store holds.
"""

from __future__ import annotations

import logging
import re
import threading
from collections.abc import Callable
from dataclasses import dataclass
from typing import Final, TypeVar

import orjson
from pydantic import ValidationError

log = logging.getLogger(__name__)

T = TypeVar("T")

_TOKEN: Final = re.compile(rb'"(?:[^"\\]|\\.?)*+"?|[\[\]{}:,]', re.DOTALL)
_MAX_REASON: Final = 300
_MAX_REMEMBERED: Final = 10_000


@dataclass(frozen=True)
class Unreadable:
    """A definition that could not be decoded; ``project_id`` when its bytes still name one."""

    key: str
    project_id: str | None
    reason: str

    @property
    def id(self) -> str:
        return self.key.partition("/")[2]


_lock = threading.Lock()
_seen: dict[str, tuple[int, Unreadable]] = {}  # key -> (hash of the stored bytes, verdict)


def decode(key: str, raw: bytes, read: Callable[[bytes], T]) -> T | Unreadable:
    """``read(raw)``, or the quarantined ``Unreadable`` when anything about it fails."""
    try:
        return read(raw)
    except Exception as exc:  # whatever one definition does wrong stays with that definition
        return quarantine(key, raw, exc)


def quarantine(key: str, raw: bytes, exc: BaseException) -> Unreadable:
    digest = hash(raw)
    with _lock:
        known = _seen.get(key)
    if known is not None and known[0] == digest:
        return known[1]  # logged already: listings decode every definition on every call
    item = Unreadable(key, owner(raw), describe(exc))
    log.error("definition %s is unreadable and quarantined (%d bytes): %s", key, len(raw), item.reason)
    with _lock:
        if len(_seen) >= _MAX_REMEMBERED:
            _seen.clear()
        _seen[key] = (digest, item)
    return item


def describe(exc: BaseException) -> str:
    """The error without the input: pydantic's first error (location and message), else the
    exception's type (other messages may quote the data)."""
    if isinstance(exc, ValidationError):
        errors = exc.errors(include_input=False, include_url=False, include_context=False)
        if errors:
            first = errors[0]
            where = ".".join(str(part) for part in first["loc"]) or "(root)"
            more = f" (and {len(errors) - 1} more)" if len(errors) > 1 else ""
            return f"{where}: {first['msg']}{more}"[:_MAX_REASON]
    return type(exc).__name__


def owner(raw: bytes) -> str | None:
    """The top-level ``project_id`` string of a JSON object, read token by token without
    recursion (the bytes may be nested too deeply for any JSON reader); None when absent."""
    depth = 0
    key: bytes | None = None
    expect = False  # the next value at depth 1 is project_id's
    for match in _TOKEN.finditer(raw):
        token = match.group()
        if token in (b"[", b"{"):
            depth += 1
            expect = False
        elif token in (b"]", b"}"):
            depth -= 1
        elif depth != 1:
            continue
        elif token == b",":
            expect = False
        elif token == b":":
            expect = key == b'"project_id"'
        elif expect:
            return _string(token)
        else:
            key = token
    return None


def _string(token: bytes) -> str | None:
    try:
        value = orjson.loads(token)
    except orjson.JSONDecodeError:
        return None
    return value if isinstance(value, str) else None
