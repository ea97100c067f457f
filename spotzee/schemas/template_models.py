"""Message templates: the JSON the API accepts (``TemplateCreate``), what is stored, what rendering yields.

``POST /api/v1/templates`` takes ``{"name", "channel", "content": {...}}``; ``channel`` decides which
content model applies:

- ``email`` -- ``subject``, ``html`` and/or ``text``, ``from`` (``addr`` or ``Name <addr>``), ``reply_to``;
- ``webhook`` -- ``method``, ``url``, ``headers``, ``body``;
- ``sms`` -- ``body`` (a preview reports its encoding, GSM-7 or UCS-2, and its segment count);
- ``whatsapp`` -- either ``template_name``, ``language`` and ``components`` (an approved template;
  components in Meta's Cloud API shape, Liquid in their parameter values) or ``text`` (a session
  message: the vendor only delivers it within 24 hours of the contact's last message).

Text fields are Liquid templates (subject, html, text; url, header values, body; an SMS body; a
WhatsApp text or template parameter) with the variables
``contact`` (first-class fields and traits side by side: ``contact.first_name``), ``event`` and
``journey``. They are parsed when the template is created: a syntax error, an unknown filter or a
disallowed tag is rejected with the field's path (``content.html``) and the line in the reason.

Size is checked before anything is parsed (parse time grows with the source): a template field
holds at most ``MAX_SOURCE_BYTES`` UTF-8 bytes, and a template's fields together at most
``MAX_MARKUP`` tags and outputs (``{{``/``{%``);
Liquid blocks nest at most 30 deep. Over a limit: 400 with the field's path. The API parses in a
worker process (``defer_liquid_parsing``, ``spotzee.services.template_workers``); stored definitions
(``TemplateDefinition``) are not parsed again when they are read, so one accepted always loads.

The Liquid dialect is standard Liquid with two changes: ``include`` and ``render`` are not
available (templates never read a file system or other templates), and a ``json`` filter writes a
value as JSON (for webhook bodies: ``{"name": {{ contact.first_name | json }}}``).
"""

from __future__ import annotations

import json
import re
from contextvars import ContextVar
from datetime import date, datetime
from email.headerregistry import Address
from email.utils import getaddresses
from typing import Annotated, Any, Final, Literal, Self, TypeVar

from email_validator import EmailNotValidError, validate_email
from liquid import Environment, Undefined
from liquid.exceptions import LiquidError
from pydantic import (
    AfterValidator,
    ConfigDict,
    Field,
    SerializerFunctionWrapHandler,
    ValidationInfo,
    ValidatorFunctionWrapHandler,
    WrapValidator,
    model_serializer,
    model_validator,
)
from pydantic_core import PydanticCustomError

from spotzee.schemas.common import Identifier, JSONObject, Model, UTCDateTime

TemplateChannel = Literal["email", "webhook", "sms", "whatsapp", "push"]
HttpMethod = Literal["GET", "POST", "PUT", "PATCH", "DELETE"]

