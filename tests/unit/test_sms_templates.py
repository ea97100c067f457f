"""SMS templates: the ``sms`` content contract (``{"body"}``, Liquid checked with the field path),
rendering (merge tags, no escaping, limits) and the preview's encoding and segment count."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

import pytest
from pydantic import ValidationError

from spotzee.domain.templates import TemplateRenderError, check_content, preview, render_sms, template_variables
from spotzee.errors import InvalidInput
from spotzee.schemas.contact_models import ContactState
from spotzee.schemas.template_models import (
    MAX_SMS_CHARS,
    RenderedSms,
    SmsContent,
    TemplateCreate,
    TemplateDefinition,
    TemplatePreviewRequest,
    TemplatePublic,
)

NOW = datetime(2026, 3, 1, 12, 0, tzinfo=UTC)
SMS: dict[str, Any] = {
    "name": "Code",
    "channel": "sms",
    "content": {"body": "Hi {{ contact.first_name | default: 'there' }} <3, your code is {{ event.code }}"},
}


def contact(**traits: Any) -> ContactState:
    return ContactState(project_id="p1", id="c1", phone="+447700900123", traits=traits, created_at=NOW, updated_at=NOW)


def errors(body: dict[str, Any]) -> dict[str, str]:
    with pytest.raises(ValidationError) as caught:
        TemplateCreate.model_validate(body)
    return {".".join(str(p) for p in e["loc"]): e["msg"] for e in caught.value.errors()}


def test_an_sms_template_is_a_body() -> None:
    created = TemplateCreate.model_validate(SMS)
    assert isinstance(created.content, SmsContent)
    assert created.content.body == SMS["content"]["body"]


def test_bad_sms_content_names_the_field() -> None:
    assert errors({**SMS, "content": {}}) == {"content.body": "Field required"}
    assert errors({**SMS, "content": {"body": ""}})["content.body"].startswith("String should have at least 1")
    assert errors({**SMS, "content": {"body": "x", "subject": "s"}}) == {
        "content.subject": "Extra inputs are not permitted"
    }
    broken = errors({**SMS, "content": {"body": "Hi {{ contact.name "}})
    assert list(broken) == ["content.body"]
    assert broken["content.body"].startswith("invalid Liquid template: line 1:")
    # an email's content is not an SMS's
    assert "content.body" in errors({**SMS, "content": {"subject": "s", "text": "t", "from": "a@example.com"}})


def test_check_content_parses_the_body() -> None:
    with pytest.raises(InvalidInput) as caught:
        check_content(SmsContent.model_construct(body="{% if %}"))
    assert caught.value.details[0]["path"] == "content.body"


def test_render_merges_without_escaping_and_reports_size() -> None:
    content = SmsContent.model_validate(SMS["content"])
    rendered = render_sms(content, template_variables(contact(first_name="Ada"), event={"code": "1234"}))
    assert rendered == RenderedSms(body="Hi Ada <3, your code is 1234", encoding="GSM-7", segments=1)
    unicode = render_sms(content, template_variables(contact(first_name="Zoë"), event={"code": "1"}))
    assert unicode.encoding == "UCS-2"
    assert unicode.segments == 1


def test_an_empty_or_too_long_rendered_body_is_a_render_error() -> None:
    with pytest.raises(TemplateRenderError) as empty:
        render_sms(SmsContent(body="  {{ contact.nothing }} "), template_variables(contact()))
    assert (empty.value.field, empty.value.reason) == ("content.body", "rendered SMS body is empty")
    too_long = SmsContent(body="{% for i in (1..2000) %}x{% endfor %}")
    with pytest.raises(TemplateRenderError) as long:
        render_sms(too_long, template_variables(contact()))
    assert long.value.reason == f"rendered SMS body longer than {MAX_SMS_CHARS} characters"


def test_preview_reports_encoding_and_segments() -> None:
    definition = TemplateDefinition(
        id="tpl_1",
        project_id="p1",
        name="Long",
        channel="sms",
        content=SmsContent(body="{% for i in (1..4) %}{{ contact.first_name }} says hello to you all. {% endfor %}€"),
        version=1,
        created_at=NOW,
        updated_at=NOW,
    )
    shown = preview(definition, contact(first_name="Ada"), TemplatePreviewRequest(contact_id="c1"))
    assert shown.channel == "sms"
    assert isinstance(shown.rendered, RenderedSms)
    body = shown.rendered.body
    assert body.endswith("€")
    assert len(body) == 4 * len("Ada says hello to you all. ") + 1
    # 109 characters + the euro sign's escape: one GSM-7 segment
    assert (shown.rendered.encoding, shown.rendered.segments) == ("GSM-7", 1)
    again = TemplatePublic.from_definition(definition).model_dump(mode="json")
    assert again["content"] == {"body": definition.content.body}  # type: ignore[union-attr]
