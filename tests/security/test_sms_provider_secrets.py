"""SMS providers (Twilio, Vonage): their secrets never reach an API response, a log line or a file
of the data directory (sealed at rest), and a
``base_url`` pointing into the private network is refused when written (400 naming
``config.base_url``), as SMTP hosts are; nothing is stored then."""

from __future__ import annotations

import base64
import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.security.test_log_redaction import debug_server  # noqa: F401 (a fixture)
from tests.support import Stack, files_holding, wait_until
from tests.vendors.twilio_server import TwilioServer
from tests.vendors.vonage_server import VonageServer, vonage_error

ACCOUNT = "AC" + "0123456789abcdef" * 2
TWILIO_TOKEN = "twilio-token-Qx81pLm2"
VONAGE_SECRET = "vonage-secret-Hd73kQp"
SECRETS = (TWILIO_TOKEN, VONAGE_SECRET, base64.b64encode(f"{ACCOUNT}:{TWILIO_TOKEN}".encode()).decode())


@pytest.fixture
def twilio() -> Iterator[TwilioServer]:
    with TwilioServer(ACCOUNT, TWILIO_TOKEN).running() as server:
        assert isinstance(server, TwilioServer)
        yield server


@pytest.fixture
def vonage() -> Iterator[VonageServer]:
    with VonageServer("k3y01", VONAGE_SECRET).running() as server:
        assert isinstance(server, VonageServer)
        yield server


def twilio_body(base_url: str, **config: Any) -> dict[str, Any]:
    values = {"account_sid": ACCOUNT, "auth_token": TWILIO_TOKEN, "from": "+14155550100", "base_url": base_url}
    return {"name": "twilio", "channel": "sms", "type": "twilio", "config": {**values, **config}}


def vonage_body(base_url: str, **config: Any) -> dict[str, Any]:
    values = {"api_key": "k3y01", "api_secret": VONAGE_SECRET, "from": "Shop", "base_url": base_url}
    return {"name": "vonage", "channel": "sms", "type": "vonage", "config": {**values, **config}}


def assert_no_secret(text: str, where: str) -> None:
    for secret in SECRETS:
        assert secret not in text, f"a secret ({secret[:6]}...) is in {where}"


