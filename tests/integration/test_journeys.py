"""Journeys running in the contact processor, through the API, on both runtimes.

Delays of a second or two on the real clock prove that runs move on their timers.
"""

from __future__ import annotations

from typing import Any

from tests.integration.test_catalogue import WELCOME_EMAIL, welcome_journey
from tests.support import Stack, wait_until


def publish(stack: Stack, body: dict[str, Any]) -> str:
    created = stack.project.post("/api/v1/journeys", json=body)
    assert created.status_code == 201, created.text
    journey_id: str = created.json()["id"]
    published = stack.project.post(f"/api/v1/journeys/{journey_id}/publish")
    assert published.status_code == 200, published.text
    return journey_id


def steps(stack: Stack, journey_id: str, contact: str) -> list[tuple[str, str]]:
    rows = stack.sql(
        "SELECT step_id, kind FROM journey_steps FINAL "
        f"WHERE journey_id = '{journey_id}' AND contact_id = '{contact}' AND kind IN ('entered', 'exited') "
        "ORDER BY at, seq"
    )
    return [(r[0], r[1]) for r in rows]


def settled_steps(stack: Stack, journey_id: str, contact: str, expected: list[tuple[str, str]]) -> None:
    def done() -> bool:
        stack.settle()
        return steps(stack, journey_id, contact) == expected

    wait_until(done, timeout=30, interval=0.5)


def test_the_welcome_journey_sends_once_to_free_plans_after_its_delay(stack: Stack) -> None:
    template_id = stack.project.post("/api/v1/templates", json=WELCOME_EMAIL).json()["id"]
    body = welcome_journey(template_id)
    body["steps"]["wait"]["duration"] = {"value": 1, "unit": "second"}
    journey_id = publish(stack, body)
    ingest = stack.ingest
    ingest.post("/v1/identify", json={"userId": "ann", "traits": {"plan": "free"}})
    ingest.post("/v1/track", json={"userId": "ann", "event": "signed_up", "messageId": "s1"})
    ingest.post("/v1/track", json={"userId": "ann", "event": "signed_up", "messageId": "s2"})  # reentry: never
    ingest.post("/v1/identify", json={"userId": "bob", "traits": {"plan": "pro"}})
    ingest.post("/v1/track", json={"userId": "bob", "event": "signed_up"})
    stack.settle()
    assert steps(stack, journey_id, "ann") == [("wait", "entered")]  # waiting on its timer
    settled_steps(
        stack,
        journey_id,
        "ann",
        [("wait", "entered"), ("check", "entered"), ("mail", "entered"), ("done", "entered"), ("done", "exited")],
    )
    settled_steps(
        stack, journey_id, "bob", [("wait", "entered"), ("check", "entered"), ("done", "entered"), ("done", "exited")]
    )
    # (the embedded runtime's delivery agent adds a `failed` row: this project has no provider)
    messages = stack.sql("SELECT contact_id, send_id, status, template_id FROM messages FINAL WHERE status = 'queued'")
    assert len(messages) == 1
    assert messages[0][0] == "ann"
    assert messages[0][1].endswith(":mail:1")
    assert messages[0][2:] == ["queued", template_id]


def test_waits_updates_events_exits_and_api_entries(stack: Stack) -> None:
    body = {
        "name": "Onboarding",
        "trigger": {"type": "api"},
        "entrance": {"reentry": "after_exit"},
        "exit_when": [{"type": "event", "event": "account_deleted"}],
        "start": "mark",
        "steps": {
            "mark": {"type": "update", "set": {"stage": "{{ event.properties.stage }}"}, "next": "wait"},
            "wait": {
                "type": "wait_for_event",
                "event": "activated",
                "within": {"value": 2, "unit": "second"},
                "yes": "celebrate",
                "timeout": "nudge",
            },
            "celebrate": {
                "type": "event",
                "name": "celebrated",
                "properties": {"how": "{{ journey.wait.name }}"},
                "next": "done",
            },
            "nudge": {"type": "update", "set": {"nudged": True}, "next": "done"},
            "done": {"type": "exit"},
        },
    }
    journey_id = publish(stack, body)
    project = stack.project
    entered = project.post(
        f"/api/v1/journeys/{journey_id}/enter",
        json={"ids": ["a", "b", "c"], "payload": {"stage": "trial"}, "idempotency_key": "k1"},
    )
    assert entered.status_code == 202, entered.text
    project.post(f"/api/v1/journeys/{journey_id}/enter", json={"ids": ["a"], "idempotency_key": "k1"})  # replay
    stack.settle()
    wait_until(lambda: project.get("/api/v1/contacts/a").json()["traits"].get("stage") == "trial")
    stack.ingest.post("/v1/track", json={"userId": "a", "event": "activated"})
    stack.ingest.post("/v1/track", json={"userId": "c", "event": "account_deleted"})
    wait_until(lambda: project.get("/api/v1/contacts/b").json()["traits"].get("nudged") is True, timeout=20)
    settled_steps(
        stack,
        journey_id,
        "a",
        [("mark", "entered"), ("wait", "entered"), ("celebrate", "entered"), ("done", "entered"), ("done", "exited")],
    )
    settled_steps(stack, journey_id, "c", [("mark", "entered"), ("wait", "entered"), ("wait", "exited")])
    assert "nudged" not in project.get("/api/v1/contacts/a").json()["traits"]
    assert stack.sql("SELECT properties FROM events WHERE contact_id = 'a' AND event = 'celebrated'") == [
        ['{"how":"activated"}']
    ]
    mark = f"FROM journey_steps FINAL WHERE journey_id = '{journey_id}' AND step_id = 'mark' AND kind = 'entered'"
    assert stack.scalar(f"SELECT count() {mark}") == 3
    wrong = project.post(f"/api/v1/journeys/{journey_id}/enter", json={"ids": []})
    assert wrong.status_code == 400


def test_segment_entry_triggers_and_archiving_ends_runs(stack: Stack) -> None:
    segment = stack.project.post(
        "/api/v1/segments",
        json={"name": "pro", "rule": {"type": "attribute", "path": "plan", "op": "eq", "value": "pro"}},
    ).json()
    wait_until(lambda: stack.project.get(f"/api/v1/segments/{segment['id']}").json()["status"] == "ready")
    body = {
        "name": "Pro welcome",
        "trigger": {"type": "segment", "segment_id": segment["id"], "on": "entered"},
        "start": "wait",
        "steps": {
            "wait": {"type": "delay", "duration": {"value": 1, "unit": "hour"}, "next": "done"},
            "done": {"type": "exit"},
        },
    }
    journey_id = publish(stack, body)
    stack.ingest.post("/v1/identify", json={"userId": "pam", "traits": {"plan": "pro"}})
    stack.ingest.post("/v1/identify", json={"userId": "fay", "traits": {"plan": "free"}})
    settled_steps(stack, journey_id, "pam", [("wait", "entered")])
    assert steps(stack, journey_id, "fay") == []
    assert stack.project.post(f"/api/v1/journeys/{journey_id}/archive").status_code == 200
    # Archiving ends the runs in flight at their next input: a new event of the contact.
    stack.ingest.post("/v1/track", json={"userId": "pam", "event": "anything"})
    settled_steps(stack, journey_id, "pam", [("wait", "entered"), ("wait", "exited")])
