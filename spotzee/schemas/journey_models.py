"""Journeys: the JSON the API accepts (``JourneyCreate``), what is stored and what is shown.

A journey is a trigger, entrance rules, exit conditions and a graph of steps keyed by step id::

    {"name": "Welcome",
     "trigger": {"type": "event", "event": "signed_up"},
     "entrance": {"reentry": "never"},
     "exit_when": [{"type": "event", "event": "account_deleted"}],
     "start": "wait",
     "steps": {
       "wait":  {"type": "delay", "duration": {"value": 1, "unit": "hour"}, "next": "check"},
       "check": {"type": "gate", "rule": {"type": "attribute", "path": "plan", "op": "eq", "value": "free"},
                 "yes": "mail", "no": "done"},
       "mail":  {"type": "send", "channel": "email", "template_id": "tpl_welcome", "next": "done"},
       "done":  {"type": "exit"}}}

Triggers (``type``): ``event`` (name + ``where`` property filters), ``segment`` (entered/exited),
``scheduled`` (``cron`` or ``rrule`` in a time zone, over a segment or list audience) and ``api``
(``POST /api/v1/journeys/{id}/enter``).

Steps (``type``): ``send``, ``delay`` (``duration`` | ``until_time`` | ``until_date``), ``gate``,
``experiment``, ``balancer`` (``mode``: ``round_robin`` | ``limited``), ``update``, ``event``,
``exit``, ``link`` and ``wait_for_event`` (``within`` a duration: ``yes`` when the event comes,
``timeout`` otherwise -- the duration is called ``within`` because ``timeout`` names the branch).

The graph is checked as a whole (``JourneyBody``): ``start`` and every target exist, every step
is reachable from ``start``, and no cycle can loop without time passing -- a cycle must go
through a step that always waits: a ``delay`` with a positive ``duration`` or an ``until_time``,
or a ``wait_for_event``. ``until_date`` may lie in the past (the run goes straight on) and a
``limited`` balancer may have room, so neither breaks a cycle.

Limits (``spotzee.schemas.limits``): at most ``MAX_STEPS`` (500) steps and ``MAX_JOURNEY_BYTES``
(1 MiB) as stored; a gate's rule has the rule limits; free-form values (an update step's ``set``
values, an event step's ``properties``, the payload of an API entry) nest at most
``MAX_VALUE_DEPTH`` (16) levels, and an entry's payload takes at most ``MAX_PAYLOAD_BYTES`` (32 KiB).

Errors carry the path of the offending field, without union tags: ``steps.check.yes``,
``steps.split.variants.1.name``, ``trigger.cron``, ``exit_when.0.event``.
"""

from __future__ import annotations

import re
from collections.abc import Iterator, Mapping
from datetime import timedelta
from enum import StrEnum
from functools import lru_cache
from typing import Annotated, Any, Final, Literal

from croniter import croniter
from dateutil.rrule import rruleset, rrulestr
from pydantic import (
    AfterValidator,
    Field,
    ValidationError,
    ValidatorFunctionWrapHandler,
    WrapValidator,
    model_validator,
)
from pydantic_core import InitErrorDetails, PydanticCustomError, to_json

from spotzee.domain.traits import normalize_timezone
from spotzee.schemas.common import Identifier, JSONObject, Model, UTCDateTime
from spotzee.schemas.limits import (
    MAX_JOURNEY_BYTES,
    MAX_PAYLOAD_BYTES,
    QuarantinedDefinition,
    check_stored_size,
    check_value_depth,
)
from spotzee.schemas.rules import MAX_DURATION, AttributePath, PropertyFilter, PropertyPath, SegmentRule

DurationUnit = Literal["second", "minute", "hour", "day", "week"]
DURATION_SECONDS: Final[dict[str, int]] = {"second": 1, "minute": 60, "hour": 3600, "day": 86_400, "week": 604_800}
WEEKDAYS: Final = ("mon", "tue", "wed", "thu", "fri", "sat", "sun")  # index = date.weekday()
Weekday = Literal["mon", "tue", "wed", "thu", "fri", "sat", "sun"]
Channel = Literal["email", "sms", "whatsapp", "push", "in_app", "webhook"]
MAX_STEPS: Final = 500
MAX_VARIANTS: Final = 20

