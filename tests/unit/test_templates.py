"""Templates: the create contract (channel decides the content, errors name the field and line)
and rendering (merge tags over contact/event/journey, escaping, limits)."""

from __future__ import annotations

import itertools
import json
from datetime import UTC, datetime
from typing import Any

import pytest
from pydantic import ValidationError

from spotzee.domain.templates import (
    RenderLimits,
    TemplateRenderError,
    contact_variables,
    preview,
    render_email,
    render_json,
    render_string,
    render_webhook,
    template_variables,
)
from spotzee.errors import InvalidInput
from spotzee.schemas.contact_models import ContactState
from spotzee.schemas.template_models import (
    EmailContent,
    RenderedEmail,
    RenderedWebhook,
    TemplateCreate,
    TemplateDefinition,
    TemplatePreviewRequest,
    TemplatePublic,
    WebhookContent,
)

NOW = datetime(2025, 3, 1, 12, 0, tzinfo=UTC)

EMAIL: dict[str, Any] = {
    "name": "Welcome",
    "channel": "email",
    "content": {
        "subject": 'Welcome, {{ contact.first_name | default: "there" }}!',
        "html": "<p>Hi {{ contact.first_name }}, you bought {{ event.product }}.</p>",
        "text": "Hi {{ contact.first_name }}, you bought {{ event.product }}.",
        "from": "Spotzee Team <team@example.com>",
        "reply_to": "help@example.com",
    },
}
WEBHOOK: dict[str, Any] = {
    "name": "CRM sync",
    "channel": "webhook",
    "content": {
        "method": "POST",
        "url": "https://crm.example.com/contacts/{{ contact.id }}",
        "headers": {"Authorization": "Bearer {{ journey.token }}"},
        "body": '{"name": {{ contact.first_name | json }}, "step": {{ journey.step | json }}}',
    },
}


def contact(**traits: Any) -> ContactState:
    return ContactState(
        project_id="p1", id="c1", email="ann@example.com", traits=traits, created_at=NOW, updated_at=NOW
    )


def error_paths(body: dict[str, Any]) -> dict[str, str]:
    with pytest.raises(ValidationError) as caught:
        TemplateCreate.model_validate(body)
    return {".".join(str(part) for part in error["loc"]): error["msg"] for error in caught.value.errors()}


def with_content(base: dict[str, Any], **changes: Any) -> dict[str, Any]:
    return {**base, "content": {**base["content"], **changes}}


# -- the create contract ----------------------------------------------------------------------------


def test_an_email_template_round_trips_with_the_from_key() -> None:
    created = TemplateCreate.model_validate(EMAIL)
    assert isinstance(created.content, EmailContent)
    assert created.content.from_ == "Spotzee Team <team@example.com>"
    dumped = json.loads(created.model_dump_json())
    assert set(dumped) == {"name", "channel", "content"}
    assert dumped["content"]["from"] == "Spotzee Team <team@example.com>"
    assert "from_" not in dumped["content"]
    assert TemplateCreate.model_validate(dumped) == created


def test_a_webhook_template_parses() -> None:
    created = TemplateCreate.model_validate(WEBHOOK)
    assert isinstance(created.content, WebhookContent)
    assert created.content.headers == {"Authorization": "Bearer {{ journey.token }}"}


def test_content_of_the_other_channel_is_rejected_at_content_fields() -> None:
    errors = error_paths({**WEBHOOK, "content": EMAIL["content"]})
    assert "content.url" in errors
    assert {"content.subject", "content.html", "content.from"} <= set(errors)
    errors = error_paths({**EMAIL, "content": WEBHOOK["content"]})
    assert {"content.subject", "content.from", "content.url"} <= set(errors)


def test_an_unknown_channel_is_reported_once_at_channel() -> None:
    assert list(error_paths({**EMAIL, "channel": "carrier-pigeon"})) == ["channel"]


def test_liquid_syntax_errors_name_the_field_and_line() -> None:
    errors = error_paths(with_content(EMAIL, html="<p>ok</p>\n<p>{% if %}</p>"))
    assert list(errors) == ["content.html"]
    assert "line 2" in errors["content.html"]


def test_unknown_filters_and_file_tags_are_rejected_at_create_time() -> None:
    errors = error_paths(with_content(EMAIL, text="Hi\n\n{{ contact.first_name | shout }}"))
    assert "unknown filter 'shout'" in errors["content.text"]
    assert "line 3" in errors["content.text"]
    errors = error_paths(with_content(WEBHOOK, body="{% include 'secrets' %}"))
    assert "include" in errors["content.body"]


@pytest.mark.parametrize(
    ("changes", "path"),
    [
        ({"from": "not an address"}, "content.from"),
        ({"from": "a@example.com, b@example.com"}, "content.from"),
        ({"reply_to": "x@localhost"}, "content.reply_to"),
        ({"html": None, "text": None}, "content"),
        ({"subject": ""}, "content.subject"),
    ],
)
def test_invalid_email_content_is_located(changes: dict[str, Any], path: str) -> None:
    assert path in error_paths(with_content(EMAIL, **changes))


