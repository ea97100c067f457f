"""Contacts: identity merges, attribute patches and GDPR erase, through the API."""

from __future__ import annotations

from tests.support import Stack, wait_until


def test_identify_merges_the_anonymous_profile_and_its_history(stack: Stack) -> None:
    ingest = stack.ingest
    ingest.post("/v1/track", json={"anonymousId": "anon-1", "event": "viewed", "messageId": "a"})
    ingest.post("/v1/identify", json={"anonymousId": "anon-1", "traits": {"plan": "free", "email": "old@example.com"}})
    ingest.post("/v1/identify", json={"userId": "u1", "traits": {"email": "u1@example.com"}})
    ingest.post("/v1/identify", json={"userId": "u1", "anonymousId": "anon-1", "messageId": "join"})
    ingest.post("/v1/track", json={"anonymousId": "anon-1", "event": "viewed", "messageId": "b"})
    stack.settle()
    contact = stack.project.get("/api/v1/contacts/u1").json()
    assert contact["anonymous_ids"] == ["anon-1"]
    assert contact["email"] == "u1@example.com"  # the known profile wins
    assert contact["traits"] == {"plan": "free"}  # the anonymous one fills what is missing
    assert contact["events"]["viewed"]["count"] == 2  # before the merge + forwarded after it
    assert {e["message_id"] for e in contact["recent_events"]} == {"a", "b"}
    assert stack.project.get("/api/v1/contacts/anon-1").json()["id"] == "u1"  # merged ids resolve
    resolved = (
        "SELECT message_id, contact_id, recorded_contact_id FROM events_resolved "
        "WHERE event = 'viewed' ORDER BY message_id"
    )
    rows = stack.sql(resolved)
    assert [row[:2] for row in rows] == [["a", "u1"], ["b", "u1"]]
    assert rows[0][2] == "anon-1"
    # "b" was recorded under whichever id owned it when processed: the merge hand-over and "b"
    # travel on different partitions; either way it resolves to u1.
    assert rows[1][2] in ("anon-1", "u1")
    assert stack.sql("SELECT alias_id, contact_id FROM contact_aliases") == [["anon-1", "u1"]]


def test_alias_merges_a_previous_id(stack: Stack) -> None:
    stack.ingest.post("/v1/track", json={"userId": "old-id", "event": "bought", "messageId": "x"})
    stack.ingest.post("/v1/alias", json={"previousId": "old-id", "userId": "new-id"})
    stack.settle()
    contact = stack.project.get("/api/v1/contacts/new-id").json()
    assert contact["events"]["bought"]["count"] == 1
    assert "old-id" in contact["anonymous_ids"]
    assert stack.sql("SELECT contact_id FROM events_resolved WHERE message_id = 'x'") == [["new-id"]]


def test_an_anonymous_id_belongs_to_the_first_contact_it_merged_into(stack: Stack) -> None:
    stack.ingest.post("/v1/track", json={"anonymousId": "device", "event": "e"})
    stack.ingest.post("/v1/identify", json={"userId": "alice", "anonymousId": "device"})
    stack.settle()
    stack.ingest.post("/v1/identify", json={"userId": "bob", "anonymousId": "device"})
    stack.settle()
    assert stack.project.get("/api/v1/contacts/alice").json()["events"]["e"]["count"] == 1
    assert "e" not in stack.project.get("/api/v1/contacts/bob").json()["events"]
    assert stack.project.get("/api/v1/contacts/device").json()["id"] == "alice"
    assert stack.project.get("/api/v1/contacts/bob").json()["anonymous_ids"] == []  # the losing claim is not listed


def test_identify_traits_nested_paths_and_null_removal(stack: Stack) -> None:
    post = stack.ingest.post
    post("/v1/identify", json={"userId": "u1", "traits": {"address": {"city": "Paris", "zip": "75001"}, "plan": "pro"}})
    post(
        "/v1/identify",
        json={"userId": "u1", "traits": {"address.city": "Lyon", "plan": None, "phone": "+33 6 12 34 56 78"}},
    )
    post("/v1/identify", json={"userId": "u1", "traits": {"timezone": "Europe/Paris", "locale": "fr_fr"}})
    stack.settle()
    contact = stack.project.get("/api/v1/contacts/u1").json()
    assert contact["traits"] == {"address": {"city": "Lyon", "zip": "75001"}}
    assert contact["phone"] == "+33612345678"
    assert (contact["timezone"], contact["locale"]) == ("Europe/Paris", "fr-FR")
    changes = stack.sql(
        "SELECT path, old_value, new_value, changed_at FROM contact_changes FINAL "
        "WHERE path = 'traits.address.city' ORDER BY changed_at"
    )
    # changed_at is the processing time: two identifies handled in one batch can share a millisecond.
    assert sorted(row[:3] for row in changes) == sorted(
        [["traits.address.city", "null", '"Paris"'], ["traits.address.city", '"Paris"', '"Lyon"']]
    )
    paris, lyon = sorted(changes, key=lambda row: row[1] != "null")
    assert paris[3] <= lyon[3]


def test_patch_updates_attributes_and_records_the_change(stack: Stack) -> None:
    stack.ingest.post("/v1/identify", json={"userId": "u1", "traits": {"plan": "free"}})
    stack.settle()
    response = stack.project.patch(
        "/api/v1/contacts/u1", json={"email": "NEW@example.com", "traits": {"plan": "pro", "tier": {"level": 2}}}
    )
    assert response.status_code == 200, response.text
    body = response.json()
    assert body["email"] == "NEW@example.com"
    assert body["traits"] == {"plan": "pro", "tier": {"level": 2}}
    assert stack.project.patch("/api/v1/contacts/u1", json={"email": None}).json()["email"] is None
    assert stack.project.patch("/api/v1/contacts/nobody", json={"traits": {}}).status_code == 404
    stack.settle()
    sources = stack.sql("SELECT source, path FROM contact_changes WHERE source = 'api' ORDER BY path")
    assert ["api", "email"] in sources
    assert ["api", "traits.plan"] in sources


def test_erase_removes_state_merged_ids_dedupe_and_history(stack: Stack) -> None:
    stack.ingest.post("/v1/track", json={"anonymousId": "anon", "event": "viewed", "messageId": "m1"})
    stack.ingest.post(
        "/v1/identify",
        json={"userId": "u1", "anonymousId": "anon", "traits": {"email": "u1@example.com"}, "messageId": "m2"},
    )
    stack.ingest.post("/v1/track", json={"userId": "u2", "event": "kept", "messageId": "m3"})
    stack.settle()
    assert stack.scalar("SELECT count() FROM events") == 3
    response = stack.project.delete("/api/v1/contacts/u1")
    assert response.status_code == 202
    assert response.json()["status"] == "erased"
    stack.settle()
    assert stack.project.get("/api/v1/contacts/u1").status_code == 404
    wait_until(lambda: stack.project.get("/api/v1/contacts/anon").status_code == 404)
    stack.settle()
    assert stack.sql("SELECT message_id FROM events") == [["m3"]]
    assert stack.scalar("SELECT count() FROM contact_changes WHERE contact_id IN ('u1', 'anon')") == 0
    assert stack.scalar("SELECT count() FROM contact_aliases") == 0
    # dedupe entries went too: the same messageId is a new event for the new, empty contact
    stack.ingest.post("/v1/track", json={"userId": "u1", "event": "again", "messageId": "m2"})
    stack.settle()
    contact = stack.project.get("/api/v1/contacts/u1").json()
    assert contact["email"] is None
    assert list(contact["events"]) == ["again"]
    assert stack.project.delete("/api/v1/contacts/ghost").status_code == 404
