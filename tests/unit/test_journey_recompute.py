"""Journeys run incrementally by the contact processor equal a full recompute from the event log.

The incremental side is the real ``ContactProcessor`` over the in-memory context: one record at
a time (identify and track messages, timers as ``JourneyWake`` records), its state kept in its
tables between records, a ``ManualClock`` moved by the script. Timers are delivered either on
time (the clock stops at each due timer, as a runtime with no lag would) or late (the clock jumps
past them and they are delivered right after the next record, at that record's time); the clock
also lands exactly on a run's next deadline, so events tie with timers.

The other side is a small reference interpreter written from ``docs/journeys.md``, not from the
machine: given the complete log so far it replays the journey from scratch and says, per contact,
which runs started (run ids by the documented formula) and the ``journey_steps`` rows each wrote
-- steps entered, waits, branches taken, exits and their reasons -- and where the live run waits.

The journeys are restricted so that the reference stays obviously right: forward edges only (no
cycles, so every visit is 1), durations in whole seconds, steps ``delay`` (by duration, zero
included), ``wait_for_event``, ``gate`` on ``plan``, ``update`` of ``plan``, ``send`` and
``exit``; an event trigger, ``reentry`` never or after_exit (so at most one run per contact at a
time), at most one ``exit_when`` event. The documented rules it leans on:

- for one track event: the contact's runs see it first (``exit_when`` before ``wait_for_event``),
  then the trigger; a run started by an event does not see that same event;
- ``wait_for_event``: ``yes`` for a matching event processed before the deadline; an event
  processed at or after it is left to the timer, which takes ``timeout`` even when delivered late;
- ``now`` is the processor's clock when it handles the record: delays and waits start then, and
  rows carry it (a late timer moves the rest of the run later);
- an ``update`` is applied after the transition that produced it: a gate later in the same
  transition still sees the contact as it was (a later transition sees the contact's current state).

The explicit example is the case this property found: a run that takes the trigger event at a
wait, updates the contact and exits, then the run that same event starts; its gate must read the
contact as the update left it.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any

from hypothesis import example, given, settings
from hypothesis import strategies as st
from pydantic import TypeAdapter

from spotzee.domain.journeys import RunState
from spotzee.schemas.analytics_models import JourneyStepRow, analytics_record_adapter
from spotzee.schemas.events import SegmentMessage
from spotzee.schemas.journey_models import JourneyDefinition
from spotzee.schemas.message_data import message_data
from spotzee.schemas.records import EventsRecord, IngestedMessage, JourneyBarrier, record_key
from spotzee.streams import topics
from spotzee.streams.contact_processor import ContactProcessor
from spotzee.streams.journey_processor import JOURNEY_RUNS, SEP
from spotzee.streams.record_codec import dumps, loads
from spotzee.testing import ManualClock, MemoryContext

T0 = datetime(2026, 3, 2, 10, 0, tzinfo=UTC)
PROJECT = "p"
JOURNEY_ID = "jrn_recompute"
TRIGGER = "signed_up"
CONTACTS = ("u1", "u2")
NAMES = ("signed_up", "ping", "pong", "account_deleted")  # what the script tracks
WAIT_EVENTS = ("ping", "pong", "signed_up")
EXIT_EVENTS = ("account_deleted", "ping", "signed_up")
PLANS = ("free", "pro")
DELAYS = ((0, "second"), (1, "second"), (30, "second"), (1, "minute"), (5, "minute"), (1, "hour"))
WITHINS = ((1, "second"), (30, "second"), (1, "minute"), (10, "minute"), (1, "hour"))
UNIT_SECONDS = {"second": 1, "minute": 60, "hour": 3600}
KINDS = ("delay", "delay", "wait", "wait", "wait", "gate", "update", "send", "exit")

message_adapter = TypeAdapter[SegmentMessage](SegmentMessage)
Body = dict[str, Any]


# -- random journeys and scripts -------------------------------------------------------------------


def _duration(pair: tuple[int, str]) -> Body:
    return {"value": pair[0], "unit": pair[1]}


@st.composite
def journeys(draw: Any) -> Body:
    """A DAG of steps ``s0 … s<n-1>`` and an ``end`` exit: every edge goes forward (the first
    target of a step is the next one, so most steps stay reachable); unreachable steps are dropped."""
    ids = [f"s{i}" for i in range(draw(st.integers(1, 6)))]
    steps: dict[str, Body] = {}
    for i, step_id in enumerate(ids):
        choices = [*ids[i + 1 :], "end"]
        picked: list[str] = []

        def pick(choices: list[str] = choices, picked: list[str] = picked) -> str:
            target = choices[0] if not picked else draw(st.sampled_from(choices))
            picked.append(target)
            return target

        kind = draw(st.sampled_from(KINDS))
        if kind == "delay":
            steps[step_id] = {"type": "delay", "duration": _duration(draw(st.sampled_from(DELAYS))), "next": pick()}
        elif kind == "wait":
            steps[step_id] = {
                "type": "wait_for_event",
                "event": draw(st.sampled_from(WAIT_EVENTS)),
                "within": _duration(draw(st.sampled_from(WITHINS))),
                "yes": pick(),
                "timeout": pick(),
            }
        elif kind == "gate":
            rule = {"type": "attribute", "path": "plan", "op": "eq", "value": draw(st.sampled_from(PLANS))}
            steps[step_id] = {"type": "gate", "rule": rule, "yes": pick(), "no": pick()}
        elif kind == "update":
            steps[step_id] = {"type": "update", "set": {"plan": draw(st.sampled_from(PLANS))}, "next": pick()}
        elif kind == "send":
            steps[step_id] = {"type": "send", "channel": "email", "template_id": "tpl_x", "next": pick()}
        else:
            steps[step_id] = {"type": "exit"}
    steps["end"] = {"type": "exit"}
    reachable, todo = {ids[0]}, [ids[0]]
    while todo:
        step = steps[todo.pop()]
        for target in (step.get(k) for k in ("next", "yes", "no", "timeout")):
            if target is not None and target not in reachable:
                reachable.add(target)
                todo.append(target)
    kept = {sid: step for sid, step in steps.items() if sid in reachable}
    reentry = draw(st.sampled_from(["never", "after_exit"]))
    exit_event = draw(st.none() | st.sampled_from(EXIT_EVENTS))
    return {
        "name": "recompute",
        "trigger": {"type": "event", "event": TRIGGER},
        "entrance": {"reentry": reentry},
        "exit_when": [] if exit_event is None else [{"type": "event", "event": exit_event}],
        "start": ids[0],
        "steps": kept,
    }


seconds = st.one_of(
    st.integers(0, 90),
    st.integers(1, 30).map(lambda m: m * 60),
    st.integers(1, 3).map(lambda h: h * 3600),
)
track = st.tuples(st.just("track"), st.sampled_from(CONTACTS), st.sampled_from(NAMES))
actions = st.one_of(
    st.tuples(st.just("identify"), st.sampled_from(CONTACTS), st.sampled_from(PLANS)),
    track,
    track,
    track,
    st.tuples(st.just("track"), st.sampled_from(CONTACTS), st.just(TRIGGER)),
    st.tuples(st.just("advance"), seconds, st.just(True)),  # timers delivered on time
    st.tuples(st.just("advance"), seconds, st.booleans()),  # False: delivered late
    st.tuples(st.just("deadline"), st.booleans()),  # to the next run timer exactly: ties with events
)
# Each contact's plan before the script: identified first, or not at all.
initial_plans = st.tuples(*(st.sampled_from([None, *PLANS]) for _ in CONTACTS))


# -- the incremental side: the real processor, one record at a time --------------------------------


def live_journey(body: Body) -> JourneyDefinition:
    """``body`` (a journey as the API takes it) published: live, version 1, in the test project."""
    return JourneyDefinition.model_validate(
        {
            **body,
            "id": JOURNEY_ID,
            "project_id": PROJECT,
            "version": 1,
            "status": "live",
            "created_at": T0,
            "updated_at": T0,
        }
    )


class Incremental:
    def __init__(self, journey: JourneyDefinition) -> None:
        self.clock = ManualClock(T0)
        processor = ContactProcessor(dedupe_window=timedelta(hours=24), recent_limit=10)
        self.ctx = MemoryContext(processor, self.clock)
        self.send(JourneyBarrier.of(journey))

    def send(self, record: EventsRecord) -> None:
        """One record, then (the in-memory runtime's order) the timers due now, then what they cause."""
        self.ctx.send(record_key(record), dumps(record))

    def message(self, message_id: str, body: Body) -> None:
        message = message_data(message_adapter.validate_python(body))
        self.send(
            IngestedMessage(
                project_id=PROJECT, message_id=message_id, received_at=self.clock.now(), message=message, raw="{}"
            )
        )

    def advance(self, delta: timedelta, on_time: bool) -> None:
        target = self.clock.now() + delta
        if not on_time:
            self.clock.set(target)  # due timers wait for the next record (delivered late)
            return
        while True:
            due = [at for at, *_ in self.ctx.timers.values() if at <= target]
            if not due:
                break
            self.clock.set(max(self.clock.now(), min(due)))
            self.ctx.drain()
        self.clock.set(target)
        self.ctx.drain()

    def next_run_timer(self) -> timedelta:
        """How far the earliest pending run timer is (zero when none is, or it is overdue)."""
        due = [at for timer_id, (at, *_) in self.ctx.timers.items() if timer_id.startswith("journey:")]
        return max(min(due) - self.clock.now(), timedelta(0)) if due else timedelta(0)

    def observed(self) -> dict[str, list[tuple[str, list[tuple[Any, ...]]]]]:
        """Per contact, its runs in the order they started, each with its ``journey_steps`` rows."""
        runs: dict[str, dict[str, list[tuple[Any, ...]]]] = {}
        for raw in self.ctx.emitted(topics.ANALYTICS):
            row = analytics_record_adapter.validate_json(raw)
            if isinstance(row, JourneyStepRow):
                assert row.journey_id == JOURNEY_ID
                runs.setdefault(row.contact_id, {}).setdefault(row.run_id, []).append(_projected(row))
        return {contact: list(by_run.items()) for contact, by_run in runs.items()}

    def waiting(self) -> dict[str, dict[str, tuple[str, datetime | None]]]:
        found: dict[str, dict[str, tuple[str, datetime | None]]] = {}
        for key, raw in self.ctx.table(JOURNEY_RUNS).data.items():
            run = loads(RunState, raw)
            assert run.status == "waiting"
            assert key == f"{PROJECT}:{run.contact_id}{SEP}{run.run_id}"
            found.setdefault(run.contact_id, {})[run.run_id] = (run.step_id, run.wake_at)
        return found


def _projected(row: JourneyStepRow) -> tuple[Any, ...]:
    """What the docs say a row tells: the step entered (its type), when a wait ends, the branch
    taken and the next step (and whether a delay waited), why the run exited."""
    detail = loads_json(row.detail)
    if row.kind == "entered":
        info: Any = detail["type"]
    elif row.kind == "waiting":
        info = datetime.fromisoformat(detail["wake_at"])
    elif row.kind == "completed":
        info = (detail.get("branch"), bool(detail.get("waited")), detail["next"])
    else:
        assert row.kind == "exited", row.kind
        info = detail["reason"]
    return (row.step_id, row.visit, row.kind, row.at, info)


def loads_json(text: str) -> Body:
    value = json.loads(text)
    assert isinstance(value, dict)
    return value


# -- the reference: a full recompute from the log ---------------------------------------------------


@dataclass
class RefRun:
    run_id: str
    at: str  # the step it is at
    rows: list[tuple[Any, ...]] = field(default_factory=list)
    visits: dict[str, int] = field(default_factory=dict)
    wake_at: datetime | None = None  # set while it waits
    exited: bool = False


def run_id_for(contact: str, message_id: str) -> str:
    digest = hashlib.sha256("\0".join((JOURNEY_ID, contact, message_id)).encode()).hexdigest()
    return f"run_{digest[:32]}"


def _seconds(duration: Body) -> int:
    return int(duration["value"]) * UNIT_SECONDS[duration["unit"]]


def recompute(journey: Body, log: list[tuple[Any, ...]]) -> dict[str, list[RefRun]]:
    """Replay the journey over the whole log: ``("message", t, contact, body, message_id)`` and
    ``("clock", t, on_time)``. Returns every contact's runs, in the order they started."""
    steps: dict[str, Body] = journey["steps"]
    exit_events = {c["event"] for c in journey["exit_when"]}
    plans: dict[str, str] = {}
    runs: dict[str, list[RefRun]] = {}
    now = T0

    def live(contact: str) -> RefRun | None:
        mine = runs.get(contact, [])
        return mine[-1] if mine and not mine[-1].exited else None

    def row(run: RefRun, step_id: str, kind: str, info: Any) -> None:
        run.rows.append((step_id, run.visits[step_id], kind, now, info))

    def leave(run: RefRun, reason: str) -> None:
        row(run, run.at, "exited", reason)
        run.exited, run.wake_at = True, None

    def walk(contact: str, run: RefRun, step_id: str) -> None:
        """From ``step_id`` through every step that takes no time; updates land afterwards."""
        seen = plans.get(contact)  # gates read the contact as it was when the transition began
        updates: list[str] = []
        while True:
            step = steps[step_id]
            run.at = step_id
            run.visits[step_id] = run.visits.get(step_id, 0) + 1
            row(run, step_id, "entered", step["type"])
            kind = step["type"]
            following: str
            if kind == "exit":
                leave(run, "exit_step")
                break
            if kind == "gate":
                branch = "yes" if seen == step["rule"]["value"] else "no"
                row(run, step_id, "completed", (branch, False, step[branch]))
                following = step[branch]
            elif kind in ("update", "send"):
                if kind == "update":
                    updates.append(step["set"]["plan"])
                row(run, step_id, "completed", (None, False, step["next"]))
                following = step["next"]
            elif kind == "delay" and _seconds(step["duration"]) == 0:
                row(run, step_id, "completed", (None, False, step["next"]))  # zero: straight on
                following = step["next"]
            else:
                span = step["duration"] if kind == "delay" else step["within"]
                run.wake_at = now + timedelta(seconds=_seconds(span))
                row(run, step_id, "waiting", run.wake_at)
                break
            step_id = following
        for plan in updates:
            plans[contact] = plan

    def fire(contact: str, run: RefRun, position: tuple[str, int]) -> None:
        """A timer set for ``position`` is delivered now (on time or late)."""
        if run.exited or run.wake_at is None or (run.at, run.visits[run.at]) != position or now < run.wake_at:
            return  # the run ended or moved on: a stale timer
        step = steps[run.at]
        run.wake_at = None
        if step["type"] == "delay":
            row(run, run.at, "completed", (None, True, step["next"]))
            walk(contact, run, step["next"])
        else:
            row(run, run.at, "completed", ("timeout", False, step["timeout"]))
            walk(contact, run, step["timeout"])

    def due(until: datetime) -> list[tuple[datetime, str, RefRun, tuple[str, int]]]:
        found = []
        for contact in runs:
            run = live(contact)
            if run is not None and run.wake_at is not None and run.wake_at <= until:
                found.append((run.wake_at, contact, run, (run.at, run.visits[run.at])))
        return sorted(found, key=lambda item: item[0])

    def track(contact: str, name: str, message_id: str) -> None:
        run = live(contact)
        if run is not None:  # the contact's runs see the event first: exit_when, then a wait
            step = steps[run.at]
            if name in exit_events:
                leave(run, f"event:{name}")
            elif (
                step["type"] == "wait_for_event"
                and step["event"] == name
                and run.wake_at is not None
                and now < run.wake_at  # at or after the deadline: left to the timer
            ):
                run.wake_at = None
                row(run, run.at, "completed", ("yes", False, step["yes"]))
                walk(contact, run, step["yes"])
        if name == TRIGGER:  # then the trigger; the new run doesn't see this event
            mine = runs.setdefault(contact, [])
            if journey["entrance"]["reentry"] == "never" and mine:
                return
            if live(contact) is not None:  # after_exit
                return
            new = RefRun(run_id=run_id_for(contact, message_id), at=journey["start"])
            mine.append(new)
            walk(contact, new, journey["start"])

    for entry in log:
        if entry[0] == "clock":
            _, until, on_time = entry
            while on_time and (ready := due(until)):
                now = max(now, ready[0][0])
                for _, contact, run, position in due(now):
                    fire(contact, run, position)
            now = until
            continue
        _, now, contact, body, message_id = entry
        late = due(now)  # timers already due: delivered right after this record
        if body["type"] == "identify":
            plans[contact] = body["traits"]["plan"]
        else:
            track(contact, body["event"], message_id)
        for _, who, run, position in late:
            fire(who, run, position)
    return runs


# -- the property ----------------------------------------------------------------------------------


STALE_CONTACT = {
    "name": "recompute",
    "trigger": {"type": "event", "event": TRIGGER},
    "entrance": {"reentry": "after_exit"},
    "exit_when": [],
    "start": "s0",
    "steps": {
        "s0": {
            "type": "gate",
            "rule": {"type": "attribute", "path": "plan", "op": "eq", "value": "free"},
            "yes": "s1",
            "no": "s1",
        },
        "s1": {
            "type": "wait_for_event",
            "event": TRIGGER,
            "within": {"value": 1, "unit": "hour"},
            "yes": "s2",
            "timeout": "end",
        },
        "s2": {"type": "update", "set": {"plan": "free"}, "next": "end"},
        "end": {"type": "exit"},
    },
}


@settings(max_examples=600, deadline=None, derandomize=True)
@given(body=journeys(), plans=initial_plans, script=st.lists(actions, min_size=8, max_size=30))
@example(
    body=STALE_CONTACT,
    plans=(None, None),
    script=[("track", "u1", TRIGGER), ("advance", 60, True), ("track", "u1", TRIGGER)],
)
def test_incremental_journey_runs_equal_a_full_recompute_from_the_log(
    body: Body, plans: tuple[str | None, ...], script: list[tuple[Any, ...]]
) -> None:
    journey = live_journey(body)
    live = Incremental(journey)
    log: list[tuple[Any, ...]] = []
    identified = [("identify", contact, plan) for contact, plan in zip(CONTACTS, plans, strict=True) if plan]
    for n, action in enumerate([*identified, *script]):
        if action[0] in ("advance", "deadline"):
            delta, on_time = (
                (timedelta(seconds=action[1]), action[2])
                if action[0] == "advance"
                else (live.next_run_timer(), action[1])
            )
            live.advance(delta, on_time)
            log.append(("clock", live.clock.now(), on_time))
        else:
            contact = action[1]
            message = (
                {"type": "identify", "userId": contact, "traits": {"plan": action[2]}}
                if action[0] == "identify"
                else {"type": "track", "userId": contact, "event": action[2]}
            )
            live.message(f"m{n}", message)
            log.append(("message", live.clock.now(), contact, message, f"m{n}"))

        expected = recompute(body, log)
        assert live.observed() == {
            contact: [(run.run_id, run.rows) for run in mine] for contact, mine in expected.items() if mine
        }, f"after {action!r}"
        assert live.waiting() == {
            contact: {run.run_id: (run.at, run.wake_at) for run in mine if not run.exited}
            for contact, mine in expected.items()
            if any(not run.exited for run in mine)
        }, f"after {action!r}"
