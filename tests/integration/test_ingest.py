"""Ingestion end to end: Segment-spec calls land once in state and in ClickHouse."""

from __future__ import annotations

import gzip
import json

from tests.support import Stack


def test_track_lands_in_state_and_clickhouse(stack: Stack) -> None:
    response = stack.ingest.post(
        "/v1/track", json={"userId": "u1", "event": "purchase", "properties": {"amount": 42}, "messageId": "m1"}
    )
    assert response.status_code == 200
    assert response.json() == {"success": True}
    stack.settle()
    rows = stack.sql(
        "SELECT message_id, event_type, event, contact_id, JSONExtractInt(properties, 'amount') FROM events"
    )
    assert rows == [["m1", "track", "purchase", "u1", 42]]
    contact = stack.project.get("/api/v1/contacts/u1").json()
    assert contact["events"]["purchase"]["count"] == 1
    assert contact["recent_events"][0]["properties"] == {"amount": 42}


def test_every_call_type_is_accepted(stack: Stack) -> None:
    calls = {
        "track": {"anonymousId": "a1", "event": "Signed Up"},
        "identify": {"userId": "u2", "traits": {"email": "u2@example.com"}},
        "page": {"userId": "u2", "name": "Home", "properties": {"url": "https://example.com"}},
        "screen": {"userId": "u2", "name": "Dashboard"},
        "group": {"userId": "u2", "groupId": "acme", "traits": {"plan": "pro"}},
        "alias": {"userId": "u2", "previousId": "a1"},
    }
    for kind, body in calls.items():
        response = stack.ingest.post(f"/v1/{kind}", json=body)
        assert response.status_code == 200, (kind, response.text)
    stack.settle()
    assert stack.sql("SELECT event_type, count() FROM events GROUP BY event_type ORDER BY event_type") == [
        ["alias", 1],
        ["group", 1],
        ["identify", 1],
        ["page", 1],
        ["screen", 1],
        ["track", 1],
    ]
    contact = stack.project.get("/api/v1/contacts/u2").json()
    assert contact["groups"] == {"acme": {"plan": "pro"}}
    assert set(contact["events"]) == {"page", "screen", "Signed Up"}
    assert contact["anonymous_ids"] == ["a1"]


def test_batch_with_gzip_and_write_key_in_body(stack: Stack) -> None:
    batch = [{"type": "track", "userId": f"u{i % 3}", "event": "view", "messageId": f"g{i}"} for i in range(30)]
    body = gzip.compress(json.dumps({"batch": batch, "writeKey": stack.keys.write_key}).encode())
    response = stack.client().post(
        "/v1/batch", content=body, headers={"content-encoding": "gzip", "content-type": "application/json"}
    )
    assert response.status_code == 200, response.text
    stack.settle()
    assert stack.scalar("SELECT count() FROM events") == 30
    assert stack.project.get("/api/v1/contacts/u0").json()["events"]["view"]["count"] == 10


def test_message_id_is_deduplicated(stack: Stack) -> None:
    for _ in range(3):
        assert (
            stack.ingest.post("/v1/track", json={"userId": "u1", "event": "e", "messageId": "same"}).status_code == 200
        )
    stack.settle()
    assert stack.scalar("SELECT count() FROM events") == 1
    assert stack.project.get("/api/v1/contacts/u1").json()["events"]["e"]["count"] == 1


def test_clock_skew_is_corrected_with_sent_at(stack: Stack) -> None:
    # The device clock is 1 hour ahead: it says it happened at 12:00 and sent at 12:00:10.
    body = {
        "userId": "u1",
        "event": "e",
        "messageId": "skew",
        "timestamp": "2030-01-01T12:00:00Z",
        "sentAt": "2030-01-01T12:00:10Z",
    }
    stack.ingest.post("/v1/track", json=body)
    stack.settle()
    (delay,) = stack.sql("SELECT dateDiff('second', timestamp, received_at) FROM events")[0]
    assert delay == 10


def test_batch_context_applies_to_each_event(stack: Stack) -> None:
    body = {
        "batch": [{"type": "track", "userId": "u1", "event": "e", "messageId": "c1", "context": {"ip": "10.0.0.1"}}],
        "context": {"library": {"name": "test-lib"}, "ip": "127.0.0.1"},
    }
    assert stack.ingest.post("/v1/batch", json=body).status_code == 200
    stack.settle()
    context = json.loads(stack.scalar("SELECT context FROM events"))
    assert context == {"library": {"name": "test-lib"}, "ip": "10.0.0.1"}