# Step ids end up inside send ids (``run:step:visit``) and counter keys: no ``:``, short.
StepId = Annotated[str, Field(pattern=r"^[A-Za-z0-9_-]{1,64}$")]
Name = Annotated[str, Field(min_length=1, max_length=512)]
Ref = Annotated[str, Field(min_length=1, max_length=512)]  # ids of other objects (segments, templates ...)
TimeZone = Annotated[str, Field(max_length=64), AfterValidator(normalize_timezone)]
# Free-form JSON kept in a definition: nested at most MAX_VALUE_DEPTH levels (see schemas.limits).
FreeValue = Annotated[Any, AfterValidator(check_value_depth)]
FreeObject = Annotated[dict[str, Any], AfterValidator(check_value_depth)]


# -- durations ------------------------------------------------------------------------------------


class Duration(Model):
    """``{"value": 1, "unit": "hour"}`` -- whole units, at most 100 years."""

    value: Annotated[int, Field(ge=0)]
    unit: DurationUnit

    def timedelta(self) -> timedelta:
        return timedelta(seconds=self.value * DURATION_SECONDS[self.unit])

    @model_validator(mode="after")
    def _bounded(self) -> Duration:
        _check_length(self.value, self.unit)
        return self


class Offset(Model):
    """A signed duration added to a date: ``{"value": -3, "unit": "day"}`` is three days before."""

    value: int
    unit: DurationUnit

    def timedelta(self) -> timedelta:
        return timedelta(seconds=self.value * DURATION_SECONDS[self.unit])

    @model_validator(mode="after")
    def _bounded(self) -> Offset:
        _check_length(self.value, self.unit)
        return self


def _check_length(value: int, unit: str) -> None:
    # compared in seconds: a huge value would overflow timedelta before it could be compared
    if abs(value) * DURATION_SECONDS[unit] > MAX_DURATION.total_seconds():
        raise ValueError("longer than 100 years")


def _positive(value: Duration) -> Duration:
    if value.value <= 0:
        raise ValueError("must be a positive duration")
    return value


PositiveDuration = Annotated[Duration, AfterValidator(_positive)]


# -- tagged unions with tag-less error paths ------------------------------------------------------


class _Tagged:
    """A WrapValidator validating an object by its tag (``type``, ``mode``) with the matching model.

    Equivalent to the discriminated union it wraps (whose JSON schema is kept for OpenAPI), but
    errors are located at the object's own fields (``steps.check.yes``) instead of under a union
    tag (``steps.check.gate.yes``): a ValidationError raised in here is re-rooted at this object.
    Choices may nest (a ``balancer`` step is then chosen by ``mode``).
    """

    classes: tuple[type[Model], ...]  # already validated objects pass as they are

    def __init__(self, title: str, tag: str, choices: Mapping[str, type[Model] | _Tagged]) -> None:
        self.title, self.tag, self.choices = title, tag, dict(choices)
        self.expected = ", ".join(f"'{name}'" for name in self.choices)
        found: list[type[Model]] = []
        for choice in self.choices.values():
            found.extend(choice.classes if isinstance(choice, _Tagged) else (choice,))
        self.classes = tuple(found)

    def validate(self, value: Any) -> Any:
        if isinstance(value, self.classes):
            return value
        if not isinstance(value, dict):
            raise PydanticCustomError("model_type", "{title} must be an object with a {tag}", self._ctx())
        kind = value.get(self.tag)
        choice = self.choices.get(kind) if isinstance(kind, str) else None
        if choice is None:
            error: Any = (
                {"type": "missing", "loc": (self.tag,), "input": value}
                if self.tag not in value
                else {"type": "literal_error", "loc": (self.tag,), "input": kind, "ctx": {"expected": self.expected}}
            )
            raise ValidationError.from_exception_data(self.title, [error])
        if isinstance(choice, _Tagged):
            return choice.validate(value)
        return choice.model_validate(value)

    def __call__(self, value: Any, handler: ValidatorFunctionWrapHandler) -> Any:
        return self.validate(value)

    def _ctx(self) -> dict[str, str]:
        return {"title": self.title, "tag": self.tag}


# -- triggers -------------------------------------------------------------------------------------


