"""Push templates: the ``push`` content contract (title, body, image, deep_link, data, badge,
sound, ttl; Liquid checked with the field path), rendering and preview."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

import pytest
from pydantic import ValidationError

from spotzee.domain.templates import TemplateRenderError, check_content, preview, render_push, template_variables
from spotzee.errors import InvalidInput
from spotzee.schemas.contact_models import ContactState
from spotzee.schemas.template_models import (
    MAX_PUSH_DATA_ENTRIES,
    MAX_PUSH_TTL,
    PushContent,
    RenderedPush,
    TemplateCreate,
    TemplateDefinition,
    TemplatePreviewRequest,
    TemplatePublic,
)

NOW = datetime(2026, 3, 1, 12, 0, tzinfo=UTC)
PUSH: dict[str, Any] = {
    "name": "Order",
    "channel": "push",
    "content": {
        "title": "Hi {{ contact.first_name | default: 'there' }}",
        "body": "Order {{ event.order_id }} <shipped>",
        "image": "https://cdn.example.com/{{ event.order_id }}.png",
        "deep_link": "shop://orders/{{ event.order_id }}",
        "data": {"order_id": "{{ event.order_id }}", "kind": "shipping"},
        "badge": 3,
        "sound": "default",
        "ttl": 3600,
    },
}


def contact(**traits: Any) -> ContactState:
    return ContactState(project_id="p1", id="c1", traits=traits, created_at=NOW, updated_at=NOW)


def errors(body: dict[str, Any]) -> dict[str, str]:
    with pytest.raises(ValidationError) as caught:
        TemplateCreate.model_validate(body)
    return {".".join(str(p) for p in e["loc"]): e["msg"] for e in caught.value.errors()}


def with_content(**changes: Any) -> dict[str, Any]:
    return {**PUSH, "content": {**PUSH["content"], **changes}}


def test_a_push_template_round_trips_as_stored_and_public() -> None:
    created = TemplateCreate.model_validate(PUSH)
    assert isinstance(created.content, PushContent)
    stored = TemplateDefinition(
        id="t1",
        project_id="p1",
        name="Order",
        channel="push",
        content=created.content,
        version=1,
        created_at=NOW,
        updated_at=NOW,
    )
    again = TemplateDefinition.model_validate_json(stored.model_dump_json())
    assert again.content == created.content
    public = TemplatePublic.from_definition(again)
    assert public.model_dump(mode="json")["content"] == PUSH["content"]


def test_bad_push_content_names_the_field() -> None:
    assert set(errors({**PUSH, "content": {"body": "b"}})) == {"content.title"}
    assert set(errors(with_content(title="a\nb"))) == {"content.title"}
    assert list(errors(with_content(body="{{ x "))) == ["content.body"]
    assert set(errors(with_content(badge=-1))) == {"content.badge"}
    assert set(errors(with_content(ttl=MAX_PUSH_TTL + 1))) == {"content.ttl"}
    assert set(errors(with_content(image="ftp://x/y.png"))) == {"content.image"}
    assert set(errors(with_content(data={"google.x": "v"}))) == {"content.data.google.x.[key]"}
    assert set(errors(with_content(data={"k": 5}))) == {"content.data.k"}
    too_many = {f"k{i}": "v" for i in range(MAX_PUSH_DATA_ENTRIES + 1)}
    assert set(errors(with_content(data=too_many))) == {"content.data"}
    assert set(errors(with_content(data={"k": "{% if %}"}))) == {"content.data.k"}
    assert "content.extra" in errors(with_content(extra=1))


def test_deferred_parse_checks_every_push_field() -> None:
    stored = TemplateDefinition.model_validate(
        {
            "id": "t",
            "project_id": "p",
            "name": "n",
            "channel": "push",
            "version": 1,
            "created_at": NOW.isoformat(),
            "updated_at": NOW.isoformat(),
            "content": {"title": "t", "body": "b", "data": {"k": "{{ x "}},
        }
    )
    with pytest.raises(InvalidInput) as caught:
        check_content(stored.content)
    assert [d["path"] for d in caught.value.details] == ["content.data.k"]


def test_render_merges_every_field_without_escaping() -> None:
    content = TemplateCreate.model_validate(PUSH).content
    assert isinstance(content, PushContent)
    variables = template_variables(contact(first_name="Ada"), event={"order_id": "A-7"})
    rendered = render_push(content, variables)
    assert rendered == RenderedPush(
        title="Hi Ada",
        body="Order A-7 <shipped>",
        image="https://cdn.example.com/A-7.png",
        deep_link="shop://orders/A-7",
        data={"order_id": "A-7", "kind": "shipping"},
        badge=3,
        sound="default",
        ttl=3600,
    )


def test_render_errors_name_the_field() -> None:
    content = PushContent.model_validate({"title": "{{ event.t }}", "body": "b"})
    with pytest.raises(TemplateRenderError) as caught:
        render_push(content, template_variables(contact(), event={"t": "  "}))
    assert caught.value.field == "content.title"
    content = PushContent.model_validate({"title": "t", "body": "b", "image": "https://{{ event.h }}"})
    with pytest.raises(TemplateRenderError) as caught:
        render_push(content, template_variables(contact(), event={"h": ""}))
    assert caught.value.field == "content.image"


def test_preview_of_a_push_template() -> None:
    created = TemplateCreate.model_validate(PUSH)
    stored = TemplateDefinition(
        id="t1",
        project_id="p1",
        name="Order",
        channel="push",
        content=created.content,
        version=1,
        created_at=NOW,
        updated_at=NOW,
    )
    shown = preview(stored, contact(first_name="Bo"), TemplatePreviewRequest(contact_id="c1", event={"order_id": "9"}))
    assert shown.channel == "push"
    assert isinstance(shown.rendered, RenderedPush)
    assert shown.rendered.title == "Hi Bo"
    assert shown.rendered.data["order_id"] == "9"
