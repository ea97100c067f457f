"""Table-driven journey scenarios with a test clock, on both runtimes.

Each scenario publishes journeys, then plays a script — ingest calls, API entries, moves of the
clock — and checks every contact's runs as ``journey_steps`` records them: per run, the steps
entered in order and how it ended (``x:<reason>``), or ``…`` for a run still waiting.

The clock is a ``ShiftedClock`` (``SPOTZEE_CLOCK_SHIFT_FILE``) read by the API process and by
every Kafka worker: ``advance`` moves the time of the whole installation, so a one-hour delay,
a 09:00 weekday wait or a one-day balancer period pass in a second of test time.

Between them the scenarios cover every step type (send, delay by duration / time of day /
date, gate, experiment, both balancers, update, event, exit, link, wait_for_event with both
branches), every trigger (event with filters, segment entered and exited, scheduled, API) and
every entrance rule (never, after_exit, concurrent, max_entries, cooldown, exit on an event, exit
on leaving a segment), plus pausing a live journey. Events and entries follow a publish at once,
with no pause: a publish is ordered before them in every partition (``JourneyBarrier``).
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any
from zoneinfo import ZoneInfo

import pytest

from spotzee.streams.interface import ShiftedClock
from tests.conftest import RUNTIMES
from tests.integration.test_catalogue import WELCOME_EMAIL
from tests.support import Stack, running_stack, wait_until

Body = dict[str, Any]
Refs = dict[str, str]  # journey / segment / template aliases -> ids


@dataclass
class Scenario:
    name: str
    journeys: dict[str, Callable[[Refs], Body]]  # alias -> body (refs: ids of what exists so far)
    script: list[tuple[Any, ...]]
    expect: dict[tuple[str, str], list[list[str]]]  # (journey alias, contact) -> runs
    segments: dict[str, Body] = field(default_factory=dict)
    check: Callable[[Stack, Refs, Callable[[str], str]], None] | None = None


# -- the table -------------------------------------------------------------------------------------

HOUR = timedelta(hours=1)
DAY = timedelta(days=1)


def welcome(refs: Refs) -> Body:
    return {
        "name": "Welcome",
        "trigger": {"type": "event", "event": "signed_up", "where": [{"path": "source", "op": "eq", "value": "web"}]},
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
            "mail": {"type": "send", "channel": "email", "template_id": refs["tpl"], "next": "done"},
            "done": {"type": "exit"},
        },
    }


def onboarding(refs: Refs) -> Body:
    return {
        "name": "Onboarding",
        "trigger": {"type": "api"},
        "entrance": {"reentry": "after_exit"},
        "exit_when": [{"type": "event", "event": "account_closed"}],
        "start": "mark",
        "steps": {
            "mark": {
                "type": "update",
                "set": {"stage": "{{ event.properties.stage }}"},
                "unset": ["old"],
                "next": "wait",
            },
            "wait": {
                "type": "wait_for_event",
                "event": "activated",
                "where": [{"path": "plan", "op": "in", "value": ["pro", "team"]}],
                "within": {"value": 2, "unit": "day"},
                "yes": "celebrate",
                "timeout": "nudge",
            },
            "celebrate": {
                "type": "event",
                "name": "celebrated",
                "properties": {"plan": "{{ journey.wait.properties.plan }}", "stage": "{{ contact.stage }}"},
                "next": "done",
            },
            "nudge": {"type": "update", "set": {"nudged": True}, "next": "done"},
            "done": {"type": "exit"},
        },
    }


def timed(refs: Refs) -> Body:
    return {
        "name": "Timed",
        "trigger": {"type": "event", "event": "trial_started"},
        "start": "morning",
        "steps": {
            "morning": {
                "type": "delay",
                "until_time": {"time": "09:00", "weekdays": ["mon", "tue", "wed", "thu", "fri"]},
                "next": "renewal",
            },
            "renewal": {
                "type": "delay",
                "until_date": {"source": "contact", "path": "renews_at", "offset": {"value": -1, "unit": "day"}},
                "next": "expiry",
            },
            "expiry": {"type": "delay", "until_date": {"source": "event", "path": "expires"}, "next": "done"},
            "done": {"type": "exit"},
        },
    }


def split(refs: Refs) -> Body:
    return {
        "name": "Split",
        "trigger": {"type": "api"},
        "entrance": {"reentry": "concurrent"},
        "start": "ab",
        "steps": {
            "ab": {
                "type": "experiment",
                "variants": [{"name": "A", "weight": 1, "next": "rr"}, {"name": "B", "weight": 1, "next": "rr"}],
            },
            "rr": {"type": "balancer", "mode": "round_robin", "paths": ["left", "right"]},
            "left": {"type": "exit"},
            "right": {"type": "exit"},
        },
    }


def limited(refs: Refs) -> Body:
    return {
        "name": "Limited",
        "trigger": {"type": "api"},
        "entrance": {"reentry": "concurrent"},
        "start": "cap",
        "steps": {
            "cap": {
                "type": "balancer",
                "mode": "limited",
                "paths": [{"next": "done", "limit": 1, "period": {"value": 1, "unit": "day"}}],
            },
            "done": {"type": "exit"},
        },
    }


def linking(refs: Refs) -> Body:
    return {
        "name": "Linking",
        "trigger": {"type": "event", "event": "ordered"},
        "start": "go",
        "steps": {"go": {"type": "link", "journey_id": refs["linked"], "delay": {"value": 1, "unit": "hour"}}},
    }


def linked(refs: Refs) -> Body:
    return {
        "name": "Linked",
        "trigger": {"type": "api"},
        "start": "note",
        "steps": {
            "note": {"type": "update", "set": {"last_order": "{{ event.properties.sku }}"}, "next": "done"},
            "done": {"type": "exit"},
        },
    }


def waiting(name: str, trigger: Body, **extra: Any) -> Callable[[Refs], Body]:
    def body(refs: Refs) -> Body:
        resolved = {k: refs.get(v, v) if k == "segment_id" else v for k, v in trigger.items()}
        exits = [
            {**e, "segment_id": refs[e["segment_id"]]} if "segment_id" in e else e for e in extra.get("exit_when", [])
        ]
        return {
            "name": name,
            "trigger": resolved,
            "entrance": extra.get("entrance", {"reentry": "never"}),
            "exit_when": exits,
            "start": "wait",
            "steps": {
                "wait": {"type": "delay", "duration": {"value": 1, "unit": "day"}, "next": "done"},
                "done": {"type": "exit"},
            },
        }

    return body


def scheduled(refs: Refs) -> Body:
    start = datetime.fromisoformat(refs["now"]).replace(microsecond=0)
    return {
        "name": "Daily digest",
        "entrance": {"reentry": "after_exit"},  # once per occurrence
        "trigger": {
            "type": "scheduled",
            "rrule": f"DTSTART:{start:%Y%m%dT%H%M%SZ}\nRRULE:FREQ=DAILY;COUNT=3",
            "audience": {"list_id": refs["list"]},
        },
        "start": "done",
        "steps": {"done": {"type": "exit"}},
    }


def _check_onboarding(stack: Stack, refs: Refs, c: Callable[[str], str]) -> None:
    traits = stack.project.get(f"/api/v1/contacts/{c('a')}").json()["traits"]
    assert traits["stage"] == "trial"
    assert "old" not in traits
    assert "nudged" not in traits
    assert stack.project.get(f"/api/v1/contacts/{c('b')}").json()["traits"]["nudged"] is True
    rows = stack.sql(f"SELECT properties FROM events WHERE contact_id = '{c('a')}' AND event = 'celebrated'")
    assert [json.loads(r[0]) for r in rows] == [{"plan": "pro", "stage": "trial"}]


def _check_timed(stack: Stack, refs: Refs, c: Callable[[str], str]) -> None:
    waits = stack.sql(
        "SELECT step_id, detail FROM journey_steps FINAL "
        f"WHERE journey_id = '{refs['timed']}' AND contact_id = '{c('t')}' AND kind = 'waiting' ORDER BY at, seq"
    )
    wake = {step: datetime.fromisoformat(json.loads(detail)["wake_at"]) for step, detail in waits}
    local = wake["morning"].astimezone(ZoneInfo("Asia/Tokyo"))
    assert (local.hour, local.minute) == (9, 0), local
    assert local.weekday() < 5, local
    renews_at = datetime.fromisoformat(stack.project.get(f"/api/v1/contacts/{c('t')}").json()["traits"]["renews_at"])
    assert wake["renewal"] == renews_at - DAY
    assert wake["expiry"] == datetime(2099, 1, 1, tzinfo=UTC)  # still waiting: the event's date


def _check_split(stack: Stack, refs: Refs, c: Callable[[str], str]) -> None:
    variants = stack.sql(
        "SELECT contact_id, run_id, detail FROM journey_steps FINAL "
        f"WHERE journey_id = '{refs['split']}' AND kind = 'variant'"
    )
    assert len(variants) == 6  # one draw per run
    per_contact: dict[str, set[str]] = {}
    for contact, _, detail in variants:
        per_contact.setdefault(contact, set()).add(json.loads(detail)["variant"])
    assert all(len(names) == 1 for names in per_contact.values()), per_contact  # stable per contact


def _check_linked(stack: Stack, refs: Refs, c: Callable[[str], str]) -> None:
    assert stack.project.get(f"/api/v1/contacts/{c('o')}").json()["traits"]["last_order"] == "sku-9"


SCENARIOS = [
    Scenario(
        "event_trigger_delay_gate_send_exit_never",
        {"welcome": welcome},
        [
            ("identify", "ann", {"plan": "free"}),
            ("identify", "bob", {"plan": "pro"}),
            ("identify", "cat", {"plan": "free"}),
            ("track", "ann", "signed_up", {"source": "web"}),
            ("track", "ann", "signed_up", {"source": "web"}),  # reentry never: one run
            ("track", "bob", "signed_up", {"source": "web"}),
            ("track", "cat", "signed_up", {"source": "test"}),  # filtered out
            ("expect", "welcome", "ann", [["wait", "…"]]),
            ("advance", 30 * timedelta(minutes=1)),
            ("expect", "welcome", "ann", [["wait", "…"]]),  # half an hour: still waiting
            ("advance", 31 * timedelta(minutes=1)),
        ],
        {
            ("welcome", "ann"): [["wait", "check", "mail", "done", "x:exit_step"]],
            ("welcome", "bob"): [["wait", "check", "done", "x:exit_step"]],
            ("welcome", "cat"): [],
        },
    ),
    Scenario(
        "api_trigger_update_wait_for_event_event_after_exit_exit_on_event",
        {"onboarding": onboarding},
        [
            ("identify", "a", {"old": 1}),
            ("enter", "onboarding", ["a", "b", "c"], {"stage": "trial"}, "k1"),
            ("enter", "onboarding", ["a"], {"stage": "other"}, "k1"),  # replay of k1: nothing new
            ("track", "a", "activated", {"plan": "free"}),  # filtered out
            ("track", "a", "activated", {"plan": "pro"}),
            ("track", "c", "account_closed", {}),
            ("advance", 2 * DAY + HOUR),
            ("enter", "onboarding", ["a"], {"stage": "trial"}, "k2"),  # after_exit: enters again
        ],
        {
            ("onboarding", "a"): [
                ["mark", "wait", "celebrate", "done", "x:exit_step"],
                ["mark", "wait", "…"],
            ],
            ("onboarding", "b"): [["mark", "wait", "nudge", "done", "x:exit_step"]],
            ("onboarding", "c"): [["mark", "wait", "x:event:account_closed"]],
        },
        check=_check_onboarding,
    ),
    Scenario(
        "delay_until_time_in_the_contacts_zone_and_until_dates",
        {"timed": timed},
        [
            ("identify", "t", {"timezone": "Asia/Tokyo", "renews_at": "+10d"}),
            ("track", "t", "trial_started", {"expires": "2099-01-01T00:00:00Z"}),
            ("expect", "timed", "t", [["morning", "…"]]),
            ("advance", 4 * DAY),  # past the next weekday 09:00 in Tokyo
            ("expect", "timed", "t", [["morning", "renewal", "…"]]),
            ("advance", 6 * DAY),  # renews_at - 1 day has passed
            ("expect", "timed", "t", [["morning", "renewal", "expiry", "…"]]),
        ],
        {("timed", "t"): [["morning", "renewal", "expiry", "…"]]},
        check=_check_timed,
    ),
    Scenario(
        "experiment_round_robin_concurrent",
        {"split": split},
        [
            ("enter", "split", ["e1"], {}, "r1"),
            ("settle",),
            ("enter", "split", ["e1"], {}, "r2"),
            ("settle",),
            ("enter", "split", ["e1"], {}, "r3"),
            ("settle",),
            ("enter", "split", ["e2", "e3", "e4"], {}, "r4"),
        ],
        {
            # The n-th run through the balancer takes paths[n mod 2] (counters are per partition on
            # Kafka: one contact's runs always share one).
            ("split", "e1"): [
                ["ab", "rr", "left", "x:exit_step"],
                ["ab", "rr", "right", "x:exit_step"],
                ["ab", "rr", "left", "x:exit_step"],
            ],
            **{("split", e): [["ab", "rr", "*", "x:exit_step"]] for e in ("e2", "e3", "e4")},
        },
        check=_check_split,
    ),
    Scenario(
        "limited_balancer_overflow_waits_for_the_next_period",
        {"limited": limited},
        [
            ("enter", "limited", ["l"], {}, "q1"),
            ("settle",),
            ("enter", "limited", ["l"], {}, "q2"),
            ("settle",),
            ("enter", "limited", ["l"], {}, "q3"),
            ("expect", "limited", "l", [["cap", "done", "x:exit_step"], ["cap", "…"], ["cap", "…"]]),
            ("advance", DAY),
            ("expect", "limited", "l", [["cap", "done", "x:exit_step"], ["cap", "done", "x:exit_step"], ["cap", "…"]]),
            ("advance", DAY),
        ],
        {("limited", "l"): [["cap", "done", "x:exit_step"]] * 3},
    ),
    Scenario(
        "link_with_a_delay_carries_the_event",
        {"linked": linked, "linking": linking},
        [
            ("track", "o", "ordered", {"sku": "sku-9"}),
            ("expect", "linked", "o", []),
            ("advance", HOUR + timedelta(minutes=1)),
        ],
        {("linking", "o"): [["go", "x:link"]], ("linked", "o"): [["note", "done", "x:exit_step"]]},
        check=_check_linked,
    ),
    Scenario(
        "segment_triggers_and_exit_on_leaving_a_segment",
        {
            "on_enter": waiting("VIP welcome", {"type": "segment", "segment_id": "vip", "on": "entered"}),
            "on_exit": waiting("VIP goodbye", {"type": "segment", "segment_id": "vip", "on": "exited"}),
            "browsing": waiting(
                "Browse",
                {"type": "event", "event": "browsed"},
                exit_when=[{"type": "segment_exited", "segment_id": "vip"}],
            ),
        },
        [
            ("identify", "g", {"tier": "gold"}),
            ("identify", "s", {"tier": "silver"}),
            ("track", "g", "browsed", {}),
            ("track", "s", "browsed", {}),
            ("settle",),
            ("identify", "g", {"tier": "silver"}),
        ],
        {
            ("on_enter", "g"): [["wait", "…"]],
            ("on_exit", "g"): [["wait", "…"]],
            ("browsing", "g"): [["wait", "x:segment_exited:<vip>"]],
            ("on_enter", "s"): [],
            ("on_exit", "s"): [],
            ("browsing", "s"): [["wait", "…"]],
        },
        segments={"vip": {"name": "VIP", "rule": {"type": "attribute", "path": "tier", "op": "eq", "value": "gold"}}},
    ),
    Scenario(
        "max_entries_and_cooldown",
        {
            "capped": waiting(
                "Capped", {"type": "event", "event": "ping"}, entrance={"reentry": "after_exit", "max_entries": 2}
            ),
            "cooled": waiting(
                "Cooled",
                {"type": "event", "event": "pong"},
                entrance={"reentry": "concurrent", "cooldown": {"value": 2, "unit": "day"}},
            ),
        },
        [
            ("track", "r", "ping", {}),
            ("track", "r", "ping", {}),  # refused: a run is going
            ("track", "r", "pong", {}),
            ("track", "r", "pong", {}),  # refused: cooldown
            ("advance", DAY + HOUR),
            ("track", "r", "ping", {}),  # second entry
            ("track", "r", "pong", {}),  # still cooling down (1 day of 2)
            ("advance", DAY + HOUR),
            ("track", "r", "ping", {}),  # refused: max_entries 2
            ("track", "r", "pong", {}),  # cooldown over: enters
        ],
        {
            ("capped", "r"): [["wait", "done", "x:exit_step"], ["wait", "done", "x:exit_step"]],
            ("cooled", "r"): [["wait", "done", "x:exit_step"], ["wait", "…"]],
        },
    ),
    Scenario(
        "pausing_holds_runs_until_published_again",
        {"held": waiting("Held", {"type": "event", "event": "joined"})},
        [
            ("track", "p", "joined", {}),
            ("settle",),
            ("move", "held", "pause"),
            ("advance", DAY + HOUR),
            ("expect", "held", "p", [["wait", "…"]]),  # held, not moved on
            ("move", "held", "publish"),
            ("advance", 2 * timedelta(minutes=1)),
        ],
        {("held", "p"): [["wait", "done", "x:exit_step"]]},
    ),
    Scenario(
        "scheduled_trigger_enters_the_audience_once_per_occurrence",
        {"digest": scheduled},
        [
            ("advance", DAY + timedelta(minutes=1)),
            ("expect", "digest", "m1", [["done", "x:exit_step"]]),
            ("advance", DAY),
        ],
        {
            ("digest", "m1"): [["done", "x:exit_step"]] * 2,
            ("digest", "m2"): [["done", "x:exit_step"]] * 2,
            ("digest", "n"): [],
        },
    ),
]


# -- the runner ------------------------------------------------------------------------------------


@pytest.fixture(scope="module", params=RUNTIMES)
def clocked(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Stack, Path]]:
    runtime: str = request.param
    bootstrap = request.getfixturevalue("kafka_bootstrap") if runtime == "kafka" else None
    root = tmp_path_factory.mktemp(f"scenarios-{runtime}")
    shift = root / "clock-shift"
    shift.write_text("0")
    with running_stack(root / "data", runtime=runtime, kafka_bootstrap=bootstrap, clock_shift_file=shift) as stack:
        yield stack, shift


def runs(stack: Stack, journey_id: str, contact: str) -> list[list[str]]:
    """Each run's entered steps in order, then ``x:<reason>`` if it ended or ``…`` if it waits."""
    rows = stack.sql(
        "SELECT run_id, step_id, kind, detail FROM journey_steps FINAL "
        f"WHERE journey_id = '{journey_id}' AND contact_id = '{contact}' "
        "AND kind IN ('entered', 'exited') ORDER BY at, seq"
    )
    paths: dict[str, list[str]] = {}
    for run_id, step_id, kind, detail in rows:
        path = paths.setdefault(run_id, [])
        path.append(step_id if kind == "entered" else f"x:{json.loads(detail)['reason']}")
    out = [path if path[-1].startswith("x:") else [*path, "…"] for path in paths.values()]
    return sorted(out, key=lambda p: (p[-1] == "…", p))  # ended runs first, then in order


