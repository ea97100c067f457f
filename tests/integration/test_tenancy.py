"""Organisations, projects and keys: bootstrap, isolation, rotation, revocation, audit."""

from __future__ import annotations

import json
import stat
from pathlib import Path

import pytest

from spotzee.errors import SpotzeeError
from spotzee.services.container import Services
from spotzee.settings import Settings
from tests.support import Stack, running_stack, wait_until


def test_bootstrap_writes_keys_json_with_mode_0600(stack: Stack) -> None:
    path = stack.services.settings.data_dir / "keys.json"
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    keys = json.loads(path.read_text())
    assert set(keys) == {"organisation_id", "project_id", "write_key", "secret_key", "admin_key"}
    assert keys["write_key"].startswith("pk_")
    assert keys["secret_key"].startswith("sk_")
    assert keys["admin_key"].startswith("ak_")


def test_keys_are_stored_hashed(stack: Stack) -> None:
    raw = b"".join(value for _, value in stack.services.runtime.scan_definitions(""))
    for key in (stack.keys.write_key, stack.keys.secret_key, stack.keys.admin_key):
        assert key.encode() not in raw


def test_projects_are_isolated(stack: Stack) -> None:
    created = stack.admin.post("/api/v1/projects", json={"name": "Second"})
    assert created.status_code == 201, created.text
    second = created.json()
    assert second["write_key"]["key"].startswith("pk_")
    other_ingest = stack.client(second["write_key"]["key"], basic=True)
    other_admin = stack.client(second["secret_key"]["key"])
    assert other_ingest.post("/v1/track", json={"userId": "shared-id", "event": "in-second"}).status_code == 200
    assert stack.ingest.post("/v1/track", json={"userId": "shared-id", "event": "in-first"}).status_code == 200
    stack.settle()
    assert list(other_admin.get("/api/v1/contacts/shared-id").json()["events"]) == ["in-second"]
    assert list(stack.project.get("/api/v1/contacts/shared-id").json()["events"]) == ["in-first"]
    names = [p["name"] for p in stack.admin.get("/api/v1/projects").json()]
    assert names == ["Default project", "Second"]
    listed = stack.admin.get(f"/api/v1/projects/{second['id']}/keys").json()
    assert [k["kind"] for k in listed] == ["write", "secret"]
    assert all("key" not in k and "hash" not in k for k in listed)
    assert second["write_key"]["key"] not in json.dumps(listed)


def test_rotate_and_revoke_keys_and_read_the_audit(stack: Stack) -> None:
    keys = stack.admin.get(f"/api/v1/projects/{stack.keys.project_id}/keys").json()
    write_id = next(k["id"] for k in keys if k["kind"] == "write")
    rotated = stack.admin.post(f"/api/v1/keys/{write_id}/rotate")
    assert rotated.status_code == 201
    new_key = rotated.json()["key"]
    assert stack.ingest.post("/v1/track", json={"userId": "u", "event": "e"}).status_code == 401
    assert stack.client(new_key, basic=True).post("/v1/track", json={"userId": "u", "event": "e"}).status_code == 200
    extra = stack.admin.post(
        f"/api/v1/projects/{stack.keys.project_id}/keys", json={"kind": "secret", "name": "ci"}
    ).json()
    assert stack.client(extra["key"]).get("/api/v1/contacts/u").status_code in (200, 404)
    assert stack.admin.delete(f"/api/v1/keys/{extra['id']}").json()["revoked_at"] is not None
    assert stack.client(extra["key"]).get("/api/v1/contacts/u").status_code == 401
    stack.settle()
    audit = stack.admin.get("/api/v1/audit").json()["items"]
    actions = [entry["action"] for entry in audit]
    assert actions[:3] == ["key.revoke", "key.create", "key.rotate"]
    rotation = audit[2]
    assert rotation["target"] == write_id
    assert rotation["before"]["revoked_at"] is None
    assert rotation["after"]["revoked"]["revoked_at"] is not None
    assert rotation["actor_key_id"] != "system"
    first_page = stack.admin.get("/api/v1/audit", params={"limit": 2}).json()
    second_page = stack.admin.get("/api/v1/audit", params={"limit": 2, "cursor": first_page["next_cursor"]}).json()
    assert [e["action"] for e in second_page["items"]] == actions[2:4]
    # a secret key reads its own project's audit
    assert all(e["project_id"] == stack.keys.project_id for e in stack.project.get("/api/v1/audit").json()["items"])


def test_definitions_survive_a_restart(tmp_path: Path) -> None:
    data = tmp_path / "data"
    with running_stack(data) as stack:
        created = stack.admin.post("/api/v1/projects", json={"name": "Kept"}).json()
    services = Services.open(Settings(data_dir=data))
    try:
        assert services.tenancy.bootstrap(data) is None  # not re-created
        assert created["id"] in services.tenancy.projects
        assert len(services.tenancy.keys) == 5
    finally:
        services.close()