@pytest.mark.parametrize(
    ("changes", "path"),
    [
        ({"url": "{{ contact.url }}"}, "content.url"),  # the scheme must be written out
        ({"url": "file:///etc/passwd"}, "content.url"),
        ({"method": "TRACE"}, "content.method"),
        ({"method": "GET"}, "content"),  # with a body
        ({"headers": {"X-Spotzee-Signature": "forged"}}, "content.headers.X-Spotzee-Signature.[key]"),
        ({"headers": {"Host": "internal"}}, "content.headers.Host.[key]"),
        ({"headers": {"X-A": "one\r\nX-B: two"}}, "content.headers.X-A"),
    ],
)
def test_invalid_webhook_content_is_located(changes: dict[str, Any], path: str) -> None:
    assert path in error_paths(with_content(WEBHOOK, **changes))


def test_stored_and_public_models_keep_the_content_model_of_their_channel() -> None:
    created = TemplateCreate.model_validate(EMAIL)
    stored = TemplateDefinition(
        id="t1",
        project_id="p1",
        name=created.name,
        channel=created.channel,
        content=created.content,
        version=1,
        created_at=NOW,
        updated_at=NOW,
    )
    again = TemplateDefinition.model_validate_json(stored.model_dump_json())
    assert again == stored
    public = TemplatePublic.from_definition(again)
    assert json.loads(public.model_dump_json())["content"]["from"] == "Spotzee Team <team@example.com>"


# -- rendering --------------------------------------------------------------------------------------


def test_merge_tags_with_default_event_and_journey() -> None:
    content = TemplateCreate.model_validate(EMAIL).content
    assert isinstance(content, EmailContent)
    variables = template_variables(contact(first_name="Ann"), event={"product": "Boots"}, journey={"name": "J"})
    rendered = render_email(content, variables)
    assert rendered == RenderedEmail(
        subject="Welcome, Ann!",
        html="<p>Hi Ann, you bought Boots.</p>",
        text="Hi Ann, you bought Boots.",
        from_="Spotzee Team <team@example.com>",
        reply_to="help@example.com",
    )
    anonymous = render_email(content, template_variables(contact()))
    assert anonymous.subject == "Welcome, there!"
    assert anonymous.text == "Hi , you bought ."  # undefined renders empty


def test_contact_fields_and_traits_side_by_side() -> None:
    values = contact_variables(contact(first_name="Ann", email="old@example.com", plan={"tier": "gold"}))
    assert values["first_name"] == "Ann"
    assert values["email"] == "ann@example.com"  # the first-class field wins ...
    traits = values["traits"]
    assert isinstance(traits, dict)
    assert traits["email"] == "old@example.com"  # ... the trait stays reachable
    source = "{{ contact.id }} {{ contact.plan.tier }} {{ contact.traits.email }} {{ contact.created_at | date: '%Y' }}"
    variables = template_variables(contact(plan={"tier": "gold"}, email="old@example.com"))
    assert render_string(source, variables) == "c1 gold old@example.com 2025"


def test_html_escapes_merged_values_and_text_does_not() -> None:
    content = EmailContent(
        subject="{{ event.note }}", html="<p>{{ event.note }}</p>", text="{{ event.note }}", from_="a@example.com"
    )
    rendered = render_email(content, template_variables(event={"note": "<b>Tom & Jerry</b>"}))
    assert rendered.html == "<p>&lt;b&gt;Tom &amp; Jerry&lt;/b&gt;</p>"
    assert rendered.text == "<b>Tom & Jerry</b>"
    assert rendered.subject == "<b>Tom & Jerry</b>"


def test_line_breaks_in_a_merged_subject_become_spaces() -> None:
    content = EmailContent(subject="Hi {{ event.name }}", text="x", from_="a@example.com")
    rendered = render_email(content, template_variables(event={"name": "Ann\r\nBcc: evil@example.com"}))
    assert rendered.subject == "Hi Ann Bcc: evil@example.com"


def test_webhook_rendering_and_json_bodies() -> None:
    content = TemplateCreate.model_validate(WEBHOOK).content
    assert isinstance(content, WebhookContent)
    variables = template_variables(contact(first_name='Ann "the" Admin'), journey={"token": "t0k", "step": 3})
    rendered = render_webhook(content, variables)
    assert rendered == RenderedWebhook(
        method="POST",
        url="https://crm.example.com/contacts/c1",
        headers={"Authorization": "Bearer t0k"},
        body='{"name": "Ann \\"the\\" Admin", "step": 3}',
    )
    assert rendered.body is not None
    assert json.loads(rendered.body) == {"name": 'Ann "the" Admin', "step": 3}
    missing = render_webhook(content, template_variables(contact()))
    assert missing.body is not None
    assert json.loads(missing.body) == {"name": None, "step": None}