class EventTrigger(Model):
    """Enter when the contact performs ``event`` with properties passing every ``where`` filter."""

    type: Literal["event"] = "event"
    event: Name
    where: list[PropertyFilter] = Field(default_factory=list)


class SegmentTrigger(Model):
    """Enter when the contact enters (or exits) a segment."""

    type: Literal["segment"] = "segment"
    segment_id: Ref
    on: Literal["entered", "exited"] = "entered"


class Audience(Model):
    """Who a scheduled journey enters: the members of one segment or one list."""

    segment_id: Ref | None = None
    list_id: Ref | None = None

    @model_validator(mode="after")
    def _exactly_one(self) -> Audience:
        if (self.segment_id is None) == (self.list_id is None):
            raise ValueError("give either segment_id or list_id")
        return self


def _cron(value: str) -> str:
    # croniter also takes a sixth (seconds) field and @-macros: keep to the five standard fields.
    if len(value.split()) != 5 or not croniter.is_valid(value):
        raise ValueError("must be a 5-field cron expression (minute hour day-of-month month day-of-week)")
    return value


_DTSTART = re.compile(r"(?im)^DTSTART[:;]")
_TOO_FREQUENT = re.compile(r"(?i)FREQ\s*=\s*(SECONDLY|MINUTELY)")


@lru_cache(maxsize=256)
def parse_rrule(value: str) -> rruleset:
    """The recurrence set of an RFC 5545 string (``DTSTART`` + ``RRULE`` / ``RDATE`` / ``EXDATE`` lines)."""
    return rrulestr(value, forceset=True)


def _rrule(value: str) -> str:
    # Without DTSTART dateutil anchors the rule at the wall clock of the moment it is parsed:
    # the schedule would change with every restart, so the first occurrence must be written down.
    if not _DTSTART.search(value):
        raise ValueError("needs a DTSTART line (e.g. DTSTART:20250106T090000 then RRULE:FREQ=WEEKLY;BYDAY=MO)")
    # Occurrences are enumerated from DTSTART on: sub-hourly rules would cost too much; use cron.
    if _TOO_FREQUENT.search(value):
        raise ValueError("FREQ=SECONDLY and FREQ=MINUTELY are not supported (use cron)")
    try:
        parse_rrule(value)
    except (ValueError, TypeError, KeyError, IndexError, OverflowError) as exc:
        raise ValueError(f"not an RFC 5545 recurrence rule ({exc})") from exc
    return value


class ScheduledTrigger(Model):
    """Enter the audience at every occurrence of ``cron`` or ``rrule``.

    Both are read in ``timezone`` (default: the journey's, then the project's); an ``rrule`` whose
    DTSTART has ``Z`` or a ``TZID`` is read in that zone instead.
    """

    type: Literal["scheduled"] = "scheduled"
    cron: Annotated[str | None, Field(max_length=256), AfterValidator(lambda v: v if v is None else _cron(v))] = None
    rrule: Annotated[str | None, Field(max_length=4096), AfterValidator(lambda v: v if v is None else _rrule(v))] = None
    timezone: TimeZone | None = None
    audience: Audience

    @model_validator(mode="after")
    def _one_schedule(self) -> ScheduledTrigger:
        if (self.cron is None) == (self.rrule is None):
            raise ValueError("give either cron or rrule")
        return self


class ApiTrigger(Model):
    """Enter through ``POST /api/v1/journeys/{id}/enter``."""

    type: Literal["api"] = "api"


TriggerNode = EventTrigger | SegmentTrigger | ScheduledTrigger | ApiTrigger
_TRIGGERS: Final = _Tagged(
    "Trigger",
    "type",
    {"event": EventTrigger, "segment": SegmentTrigger, "scheduled": ScheduledTrigger, "api": ApiTrigger},
)
Trigger = Annotated[TriggerNode, Field(discriminator="type"), WrapValidator(_TRIGGERS)]


# -- entrance and exit ----------------------------------------------------------------------------


class Entrance(Model):
    """Who may enter again.

    ``reentry``: ``never`` (once ever), ``after_exit`` (again once the previous run has exited),
    ``concurrent`` (any number of runs at once). ``max_entries`` caps entries per contact over
    all time; ``cooldown`` is the least time between two entries of one contact.
    """

    reentry: Literal["never", "after_exit", "concurrent"] = "never"
    max_entries: Annotated[int, Field(ge=1)] | None = None
    cooldown: Duration | None = None


