"""HTTP email providers (SendGrid, Postmark, SES): their secrets never reach an API response, a log
line (DEBUG) or a file of the data directory (sealed at rest), and a ``base_url`` pointing into the
private network is refused when written (400 naming ``config.base_url``); nothing is stored then."""

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
from tests.vendors.postmark_server import PostmarkServer, postmark_error
from tests.vendors.sendgrid_server import SendgridServer
from tests.vendors.ses_server import SesServer

SENDGRID_KEY = "SG.sendgrid-key-Zq81pLm2"
POSTMARK_TOKEN = "postmark-token-Hd73kQp"
AWS_KEY = "AKIAIOSFODNN7EXAMPLE"
AWS_SECRET = "aws-secret-Wb52nVx9"
SECRETS = (SENDGRID_KEY, POSTMARK_TOKEN, AWS_SECRET)


@pytest.fixture
def vendors() -> Iterator[tuple[SendgridServer, PostmarkServer, SesServer]]:
    with (
        SendgridServer(SENDGRID_KEY).running() as sendgrid,
        PostmarkServer(POSTMARK_TOKEN).running() as postmark,
        SesServer(AWS_KEY, AWS_SECRET, region="eu-west-1").running() as ses,
    ):
        assert isinstance(sendgrid, SendgridServer)
        assert isinstance(postmark, PostmarkServer)
        assert isinstance(ses, SesServer)
        yield sendgrid, postmark, ses


def sendgrid_body(base_url: str, **config: Any) -> dict[str, Any]:
    values = {"api_key": SENDGRID_KEY, "base_url": base_url}
    return {"name": "sendgrid", "channel": "email", "type": "sendgrid", "config": {**values, **config}}


def postmark_body(base_url: str, **config: Any) -> dict[str, Any]:
    values = {"server_token": POSTMARK_TOKEN, "base_url": base_url}
    return {"name": "postmark", "channel": "email", "type": "postmark", "config": {**values, **config}}


def ses_body(base_url: str, **config: Any) -> dict[str, Any]:
    values = {"region": "eu-west-1", "access_key_id": AWS_KEY, "secret_access_key": AWS_SECRET, "base_url": base_url}
    return {"name": "ses", "channel": "email", "type": "ses", "config": {**values, **config}}


SECRET_FIELD = {"sendgrid": "api_key", "postmark": "server_token", "ses": "secret_access_key"}


def assert_no_secret(text: str, where: str) -> None:
    for secret in SECRETS:
        assert secret not in text, f"a secret ({secret[:6]}...) is in {where}"


