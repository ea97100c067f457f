"""The journey state machine with a test clock: every step type, the entrance rules, schedules,
and properties over random journeys (determinism, time always passes, unique ids, replays)."""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from functools import lru_cache
from typing import Any

import liquid
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from spotzee.domain.journeys import (
    BalancerTaken,
    EmitEvent,
    Enter,
    EnterJourney,
    EntranceHistory,
    EventData,
    EventSeen,
    Exit,
    JourneyEnv,
    JourneyInput,
    Outcome,
    RunState,
    SegmentExited,
    SendMessage,
    StepRecorded,
    UpdateContact,
    VariantAssigned,
    Wake,
    entrance_refusal,
    event_triggers,
    may_enter,
    next_fire,
    record_entry,
    record_exit,
    run_id_for,
    segment_triggers,
    transition,
    variant_for,
)
from spotzee.domain.segments.operators import holds, read_path
from spotzee.schemas.journey_models import JourneyDefinition, ScheduledTrigger, SendStep, Variant
from spotzee.schemas.rules import AttributeRule, EveryoneRule, RuleNode
from spotzee.schemas.structs import to_builtins

T0 = datetime(2025, 3, 3, 8, 0, tzinfo=UTC)  # a Monday
HOUR = timedelta(hours=1)
EXIT = {"type": "exit"}


def send(next_step: str, template: str = "tpl") -> dict[str, Any]:
    return {"type": "send", "channel": "email", "template_id": template, "next": next_step}


def delay(next_step: str, value: int = 1, unit: str = "hour") -> dict[str, Any]:
    return {"type": "delay", "duration": {"value": value, "unit": unit}, "next": next_step}


def gate(yes: str, no: str, path: str = "plan", value: Any = "free") -> dict[str, Any]:
    return {
        "type": "gate",
        "rule": {"type": "attribute", "path": path, "op": "eq", "value": value},
        "yes": yes,
        "no": no,
    }


def define(
    steps: dict[str, Any],
    start: str | None = None,
    *,
    version: int = 1,
    status: str = "live",
    journey_id: str = "jrn",
    **extra: Any,
) -> JourneyDefinition:
    return JourneyDefinition.model_validate(
        {
            "name": "test",
            "trigger": {"type": "event", "event": "signed_up"},
            "start": start or next(iter(steps)),
            "steps": steps,
            "id": journey_id,
            "project_id": "p1",
            "version": version,
            "status": status,
            "created_at": T0,
            "updated_at": T0,
            **extra,
        }
    )


def evaluator(contact: Mapping[str, Any]) -> Callable[[RuleNode], bool]:
    """Gates in these tests use attribute rules on the contact dict (and ``everyone``)."""

    def evaluate(rule: RuleNode) -> bool:
        if isinstance(rule, EveryoneRule):
            return True
        assert isinstance(rule, AttributeRule)
        return holds(rule.op, read_path(dict(contact), rule.path), rule.value, rule.unit, T0)

    return evaluate


_LIQUID = liquid.Environment()


@lru_cache(maxsize=256)
def _template(text: str) -> liquid.Template:
    return _LIQUID.from_string(text)


def render(text: str, data: Mapping[str, Any]) -> str:
    return _template(text).render(**data)


@dataclass
class Harness:
    """A caller: stores the state, applies balancer counters, keeps a test clock."""

    journey: JourneyDefinition
    contact: dict[str, Any] = field(default_factory=dict)
    timezone: str | None = None
    default_timezone: str = "UTC"
    now: datetime = T0
    counts: dict[str, int] = field(default_factory=dict)
    state: RunState | None = None
    outcomes: list[Outcome] = field(default_factory=list)

    def env(self) -> JourneyEnv:
        return JourneyEnv(
            evaluate_rule=evaluator(self.contact),
            render=render,
            contact=self.contact,
            timezone=self.timezone,
            default_timezone=self.default_timezone,
            balancer_counts=dict(self.counts),
        )

    def apply(self, event: JourneyInput) -> Outcome:
        outcome = transition(self.journey, self.state, event, self.now, self.env())
        self.outcomes.append(outcome)
        if outcome.ignored is None:
            self.state = outcome.state
            for effect in outcome.effects:
                if isinstance(effect, BalancerTaken):
                    self.counts[effect.counter_key] = self.counts.get(effect.counter_key, 0) + 1
        return outcome

    def enter(self, event: EventData | None = None, run_id: str = "run1") -> Outcome:
        return self.apply(Enter(run_id=run_id, contact_id="c1", event=event, at=self.now))

    def wake(self) -> Outcome:
        """Move the clock to the run's wake-up and deliver its timer."""
        assert self.state is not None
        timer = self.state.timer()
        assert timer is not None
        assert self.state.wake_at is not None
        self.now = self.state.wake_at
        return self.apply(timer)

    def see(self, name: str, message_id: str, **properties: Any) -> Outcome:
        return self.apply(EventSeen(name=name, properties=properties, message_id=message_id, timestamp=self.now))

    @property
    def run(self) -> RunState:
        assert self.state is not None
        return self.state

    def effects(self, kind: type) -> list[Any]:
        return [e for outcome in self.outcomes for e in outcome.effects if isinstance(e, kind)]


def kinds(outcome: Outcome) -> list[tuple[str, str]]:
    return [(e.step_id, e.kind) for e in outcome.effects if isinstance(e, StepRecorded)]


WELCOME = {
    "wait": delay("check"),
    "check": gate("mail", "done"),
    "mail": send("done", "tpl_welcome"),
    "done": EXIT,
}


# -- the example, step by step ------------------------------------------------------------