MAX_SUBJECT: Final = 2_000
MAX_SOURCE_BYTES: Final = 256 * 1024  # UTF-8 bytes of template source per field (html/text/body)
MAX_MARKUP: Final = 5_000  # Liquid tags and outputs per template (all fields): parse time grows with them
MAX_URL: Final = 4_096
MAX_HEADER_VALUE: Final = 8_192
MAX_HEADERS: Final = 50
# What an SMS body may hold once rendered: Twilio's limit for one message (1,600 characters, ten
# concatenated parts or so); a longer one would be refused by the vendor anyway.
MAX_SMS_CHARS: Final = 1_600
# WhatsApp (Meta's Cloud API limits): a session text's body, one template parameter once rendered,
# the parameters of one component, the buttons of a template.
MAX_WHATSAPP_TEXT: Final = 4_096
MAX_WHATSAPP_PARAMETER: Final = 1_024
MAX_WHATSAPP_PARAMETERS: Final = 100
# Push: FCM and APNs take at most 4 KB of payload, so the parts are bounded well within that once
# rendered: a title, a body, the custom data map (keys, entries, values), a badge, a time to live
# (FCM's maximum, 28 days).
MAX_PUSH_TITLE: Final = 256
MAX_PUSH_BODY: Final = 2_048
MAX_PUSH_DATA_ENTRIES: Final = 32
MAX_PUSH_DATA_KEY: Final = 64
MAX_PUSH_DATA_VALUE: Final = 1_024
MAX_PUSH_SOUND: Final = 256
MAX_PUSH_BADGE: Final = 99_999
MAX_PUSH_TTL: Final = 28 * 24 * 3600
# FCM reserves these data keys (and any starting with ``google.`` or ``gcm.``).
RESERVED_PUSH_DATA_KEYS: Final = frozenset({"from", "notification", "message_type"})
MAX_WHATSAPP_BUTTONS: Final = 10

# -- the Liquid dialect -------------------------------------------------------------------------


def _json_default(value: object) -> object:
    if isinstance(value, Undefined):
        return None
    if isinstance(value, datetime | date):
        return value.isoformat()
    return str(value)


def json_filter(value: object) -> str:
    """``{{ value | json }}``: the value as JSON; undefined is ``null``, datetimes are ISO 8601."""
    return json.dumps(value, default=_json_default, ensure_ascii=False)


class LiquidDialect(Environment):
    """Standard Liquid without ``include``/``render``, plus ``json``.

    Render limits are class attributes in python-liquid; ``spotzee.domain.templates`` subclasses
    this per set of limits. Parsing does not depend on them, so this plain instance checks syntax.
    """

    def setup_tags_and_filters(self, *, extra: bool = False) -> None:
        super().setup_tags_and_filters(extra=extra)
        # Both load other templates through a loader; there are none, and a template must not be
        # able to probe for them.
        for name in ("include", "render"):
            self.tags.pop(name, None)
        self.add_filter("json", json_filter)


SYNTAX: Final = LiquidDialect()


def liquid_problem(source: str, env: Environment = SYNTAX) -> tuple[str, int | None] | None:
    """What is wrong with ``source`` as a template (reason, 1-based line if known), or None."""
    try:
        template = env.from_string(source)
    except LiquidError as exc:
        context = exc.context()
        return str(exc.message), (context[0] if context else None)
    # Unknown filters only fail at render time in python-liquid; catch them at create time.
    for name, spans in template.analyze(include_partials=False).filters.items():
        if name not in env.filters:
            return f"unknown filter '{name}'", spans[0].line_col(source)[0] if spans else None
    return None


def source_problem(source: str) -> str | None:
    """What makes ``source`` too large to parse, or None; cheap (no parsing)."""
    if len(source) > MAX_SOURCE_BYTES or len(source.encode("utf-8", "surrogatepass")) > MAX_SOURCE_BYTES:
        return f"template source larger than {MAX_SOURCE_BYTES} bytes"
    markup = source.count("{{") + source.count("{%")
    if markup > MAX_MARKUP:
        return f"more than {MAX_MARKUP} Liquid tags and outputs ({markup})"
    return None


_DEFER_PARSING: ContextVar[bool] = ContextVar("spotzee_defer_liquid_parsing", default=False)
_STORED: Final = "stored"  # validation context of definitions read back: checked when accepted


def defer_liquid_parsing() -> None:
    """For the rest of the current task (one API request), template fields are checked for size
    only; the caller parses them off the event loop (``spotzee.domain.templates.check_content``)."""
    _DEFER_PARSING.set(True)


