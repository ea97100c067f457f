"""Smart-segment rules: the JSON the API accepts (``SegmentCreate``) and the tree the engine compiles.

A rule is a tree of small nodes, a union discriminated on ``type``:

- ``attribute`` -- a contact field or custom trait compared with an operator (``AttributeRule``);
- ``event`` -- behaviour: how often, how much, how recently an event happened (``EventRule``);
- ``list`` / ``segment`` / ``subscription`` / ``random`` / ``everyone`` -- membership nodes;
- ``all`` / ``any`` / ``none`` -- combinators.

Limits (``spotzee.schemas.limits``, checked before the rule is validated or stored): rules nest at
most ``MAX_RULE_DEPTH`` (32) levels, hold at most ``MAX_RULE_NODES`` (500) nodes and take at most
``MAX_RULE_BYTES`` (64 KiB) as stored; a violation is reported at the offending node
(``rule.rules.0.rules.0...``) or at the rule itself (size).

Attribute paths: ``email``, ``phone``, ``timezone``, ``locale``, ``user_id``, ``first_seen``,
``last_seen`` and ``created_at`` name the contact's first-class fields; any other path is a custom
trait by dot path (``country`` is ``traits.country``, ``address.city`` is nested), and an explicit
``traits.`` prefix is accepted too (``traits.email`` reaches a trait that shadows a field name).

Operators (``op``) and the ``value`` each takes:

=============================================  ======================================================
``exists``, ``not_exists``                     no value
``eq``, ``neq``                                a scalar or a list (list equality)
``gt``, ``gte``, ``lt``, ``lte``               a number or a string
``between``                                    ``[low, high]``, both numbers or both strings, inclusive
``contains``, ``not_contains``                 a scalar: substring of a string, or element of a list
``starts_with``, ``ends_with``                 a string
``in``, ``not_in``                             a non-empty list of scalars
``before``, ``after``                          an ISO-8601 datetime (naive means UTC)
``within_last``, ``more_than``                 a positive number and a ``unit`` (relative to now)
=============================================  ======================================================

Datetime strings in rule values are kept as strings; they compare as instants against datetime
fields (``created_at`` ...) and as plain strings against string traits -- use ``before``/``after``
or the relative operators for dates kept in traits. ``within_last`` / ``more_than`` are attribute
operators only, never event-property filters (an event's match must not change with the clock).

Errors carry the path of the offending field as pydantic's ``loc``, without union tags:
``rule.rules.1.count.op``, ``rule.rules.0.value``, ``rule.type``.
"""

from __future__ import annotations

import math
import re
from datetime import datetime, timedelta
from typing import Annotated, Any, Final, Literal

from pydantic import (
    AfterValidator,
    Field,
    TypeAdapter,
    ValidationError,
    ValidationInfo,
    ValidatorFunctionWrapHandler,
    WrapValidator,
)
from pydantic_core import PydanticCustomError

from spotzee.schemas.common import Model, UTCDateTime
from spotzee.schemas.limits import MAX_RULE_BYTES, check_rule_shape, check_stored_size

TimeUnit = Literal["second", "minute", "hour", "day", "week", "month"]
UNIT_SECONDS: Final[dict[str, int]] = {
    "second": 1,
    "minute": 60,
    "hour": 3600,
    "day": 86_400,
    "week": 7 * 86_400,
    "month": 30 * 86_400,  # a month is 30 days
}
MAX_DURATION: Final = timedelta(days=36_500)
MAX_COUNT: Final = 10_000  # a rolling count keeps up to value + 1 timestamps per contact

CONTACT_FIELDS: Final = ("email", "phone", "timezone", "locale", "user_id", "first_seen", "last_seen", "created_at")
CHANNELS: Final = ("email", "sms", "whatsapp", "push", "in_app", "webhook")