def test_the_welcome_journey_waits_an_hour_then_sends_to_free_contacts() -> None:
    h = Harness(define(WELCOME, exit_when=[{"type": "event", "event": "account_deleted"}]), contact={"plan": "free"})
    entered = h.enter(EventData(name="signed_up", message_id="m0", properties={"source": "ads"}))
    assert entered.wake_at == T0 + HOUR
    assert h.run.status == "waiting"
    assert kinds(entered) == [("wait", "entered"), ("wait", "waiting")]
    assert entered.timer == Wake(step_id="wait", visit=1)

    done = h.wake()
    assert h.run.status == "exited"
    assert h.run.exit_reason == "exit_step"
    assert done.wake_at is None
    (message,) = h.effects(SendMessage)
    assert message.send_id == "run1:mail:1"
    assert (message.channel, message.template_id, message.step_id) == ("email", "tpl_welcome", "mail")
    assert message.variables["event"]["properties"] == {"source": "ads"}
    assert kinds(done) == [
        ("wait", "completed"),
        ("check", "entered"),
        ("check", "completed"),
        ("mail", "entered"),
        ("mail", "completed"),
        ("done", "entered"),
        ("done", "exited"),
    ]


def test_the_gate_sends_others_straight_to_the_exit() -> None:
    h = Harness(define(WELCOME), contact={"plan": "pro"})
    h.enter()
    h.wake()
    assert h.effects(SendMessage) == []
    assert h.run.status == "exited"


def test_replays_and_stale_timers_change_nothing() -> None:
    h = Harness(define(WELCOME), contact={"plan": "free"})
    first = h.enter()
    assert h.enter().ignored == "run exists already"
    assert h.apply(Wake(step_id="wait", visit=1)).ignored == "timer is early"
    assert h.apply(Wake(step_id="wait", visit=2)).ignored == "stale timer"
    assert h.apply(Wake(step_id="check", visit=1)).ignored == "stale timer"
    assert h.state == first.state
    timer = h.run.timer()
    h.wake()
    assert timer is not None
    assert h.apply(timer).ignored == "run has exited"
    assert len(h.effects(SendMessage)) == 1


def test_transition_does_not_modify_the_given_state() -> None:
    h = Harness(define(WELCOME), contact={"plan": "free"})
    h.enter()
    before = to_builtins(h.run)
    transition(h.journey, h.run, Wake(step_id="wait", visit=1), T0 + HOUR, h.env())
    assert to_builtins(h.run) == before


def test_nobody_enters_a_journey_that_is_not_live() -> None:
    h = Harness(define(WELCOME, status="paused"))
    outcome = h.enter()
    assert (outcome.state, outcome.ignored) == (None, "journey is paused")
    assert transition(h.journey, None, Wake(step_id="wait", visit=1), T0, h.env()).ignored == "no such run"


# -- send ids across loops ------------------------------------------------------------------------


def test_each_visit_of_a_step_gets_its_own_send_id() -> None:
    steps = {"mail": send("pause"), "pause": delay("again", 1, "day"), "again": gate("mail", "done", "more", True)}
    h = Harness(define({**steps, "done": EXIT}), contact={"more": True})
    h.enter()
    h.wake()
    h.wake()
    h.contact["more"] = False
    h.wake()
    assert [m.send_id for m in h.effects(SendMessage)] == ["run1:mail:1", "run1:mail:2", "run1:mail:3"]
    assert h.run.visits == {"mail": 3, "pause": 3, "again": 3, "done": 1}
    assert h.run.status == "exited"


# -- delays ------------------------------------------------------------------------------------------

UNTIL_TIME_CASES = [
    # (contact tz, now, time, weekdays, wake_at) -- all strictly after now, in the contact's zone
    ("Europe/Paris", T0 - timedelta(minutes=30), "09:00", None, datetime(2025, 3, 3, 8, 0, tzinfo=UTC)),
    ("Europe/Paris", T0, "09:00", None, datetime(2025, 3, 4, 8, 0, tzinfo=UTC)),  # exactly now: tomorrow
    ("Europe/Paris", T0, "09:00", ["sat"], datetime(2025, 3, 8, 8, 0, tzinfo=UTC)),
    ("Europe/Paris", T0, "08:00", ["mon", "wed"], datetime(2025, 3, 5, 7, 0, tzinfo=UTC)),
    # New York springs forward on 2025-03-09 at 02:00: 02:30 does not exist and lands at 03:30 EDT
    (
        "America/New_York",
        datetime(2025, 3, 8, 12, 0, tzinfo=UTC),
        "02:30",
        None,
        datetime(2025, 3, 9, 7, 30, tzinfo=UTC),
    ),
    # the day after, 09:00 is EDT (UTC-4)
    (
        "America/New_York",
        datetime(2025, 3, 9, 12, 0, tzinfo=UTC),
        "09:00",
        None,
        datetime(2025, 3, 9, 13, 0, tzinfo=UTC),
    ),
    # New York falls back on 2025-11-02: 01:30 happens twice, the first (EDT) one counts
    (
        "America/New_York",
        datetime(2025, 11, 1, 12, 0, tzinfo=UTC),
        "01:30",
        None,
        datetime(2025, 11, 2, 5, 30, tzinfo=UTC),
    ),
    # a junk zone on the contact: the journey's zone (Asia/Tokyo) is used
    ("Not/AZone", datetime(2025, 3, 3, 0, 0, tzinfo=UTC), "10:00", None, datetime(2025, 3, 3, 1, 0, tzinfo=UTC)),
    (None, datetime(2025, 3, 3, 0, 0, tzinfo=UTC), "10:00", None, datetime(2025, 3, 3, 1, 0, tzinfo=UTC)),
]