def _matches(actual: list[list[str]], expected: list[list[str]]) -> bool:
    expected = sorted(expected, key=lambda p: (p[-1] == "…", p))
    if len(actual) != len(expected):
        return False
    if any("*" in path for path in expected):  # a wildcard step: compare as multisets of shapes
        return sorted(len(p) for p in actual) == sorted(len(p) for p in expected)
    return actual == expected


def wait_for_runs(stack: Stack, journey_id: str, contact: str, expected: list[list[str]]) -> None:
    last: list[list[list[str]]] = [[]]

    def done() -> bool:
        stack.settle()
        last[0] = runs(stack, journey_id, contact)
        return _matches(last[0], expected)

    try:
        wait_until(done, timeout=30, interval=0.3)
    except AssertionError as exc:
        raise AssertionError(f"{contact} in {journey_id}: {last[0]} != {expected}") from exc


def _ready(stack: Stack, segment_id: str) -> Callable[[], bool]:
    return lambda: bool(stack.project.get(f"/api/v1/segments/{segment_id}").json()["status"] == "ready")


@pytest.mark.parametrize("scenario", SCENARIOS, ids=[s.name for s in SCENARIOS])
def test_journey_scenario(clocked: tuple[Stack, Path], scenario: Scenario) -> None:
    stack, shift = clocked
    tag = f"{SCENARIOS.index(scenario)}"

    def c(name: str) -> str:  # contacts are namespaced per scenario: the stack is shared
        return f"{name}-{tag}"

    def now() -> datetime:
        return ShiftedClock(shift).now()

    refs: Refs = {"now": now().isoformat()}

    def resolve(paths: list[list[str]]) -> list[list[str]]:  # "<alias>" in a path: that object's id
        out = []
        for path in paths:
            resolved = path
            for alias, ident in refs.items():
                resolved = [p.replace(f"<{alias}>", ident) for p in resolved]
            out.append(resolved)
        return out

    project = stack.project
    refs["tpl"] = project.post("/api/v1/templates", json=WELCOME_EMAIL).json()["id"]
    for alias, segment in scenario.segments.items():
        created = project.post("/api/v1/segments", json=segment)
        assert created.status_code == 201, created.text
        refs[alias] = created.json()["id"]
        wait_until(_ready(stack, refs[alias]), timeout=60)
    if scenario.name.startswith("scheduled"):
        listed = project.post("/api/v1/lists", json={"name": f"digest {tag}"})
        assert listed.status_code == 201, listed.text
        refs["list"] = listed.json()["id"]
        added = project.post(f"/api/v1/lists/{refs['list']}/members", json={"ids": [c("m1"), c("m2")]})
        assert added.status_code in (200, 202), added.text
        stack.ingest.post("/v1/identify", json={"userId": c("n"), "traits": {}})
        stack.settle()
    for alias, build in scenario.journeys.items():
        created = project.post("/api/v1/journeys", json=build(refs))
        assert created.status_code == 201, created.text
        refs[alias] = created.json()["id"]
        published = project.post(f"/api/v1/journeys/{refs[alias]}/publish")
        assert published.status_code == 200, published.text

    for step in scenario.script:
        action, *args = step
        if action == "identify":
            traits = {
                k: (now() + timedelta(days=int(v[1:-1]))).isoformat() if str(v).startswith("+") else v
                for k, v in args[1].items()
            }
            assert stack.ingest.post("/v1/identify", json={"userId": c(args[0]), "traits": traits}).status_code == 200
        elif action == "track":
            body = {"userId": c(args[0]), "event": args[1], "properties": args[2]}
            assert stack.ingest.post("/v1/track", json=body).status_code == 200
        elif action == "enter":
            alias, ids, payload, key = args
            entered = project.post(
                f"/api/v1/journeys/{refs[alias]}/enter",
                json={"ids": [c(i) for i in ids], "payload": payload, "idempotency_key": f"{key}-{tag}"},
            )
            assert entered.status_code == 202, entered.text
        elif action == "advance":
            stack.settle()
            ShiftedClock.shift(shift, args[0])
            time.sleep(0.6)  # every process re-reads the shift; timers are polled every 0.25 s
            stack.settle()
        elif action == "settle":
            stack.settle()
        elif action == "move":
            moved = project.post(f"/api/v1/journeys/{refs[args[0]]}/{args[1]}")
            assert moved.status_code == 200, moved.text
        elif action == "expect":
            wait_for_runs(stack, refs[args[0]], c(args[1]), resolve(args[2]))
        else:
            raise AssertionError(f"unknown action {action}")

    for (alias, contact), expected in scenario.expect.items():
        wait_for_runs(stack, refs[alias], c(contact), resolve(expected))
    if scenario.check is not None:
        scenario.check(stack, refs, c)
    for alias in scenario.journeys:  # leave nothing live for the next scenario
        project.post(f"/api/v1/journeys/{refs[alias]}/archive")
