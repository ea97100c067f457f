"""Segments through the API, on both runtimes: table-driven scenarios, backfill, versions, lists.

Scenarios run on the real clock: windows of a few seconds prove that membership flips with
time alone (no event sent while waiting), through the runtime's timers.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest

from tests.support import Stack, wait_until

SEGMENT_WAIT = 60.0


def ago(**delta: float) -> str:
    return (datetime.now(UTC) - timedelta(**delta)).isoformat()


@dataclass(frozen=True)
class Send:
    path: str
    body: dict[str, Any]


@dataclass(frozen=True)
class Expect:
    members: set[str]
    within: float = 20.0  # seconds to reach it (time-driven flips)
    absent_first: bool = False  # check it does NOT hold already (proves the flip is the clock's)


@dataclass(frozen=True)
class Scenario:
    name: str
    rule: dict[str, Any]
    before: list[Send] = field(default_factory=list)  # history, before the segment exists
    steps: list[Send | Expect] = field(default_factory=list)
    transitions: list[tuple[str, str]] | None = None  # (contact, entered|exited) in order, all contacts


def track(user: str, event: str, props: dict[str, Any] | None = None, **extra: Any) -> Send:
    return Send("/v1/track", {"userId": user, "event": event, "properties": props or {}, **extra})


def identify(user: str, **traits: Any) -> Send:
    return Send("/v1/identify", {"userId": user, "traits": traits})


REPEAT_BUYERS_FR = {
    "type": "all",
    "rules": [
        {"type": "attribute", "path": "country", "op": "eq", "value": "FR"},
        {
            "type": "event",
            "name": "purchase",
            "where": [{"path": "amount", "op": "gte", "value": 50}],
            "count": {"op": "gte", "value": 2},
            "within": {"last": 30, "unit": "day"},
        },
        {"type": "none", "rules": [{"type": "event", "name": "refund", "within": {"last": 7, "unit": "day"}}]},
    ],
}

SCENARIOS = [
    Scenario(
        "a new contact enters everyone / sample / has-not-done segments on its first message",
        {
            "type": "all",
            "rules": [
                {"type": "everyone"},
                {"type": "random", "percent": 100, "seed": "all"},
                {"type": "none", "rules": [{"type": "event", "name": "refund"}]},
            ],
        },
        steps=[
            identify("kim", plan="x"),
            Send("/v1/page", {"userId": "lea", "name": "home"}),
            Expect({"kim", "lea"}),
            track("kim", "refund"),
            Expect({"lea"}),
        ],
        transitions=[("kim", "entered"), ("lea", "entered"), ("kim", "exited")],
    ),
    Scenario(
        "repeat buyers in France: history backfilled, live entry, refund exits",
        REPEAT_BUYERS_FR,
        before=[
            identify("anna", country="FR"),
            track("anna", "purchase", {"amount": 80}, timestamp=ago(days=10)),
            track("anna", "purchase", {"amount": 55}, timestamp=ago(days=3)),
            identify("old", country="FR"),
            track("old", "purchase", {"amount": 80}, timestamp=ago(days=40)),  # outside the window
            track("old", "purchase", {"amount": 80}, timestamp=ago(days=2)),
            identify("ben", country="DE"),
            track("ben", "purchase", {"amount": 99}),
            track("ben", "purchase", {"amount": 99}),
        ],
        steps=[
            Expect({"anna"}),
            identify("carl", country="FR"),
            track("carl", "purchase", {"amount": 20}),  # filtered out by where
            track("carl", "purchase", {"amount": 50}),
            Expect({"anna"}),
            track("carl", "purchase", {"amount": 51}),
            Expect({"anna", "carl"}),
            track("anna", "refund"),
            Expect({"carl"}),
            identify("ben", country="FR"),  # attribute change: his purchases count now
            Expect({"ben", "carl"}),
        ],
        transitions=[("anna", "entered"), ("carl", "entered"), ("anna", "exited"), ("ben", "entered")],
    ),
    Scenario(
        "rolling window: in on the event, out when it leaves the window with no new event",
        {"type": "event", "name": "login", "within": {"last": 4, "unit": "second"}},
        steps=[
            track("dora", "login"),
            Expect({"dora"}, within=3),
            Expect(set(), within=20, absent_first=True),
        ],
        transitions=[("dora", "entered"), ("dora", "exited")],
    ),
    Scenario(
        "has not performed: enters once the last login is older than the window",
        {
            "type": "all",
            "rules": [
                {"type": "attribute", "path": "plan", "op": "exists"},
                {
                    "type": "none",
                    "rules": [{"type": "event", "name": "login", "within": {"last": 4, "unit": "second"}}],
                },
            ],
        },
        steps=[
            identify("eve", plan="pro"),
            track("eve", "login"),
            identify("fay", plan="free"),
            Expect({"fay"}),
            Expect({"eve", "fay"}, within=20, absent_first=True),
        ],
        # eve is in for the instant between her identify and her login
        transitions=[("eve", "entered"), ("eve", "exited"), ("fay", "entered"), ("eve", "entered")],
    ),
    Scenario(
        "aggregate over all time and last occurrence",
        {
            "type": "any",
            "rules": [
                {
                    "type": "event",
                    "name": "purchase",
                    "aggregate": {"fn": "sum", "property": "amount", "op": "gte", "value": 100},
                },
                {"type": "event", "name": "visit", "last_occurred": {"op": "more_than", "value": 3, "unit": "second"}},
            ],
        },
        before=[track("gus", "purchase", {"amount": 60})],
        steps=[
            Expect(set()),
            track("gus", "purchase", {"amount": 40}),
            track("hal", "visit"),
            Expect({"gus"}),
            Expect({"gus", "hal"}, within=20, absent_first=True),
        ],
        transitions=[("gus", "entered"), ("hal", "entered")],
    ),
    Scenario(
        "attribute operators on traits: a change in, a change out",
        {
            "type": "all",
            "rules": [
                {"type": "attribute", "path": "plan", "op": "in", "value": ["pro", "team"]},
                {"type": "attribute", "path": "email", "op": "ends_with", "value": "@example.com"},
            ],
        },
        steps=[
            Send("/v1/identify", {"userId": "ivy", "traits": {"plan": "pro", "email": "ivy@example.com"}}),
            Send("/v1/identify", {"userId": "jon", "traits": {"plan": "free", "email": "jon@example.com"}}),
            Expect({"ivy"}),
            identify("jon", plan="team"),
            identify("ivy", plan=None),  # null removes the trait
            Expect({"jon"}),
        ],
        transitions=[("ivy", "entered"), ("jon", "entered"), ("ivy", "exited")],
    ),
]


def create_segment(stack: Stack, rule: dict[str, Any], name: str = "s") -> dict[str, Any]:
    response = stack.project.post("/api/v1/segments", json={"name": name, "rule": rule})
    assert response.status_code == 201, response.text
    body: dict[str, Any] = response.json()
    assert body["status"] in ("building", "ready")
    assert body["id"]
    wait_ready(stack, body["id"])
    return body


def wait_ready(stack: Stack, segment_id: str) -> None:
    wait_until(lambda: stack.project.get(f"/api/v1/segments/{segment_id}").json()["status"] == "ready", SEGMENT_WAIT)


def members(stack: Stack, segment_id: str) -> set[str]:
    found: list[str] = []
    cursor: str | None = None
    while True:
        params: dict[str, Any] = {"limit": 7}
        if cursor:
            params["cursor"] = cursor
        page = stack.project.get(f"/api/v1/segments/{segment_id}/members", params=params).json()
        found.extend(item["id"] for item in page["items"])
        cursor = page["next_cursor"]
        if cursor is None:
            break
    assert len(found) == len(set(found)), "a member listed twice across pages"
    assert found == sorted(found), "pages are in a stable (contact id) order"
    return set(found)


def send(stack: Stack, step: Send) -> None:
    response = stack.ingest.post(step.path, json=step.body)
    assert response.status_code == 200, response.text


def transitions(stack: Stack, segment_id: str) -> list[tuple[str, str]]:
    rows = stack.sql(
        f"SELECT contact_id, change FROM segment_changes FINAL WHERE segment_id = '{segment_id}' ORDER BY at, change_id"
    )
    return [(r[0], r[1]) for r in rows]


@pytest.mark.parametrize("scenario", SCENARIOS, ids=[s.name for s in SCENARIOS])
def test_segment_scenarios(stack: Stack, scenario: Scenario) -> None:
    for step in scenario.before:
        send(stack, step)
    stack.settle()
    segment = create_segment(stack, scenario.rule, scenario.name)
    sid = segment["id"]
    for item in scenario.steps:
        if isinstance(item, Send):
            send(stack, item)
            continue
        if item.absent_first:
            assert members(stack, sid) != item.members, "already flipped: the scenario proves nothing"
        wait_until(lambda: members(stack, sid) == item.members, item.within)  # noqa: B023
        count = stack.project.get(f"/api/v1/segments/{sid}/count").json()
        assert count == {"count": len(item.members), "status": "ready", "version": 1}
    if scenario.transitions is not None:
        stack.settle()
        # Each contact's transitions are ordered; two contacts' are not (on Kafka their partitions are
        # processed concurrently), so they are compared contact by contact.
        expected = by_contact(scenario.transitions)
        wait_until(lambda: by_contact(transitions(stack, sid)) == expected, 20)


def by_contact(changes: list[tuple[str, str]]) -> dict[str, list[str]]:
    out: dict[str, list[str]] = {}
    for contact, change in changes:
        out.setdefault(contact, []).append(change)
    return out


def test_a_contact_lists_its_segments(stack: Stack) -> None:
    stack.ingest.post("/v1/identify", json={"userId": "u1", "traits": {"plan": "pro"}})
    pro = create_segment(stack, {"type": "attribute", "path": "plan", "op": "eq", "value": "pro"}, "Pro")
    everyone = create_segment(stack, {"type": "everyone"}, "Everyone")
    items = stack.project.get("/api/v1/contacts/u1/segments").json()["items"]
    assert sorted((i["id"], i["name"], i["version"]) for i in items) == sorted(
        [(pro["id"], "Pro", 1), (everyone["id"], "Everyone", 1)]
    )
    assert stack.project.get("/api/v1/contacts/nobody/segments").status_code == 404


def test_editing_creates_a_version_and_emits_the_diff(stack: Stack) -> None:
    for user, plan in (("a", "pro"), ("b", "pro"), ("c", "free")):
        stack.ingest.post("/v1/identify", json={"userId": user, "traits": {"plan": plan}})
    stack.ingest.post("/v1/track", json={"userId": "c", "event": "purchase"})
    segment = create_segment(stack, {"type": "attribute", "path": "plan", "op": "eq", "value": "pro"})
    sid = segment["id"]
    assert members(stack, sid) == {"a", "b"}
    edited = stack.project.put(
        f"/api/v1/segments/{sid}",
        json={
            "name": "pro or buyers",
            "rule": {
                "type": "any",
                "rules": [
                    {"type": "event", "name": "purchase"},
                    {"type": "attribute", "path": "plan", "op": "eq", "value": "team"},
                ],
            },
        },
    )
    assert edited.status_code == 200, edited.text
    assert edited.json()["version"] == 2
    wait_ready(stack, sid)
    assert members(stack, sid) == {"c"}
    assert stack.project.get(f"/api/v1/segments/{sid}/count").json() == {"count": 1, "status": "ready", "version": 2}
    stack.settle()
    rows = stack.sql(
        "SELECT contact_id, change, version FROM segment_changes FINAL "
        f"WHERE segment_id = '{sid}' ORDER BY version, contact_id"
    )
    assert rows == [
        ["a", "entered", 1],
        ["b", "entered", 1],
        ["a", "exited", 2],
        ["b", "exited", 2],
        ["c", "entered", 2],
    ]


def test_lists_and_segment_references(stack: Stack) -> None:
    project = stack.project
    created = project.post("/api/v1/lists", json={"name": "VIP"})
    assert created.status_code == 201, created.text
    list_id = created.json()["id"]
    csv = "id,email,plan\nv1,v1@example.com,pro\nv2,not-an-email,pro\n,x@example.com,free\nv3,,free\n"
    result = project.post(f"/api/v1/lists/{list_id}/import", content=csv, headers={"content-type": "text/csv"}).json()
    assert result["accepted"] == 2
    assert result["rejected"] == 2
    assert [(e["row"], e["field"]) for e in result["errors"]] == [(2, "email"), (3, "id")]
    assert project.get("/api/v1/contacts/v1").json()["email"] == "v1@example.com"  # created by the import
    assert project.get("/api/v1/contacts/v2").status_code == 404  # the bad row changed nothing
    json_rows = [{"id": "v4", "plan": "pro"}, {"plan": "no id"}]
    result = project.post(f"/api/v1/lists/{list_id}/import", json=json_rows).json()
    assert (result["accepted"], result["rejected"]) == (1, 1)
    page = project.get(f"/api/v1/lists/{list_id}/members").json()
    assert [i["id"] for i in page["items"]] == ["v1", "v3", "v4"]

    pro = create_segment(stack, {"type": "attribute", "path": "plan", "op": "eq", "value": "pro"}, "pro")
    vip_pro = create_segment(
        stack,
        {"type": "all", "rules": [{"type": "list", "list_id": list_id}, {"type": "segment", "segment_id": pro["id"]}]},
        "vip pro",
    )
    assert members(stack, vip_pro["id"]) == {"v1", "v4"}
    removed = project.post(f"/api/v1/lists/{list_id}/members/remove", json={"ids": ["v1"]})
    assert removed.status_code == 200
    wait_until(lambda: members(stack, vip_pro["id"]) == {"v4"})
    project.post(f"/api/v1/lists/{list_id}/members", json={"ids": ["v1"]})
    stack.ingest.post("/v1/identify", json={"userId": "v4", "traits": {"plan": "free"}})  # leaves pro -> vip pro
    wait_until(lambda: members(stack, vip_pro["id"]) == {"v1"})
    export = project.get(f"/api/v1/lists/{list_id}/export").text.splitlines()
    assert export[0] == "id,since"
    assert [line.split(",")[0] for line in export[1:]] == ["v1", "v3", "v4"]

    refused = project.delete(f"/api/v1/segments/{pro['id']}")
    assert refused.status_code == 409
    assert vip_pro["id"] in refused.json()["error"]["message"]
    assert project.delete(f"/api/v1/lists/{list_id}").status_code == 409  # used by vip pro
    assert project.delete(f"/api/v1/segments/{vip_pro['id']}").status_code == 204
    assert project.get(f"/api/v1/segments/{vip_pro['id']}").status_code == 404
    wait_until(
        lambda: (
            project.get("/api/v1/contacts/v1/segments").json()["items"] != []
            and all(i["id"] != vip_pro["id"] for i in project.get("/api/v1/contacts/v1/segments").json()["items"])
        )
    )
    assert project.delete(f"/api/v1/segments/{pro['id']}").status_code == 204


def test_bad_rules_and_cycles_are_rejected_with_their_path(stack: Stack) -> None:
    project = stack.project
    bad = project.post(
        "/api/v1/segments",
        json={
            "name": "x",
            "rule": {"type": "all", "rules": [{"type": "event", "name": "p", "count": {"op": "most", "value": 1}}]},
        },
    )
    assert bad.status_code == 400
    assert any(
        d["path"].endswith("rules[0].count.op") or "count.op" in d["path"] for d in bad.json()["error"]["details"]
    )
    unknown = project.post(
        "/api/v1/segments", json={"name": "x", "rule": {"type": "segment", "segment_id": "seg_nope"}}
    )
    assert unknown.status_code == 400
    assert "seg_nope" in unknown.json()["error"]["message"]
    a = create_segment(stack, {"type": "everyone"}, "a")
    b = create_segment(stack, {"type": "segment", "segment_id": a["id"]}, "b")
    cycle = project.put(
        f"/api/v1/segments/{a['id']}", json={"name": "a", "rule": {"type": "segment", "segment_id": b["id"]}}
    )
    assert cycle.status_code == 400
    assert "cycle" in cycle.json()["error"]["message"]
    assert project.get(f"/api/v1/segments/{a['id']}").json()["version"] == 1  # nothing changed
    assert project.get("/api/v1/segments/seg_missing").status_code == 404
    assert project.get(f"/api/v1/segments/{a['id']}/members", params={"cursor": "%%%"}).status_code == 400
    assert stack.ingest.get("/api/v1/segments").status_code in (401, 403)  # a write key can't read segments


def test_preview_counts_an_unsaved_rule_over_history(stack: Stack) -> None:
    for i in range(6):
        stack.ingest.post("/v1/track", json={"userId": f"p{i}", "event": "purchase", "properties": {"amount": i * 10}})
    stack.settle()
    rule = {"type": "event", "name": "purchase", "where": [{"path": "amount", "op": "gte", "value": 30}]}
    preview = stack.project.post("/api/v1/segments/preview", json={"rule": rule, "sample": 2}).json()
    assert preview["count"] == 3
    assert preview["contacts_evaluated"] == 6
    assert len(preview["sample"]) == 2
    assert set(preview["sample"]) <= {"p3", "p4", "p5"}
    assert stack.project.get("/api/v1/segments").json()["items"] == []  # nothing saved
