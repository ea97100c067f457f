"""Push providers (fcm): the service account's private key never reaches an API response, a log line
or a file of the data directory (sealed at rest); a ``base_url`` or ``token_uri`` pointing into the
private network is refused when written (400 naming the field), nothing stored; bad push templates
are refused with the field path, nothing stored."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.security.test_log_redaction import debug_server  # noqa: F401 (a fixture)
from tests.security.test_sms_provider_secrets import PRIVATE
from tests.support import Stack, files_holding, wait_until
from tests.vendors.fcm_server import FcmServer


@pytest.fixture
def fcm() -> Iterator[FcmServer]:
    server = FcmServer(registered={"tok-u1"})
    with server.running():
        yield server


def key_pieces(server: FcmServer) -> list[str]:
    """Distinctive slices of the private key (single lines of its base64: JSON escaping can't hide them)."""
    lines = [line for line in server.private_key_pem.splitlines() if not line.startswith("-----")]
    return [lines[1][:40], lines[len(lines) // 2][:40], lines[-2][:40]]


def fcm_body(server: FcmServer, **config: Any) -> dict[str, Any]:
    values = {"service_account": server.service_account(), "base_url": server.base_url}
    return {"name": "push", "channel": "push", "type": "fcm", "config": {**values, **config}}


def test_the_private_key_never_leaves_through_the_api_or_the_log(
    debug_server: tuple[str, dict[str, str], Path],  # noqa: F811
    fcm: FcmServer,
) -> None:
    base, keys, log_path = debug_server
    pieces = key_pieces(fcm)
    bearer = {"authorization": f"Bearer {keys['secret_key']}"}
    seen: list[str] = []
    with httpx.Client(base_url=base, timeout=30, headers=bearer) as http:
        created = http.post("/api/v1/providers", json=fcm_body(fcm))
        assert created.status_code == 201, created.text
        assert created.json()["config"]["has_private_key"] is True
        provider_id = created.json()["id"]
        seen += [created.text, http.get("/api/v1/providers").text, http.get(f"/api/v1/providers/{provider_id}").text]
        account = {k: v for k, v in fcm.service_account().items() if k != "private_key"}
        kept = http.put(
            f"/api/v1/providers/{provider_id}",
            json={**fcm_body(fcm), "config": {"service_account": account, "base_url": fcm.base_url}},
        )
        assert kept.status_code == 200, kept.text
        assert kept.json()["config"]["has_private_key"] is True
        seen.append(kept.text)
        for bad in (
            fcm_body(fcm, project_id="Not Valid"),
            fcm_body(fcm, token_uri="ftp://x/token"),
            {**fcm_body(fcm), "channel": "sms"},
        ):
            refused = http.post("/api/v1/providers", json=bad)
            assert refused.status_code == 400, refused.text
            seen.append(refused.text)
        template = http.post(
            "/api/v1/templates", json={"name": "t", "channel": "push", "content": {"title": "Hi", "body": "there"}}
        )
        assert template.status_code == 201, template.text
        journey = {
            "name": "push",
            "trigger": {"type": "event", "event": "poked"},
            "entrance": {"reentry": "after_exit"},
            "start": "message",
            "steps": {
                "message": {"type": "send", "channel": "push", "template_id": template.json()["id"], "next": "done"},
                "done": {"type": "exit"},
            },
        }
        made = http.post("/api/v1/journeys", json=journey)
        assert made.status_code == 201, made.text
        assert http.post(f"/api/v1/journeys/{made.json()['id']}/publish").status_code == 200
        with httpx.Client(base_url=base, timeout=30, auth=(keys["write_key"], "")) as ingest:
            context = {"device": {"token": "tok-u1", "type": "android"}}
            ingest.post("/v1/track", json={"userId": "u1", "event": "poked", "context": context})
            wait_until(lambda: len(fcm.accepted) == 1, timeout=60)
        seen.append(http.get(f"/api/v1/providers/{provider_id}").text)
    for text in seen:
        for piece in pieces:
            assert piece not in text, "the private key is in an API response"
    log = log_path.read_text(errors="replace")
    assert len(log) > 200, "the server logged nothing: the test would prove nothing"
    for piece in pieces:
        assert piece not in log, "the private key is in the log"
    data = log_path.parent / "data"
    wait_until(lambda: bool(files_holding(data, fcm.client_email.encode())), timeout=30)
    for piece in pieces:
        assert files_holding(data, piece.encode()) == []
    assert fcm.grants == 1  # the key was used (the assertion verified): the test looked where it could leak


@pytest.mark.parametrize("field", ["base_url", "token_uri"])
def test_fcm_destinations_into_the_private_network_are_refused(shared_stack: Stack, field: str) -> None:
    project = shared_stack.project
    server = FcmServer()  # not started: only its key and account are used
    account = {**server.service_account(), "token_uri": "https://oauth2.googleapis.com/token"}
    good = {"name": "push", "channel": "push", "type": "fcm", "config": {"service_account": account}}
    existing = project.post("/api/v1/providers", json=good)
    assert existing.status_code == 201, existing.text
    provider_id = existing.json()["id"]
    for url in PRIVATE:
        target = url if field == "base_url" else f"{url}/token"
        body = {**good, "config": {**good["config"], field: target}}
        created = project.post("/api/v1/providers", json=body)
        assert created.status_code == 400, (url, created.text)
        details = created.json()["error"]["details"]
        assert [d["path"] for d in details] == [f"config.{field}"], (url, details)
        assert "destination refused" in details[0]["reason"], (url, details)
        updated = project.put(f"/api/v1/providers/{provider_id}", json=body)
        assert updated.status_code == 400, (url, updated.text)
    listed = project.get("/api/v1/providers").json()["items"]
    mine = [p for p in listed if p["type"] == "fcm"]
    assert [(p["id"], p["version"], p["config"]["token_uri"]) for p in mine] == [
        (provider_id, 1, "https://oauth2.googleapis.com/token")
    ]
    assert "PRIVATE KEY" not in json.dumps(listed)
    assert project.delete(f"/api/v1/providers/{provider_id}").status_code == 204


def test_a_bad_push_template_is_refused_with_the_field_path_and_nothing_stored(shared_stack: Stack) -> None:
    project = shared_stack.project
    before = project.get("/api/v1/templates").json()["items"]
    for content, path in (
        ({"body": "b"}, "content.title"),
        ({"title": "t", "body": "b", "badge": -1}, "content.badge"),
        ({"title": "t", "body": "b", "data": {"k": "{{ x "}}, "content.data.k"),
        ({"title": "t", "body": "b", "ttl": 10**9}, "content.ttl"),
    ):
        refused = project.post("/api/v1/templates", json={"name": "p", "channel": "push", "content": content})
        assert refused.status_code == 400, refused.text
        assert path in [d["path"] for d in refused.json()["error"]["details"]], refused.text
    assert project.get("/api/v1/templates").json()["items"] == before
