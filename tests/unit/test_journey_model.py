"""The journey definition language: what validates, and where each invalid journey is rejected."""

from __future__ import annotations

import copy
import json
from collections.abc import Callable
from datetime import UTC, datetime
from typing import Any

import pytest
from pydantic import ValidationError

from spotzee.schemas.journey_models import (
    STEP_TYPES,
    ApiTrigger,
    DelayStep,
    EventTrigger,
    ExitOnEvent,
    ExitStep,
    GateStep,
    JourneyCreate,
    JourneyDefinition,
    JourneyPublic,
    JourneyStatus,
    LimitedBalancerStep,
    RoundRobinBalancerStep,
    ScheduledTrigger,
    SegmentTrigger,
    SendStep,
)
from spotzee.schemas.rules import AttributeRule

ISSUE_EXAMPLE: dict[str, Any] = {
    "name": "Welcome",
    "trigger": {"type": "event", "event": "signed_up"},
    "entrance": {"reentry": "never"},
    "exit_when": [{"type": "event", "event": "account_deleted"}],
    "start": "wait",
    "steps": {
        "wait": {"type": "delay", "duration": {"value": 1, "unit": "hour"}, "next": "check"},
        "check": {
            "type": "gate",
            "rule": {"type": "attribute", "path": "plan", "op": "eq", "value": "free"},
            "yes": "mail",
            "no": "done",
        },
        "mail": {"type": "send", "channel": "email", "template_id": "tpl_welcome", "next": "done"},
        "done": {"type": "exit"},
    },
}

# Every step type, both balancer modes and every delay kind, in one valid graph.
EVERY_STEP: dict[str, Any] = {
    "name": "Everything",
    "trigger": {"type": "segment", "segment_id": "seg_trial", "on": "entered"},
    "entrance": {"reentry": "after_exit", "max_entries": 3, "cooldown": {"value": 7, "unit": "day"}},
    "exit_when": [
        {"type": "event", "event": "purchase", "where": [{"path": "amount", "op": "gt", "value": 0}]},
        {"type": "segment_exited", "segment_id": "seg_trial"},
    ],
    "timezone": "Europe/Paris",
    "start": "morning",
    "steps": {
        "morning": {"type": "delay", "until_time": {"time": "09:00", "weekdays": ["mon", "tue"]}, "next": "split"},
        "split": {
            "type": "experiment",
            "variants": [{"name": "A", "weight": 1, "next": "rr"}, {"name": "B", "weight": 2.5, "next": "cap"}],
        },
        "rr": {"type": "balancer", "mode": "round_robin", "paths": ["mail", "sms"]},
        "cap": {
            "type": "balancer",
            "mode": "limited",
            "paths": [{"next": "sms", "limit": 100, "period": {"value": 1, "unit": "day"}}],
        },
        "mail": {"type": "send", "channel": "email", "template_id": "tpl_1", "next": "tag"},
        "sms": {"type": "send", "channel": "sms", "template_id": "tpl_2", "next": "tag"},
        "tag": {"type": "update", "set": {"stage": "{{ event.name }}", "score": 3}, "unset": ["old"], "next": "emit"},
        "emit": {
            "type": "event",
            "name": "nudged",
            "properties": {"via": "{{ journey.split.variant }}"},
            "next": "wait",
        },
        "wait": {
            "type": "wait_for_event",
            "event": "opened",
            "where": [{"path": "channel", "op": "in", "value": ["email", "sms"]}],
            "within": {"value": 3, "unit": "day"},
            "yes": "renewal",
            "timeout": "later",
        },
        "renewal": {"type": "gate", "rule": {"type": "everyone"}, "yes": "renew_date", "no": "bye"},
        "renew_date": {
            "type": "delay",
            "until_date": {"source": "contact", "path": "renews_at", "offset": {"value": -2, "unit": "day"}},
            "next": "bye",
        },
        "later": {"type": "link", "journey_id": "jrn_winback", "delay": {"value": 1, "unit": "week"}},
        "bye": {"type": "exit"},
    },
}


