"""Every refusal has its status code, a reason with the field path, and stores nothing."""

from __future__ import annotations

import gzip
import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.support import Stack, running_stack


def assert_nothing_stored(stack: Stack, log_before: int) -> None:
    assert stack.log_size() == log_before, "the refused request reached the log"
    stack.settle()
    assert stack.scalar("SELECT count() FROM events") == 0
    assert stack.project.get("/api/v1/contacts/u1").status_code == 404


def error_of(response: httpx.Response) -> dict[str, Any]:
    error: dict[str, Any] = response.json()["error"]
    assert error["message"]
    return error


@pytest.mark.parametrize(
    ("path", "body", "field"),
    [
        ("/v1/track", {"event": "e"}, "userId"),
        ("/v1/track", {"userId": "u1"}, "event"),
        ("/v1/track", {"userId": "u1", "event": "e", "timestamp": "yesterday"}, "timestamp"),
        ("/v1/track", {"userId": "u1", "event": "e", "properties": [1, 2]}, "properties"),
        ("/v1/track", {"userId": "u1", "event": "e", "type": "identify"}, "type"),
        ("/v1/identify", {"userId": "u1", "traits": {"email": "not-an-email"}}, "traits.email"),
        ("/v1/identify", {"userId": "u1", "traits": {"phone": "0612345678"}}, "traits.phone"),
        ("/v1/identify", {"userId": "u1", "traits": {"timezone": "Mars/Olympus"}}, "traits.timezone"),
        ("/v1/identify", {"userId": True}, "userId"),
        ("/v1/alias", {"previousId": "a1"}, "userId"),
        ("/v1/group", {"userId": "u1"}, "groupId"),
        (
            "/v1/batch",
            {"batch": [{"type": "track", "userId": "u1", "event": "ok"}, {"type": "track", "userId": "u1"}]},
            "batch[1].event",
        ),
        ("/v1/batch", {"batch": [{"type": "purchase", "userId": "u1"}]}, "batch[0].type"),
        ("/v1/batch", {"batch": "nope"}, "batch"),
        ("/v1/batch", {"batch": [{"type": "track", "userId": "u1", "event": "e"}] * 2501}, "batch"),
    ],
)
def test_400_names_the_field(stack: Stack, path: str, body: dict[str, Any], field: str) -> None:
    before = stack.log_size()
    response = stack.ingest.post(path, json=body)
    assert response.status_code == 400, response.text
    error = error_of(response)
    assert field in [d["path"] for d in error["details"]], error
    assert_nothing_stored(stack, before)


def test_400_on_malformed_json_and_gzip(stack: Stack) -> None:
    before = stack.log_size()
    assert stack.ingest.post("/v1/track", content=b"{not json").status_code == 400
    assert stack.ingest.post("/v1/track", content=b"[1, 2]").status_code == 400
    bad_gzip = stack.ingest.post("/v1/track", content=b"plain", headers={"content-encoding": "gzip"})
    assert bad_gzip.status_code == 400
    assert "gzip" in error_of(bad_gzip)["message"]
    assert_nothing_stored(stack, before)


def test_401_for_missing_unknown_and_revoked_keys(stack: Stack) -> None:
    before = stack.log_size()
    event = {"userId": "u1", "event": "e"}
    assert stack.client().post("/v1/track", json=event).status_code == 401
    assert stack.client("pk_unknown", basic=True).post("/v1/track", json=event).status_code == 401
    assert stack.client().post("/v1/track", json={**event, "writeKey": "pk_wrong"}).status_code == 401
    keys = stack.admin.get(f"/api/v1/projects/{stack.keys.project_id}/keys").json()
    write_key_id = next(k["id"] for k in keys if k["kind"] == "write")
    assert stack.admin.delete(f"/api/v1/keys/{write_key_id}").status_code == 200
    revoked = stack.ingest.post("/v1/track", json=event)
    assert revoked.status_code == 401
    assert error_of(revoked)["code"] == "unauthorized"
    assert_nothing_stored(stack, before)


