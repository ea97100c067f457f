"""Template rendering: Liquid merge tags over ``contact``, ``event`` and ``journey``, within limits.

Pure: no I/O. Undefined variables render as nothing (so ``{{ contact.first_name | default: "there" }}``
works); every other problem -- a failing filter, a limit reached -- raises ``TemplateRenderError``
naming the field, and the caller sends nothing.

Limits (``RenderLimits``) bound one rendered message: the bytes of output of all its fields
together, loop iterations, the bytes held in ``assign``/``capture`` variables, and wall time. HTML
bodies are rendered with auto-escaping (``{{ event.note }}`` cannot inject markup; ``| safe`` opts
out); subject, text, webhook, SMS and WhatsApp fields are not escaped.
"""

from __future__ import annotations

import re
import time
from collections.abc import Callable, Mapping
from functools import lru_cache
from typing import Any, Final
from urllib.parse import urlsplit

from liquid import BoundTemplate
from liquid.exceptions import (
    LiquidError,
    LocalNamespaceLimitError,
    LoopIterationLimitError,
    OutputStreamLimitError,
)
from liquid.output import LimitedStringIO
from pydantic import ConfigDict, Field

from spotzee.domain.sms_segments import sms_size
from spotzee.domain.template_bounds import BoundedEnvironment, BudgetContext, RenderTimeout, ValueLimitError
from spotzee.errors import InvalidInput
from spotzee.schemas.common import JSONObject, Model
from spotzee.schemas.contact_models import ContactState
from spotzee.schemas.template_models import (
    MAX_PUSH_BODY,
    MAX_PUSH_DATA_VALUE,
    MAX_PUSH_TITLE,
    MAX_SMS_CHARS,
    MAX_WHATSAPP_PARAMETER,
    MAX_WHATSAPP_TEXT,
    EmailContent,
    LiquidDialect,
    PushContent,
    RenderedEmail,
    RenderedPush,
    RenderedSms,
    RenderedWebhook,
    RenderedWhatsAppTemplate,
    RenderedWhatsAppText,
    SmsContent,
    TemplateDefinition,
    TemplatePreview,
    TemplatePreviewRequest,
    WebhookContent,
    WhatsAppTemplateContent,
    WhatsAppTextContent,
    liquid_problem,
    source_problem,
    whatsapp_sources,
)

AnyContent = EmailContent | WebhookContent | SmsContent | WhatsAppTemplateContent | WhatsAppTextContent | PushContent
AnyRendered = (
    RenderedEmail | RenderedWebhook | RenderedSms | RenderedWhatsAppTemplate | RenderedWhatsAppText | RenderedPush
)

Clock = Callable[[], float]


class RenderLimits(Model):
    """What one rendered message may cost. Hashable: environments are cached per limits."""

    model_config = ConfigDict(frozen=True)

    max_output_bytes: int = Field(default=512 * 1024, ge=1, description="UTF-8 bytes of all fields together.")
    max_loop_iterations: int = Field(default=10_000, ge=1, description="Nested loops count as their product.")
    max_local_bytes: int = Field(default=1024 * 1024, ge=1, description="Bytes held by assign/capture variables.")
    max_items: int = Field(
        default=10_000, ge=1, description="Items of one range literal or of one list a filter returns."
    )
    timeout: float = Field(default=1.0, gt=0, description="Seconds of wall time for the whole message.")


DEFAULT_LIMITS: Final = RenderLimits()


class TemplateRenderError(InvalidInput):
    """A template could not be rendered; ``field`` is its path (``content.html``)."""

    code = "template_render_error"

    def __init__(self, field: str, reason: str, *, line: int | None = None) -> None:
        where = f" (line {line})" if line is not None else ""
        detail: dict[str, Any] = {"path": field, "reason": reason}
        if line is not None:
            detail["line"] = line
        super().__init__(f"{field}: {reason}{where}", details=[detail])
        self.field = field
        self.reason = reason
        self.line = line


# -- variables ----------------------------------------------------------------------------------

_CONTACT_FIELDS: Final = ("user_id", "email", "phone", "timezone", "locale", "first_seen", "last_seen", "created_at")