SEND = {"type": "send", "channel": "email", "template_id": "t", "next": "done"}
WAIT_1H = {"type": "delay", "duration": {"value": 1, "unit": "hour"}, "next": "check"}
LIMITED_PATH = {"next": "done", "limit": 5, "period": {"value": 1, "unit": "hour"}}


def body(**changes: Any) -> dict[str, Any]:
    data = copy.deepcopy(ISSUE_EXAMPLE)
    data.update(changes)
    return data


def with_steps(**steps: Any) -> dict[str, Any]:
    """The issue example with steps replaced (a value None removes the step)."""
    data = copy.deepcopy(ISSUE_EXAMPLE)
    for step_id, step in steps.items():
        if step is None:
            del data["steps"][step_id]
        else:
            data["steps"][step_id] = step
    return data


def scheduled(**fields: Any) -> dict[str, Any]:
    return body(trigger={"type": "scheduled", "audience": {"segment_id": "s1"}, **fields})


def error_locs(
    data: dict[str, Any], model: Callable[[dict[str, Any]], object] = JourneyCreate.model_validate
) -> list[str]:
    with pytest.raises(ValidationError) as caught:
        model(data)
    return [".".join(str(part) for part in error["loc"]) for error in caught.value.errors()]


def definition(data: dict[str, Any], journey_id: str = "jrn_1") -> dict[str, Any]:
    now = datetime(2025, 1, 1, tzinfo=UTC)
    return {**data, "id": journey_id, "project_id": "p1", "version": 1, "created_at": now, "updated_at": now}


# -- valid -------------------------------------------------------------------------------------


def test_the_issue_example_validates_from_json() -> None:
    journey = JourneyCreate.model_validate_json(json.dumps(ISSUE_EXAMPLE))
    assert isinstance(journey.trigger, EventTrigger)
    assert journey.trigger.event == "signed_up"
    assert journey.entrance.reentry == "never"
    assert journey.exit_when == [ExitOnEvent(event="account_deleted")]
    wait, check, mail = journey.steps["wait"], journey.steps["check"], journey.steps["mail"]
    assert isinstance(wait, DelayStep)
    assert wait.duration is not None
    assert wait.duration.timedelta().total_seconds() == 3600
    assert isinstance(check, GateStep)
    assert isinstance(check.rule, AttributeRule)
    assert (check.yes, check.no) == ("mail", "done")
    assert isinstance(mail, SendStep)
    assert mail.template_id == "tpl_welcome"


def test_every_step_type_validates_and_round_trips() -> None:
    journey = JourneyCreate.model_validate(EVERY_STEP)
    assert {step.type for step in journey.steps.values()} == set(STEP_TYPES)
    assert isinstance(journey.steps["rr"], RoundRobinBalancerStep)
    assert isinstance(journey.steps["cap"], LimitedBalancerStep)
    assert JourneyCreate.model_validate_json(journey.model_dump_json()) == journey


@pytest.mark.parametrize(
    ("trigger", "model"),
    [
        ({"type": "event", "event": "e", "where": [{"path": "plan", "op": "eq", "value": "pro"}]}, EventTrigger),
        ({"type": "segment", "segment_id": "s", "on": "exited"}, SegmentTrigger),
        ({"type": "scheduled", "cron": "0 9 * * 1-5", "audience": {"list_id": "l"}}, ScheduledTrigger),
        (
            {
                "type": "scheduled",
                "rrule": "DTSTART:20250106T090000\nRRULE:FREQ=WEEKLY;BYDAY=MO",
                "timezone": "America/New_York",
                "audience": {"segment_id": "s"},
            },
            ScheduledTrigger,
        ),
        ({"type": "api"}, ApiTrigger),
    ],
)
def test_each_trigger_type_validates(trigger: dict[str, Any], model: type) -> None:
    assert isinstance(JourneyCreate.model_validate(body(trigger=trigger)).trigger, model)