class ExitOnEvent(Model):
    """The run ends when the contact performs ``event`` (properties passing ``where``)."""

    type: Literal["event"] = "event"
    event: Name
    where: list[PropertyFilter] = Field(default_factory=list)


class ExitOnSegmentExited(Model):
    """The run ends when the contact leaves the segment."""

    type: Literal["segment_exited"] = "segment_exited"
    segment_id: Ref


ExitNode = ExitOnEvent | ExitOnSegmentExited
_EXITS: Final = _Tagged("ExitCondition", "type", {"event": ExitOnEvent, "segment_exited": ExitOnSegmentExited})
ExitCondition = Annotated[ExitNode, Field(discriminator="type"), WrapValidator(_EXITS)]


# -- steps ----------------------------------------------------------------------------------------


class SendStep(Model):
    """Send ``template_id`` on ``channel``; consent, caps and rendering happen at delivery."""

    type: Literal["send"] = "send"
    channel: Channel
    template_id: Ref
    next: StepId


def _weekdays(value: list[Weekday] | None) -> list[Weekday] | None:
    if value is not None and len(set(value)) != len(value):
        raise ValueError("weekdays must not repeat")
    return value


class UntilTime(Model):
    """The next ``time`` (``HH:MM``, 24 h) strictly after now, on one of ``weekdays`` (default any).

    Read in the contact's time zone (else the journey's, else the project's, else UTC). A time
    skipped by a DST change fires shifted by the gap (02:30 -> 03:30); a repeated one fires once.
    """

    time: Annotated[str, Field(pattern=r"^([01][0-9]|2[0-3]):[0-5][0-9]$")]
    weekdays: Annotated[list[Weekday] | None, Field(min_length=1), AfterValidator(_weekdays)] = None


class UntilDate(Model):
    """Until a date read from the contact (``source: contact``, an attribute path) or from the
    triggering event (``source: event``, a path into its properties), plus ``offset``.

    An ISO datetime is taken as is (naive means UTC); a bare date (``2025-06-01``) is midnight in
    the contact's time zone. A date in the past, missing or unreadable: the run goes straight on.
    """

    source: Literal["contact", "event"]
    path: PropertyPath
    offset: Offset | None = None


class DelayStep(Model):
    """Wait, then go to ``next``: exactly one of ``duration``, ``until_time``, ``until_date``."""

    type: Literal["delay"] = "delay"
    duration: Duration | None = None
    until_time: UntilTime | None = None
    until_date: UntilDate | None = None
    next: StepId

    @model_validator(mode="after")
    def _one_kind(self) -> DelayStep:
        if sum(kind is not None for kind in (self.duration, self.until_time, self.until_date)) != 1:
            raise ValueError("give exactly one of duration, until_time, until_date")
        return self


class GateStep(Model):
    """A conditional split: ``yes`` if the contact matches ``rule`` now, else ``no``."""

    type: Literal["gate"] = "gate"
    rule: SegmentRule
    yes: StepId
    no: StepId


class Variant(Model):
    name: Annotated[str, Field(min_length=1, max_length=64)]
    weight: Annotated[float, Field(gt=0, le=1_000_000, allow_inf_nan=False)]
    next: StepId


class ExperimentStep(Model):
    """An A/B split: a contact gets a variant with probability weight / total, the same one every
    time it comes here (a hash of journey, step and contact, not a coin toss)."""

    type: Literal["experiment"] = "experiment"
    variants: Annotated[list[Variant], Field(min_length=2, max_length=MAX_VARIANTS)]

    @model_validator(mode="after")
    def _unique_names(self) -> ExperimentStep:
        seen: set[str] = set()
        errors: list[InitErrorDetails] = []
        for index, variant in enumerate(self.variants):
            if variant.name in seen:
                errors.append(_error("duplicate_variant", "variant names must be unique", ("variants", index, "name")))
            seen.add(variant.name)
        if errors:
            raise ValidationError.from_exception_data("ExperimentStep", errors)
        return self


class RoundRobinBalancerStep(Model):
    """Spread contacts evenly: the n-th contact through this step takes ``paths[n % len(paths)]``
    (a path listed twice gets twice the share)."""

    type: Literal["balancer"] = "balancer"
    mode: Literal["round_robin"] = "round_robin"
    paths: Annotated[list[StepId], Field(min_length=2, max_length=MAX_VARIANTS)]