def contact_variables(contact: ContactState) -> dict[str, object]:
    """``contact.*``: traits and first-class fields side by side; ``contact.traits`` holds the raw traits.

    A first-class field that is set wins over a trait of the same name (as in segment rules);
    ``contact.traits.email`` still reaches the trait.
    """
    values: dict[str, object] = dict(contact.traits)
    values["id"] = contact.id
    for name in _CONTACT_FIELDS:
        value = getattr(contact, name)
        if value is not None or name not in values:
            values[name] = value
    values["anonymous_ids"] = list(contact.anonymous_ids)
    values["traits"] = contact.traits
    return values


def template_variables(
    contact: ContactState | None = None,
    *,
    event: JSONObject | None = None,
    journey: JSONObject | None = None,
    unsubscribe_url: str | None = None,
) -> dict[str, object]:
    """The render namespace: ``contact``, ``event``, ``journey`` and, for emails, ``unsubscribe_url``."""
    variables: dict[str, object] = {
        "contact": contact_variables(contact) if contact is not None else {},
        "event": event or {},
        "journey": journey or {},
    }
    if unsubscribe_url is not None:
        variables["unsubscribe_url"] = unsubscribe_url
    return variables


# -- environments -------------------------------------------------------------------------------


@lru_cache(maxsize=16)
def _environment(limits: RenderLimits, autoescape: bool) -> LiquidDialect:
    # python-liquid reads its resource limits from class attributes, hence one subclass per limits.
    class Limited(LiquidDialect, BoundedEnvironment):
        loop_iteration_limit = limits.max_loop_iterations
        output_stream_limit = limits.max_output_bytes
        local_namespace_limit = limits.max_local_bytes
        max_value_bytes = limits.max_output_bytes
        max_items = limits.max_items

    return Limited(autoescape=autoescape)


_CACHED_SOURCE: Final = 64 * 1024


@lru_cache(maxsize=512)
def _parse_cached(env: LiquidDialect, source: str) -> BoundTemplate:
    return env.from_string(source)


def _parse(env: LiquidDialect, source: str) -> BoundTemplate:
    """Parsed templates are reused (one template renders for every recipient); very large ones
    are parsed each time rather than pinned in memory."""
    return _parse_cached(env, source) if len(source) <= _CACHED_SOURCE else env.from_string(source)


class _Render:
    """One message being rendered: a shared deadline and output budget across its fields."""

    def __init__(self, variables: Mapping[str, object], limits: RenderLimits, clock: Clock) -> None:
        self.variables = dict(variables)
        self.limits = limits
        self.clock = clock
        self.deadline = clock() + limits.timeout
        self.remaining = limits.max_output_bytes

    def field(self, source: str, field: str, *, autoescape: bool = False) -> str:
        env = _environment(self.limits, autoescape)
        too_large = source_problem(source)  # before parsing: parse time grows with the source
        if too_large is not None:
            raise TemplateRenderError(field, too_large)
        try:
            template = _parse(env, source)
        except LiquidError:
            reason, line = liquid_problem(source, env) or ("invalid Liquid template", None)
            raise TemplateRenderError(field, reason, line=line) from None
        context = BudgetContext(
            template, globals=template.make_globals(self.variables), deadline=self.deadline, clock=self.clock
        )
        buffer = LimitedStringIO(limit=self.remaining)
        try:
            template.render_with_context(context, buffer)
        except LiquidError as exc:
            raise self._error(field, exc) from None
        except Exception as exc:
            # A filter failing in a way python-liquid does not wrap; a template must never crash
            # delivery, so this is a render error like any other.
            raise TemplateRenderError(field, f"{type(exc).__name__}: {exc}") from None
        output = buffer.getvalue()
        self.remaining -= len(output.encode("utf-8"))
        return output

    def _error(self, field: str, exc: LiquidError) -> TemplateRenderError:
        limits = self.limits
        if isinstance(exc, RenderTimeout):
            return TemplateRenderError(field, f"rendering took longer than {limits.timeout:g}s")
        if isinstance(exc, OutputStreamLimitError):
            return TemplateRenderError(field, f"output larger than {limits.max_output_bytes} bytes")
        if isinstance(exc, LoopIterationLimitError):
            return TemplateRenderError(field, f"more than {limits.max_loop_iterations} loop iterations")
        if isinstance(exc, LocalNamespaceLimitError):
            return TemplateRenderError(field, f"variables larger than {limits.max_local_bytes} bytes")
        if isinstance(exc, ValueLimitError):
            return TemplateRenderError(field, str(exc.message))
        context = exc.context()
        return TemplateRenderError(field, str(exc.message), line=context[0] if context else None)