@pytest.mark.parametrize(
    "steps",
    [
        pytest.param({"mail": {**SEND, "next": "wait"}}, id="through a delay"),
        pytest.param(
            {
                "mail": {**SEND, "next": "w"},
                "w": {
                    "type": "wait_for_event",
                    "event": "open",
                    "within": {"value": 1, "unit": "day"},
                    "yes": "done",
                    "timeout": "mail",
                },
            },
            id="through a wait_for_event",
        ),
        pytest.param(
            {
                "wait": {"type": "delay", "until_time": {"time": "10:00"}, "next": "check"},
                "mail": {**SEND, "next": "wait"},
            },
            id="through until_time (always strictly ahead)",
        ),
        pytest.param(
            {"wait": {**WAIT_1H, "next": "wait"}, "check": None, "mail": None, "done": None},
            id="a delay on itself",
        ),
    ],
)
def test_cycles_that_take_time_are_allowed(steps: dict[str, Any]) -> None:
    JourneyCreate.model_validate(with_steps(**steps))


def test_public_and_stored_models() -> None:
    stored = JourneyDefinition.model_validate(definition(ISSUE_EXAMPLE))
    assert stored.status == JourneyStatus.draft
    public = JourneyPublic.from_definition(stored)
    assert (public.id, public.version, public.steps) == ("jrn_1", 1, stored.steps)
    schema = JourneyCreate.model_json_schema()
    assert "steps" in schema["properties"]


def test_a_self_link_with_a_delay_is_allowed() -> None:
    data = with_steps(done={"type": "link", "journey_id": "jrn_1", "delay": {"value": 1, "unit": "day"}})
    JourneyDefinition.model_validate(definition(data))


# -- invalid, each at its path -------------------------------------------------------------------


def variants(*pairs: tuple[str, float]) -> dict[str, Any]:
    return {"type": "experiment", "variants": [{"name": n, "weight": w, "next": "done"} for n, w in pairs]}