@pytest.mark.parametrize(("tz", "now", "at", "weekdays", "wake_at"), UNTIL_TIME_CASES)
def test_until_time_is_the_next_local_time(
    tz: str | None, now: datetime, at: str, weekdays: list[str] | None, wake_at: datetime
) -> None:
    step = {"type": "delay", "until_time": {"time": at, "weekdays": weekdays}, "next": "done"}
    h = Harness(define({"wait": step, "done": EXIT}, timezone="Asia/Tokyo"), timezone=tz, now=now)
    assert h.enter().wake_at == wake_at
    h.wake()
    assert h.run.exit_reason == "exit_step"


def test_until_time_without_any_zone_uses_the_default_then_utc() -> None:
    step = {"type": "delay", "until_time": {"time": "10:00"}, "next": "done"}
    journey = define({"wait": step, "done": EXIT})
    assert Harness(journey, default_timezone="Australia/Sydney").enter().wake_at == datetime(
        2025, 3, 3, 23, 0, tzinfo=UTC
    )
    assert Harness(journey).enter().wake_at == datetime(2025, 3, 3, 10, 0, tzinfo=UTC)


UNTIL_DATE_CASES = [
    # (source, path, offset, contact, event properties, wake_at or None = straight on)
    ("contact", "renews_at", None, {"renews_at": "2025-03-10T12:00:00Z"}, {}, datetime(2025, 3, 10, 12, tzinfo=UTC)),
    (
        "contact",
        "renews_at",
        {"value": -2, "unit": "day"},
        {"renews_at": "2025-03-10T12:00:00Z"},
        {},
        datetime(2025, 3, 8, 12, tzinfo=UTC),
    ),
    # a bare date is midnight in the contact's zone (Paris, UTC+1 in March)
    ("contact", "billing.due", None, {"billing": {"due": "2025-03-10"}}, {}, datetime(2025, 3, 9, 23, tzinfo=UTC)),
    (
        "event",
        "trial_ends",
        {"value": 1, "unit": "hour"},
        {},
        {"trial_ends": "2025-03-05T00:00:00"},
        datetime(2025, 3, 5, 1, tzinfo=UTC),
    ),
    ("contact", "renews_at", None, {"renews_at": "2025-03-01T00:00:00Z"}, {}, None),  # past: go on
    ("contact", "renews_at", None, {}, {}, None),  # missing: go on
    ("contact", "renews_at", None, {"renews_at": "soon"}, {}, None),  # unreadable: go on
    ("event", "trial_ends", None, {"trial_ends": "2025-03-05T00:00:00Z"}, {}, None),  # reads the event only
]


@pytest.mark.parametrize(("source", "path", "offset", "contact", "props", "wake_at"), UNTIL_DATE_CASES)
def test_until_date_reads_the_contact_or_the_trigger(
    source: str,
    path: str,
    offset: dict[str, Any] | None,
    contact: dict[str, Any],
    props: dict[str, Any],
    wake_at: datetime | None,
) -> None:
    step = {"type": "delay", "until_date": {"source": source, "path": path, "offset": offset}, "next": "mail"}
    h = Harness(define({"wait": step, "mail": send("done"), "done": EXIT}), contact=contact, timezone="Europe/Paris")
    outcome = h.enter(EventData(name="signed_up", properties=props))
    assert outcome.wake_at == wake_at
    if wake_at is None:
        assert h.run.status == "exited"
        assert len(h.effects(SendMessage)) == 1
    else:
        assert h.effects(SendMessage) == []


def test_a_zero_delay_goes_straight_on() -> None:
    h = Harness(define({"wait": delay("done", 0), "done": EXIT}))
    assert h.enter().wake_at is None
    assert h.run.status == "exited"


# -- experiment and balancers ---------------------------------------------------------------------


def test_experiment_variants_are_per_contact_weighted_and_recorded() -> None:
    variants = [Variant(name="A", weight=1, next="a"), Variant(name="B", weight=3, next="b")]
    picks = [variant_for("jrn", "split", f"c{i}", variants).name for i in range(4000)]
    assert 0.72 < picks.count("B") / len(picks) < 0.78
    assert picks == [variant_for("jrn", "split", f"c{i}", variants).name for i in range(4000)]

    split = {"type": "experiment", "variants": [v.model_dump() for v in variants]}
    journey = define({"split": split, "a": send("done", "tpl_a"), "b": send("done", "tpl_b"), "done": EXIT})
    h = Harness(journey)
    h.enter()
    expected = variant_for("jrn", "split", "c1", variants)
    assert h.effects(VariantAssigned) == [VariantAssigned(step_id="split", variant=expected.name)]
    assert h.run.assignments == {"split": expected.name}
    (message,) = h.effects(SendMessage)
    assert message.template_id == f"tpl_{expected.name.lower()}"
    assert message.variables["journey"] == {"split": {"variant": expected.name}}


def test_round_robin_takes_turns_from_the_shared_counter() -> None:
    rr = {"type": "balancer", "mode": "round_robin", "paths": ["a", "b", "a"]}
    journey = define({"rr": rr, "a": send("done", "tpl_a"), "b": send("done", "tpl_b"), "done": EXIT})
    counts: dict[str, int] = {}
    templates = []
    for i in range(6):  # six contacts, one shared counter (the caller's)
        h = Harness(journey, counts=counts)
        h.enter(run_id=f"run{i}")
        (taken,) = h.effects(BalancerTaken)
        assert (taken.counter_key, taken.period_start) == ("rr", None)
        templates.append(h.effects(SendMessage)[0].template_id)
    assert templates == ["tpl_a", "tpl_b", "tpl_a"] * 2
    assert counts == {"rr": 6}