def _liquid(value: str, info: ValidationInfo) -> str:
    if isinstance(info.context, dict) and info.context.get("liquid") == _STORED:
        return value
    too_large = source_problem(value)
    if too_large is not None:
        raise PydanticCustomError("liquid_size", "{reason}", {"reason": too_large})
    if _DEFER_PARSING.get():
        return value
    problem = liquid_problem(value)
    if problem is not None:
        reason, line = problem
        where = f"line {line}: " if line is not None else ""
        raise PydanticCustomError(
            "liquid_syntax",
            "invalid Liquid template: {where}{reason}",
            {"where": where, "reason": reason, "line": line},
        )
    return value


_ContentT = TypeVar("_ContentT", bound=Model)


def _markup_within_limit(content: _ContentT) -> _ContentT:
    """All template fields of one content together (headers too): at most ``MAX_MARKUP`` tags.
    After the fields' own checks, so a field over its own limit is reported at its path."""
    sources = [
        getattr(content, name, None) for name in ("subject", "html", "text", "url", "body", "title", "deep_link")
    ]
    sources += list(getattr(content, "headers", {}).values())
    sources += list(getattr(content, "data", {}).values())  # a push's data values
    markup = sum(s.count("{{") + s.count("{%") for s in sources if isinstance(s, str))
    if markup > MAX_MARKUP:
        raise ValueError(f"more than {MAX_MARKUP} Liquid tags and outputs in the template ({markup})")
    return content


def _single_line(value: str) -> str:
    if "\r" in value or "\n" in value or "\x00" in value:
        raise ValueError("must be a single line")
    return value


# -- fields -------------------------------------------------------------------------------------


def _address(value: str) -> str:
    """One mailbox, ``addr`` or ``Name <addr>``, normalised (the address part per email-validator)."""
    _single_line(value)
    pairs = getaddresses([value])
    if len(pairs) != 1 or not pairs[0][1]:
        raise ValueError("must be one email address, optionally as 'Name <address>'")
    name, addr = pairs[0]
    try:
        normalized = validate_email(addr, check_deliverability=False).normalized
    except EmailNotValidError as exc:
        raise ValueError(f"not a valid email address: {exc}") from None
    if not name:
        return normalized
    local, _, domain = normalized.rpartition("@")
    return str(Address(display_name=name, username=local, domain=domain))


EmailAddress = Annotated[str, Field(max_length=512), AfterValidator(_address)]
"""``team@example.com`` or ``Example Team <team@example.com>``."""

_SCHEME = re.compile(r"^https?://[^\s/?#]", re.IGNORECASE)


def _url_template(value: str) -> str:
    # The scheme must be written out: a merge tag must not turn the request into another protocol.
    # The host may come from a merge tag; delivery checks the destination after rendering.
    if not _SCHEME.match(value):
        raise ValueError("must start with http:// or https:// followed by a host")
    return value


# RFC 9110 token characters.
_HEADER_NAME = re.compile(r"^[!#$%&'*+\-.^_`|~0-9A-Za-z]+$")
# Set by the HTTP client or by the webhook sender (signature, idempotency); a template must not.
RESERVED_HEADERS: Final = frozenset(
    {"host", "content-length", "transfer-encoding", "connection", "upgrade", "te", "trailer", "idempotency-key"}
)
RESERVED_HEADER_PREFIX: Final = "x-spotzee-"


def _header_name(value: str) -> str:
    if not _HEADER_NAME.match(value):
        raise ValueError("not a valid HTTP header name")
    lowered = value.lower()
    if lowered in RESERVED_HEADERS or lowered.startswith(RESERVED_HEADER_PREFIX):
        raise ValueError(f"header {value!r} is set by Spotzee and cannot be templated")
    return value