PropertyOp = Literal[
    "eq",
    "neq",
    "gt",
    "gte",
    "lt",
    "lte",
    "between",
    "contains",
    "not_contains",
    "starts_with",
    "ends_with",
    "in",
    "not_in",
    "exists",
    "not_exists",
    "before",
    "after",
]
AttributeOp = Literal[PropertyOp, "within_last", "more_than"]  # the relative ops are for attributes only
CompareOp = Literal["eq", "neq", "gt", "gte", "lt", "lte"]
OccurrenceOp = Literal["within_last", "more_than", "before", "after"]
AggregateFn = Literal["sum", "min", "max", "avg"]

VALUELESS_OPS: Final = frozenset({"exists", "not_exists"})
RELATIVE_OPS: Final = frozenset({"within_last", "more_than"})
DATE_OPS: Final = frozenset({"before", "after"})
LIST_OPS: Final = frozenset({"in", "not_in"})
ORDER_OPS: Final = frozenset({"gt", "gte", "lt", "lte"})
TEXT_OPS: Final = frozenset({"starts_with", "ends_with"})

_SEGMENT = re.compile(r"^[^.\s][^.]*$")
UTCDateTimeAdapter: Final = TypeAdapter[datetime](UTCDateTime)


def duration(amount: float, unit: str) -> timedelta:
    """``amount`` units as a timedelta (whole numbers are exact).

    Raises ValueError for amounts no timedelta holds (10**30 days, inf, nan): inside a validator
    that is a 400 with the field's path, not an OverflowError."""
    try:
        if isinstance(amount, int) or float(amount).is_integer():
            return timedelta(seconds=int(amount) * UNIT_SECONDS[unit])
        return timedelta(seconds=amount * UNIT_SECONDS[unit])
    except (OverflowError, ValueError):
        raise ValueError("duration out of range") from None


def canonical_attribute_path(path: str) -> str:
    """``email`` -> ``email``; ``country`` and ``traits.country`` -> ``traits.country``."""
    if path in CONTACT_FIELDS or path.startswith("traits."):
        return path
    return f"traits.{path}"


# -- field validators (raise ValueError: pydantic reports it at the field's own loc) -----------


def _dot_path(value: str) -> str:
    if not value or not all(_SEGMENT.match(part) for part in value.split(".")):
        raise ValueError("must be a dot path of non-empty names (e.g. address.city)")
    return value


def _attribute_path(value: str) -> str:
    _dot_path(value)
    if value == "traits":
        raise ValueError("name a trait: traits.<name>")
    return value


def _is_scalar(value: Any) -> bool:
    if isinstance(value, float):
        return math.isfinite(value)
    return isinstance(value, str | int | bool)


def _is_number(value: Any) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool) and math.isfinite(value)


def _jsonable(value: Any) -> Any:
    """Datetimes given from Python become ISO strings, as they would arrive in JSON (one list
    level: values are scalars or lists of scalars, anything deeper is refused as it is)."""
    if isinstance(value, datetime):
        return UTCDateTimeAdapter.validate_python(value).isoformat()
    if isinstance(value, list | tuple):
        return [UTCDateTimeAdapter.validate_python(v).isoformat() if isinstance(v, datetime) else v for v in value]
    return value


def _parse_datetime(value: Any) -> datetime:
    try:
        return UTCDateTimeAdapter.validate_python(value)
    except ValidationError as exc:
        raise ValueError("must be an ISO-8601 datetime") from exc


def _unit_fits_op(unit: TimeUnit | None, info: ValidationInfo) -> TimeUnit | None:
    op = info.data.get("op")
    if op in RELATIVE_OPS and unit is None:
        raise ValueError(f"{op} needs a unit (second, minute, hour, day, week or month)")
    if op is not None and op not in RELATIVE_OPS and unit is not None:
        raise ValueError("unit is only for within_last and more_than")
    return unit


