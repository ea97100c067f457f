"""Reading contact attributes and event properties, and what each operator means (shared, pure).

Semantics (documented in ``spotzee.schemas.rules``):

- a missing value (absent trait, ``None`` field) satisfies only ``not_exists`` and the negated
  operators: ``neq``, ``not_contains`` and ``not_in`` are exactly ``not eq``, ``not contains`` and
  ``not in``, so ``{"type": "none", ...}`` and the negated operators agree;
- numbers compare with numbers (booleans are not numbers), strings with strings; when either
  side is a datetime the other is read as an ISO-8601 instant; anything else is incomparable
  (``eq`` false, ``gt``/``lt``/``between`` false);
- ``contains``: substring of a string, or element of a list; ``in``: the value is one of the
  list (a list attribute: shares an element with it);
- dates (``before``, ``after``, ``within_last``, ``more_than``) read the attribute as an instant:
  a datetime field, or an ISO-8601 string in a trait (naive means UTC);
  ``within_last N``: ``now - N < t <= now``; ``more_than N`` (ago): ``t <= now - N``. Both
  boundaries are instants at which the value has already flipped, so timers can be exact.
"""

from __future__ import annotations

import math
import operator
from collections.abc import Callable, Iterable
from datetime import UTC, datetime, timedelta
from fractions import Fraction
from functools import lru_cache
from typing import Any

from spotzee.schemas.contact_models import ContactState
from spotzee.schemas.rules import (
    CONTACT_FIELDS,
    AttributeRule,
    OccurrenceCondition,
    PropertyFilter,
    canonical_attribute_path,
    duration,
)

_NEGATED = {"neq": "eq", "not_contains": "contains", "not_in": "in"}


@lru_cache(maxsize=4096)
def _parts(path: str) -> tuple[str, ...]:
    return tuple(path.split("."))


def read_path(data: Any, path: str) -> Any:
    """The value at a dot path inside nested dicts, or None."""
    node = data
    for part in _parts(path):
        if not isinstance(node, dict):
            return None
        node = node.get(part)
    return node


@lru_cache(maxsize=4096)
def _attribute(path: str) -> tuple[str | None, str]:
    """(first-class field, None) or (None, trait path) of an attribute path."""
    canonical = canonical_attribute_path(path)
    if canonical in CONTACT_FIELDS:
        return canonical, ""
    return None, canonical.removeprefix("traits.")


def path_reader(path: str) -> Callable[[Any], Any]:
    """``read_path(·, path)`` as a function (a top-level key: one ``dict.get``), made once per rule."""
    if "." in path:
        return lambda data: read_path(data, path)
    return lambda data: data.get(path) if isinstance(data, dict) else None


def read_attribute(contact: ContactState, path: str) -> Any:
    """A first-class field or a trait (``country``, ``traits.country``, ``address.city``)."""
    field, trait = _attribute(path)
    if field is not None:
        return getattr(contact, field)
    return read_path(contact.traits, trait)


def number(value: Any) -> float | None:
    """A finite number as float, else None (booleans, strings and NaN are not numbers)."""
    if type(value) is float:  # the usual case, answered as below
        return value if math.isfinite(value) else None
    if isinstance(value, bool) or not isinstance(value, int | float):
        return None
    try:
        result = float(value)
    except OverflowError:
        return None
    return result if math.isfinite(result) else None


def exact_float(value: Fraction) -> float:
    """A correctly rounded float of an exact sum (overflow saturates)."""
    try:
        return float(value)
    except OverflowError:
        return math.inf if value > 0 else -math.inf


def exact_sum(values: Iterable[float]) -> Fraction:
    """The exact sum: independent of order, so incremental and recomputed sums agree bit for bit."""
    return sum((Fraction(v) for v in values), Fraction(0))


@lru_cache(maxsize=4096)
def _parse_instant(text: str) -> datetime | None:
    try:
        parsed = datetime.fromisoformat(text)
    except ValueError:
        return None
    return parsed.replace(tzinfo=UTC) if parsed.tzinfo is None else parsed.astimezone(UTC)


def as_instant(value: Any) -> datetime | None:
    if isinstance(value, datetime):
        return value.replace(tzinfo=UTC) if value.tzinfo is None else value.astimezone(UTC)
    if isinstance(value, str):
        return _parse_instant(value)
    return None


def _is_number(value: Any) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool) and not math.isnan(value)