LiquidTemplate = Annotated[str, AfterValidator(_liquid)]
"""Any string field that is a Liquid template (journey update/event values too): checked on input."""
Subject = Annotated[str, Field(min_length=1, max_length=MAX_SUBJECT), AfterValidator(_liquid)]
Body = Annotated[str, Field(min_length=1), AfterValidator(_liquid)]
UrlTemplate = Annotated[
    str,
    Field(min_length=1, max_length=MAX_URL),
    AfterValidator(_single_line),
    AfterValidator(_url_template),
    AfterValidator(_liquid),
]
HeaderName = Annotated[str, Field(min_length=1, max_length=256), AfterValidator(_header_name)]
HeaderValue = Annotated[str, Field(max_length=MAX_HEADER_VALUE), AfterValidator(_single_line), AfterValidator(_liquid)]

# -- content ------------------------------------------------------------------------------------


class EmailContent(Model):
    """An email: ``subject`` plus ``html`` and/or ``text`` (both: multipart/alternative)."""

    # ``from`` is a Python keyword: the attribute is ``from_``, the JSON key ``from``.
    model_config = ConfigDict(validate_by_name=True, validate_by_alias=True, serialize_by_alias=True)

    subject: Subject
    html: Body | None = None
    text: Body | None = None
    from_: EmailAddress = Field(alias="from")
    reply_to: EmailAddress | None = None

    @model_validator(mode="after")
    def _markup_limit(self) -> Self:
        return _markup_within_limit(self)

    @model_validator(mode="after")
    def _has_a_body(self) -> EmailContent:
        if self.html is None and self.text is None:
            raise ValueError("an email needs html, text or both")
        return self


class WebhookContent(Model):
    """An HTTP request: ``url`` and header values and ``body`` are templates; ``method`` is fixed."""

    method: HttpMethod = "POST"
    url: UrlTemplate
    headers: Annotated[dict[HeaderName, HeaderValue], Field(max_length=MAX_HEADERS)] = Field(default_factory=dict)
    body: Body | None = None

    @model_validator(mode="after")
    def _markup_limit(self) -> Self:
        return _markup_within_limit(self)

    @model_validator(mode="after")
    def _body_fits_method(self) -> WebhookContent:
        if self.method == "GET" and self.body is not None:
            raise ValueError("a GET request has no body")
        return self


class SmsContent(Model):
    """A text message: ``body`` is a template; the number it goes to is the contact's ``phone``."""

    body: Body

    @model_validator(mode="after")
    def _markup_limit(self) -> Self:
        return _markup_within_limit(self)


class WhatsAppParameter(Model):
    """``{"type": "text", "text": "..."}`` or ``{"type": "payload", "payload": "..."}`` (what a
    quick-reply button sends back); the value is a Liquid template, rendered per contact. One model
    (not a tagged union) so that an error's path is the value's own (``parameters.0.text``)."""

    type: Literal["text", "payload"]
    text: Annotated[str, Field(min_length=1), AfterValidator(_liquid)] | None = None
    payload: Annotated[str, Field(min_length=1), AfterValidator(_liquid)] | None = None

    @model_validator(mode="after")
    def _value_of_its_type(self) -> WhatsAppParameter:
        other = "payload" if self.type == "text" else "text"
        if getattr(self, self.type) is None:
            raise ValueError(f"a {self.type!r} parameter needs {self.type!r}")
        if getattr(self, other) is not None:
            raise ValueError(f"a {self.type!r} parameter has no {other!r}")
        return self

    @model_serializer(mode="wrap")
    def _only_its_value(self, handler: SerializerFunctionWrapHandler) -> dict[str, Any]:
        data: dict[str, Any] = handler(self)
        return {"type": data["type"], self.type: data[self.type]}

    @property
    def value(self) -> str:
        return self.text if self.text is not None else self.payload or ""


# Template names as Meta accepts them: lowercase letters, digits and underscores.
_WHATSAPP_TEMPLATE_NAME = r"^[a-z0-9_]{1,512}$"
# A language (and locale) code of Meta's list: en, en_US, pt_BR, zh_HK, fil, ...
_WHATSAPP_LANGUAGE = r"^[a-z]{2,3}(_[A-Za-z]{2,4})?$"