class LimitedPath(Model):
    """At most ``limit`` contacts per ``period`` (periods are aligned on the Unix epoch, in UTC)."""

    next: StepId
    limit: Annotated[int, Field(ge=1)]
    period: PositiveDuration


class LimitedBalancerStep(Model):
    """Take the first path with room in its current period; when none has any, wait for the
    earliest next period and try again (overflow waits, it is never dropped)."""

    type: Literal["balancer"] = "balancer"
    mode: Literal["limited"] = "limited"
    paths: Annotated[list[LimitedPath], Field(min_length=1, max_length=MAX_VARIANTS)]

    @model_validator(mode="after")
    def _unique_paths(self) -> LimitedBalancerStep:
        seen: set[str] = set()
        errors: list[InitErrorDetails] = []
        for index, path in enumerate(self.paths):
            if path.next in seen:  # the per-period counter is keyed by the target
                errors.append(_error("duplicate_path", "each path needs its own next", ("paths", index, "next")))
            seen.add(path.next)
        if errors:
            raise ValidationError.from_exception_data("LimitedBalancerStep", errors)
        return self


class UpdateStep(Model):
    """Change contact attributes: ``set`` path -> value (string values may hold Liquid, rendered
    with ``contact``, ``event`` and ``journey``), ``unset`` paths."""

    type: Literal["update"] = "update"
    set: dict[AttributePath, FreeValue] = Field(default_factory=dict)
    unset: list[AttributePath] = Field(default_factory=list)
    next: StepId

    @model_validator(mode="after")
    def _something_to_do(self) -> UpdateStep:
        if not self.set and not self.unset:
            raise ValueError("give set and/or unset")
        both = sorted(set(self.set) & set(self.unset)) if self.set else []
        if both:
            raise ValueError(f"a path cannot be both set and unset: {', '.join(both)}")
        return self


class EventStep(Model):
    """Emit a track event for the contact (string property values may hold Liquid)."""

    type: Literal["event"] = "event"
    name: Name
    properties: FreeObject = Field(default_factory=dict)
    next: StepId


class ExitStep(Model):
    type: Literal["exit"] = "exit"


class LinkStep(Model):
    """End this run and enter the contact into ``journey_id`` (after ``delay`` if given).

    The entry goes through that journey's entrance rules like any other.
    """

    type: Literal["link"] = "link"
    journey_id: Ref
    delay: Duration | None = None


class WaitForEventStep(Model):
    """Wait up to ``within`` for ``event`` (properties passing ``where``): ``yes`` when it comes
    (it is kept as ``journey.<step id>`` for templates), ``timeout`` when the time is up."""

    type: Literal["wait_for_event"] = "wait_for_event"
    event: Name
    where: list[PropertyFilter] = Field(default_factory=list)
    within: PositiveDuration
    yes: StepId
    timeout: StepId


BalancerStep = Annotated[RoundRobinBalancerStep | LimitedBalancerStep, Field(discriminator="mode")]
StepNode = (
    SendStep
    | DelayStep
    | GateStep
    | ExperimentStep
    | RoundRobinBalancerStep
    | LimitedBalancerStep
    | UpdateStep
    | EventStep
    | ExitStep
    | LinkStep
    | WaitForEventStep
)
_BALANCERS: Final = _Tagged(
    "BalancerStep", "mode", {"round_robin": RoundRobinBalancerStep, "limited": LimitedBalancerStep}
)
_STEPS: Final = _Tagged(
    "Step",
    "type",
    {
        "send": SendStep,
        "delay": DelayStep,
        "gate": GateStep,
        "experiment": ExperimentStep,
        "balancer": _BALANCERS,
        "update": UpdateStep,
        "event": EventStep,
        "exit": ExitStep,
        "link": LinkStep,
        "wait_for_event": WaitForEventStep,
    },
)
Step = Annotated[
    SendStep
    | DelayStep
    | GateStep
    | ExperimentStep
    | BalancerStep
    | UpdateStep
    | EventStep
    | ExitStep
    | LinkStep
    | WaitForEventStep,
    # No `discriminator` here: `balancer` is itself a union (by `mode`), which OpenAPI's
    # discriminator mapping can't express; validation is `_STEPS`' anyway.
    WrapValidator(_STEPS),
]


