"""WhatsApp providers (meta_whatsapp): the access token and the app secret never reach an API
response, a log line or a file of the data directory (sealed at rest), and a ``base_url`` pointing
into the private network is refused when written (400 naming ``config.base_url``), nothing stored."""

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
from tests.vendors.meta_whatsapp_server import Approved, MetaWhatsAppServer, meta_error

PHONE_ID = "106540352242922"
ACCESS_TOKEN = "EAAG-secret-token-Zr81pQx"
APP_SECRET = "meta-app-secret-Kd93hWq"
SECRETS = (ACCESS_TOKEN, APP_SECRET)


@pytest.fixture
def meta() -> Iterator[MetaWhatsAppServer]:
    server = MetaWhatsAppServer(
        phone_number_id=PHONE_ID, access_token=ACCESS_TOKEN, templates={"hello_world": Approved(("en_US",))}
    )
    with server.running():
        yield server


def meta_body(base_url: str, **config: Any) -> dict[str, Any]:
    values = {"phone_number_id": PHONE_ID, "access_token": ACCESS_TOKEN, "app_secret": APP_SECRET, "base_url": base_url}
    return {"name": "wa", "channel": "whatsapp", "type": "meta_whatsapp", "config": {**values, **config}}


def assert_no_secret(text: str, where: str) -> None:
    for secret in SECRETS:
        assert secret not in text, f"a secret ({secret[:6]}...) is in {where}"


def test_whatsapp_secrets_never_leave_through_the_api_or_the_log(
    debug_server: tuple[str, dict[str, str], Path],  # noqa: F811
    meta: MetaWhatsAppServer,
) -> None:
    base, keys, log_path = debug_server
    bearer = {"authorization": f"Bearer {keys['secret_key']}"}
    seen: list[str] = []
    with httpx.Client(base_url=base, timeout=30, headers=bearer) as http:
        created = http.post("/api/v1/providers", json=meta_body(meta.base_url))
        assert created.status_code == 201, created.text
        shown = created.json()["config"]
        assert (shown["has_access_token"], shown["has_app_secret"]) == (True, True)
        provider_id = created.json()["id"]
        seen += [created.text, http.get("/api/v1/providers").text, http.get(f"/api/v1/providers/{provider_id}").text]
        # An update without the secrets keeps them; bad input echoes no secret back.
        config = {
            k: v for k, v in meta_body(meta.base_url)["config"].items() if k not in ("access_token", "app_secret")
        }
        kept = http.put(f"/api/v1/providers/{provider_id}", json={**meta_body(meta.base_url), "config": config})
        assert kept.status_code == 200, kept.text
        assert (kept.json()["config"]["has_access_token"], kept.json()["config"]["has_app_secret"]) == (True, True)
        seen.append(kept.text)
        for bad in (
            meta_body(meta.base_url, phone_number_id="x"),
            meta_body(meta.base_url, api_version="21"),
            meta_body("ftp://x"),
            {**meta_body(meta.base_url), "channel": "sms"},
        ):
            refused = http.post("/api/v1/providers", json=bad)
            assert refused.status_code == 400, refused.text
            seen.append(refused.text)
        # A send accepted, then one refused by Meta (an expired token): the log sees both attempts.
        template = http.post(
            "/api/v1/templates",
            json={"name": "t", "channel": "whatsapp", "content": {"template_name": "hello_world", "language": "en_US"}},
        )
        assert template.status_code == 201, template.text
        journey = {
            "name": "wa",
            "trigger": {"type": "event", "event": "poked"},
            "entrance": {"reentry": "after_exit"},
            "start": "message",
            "steps": {
                "message": {
                    "type": "send",
                    "channel": "whatsapp",
                    "template_id": template.json()["id"],
                    "next": "done",
                },
                "done": {"type": "exit"},
            },
        }
        made = http.post("/api/v1/journeys", json=journey)
        assert made.status_code == 201, made.text
        assert http.post(f"/api/v1/journeys/{made.json()['id']}/publish").status_code == 200
        with httpx.Client(base_url=base, timeout=30, auth=(keys["write_key"], "")) as ingest:
            ingest.post("/v1/identify", json={"userId": "u1", "traits": {"phone": "+447700900123"}})
            ingest.post("/v1/track", json={"userId": "u1", "event": "poked"})
            wait_until(lambda: len(meta.accepted) == 1, timeout=60)
            meta.fail_next(401, meta_error(190, "Error validating access token: Session has expired"))
            ingest.post("/v1/identify", json={"userId": "u2", "traits": {"phone": "+447700900124"}})
            ingest.post("/v1/track", json={"userId": "u2", "event": "poked"})
            wait_until(lambda: len(meta.received) == 2, timeout=60)
        seen.append(http.get(f"/api/v1/providers/{provider_id}").text)
    for text in seen:
        assert_no_secret(text, "an API response")
    log = log_path.read_text(errors="replace")
    assert len(log) > 200, "the server logged nothing: the test would prove nothing"
    assert_no_secret(log, "the log")
    # sealed at rest: no file of the data directory holds a secret, though it holds the provider
    data = log_path.parent / "data"
    wait_until(lambda: bool(files_holding(data, PHONE_ID.encode())), timeout=30)
    for secret in SECRETS:
        assert files_holding(data, secret.encode()) == [], secret[:6]
    # what reached the vendor did carry the token: the test looked where it could have leaked
    assert meta.accepted[0].headers["authorization"] == f"Bearer {ACCESS_TOKEN}"


def test_a_meta_base_url_into_the_private_network_is_refused_with_the_field_path(shared_stack: Stack) -> None:
    project = shared_stack.project
    existing = project.post("/api/v1/providers", json=meta_body("https://graph.facebook.com"))
    assert existing.status_code == 201, existing.text
    provider_id = existing.json()["id"]
    for url in PRIVATE:
        created = project.post("/api/v1/providers", json=meta_body(url))
        assert created.status_code == 400, (url, created.text)
        details = created.json()["error"]["details"]
        assert [d["path"] for d in details] == ["config.base_url"], (url, details)
        assert "destination refused" in details[0]["reason"], (url, details)
        updated = project.put(f"/api/v1/providers/{provider_id}", json=meta_body(url))
        assert updated.status_code == 400, (url, updated.text)
        assert [d["path"] for d in updated.json()["error"]["details"]] == ["config.base_url"]
    listed = project.get("/api/v1/providers").json()["items"]
    mine = [p for p in listed if p["id"] == provider_id]
    assert [(p["config"]["base_url"], p["version"]) for p in mine] == [("https://graph.facebook.com", 1)]
    assert not [p for p in listed if p["type"] == "meta_whatsapp" and p["id"] != provider_id]
    assert ACCESS_TOKEN not in json.dumps(listed)
    assert project.delete(f"/api/v1/providers/{provider_id}").status_code == 204
