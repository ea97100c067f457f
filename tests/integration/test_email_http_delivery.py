"""Email over vendor HTTP APIs end to end: an event -> a journey with an email step -> the message
at a strict loopback SendGrid (both runtimes), Postmark or SES (embedded) server, with the same
List-Unsubscribe link the SMTP path sets (and it works: the next send is suppressed); message rows
with the vendor's id; a permanent refusal failed and never retried, a throttled send retried with
the same body; bad provider input -> 400 naming the field, nothing stored."""

from __future__ import annotations

import json
import re
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.integration.test_catalogue import WELCOME_EMAIL
from tests.support import LOOPBACK_RELAY, Stack, running_stack, wait_until
from tests.vendors.postmark_server import PostmarkServer, postmark_error
from tests.vendors.sendgrid_server import SendgridServer
from tests.vendors.ses_server import SesServer, ses_error

SENDGRID_KEY = "SG.e2e-key.0001"
POSTMARK_TOKEN = "pm-e2e-token-0001"
AWS_KEY = "AKIAIOSFODNN7EXAMPLE"
AWS_SECRET = "ses-e2e-secret-0001"


@pytest.fixture
def stack(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Stack]:
    """conftest's ``stack``, allowed to reach the vendor servers on loopback; quick retries."""
    runtime = getattr(request, "param", "embedded")
    bootstrap = request.getfixturevalue("kafka_bootstrap") if runtime == "kafka" else None
    with running_stack(
        tmp_path / "data", runtime=runtime, kafka_bootstrap=bootstrap, delivery_retry_base=0.2, **LOOPBACK_RELAY
    ) as running:
        yield running


@pytest.fixture
def sendgrid() -> Iterator[SendgridServer]:
    with SendgridServer(SENDGRID_KEY).running() as server:
        assert isinstance(server, SendgridServer)
        yield server


@pytest.fixture
def postmark() -> Iterator[PostmarkServer]:
    with PostmarkServer(POSTMARK_TOKEN).running() as server:
        assert isinstance(server, PostmarkServer)
        yield server


@pytest.fixture
def ses() -> Iterator[SesServer]:
    with SesServer(AWS_KEY, AWS_SECRET, region="eu-central-1").running() as server:
        assert isinstance(server, SesServer)
        yield server


def email_journey(template_id: str, trigger: str) -> dict[str, Any]:
    return {
        "name": f"Email on {trigger}",
        "trigger": {"type": "event", "event": trigger},
        "entrance": {"reentry": "after_exit"},
        "start": "mail",
        "steps": {
            "mail": {"type": "send", "channel": "email", "template_id": template_id, "next": "done"},
            "done": {"type": "exit"},
        },
    }


def set_up(stack: Stack, provider: dict[str, Any], trigger: str) -> str:
    """The provider, the welcome email template and a published journey: the provider id."""
    project = stack.project
    created = project.post("/api/v1/providers", json=provider)
    assert created.status_code == 201, created.text
    template = project.post("/api/v1/templates", json=WELCOME_EMAIL)
    assert template.status_code == 201, template.text
    journey = project.post("/api/v1/journeys", json=email_journey(template.json()["id"], trigger))
    assert journey.status_code == 201, journey.text
    assert project.post(f"/api/v1/journeys/{journey.json()['id']}/publish").status_code == 200
    provider_id: str = created.json()["id"]
    return provider_id


def rows(stack: Stack, contact: str) -> list[tuple[str, str, dict[str, Any]]]:
    found = stack.sql(f"SELECT channel, status, detail FROM messages FINAL WHERE contact_id = '{contact}' ORDER BY at")
    return [(row[0], row[1], json.loads(row[2]) if row[2] else {}) for row in found]


def statuses(stack: Stack, contact: str) -> list[str]:
    stack.settle()
    return [row[1] for row in rows(stack, contact)]