def test_403_for_a_secret_key_on_ingestion_and_a_write_key_on_admin(stack: Stack) -> None:
    before = stack.log_size()
    assert (
        stack.client(stack.keys.secret_key, basic=True)
        .post("/v1/track", json={"userId": "u1", "event": "e"})
        .status_code
        == 403
    )
    assert stack.client(stack.keys.write_key).get("/api/v1/contacts/u1").status_code == 403
    assert stack.project.post("/api/v1/sql", json={"query": "SELECT 1"}).status_code == 403
    assert_nothing_stored(stack, before)


def test_413_for_oversized_events_and_batches(stack: Stack) -> None:
    before = stack.log_size()
    big = {"userId": "u1", "event": "e", "properties": {"blob": "x" * 33_000}}
    response = stack.ingest.post("/v1/track", json=big)
    assert response.status_code == 413
    assert "32 KB" in error_of(response)["message"]
    in_batch = stack.ingest.post(
        "/v1/batch", json={"batch": [{"type": "track", "userId": "u1", "event": "ok"}, {**big, "type": "track"}]}
    )
    assert in_batch.status_code == 413
    assert error_of(in_batch)["details"][0]["path"] == "batch[1]"
    events = [{"type": "track", "userId": "u1", "event": "e", "properties": {"pad": "y" * 20_000}} for _ in range(30)]
    too_big = stack.ingest.post("/v1/batch", json={"batch": events})
    assert too_big.status_code == 413
    assert "500 KB" in error_of(too_big)["message"]
    bomb = gzip.compress(json.dumps({"batch": events}).encode())  # small on the wire, 600 KB inflated
    assert len(bomb) < 500 * 1024
    inflated = stack.ingest.post("/v1/batch", content=bomb, headers={"content-encoding": "gzip"})
    assert inflated.status_code == 413
    assert_nothing_stored(stack, before)


@pytest.fixture
def small_stack(tmp_path: Path) -> Iterator[Stack]:
    with running_stack(tmp_path / "data", inbound_max_backlog=5, retry_after_seconds=3) as running:
        yield running


def test_429_with_retry_after_when_the_backlog_is_over_its_bound(small_stack: Stack) -> None:
    stack = small_stack
    stack.services.runtime.pause()
    batch = [{"type": "track", "userId": "u0", "event": "e", "messageId": f"m{i}"} for i in range(5)]
    assert stack.ingest.post("/v1/batch", json={"batch": batch}).status_code == 200
    before = stack.log_size()
    refused = stack.ingest.post("/v1/track", json={"userId": "u1", "event": "e"})
    assert refused.status_code == 429
    assert refused.headers["retry-after"] == "3"
    assert stack.log_size() == before
    stack.services.runtime.resume()
    stack.settle()
    assert stack.scalar("SELECT count() FROM events") == 5
    assert stack.project.get("/api/v1/contacts/u1").status_code == 404
    assert stack.ingest.post("/v1/track", json={"userId": "u1", "event": "e"}).status_code == 200


def test_503_when_the_log_is_unavailable(stack: Stack) -> None:
    before = stack.log_size()
    stack.services.runtime.stop_accepting()
    response = stack.ingest.post("/v1/track", json={"userId": "u1", "event": "e"})
    assert response.status_code == 503
    assert error_of(response)["code"] == "log_unavailable"
    assert stack.client().get("/health").status_code == 503
    assert_nothing_stored(stack, before)


def test_admin_api_rejects_bad_bodies_with_paths(stack: Stack) -> None:
    response = stack.admin.post("/api/v1/projects", json={"name": ""})
    assert response.status_code == 400
    assert error_of(response)["details"][0]["path"] == "name"
    stack.ingest.post("/v1/identify", json={"userId": "u9", "traits": {"plan": "free"}})
    stack.settle()
    patch = stack.project.patch("/api/v1/contacts/u9", json={"phone": "12"})
    assert patch.status_code == 400
    assert error_of(patch)["details"][0]["path"] == "phone"
    assert stack.project.get("/api/v1/contacts/u9").json()["phone"] is None
    assert stack.admin.post("/api/v1/sql", json={}).status_code == 400