# -- rendering ----------------------------------------------------------------------------------

_LINE_BREAKS = re.compile(r"\s*[\r\n]+\s*")


def render_string(
    template: str,
    variables: Mapping[str, object],
    limits: RenderLimits = DEFAULT_LIMITS,
    *,
    field: str = "value",
    clock: Clock = time.monotonic,
) -> str:
    """One template string (journey ``update``/``event`` values); errors name ``field``."""
    return _Render(variables, limits, clock).field(template, field)


def render_json(
    value: Any,
    variables: Mapping[str, object],
    limits: RenderLimits = DEFAULT_LIMITS,
    *,
    field: str = "value",
    clock: Clock = time.monotonic,
) -> Any:
    """Every string inside a JSON value rendered as a template (keys and other scalars kept)."""
    render = _Render(variables, limits, clock)

    def walk(item: Any, path: str) -> Any:
        if isinstance(item, str):
            return render.field(item, path)
        if isinstance(item, dict):
            return {key: walk(child, f"{path}.{key}") for key, child in item.items()}
        if isinstance(item, list):
            return [walk(child, f"{path}.{index}") for index, child in enumerate(item)]
        return item

    return walk(value, field)


def render_email(
    content: EmailContent,
    variables: Mapping[str, object],
    limits: RenderLimits = DEFAULT_LIMITS,
    *,
    clock: Clock = time.monotonic,
) -> RenderedEmail:
    render = _Render(variables, limits, clock)
    # A subject is one header line: line breaks from merged values become single spaces.
    subject = _LINE_BREAKS.sub(" ", render.field(content.subject, "content.subject")).strip()
    if not subject:
        raise TemplateRenderError("content.subject", "rendered subject is empty")
    html = render.field(content.html, "content.html", autoescape=True) if content.html is not None else None
    text = render.field(content.text, "content.text") if content.text is not None else None
    return RenderedEmail(subject=subject, html=html, text=text, from_=content.from_, reply_to=content.reply_to)


def _check_url(url: str) -> str:
    """The rendered URL is absolute http(s); where it points is checked at delivery."""
    url = url.strip()
    try:
        parts = urlsplit(url)
        valid = parts.scheme in ("http", "https") and bool(parts.hostname) and (parts.port or 0) >= 0
    except ValueError:  # a malformed host or port
        valid = False
    if not valid or any(ch.isspace() or ord(ch) < 0x20 for ch in url):
        raise TemplateRenderError("content.url", f"rendered URL is not an absolute http(s) URL: {url[:200]!r}")
    return url


def render_webhook(
    content: WebhookContent,
    variables: Mapping[str, object],
    limits: RenderLimits = DEFAULT_LIMITS,
    *,
    clock: Clock = time.monotonic,
) -> RenderedWebhook:
    render = _Render(variables, limits, clock)
    url = _check_url(render.field(content.url, "content.url"))
    headers: dict[str, str] = {}
    for name, value in content.headers.items():
        field = f"content.headers.{name}"
        rendered = render.field(value, field)
        # A merged value must not add a header line of its own.
        if any(ch in rendered for ch in "\r\n\x00"):
            raise TemplateRenderError(field, "rendered header value contains a line break")
        headers[name] = rendered.strip()
    body = render.field(content.body, "content.body") if content.body is not None else None
    return RenderedWebhook(method=content.method, url=url, headers=headers, body=body)


