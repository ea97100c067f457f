"""The WhatsApp admin API: meta_whatsapp providers and WhatsApp templates (bad input -> 400 naming
the field path, nothing stored), the template preview with its parameters rendered, and journeys
with WhatsApp steps checked when published."""

from __future__ import annotations

from typing import Any

import pytest

from tests.support import Stack

META = {"phone_number_id": "106540352242922", "access_token": "EAAG-api-token", "app_secret": "api-app-secret"}
SHIPPED: dict[str, Any] = {
    "template_name": "order_shipped",
    "language": "en_US",
    "components": [
        {"type": "header", "parameters": [{"type": "text", "text": "{{ event.order }}"}]},
        {"type": "body", "parameters": [{"type": "text", "text": "{{ contact.first_name | default: 'there' }}"}]},
        {"type": "button", "sub_type": "quick_reply", "index": 0, "parameters": [{"type": "payload", "payload": "OK"}]},
    ],
}


def provider(config: dict[str, Any], *, channel: str = "whatsapp", type_: str = "meta_whatsapp") -> dict[str, Any]:
    return {"name": "wa", "channel": channel, "type": type_, "config": config}


@pytest.mark.runtimes("embedded")
def test_bad_meta_provider_input_names_the_field_and_stores_nothing(stack: Stack) -> None:
    project = stack.project
    cases: list[tuple[dict[str, Any], list[str]]] = [
        (provider({**META, "phone_number_id": "abc"}), ["config.phone_number_id"]),
        (provider({**META, "api_version": "21.0"}), ["config.api_version"]),
        (provider({**META, "api_version": "v21"}), ["config.api_version"]),
        (provider({k: v for k, v in META.items() if k != "access_token"}), ["config.access_token"]),
        (provider({k: v for k, v in META.items() if k != "app_secret"}), ["config.app_secret"]),
        (provider({**META, "base_url": "gopher://graph.facebook.com"}), ["config.base_url"]),
        (provider({**META, "timeout": 0}), ["config.timeout"]),
        (provider({**META, "from": "+14155550100"}), ["config.from"]),
        (provider(META, channel="sms"), ["type"]),
        (provider(META, type_="whatsapp_cloud"), ["type"]),
    ]
    for body, paths in cases:
        response = project.post("/api/v1/providers", json=body)
        assert response.status_code == 400, (body, response.text)
        details = response.json()["error"]["details"]
        assert [d["path"] for d in details] == paths, (body, details)
        assert all(d["reason"] for d in details)
    assert project.get("/api/v1/providers").json()["items"] == []
    good = project.post("/api/v1/providers", json=provider(META))
    assert good.status_code == 201, good.text
    assert good.json()["type"] == "meta_whatsapp"
    assert good.json()["config"] == {
        "phone_number_id": "106540352242922",
        "has_access_token": True,
        "has_app_secret": True,
        "api_version": "v21.0",
        "base_url": "https://graph.facebook.com",
        "timeout": 10.0,
    }


@pytest.mark.runtimes("embedded")
def test_whatsapp_templates_bad_input_preview_and_journeys(stack: Stack) -> None:
    project = stack.project
    bad: list[tuple[dict[str, Any], list[str]]] = [
        ({"template_name": "Order Shipped", "language": "en_US"}, ["content.template_name"]),
        ({"template_name": "order_shipped"}, ["content.language"]),
        ({"text": "{{ x "}, ["content.text"]),
        ({"text": "hi", "language": "en"}, ["content.language"]),
        (
            {**SHIPPED, "components": [{"type": "body", "parameters": [{"type": "text", "text": "{% if %}"}]}]},
            ["content.components[0].parameters[0].text"],
        ),
        (
            {**SHIPPED, "components": [{"type": "button", "index": 0, "parameters": [{"type": "text", "text": "x"}]}]},
            ["content.components[0]"],
        ),
        ({**SHIPPED, "components": [{"type": "footer", "parameters": []}]}, ["content.components[0].type"]),
    ]
    for content, paths in bad:
        response = project.post("/api/v1/templates", json={"name": "t", "channel": "whatsapp", "content": content})
        assert response.status_code == 400, (content, response.text)
        assert [d["path"] for d in response.json()["error"]["details"]][: len(paths)] == paths, response.text
    assert project.get("/api/v1/templates").json()["items"] == []

    created = project.post("/api/v1/templates", json={"name": "shipped", "channel": "whatsapp", "content": SHIPPED})
    assert created.status_code == 201, created.text
    template_id = created.json()["id"]
    assert created.json()["content"]["components"][2]["parameters"] == [{"type": "payload", "payload": "OK"}]
    stack.ingest.post("/v1/identify", json={"userId": "ada", "traits": {"first_name": "Ada"}})
    stack.settle()
    shown = project.post(
        f"/api/v1/templates/{template_id}/preview", json={"contact_id": "ada", "event": {"order": "A-1"}}
    )
    assert shown.status_code == 200, shown.text
    assert shown.json() == {
        "channel": "whatsapp",
        "rendered": {
            "template_name": "order_shipped",
            "language": "en_US",
            "components": [
                {"type": "header", "parameters": [{"type": "text", "text": "A-1"}]},
                {"type": "body", "parameters": [{"type": "text", "text": "Ada"}]},
                {
                    "type": "button",
                    "sub_type": "quick_reply",
                    "index": "0",
                    "parameters": [{"type": "payload", "payload": "OK"}],
                },
            ],
        },
    }
    # An empty rendered parameter is a render error at its path (WhatsApp refuses empty parameters).
    empty = project.post(f"/api/v1/templates/{template_id}/preview", json={"contact_id": "ada"})
    assert empty.status_code == 400, empty.text
    assert [d["path"] for d in empty.json()["error"]["details"]] == ["content.components[0].parameters[0].text"]

    text = project.post("/api/v1/templates", json={"name": "t", "channel": "whatsapp", "content": {"text": "Hi"}})
    assert text.status_code == 201, text.text
    sms = project.post("/api/v1/templates", json={"name": "s", "channel": "sms", "content": {"body": "Hi"}})
    journey = {
        "name": "j",
        "trigger": {"type": "event", "event": "e"},
        "start": "message",
        "steps": {
            "message": {"type": "send", "channel": "whatsapp", "template_id": sms.json()["id"], "next": "done"},
            "done": {"type": "exit"},
        },
    }
    made = project.post("/api/v1/journeys", json=journey).json()["id"]
    refused = project.post(f"/api/v1/journeys/{made}/publish")
    assert refused.status_code == 400, refused.text
    assert [d["path"] for d in refused.json()["error"]["details"]] == ["steps.message.template_id"]
    journey["steps"]["message"]["template_id"] = template_id  # type: ignore[index]
    assert project.put(f"/api/v1/journeys/{made}", json=journey).status_code == 200
    assert project.post(f"/api/v1/journeys/{made}/publish").status_code == 200