def test_limited_balancer_fills_paths_in_order_then_waits_for_the_next_period() -> None:
    paths = [
        {"next": "a", "limit": 1, "period": {"value": 1, "unit": "day"}},
        {"next": "b", "limit": 2, "period": {"value": 1, "unit": "hour"}},
    ]
    cap = {"type": "balancer", "mode": "limited", "paths": paths}
    journey = define({"cap": cap, "a": send("done", "tpl_a"), "b": send("done", "tpl_b"), "done": EXIT})
    counts: dict[str, int] = {}
    runs = [Harness(journey, counts=counts, now=T0 + timedelta(minutes=10)) for _ in range(4)]
    for i, h in enumerate(runs):
        h.enter(run_id=f"run{i}")
    sent = [h.effects(SendMessage)[0].template_id if h.effects(SendMessage) else None for h in runs]
    assert sent == ["tpl_a", "tpl_b", "tpl_b", None]
    day, hour = T0.replace(hour=0), T0
    assert counts == {f"cap:a:{day:%Y-%m-%dT%H:%M:%SZ}": 1, f"cap:b:{hour:%Y-%m-%dT%H:%M:%SZ}": 2}
    overflow = runs[3]
    assert (overflow.run.status, overflow.run.step_id, overflow.run.wake_at) == ("waiting", "cap", T0 + HOUR)
    overflow.wake()  # the hourly path has room again
    assert overflow.effects(SendMessage)[0].template_id == "tpl_b"
    (taken,) = overflow.effects(BalancerTaken)
    assert taken.period_start == T0 + HOUR


def test_a_full_balancer_that_stays_full_waits_again_at_the_same_visit() -> None:
    cap = {
        "type": "balancer",
        "mode": "limited",
        "paths": [{"next": "done", "limit": 1, "period": {"value": 1, "unit": "hour"}}],
    }
    journey = define({"cap": cap, "done": EXIT})
    h = Harness(journey, counts={f"cap:done:{T0:%Y-%m-%dT%H:%M:%SZ}": 1, f"cap:done:{T0 + HOUR:%Y-%m-%dT%H:%M:%SZ}": 1})
    h.enter()
    assert h.run.wake_at == T0 + HOUR
    again = h.wake()
    assert (again.wake_at, h.run.visit) == (T0 + 2 * HOUR, 1)
    assert h.apply(Wake(step_id="cap", visit=1)).ignored == "timer is early"


# -- update, event, link ---------------------------------------------------------------------------


def test_update_and_event_render_liquid_with_contact_event_and_journey() -> None:
    steps = {
        "tag": {
            "type": "update",
            "set": {
                "stage": "{{ event.properties.plan | upcase }}",
                "score": 5,
                "profile": {"hi": "{{ contact.name }}"},
            },
            "unset": ["legacy"],
            "next": "emit",
        },
        "emit": {
            "type": "event",
            "name": "tagged",
            "properties": {"who": "{{ contact.name }}", "n": [1, "x"]},
            "next": "done",
        },
        "done": EXIT,
    }
    h = Harness(define(steps), contact={"name": "Ada"})
    h.enter(EventData(name="signed_up", properties={"plan": "pro"}))
    assert h.effects(UpdateContact) == [
        UpdateContact(set={"stage": "PRO", "score": 5, "profile": {"hi": "Ada"}}, unset=["legacy"])
    ]
    assert h.effects(EmitEvent) == [
        EmitEvent(message_id="run1:emit:1", name="tagged", properties={"who": "Ada", "n": [1, "x"]})
    ]


def test_link_enters_the_other_journey_and_ends_this_run() -> None:
    steps = {"go": {"type": "link", "journey_id": "jrn_next", "delay": {"value": 2, "unit": "day"}}}
    h = Harness(define(steps))
    trigger = EventData(name="signed_up", message_id="m0")
    h.enter(trigger)
    assert h.effects(EnterJourney) == [
        EnterJourney(journey_id="jrn_next", at=T0 + timedelta(days=2), entry_id="run1:go:1", event=trigger)
    ]
    assert (h.run.status, h.run.exit_reason) == ("exited", "link")


# -- wait_for_event and exit_when -----------------------------------------------------------------

WAITING = {
    "wait": {
        "type": "wait_for_event",
        "event": "purchase",
        "where": [{"path": "amount", "op": "gte", "value": 10}],
        "within": {"value": 2, "unit": "day"},
        "yes": "thanks",
        "timeout": "nudge",
    },
    "thanks": send("done", "tpl_thanks"),
    "nudge": send("done", "tpl_nudge"),
    "done": EXIT,
}


def test_wait_for_event_takes_yes_on_the_event_and_keeps_it_for_templates() -> None:
    h = Harness(define(WAITING))
    assert h.enter().wake_at == T0 + timedelta(days=2)
    h.now += HOUR
    assert h.see("purchase", "m1", amount=5).ignored == "not the awaited event"
    assert h.see("refund", "m2", amount=50).ignored == "not the awaited event"
    took = h.see("purchase", "m3", amount=50)
    assert took.ignored is None
    (message,) = h.effects(SendMessage)
    assert message.template_id == "tpl_thanks"
    waited = message.variables["journey"]["wait"]
    assert (waited["name"], waited["message_id"], waited["properties"]) == ("purchase", "m3", {"amount": 50})
    assert h.see("purchase", "m3", amount=50).ignored == "run has exited"


def test_events_are_ignored_while_no_wait_is_pending() -> None:
    h = Harness(define(WELCOME))
    h.enter()
    assert h.see("purchase", "m1").ignored == "not waiting for an event"


def test_wait_for_event_times_out() -> None:
    h = Harness(define(WAITING))
    h.enter()
    h.wake()
    assert [m.template_id for m in h.effects(SendMessage)] == ["tpl_nudge"]


