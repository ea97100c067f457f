"""The SMS admin API: providers (bad input -> 400 naming the field, nothing stored), SMS templates
and their preview (encoding, segments), journeys with SMS steps checked when published."""

from __future__ import annotations

from typing import Any

import pytest

from tests.support import Stack

ACCOUNT = "AC" + "0123456789abcdef" * 2
TWILIO = {"account_sid": ACCOUNT, "auth_token": "tok-0123456789", "from": "+14155550100"}


def provider(config: dict[str, Any], *, channel: str = "sms", type_: str = "twilio") -> dict[str, Any]:
    return {"name": "p", "channel": channel, "type": type_, "config": config}


@pytest.mark.runtimes("embedded")
def test_bad_provider_input_names_the_field_and_stores_nothing(stack: Stack) -> None:
    project = stack.project
    cases: list[tuple[dict[str, Any], list[str]]] = [
        (provider({**TWILIO, "account_sid": "AC1"}), ["config.account_sid"]),
        (provider({**TWILIO, "from": "0044 7700"}), ["config.from"]),
        (provider({**TWILIO, "from": "whatsapp:+14155550100"}), ["config.from"]),
        (provider({**TWILIO, "messaging_service_sid": "MG" + "0" * 32}), ["config"]),
        (provider({k: v for k, v in TWILIO.items() if k != "auth_token"}), ["config.auth_token"]),
        (provider({**TWILIO, "base_url": "gopher://api.twilio.com"}), ["config.base_url"]),
        (provider(TWILIO, channel="email"), ["type"]),
        (provider({"api_key": "k", "from": "Shop"}, type_="vonage"), ["config.api_secret"]),
        (provider({"api_key": "k-!", "api_secret": "s", "from": "Shop"}, type_="vonage"), ["config.api_key"]),
        (provider({"api_key": "k", "api_secret": "s", "from": "A very long sender"}, type_="vonage"), ["config.from"]),
        (provider({"api_key": "k", "api_secret": "s"}, type_="vonage"), ["config.from"]),
    ]
    for body, paths in cases:
        response = project.post("/api/v1/providers", json=body)
        assert response.status_code == 400, (body, response.text)
        details = response.json()["error"]["details"]
        assert [d["path"] for d in details] == paths, (body, details)
        assert all(d["reason"] for d in details)
    assert project.get("/api/v1/providers").json()["items"] == []
    good = project.post("/api/v1/providers", json=provider(TWILIO))
    assert good.status_code == 201, good.text
    shown = good.json()["config"]
    assert shown == {
        "account_sid": ACCOUNT,
        "has_auth_token": True,
        "from": "+14155550100",
        "messaging_service_sid": None,
        "base_url": "https://api.twilio.com",
        "timeout": 10.0,
    }


@pytest.mark.runtimes("embedded")
def test_sms_templates_preview_encoding_and_segments_and_journeys_check_the_channel(stack: Stack) -> None:
    project = stack.project
    bad = project.post("/api/v1/templates", json={"name": "t", "channel": "sms", "content": {"body": "{{ x "}})
    assert bad.status_code == 400
    assert [d["path"] for d in bad.json()["error"]["details"]] == ["content.body"]
    body = "{{ contact.first_name }}: " + "x" * 150
    created = project.post("/api/v1/templates", json={"name": "t", "channel": "sms", "content": {"body": body}})
    assert created.status_code == 201, created.text
    template_id = created.json()["id"]
    stack.ingest.post("/v1/identify", json={"userId": "ada", "traits": {"first_name": "Ada"}})
    stack.ingest.post("/v1/identify", json={"userId": "zoe", "traits": {"first_name": "Zoë"}})
    stack.settle()
    ada = project.post(f"/api/v1/templates/{template_id}/preview", json={"contact_id": "ada"})
    assert ada.status_code == 200, ada.text
    assert ada.json() == {
        "channel": "sms",
        "rendered": {"body": "Ada: " + "x" * 150, "encoding": "GSM-7", "segments": 1},
    }
    zoe = project.post(f"/api/v1/templates/{template_id}/preview", json={"contact_id": "zoe"}).json()
    assert (zoe["rendered"]["encoding"], zoe["rendered"]["segments"]) == ("UCS-2", 3)  # 155 units: 67 + 67 + 21

    email = {
        "name": "e",
        "channel": "email",
        "content": {"subject": "s", "text": "t", "from": "team@example.com"},
    }
    email_id = project.post("/api/v1/templates", json=email).json()["id"]
    journey = {
        "name": "j",
        "trigger": {"type": "event", "event": "e"},
        "start": "text",
        "steps": {
            "text": {"type": "send", "channel": "sms", "template_id": email_id, "next": "done"},
            "done": {"type": "exit"},
        },
    }
    made = project.post("/api/v1/journeys", json=journey).json()["id"]
    refused = project.post(f"/api/v1/journeys/{made}/publish")
    assert refused.status_code == 400, refused.text
    assert [d["path"] for d in refused.json()["error"]["details"]] == ["steps.text.template_id"]
    journey["steps"]["text"]["template_id"] = template_id  # type: ignore[index]
    fixed = project.put(f"/api/v1/journeys/{made}", json=journey)
    assert fixed.status_code == 200, fixed.text
    assert project.post(f"/api/v1/journeys/{made}/publish").status_code == 200
