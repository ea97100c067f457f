"""WhatsApp templates: the ``whatsapp`` content contract (an approved template's name, language and
components in Meta's shape, strictly; or a session ``text``), Liquid in parameter values checked
with the field path, rendering (merge tags, trimmed, empty or too long refused) and the preview."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

import pytest
from pydantic import ValidationError

from spotzee.domain.templates import TemplateRenderError, check_content, preview, render_whatsapp, template_variables
from spotzee.errors import InvalidInput
from spotzee.schemas.contact_models import ContactState
from spotzee.schemas.template_models import (
    RenderedWhatsAppTemplate,
    RenderedWhatsAppText,
    TemplateCreate,
    TemplateDefinition,
    TemplatePreviewRequest,
    TemplatePublic,
    WhatsAppTemplateContent,
    WhatsAppTextContent,
)

NOW = datetime(2026, 3, 1, 12, 0, tzinfo=UTC)
COMPONENTS: list[dict[str, Any]] = [
    {"type": "header", "parameters": [{"type": "text", "text": "{{ event.order }}"}]},
    {
        "type": "body",
        "parameters": [
            {"type": "text", "text": "{{ contact.first_name | default: 'there' }}"},
            {"type": "text", "text": "{{ event.order }}"},
        ],
    },
    {"type": "button", "sub_type": "url", "index": 0, "parameters": [{"type": "text", "text": "{{ event.order }}"}]},
    {"type": "button", "sub_type": "quick_reply", "index": 1, "parameters": [{"type": "payload", "payload": "STOP"}]},
]
TEMPLATE: dict[str, Any] = {
    "name": "Shipped",
    "channel": "whatsapp",
    "content": {"template_name": "order_shipped", "language": "en_US", "components": COMPONENTS},
}


def contact(**traits: Any) -> ContactState:
    return ContactState(project_id="p1", id="c1", phone="+447700900123", traits=traits, created_at=NOW, updated_at=NOW)


def errors(content: dict[str, Any]) -> dict[str, str]:
    with pytest.raises(ValidationError) as caught:
        TemplateCreate.model_validate({"name": "t", "channel": "whatsapp", "content": content})
    return {".".join(str(p) for p in e["loc"]): e["msg"] for e in caught.value.errors()}


def component(**fields: Any) -> dict[str, Any]:
    return {"template_name": "t", "language": "en", "components": [fields]}


def test_the_two_forms_of_whatsapp_content() -> None:
    template = TemplateCreate.model_validate(TEMPLATE)
    assert isinstance(template.content, WhatsAppTemplateContent)
    assert [c.type for c in template.content.components] == ["header", "body", "button", "button"]
    text = TemplateCreate.model_validate({"name": "t", "channel": "whatsapp", "content": {"text": "Hi {{ x }}"}})
    assert isinstance(text.content, WhatsAppTextContent)
    # What the API shows is what was given (no empty fields added to a parameter).
    public = TemplateCreate.model_validate(TEMPLATE).model_dump(mode="json")["content"]
    assert public["components"][3]["parameters"] == [{"type": "payload", "payload": "STOP"}]
    assert public["components"][1]["parameters"][0] == COMPONENTS[1]["parameters"][0]


@pytest.mark.parametrize(
    ("content", "path", "reason"),
    [
        ({}, "content.template_name", "Field required"),
        ({"template_name": "Order Shipped", "language": "en"}, "content.template_name", "should match pattern"),
        ({"template_name": "t", "language": "English"}, "content.language", "should match pattern"),
        ({"template_name": "t", "language": "en", "extra": 1}, "content.extra", "Extra inputs"),
        ({"text": "hi", "template_name": "t"}, "content.template_name", "Extra inputs"),
        ({"text": ""}, "content.text", "at least 1 character"),
        ({"text": "{{ x "}, "content.text", "invalid Liquid template: line 1"),
        (component(type="footer", parameters=[{"type": "text", "text": "x"}]), "content.components.0.type", "Input"),
        (component(type="body", parameters=[]), "content.components.0.parameters", "at least 1 item"),
        (component(type="body", parameters=[{"type": "image"}]), "content.components.0.parameters.0.type", "Input"),
        (
            component(type="body", parameters=[{"type": "text", "text": "{{ x "}]),
            "content.components.0.parameters.0.text",
            "invalid Liquid template",
        ),
        (
            component(type="body", parameters=[{"type": "text", "payload": "x"}]),
            "content.components.0.parameters.0",
            "a 'text' parameter needs 'text'",
        ),
        (
            component(type="body", parameters=[{"type": "text", "text": "a", "payload": "b"}]),
            "content.components.0.parameters.0",
            "has no 'payload'",
        ),
        (
            component(type="body", index=0, parameters=[{"type": "text", "text": "x"}]),
            "content.components.0",
            "no sub_type or index",
        ),
        (
            component(type="header", parameters=[{"type": "text", "text": "x"}] * 2),
            "content.components.0",
            "one parameter",
        ),
        (
            component(type="body", parameters=[{"type": "payload", "payload": "x"}]),
            "content.components.0",
            "text parameters only",
        ),
        (
            component(type="button", parameters=[{"type": "text", "text": "x"}]),
            "content.components.0",
            "needs sub_type",
        ),
        (
            component(type="button", sub_type="quick_reply", index=0, parameters=[{"type": "text", "text": "x"}]),
            "content.components.0",
            "takes one 'payload' parameter",
        ),
        (
            component(type="button", sub_type="url", index=10, parameters=[{"type": "text", "text": "x"}]),
            "content.components.0.index",
            "less than or equal to 9",
        ),
        (
            component(type="button", sub_type="call", index=0, parameters=[{"type": "text", "text": "x"}]),
            "content.components.0.sub_type",
            "Input should be",
        ),
    ],
)
def test_bad_whatsapp_content_names_the_field(content: dict[str, Any], path: str, reason: str) -> None:
    found = errors(content)
    assert path in found, found
    assert reason in found[path], found


def test_a_component_or_button_given_twice_is_refused() -> None:
    body = {"type": "body", "parameters": [{"type": "text", "text": "x"}]}
    found = errors({"template_name": "t", "language": "en", "components": [body, body]})
    assert found == {"content": "Value error, the body component is given twice"}
    button = {"type": "button", "sub_type": "url", "index": 0, "parameters": [{"type": "text", "text": "x"}]}
    found = errors({"template_name": "t", "language": "en", "components": [button, button]})
    assert found == {"content": "Value error, the button 0 is given twice"}


def test_check_content_parses_every_parameter_with_its_path() -> None:
    content = WhatsAppTemplateContent.model_construct(
        template_name="t",
        language="en",
        components=[
            TemplateCreate.model_validate(TEMPLATE).content.components[1],  # type: ignore[union-attr]
        ],
    )
    check_content(content)  # valid: nothing raised
    broken = TemplateCreate.model_validate(TEMPLATE).content
    assert isinstance(broken, WhatsAppTemplateContent)
    broken.components[1].parameters[1].text = "{{ event.order "
    with pytest.raises(InvalidInput) as caught:
        check_content(broken)
    assert [d["path"] for d in caught.value.details] == ["content.components[1].parameters[1].text"]
    with pytest.raises(InvalidInput) as caught:
        check_content(WhatsAppTextContent.model_construct(text="{% if %}"))
    assert [d["path"] for d in caught.value.details] == ["content.text"]


def test_render_fills_the_parameters_in_metas_shape() -> None:
    content = TemplateCreate.model_validate(TEMPLATE).content
    assert isinstance(content, WhatsAppTemplateContent)
    variables = template_variables(contact(first_name="Ada <3"), event={"order": " A-1 "})
    rendered = render_whatsapp(content, variables)
    assert rendered == RenderedWhatsAppTemplate(
        template_name="order_shipped",
        language="en_US",
        components=[
            {"type": "header", "parameters": [{"type": "text", "text": "A-1"}]},
            {"type": "body", "parameters": [{"type": "text", "text": "Ada <3"}, {"type": "text", "text": "A-1"}]},
            {"type": "button", "sub_type": "url", "index": "0", "parameters": [{"type": "text", "text": "A-1"}]},
            {
                "type": "button",
                "sub_type": "quick_reply",
                "index": "1",
                "parameters": [{"type": "payload", "payload": "STOP"}],
            },
        ],
    )
    text = render_whatsapp(WhatsAppTextContent(text="  Hi {{ contact.first_name }} \n"), variables)
    assert text == RenderedWhatsAppText(text="Hi Ada <3")


def test_an_empty_or_too_long_rendered_value_is_a_render_error() -> None:
    content = TemplateCreate.model_validate(TEMPLATE).content
    assert isinstance(content, WhatsAppTemplateContent)
    with pytest.raises(TemplateRenderError) as caught:
        render_whatsapp(content, template_variables(contact(), event={}))
    assert caught.value.field == "content.components[0].parameters[0].text"
    assert "empty" in caught.value.reason
    with pytest.raises(TemplateRenderError) as caught:
        render_whatsapp(content, template_variables(contact(), event={"order": "x" * 1025}))
    assert caught.value.field == "content.components[0].parameters[0].text"
    assert "longer than 1024" in caught.value.reason
    with pytest.raises(TemplateRenderError) as caught:
        render_whatsapp(WhatsAppTextContent(text="{{ event.t }}"), template_variables(event={"t": "y" * 4097}))
    assert (caught.value.field, caught.value.reason) == (
        "content.text",
        "rendered WhatsApp text longer than 4096 characters",
    )
    with pytest.raises(TemplateRenderError) as caught:
        render_whatsapp(WhatsAppTextContent(text="{{ event.t }}"), template_variables(event={}))
    assert caught.value.field == "content.text"


def test_preview_renders_the_parameters_and_the_definition_round_trips() -> None:
    stored = TemplateCreate.model_validate(TEMPLATE).model_dump(mode="json")["content"]
    definition = TemplateDefinition.model_validate(
        {
            "id": "tpl_1",
            "project_id": "p1",
            "name": "Shipped",
            "channel": "whatsapp",
            "content": stored,
            "version": 1,
            "created_at": NOW,
            "updated_at": NOW,
        }
    )
    assert isinstance(definition.content, WhatsAppTemplateContent)
    request = TemplatePreviewRequest(contact_id="c1", event={"order": "B-2"})
    shown = preview(definition, contact(first_name="Zoë"), request).model_dump(mode="json")
    assert shown["channel"] == "whatsapp"
    assert shown["rendered"]["components"][1]["parameters"] == [
        {"type": "text", "text": "Zoë"},
        {"type": "text", "text": "B-2"},
    ]
    again = TemplateDefinition.model_validate_json(definition.model_dump_json())
    assert again == definition
    assert TemplatePublic.from_definition(definition).model_dump(mode="json")["content"] == stored