def test_an_event_after_the_timeout_is_left_to_the_timer() -> None:
    h = Harness(define(WAITING))
    h.enter()
    h.now = T0 + timedelta(days=2)
    assert h.see("purchase", "m1", amount=50).ignored == "the wait has timed out"
    h.wake()
    assert [m.template_id for m in h.effects(SendMessage)] == ["tpl_nudge"]


def test_a_redelivered_event_is_not_consumed_twice() -> None:
    loop = {**WAITING, "thanks": delay("wait", 1, "hour")}
    del loop["nudge"], loop["done"]
    loop["wait"] = {**loop["wait"], "timeout": "bye", "where": []}
    h = Harness(define({**loop, "bye": EXIT}))
    h.enter()
    h.see("purchase", "m1")
    h.wake()  # back at the wait, second visit
    assert (h.run.step_id, h.run.visit) == ("wait", 2)
    assert h.see("purchase", "m1").ignored == "event already consumed"
    assert h.see("purchase", "m2").ignored is None


EXIT_WHEN = [
    {"type": "event", "event": "account_deleted"},
    {"type": "event", "event": "purchase", "where": [{"path": "amount", "op": "gte", "value": 100}]},
    {"type": "segment_exited", "segment_id": "seg_trial"},
]


@pytest.mark.parametrize(
    ("event", "reason"),
    [
        (EventSeen(name="account_deleted", message_id="x", timestamp=T0), "event:account_deleted"),
        (EventSeen(name="purchase", properties={"amount": 150}, message_id="x", timestamp=T0), "event:purchase"),
        (EventSeen(name="purchase", properties={"amount": 50}, message_id="x", timestamp=T0), None),
        (SegmentExited(segment_id="seg_trial"), "segment_exited:seg_trial"),
        (SegmentExited(segment_id="seg_other"), None),
        (Exit(reason="archived"), "archived"),
    ],
)
def test_exit_conditions_end_a_waiting_run(event: JourneyInput, reason: str | None) -> None:
    h = Harness(define(WELCOME, exit_when=EXIT_WHEN))
    h.enter()
    outcome = h.apply(event)
    if reason is None:
        assert outcome.ignored is not None
        assert h.run.status == "waiting"
        return
    assert (h.run.status, h.run.exit_reason, outcome.wake_at) == ("exited", reason, None)
    assert kinds(outcome) == [("wait", "exited")]
    assert outcome.effects[0] == StepRecorded(step_id="wait", visit=1, kind="exited", at=T0, detail={"reason": reason})
    assert h.apply(event).ignored == "run has exited"


def test_exit_when_wins_over_a_wait_for_the_same_event() -> None:
    h = Harness(define(WAITING, exit_when=EXIT_WHEN))
    h.enter()
    h.see("purchase", "m1", amount=500)
    assert h.run.exit_reason == "event:purchase"
    assert h.effects(SendMessage) == []


# -- journey edits under waiting runs ----------------------------------------------------------------


def test_an_edited_journey_keeps_runs_whose_step_survives_and_exits_the_others() -> None:
    h = Harness(define(WELCOME), contact={"plan": "free"})
    h.enter()
    h.journey = define({**WELCOME, "mail": send("done", "tpl_v2")}, version=2)
    h.wake()
    assert h.effects(SendMessage)[0].template_id == "tpl_v2"
    assert h.run.journey_version == 2

    g = Harness(define(WELCOME))
    g.enter()
    g.journey = define({"start": delay("done"), "done": EXIT}, version=2)
    outcome = g.wake()
    assert (g.run.status, g.run.exit_reason, outcome.wake_at) == ("exited", "journey_changed", None)


# -- entrance rules ---------------------------------------------------------------------------------

NEVER = {"reentry": "never"}
AFTER_EXIT = {"reentry": "after_exit"}
CONCURRENT = {"reentry": "concurrent"}
FRESH = EntranceHistory()
RUNNING = EntranceHistory(entries=1, active_run_ids=["r1"], last_entered_at=T0 - HOUR)
FINISHED = EntranceHistory(entries=1, last_entered_at=T0 - HOUR, last_exited_at=T0 - HOUR)


@pytest.mark.parametrize(
    ("entrance", "history", "status", "refusal"),
    [
        (NEVER, FRESH, "live", None),
        (NEVER, RUNNING, "live", "entered before (reentry: never)"),
        (NEVER, FINISHED, "live", "entered before (reentry: never)"),
        (AFTER_EXIT, RUNNING, "live", "a run is still going (reentry: after_exit)"),
        (AFTER_EXIT, FINISHED, "live", None),
        (CONCURRENT, RUNNING, "live", None),
        ({**CONCURRENT, "max_entries": 1}, RUNNING, "live", "entered 1 times (max_entries 1)"),
        ({**CONCURRENT, "max_entries": 2}, RUNNING, "live", None),
        ({**AFTER_EXIT, "cooldown": {"value": 1, "unit": "day"}}, FINISHED, "live", "entered too recently (cooldown)"),
        ({**AFTER_EXIT, "cooldown": {"value": 30, "unit": "minute"}}, FINISHED, "live", None),
        (NEVER, FRESH, "draft", "journey is draft"),
        (CONCURRENT, FRESH, "archived", "journey is archived"),
    ],
)
def test_entrance_rules(entrance: dict[str, Any], history: EntranceHistory, status: str, refusal: str | None) -> None:
    journey = define(WELCOME, entrance=entrance, status=status)
    assert entrance_refusal(journey, history, T0) == refusal
    assert may_enter(journey, history, T0) is (refusal is None)