# -- the graph ------------------------------------------------------------------------------------

Loc = tuple[str | int, ...]


def step_targets(step: StepNode) -> list[tuple[Loc, str]]:
    """The steps ``step`` may go to, each with the path of the field naming it (in field order)."""
    if isinstance(step, SendStep | DelayStep | UpdateStep | EventStep):
        return [(("next",), step.next)]
    if isinstance(step, GateStep):
        return [(("yes",), step.yes), (("no",), step.no)]
    if isinstance(step, WaitForEventStep):
        return [(("yes",), step.yes), (("timeout",), step.timeout)]
    if isinstance(step, ExperimentStep):
        return [(("variants", i, "next"), v.next) for i, v in enumerate(step.variants)]
    if isinstance(step, RoundRobinBalancerStep):
        return [(("paths", i), target) for i, target in enumerate(step.paths)]
    if isinstance(step, LimitedBalancerStep):
        return [(("paths", i, "next"), p.next) for i, p in enumerate(step.paths)]
    return []  # exit, link: the run ends here


def passes_time(step: StepNode) -> bool:
    """Whether the run always waits at ``step`` (so a cycle through it cannot spin)."""
    if isinstance(step, WaitForEventStep):
        return True  # within is positive
    if isinstance(step, DelayStep):
        return step.until_time is not None or (step.duration is not None and step.duration.value > 0)
    return False


def _error(kind: str, message: str, loc: Loc, value: Any = None) -> InitErrorDetails:
    return {"type": PydanticCustomError(kind, message), "loc": loc, "input": value}


def graph_errors(start: str, steps: Mapping[str, StepNode]) -> list[InitErrorDetails]:
    """Dangling targets, unreachable steps and zero-delay cycles, each at its own path."""
    errors: list[InitErrorDetails] = []
    if start not in steps:
        errors.append(_error("unknown_step", f"no step {start!r} in steps", ("start",), start))
    for step_id, step in steps.items():
        for loc, target in step_targets(step):
            if target not in steps:
                errors.append(_error("unknown_step", f"no step {target!r} in steps", ("steps", step_id, *loc), target))
    if start in steps:
        reachable = _reachable(start, steps)
        errors.extend(
            _error("unreachable_step", "not reachable from start", ("steps", step_id))
            for step_id in steps
            if step_id not in reachable
        )
    errors.extend(_zero_delay_cycles(start, steps))
    return errors


def _reachable(start: str, steps: Mapping[str, StepNode]) -> set[str]:
    seen = {start}
    todo = [start]
    while todo:
        for _, target in step_targets(steps[todo.pop()]):
            if target in steps and target not in seen:
                seen.add(target)
                todo.append(target)
    return seen


def _zero_delay_cycles(start: str, steps: Mapping[str, StepNode]) -> Iterator[InitErrorDetails]:
    """Back edges of a depth-first search over the steps that do not always wait.

    Every cycle of that subgraph holds a back edge, so none is missed; each back edge is reported
    once, at the field that closes it. Roots: ``start`` first, then the steps in their given order.
    """
    instant = {sid for sid, step in steps.items() if not passes_time(step)}
    done: set[str] = set()
    roots = ([start] if start in instant else []) + [sid for sid in steps if sid in instant]
    for root in roots:
        if root in done:
            continue
        path: list[str] = [root]
        stack = [iter(step_targets(steps[root]))]
        while stack:
            edge = next(stack[-1], None)
            if edge is None:
                stack.pop()
                done.add(path.pop())
                continue
            loc, target = edge
            if target not in instant or target in done:
                continue
            if target in path:
                cycle = " -> ".join([*path[path.index(target) :], target])
                message = f"zero-delay cycle {cycle}: a loop must pass a delay or wait_for_event that takes time"
                yield _error("zero_delay_cycle", message, ("steps", path[-1], *loc), target)
                continue
            path.append(target)
            stack.append(iter(step_targets(steps[target])))


def _raise_all(title: str, errors: list[InitErrorDetails]) -> None:
    if errors:
        raise ValidationError.from_exception_data(title, errors)


