"""Templates, providers and journeys as definitions through the API, on both runtimes."""

from __future__ import annotations

from typing import Any

from tests.support import Stack

WELCOME_EMAIL = {
    "name": "Welcome",
    "channel": "email",
    "content": {
        "subject": "Welcome, {{ contact.first_name | default: 'there' }}",
        "html": "<p>Hi {{ contact.first_name | default: 'there' }}, thanks for {{ event.plan }}.</p>",
        "text": "Hi {{ contact.first_name | default: 'there' }}",
        "from": "Spotzee <hello@example.com>",
    },
}


def welcome_journey(template_id: str) -> dict[str, Any]:
    return {
        "name": "Welcome",
        "trigger": {"type": "event", "event": "signed_up"},
        "entrance": {"reentry": "never"},
        "exit_when": [{"type": "event", "event": "account_deleted"}],
        "start": "wait",
        "steps": {
            "wait": {"type": "delay", "duration": {"value": 1, "unit": "hour"}, "next": "check"},
            "check": {
                "type": "gate",
                "rule": {"type": "attribute", "path": "plan", "op": "eq", "value": "free"},
                "yes": "mail",
                "no": "done",
            },
            "mail": {"type": "send", "channel": "email", "template_id": template_id, "next": "done"},
            "done": {"type": "exit"},
        },
    }


def test_templates_are_versioned_validated_and_previewed(stack: Stack) -> None:
    project = stack.project
    created = project.post("/api/v1/templates", json=WELCOME_EMAIL)
    assert created.status_code == 201, created.text
    template = created.json()
    assert template["id"].startswith("tpl_")
    assert template["version"] == 1
    stack.ingest.post("/v1/identify", json={"userId": "u1", "traits": {"first_name": "Ada"}})
    stack.ingest.post("/v1/identify", json={"userId": "u2", "traits": {}})
    stack.settle()
    preview = project.post(
        f"/api/v1/templates/{template['id']}/preview", json={"contact_id": "u1", "event": {"plan": "pro"}}
    )
    assert preview.status_code == 200, preview.text
    rendered = preview.json()["rendered"]
    assert rendered["subject"] == "Welcome, Ada"
    assert "thanks for pro" in rendered["html"]
    anonymous = project.post(f"/api/v1/templates/{template['id']}/preview", json={"contact_id": "u2"}).json()
    assert anonymous["rendered"]["subject"] == "Welcome, there"

    broken = {**WELCOME_EMAIL, "content": {**WELCOME_EMAIL["content"], "html": "{% if %}"}}
    refused = project.post("/api/v1/templates", json=broken)
    assert refused.status_code == 400
    assert any(d["path"].startswith("content.html") for d in refused.json()["error"]["details"])
    wrong_channel = project.post(
        "/api/v1/templates", json={"name": "x", "channel": "webhook", "content": WELCOME_EMAIL["content"]}
    )
    assert wrong_channel.status_code == 400

    updated = project.put(f"/api/v1/templates/{template['id']}", json={**WELCOME_EMAIL, "name": "Welcome v2"})
    assert updated.json()["version"] == 2
    assert [t["name"] for t in project.get("/api/v1/templates").json()["items"]] == ["Welcome v2"]
    assert project.post(f"/api/v1/templates/{template['id']}/preview", json={"contact_id": "nobody"}).status_code == 404
    assert project.get("/api/v1/templates/tpl_missing").status_code == 404


def test_provider_secrets_are_never_returned_nor_audited(stack: Stack) -> None:
    project = stack.project
    body = {
        "name": "Mail relay",
        "channel": "email",
        "type": "smtp",
        "config": {
            "host": "smtp.example.com",
            "port": 2525,
            "username": "u",
            "password": "hunter2-secret",
            "security": "none",
        },
    }
    created = project.post("/api/v1/providers", json=body)
    assert created.status_code == 201, created.text
    provider = created.json()
    assert "hunter2-secret" not in created.text
    assert provider["config"]["has_password"] is True
    provider_id = provider["id"]
    listed = project.get("/api/v1/providers")
    assert "hunter2-secret" not in listed.text
    # An update without the password keeps the stored one.
    kept = project.put(
        f"/api/v1/providers/{provider_id}", json={**body, "config": {**body["config"], "password": None}}
    )
    assert kept.status_code == 200, kept.text
    assert kept.json()["config"]["has_password"] is True
    assert kept.json()["version"] == 2
    mismatch = project.post("/api/v1/providers", json={**body, "channel": "webhook"})
    assert mismatch.status_code == 400
    stack.settle()
    audit = stack.admin.get("/api/v1/audit").text
    assert "provider.create" in audit
    assert "hunter2-secret" not in audit
    assert project.delete(f"/api/v1/providers/{provider_id}").status_code == 204
    assert project.get(f"/api/v1/providers/{provider_id}").status_code == 404


def test_journey_lifecycle_and_reference_checks(stack: Stack) -> None:
    project = stack.project
    draft = project.post("/api/v1/journeys", json=welcome_journey("tpl_missing"))
    assert draft.status_code == 201, draft.text
    journey = draft.json()
    assert (journey["status"], journey["version"]) == ("draft", 1)
    journey_id = journey["id"]
    refused = project.post(f"/api/v1/journeys/{journey_id}/publish")
    assert refused.status_code == 400
    assert refused.json()["error"]["details"][0]["path"] == "steps.mail.template_id"

    template_id = project.post("/api/v1/templates", json=WELCOME_EMAIL).json()["id"]
    edited = project.put(f"/api/v1/journeys/{journey_id}", json=welcome_journey(template_id))
    assert edited.json()["version"] == 2
    live = project.post(f"/api/v1/journeys/{journey_id}/publish")
    assert live.status_code == 200, live.text
    assert live.json()["status"] == "live"
    assert project.post(f"/api/v1/journeys/{journey_id}/publish").status_code == 409  # already live
    new_version = project.put(f"/api/v1/journeys/{journey_id}", json={**welcome_journey(template_id), "name": "W2"})
    assert (new_version.json()["status"], new_version.json()["version"]) == ("live", 3)
    assert project.post(f"/api/v1/journeys/{journey_id}/pause").json()["status"] == "paused"
    assert project.post(f"/api/v1/journeys/{journey_id}/archive").json()["status"] == "archived"
    assert project.put(f"/api/v1/journeys/{journey_id}", json=welcome_journey(template_id)).status_code == 409
    assert project.post(f"/api/v1/journeys/{journey_id}/restart").status_code in (404, 422, 400)

    dangling = welcome_journey(template_id)
    dangling["steps"]["wait"]["next"] = "nowhere"
    bad = project.post("/api/v1/journeys", json=dangling)
    assert bad.status_code == 400
    assert any(d["path"] == "steps.wait.next" for d in bad.json()["error"]["details"])
    assert [j["id"] for j in project.get("/api/v1/journeys").json()["items"]] == [journey_id]