def _value_fits_op(value: Any, info: ValidationInfo) -> Any:
    """Check (and normalise) ``value`` against the already validated ``op`` and ``unit``."""
    op = info.data.get("op")
    if op is None:  # the op itself was invalid and is reported there
        return value
    value = _jsonable(value)
    if op in VALUELESS_OPS:
        if value is not None:
            raise ValueError(f"{op} takes no value")
        return None
    if value is None:
        raise ValueError(f"{op} needs a value")
    if op in RELATIVE_OPS:
        return _relative_value(op, value, info.data.get("unit"))
    if op in DATE_OPS:
        return _parse_datetime(value)
    if op in LIST_OPS:
        return _list_value(op, value)
    if op == "between":
        return _between_value(value)
    return _single_value(op, value)


def _relative_value(op: str, value: Any, unit: TimeUnit | None) -> Any:
    """``within_last`` / ``more_than``: a positive number of units, at most 100 years."""
    if not _is_number(value) or value <= 0:
        raise ValueError(f"{op} needs a positive number of units")
    if unit is not None and duration(value, unit) > MAX_DURATION:
        raise ValueError("longer than 100 years")
    return value


def _list_value(op: str, value: Any) -> Any:
    if not isinstance(value, list) or not value or not all(_is_scalar(v) for v in value):
        raise ValueError(f"{op} needs a non-empty list of strings, numbers or booleans")
    return value


def _between_value(value: Any) -> Any:
    if not (isinstance(value, list) and len(value) == 2):
        raise ValueError("between needs a list of two values [low, high]")
    low, high = value
    if not ((_is_number(low) and _is_number(high)) or (isinstance(low, str) and isinstance(high, str))):
        raise ValueError("between needs two numbers or two strings")
    if low > high:
        raise ValueError("between needs low <= high")
    return value


def _single_value(op: str, value: Any) -> Any:
    """The comparisons and text ops: one scalar (``eq`` / ``neq`` also take a list of them)."""
    if op in ("eq", "neq") and isinstance(value, list):
        if not all(_is_scalar(v) for v in value):
            raise ValueError("a list value may hold only strings, numbers and booleans")
        return value
    if not _is_scalar(value):
        raise ValueError(f"{op} needs a string, number or boolean")
    if op in ORDER_OPS and not (_is_number(value) or isinstance(value, str)):
        raise ValueError(f"{op} needs a number or a string")
    if op in TEXT_OPS and not isinstance(value, str):
        raise ValueError(f"{op} needs a string")
    return value


AttributePath = Annotated[str, Field(max_length=512), AfterValidator(_attribute_path)]
PropertyPath = Annotated[str, Field(max_length=512), AfterValidator(_dot_path)]
Unit = Annotated[TimeUnit | None, AfterValidator(_unit_fits_op), Field(validate_default=True)]
Value = Annotated[Any, AfterValidator(_value_fits_op), Field(validate_default=True)]


# -- leaves ---------------------------------------------------------------------------------------


class AttributeRule(Model):
    """A contact field or trait: ``{"type": "attribute", "path": "country", "op": "eq", "value": "FR"}``."""

    type: Literal["attribute"] = "attribute"
    path: AttributePath
    op: AttributeOp
    unit: Unit = None
    value: Value = None


class PropertyFilter(Model):
    """An event-property condition in ``where`` (dot path into ``properties``)."""

    path: PropertyPath
    op: PropertyOp
    unit: Unit = None
    value: Value = None


class CountCondition(Model):
    """How many matching events: ``{"op": "gte", "value": 2}``."""

    op: CompareOp
    value: Annotated[int, Field(ge=0, le=MAX_COUNT, strict=True)]


class AggregateCondition(Model):
    """A numeric property folded over the matching events, compared to ``value``.

    Events whose property is missing or not a finite number are left out. ``sum`` of nothing is 0;
    ``min``, ``max`` and ``avg`` of nothing have no value, and the condition is false.
    """

    fn: AggregateFn
    property: PropertyPath
    op: CompareOp
    value: Annotated[float, Field(allow_inf_nan=False)]