def test_an_event_sends_an_email_through_sendgrid_and_its_unsubscribe_link_works(
    stack: Stack, sendgrid: SendgridServer
) -> None:
    provider = {
        "name": "SendGrid",
        "channel": "email",
        "type": "sendgrid",
        "config": {"api_key": SENDGRID_KEY, "base_url": sendgrid.base_url},
    }
    set_up(stack, provider, "signed_up")
    ingest = stack.ingest
    ingest.post("/v1/identify", json={"userId": "ada", "traits": {"email": "ada@example.com", "first_name": "Ada"}})
    ingest.post("/v1/identify", json={"userId": "bob", "traits": {"first_name": "Bob"}})  # no email
    ingest.post("/v1/track", json={"userId": "ada", "event": "signed_up", "properties": {"plan": "free"}})
    ingest.post("/v1/track", json={"userId": "bob", "event": "signed_up", "properties": {"plan": "free"}})

    wait_until(lambda: len(sendgrid.accepted) == 1, timeout=60)
    request = sendgrid.accepted[0]
    body = sendgrid.json(request)
    assert body["personalizations"] == [{"to": [{"email": "ada@example.com"}]}]
    assert body["from"] == {"email": "hello@example.com", "name": "Spotzee"}
    assert body["subject"] == "Welcome, Ada"
    assert body["content"] == [
        {"type": "text/plain", "value": "Hi Ada"},
        {"type": "text/html", "value": "<p>Hi Ada, thanks for free.</p>"},
    ]
    send_id = body["custom_args"]["send_id"]
    assert send_id
    # The stack's public URL is http://: List-Unsubscribe without the one-click header (RFC 8058 needs https).
    assert set(body["headers"]) == {"List-Unsubscribe"}
    link = re.fullmatch(r"<(http://\S+/u/\S+)>", body["headers"]["List-Unsubscribe"])
    assert link is not None, body["headers"]
    assert link.group(1).startswith(stack.base_url)

    wait_until(
        lambda: statuses(stack, "ada") == ["queued", "sent"] and statuses(stack, "bob") == ["queued", "failed"],
        timeout=60,
        interval=0.5,
    )
    channel, _, detail = rows(stack, "ada")[1]
    message_id = detail["provider_message_id"]
    assert channel == "email"
    assert isinstance(message_id, str)
    assert len(message_id) == 22
    assert rows(stack, "bob")[1][2]["reason"] == "the contact has no email address"

    # The link unsubscribes (one click, as a mailbox provider would post it): the next is suppressed.
    assert httpx.post(link.group(1), content="List-Unsubscribe=One-Click").status_code == 200
    ingest.post("/v1/track", json={"userId": "ada", "event": "signed_up", "properties": {"plan": "free"}})
    wait_until(lambda: statuses(stack, "ada") == ["queued", "sent", "queued", "suppressed"], timeout=60, interval=0.5)
    assert len(sendgrid.received) == 1


@pytest.mark.runtimes("embedded")
def test_postmark_inactive_recipient_is_failed_and_never_retried_then_a_send_goes(
    stack: Stack, postmark: PostmarkServer
) -> None:
    provider = {
        "name": "Postmark",
        "channel": "email",
        "type": "postmark",
        "config": {"server_token": POSTMARK_TOKEN, "message_stream": "broadcast", "base_url": postmark.base_url},
    }
    set_up(stack, provider, "poked")
    postmark.fail_next(422, postmark_error(406, "You tried to send to recipient(s) that have been marked as inactive."))
    ingest = stack.ingest
    ingest.post("/v1/identify", json={"userId": "cy", "traits": {"email": "cy@example.com"}})
    ingest.post("/v1/track", json={"userId": "cy", "event": "poked", "properties": {"plan": "pro"}})
    wait_until(lambda: statuses(stack, "cy") == ["queued", "failed"], timeout=60, interval=0.5)
    assert len(postmark.received) == 1
    assert rows(stack, "cy")[1][2]["reason"].startswith("HTTP 422: Postmark error 406:")

    ingest.post("/v1/identify", json={"userId": "di", "traits": {"email": "di@example.com", "first_name": "Di"}})
    ingest.post("/v1/track", json={"userId": "di", "event": "poked", "properties": {"plan": "pro"}})
    wait_until(lambda: statuses(stack, "di") == ["queued", "sent"], timeout=60, interval=0.5)
    body = postmark.json(postmark.accepted[0])
    assert (body["To"], body["Subject"], body["MessageStream"]) == ("di@example.com", "Welcome, Di", "broadcast")
    assert [h["Name"] for h in body["Headers"]] == ["List-Unsubscribe"]
    assert body["Metadata"]["send_id"]
    assert rows(stack, "di")[1][2]["provider_message_id"]