def test_a_merged_header_value_cannot_add_a_header() -> None:
    content = WebhookContent(url="https://h.example.com/", headers={"X-Name": "{{ event.name }}"})
    with pytest.raises(TemplateRenderError) as caught:
        render_webhook(content, template_variables(event={"name": "a\r\nX-Admin: yes"}))
    assert caught.value.field == "content.headers.X-Name"


def test_a_rendered_url_must_stay_absolute_http() -> None:
    content = WebhookContent(url="https://{{ event.host }}/hook")
    with pytest.raises(TemplateRenderError) as caught:
        render_webhook(content, template_variables(event={}))
    assert caught.value.field == "content.url"


def test_output_size_is_limited_across_the_whole_message() -> None:
    limits = RenderLimits(max_output_bytes=100)
    content = EmailContent(subject="s", html="{{ event.a }}", text="{{ event.a }}", from_="a@example.com")
    render_email(content, template_variables(event={"a": "x" * 45}), limits)  # 1 + 45 + 45 bytes fit
    with pytest.raises(TemplateRenderError) as caught:
        render_email(content, template_variables(event={"a": "x" * 60}), limits)
    assert caught.value.field == "content.text"
    assert "output larger than 100 bytes" in caught.value.reason
    with pytest.raises(TemplateRenderError, match="output larger"):
        render_string("{% for i in (1..50) %}xxx{% endfor %}", {}, limits)


def test_loop_iterations_are_limited() -> None:
    limits = RenderLimits(max_loop_iterations=100)
    assert render_string("{% for i in (1..100) %}.{% endfor %}", {}, limits) == "." * 100
    nested = "{% for i in (1..20) %}{% for j in (1..20) %}{% endfor %}{% endfor %}"
    with pytest.raises(TemplateRenderError) as caught:
        render_string(nested, {}, limits, field="steps.2.value")
    assert caught.value.field == "steps.2.value"
    assert "loop iterations" in caught.value.reason


def test_assigned_variables_are_limited() -> None:
    doubling = "{% assign s = 'xxxxxxxxxx' %}{% for i in (1..30) %}{% assign s = s | append: s %}{% endfor %}"
    with pytest.raises(TemplateRenderError, match="variables larger"):
        render_string(doubling, {}, RenderLimits(max_local_bytes=10_000))


def test_the_time_budget_stops_a_render() -> None:
    ticks = itertools.count()  # a clock that advances one second per reading

    def clock() -> float:
        return float(next(ticks))

    with pytest.raises(TemplateRenderError, match="longer than 5s"):
        render_string("{% for i in (1..100) %}{{ i }}{% endfor %}", {}, RenderLimits(timeout=5), clock=clock)


def test_a_failing_filter_is_a_render_error_with_its_line() -> None:
    with pytest.raises(TemplateRenderError) as caught:
        render_string("ok\n{{ 1 | divided_by: event.zero }}", template_variables(event={"zero": 0}))
    error = caught.value
    assert isinstance(error, InvalidInput)
    assert error.line == 2
    assert error.details == [{"path": "value", "reason": error.reason, "line": 2}]


def test_render_json_renders_every_string() -> None:
    value = {"plan": "{{ event.plan | upcase }}", "tags": ["{{ contact.first_name }}", 3], "n": None}
    rendered = render_json(value, template_variables(contact(first_name="Ann"), event={"plan": "pro"}))
    assert rendered == {"plan": "PRO", "tags": ["Ann", 3], "n": None}
    with pytest.raises(TemplateRenderError) as caught:
        render_json({"a": ["{% if %}"]}, {}, field="steps.1.traits")
    assert caught.value.field == "steps.1.traits.a.0"


def test_preview_renders_for_a_contact() -> None:
    created = TemplateCreate.model_validate(EMAIL)
    definition = TemplateDefinition(
        id="t1",
        project_id="p1",
        name=created.name,
        channel=created.channel,
        content=created.content,
        version=1,
        created_at=NOW,
        updated_at=NOW,
    )
    request = TemplatePreviewRequest.model_validate({"contact_id": 42, "event": {"product": "Hat"}})
    assert request.contact_id == "42"
    result = preview(definition, contact(first_name="Bo"), request)
    assert result.channel == "email"
    assert isinstance(result.rendered, RenderedEmail)
    assert result.rendered.text == "Hi Bo, you bought Hat."


def test_liquid_template_fields_for_other_schemas() -> None:
    from pydantic import TypeAdapter

    from spotzee.schemas.template_models import LiquidTemplate

    adapter = TypeAdapter[str](LiquidTemplate)
    assert adapter.validate_python("{{ contact.plan | upcase }}") == "{{ contact.plan | upcase }}"
    with pytest.raises(ValidationError, match="unknown filter"):
        adapter.validate_python("{{ contact.plan | nope }}")