def render_sms(
    content: SmsContent,
    variables: Mapping[str, object],
    limits: RenderLimits = DEFAULT_LIMITS,
    *,
    clock: Clock = time.monotonic,
) -> RenderedSms:
    """The body as it will be sent (surrounding whitespace dropped), with its encoding and
    segment count; an empty body or one over ``MAX_SMS_CHARS`` is a render error."""
    body = _Render(variables, limits, clock).field(content.body, "content.body").strip()
    if not body:
        raise TemplateRenderError("content.body", "rendered SMS body is empty")
    if len(body) > MAX_SMS_CHARS:
        raise TemplateRenderError("content.body", f"rendered SMS body longer than {MAX_SMS_CHARS} characters")
    size = sms_size(body)
    return RenderedSms(body=body, encoding=size.encoding, segments=size.segments)


def render_whatsapp(
    content: WhatsAppTemplateContent | WhatsAppTextContent,
    variables: Mapping[str, object],
    limits: RenderLimits = DEFAULT_LIMITS,
    *,
    clock: Clock = time.monotonic,
) -> RenderedWhatsAppTemplate | RenderedWhatsAppText:
    """A session text (trimmed, 1-4,096 characters) or an approved template with every parameter
    rendered (trimmed, 1-1,024 characters: Meta refuses an empty parameter), errors at the field's
    path (``content.components[0].parameters[1].text``)."""
    render = _Render(variables, limits, clock)
    if isinstance(content, WhatsAppTextContent):
        text = render.field(content.text, "content.text").strip()
        if not text:
            raise TemplateRenderError("content.text", "rendered WhatsApp text is empty")
        if len(text) > MAX_WHATSAPP_TEXT:
            raise TemplateRenderError(
                "content.text", f"rendered WhatsApp text longer than {MAX_WHATSAPP_TEXT} characters"
            )
        return RenderedWhatsAppText(text=text)
    components: list[dict[str, Any]] = []
    for i, component in enumerate(content.components):
        parameters: list[dict[str, str]] = []
        for j, parameter in enumerate(component.parameters):
            name = parameter.type
            path = f"content.components[{i}].parameters[{j}].{name}"
            value = render.field(parameter.value, path).strip()
            if not value:
                raise TemplateRenderError(path, "rendered parameter is empty (WhatsApp refuses empty parameters)")
            if len(value) > MAX_WHATSAPP_PARAMETER:
                raise TemplateRenderError(path, f"rendered parameter longer than {MAX_WHATSAPP_PARAMETER} characters")
            parameters.append({"type": parameter.type, name: value})
        out: dict[str, Any] = {"type": component.type}
        if component.sub_type is not None:
            out["sub_type"] = component.sub_type
        if component.index is not None:
            out["index"] = str(component.index)  # Meta documents the index as a string ("0")
        out["parameters"] = parameters
        components.append(out)
    return RenderedWhatsAppTemplate(
        template_name=content.template_name, language=content.language, components=components
    )


def render_push(
    content: PushContent,
    variables: Mapping[str, object],
    limits: RenderLimits = DEFAULT_LIMITS,
    *,
    clock: Clock = time.monotonic,
) -> RenderedPush:
    """Title (one line), body, image and deep link URLs and data values rendered, trimmed and bounded
    (``MAX_PUSH_*``): an empty title or body, an image that is not an absolute http(s) URL, or a part
    over its limit is a render error at its path (``content.data.order_id``)."""
    render = _Render(variables, limits, clock)
    title = _LINE_BREAKS.sub(" ", render.field(content.title, "content.title")).strip()
    body = render.field(content.body, "content.body").strip()
    for path, value, limit in (("content.title", title, MAX_PUSH_TITLE), ("content.body", body, MAX_PUSH_BODY)):
        if not value:
            raise TemplateRenderError(path, "rendered push text is empty")
        if len(value) > limit:
            raise TemplateRenderError(path, f"rendered push text longer than {limit} characters")
    image = None
    if content.image is not None:
        try:
            image = _check_url(render.field(content.image, "content.image"))
        except TemplateRenderError as exc:
            raise TemplateRenderError("content.image", exc.reason) from None
    deep_link = None
    if content.deep_link is not None:
        deep_link = render.field(content.deep_link, "content.deep_link").strip() or None
        if deep_link is not None and any(ch.isspace() or ord(ch) < 0x20 for ch in deep_link):
            raise TemplateRenderError("content.deep_link", "rendered deep link contains whitespace")
    data: dict[str, str] = {}
    for key, source in content.data.items():
        path = f"content.data.{key}"
        value = render.field(source, path)
        if len(value) > MAX_PUSH_DATA_VALUE:
            raise TemplateRenderError(path, f"rendered data value longer than {MAX_PUSH_DATA_VALUE} characters")
        data[key] = value
    return RenderedPush(
        title=title,
        body=body,
        image=image,
        deep_link=deep_link,
        data=data,
        badge=content.badge,
        sound=content.sound,
        ttl=content.ttl,
    )