def test_sql_is_read_only_and_limited(stack: Stack) -> None:
    stack.ingest.post("/v1/track", json={"userId": "u", "event": "e"})
    stack.settle()
    write = stack.admin.post("/api/v1/sql", json={"query": "INSERT INTO events (project_id) VALUES ('x')"})
    assert write.status_code == 400
    assert "only select" in write.json()["error"]["message"].lower()
    drop = stack.admin.post("/api/v1/sql", json={"query": "DROP TABLE events"})
    assert drop.status_code == 400
    assert stack.scalar("SELECT count() FROM events") == 1
    # analysts' refused statements never leave the sink's own session read-only
    assert stack.ingest.post("/v1/track", json={"userId": "u", "event": "after"}).status_code == 200
    stack.settle()
    assert stack.scalar("SELECT count() FROM events") == 2
    wrong = stack.admin.post("/api/v1/sql", json={"query": "SELECT nope FROM nowhere"})
    assert wrong.status_code == 400
    big = stack.admin.post("/api/v1/sql", json={"query": "SELECT arrayJoin(range(1000000)) AS number"}).json()
    assert big["truncated"] is True
    assert len(big["rows"]) == stack.services.settings.sql_max_rows
    assert stack.client("ak_wrong").post("/api/v1/sql", json={"query": "SELECT 1"}).status_code == 401


def test_health_and_metrics(stack: Stack) -> None:
    health = stack.client().get("/health")
    assert health.status_code == 200
    assert health.json()["checks"] == {"log": "ok", "state": "ok", "clickhouse": "ok"}
    stack.ingest.post("/v1/batch", json={"batch": [{"type": "track", "userId": "u", "event": "e"}] * 3})
    stack.ingest.post("/v1/track", json={"event": "no identity"})
    stack.settle()
    wait_until(
        lambda: (
            'spotzee_ingest_requests_total{endpoint="track",status="400"} 1.0' in stack.client().get("/metrics").text
        )
    )
    text = stack.client().get("/metrics").text
    assert 'spotzee_ingest_requests_total{endpoint="batch",status="200"} 1.0' in text
    assert 'spotzee_ingest_events_total{status="accepted"} 3.0' in text
    # the Kafka runtime polls consumer-group lag once a second
    wait_until(lambda: "spotzee_processing_lag_records 0.0" in stack.client().get("/metrics").text)
    wait_until(lambda: "spotzee_sink_lag_records 0.0" in stack.client().get("/metrics").text)
    assert stack.client().get("/openapi.json").json()["info"]["title"] == "Spotzee"


def test_admin_keys_can_be_added_but_the_last_one_is_never_revoked(stack: Stack) -> None:
    (only,) = stack.admin.get("/api/v1/keys").json()
    refused = stack.admin.delete(f"/api/v1/keys/{only['id']}")
    assert refused.status_code == 409
    second = stack.admin.post("/api/v1/keys", json={"name": "ops"})
    assert second.status_code == 201
    assert second.json()["key"].startswith("ak_")
    assert stack.admin.delete(f"/api/v1/keys/{only['id']}").status_code == 200
    assert stack.admin.get("/api/v1/keys").status_code == 401  # the bootstrap key is revoked now
    assert stack.client(second.json()["key"]).get("/api/v1/keys").status_code == 200


def test_project_timezones_are_validated_and_unknown_routes_use_the_error_envelope(stack: Stack) -> None:
    bad = stack.admin.post("/api/v1/projects", json={"name": "X", "timezone": "Mars/Base"})
    assert bad.status_code == 400
    assert bad.json()["error"]["details"][0]["path"] == "timezone"
    missing = stack.client().get("/nope")
    assert missing.status_code == 404
    assert missing.json()["error"]["code"] == "not_found"


def test_contact_ids_with_slashes_and_auth_before_body(stack: Stack) -> None:
    assert stack.ingest.post("/v1/identify", json={"userId": "team/42", "traits": {"a": 1}}).status_code == 200
    stack.settle()
    assert stack.project.get("/api/v1/contacts/team/42").json()["id"] == "team/42"
    bad_key = stack.client("pk_nope", basic=True).post("/v1/track", content=b"{not json")
    assert bad_key.status_code == 401  # the key is checked before the body is parsed


def test_a_data_dir_keeps_its_partition_count(tmp_path: Path) -> None:
    data = tmp_path / "data"
    Services.open(Settings(data_dir=data, partitions=4)).close()
    with pytest.raises(SpotzeeError, match="created with 4 partitions"):
        Services.open(Settings(data_dir=data, partitions=8))
    Services.open(Settings(data_dir=data, partitions=4)).close()