def test_sms_secrets_never_leave_through_the_api_or_the_log(
    debug_server: tuple[str, dict[str, str], Path],  # noqa: F811
    twilio: TwilioServer,
    vonage: VonageServer,
) -> None:
    base, keys, log_path = debug_server
    bearer = {"authorization": f"Bearer {keys['secret_key']}"}
    seen: list[str] = []
    with httpx.Client(base_url=base, timeout=30, headers=bearer) as http:
        created = http.post("/api/v1/providers", json=twilio_body(twilio.base_url))
        assert created.status_code == 201, created.text
        assert created.json()["config"]["has_auth_token"] is True
        other = http.post("/api/v1/providers", json=vonage_body(vonage.base_url))
        assert other.status_code == 201, other.text
        assert other.json()["config"]["has_api_secret"] is True
        seen += [created.text, other.text, http.get("/api/v1/providers").text]
        seen.append(http.get(f"/api/v1/providers/{created.json()['id']}").text)
        # An update without the secret keeps it; bad input echoes no secret back.
        config = {k: v for k, v in twilio_body(twilio.base_url)["config"].items() if k != "auth_token"}
        kept = http.put(
            f"/api/v1/providers/{created.json()['id']}", json={**twilio_body(twilio.base_url), "config": config}
        )
        assert kept.status_code == 200, kept.text
        assert kept.json()["config"]["has_auth_token"] is True
        for bad in (
            twilio_body(twilio.base_url, account_sid="nope"),
            twilio_body("ftp://x"),
            vonage_body(vonage.base_url, **{"from": "!!"}),
            {**twilio_body(twilio.base_url), "channel": "email"},
        ):
            refused = http.post("/api/v1/providers", json=bad)
            assert refused.status_code == 400, refused.text
            seen.append(refused.text)
        # A send through each, one refused by the vendor: the log sees both attempts.
        template = http.post("/api/v1/templates", json={"name": "t", "channel": "sms", "content": {"body": "Hi"}})
        assert template.status_code == 201, template.text
        journey = {
            "name": "sms",
            "trigger": {"type": "event", "event": "poked"},
            "start": "text",
            "steps": {
                "text": {"type": "send", "channel": "sms", "template_id": template.json()["id"], "next": "done"},
                "done": {"type": "exit"},
            },
        }
        made = http.post("/api/v1/journeys", json=journey)
        assert made.status_code == 201, made.text
        assert http.post(f"/api/v1/journeys/{made.json()['id']}/publish").status_code == 200
        ingest = httpx.Client(base_url=base, timeout=30, auth=(keys["write_key"], ""))
        ingest.post("/v1/identify", json={"userId": "u1", "traits": {"phone": "+447700900123"}})
        ingest.post("/v1/track", json={"userId": "u1", "event": "poked"})
        wait_until(lambda: len(twilio.accepted) == 1, timeout=60)
        # The Vonage provider is the second for the channel: delete Twilio, the next send goes to Vonage.
        assert http.delete(f"/api/v1/providers/{created.json()['id']}").status_code == 204
        vonage.fail_next(200, vonage_error("4", "Bad Credentials"))
        ingest.post("/v1/identify", json={"userId": "u2", "traits": {"phone": "+447700900124"}})
        ingest.post("/v1/track", json={"userId": "u2", "event": "poked"})
        wait_until(lambda: len(vonage.received) == 1, timeout=60)
    for text in seen:
        assert_no_secret(text, "an API response")
    log = log_path.read_text(errors="replace")
    assert len(log) > 200, "the server logged nothing: the test would prove nothing"
    assert_no_secret(log, "the log")
    # sealed at rest: no file of the data directory holds a secret, though it holds the providers
    data = log_path.parent / "data"
    assert files_holding(data, ACCOUNT.encode()), "the grep must see the stored providers"
    for secret in (TWILIO_TOKEN, VONAGE_SECRET):
        assert files_holding(data, secret.encode()) == [], secret[:6]
    # what reached the vendors did carry them: the test looked where they could have leaked
    assert twilio.accepted[0].headers["authorization"] == f"Basic {SECRETS[2]}"
    assert vonage.received[0].form()["api_secret"] == VONAGE_SECRET


PRIVATE = (
    "http://127.0.0.1:8080",
    "https://10.1.2.3",
    "http://169.254.169.254/latest",
    "http://[::1]:9000",
    "http://0x7f.1",
    "https://localhost",
    "https://metadata.google.internal",
    "https://192.168.1.10:8443",
)


def test_a_base_url_into_the_private_network_is_refused_with_the_field_path(shared_stack: Stack) -> None:
    project = shared_stack.project
    existing = project.post("/api/v1/providers", json=twilio_body("https://api.twilio.com"))
    assert existing.status_code == 201, existing.text
    provider_id = existing.json()["id"]
    for url in PRIVATE:
        for body in (twilio_body(url), vonage_body(url)):
            created = project.post("/api/v1/providers", json=body)
            assert created.status_code == 400, (url, created.text)
            details = created.json()["error"]["details"]
            assert [d["path"] for d in details] == ["config.base_url"], (url, details)
            assert "destination refused" in details[0]["reason"], (url, details)
        updated = project.put(f"/api/v1/providers/{provider_id}", json=twilio_body(url))
        assert updated.status_code == 400, (url, updated.text)
        assert [d["path"] for d in updated.json()["error"]["details"]] == ["config.base_url"]
    listed = project.get("/api/v1/providers").json()["items"]
    mine = [p for p in listed if p["id"] == provider_id]
    assert [(p["config"]["base_url"], p["version"]) for p in mine] == [("https://api.twilio.com", 1)]
    assert json.dumps(listed).count("base_url") == len(listed)
    assert project.delete(f"/api/v1/providers/{provider_id}").status_code == 204