class WhatsAppComponent(Model):
    """One component of a template message, as Meta's Cloud API takes it: ``header`` and ``body``
    carry text parameters; a ``button`` names its ``sub_type`` (``quick_reply``: a ``payload``;
    ``url``: the ``text`` of the URL's variable part) and its ``index`` (0-9)."""

    type: Literal["header", "body", "button"]
    sub_type: Literal["quick_reply", "url"] | None = None
    index: Annotated[int, Field(ge=0, le=MAX_WHATSAPP_BUTTONS - 1)] | None = None
    parameters: Annotated[list[WhatsAppParameter], Field(min_length=1, max_length=MAX_WHATSAPP_PARAMETERS)]

    @model_validator(mode="after")
    def _shape(self) -> WhatsAppComponent:
        kinds = [p.type for p in self.parameters]
        if self.type != "button":
            if self.sub_type is not None or self.index is not None:
                raise ValueError(f"a {self.type} component has no sub_type or index (only buttons do)")
            if "payload" in kinds:
                raise ValueError(f"a {self.type} component takes text parameters only")
            if self.type == "header" and len(self.parameters) > 1:
                raise ValueError("a header component takes one parameter")
            return self
        if self.sub_type is None or self.index is None:
            raise ValueError("a button component needs sub_type ('quick_reply' or 'url') and index (0-9)")
        if len(self.parameters) != 1:
            raise ValueError("a button component takes exactly one parameter")
        expected = "payload" if self.sub_type == "quick_reply" else "text"
        if kinds != [expected]:
            raise ValueError(f"a {self.sub_type} button takes one {expected!r} parameter")
        return self


class WhatsAppTemplateContent(Model):
    """An approved WhatsApp template: its ``template_name`` and ``language`` code as approved at
    Meta, and the ``components`` whose parameters fill its variables (Liquid in each value)."""

    template_name: Annotated[str, Field(pattern=_WHATSAPP_TEMPLATE_NAME)]
    language: Annotated[str, Field(pattern=_WHATSAPP_LANGUAGE)]
    components: Annotated[list[WhatsAppComponent], Field(max_length=2 + MAX_WHATSAPP_BUTTONS)] = Field(
        default_factory=list
    )

    @model_validator(mode="after")
    def _each_once(self) -> WhatsAppTemplateContent:
        seen: set[tuple[str, int | None]] = set()
        for component in self.components:
            key = (component.type, component.index)
            if key in seen:
                what = f"button {component.index}" if component.type == "button" else f"{component.type} component"
                raise ValueError(f"the {what} is given twice")
            seen.add(key)
        markup = sum(s.count("{{") + s.count("{%") for _, s in whatsapp_sources(self))
        if markup > MAX_MARKUP:
            raise ValueError(f"more than {MAX_MARKUP} Liquid tags and outputs in the template ({markup})")
        return self


class WhatsAppTextContent(Model):
    """A session message: free ``text`` (Liquid), delivered only within the 24-hour customer-service
    window (the contact wrote to the business in the last 24 hours); the vendor refuses it otherwise."""

    text: Body

    @model_validator(mode="after")
    def _markup_limit(self) -> Self:
        return _markup_within_limit(self)


WhatsAppContent = WhatsAppTemplateContent | WhatsAppTextContent


_PUSH_DATA_KEY = re.compile(r"^[A-Za-z0-9_.\-]{1,64}$")


def _push_data_key(value: str) -> str:
    if not _PUSH_DATA_KEY.match(value):
        raise ValueError("a data key is 1-64 letters, digits, '_', '.' or '-'")
    if value in RESERVED_PUSH_DATA_KEYS or value.startswith(("google.", "gcm.")):
        raise ValueError(f"data key {value!r} is reserved by FCM")
    return value


PushDataKey = Annotated[str, AfterValidator(_push_data_key)]
PushDataValue = Annotated[str, Field(max_length=MAX_PUSH_DATA_VALUE), AfterValidator(_liquid)]