def render_content(
    content: AnyContent,
    variables: Mapping[str, object],
    limits: RenderLimits = DEFAULT_LIMITS,
    *,
    clock: Clock = time.monotonic,
) -> AnyRendered:
    if isinstance(content, EmailContent):
        return render_email(content, variables, limits, clock=clock)
    if isinstance(content, SmsContent):
        return render_sms(content, variables, limits, clock=clock)
    if isinstance(content, WhatsAppTemplateContent | WhatsAppTextContent):
        return render_whatsapp(content, variables, limits, clock=clock)
    if isinstance(content, PushContent):
        return render_push(content, variables, limits, clock=clock)
    return render_webhook(content, variables, limits, clock=clock)


def preview(
    template: TemplateDefinition,
    contact: ContactState,
    request: TemplatePreviewRequest,
    limits: RenderLimits = DEFAULT_LIMITS,
    *,
    unsubscribe_url: str | None = None,
    clock: Clock = time.monotonic,
) -> TemplatePreview:
    """``POST /api/v1/templates/{id}/preview``: what ``contact`` would receive; nothing is sent."""
    variables = template_variables(
        contact, event=request.event, journey=request.journey, unsubscribe_url=unsubscribe_url
    )
    rendered = render_content(template.content, variables, limits, clock=clock)
    return TemplatePreview(channel=template.channel, rendered=rendered)


def event_variables(data: object) -> dict[str, object] | None:
    """``event.*`` for templates from a run's event (``{"name", "properties", ...}``): its
    properties at the top (``{{ event.plan }}``), plus ``name``, ``message_id``, ``timestamp``
    and ``properties`` themselves unless a property of that name exists."""
    if not isinstance(data, dict):
        return None
    properties = data.get("properties")
    flat: dict[str, object] = dict(properties) if isinstance(properties, dict) else {}
    for key in ("name", "message_id", "timestamp", "properties"):
        if key in data:
            flat.setdefault(key, data[key])
    return flat


def template_fields(content: AnyContent) -> list[tuple[str, str]]:
    """Every Liquid source of ``content`` with its path (``content.html``)."""
    named: dict[str, str | None]
    if isinstance(content, EmailContent):
        named = {"subject": content.subject, "html": content.html, "text": content.text}
    elif isinstance(content, SmsContent):
        named = {"body": content.body}
    elif isinstance(content, WhatsAppTextContent):
        named = {"text": content.text}
    elif isinstance(content, WhatsAppTemplateContent):
        named = dict(whatsapp_sources(content))
    elif isinstance(content, PushContent):
        named = {
            "title": content.title,
            "body": content.body,
            "image": content.image,
            "deep_link": content.deep_link,
            **{f"data.{k}": v for k, v in content.data.items()},
        }
    else:
        named = {"url": content.url, **{f"headers.{k}": v for k, v in content.headers.items()}, "body": content.body}
    return [(f"content.{name}", source) for name, source in named.items() if source is not None]


def check_content(content: AnyContent) -> None:
    """Parse every template field (what ``TemplateCreate`` checks when parsing isn't deferred);
    raise ``InvalidInput`` naming each field that fails. Run off the event loop: parsing costs
    up to a second for a source at the size limits."""
    details: list[dict[str, Any]] = []
    for path, source in template_fields(content):
        too_large = source_problem(source)
        if too_large is not None:
            details.append({"path": path, "reason": too_large})
            continue
        problem = liquid_problem(source)
        if problem is None:
            continue
        reason, line = problem
        where = f"line {line}: " if line is not None else ""
        details.append({"path": path, "reason": f"invalid Liquid template: {where}{reason}"})
    if details:
        raise InvalidInput("invalid template content", details=details)