def equal(a: Any, b: Any) -> bool:
    kind = type(a)
    if kind is type(b) and (kind is str or kind is int):  # the common cases, answered as below
        return bool(a == b)
    if isinstance(a, datetime) or isinstance(b, datetime):
        left, right = as_instant(a), as_instant(b)
        return left is not None and right is not None and left == right
    if _is_number(a) and _is_number(b):
        return bool(a == b)
    if isinstance(a, bool) or isinstance(b, bool):
        return isinstance(a, bool) and isinstance(b, bool) and a == b
    if isinstance(a, str) and isinstance(b, str):
        return a == b
    if isinstance(a, list) and isinstance(b, list):
        return len(a) == len(b) and all(equal(x, y) for x, y in zip(a, b, strict=True))
    if isinstance(a, dict) and isinstance(b, dict):
        return a == b
    return False


def order(a: Any, b: Any) -> int | None:
    """-1, 0 or 1 comparing ``a`` with ``b``; None when they are not comparable."""
    left: Any
    right: Any
    if isinstance(a, datetime) or isinstance(b, datetime):
        left, right = as_instant(a), as_instant(b)
        if left is None or right is None:
            return None
    elif (_is_number(a) and _is_number(b)) or (isinstance(a, str) and isinstance(b, str)):
        left, right = a, b
    else:
        return None
    return -1 if left < right else 1 if left > right else 0


# The comparisons as functions: what ``compare`` does for two numbers neither of which is NaN.
OPS: dict[str, Callable[[Any, Any], bool]] = {
    "eq": operator.eq,
    "neq": operator.ne,
    "gt": operator.gt,
    "gte": operator.ge,
    "lt": operator.lt,
    "lte": operator.le,
}


def compare(op: str, actual: Any, value: Any) -> bool:
    """``actual <op> value`` for eq/neq/gt/gte/lt/lte."""
    a, b = type(actual), type(value)
    if (a is int or a is float) and (b is int or b is float) and actual == actual and value == value:
        return OPS[op](actual, value)  # two numbers, neither NaN: what the general path gives
    if op == "eq":
        return equal(actual, value)
    if op == "neq":
        return not equal(actual, value)
    sign = order(actual, value)
    if sign is None:
        return False
    return {"gt": sign > 0, "gte": sign >= 0, "lt": sign < 0, "lte": sign <= 0}[op]


def _contains(actual: Any, value: Any) -> bool:
    if isinstance(actual, str):
        return isinstance(value, str) and value in actual
    if isinstance(actual, list):
        return any(equal(item, value) for item in actual)
    return False


def _is_in(actual: Any, options: list[Any]) -> bool:
    if isinstance(actual, list):
        return any(equal(item, option) for item in actual for option in options)
    return any(equal(actual, option) for option in options)


_VALUEOPS = frozenset({"eq", "gt", "gte", "lt", "lte", "between", "contains", "starts_with", "ends_with", "in"})


def holds(op: str, actual: Any, value: Any, unit: str | None, now: datetime) -> bool:
    """Whether ``actual`` (None when missing) satisfies ``op value`` at ``now``."""
    fast = OPS.get(op)
    if fast is not None:  # the common cases first, answered as the general path below answers them
        a, b = type(actual), type(value)
        if (a is int or a is float) and (b is int or b is float) and actual == actual and value == value:
            return fast(actual, value)  # two numbers, neither NaN
        if a is str and b is str and (op == "eq" or op == "neq"):
            return fast(actual, value)
    if op == "exists":
        return actual is not None
    if op == "not_exists":
        return actual is None
    if op in _NEGATED:
        return not holds(_NEGATED[op], actual, value, unit, now)
    if actual is None:
        return False
    if op in _VALUEOPS:
        return _value_holds(op, actual, value)
    return _time_holds(op, actual, value, unit, now)


def _value_holds(op: str, actual: Any, value: Any) -> bool:
    """The comparisons, ``between`` and the text and list ops, on a present ``actual``."""
    if op in ("eq", "gt", "gte", "lt", "lte"):
        return compare(op, actual, value)
    if op == "between":
        low, high = value
        above, below = order(actual, low), order(actual, high)
        return above is not None and below is not None and above >= 0 and below <= 0
    if op == "contains":
        return _contains(actual, value)
    if op == "starts_with":
        return isinstance(actual, str) and actual.startswith(value)
    if op == "ends_with":
        return isinstance(actual, str) and actual.endswith(value)
    return _is_in(actual, value)


