"""Trait normalisation and nested-path merging for contact attributes.

Rules (documented in docs/contacts.md):
- nested objects deep-merge into what is stored; a key containing dots is a path
  (``{"address.city": "Paris"}`` sets ``traits.address.city``);
- ``null`` at any level removes that key;
- ``email``, ``phone`` (E.164), ``timezone`` (IANA) and ``locale`` are first-class fields,
  validated and normalised; an invalid value is rejected with its path.
"""

from __future__ import annotations

import functools
import re
from typing import Any
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError, available_timezones

import phonenumbers
from email_validator import EmailNotValidError, validate_email

from spotzee.schemas.contact_models import FIRST_CLASS_FIELDS

_LOCALE = re.compile(r"^[A-Za-z]{2,3}(?:[-_][A-Za-z0-9]{2,8})*$")
MAX_TRAIT_DEPTH = 16
"""Levels of nesting in traits; each segment of a dotted key counts as a level (``a.b`` is two)."""
MAX_TRAIT_KEY_LENGTH = 256
"""Characters in one trait key (a dotted key counts whole)."""

_TIMEZONES: set[str] | None = None


class TraitError(ValueError):
    """A trait value is invalid; ``path`` names it (dot-separated)."""

    def __init__(self, path: str, reason: str) -> None:
        super().__init__(f"{path}: {reason}")
        self.path = path
        self.reason = reason


EMAIL_CACHE_SIZE = 8192
"""Normalised addresses remembered (an LRU): a contact's identify calls repeat its address, and
``validate_email`` costs 20-40 µs per call. Invalid addresses are not cached (checked each time)."""


def normalize_email(value: str) -> str:
    try:
        return _normalized_email(value)
    except EmailNotValidError as exc:
        raise ValueError(str(exc)) from exc


@functools.lru_cache(maxsize=EMAIL_CACHE_SIZE)
def _normalized_email(value: str) -> str:
    """Pure (no deliverability check, so no DNS): the same text always normalises the same way."""
    normalized: str = validate_email(value, check_deliverability=False).normalized
    return normalized


def normalize_phone(value: str) -> str:
    """E.164 only: a leading ``+`` and country code are required; formatting is tolerated."""
    if not value.strip().startswith("+"):
        raise ValueError("phone must be in E.164 form with a leading + and country code")
    try:
        number = phonenumbers.parse(value, None)
    except phonenumbers.NumberParseException as exc:
        raise ValueError(f"not a phone number ({exc})") from exc
    if not phonenumbers.is_possible_number(number):
        raise ValueError("not a possible phone number")
    return phonenumbers.format_number(number, phonenumbers.PhoneNumberFormat.E164)


def normalize_timezone(value: str) -> str:
    global _TIMEZONES
    if _TIMEZONES is None:
        _TIMEZONES = available_timezones()
    if value not in _TIMEZONES and value != "UTC":
        raise ValueError("not an IANA time zone name")
    try:
        ZoneInfo(value)
    except (ZoneInfoNotFoundError, ValueError) as exc:
        raise ValueError("not an IANA time zone name") from exc
    return value


def normalize_locale(value: str) -> str:
    if not _LOCALE.match(value):
        raise ValueError("not a locale tag (e.g. en, en-GB, pt_BR)")
    parts = value.replace("_", "-").split("-")
    return "-".join([parts[0].lower(), *[p.upper() if len(p) == 2 else p for p in parts[1:]]])


_NORMALIZERS = {
    "email": normalize_email,
    "phone": normalize_phone,
    "timezone": normalize_timezone,
    "locale": normalize_locale,
}


def normalize_traits(traits: dict[str, Any], *, prefix: str = "traits") -> dict[str, Any]:
    """Validate first-class fields and depth; returns a copy with normalised values.

    Raises TraitError with the offending path, so nothing is stored for bad input.
    """
    out = dict(traits)
    for name in FIRST_CLASS_FIELDS:
        if name not in out or out[name] is None:
            continue
        value = out[name]
        if not isinstance(value, str):
            raise TraitError(f"{prefix}.{name}", "must be a string")
        try:
            out[name] = _NORMALIZERS[name](value)
        except ValueError as exc:
            raise TraitError(f"{prefix}.{name}", str(exc)) from exc
    _check_depth(out, prefix, 0)
    return out


