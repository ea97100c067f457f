"""Backfill through ClickHouse on both runtimes, through the API: seeds for the contacts whose
history matches, one sweep per partition for the others, ``progress`` as documented, and contacts
the build never wrote to counting from the empty trackers afterwards."""

from __future__ import annotations

from typing import Any

from tests.integration.test_segments import SEGMENT_WAIT, ago, create_segment, identify, members, send, track
from tests.support import Stack, wait_until


def backfill_causes(stack: Stack, segment_id: str) -> dict[str, str]:
    rows = stack.sql(f"SELECT contact_id, cause FROM segment_changes FINAL WHERE segment_id = '{segment_id}'")
    return {row[0]: row[1] for row in rows}


def test_contacts_with_matching_history_are_seeded_and_the_others_start_empty(stack: Stack) -> None:
    for user, country in (("ann", "FR"), ("bob", "FR"), ("cid", "FR"), ("dan", "DE")):
        send(stack, identify(user, country=country))
    send(stack, track("ann", "purchase", {"amount": 20}, timestamp=ago(days=3)))
    send(stack, track("ann", "purchase", {"amount": 5}, timestamp=ago(days=2)))  # filtered out
    send(stack, track("bob", "purchase", {"amount": 20}, timestamp=ago(days=40)))  # out of the window
    send(stack, track("cid", "view"))
    send(stack, track("dan", "purchase", {"amount": 50}, timestamp=ago(days=1)))  # matches; not in FR
    stack.settle()  # all of it processed (and in ClickHouse) before the segment exists
    rule: dict[str, Any] = {
        "type": "all",
        "rules": [
            {"type": "attribute", "path": "country", "op": "eq", "value": "FR"},
            {
                "type": "event",
                "name": "purchase",
                "where": [{"path": "amount", "op": "gte", "value": 10}],
                "within": {"last": 30, "unit": "day"},
            },
        ],
    }
    segment_id = create_segment(stack, rule)["id"]
    assert members(stack, segment_id) == {"ann"}
    body = stack.project.get(f"/api/v1/segments/{segment_id}").json()
    # ann and dan seeded one by one; bob, cid and everyone else through the partitions' sweeps
    assert body["status"] == "ready"
    partitions = stack.services.settings.partitions
    assert body["progress"] == {"total": 2 + partitions, "done": 2 + partitions}
    # a contact the build never wrote to counts its live purchase from the empty tracker
    send(stack, track("bob", "purchase", {"amount": 30}))
    send(stack, track("cid", "purchase", {"amount": 3}))
    wait_until(lambda: members(stack, segment_id) == {"ann", "bob"}, SEGMENT_WAIT)
    wait_until(lambda: set(backfill_causes(stack, segment_id)) == {"ann", "bob"}, SEGMENT_WAIT)
    causes = backfill_causes(stack, segment_id)
    assert causes["ann"] == "backfill:v1"
    assert causes["bob"].startswith("event:")


def test_rules_that_hold_without_history_and_edits_are_settled_by_the_sweep(stack: Stack) -> None:
    for user, plan in (("eve", "pro"), ("fay", "pro"), ("gil", "free")):
        send(stack, identify(user, plan=plan))
    send(stack, track("fay", "refund", timestamp=ago(days=5)))
    stack.settle()
    never = create_segment(stack, {"type": "none", "rules": [{"type": "event", "name": "refund"}]}, "never")
    assert members(stack, never["id"]) == {"eve", "gil"}
    pro = create_segment(stack, {"type": "attribute", "path": "plan", "op": "eq", "value": "pro"}, "pro")
    assert members(stack, pro["id"]) == {"eve", "fay"}
    body = stack.project.get(f"/api/v1/segments/{pro['id']}").json()
    partitions = stack.services.settings.partitions
    assert body["progress"] == {"total": partitions, "done": partitions}  # no history query, no seed
    edited = stack.project.put(
        f"/api/v1/segments/{pro['id']}",
        json={"name": "pro", "rule": {"type": "attribute", "path": "plan", "op": "in", "value": ["pro", "free"]}},
    )
    assert edited.status_code == 200, edited.text
    wait_until(lambda: stack.project.get(f"/api/v1/segments/{pro['id']}").json()["status"] == "ready", SEGMENT_WAIT)
    assert members(stack, pro["id"]) == {"eve", "fay", "gil"}
    query = f"SELECT contact_id, max(version) FROM segment_changes FINAL WHERE segment_id = '{pro['id']}' GROUP BY 1"
    versions = {row[0]: row[1] for row in stack.sql(query)}
    assert versions == {"eve": 1, "fay": 1, "gil": 2}  # eve and fay stayed members: no new transition