def test_entrance_history_is_idempotent() -> None:
    once = record_entry(FRESH, "r1", T0)
    assert record_entry(once, "r1", T0) == once
    assert (once.entries, once.active_run_ids) == (1, ["r1"])
    left = record_exit(once, "r1", T0 + HOUR)
    assert record_exit(left, "r1", T0 + HOUR) == left
    assert (left.entries, left.active_run_ids, left.last_exited_at) == (1, [], T0 + HOUR)


def test_triggers_and_run_ids() -> None:
    journey = define(
        WELCOME,
        trigger={"type": "event", "event": "signed_up", "where": [{"path": "plan", "op": "eq", "value": "free"}]},
    )
    assert event_triggers(journey.trigger, "signed_up", {"plan": "free"})
    assert not event_triggers(journey.trigger, "signed_up", {"plan": "pro"})
    assert not event_triggers(journey.trigger, "logged_in", {"plan": "free"})
    by_segment = define(WELCOME, trigger={"type": "segment", "segment_id": "s1", "on": "exited"})
    assert segment_triggers(by_segment.trigger, "s1", "exited")
    assert not segment_triggers(by_segment.trigger, "s1", "entered")
    assert run_id_for("j", "c", "m1") == run_id_for("j", "c", "m1")
    assert len({run_id_for("j", "c", "m1"), run_id_for("j", "c", "m2"), run_id_for("j", "c2", "m1")}) == 3
    Enter(run_id=run_id_for("j", "c", "m1"), contact_id="c", at=T0)  # a valid run id (no ':')


# -- scheduled triggers -----------------------------------------------------------------------------


def utc(*parts: int) -> datetime:
    return datetime(*parts, tzinfo=UTC)


NEXT_FIRE_CASES = [
    # (cron/rrule, trigger tz, after, expected)
    ({"cron": "0 9 * * 1-5"}, None, utc(2025, 3, 3, 8, 0), utc(2025, 3, 3, 9, 0)),
    ({"cron": "0 9 * * 1-5"}, None, utc(2025, 3, 3, 9, 0), utc(2025, 3, 4, 9, 0)),  # strictly after
    ({"cron": "0 9 * * 1-5"}, None, utc(2025, 3, 7, 10, 0), utc(2025, 3, 10, 9, 0)),  # Friday -> Monday
    ({"cron": "0 9 * * *"}, "Europe/Paris", utc(2025, 3, 29, 12, 0), utc(2025, 3, 30, 7, 0)),  # CEST from the 30th
    ({"cron": "30 2 * * *"}, "America/New_York", utc(2025, 3, 8, 12, 0), utc(2025, 3, 9, 7, 30)),  # skipped: 03:30
    ({"cron": "30 2 * * *"}, "America/New_York", utc(2025, 3, 9, 7, 10), utc(2025, 3, 9, 7, 30)),  # just after the gap
    ({"cron": "30 1 * * *"}, "America/New_York", utc(2025, 11, 2, 0, 0), utc(2025, 11, 2, 5, 30)),  # first 01:30
    ({"cron": "30 1 * * *"}, "America/New_York", utc(2025, 11, 2, 5, 30), utc(2025, 11, 3, 6, 30)),  # not twice
    ({"cron": "0 0 30 2 *"}, None, utc(2025, 1, 1), None),  # never matches
    (
        {"rrule": "DTSTART:20250106T090000\nRRULE:FREQ=WEEKLY;BYDAY=MO"},
        "Europe/Paris",
        utc(2025, 3, 3, 9),
        utc(2025, 3, 10, 8),
    ),
    (
        {"rrule": "DTSTART:20250106T090000Z\nRRULE:FREQ=WEEKLY;BYDAY=MO"},
        "Europe/Paris",
        utc(2025, 3, 3, 8),
        utc(2025, 3, 3, 9),
    ),
    ({"rrule": "DTSTART:20250101T090000\nRRULE:FREQ=DAILY;COUNT=3"}, None, utc(2025, 1, 3, 9), None),  # used up
    (
        {"rrule": "DTSTART:20250101T090000\nRRULE:FREQ=DAILY\nEXDATE:20250102T090000"},
        None,
        utc(2025, 1, 1, 9),
        utc(2025, 1, 3, 9),
    ),
]


@pytest.mark.parametrize(("schedule", "tz", "after", "expected"), NEXT_FIRE_CASES)
def test_next_fire(schedule: dict[str, str], tz: str | None, after: datetime, expected: datetime | None) -> None:
    trigger = ScheduledTrigger.model_validate(
        {"type": "scheduled", "audience": {"list_id": "l"}, "timezone": tz, **schedule}
    )
    assert next_fire(trigger, after) == expected


def test_next_fire_falls_back_to_the_given_zone() -> None:
    trigger = ScheduledTrigger.model_validate({"type": "scheduled", "cron": "0 9 * * *", "audience": {"list_id": "l"}})
    assert next_fire(trigger, utc(2025, 3, 3), "Asia/Tokyo") == utc(2025, 3, 4, 0)


# -- properties over random journeys ----------------------------------------------------------------

KINDS = ("send", "delay", "until_time", "until_date", "gate", "experiment", "round_robin", "limited")
KINDS += ("update", "event", "exit", "link", "wait")
TAKES_TIME = {"delay", "until_time", "wait"}  # back edges only from these: every cycle takes time
EVENTS = ("ping", "pong", "quit")
ZONES = ("UTC", "Europe/Paris", "America/New_York", "Australia/Lord_Howe")