@pytest.mark.runtimes("embedded")
def test_ses_throttled_then_sent_with_the_same_signed_body(stack: Stack, ses: SesServer) -> None:
    provider = {
        "name": "SES",
        "channel": "email",
        "type": "ses",
        "config": {
            "region": "eu-central-1",
            "access_key_id": AWS_KEY,
            "secret_access_key": AWS_SECRET,
            "base_url": ses.base_url,
        },
    }
    set_up(stack, provider, "poked")
    body, headers = ses_error("TooManyRequestsException", "Too Many Requests")
    ses.fail_next(429, body, headers=headers)
    stack.ingest.post("/v1/identify", json={"userId": "ed", "traits": {"email": "ed@example.com", "first_name": "Ed"}})
    stack.ingest.post("/v1/track", json={"userId": "ed", "event": "poked", "properties": {"plan": "pro"}})
    wait_until(lambda: statuses(stack, "ed") == ["queued", "retrying", "sent"], timeout=60, interval=0.5)
    first, second = ses.received
    assert first.body == second.body  # the retry carries the same message
    assert ses.accepted == [second]  # the retry passed the signature check (signed anew, same body)
    sent = ses.json(ses.accepted[0])
    assert sent["Destination"] == {"ToAddresses": ["ed@example.com"]}
    assert sent["Content"]["Simple"]["Subject"]["Data"] == "Welcome, Ed"
    assert rows(stack, "ed")[2][2]["provider_message_id"].startswith("0100")


def provider(type_: str, config: dict[str, Any], *, channel: str = "email") -> dict[str, Any]:
    return {"name": "p", "channel": channel, "type": type_, "config": config}


SES = {"region": "eu-west-1", "access_key_id": AWS_KEY, "secret_access_key": "s3cr3t"}


@pytest.mark.runtimes("embedded")
def test_bad_email_provider_input_names_the_field_and_stores_nothing(stack: Stack) -> None:
    project = stack.project
    cases: list[tuple[dict[str, Any], list[str]]] = [
        (provider("sendgrid", {}), ["config.api_key"]),
        (provider("sendgrid", {"api_key": "k", "base_url": "https://10.0.0.1"}), ["config.base_url"]),
        (provider("sendgrid", {"api_key": "k"}, channel="sms"), ["type"]),
        (provider("postmark", {"server_token": "t", "message_stream": "No Spaces"}), ["config.message_stream"]),
        (provider("postmark", {"server_token": "t", "timeout": 0}), ["config.timeout"]),
        (provider("ses", {**SES, "region": "moon-base"}), ["config.region"]),
        (provider("ses", {**SES, "access_key_id": "lower-case-key-000"}), ["config.access_key_id"]),
        (provider("ses", {k: v for k, v in SES.items() if k != "secret_access_key"}), ["config.secret_access_key"]),
        (provider("ses", {**SES, "configuration_set": "bad set!"}), ["config.configuration_set"]),
        (provider("ses", {**SES, "unknown": 1}), ["config.unknown"]),
    ]
    for body, paths in cases:
        response = project.post("/api/v1/providers", json=body)
        assert response.status_code == 400, (body, response.text)
        details = response.json()["error"]["details"]
        assert [d["path"] for d in details] == paths, (body, details)
        assert all(d["reason"] for d in details)
    assert project.get("/api/v1/providers").json()["items"] == []
    good = project.post("/api/v1/providers", json=provider("ses", SES))
    assert good.status_code == 201, good.text
    assert good.json()["config"] == {
        "region": "eu-west-1",
        "access_key_id": AWS_KEY,
        "has_secret_access_key": True,
        "configuration_set": None,
        "base_url": "https://email.eu-west-1.amazonaws.com",
        "timeout": 10.0,
    }
