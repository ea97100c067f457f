"""Issue 9, classes 5 and 7: what the public write key sends can never make state unreadable.

Trait keys with many dotted segments, deep payloads, timestamps out of range and huge numeric ids
are refused at ingestion (400 with the path) or kept exactly; a contact stays readable, patchable
and erasable whatever was accepted.
"""

from __future__ import annotations

from typing import Any

import pytest

from spotzee.domain.traits import MAX_TRAIT_DEPTH, MAX_TRAIT_KEY_LENGTH
from spotzee.schemas.events import MAX_EVENT_DEPTH
from tests.support import Stack


def nested(levels: int, leaf: Any = 1) -> Any:
    value = leaf
    for _ in range(levels):
        value = {"k": value}
    return value


def refused(stack: Stack, path: str, body: dict[str, Any]) -> list[str]:
    before = stack.log_size()
    response = stack.ingest.post(path, json=body)
    assert response.status_code == 400, response.text
    assert stack.log_size() == before, "a refused request reached the log"
    return [d["path"] for d in response.json()["error"]["details"]]


def test_dotted_trait_segments_count_against_the_depth_limit(shared_stack: Stack) -> None:
    deep_key = ".".join(["a"] * 210)
    paths = refused(shared_stack, "/v1/identify", {"userId": "dotted", "traits": {deep_key: 1}})
    assert paths[0].startswith("traits.a.a"), paths
    # the same depth split between dots and nesting is counted the same way
    half = ".".join(["b"] * (MAX_TRAIT_DEPTH // 2 + 1))
    refused(shared_stack, "/v1/identify", {"userId": "dotted", "traits": {half: nested(MAX_TRAIT_DEPTH // 2)}})
    # exactly at the limit is fine
    ok = ".".join(["c"] * MAX_TRAIT_DEPTH)
    assert shared_stack.ingest.post("/v1/identify", json={"userId": "dotted", "traits": {ok: 1}}).status_code == 200


def test_trait_keys_have_a_length_limit(shared_stack: Stack) -> None:
    long_key = "x" * (MAX_TRAIT_KEY_LENGTH + 1)
    paths = refused(shared_stack, "/v1/identify", {"userId": "long", "traits": {long_key: 1}})
    assert paths[0].startswith("traits.xxx"), paths
    patch = shared_stack.project.patch("/api/v1/contacts/dotted", json={"traits": {long_key: 1}})
    assert patch.status_code in (400, 404), patch.text


def test_a_contact_at_every_limit_stays_readable_patchable_and_erasable(shared_stack: Stack) -> None:
    key = ".".join(["d"] * MAX_TRAIT_DEPTH)
    traits = {key: 1, "n": nested(MAX_TRAIT_DEPTH - 1), "y" * MAX_TRAIT_KEY_LENGTH: "long"}
    assert shared_stack.ingest.post("/v1/identify", json={"userId": "edge", "traits": traits}).status_code == 200
    shared_stack.ingest.post(
        "/v1/track", json={"userId": "edge", "event": "e", "properties": nested(MAX_EVENT_DEPTH - 2)}
    )
    shared_stack.settle()
    assert shared_stack.project.get("/api/v1/contacts/edge").status_code == 200
    assert shared_stack.project.patch("/api/v1/contacts/edge", json={"traits": {"plan": "pro"}}).status_code == 200
    shared_stack.ingest.post("/v1/track", json={"userId": "edge", "event": "later"})
    shared_stack.settle()
    contact = shared_stack.project.get("/api/v1/contacts/edge").json()
    assert "later" in contact["events"], "an event after the deep identify was dropped"
    assert shared_stack.scalar("SELECT count() FROM dead_letters") == 0
    assert shared_stack.project.delete("/api/v1/contacts/edge").status_code == 202


@pytest.mark.parametrize("field", ["properties", "context", "integrations", "traits"])
def test_payloads_deeper_than_the_limit_are_refused_with_their_path(shared_stack: Stack, field: str) -> None:
    path = "/v1/identify" if field == "traits" else "/v1/track"
    body: dict[str, Any] = {"userId": "deep", "event": "e", field: nested(MAX_EVENT_DEPTH)}
    paths = refused(shared_stack, path, body)
    assert paths[0].startswith(f"{field}.k.k"), paths
    # in a batch, the path names the event
    batch = {"batch": [{"type": "track", "userId": "deep", "event": "e", "properties": {"x": nested(40)}}]}
    assert refused(shared_stack, "/v1/batch", batch)[0].startswith("batch[0].properties.x.k")
    # deeper than the JSON reader takes at all: still a clean 400
    text = '{"batch": [{"type": "track", "userId": "deep", "event": "e", "properties": ' + "[" * 300 + "]" * 300
    response = shared_stack.ingest.post("/v1/batch", content=text + "}]}")
    assert response.status_code == 400, response.text


def test_nesting_just_under_the_json_readers_limit_is_refused_not_dead_lettered(shared_stack: Stack) -> None:
    for levels in (MAX_EVENT_DEPTH, 198, 253):
        refused(shared_stack, "/v1/track", {"userId": "deep", "event": "e", "properties": nested(levels)})
    shared_stack.settle()
    assert shared_stack.scalar("SELECT count() FROM dead_letters") == 0


@pytest.mark.parametrize(
    ("body", "field"),
    [
        ({"timestamp": "0001-01-01T00:00:00+14:00"}, "timestamp"),
        ({"timestamp": "0001-01-01T00:00:00Z"}, "timestamp"),
        ({"timestamp": "9999-12-31T23:59:59-14:00"}, "timestamp"),
        ({"originalTimestamp": "1850-01-01T00:00:00Z"}, "originalTimestamp"),
        ({"sentAt": "9999-01-01T00:00:00Z"}, "sentAt"),
        # each in range, but the clock-skew correction moves the event to the year ~1700
        ({"timestamp": "1901-01-01T00:00:00Z", "sentAt": "2199-01-01T00:00:00Z"}, "sentAt"),
    ],
)
def test_timestamps_out_of_range_are_refused(shared_stack: Stack, body: dict[str, Any], field: str) -> None:
    paths = refused(shared_stack, "/v1/track", {"userId": "when", "event": "e", **body})
    assert field in paths, paths
    batch = {"batch": [{"type": "track", "userId": "when", "event": "e", **body}]}
    assert f"batch[0].{field}" in refused(shared_stack, "/v1/batch", batch)


def test_numeric_user_ids_beyond_64_bits_keep_their_digits(shared_stack: Stack) -> None:
    first, second = 2**64, 2**64 + 1  # the same float
    for user_id in (first, second):
        body = f'{{"userId": {user_id}, "event": "big", "properties": {{"n": {user_id}}}}}'
        response = shared_stack.ingest.post("/v1/track", content=body, headers={"content-type": "application/json"})
        assert response.status_code == 200, response.text
    batch = f'{{"batch": [{{"type": "identify", "userId": {2**70}, "messageId": {2**80}}}]}}'
    assert shared_stack.ingest.post("/v1/batch", content=batch).status_code == 200
    shared_stack.settle()
    for user_id in (first, second, 2**70):
        assert shared_stack.project.get(f"/api/v1/contacts/{user_id}").status_code == 200, user_id
    ids = shared_stack.sql("SELECT DISTINCT contact_id FROM events WHERE event = 'big' ORDER BY contact_id")
    assert ids == [[str(first)], [str(second)]]
    assert shared_stack.scalar(f"SELECT message_id FROM events WHERE contact_id = '{2**70}'") == str(2**80)