def _time_holds(op: str, actual: Any, value: Any, unit: str | None, now: datetime) -> bool:
    """The date ops: absolute (``before`` / ``after``) and relative to ``now``; false when
    ``actual`` is not an instant."""
    instant = as_instant(actual)
    if instant is None:
        return False
    if op == "before":
        return bool(instant < value)
    if op == "after":
        return bool(instant > value)
    assert unit is not None
    if op == "within_last":
        return now - _duration(value, unit) < instant <= now
    if op == "more_than":
        return instant <= now - _duration(value, unit)
    raise ValueError(f"unknown operator {op}")


def attribute_holds(rule: AttributeRule, contact: ContactState, now: datetime) -> bool:
    return holds(rule.op, read_attribute(contact, rule.path), rule.value, rule.unit, now)


def attribute_breakpoints(rule: AttributeRule, contact: ContactState) -> list[datetime]:
    """Instants at which a relative date condition flips by itself (the clock crossing a threshold)."""
    if rule.op not in ("within_last", "more_than") or rule.unit is None:
        return []
    instant = as_instant(read_attribute(contact, rule.path))
    if instant is None:
        return []
    ends = shifted(instant, _duration(rule.value, rule.unit))
    points = [instant] if rule.op == "within_last" else []
    return points + ([ends] if ends is not None else [])


def filters_pass(where: Iterable[PropertyFilter], properties: dict[str, Any]) -> bool:
    """Property filters never use relative dates, so ``now`` does not matter to them."""
    return all(holds(f.op, read_path(properties, f.path), f.value, None, _EPOCH) for f in where)


def property_filter(where: Iterable[PropertyFilter]) -> Callable[[dict[str, Any]], bool] | None:
    """``filters_pass(where, properties)`` as one function of the properties (None: no filter),
    made once per tracker: it runs on every event of the tracker's name."""
    checks = tuple(_filter_check(f.op, f.path, f.value) for f in where)
    if not checks:
        return None
    if len(checks) == 1:
        return checks[0]

    def every(properties: dict[str, Any]) -> bool:
        return all(check(properties) for check in checks)

    return every


def _filter_check(op: str, path: str, value: Any) -> Callable[[dict[str, Any]], bool]:
    """One filter: ``holds(op, read_path(properties, path), value, None, _EPOCH)``, with the read of a
    top-level property and the comparison of a string with a string, or a number with a number,
    done inline (``holds``'s own fast paths)."""
    direct = OPS.get(op, OPS["eq"])  # (read only when ``op`` is one of OPS)
    texts = type(value) is str and op in ("eq", "neq")
    numbers = op in OPS and type(value) in (int, float) and value == value
    nested = "." in path

    def check(properties: dict[str, Any]) -> bool:
        actual = read_path(properties, path) if nested else properties.get(path)
        kind = type(actual)
        if texts and kind is str:
            return direct(actual, value)
        if numbers and (kind is int or kind is float) and actual == actual:
            return direct(actual, value)
        return holds(op, actual, value, None, _EPOCH)

    return check


def occurred(condition: OccurrenceCondition, at: datetime | None, now: datetime) -> bool:
    """First/last occurrence at ``at`` (None: never) against ``condition``.

    ``within_last N``: ``at > now - N`` (an event stamped ahead of the clock is recent too);
    ``more_than N``: ``at <= now - N``.
    """
    if at is None:
        return False
    if condition.op == "before":
        return bool(at < condition.value)
    if condition.op == "after":
        return bool(at > condition.value)
    assert condition.unit is not None
    threshold = now - _duration(condition.value, condition.unit)
    return at > threshold if condition.op == "within_last" else at <= threshold


def occurrence_breakpoints(condition: OccurrenceCondition, at: datetime | None) -> list[datetime]:
    if at is None or condition.unit is None:
        return []
    ends = shifted(at, _duration(condition.value, condition.unit))
    return [ends] if ends is not None else []


def shifted(at: datetime, by: timedelta) -> datetime | None:
    """``at + by``, or None past the end of the calendar (that instant never comes)."""
    try:
        return at + by
    except OverflowError:
        return None


_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)


@lru_cache(maxsize=4096)
def _duration(value: float, unit: str) -> timedelta:
    """``rules.duration`` of a validated condition (read on every evaluation: made once)."""
    return duration(value, unit)