# -- journeys -------------------------------------------------------------------------------------


class JourneyBody(Model):
    """What a marketer writes: everything but the identity and lifecycle of the journey."""

    name: Annotated[str, Field(min_length=1, max_length=200)]
    description: Annotated[str | None, Field(max_length=2000)] = None
    trigger: Trigger
    entrance: Entrance = Field(default_factory=Entrance)
    exit_when: Annotated[list[ExitCondition], Field(max_length=50)] = Field(default_factory=list)
    timezone: TimeZone | None = None  # for contacts without one, and the schedule; None: the project's
    start: StepId
    steps: Annotated[dict[StepId, Step], Field(min_length=1, max_length=MAX_STEPS)]

    @model_validator(mode="after")
    def _graph(self) -> JourneyBody:
        _raise_all(type(self).__name__, graph_errors(self.start, self.steps))
        return self

    @model_validator(mode="after")
    def _size(self) -> JourneyBody:
        # the marketer's part only: a journey's stored, created and shown forms measure the same
        check_stored_size(self.model_dump_json(include=_BODY_FIELDS).encode(), MAX_JOURNEY_BYTES, "journey")
        return self


_BODY_FIELDS: Final[set[str]] = set(JourneyBody.model_fields)


class JourneyCreate(JourneyBody):
    """``POST /api/v1/journeys`` (and ``PUT``: a new version)."""


JourneyUpdate = JourneyCreate


class JourneyStatus(StrEnum):
    draft = "draft"  # editable, nobody enters
    live = "live"  # triggers enter contacts
    paused = "paused"  # nobody enters; runs in flight hold until resumed
    archived = "archived"  # runs in flight are exited


class JourneyDefinition(JourneyBody):
    """As stored (definitions key ``journey/<id>``): ``version`` grows on every edit.

    A link back to this same journey needs a ``delay`` (it could otherwise spin through the
    entrance of this journey without time passing); the id is only known here.
    """

    type: Literal["journey"] = "journey"
    id: str
    project_id: str
    version: Annotated[int, Field(ge=1)]
    status: JourneyStatus = JourneyStatus.draft
    created_at: UTCDateTime
    updated_at: UTCDateTime

    @model_validator(mode="after")
    def _self_links(self) -> JourneyDefinition:
        _raise_all(type(self).__name__, self_link_errors(self.id, self.steps))
        return self


def self_link_errors(journey_id: str, steps: Mapping[str, StepNode]) -> list[InitErrorDetails]:
    """Links from a journey to itself without a positive ``delay``."""
    return [
        _error("self_link", "a link to this same journey needs a positive delay", ("steps", step_id, "delay"))
        for step_id, step in steps.items()
        if isinstance(step, LinkStep)
        and step.journey_id == journey_id
        and (step.delay is None or step.delay.value <= 0)
    ]


class JourneyPublic(JourneyBody):
    """A journey as the API shows it."""

    id: str
    project_id: str
    status: JourneyStatus
    version: int
    created_at: UTCDateTime
    updated_at: UTCDateTime

    @classmethod
    def from_definition(cls, definition: JourneyDefinition) -> JourneyPublic:
        return cls.model_validate(definition.model_dump(exclude={"type"}))


class JourneyList(Model):
    items: list[JourneyPublic]
    quarantined: list[QuarantinedDefinition]  # stored but unreadable: see docs/api.md


STEP_TYPES: Final[tuple[str, ...]] = tuple(_STEPS.choices)


def _payload(value: JSONObject | None) -> JSONObject | None:
    """Copied into every entry record: nested and sized like a tracked event's properties."""
    if value is not None:
        check_value_depth(value)
        check_stored_size(to_json(value), MAX_PAYLOAD_BYTES, "payload")
    return value


class JourneyEnterRequest(Model):
    """``POST /api/v1/journeys/{id}/enter``: contacts to enter (created when missing), the data
    templates see as ``event``, and a key that makes a retried call enter nobody twice."""

    ids: Annotated[list[Identifier], Field(min_length=1, max_length=10_000)]
    payload: Annotated[JSONObject | None, AfterValidator(_payload)] = None
    idempotency_key: Annotated[str | None, Field(min_length=1, max_length=200, pattern=r"^[^:]+$")] = None


class JourneyEntered(Model):
    accepted: int