class PushContent(Model):
    """A push notification: ``title``, ``body``, ``deep_link`` and ``data`` values are Liquid; it goes
    to every device (push token) of the contact."""

    title: Annotated[
        str, Field(min_length=1, max_length=MAX_SUBJECT), AfterValidator(_single_line), AfterValidator(_liquid)
    ]
    body: Body
    image: UrlTemplate | None = None
    deep_link: (
        Annotated[str, Field(min_length=1, max_length=MAX_URL), AfterValidator(_single_line), AfterValidator(_liquid)]
        | None
    ) = None
    data: Annotated[dict[PushDataKey, PushDataValue], Field(max_length=MAX_PUSH_DATA_ENTRIES)] = Field(
        default_factory=dict
    )
    badge: Annotated[int, Field(ge=0, le=MAX_PUSH_BADGE)] | None = None
    sound: Annotated[str, Field(min_length=1, max_length=MAX_PUSH_SOUND), AfterValidator(_single_line)] | None = None
    ttl: (
        Annotated[int, Field(ge=0, le=MAX_PUSH_TTL, description="Seconds the push may wait for an offline device.")]
        | None
    ) = None

    @model_validator(mode="after")
    def _markup_limit(self) -> Self:
        return _markup_within_limit(self)


def whatsapp_sources(content: WhatsAppTemplateContent) -> list[tuple[str, str]]:
    """Every Liquid source of a template content with its path (``components[0].parameters[1].text``),
    written as the API writes paths."""
    out: list[tuple[str, str]] = []
    for i, component in enumerate(content.components):
        for j, parameter in enumerate(component.parameters):
            out.append((f"components[{i}].parameters[{j}].{parameter.type}", parameter.value))
    return out


def _whatsapp_model(value: Any) -> type[WhatsAppTemplateContent] | type[WhatsAppTextContent]:
    """A session text says ``text``; anything else is read as a template (its errors name fields)."""
    if isinstance(value, WhatsAppTextContent) or (isinstance(value, dict) and "text" in value):
        return WhatsAppTextContent
    return WhatsAppTemplateContent


Content = EmailContent | WebhookContent | SmsContent | WhatsAppTemplateContent | WhatsAppTextContent | PushContent
ContentModel = (
    type[EmailContent]
    | type[WebhookContent]
    | type[SmsContent]
    | type[WhatsAppTemplateContent]
    | type[WhatsAppTextContent]
    | type[PushContent]
)
CONTENT_MODELS: Final[dict[str, type[EmailContent] | type[WebhookContent] | type[SmsContent] | type[PushContent]]] = {
    "email": EmailContent,
    "webhook": WebhookContent,
    "sms": SmsContent,
    "push": PushContent,
}


def content_model(channel: str, value: Any) -> ContentModel | None:
    """The content model of ``channel`` for ``value`` (WhatsApp has two forms), or None."""
    if channel == "whatsapp":
        return _whatsapp_model(value)
    return CONTENT_MODELS.get(channel)


def _content_for_channel(value: Any, handler: ValidatorFunctionWrapHandler, info: ValidationInfo) -> Any:
    """Validate ``content`` with the model of the sibling ``channel``.

    The tag lives beside the content, not inside it, so this replaces a discriminated union: a
    ValidationError raised here is re-rooted at ``content`` (``content.subject``: field required).
    With no valid ``channel`` only the channel error is reported.
    """
    model = content_model(info.data.get("channel", ""), value)
    if model is None:
        return value
    if isinstance(value, Model):
        # A model instance of the other channel is checked as its JSON, so the error names fields.
        value = value if isinstance(value, model) else value.model_dump(by_alias=True)
    return model.model_validate(value)