def _check_depth(value: Any, path: str, depth: int) -> None:
    """Dotted keys are expanded into nested objects when stored, so their segments count as levels:
    a depth limit that only counted JSON nesting let ``{"a.a.a...": 1}`` build state too deep to read."""
    if depth > MAX_TRAIT_DEPTH:
        raise TraitError(path, f"nested deeper than {MAX_TRAIT_DEPTH} levels (each part of a dotted key is a level)")
    if isinstance(value, dict):
        for key, item in value.items():
            if not isinstance(key, str) or not key or key.startswith(".") or key.endswith(".") or ".." in key:
                raise TraitError(f"{path}.{key}", "empty path segment")
            if len(key) > MAX_TRAIT_KEY_LENGTH:
                raise TraitError(f"{path}.{key[:32]}…", f"key longer than {MAX_TRAIT_KEY_LENGTH} characters")
            _check_depth(item, f"{path}.{key}", depth + key.count(".") + 1)


def expand_paths(traits: dict[str, Any]) -> dict[str, Any]:
    """Turn dotted keys into nested objects: ``{"a.b": 1}`` -> ``{"a": {"b": 1}}``."""
    out: dict[str, Any] = {}
    for key, value in traits.items():
        parts = key.split(".")
        node = out
        for part in parts[:-1]:
            child = node.get(part)
            if not isinstance(child, dict):
                child = {}
                node[part] = child
            node = child
        leaf = parts[-1]
        if isinstance(value, dict) and isinstance(node.get(leaf), dict):
            node[leaf] = _deep_update(node[leaf], expand_paths(value))
        else:
            node[leaf] = expand_paths(value) if isinstance(value, dict) else value
    return out


def _deep_update(base: dict[str, Any], update: dict[str, Any]) -> dict[str, Any]:
    for key, value in update.items():
        if isinstance(value, dict) and isinstance(base.get(key), dict):
            base[key] = _deep_update(base[key], value)
        else:
            base[key] = value
    return base


def merge_traits(
    current: dict[str, Any], update: dict[str, Any], *, path: str = ""
) -> tuple[dict[str, Any], list[tuple[str, Any, Any]]]:
    """Deep-merge ``update`` into ``current`` (``null`` removes). Returns (merged, changes).

    ``changes`` are (path, old, new) for every leaf that changed; ``new`` is None for removals.

    Copy on write: ``current`` is not changed; the result is a new dict whose nested dicts are new
    along the paths the update reaches and shared with ``current`` elsewhere (stored traits are
    never changed in place, so sharing is safe and no deep copy is needed).
    """
    changes: list[tuple[str, Any, Any]] = []
    merged = _merged(current, expand_paths(update), path, changes)
    return merged, changes


def _merged(
    current: dict[str, Any], update: dict[str, Any], path: str, changes: list[tuple[str, Any, Any]]
) -> dict[str, Any]:
    target = dict(current)
    for key, value in update.items():
        here = f"{path}.{key}" if path else key
        old = target.get(key)
        if value is None:
            if key in target:
                changes.append((here, target.pop(key), None))
        elif isinstance(value, dict) and isinstance(old, dict):
            nested = _merged(old, value, here, changes)
            if nested:
                target[key] = nested
            else:
                target.pop(key)
        elif isinstance(value, dict):
            cleaned = _drop_nulls(value)
            if old != cleaned:
                target[key] = cleaned
                changes.append((here, old, cleaned))
        elif old != value:
            target[key] = value
            changes.append((here, old, value))
    return target


def _drop_nulls(value: dict[str, Any]) -> dict[str, Any]:
    return {k: (_drop_nulls(v) if isinstance(v, dict) else v) for k, v in value.items() if v is not None}