def test_email_provider_secrets_never_leave_through_the_api_or_the_log(
    debug_server: tuple[str, dict[str, str], Path],  # noqa: F811
    vendors: tuple[SendgridServer, PostmarkServer, SesServer],
) -> None:
    sendgrid, postmark, ses = vendors
    base, keys, log_path = debug_server
    bearer = {"authorization": f"Bearer {keys['secret_key']}"}
    seen: list[str] = []
    with (
        httpx.Client(base_url=base, timeout=30, headers=bearer) as http,
        httpx.Client(base_url=base, timeout=30, auth=(keys["write_key"], "")) as ingest,
    ):
        template = http.post(
            "/api/v1/templates",
            json={
                "name": "t",
                "channel": "email",
                "content": {"subject": "Hi", "text": "Hi", "from": "a@shop.example"},
            },
        )
        assert template.status_code == 201, template.text
        journey = {
            "name": "mail",
            "trigger": {"type": "event", "event": "poked"},
            "start": "mail",
            "steps": {
                "mail": {"type": "send", "channel": "email", "template_id": template.json()["id"], "next": "done"},
                "done": {"type": "exit"},
            },
        }
        made = http.post("/api/v1/journeys", json=journey)
        assert made.status_code == 201, made.text
        assert http.post(f"/api/v1/journeys/{made.json()['id']}/publish").status_code == 200
        # One provider at a time (the first of the channel sends): each sends once, Postmark refuses.
        postmark.fail_next(401, postmark_error(10, "Bad or missing Server API token."))
        for index, (body, server) in enumerate(
            (
                (sendgrid_body(sendgrid.base_url), sendgrid),
                (postmark_body(postmark.base_url), postmark),
                (ses_body(ses.base_url), ses),
            )
        ):
            kind = body["type"]
            created = http.post("/api/v1/providers", json=body)
            assert created.status_code == 201, created.text
            provider_id = created.json()["id"]
            assert created.json()["config"][f"has_{SECRET_FIELD[kind]}"] is True
            seen += [
                created.text,
                http.get("/api/v1/providers").text,
                http.get(f"/api/v1/providers/{provider_id}").text,
            ]
            # An update without the secret keeps it; bad input echoes no secret back.
            config = {k: v for k, v in body["config"].items() if k != SECRET_FIELD[kind]}
            kept = http.put(f"/api/v1/providers/{provider_id}", json={**body, "config": config})
            assert kept.status_code == 200, kept.text
            assert kept.json()["config"][f"has_{SECRET_FIELD[kind]}"] is True
            seen.append(kept.text)
            for bad in (
                {**body, "config": {**body["config"], "timeout": -1}},
                {**body, "config": {**body["config"], "base_url": "ftp://x"}},
                {**body, "channel": "sms"},
            ):
                refused = http.post("/api/v1/providers", json=bad)
                assert refused.status_code == 400, refused.text
                seen.append(refused.text)
            user = f"u{index}"
            ingest.post("/v1/identify", json={"userId": user, "traits": {"email": f"{user}@example.com"}})
            ingest.post("/v1/track", json={"userId": user, "event": "poked"})
            wait_until(lambda server=server: len(server.received) == 1, timeout=60)  # type: ignore[misc]
            assert http.delete(f"/api/v1/providers/{provider_id}").status_code == 204
    for text in seen:
        assert_no_secret(text, "an API response")
    log = log_path.read_text(errors="replace")
    assert len(log) > 200, "the server logged nothing: the test would prove nothing"
    assert_no_secret(log, "the log")
    data = log_path.parent / "data"
    assert files_holding(data, AWS_KEY.encode()), "the grep must see the stored providers"
    for secret in SECRETS:
        assert files_holding(data, secret.encode()) == [], secret[:6]
    # what reached the vendors did carry them: the test looked where they could have leaked
    assert sendgrid.accepted[0].headers["authorization"] == f"Bearer {SENDGRID_KEY}"
    assert postmark.received[0].headers["x-postmark-server-token"] == POSTMARK_TOKEN
    assert len(ses.accepted) == 1  # signed with the secret (the server verified the signature)


def test_a_base_url_into_the_private_network_is_refused_with_the_field_path(shared_stack: Stack) -> None:
    project = shared_stack.project
    existing = project.post("/api/v1/providers", json=sendgrid_body("https://api.sendgrid.com"))
    assert existing.status_code == 201, existing.text
    provider_id = existing.json()["id"]
    for url in PRIVATE:
        for body in (sendgrid_body(url), postmark_body(url), ses_body(url)):
            created = project.post("/api/v1/providers", json=body)
            assert created.status_code == 400, (url, created.text)
            details = created.json()["error"]["details"]
            assert [d["path"] for d in details] == ["config.base_url"], (url, details)
            assert "destination refused" in details[0]["reason"], (url, details)
        updated = project.put(f"/api/v1/providers/{provider_id}", json=sendgrid_body(url))
        assert updated.status_code == 400, (url, updated.text)
        assert [d["path"] for d in updated.json()["error"]["details"]] == ["config.base_url"]
    # An SES region cannot be used to reach elsewhere either: the default endpoint is AWS's.
    regional = project.post("/api/v1/providers", json=ses_body(None))  # type: ignore[arg-type]
    assert regional.status_code == 201, regional.text
    assert regional.json()["config"]["base_url"] == "https://email.eu-west-1.amazonaws.com"
    listed = project.get("/api/v1/providers").json()["items"]
    mine = [p for p in listed if p["id"] == provider_id]
    assert [(p["config"]["base_url"], p["version"]) for p in mine] == [("https://api.sendgrid.com", 1)]
    assert json.dumps(listed).count("base_url") == len(listed)
    for item in (provider_id, regional.json()["id"]):
        assert project.delete(f"/api/v1/providers/{item}").status_code == 204