def _step(kind: str, pick: Callable[[], str], draw: Any) -> dict[str, Any]:
    if kind == "send":
        return send(pick(), draw(st.sampled_from(["t1", "t2"])))
    if kind == "delay":
        return delay(pick(), draw(st.integers(1, 3)), draw(st.sampled_from(["minute", "hour", "day"])))
    if kind == "until_time":
        days = draw(st.none() | st.lists(st.sampled_from(["mon", "sat", "sun"]), min_size=1, max_size=3, unique=True))
        at = draw(st.sampled_from(["00:00", "02:30", "09:15", "23:59"]))
        return {"type": "delay", "until_time": {"time": at, "weekdays": days}, "next": pick()}
    if kind == "until_date":
        offset = draw(st.none() | st.builds(lambda v: {"value": v, "unit": "hour"}, st.integers(-30, 30)))
        source = draw(st.sampled_from(["contact", "event"]))
        return {"type": "delay", "until_date": {"source": source, "path": "renews", "offset": offset}, "next": pick()}
    if kind == "gate":
        return gate(pick(), pick(), "flag", True)
    if kind == "experiment":
        weights = draw(st.lists(st.integers(1, 5), min_size=2, max_size=3))
        return {
            "type": "experiment",
            "variants": [{"name": f"v{i}", "weight": w, "next": pick()} for i, w in enumerate(weights)],
        }
    if kind == "round_robin":
        return {"type": "balancer", "mode": "round_robin", "paths": [pick() for _ in range(draw(st.integers(2, 3)))]}
    if kind == "limited":
        targets = list(dict.fromkeys(pick() for _ in range(draw(st.integers(1, 2)))))
        unit = draw(st.sampled_from(["hour", "day"]))
        paths = [{"next": t, "limit": draw(st.integers(1, 2)), "period": {"value": 1, "unit": unit}} for t in targets]
        return {"type": "balancer", "mode": "limited", "paths": paths}
    if kind == "update":
        return {"type": "update", "set": {"stage": "{{ event.name }}-{{ contact.flag }}"}, "next": pick()}
    if kind == "event":
        return {"type": "event", "name": "ping", "properties": {"n": 1, "from": "{{ event.name }}"}, "next": pick()}
    if kind == "link":
        return {"type": "link", "journey_id": "other", "delay": draw(st.none() | st.just({"value": 1, "unit": "day"}))}
    if kind == "wait":
        where = draw(st.sampled_from([[], [{"path": "n", "op": "gte", "value": 1}]]))
        within = {"value": draw(st.integers(1, 3)), "unit": "hour"}
        event = draw(st.sampled_from(["ping", "pong"]))
        return {
            "type": "wait_for_event",
            "event": event,
            "where": where,
            "within": within,
            "yes": pick(),
            "timeout": pick(),
        }
    return EXIT


def _targets(step: dict[str, Any]) -> list[str]:
    found = [step[key] for key in ("next", "yes", "no", "timeout") if key in step]
    found += [v["next"] for v in step.get("variants", [])]
    found += [p if isinstance(p, str) else p["next"] for p in step.get("paths", [])]
    return found


@st.composite
def random_journeys(draw: Any) -> JourneyDefinition:
    """Small random graphs that validate by construction: forward edges from every step, back
    edges only from steps that always wait; then what start cannot reach is dropped."""
    ids = [f"s{i}" for i in range(draw(st.integers(2, 8)))]
    steps: dict[str, dict[str, Any]] = {}
    for i, step_id in enumerate(ids):
        kind = draw(st.sampled_from(KINDS))
        choices = ids[i + 1 :] + (ids[: i + 1] if kind in TAKES_TIME else [])
        if not choices:
            kind = draw(st.sampled_from(["exit", "link"]))
        picked: list[str] = []

        def pick(choices: list[str] = choices, picked: list[str] = picked) -> str:
            # the first target is the next step (a spine that keeps most steps reachable)
            target = choices[0] if not picked and choices[0] != ids[0] else draw(st.sampled_from(choices))
            picked.append(target)
            return target

        steps[step_id] = _step(kind, pick, draw)
    reachable, todo = {ids[0]}, [ids[0]]
    while todo:
        for target in _targets(steps[todo.pop()]):
            if target not in reachable:
                reachable.add(target)
                todo.append(target)
    exit_when = draw(
        st.lists(
            st.sampled_from([{"type": "event", "event": "quit"}, {"type": "segment_exited", "segment_id": "seg"}]),
            unique_by=lambda c: c["type"],
        )
    )
    kept = {sid: step for sid, step in steps.items() if sid in reachable}
    return define(kept, ids[0], exit_when=exit_when, timezone=draw(st.sampled_from(ZONES)))


EVENT_ACTION = st.tuples(st.just("event"), st.sampled_from(EVENTS), st.integers(0, 2), st.integers(0, 1800))
ACTIONS = st.one_of(
    st.tuples(st.just("wake")),
    EVENT_ACTION,
    EVENT_ACTION,
    st.tuples(st.just("segment"), st.sampled_from(["seg", "other"])),
    st.tuples(st.just("stale")),
    st.tuples(st.just("replay")),
    st.tuples(st.just("tick"), st.integers(1, 2 * 86_400)),
    st.tuples(st.just("exit")),
)
CONTACTS = st.fixed_dictionaries(
    {
        "flag": st.booleans(),
        "renews": st.sampled_from(["2025-03-05", "2025-03-03T12:00:00Z", "2020-01-01", "junk"]),
    }
)
STARTS = st.sampled_from(
    [
        T0,
        datetime(2025, 3, 8, 23, tzinfo=UTC),
        datetime(2025, 4, 5, 14, 45, tzinfo=UTC),
        datetime(2025, 11, 1, 23, tzinfo=UTC),
    ]
)