class OccurrenceCondition(Model):
    """When the first/last matching event happened.

    ``{"op": "more_than", "value": 30, "unit": "day"}`` -- more than 30 days ago;
    ``{"op": "within_last", "value": 7, "unit": "day"}``; ``{"op": "before"|"after", "value": <datetime>}``.
    Never having happened satisfies none of them.
    """

    op: OccurrenceOp
    unit: Unit = None
    value: Value = None


def _window_length(last: float, info: ValidationInfo) -> float:
    unit = info.data.get("unit")
    if unit is not None and duration(last, unit) > MAX_DURATION:
        raise ValueError("window longer than 100 years")
    return last


class RollingWindow(Model):
    """``{"last": 30, "unit": "day"}``: events with ``timestamp > now - 30 days``."""

    unit: TimeUnit
    last: Annotated[float, Field(gt=0, allow_inf_nan=False), AfterValidator(_window_length)]

    def length(self) -> timedelta:
        return duration(self.last, self.unit)


def _range_fits(value: tuple[datetime, datetime] | None, info: ValidationInfo) -> tuple[datetime, datetime] | None:
    if value is None:
        return None
    if info.data.get("within") is not None:
        raise ValueError("use either within or between, not both")
    if value[0] > value[1]:
        raise ValueError("between needs from <= to")
    return value


def _occurrence_fits(value: OccurrenceCondition | None, info: ValidationInfo) -> OccurrenceCondition | None:
    if value is not None and info.data.get("within") is not None:
        raise ValueError("first_occurred/last_occurred are relative to now already; drop within (between is allowed)")
    return value


class EventRule(Model):
    """Behaviour: events named ``name`` whose properties pass ``where``, inside a window.

    The window is rolling (``within``), absolute (``between: [from, to]``, both inclusive) or all
    time (neither). Conditions on the matching events -- all that are given must hold; with none
    of them the rule means ``count gte 1``:

    - ``count``: how many;
    - ``aggregate``: sum/min/max/avg of a numeric property;
    - ``first_occurred`` / ``last_occurred``: when the first/last one happened (not with ``within``).

    "Has not performed" is ``{"type": "none", "rules": [<event>]}`` or ``count eq 0``. Events count
    from the moment they are observed, also when their timestamp lies ahead of the clock.
    """

    type: Literal["event"] = "event"
    name: Annotated[str, Field(min_length=1, max_length=512)]
    where: list[PropertyFilter] = Field(default_factory=list)
    within: RollingWindow | None = None
    between: Annotated[tuple[UTCDateTime, UTCDateTime] | None, AfterValidator(_range_fits)] = None
    count: CountCondition | None = None
    aggregate: AggregateCondition | None = None
    first_occurred: Annotated[OccurrenceCondition | None, AfterValidator(_occurrence_fits)] = None
    last_occurred: Annotated[OccurrenceCondition | None, AfterValidator(_occurrence_fits)] = None


class ListRule(Model):
    """Member of a static list."""

    type: Literal["list"] = "list"
    list_id: Annotated[str, Field(min_length=1, max_length=512)]


class SegmentRefRule(Model):
    """Member of another segment (cycles are rejected by ``find_cycle``)."""

    type: Literal["segment"] = "segment"
    segment_id: Annotated[str, Field(min_length=1, max_length=512)]


class SubscriptionRule(Model):
    """Subscription state on a channel.

    Until contacts get a first-class subscription field, the state is read from the trait
    ``subscriptions.<channel>``: ``"subscribed"`` or ``true`` is subscribed, ``"unsubscribed"`` or
    ``false`` is unsubscribed; a contact with no recorded state matches neither.
    """

    type: Literal["subscription"] = "subscription"
    channel: Literal["email", "sms", "whatsapp", "push", "in_app", "webhook"]
    state: Literal["subscribed", "unsubscribed"]