INVALID: list[tuple[str, dict[str, Any], list[str]]] = [
    ("dangling next", with_steps(mail={**SEND, "next": "nowhere"}), ["steps.mail.next"]),
    ("dangling gate branch", with_steps(check={**ISSUE_EXAMPLE["steps"]["check"], "no": "gone"}), ["steps.check.no"]),
    ("missing start", body(start="nope"), ["start"]),
    ("unreachable step", with_steps(orphan={"type": "exit"}), ["steps.orphan"]),
    ("zero-delay cycle", with_steps(mail={**SEND, "next": "check"}), ["steps.mail.next"]),
    (
        "cycle through a zero delay",
        with_steps(wait={**WAIT_1H, "duration": {"value": 0, "unit": "hour"}}, mail={**SEND, "next": "wait"}),
        ["steps.mail.next"],
    ),
    (
        "cycle through until_date (may be due already)",
        with_steps(
            wait={"type": "delay", "until_date": {"source": "contact", "path": "d"}, "next": "check"},
            mail={**SEND, "next": "wait"},
        ),
        ["steps.mail.next"],
    ),
    (
        "cycle through a limited balancer (may have room)",
        with_steps(
            mail={**SEND, "next": "cap"},
            cap={"type": "balancer", "mode": "limited", "paths": [{**LIMITED_PATH, "next": "check"}]},
        ),
        ["steps.cap.paths.0.next"],
    ),
    (
        "gate looping on itself",
        with_steps(check={**ISSUE_EXAMPLE["steps"]["check"], "no": "check"}),
        ["steps.check.no"],
    ),
    ("bad cron", scheduled(cron="61 * * * *"), ["trigger.cron"]),
    ("six-field cron", scheduled(cron="0 0 9 * * 1"), ["trigger.cron"]),
    ("bad rrule", scheduled(rrule="DTSTART:20250101T090000\nRRULE:FREQ=DAILY;BYDAY=XX"), ["trigger.rrule"]),
    ("rrule without DTSTART", scheduled(rrule="RRULE:FREQ=DAILY"), ["trigger.rrule"]),
    ("sub-hourly rrule", scheduled(rrule="DTSTART:20250101T090000\nRRULE:FREQ=MINUTELY"), ["trigger.rrule"]),
    ("cron and rrule", scheduled(cron="0 9 * * *", rrule="DTSTART:20250101T090000\nRRULE:FREQ=DAILY"), ["trigger"]),
    ("no schedule", scheduled(), ["trigger"]),
    ("bad schedule time zone", scheduled(cron="0 9 * * *", timezone="Mars/Olympus"), ["trigger.timezone"]),
    (
        "audience with both",
        body(trigger={"type": "scheduled", "cron": "0 9 * * *", "audience": {"segment_id": "s", "list_id": "l"}}),
        ["trigger.audience"],
    ),
    ("unknown trigger", body(trigger={"type": "webhook"}), ["trigger.type"]),
    (
        "bad trigger filter",
        body(trigger={"type": "event", "event": "e", "where": [{"path": "x", "op": "within_last", "value": 1}]}),
        ["trigger.where.0.op"],
    ),
    ("duplicate variant names", with_steps(mail=variants(("A", 1), ("A", 2))), ["steps.mail.variants.1.name"]),
    ("zero weight", with_steps(mail=variants(("A", 0), ("B", 1))), ["steps.mail.variants.0.weight"]),
    ("negative weight", with_steps(mail=variants(("A", 1), ("B", -1))), ["steps.mail.variants.1.weight"]),
    ("one variant", with_steps(mail=variants(("A", 1))), ["steps.mail.variants"]),
    ("unknown step type", with_steps(mail={"type": "sleep", "next": "done"}), ["steps.mail.type"]),
    ("step without type", with_steps(mail={"next": "done"}), ["steps.mail.type"]),
    ("unknown field", with_steps(mail={**SEND, "subject": "hi"}), ["steps.mail.subject"]),
    ("bad channel", with_steps(mail={**SEND, "channel": "fax"}), ["steps.mail.channel"]),
    (
        "bad gate rule",
        with_steps(check={**ISSUE_EXAMPLE["steps"]["check"], "rule": {"type": "attribute", "path": "p", "op": "zz"}}),
        ["steps.check.rule.op"],
    ),
    ("two delay kinds", with_steps(wait={**WAIT_1H, "until_time": {"time": "09:00"}}), ["steps.wait"]),
    ("no delay kind", with_steps(wait={"type": "delay", "next": "check"}), ["steps.wait"]),
    ("bad unit", with_steps(wait={**WAIT_1H, "duration": {"value": 1, "unit": "month"}}), ["steps.wait.duration.unit"]),
    (
        "negative duration",
        with_steps(wait={**WAIT_1H, "duration": {"value": -1, "unit": "day"}}),
        ["steps.wait.duration.value"],
    ),
    (
        "endless duration",
        with_steps(wait={**WAIT_1H, "duration": {"value": 10**12, "unit": "week"}}),
        ["steps.wait.duration"],
    ),
    (
        "bad time of day",
        with_steps(wait={"type": "delay", "until_time": {"time": "24:00"}, "next": "check"}),
        ["steps.wait.until_time.time"],
    ),
    (
        "repeated weekday",
        with_steps(
            wait={"type": "delay", "until_time": {"time": "09:00", "weekdays": ["mon", "mon"]}, "next": "check"}
        ),
        ["steps.wait.until_time.weekdays"],
    ),
    (
        "bad until_date source",
        with_steps(wait={"type": "delay", "until_date": {"source": "moon", "path": "d"}, "next": "check"}),
        ["steps.wait.until_date.source"],
    ),
    (
        "wait without time",
        with_steps(
            mail={
                "type": "wait_for_event",
                "event": "e",
                "within": {"value": 0, "unit": "day"},
                "yes": "done",
                "timeout": "done",
            }
        ),
        ["steps.mail.within"],
    ),
    (
        "unknown balancer mode",
        with_steps(mail={"type": "balancer", "mode": "random", "paths": []}),
        ["steps.mail.mode"],
    ),
    (
        "dangling round-robin path",
        with_steps(mail={"type": "balancer", "mode": "round_robin", "paths": ["done", "gone"]}),
        ["steps.mail.paths.1"],
    ),
    (
        "repeated limited path",
        with_steps(mail={"type": "balancer", "mode": "limited", "paths": [LIMITED_PATH, LIMITED_PATH]}),
        ["steps.mail.paths.1.next"],
    ),
    (
        "limit below one",
        with_steps(mail={"type": "balancer", "mode": "limited", "paths": [{**LIMITED_PATH, "limit": 0}]}),
        ["steps.mail.paths.0.limit"],
    ),
    (
        "empty period",
        with_steps(
            mail={
                "type": "balancer",
                "mode": "limited",
                "paths": [{**LIMITED_PATH, "period": {"value": 0, "unit": "day"}}],
            }
        ),
        ["steps.mail.paths.0.period"],
    ),
    ("update doing nothing", with_steps(mail={"type": "update", "next": "done"}), ["steps.mail"]),
    (
        "set and unset",
        with_steps(mail={"type": "update", "set": {"a": 1}, "unset": ["a"], "next": "done"}),
        ["steps.mail"],
    ),
    (
        "bad update path",
        with_steps(mail={"type": "update", "set": {"a..b": 1}, "next": "done"}),
        ["steps.mail.set.a..b.[key]"],
    ),
    ("step id with a colon", with_steps(**{"a:b": {"type": "exit"}}), ["steps.a:b.[key]"]),
    ("no steps", body(steps={}), ["steps"]),
    ("unknown exit condition", body(exit_when=[{"type": "timeout"}]), ["exit_when.0.type"]),
    ("exit without segment", body(exit_when=[{"type": "segment_exited"}]), ["exit_when.0.segment_id"]),
    ("bad reentry", body(entrance={"reentry": "sometimes"}), ["entrance.reentry"]),
    ("max_entries below one", body(entrance={"max_entries": 0}), ["entrance.max_entries"]),
    ("bad journey time zone", body(timezone="Nowhere/City"), ["timezone"]),
]