def _stored_content_for_channel(value: Any, handler: ValidatorFunctionWrapHandler, info: ValidationInfo) -> Any:
    """Stored content is read back as it was accepted: no parsing, no size check again."""
    model = content_model(info.data.get("channel", ""), value)
    if model is None or isinstance(value, model):
        return value
    if isinstance(value, Model):
        value = value.model_dump(by_alias=True)
    return model.model_validate(value, context={"liquid": _STORED})


ChannelContent = Annotated[Content, WrapValidator(_content_for_channel)]
StoredContent = Annotated[Content, WrapValidator(_stored_content_for_channel)]
TemplateName = Annotated[str, Field(min_length=1, max_length=200)]

# -- API and storage ----------------------------------------------------------------------------


class TemplateCreate(Model):
    """``POST /api/v1/templates``: the server assigns the id."""

    name: TemplateName
    channel: TemplateChannel
    content: ChannelContent


TemplateUpdate = TemplateCreate  # PUT replaces name, channel and content


class TemplateDefinition(Model):
    """A stored template (definitions key ``template/<id>``); ``version`` grows on every edit."""

    type: Literal["template"] = "template"
    id: str
    project_id: str
    name: str
    channel: TemplateChannel
    content: StoredContent
    version: int
    created_at: UTCDateTime
    updated_at: UTCDateTime


class TemplatePublic(Model):
    id: str
    project_id: str
    name: str
    channel: TemplateChannel
    content: ChannelContent
    version: int
    created_at: datetime
    updated_at: datetime

    @classmethod
    def from_definition(cls, definition: TemplateDefinition) -> TemplatePublic:
        return cls(
            id=definition.id,
            project_id=definition.project_id,
            name=definition.name,
            channel=definition.channel,
            content=definition.content,
            version=definition.version,
            created_at=definition.created_at,
            updated_at=definition.updated_at,
        )


class TemplatePreviewRequest(Model):
    """``POST /api/v1/templates/{id}/preview``: render for one contact, with sample event/journey data."""

    contact_id: Identifier
    event: JSONObject | None = None
    journey: JSONObject | None = None


# -- rendering results --------------------------------------------------------------------------


class RenderedEmail(Model):
    model_config = ConfigDict(validate_by_name=True, validate_by_alias=True, serialize_by_alias=True)

    subject: str
    html: str | None = None
    text: str | None = None
    from_: str = Field(alias="from")
    reply_to: str | None = None


class RenderedWebhook(Model):
    method: HttpMethod
    url: str
    headers: dict[str, str] = Field(default_factory=dict)
    body: str | None = None


class RenderedSms(Model):
    """An SMS body as sent, with how it travels: ``encoding`` (GSM-7 or UCS-2) and ``segments``
    (the parts a carrier bills; ``spotzee.domain.sms_segments``)."""

    body: str
    encoding: Literal["GSM-7", "UCS-2"]
    segments: int = Field(ge=0)


class RenderedWhatsAppTemplate(Model):
    """An approved template as sent: its components with every parameter rendered, in Meta's
    Cloud API shape (``{"type", "sub_type"?, "index"?, "parameters": [...]}``)."""

    template_name: str
    language: str
    components: list[dict[str, Any]] = Field(default_factory=list)


class RenderedWhatsAppText(Model):
    """A session message's text as sent."""

    text: str


RenderedWhatsApp = RenderedWhatsAppTemplate | RenderedWhatsAppText


class RenderedPush(Model):
    """A push notification as sent to each device."""

    title: str
    body: str
    image: str | None = None
    deep_link: str | None = None
    data: dict[str, str] = Field(default_factory=dict)
    badge: int | None = None
    sound: str | None = None
    ttl: int | None = None


class TemplatePreview(Model):
    """The answer to a preview: what would be sent (nothing is sent)."""

    channel: TemplateChannel
    rendered: (
        RenderedEmail | RenderedWebhook | RenderedSms | RenderedWhatsAppTemplate | RenderedWhatsAppText | RenderedPush
    )