@dataclass
class Checked(Harness):
    """A harness that checks every outcome against the machine's promises."""

    applied: list[tuple[JourneyInput, datetime]] = field(default_factory=list)
    ids: list[str] = field(default_factory=list)

    def apply(self, event: JourneyInput) -> Outcome:
        before = None if self.state is None else to_builtins(self.state)
        outcome = super().apply(event)
        if outcome.ignored is not None:
            assert outcome.effects == []
            assert (None if outcome.state is None else to_builtins(outcome.state)) == before
            return outcome
        self.applied.append((event, self.now))
        state = outcome.state
        assert state is not None
        assert state.status in ("waiting", "exited")
        if state.status == "waiting":  # time must pass before the run moves again
            assert state.wake_at is not None
            assert state.wake_at > self.now
            assert outcome.wake_at == state.wake_at
        else:
            assert outcome.wake_at is None
        assert state.exit_reason != "zero_delay_loop"
        entered = [e for e in outcome.effects if isinstance(e, StepRecorded) and e.kind == "entered"]
        assert len(entered) <= len(self.journey.steps)
        for effect in outcome.effects:
            if isinstance(effect, SendMessage):
                self.ids.append(effect.send_id)
            elif isinstance(effect, EmitEvent):
                self.ids.append(effect.message_id)
            elif isinstance(effect, EnterJourney):
                self.ids.append(effect.entry_id)
        assert len(self.ids) == len(set(self.ids))
        # the same input again, on the new state, is recognised and ignored
        replay = transition(self.journey, state, event, self.now, self.env())
        assert replay.ignored is not None
        assert replay.state == state
        return outcome

    def advance(self, to: datetime) -> None:
        """Deliver every timer due up to ``to`` exactly at its time, then move the clock."""
        while self.state is not None and self.state.status == "waiting" and self.state.wake_at is not None:
            if self.state.wake_at > to:
                break
            assert self.wake().ignored is None  # a timer delivered on time always applies
        self.now = max(self.now, to)


def play(
    journey: JourneyDefinition, contact: dict[str, Any], start: datetime, script: list[tuple[Any, ...]]
) -> Checked:
    h = Checked(journey, contact=contact, timezone=contact.get("tz"), now=start)
    h.enter(EventData(name="signed_up", message_id="m0", properties={"renews": "2025-03-04T00:00:00Z"}))
    for number, action in enumerate(script):
        if h.run.status == "exited":
            break
        if action[0] == "wake":
            assert h.run.wake_at is not None
            h.advance(h.run.wake_at)
        elif action[0] == "event":
            _, name, n, gap = action
            h.advance(h.now + timedelta(seconds=gap))
            if h.run.status != "exited":
                h.see(name, f"m{number + 1}", n=n)
        elif action[0] == "segment":
            h.apply(SegmentExited(segment_id=action[1]))
        elif action[0] == "stale":
            h.apply(Wake(step_id=h.run.step_id, visit=h.run.visit - 1))
            assert h.outcomes[-1].ignored == "stale timer"
            h.apply(Wake(step_id=h.run.step_id, visit=h.run.visit))  # the right timer, early
            assert h.outcomes[-1].ignored == "timer is early"
        elif action[0] == "replay" and h.applied:
            event, _ = h.applied[-1]
            assert h.apply(event).ignored is not None
        elif action[0] == "tick":
            h.advance(h.now + timedelta(seconds=action[1]))
        elif action[0] == "exit":
            h.apply(Exit())
    for _ in range(2 * len(journey.steps) + 2):  # only time passes now: timeouts, delays, new periods
        if h.run.status == "exited":
            break
        assert h.run.wake_at is not None
        h.advance(h.run.wake_at)
    return h


PROPERTY_SETTINGS = settings(max_examples=120, deadline=None, suppress_health_check=[HealthCheck.too_slow])


@PROPERTY_SETTINGS
@given(
    journey=random_journeys(),
    contact=CONTACTS,
    tz=st.sampled_from([None, "Asia/Kolkata", "America/New_York", "Bad/Zone"]),
    start=STARTS,
    script=st.lists(ACTIONS, max_size=16),
)
def test_runs_wait_or_exit_never_spin_and_recognise_replays(
    journey: JourneyDefinition, contact: dict[str, Any], tz: str | None, start: datetime, script: list[tuple[Any, ...]]
) -> None:
    h = play(journey, {**contact, "tz": tz}, start, script)
    assert h.run.status in ("waiting", "exited")


@PROPERTY_SETTINGS
@given(journey=random_journeys(), contact=CONTACTS, start=STARTS, script=st.lists(ACTIONS, max_size=16))
def test_the_same_inputs_give_the_same_outcomes(
    journey: JourneyDefinition, contact: dict[str, Any], start: datetime, script: list[tuple[Any, ...]]
) -> None:
    first = play(journey, contact, start, script)
    second = play(journey, contact, start, script)
    assert [to_builtins(o) for o in first.outcomes] == [to_builtins(o) for o in second.outcomes]
    assert first.ids == second.ids


def test_a_definition_that_skipped_validation_cannot_spin() -> None:
    journey = define(WELCOME, exit_when=EXIT_WHEN)
    journey.steps["mail"] = SendStep(channel="email", template_id="t", next="check")  # check -> mail -> check
    h = Harness(journey, contact={"plan": "free"})
    h.enter()
    h.wake()
    assert h.run.exit_reason == "zero_delay_loop"
    assert len(h.effects(SendMessage)) == 2  # a walk enters at most len(steps) steps: wait-less loop cut


def test_a_run_of_another_journey_is_refused() -> None:
    h = Harness(define(WELCOME))
    h.enter()
    with pytest.raises(ValueError, match="belongs to journey"):
        transition(define(WELCOME, journey_id="other"), h.run, Exit(), T0, h.env())