@pytest.mark.parametrize(("data", "locs"), [pytest.param(d, loc, id=name) for name, d, loc in INVALID])
def test_invalid_journeys_are_rejected_at_their_path(data: dict[str, Any], locs: list[str]) -> None:
    assert error_locs(data) == locs


def test_all_graph_errors_are_reported_together() -> None:
    data = with_steps(mail={**SEND, "next": "nowhere"}, orphan={"type": "exit"})
    assert error_locs(data) == ["steps.mail.next", "steps.orphan"]


def test_a_zero_delay_cycle_names_its_steps() -> None:
    with pytest.raises(ValidationError) as caught:
        JourneyCreate.model_validate(with_steps(mail={**SEND, "next": "check"}))
    (error,) = caught.value.errors()
    assert error["type"] == "zero_delay_cycle"
    assert "check -> mail -> check" in error["msg"]


def test_a_self_link_needs_a_delay() -> None:
    data = definition(with_steps(done={"type": "link", "journey_id": "jrn_1"}))
    assert error_locs(data, JourneyDefinition.model_validate) == ["steps.done.delay"]
    # the same link in another journey is fine
    JourneyDefinition.model_validate({**data, "id": "jrn_2"})


def test_models_built_in_python_validate_like_json() -> None:
    journey = JourneyCreate(
        name="py",
        trigger=EventTrigger(event="signed_up"),
        start="hello",
        steps={"hello": SendStep(channel="sms", template_id="t", next="bye"), "bye": ExitStep()},
    )
    assert journey == JourneyCreate.model_validate_json(journey.model_dump_json())


def test_a_step_that_is_not_an_object_is_rejected_at_its_id() -> None:
    with pytest.raises(ValidationError) as caught:
        JourneyCreate.model_validate(with_steps(mail="send"))
    (error,) = caught.value.errors()
    assert (error["loc"], error["type"]) == (("steps", "mail"), "model_type")