class RandomRule(Model):
    """A deterministic random sample: ``int(sha256(seed + ":" + contact_id)) mod 10000 < percent * 100``.

    Give each sampled segment its own ``seed``, or they pick the same contacts.
    """

    type: Literal["random"] = "random"
    percent: Annotated[float, Field(ge=0, le=100, allow_inf_nan=False)]
    seed: Annotated[str, Field(max_length=256)] = ""


class EveryoneRule(Model):
    type: Literal["everyone"] = "everyone"


# -- combinators ----------------------------------------------------------------------------------


class AllRule(Model):
    type: Literal["all"] = "all"
    rules: Annotated[list[ChildRule], Field(min_length=1)]


class AnyRule(Model):
    type: Literal["any"] = "any"
    rules: Annotated[list[ChildRule], Field(min_length=1)]


class NoneRule(Model):
    """None of ``rules`` holds."""

    type: Literal["none"] = "none"
    rules: Annotated[list[ChildRule], Field(min_length=1)]


RuleNode = (
    AttributeRule
    | EventRule
    | ListRule
    | SegmentRefRule
    | SubscriptionRule
    | RandomRule
    | EveryoneRule
    | AllRule
    | AnyRule
    | NoneRule
)
NODE_TYPES: Final[dict[str, type[Model]]] = {
    "attribute": AttributeRule,
    "event": EventRule,
    "list": ListRule,
    "segment": SegmentRefRule,
    "subscription": SubscriptionRule,
    "random": RandomRule,
    "everyone": EveryoneRule,
    "all": AllRule,
    "any": AnyRule,
    "none": NoneRule,
}
_NODE_CLASSES: Final = tuple(NODE_TYPES.values())
_EXPECTED: Final = ", ".join(f"'{name}'" for name in NODE_TYPES)


def _dispatch(value: Any, handler: ValidatorFunctionWrapHandler) -> Any:
    """Validate a node by its ``type`` with the matching model.

    Equivalent to the discriminated union (whose JSON schema is kept for OpenAPI), but errors are
    located at the node's own fields (``rules.1.count.op``) instead of under a union tag
    (``rules.1.event.count.op``): a ValidationError raised here is re-rooted at this node.
    """
    if isinstance(value, _NODE_CLASSES):
        return value
    if not isinstance(value, dict):
        raise PydanticCustomError("model_type", "a rule must be an object with a type")
    kind = value.get("type")
    model = NODE_TYPES.get(kind) if isinstance(kind, str) else None
    if model is None:
        error: Any = (
            {"type": "missing", "loc": ("type",), "input": value}
            if "type" not in value
            else {"type": "literal_error", "loc": ("type",), "input": kind, "ctx": {"expected": _EXPECTED}}
        )
        raise ValidationError.from_exception_data("SegmentRule", [error])
    return model.model_validate(value)


def _bounded(value: Any, handler: ValidatorFunctionWrapHandler) -> Any:
    """A whole rule: its shape is checked within the limits first (iteratively, whatever the
    nesting of the input), then its nodes are validated, then its stored size is checked."""
    check_rule_shape(value)
    node = _dispatch(value, handler)
    check_stored_size(node.model_dump_json().encode(), MAX_RULE_BYTES, "rule")
    return node


# A node inside a combinator: its whole rule was checked at the root.
ChildRule = Annotated[RuleNode, Field(discriminator="type"), WrapValidator(_dispatch)]
# A rule as a field of anything else (segment, preview, journey gate): checked within the limits.
SegmentRule = Annotated[RuleNode, Field(discriminator="type"), WrapValidator(_bounded)]

for _model in (AllRule, AnyRule, NoneRule):
    _model.model_rebuild()


class SegmentCreate(Model):
    """``POST /api/v1/segments``."""

    name: Annotated[str, Field(min_length=1, max_length=200)]
    description: Annotated[str | None, Field(max_length=2000)] = None
    rule: SegmentRule


SegmentRuleAdapter: Final = TypeAdapter[RuleNode](SegmentRule)
