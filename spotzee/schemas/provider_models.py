"""Delivery providers: the vendor accounts a project sends through.

``POST /api/v1/providers`` takes ``{"name", "channel", "type", "config": {...}}``; ``type`` decides
the config model and the channel it serves:

- ``smtp`` (channel ``email``) -- ``host``, ``port``, ``username``, ``password``, ``security``
  (``none`` | ``starttls`` | ``ssl``), ``timeout``;
- ``webhook`` (channel ``webhook``) -- ``signing_secret`` (HMAC-SHA256 key the receiver verifies
  with), ``timeout``, ``max_retries``;
- ``twilio`` (channels ``sms`` and ``whatsapp``) -- ``account_sid``, ``auth_token``, ``from``
  (E.164, or ``whatsapp:+...`` on channel whatsapp) or ``messaging_service_sid`` (exactly one),
  ``base_url`` (default ``https://api.twilio.com``), ``timeout``;
- ``vonage`` (channel ``sms``) -- ``api_key``, ``api_secret``, ``from`` (a number or an
  alphanumeric sender id), ``base_url`` (default ``https://rest.nexmo.com``), ``timeout``;
- ``sendgrid`` (channel ``email``) -- ``api_key``, ``base_url`` (default
  ``https://api.sendgrid.com``), ``timeout``;
- ``postmark`` (channel ``email``) -- ``server_token``, ``message_stream`` (default
  ``outbound``), ``base_url`` (default ``https://api.postmarkapp.com``), ``timeout``;
- ``ses`` (channel ``email``) -- ``region``, ``access_key_id``, ``secret_access_key``,
  ``configuration_set``, ``base_url`` (default ``https://email.{region}.amazonaws.com``),
  ``timeout``.

``fcm`` (channel ``push``) -- ``service_account`` (the Google service-account JSON key; its
``project_id``, ``client_email``, ``private_key`` and ``token_uri`` are kept, flattened, the rest
ignored), ``base_url`` (default ``https://fcm.googleapis.com``), ``timeout``.

``apns`` (channel ``push``) -- ``team_id``, ``key_id``, ``private_key`` (the ``.p8`` key, secret),
``topic`` (the app's bundle id), ``environment`` (``production`` | ``sandbox``), ``base_url``
(default Apple's host for the environment), ``timeout``.

``meta_whatsapp`` (channel ``whatsapp``) -- ``phone_number_id``, ``access_token`` (a Bearer token),
``app_secret`` (signs Meta's webhook calls: ``X-Hub-Signature-256``), ``api_version`` (``v21.0``),
``base_url`` (default ``https://graph.facebook.com``), ``timeout``.

A vendor's ``base_url`` lets a relay, a regional endpoint or a test server stand in; its host and
port are the provider's destination, vetted like an SMTP host.

Secrets are ``SecretStr`` and never leave through the API: ``ProviderPublic`` says only whether
one is set. A ``PUT`` that omits a secret keeps the stored one (clients cannot read it back to
send it again); ``ProviderUpdate`` therefore accepts a config without its required secrets
(``required_secrets``: ``signing_secret``, ``auth_token``, ``api_secret``, ``api_key``,
``server_token``, ``secret_access_key``).
In the definitions store (RocksDB, the Kafka ``definitions`` topic) a provider is a
``StoredProvider``: its secret fields sealed (``spotzee.providers.sealing``).

Every config model names the destinations it connects to (``destinations()``: field, host, port),
so the outbound policy checks every provider's destinations when it is written, including
providers added later; a webhook's URL is in its template and checked there.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime
from typing import Annotated, Any, ClassVar, Final, Literal
from urllib.parse import urlsplit

from pydantic import (
    AfterValidator,
    ConfigDict,
    Field,
    PlainSerializer,
    SecretStr,
    SerializationInfo,
    ValidationError,
    ValidationInfo,
    ValidatorFunctionWrapHandler,
    WrapValidator,
    field_validator,
    model_validator,
)

from spotzee.providers.safety import literal_address
from spotzee.schemas.common import Model, UTCDateTime

ProviderType = Literal[
    "smtp", "webhook", "twilio", "vonage", "sendgrid", "postmark", "ses", "meta_whatsapp", "fcm", "apns"
]
ProviderChannel = Literal["email", "webhook", "sms", "whatsapp", "push"]
# The channels each type serves (a type may serve several: Twilio).
CHANNELS_OF: Final[dict[str, tuple[str, ...]]] = {
    "smtp": ("email",),
    "webhook": ("webhook",),
    "twilio": ("sms", "whatsapp"),
    "vonage": ("sms",),
    "meta_whatsapp": ("whatsapp",),
    "sendgrid": ("email",),
    "postmark": ("email",),
    "ses": ("email",),
    "fcm": ("push",),
    "apns": ("push",),
}
REVEAL_SECRETS: Final = {"reveal_secrets": True}
MIN_SIGNING_SECRET: Final = 16
DEFAULT_SMTP_PORTS: Final = {"none": 25, "starttls": 587, "ssl": 465}


def _secret_out(value: SecretStr | None, info: SerializationInfo) -> str | None:
    """Masked (``**********``) unless serialised with ``context=REVEAL_SECRETS`` (storage only)."""
    if value is None:
        return None
    context = info.context
    if isinstance(context, dict) and context.get("reveal_secrets"):
        return value.get_secret_value()
    return str(value)


Secret = Annotated[SecretStr, Field(min_length=1, max_length=4096), PlainSerializer(_secret_out)]

_HOSTNAME = re.compile(r"^(?=.{1,253}$)[A-Za-z0-9_]([A-Za-z0-9_-]{0,62})(\.[A-Za-z0-9_]([A-Za-z0-9_-]{0,62}))*\.?$")


def _host(value: str) -> str:
    """A host name, or an IP address in its canonical form: ``2130706433`` or ``0x7f.1`` (what a
    resolver reads as 127.0.0.1) is stored as ``127.0.0.1``, so what is checked is what is used."""
    address = literal_address(value)
    if address is not None:
        return str(address)
    if not _HOSTNAME.match(value):
        raise ValueError("not a valid host name or IP address")
    if value.rstrip(".").rsplit(".", 1)[-1].isdigit():
        # Neither a name (a top-level domain is never numeric) nor an address a resolver reads alike.
        raise ValueError("not a valid host name or IP address")
    return value.lower().rstrip(".")


@dataclass(frozen=True)
class Endpoint:
    """A destination a provider connects to, with the config field it comes from."""

    field: str
    host: str
    port: int


class ProviderConfigModel(Model):
    """What every provider config declares: its secret fields (sealed at rest, masked in views),
    those required when a provider is created, and its destinations."""

    secret_fields: ClassVar[tuple[str, ...]] = ()
    required_secrets: ClassVar[tuple[str, ...]] = ()

    def __init_subclass__(cls, **kwargs: Any) -> None:
        super().__init_subclass__(**kwargs)
        if cls.destinations is ProviderConfigModel.destinations:  # a new provider must say where it connects
            raise TypeError(f"{cls.__name__} must define destinations() (an empty tuple if it connects nowhere)")

    def destinations(self) -> tuple[Endpoint, ...]:
        """Every host this provider connects to, with its config field: vetted by the outbound policy."""
        raise NotImplementedError


class SmtpConfig(ProviderConfigModel):
    host: Annotated[str, Field(min_length=1, max_length=253), AfterValidator(_host)]
    port: Annotated[int | None, Field(ge=1, le=65535, description="Default: 25, 587 (starttls) or 465 (ssl).")] = None
    username: Annotated[str | None, Field(min_length=1, max_length=512)] = None
    password: Secret | None = None
    security: Literal["none", "starttls", "ssl"] = "starttls"
    timeout: Annotated[float, Field(gt=0, le=300)] = 30.0

    secret_fields: ClassVar[tuple[str, ...]] = ("password",)

    def resolved_port(self) -> int:
        return self.port or DEFAULT_SMTP_PORTS[self.security]

    def destinations(self) -> tuple[Endpoint, ...]:
        return (Endpoint("host", self.host, self.resolved_port()),)

    @model_validator(mode="after")
    def _login_is_whole(self) -> SmtpConfig:
        if self.password is not None and self.username is None:
            raise ValueError("a password needs a username")
        return self


class WebhookConfig(ProviderConfigModel):
    signing_secret: Secret | None = Field(
        default=None, description=f"At least {MIN_SIGNING_SECRET} characters; required when creating."
    )
    timeout: Annotated[float, Field(gt=0, le=120)] = 10.0
    max_retries: Annotated[int, Field(ge=0, le=20)] = 5

    secret_fields: ClassVar[tuple[str, ...]] = ("signing_secret",)
    required_secrets: ClassVar[tuple[str, ...]] = ("signing_secret",)

    def destinations(self) -> tuple[Endpoint, ...]:
        return ()  # the URL is part of each webhook template: checked when the template is written

    @field_validator("signing_secret")
    @classmethod
    def _long_enough(cls, value: SecretStr | None) -> SecretStr | None:
        if value is not None and len(value.get_secret_value()) < MIN_SIGNING_SECRET:
            raise ValueError(f"must be at least {MIN_SIGNING_SECRET} characters")
        return value


# -- vendor HTTP APIs ---------------------------------------------------------------------------

E164: Final = re.compile(r"\+[1-9][0-9]{1,14}")  # matched whole (fullmatch): no trailing newline
WHATSAPP_PREFIX: Final = "whatsapp:"
_ALPHANUMERIC_SENDER = re.compile(r"(?=.*[A-Za-z])[A-Za-z0-9 ]{1,11}")
DEFAULT_VENDOR_TIMEOUT: Final = 10.0


def _base_url(value: str) -> str:
    """An http(s) API root: scheme and host (IP literals in canonical form), an optional port and
    path prefix; no credentials, query or fragment. Stored without a trailing slash."""
    try:
        parts = urlsplit(value)
        port = parts.port
    except ValueError as exc:
        raise ValueError(f"not a valid URL: {exc}") from None
    if parts.scheme not in ("http", "https"):
        raise ValueError("must be an http:// or https:// URL")
    if not parts.hostname:
        raise ValueError("must name a host")
    if parts.username is not None or parts.password is not None or parts.query or parts.fragment:
        raise ValueError("must not hold credentials, a query or a fragment")
    if any(ch.isspace() for ch in value):
        raise ValueError("must not contain white space")
    host = _host(parts.hostname)
    netloc = f"[{host}]" if ":" in host else host
    if port is not None:
        netloc += f":{port}"
    return f"{parts.scheme}://{netloc}{parts.path.rstrip('/')}"


BaseUrl = Annotated[str, Field(min_length=1, max_length=2048), AfterValidator(_base_url)]


def _url_endpoint(url: str) -> Endpoint:
    parts = urlsplit(url)
    return Endpoint("base_url", parts.hostname or "", parts.port or (443 if parts.scheme == "https" else 80))


def _sid(prefix: str, what: str) -> Callable[[str], str]:
    pattern = re.compile(re.escape(prefix) + "[0-9a-fA-F]{32}")

    def check(value: str) -> str:
        if not pattern.fullmatch(value):
            raise ValueError(f"not a Twilio {what} ({prefix} followed by 32 hexadecimal digits)")
        return value

    return check


def _twilio_from(value: str) -> str:
    number = value.removeprefix(WHATSAPP_PREFIX)
    if not E164.fullmatch(number):
        raise ValueError("must be an E.164 number (+14155550100), or whatsapp:+<E.164> for WhatsApp")
    return value


def _vonage_from(value: str) -> str:
    if E164.fullmatch(value) or E164.fullmatch("+" + value) or _ALPHANUMERIC_SENDER.fullmatch(value):
        return value
    raise ValueError("must be a number in E.164 (with or without +) or an alphanumeric sender id of 1-11 characters")


class _VendorConfig(ProviderConfigModel):
    """A vendor's HTTP API: ``from`` is a Python keyword (attribute ``from_``, JSON key ``from``)."""

    model_config = ConfigDict(validate_by_name=True, validate_by_alias=True, serialize_by_alias=True)

    base_url: BaseUrl
    timeout: Annotated[float, Field(gt=0, le=60)] = DEFAULT_VENDOR_TIMEOUT

    def destinations(self) -> tuple[Endpoint, ...]:
        return (_url_endpoint(self.base_url),)


class TwilioConfig(_VendorConfig):
    """Twilio Programmable Messaging (``POST /2010-04-01/Accounts/{sid}/Messages.json``)."""

    account_sid: Annotated[str, AfterValidator(_sid("AC", "account SID"))]
    auth_token: Secret | None = Field(default=None, description="Required when creating.")
    from_: Annotated[str, Field(max_length=64), AfterValidator(_twilio_from)] | None = Field(default=None, alias="from")
    messaging_service_sid: Annotated[str, AfterValidator(_sid("MG", "messaging service SID"))] | None = None
    base_url: BaseUrl = "https://api.twilio.com"

    secret_fields: ClassVar[tuple[str, ...]] = ("auth_token",)
    required_secrets: ClassVar[tuple[str, ...]] = ("auth_token",)

    @model_validator(mode="after")
    def _one_sender(self) -> TwilioConfig:
        if (self.from_ is None) == (self.messaging_service_sid is None):
            raise ValueError("exactly one of 'from' and 'messaging_service_sid' is required")
        return self


class VonageConfig(_VendorConfig):
    """The Vonage SMS API (``POST /sms/json``)."""

    api_key: Annotated[str, Field(min_length=1, max_length=64, pattern=r"^[A-Za-z0-9]+$")]
    api_secret: Secret | None = Field(default=None, description="Required when creating.")
    from_: Annotated[str, Field(alias="from", max_length=16), AfterValidator(_vonage_from)]
    base_url: BaseUrl = "https://rest.nexmo.com"

    secret_fields: ClassVar[tuple[str, ...]] = ("api_secret",)
    required_secrets: ClassVar[tuple[str, ...]] = ("api_secret",)


META_API_VERSION: Final = re.compile(r"v[0-9]{1,3}\.[0-9]{1,3}")


def _meta_api_version(value: str) -> str:
    if not META_API_VERSION.fullmatch(value):
        raise ValueError("must be a Graph API version like v21.0")
    return value


class MetaWhatsAppConfig(_VendorConfig):
    """Meta's WhatsApp Cloud API (``POST /{api_version}/{phone_number_id}/messages``, Bearer token)."""

    phone_number_id: Annotated[str, Field(min_length=1, max_length=32, pattern=r"^[0-9]+$")]
    access_token: Secret | None = Field(default=None, description="Required when creating.")
    app_secret: Secret | None = Field(
        default=None, description="Required when creating: verifies Meta's webhook calls (X-Hub-Signature-256)."
    )
    api_version: Annotated[str, Field(max_length=16), AfterValidator(_meta_api_version)] = "v21.0"
    base_url: BaseUrl = "https://graph.facebook.com"

    secret_fields: ClassVar[tuple[str, ...]] = ("access_token", "app_secret")
    required_secrets: ClassVar[tuple[str, ...]] = ("access_token", "app_secret")


# -- push ---------------------------------------------------------------------------------------

GOOGLE_TOKEN_URI: Final = "https://oauth2.googleapis.com/token"
_PEM_PRIVATE_KEY = re.compile(r"-----BEGIN (RSA )?PRIVATE KEY-----[A-Za-z0-9+/=\s]+-----END (RSA )?PRIVATE KEY-----\s*")
SERVICE_ACCOUNT_FIELDS: Final = ("project_id", "client_email", "private_key", "token_uri")


def _token_uri(value: str) -> str:
    """An https(s) URL like ``base_url`` (a path is the endpoint's: kept)."""
    return _base_url(value)


def _pem_private_key(value: SecretStr) -> SecretStr:
    # Shape only: the key itself is loaded once per provider version by the sender (an RSA key's
    # consistency check costs milliseconds, too much for every provider lookup).
    if not _PEM_PRIVATE_KEY.fullmatch(value.get_secret_value()):
        raise ValueError("must be a PEM private key (-----BEGIN PRIVATE KEY----- ...)")
    return value


class FcmConfig(_VendorConfig):
    """Firebase Cloud Messaging HTTP v1 (``POST /v1/projects/{project_id}/messages:send``), with an
    OAuth 2 access token from the service account (a JWT-bearer grant at ``token_uri``).

    Takes the service-account JSON key as ``service_account`` (or its four fields flat)."""

    project_id: Annotated[str, Field(min_length=1, max_length=100, pattern=r"^[a-z0-9][a-z0-9-]*$")]
    client_email: Annotated[str, Field(min_length=3, max_length=320, pattern=r"^[^@\s]+@[^@\s]+$")]
    private_key: Annotated[Secret, AfterValidator(_pem_private_key)] | None = Field(
        default=None, description="Required when creating (the service account's PEM key)."
    )
    token_uri: Annotated[str, Field(min_length=1, max_length=2048), AfterValidator(_token_uri)] = GOOGLE_TOKEN_URI
    base_url: BaseUrl = "https://fcm.googleapis.com"

    secret_fields: ClassVar[tuple[str, ...]] = ("private_key",)
    required_secrets: ClassVar[tuple[str, ...]] = ("private_key",)

    def destinations(self) -> tuple[Endpoint, ...]:
        token = _url_endpoint(self.token_uri)
        return (_url_endpoint(self.base_url), Endpoint("token_uri", token.host, token.port))

    @model_validator(mode="before")
    @classmethod
    def _flatten_service_account(cls, data: Any) -> Any:
        """``{"service_account": {...Google's JSON key...}}``: its four fields taken (the others --
        ``type``, ``private_key_id``, ``client_id``, ``auth_uri``... -- are not used); a field given
        beside it wins."""
        if not isinstance(data, dict) or "service_account" not in data:
            return data
        account = data["service_account"]
        if not isinstance(account, dict):
            raise ValueError("service_account must be the service account's JSON key (an object)")
        rest = {k: v for k, v in data.items() if k != "service_account"}
        taken = {name: account[name] for name in SERVICE_ACCOUNT_FIELDS if name in account}
        return {**taken, **rest}


APNS_HOSTS: Final = {"production": "https://api.push.apple.com", "sandbox": "https://api.sandbox.push.apple.com"}


class ApnsConfig(_VendorConfig):
    """Apple Push Notification service over HTTP/2 (``POST /3/device/{token}``) with an ES256
    provider token made from the ``.p8`` key."""

    team_id: Annotated[str, Field(pattern=r"^[A-Z0-9]{10}$")]
    key_id: Annotated[str, Field(pattern=r"^[A-Z0-9]{10}$")]
    private_key: Annotated[Secret, AfterValidator(_pem_private_key)] | None = Field(
        default=None, description="Required when creating (the .p8 key, PEM)."
    )
    topic: Annotated[str, Field(min_length=1, max_length=255, pattern=r"^[A-Za-z0-9.\-]+$")]
    environment: Literal["production", "sandbox"] = "production"
    base_url: BaseUrl = Field(default="", description="Default: Apple's host for the environment.")

    secret_fields: ClassVar[tuple[str, ...]] = ("private_key",)
    required_secrets: ClassVar[tuple[str, ...]] = ("private_key",)

    @model_validator(mode="before")
    @classmethod
    def _host_of_environment(cls, data: Any) -> Any:
        """No ``base_url``, or Apple's host of either environment (a shown one sent back with
        another ``environment``): the environment's host."""
        if not isinstance(data, dict):
            return data
        base_url, environment = data.get("base_url"), data.get("environment", "production")
        if (base_url is None or base_url in APNS_HOSTS.values()) and environment in APNS_HOSTS:
            return {**data, "base_url": APNS_HOSTS[environment]}
        return data


# -- email over vendor HTTP APIs ----------------------------------------------------------------

AWS_REGION: Final = re.compile(r"[a-z]{2}(-gov|-iso[a-z]?)?-[a-z]+-[1-9][0-9]?")
SES_ENDPOINT: Final = re.compile(r"https://email\.[a-z0-9-]+\.amazonaws\.com")


class SendgridConfig(_VendorConfig):
    """SendGrid v3 Mail Send (``POST /v3/mail/send``, ``Authorization: Bearer <api_key>``)."""

    api_key: Secret | None = Field(default=None, description="Required when creating.")
    base_url: BaseUrl = "https://api.sendgrid.com"

    secret_fields: ClassVar[tuple[str, ...]] = ("api_key",)
    required_secrets: ClassVar[tuple[str, ...]] = ("api_key",)


class PostmarkConfig(_VendorConfig):
    """Postmark's email API (``POST /email``, ``X-Postmark-Server-Token``)."""

    server_token: Secret | None = Field(default=None, description="Required when creating.")
    message_stream: Annotated[
        str,
        Field(
            min_length=1,
            max_length=100,
            pattern=r"^[a-z0-9][a-z0-9-]*$",
            description="The Postmark message stream: 'outbound' (transactional) or 'broadcast' (marketing).",
        ),
    ] = "outbound"
    base_url: BaseUrl = "https://api.postmarkapp.com"

    secret_fields: ClassVar[tuple[str, ...]] = ("server_token",)
    required_secrets: ClassVar[tuple[str, ...]] = ("server_token",)


class SesConfig(_VendorConfig):
    """Amazon SES v2 ``SendEmail`` (``POST /v2/email/outbound-emails``, AWS Signature Version 4)."""

    region: Annotated[str, Field(min_length=1, max_length=32)]
    access_key_id: Annotated[str, Field(min_length=16, max_length=128, pattern=r"^[A-Z0-9]+$")]
    secret_access_key: Secret | None = Field(default=None, description="Required when creating.")
    configuration_set: Annotated[str, Field(min_length=1, max_length=64, pattern=r"^[A-Za-z0-9_-]+$")] | None = None
    base_url: BaseUrl = Field(default="", description="Default: https://email.{region}.amazonaws.com")

    secret_fields: ClassVar[tuple[str, ...]] = ("secret_access_key",)
    required_secrets: ClassVar[tuple[str, ...]] = ("secret_access_key",)

    @field_validator("region")
    @classmethod
    def _a_region(cls, value: str) -> str:
        if not AWS_REGION.fullmatch(value):
            raise ValueError("not an AWS region (like us-east-1 or eu-west-2)")
        return value

    @model_validator(mode="before")
    @classmethod
    def _regional_endpoint(cls, data: Any) -> Any:
        """No ``base_url``, or another region's SES endpoint (a client that read the provider,
        changed ``region`` and sent the shown ``base_url`` back): the region's SES endpoint, since
        SigV4 signs for the region and the endpoint must be the region's (only for a valid region;
        else the region's own error is reported alone)."""
        if not isinstance(data, dict):
            return data
        base_url, region = data.get("base_url"), data.get("region")
        regional = isinstance(base_url, str) and SES_ENDPOINT.fullmatch(base_url.rstrip("/")) is not None
        if base_url is None or regional:
            if isinstance(region, str) and AWS_REGION.fullmatch(region):
                return {**data, "base_url": f"https://email.{region}.amazonaws.com"}
            if base_url is None:
                return {**data, "base_url": "https://email.invalid"}
        return data


ProviderConfig = (
    SmtpConfig
    | WebhookConfig
    | TwilioConfig
    | VonageConfig
    | SendgridConfig
    | PostmarkConfig
    | SesConfig
    | MetaWhatsAppConfig
    | FcmConfig
    | ApnsConfig
)
EMAIL_CONFIGS: Final = (SmtpConfig, SendgridConfig, PostmarkConfig, SesConfig)  # channel email
CONFIG_MODELS: Final[dict[str, type[ProviderConfig]]] = {
    "smtp": SmtpConfig,
    "webhook": WebhookConfig,
    "twilio": TwilioConfig,
    "vonage": VonageConfig,
    "meta_whatsapp": MetaWhatsAppConfig,
    "sendgrid": SendgridConfig,
    "postmark": PostmarkConfig,
    "ses": SesConfig,
    "fcm": FcmConfig,
    "apns": ApnsConfig,
}


def _config_by(sibling: str) -> Callable[[Any, ValidatorFunctionWrapHandler, ValidationInfo], Any]:
    def validate(value: Any, handler: ValidatorFunctionWrapHandler, info: ValidationInfo) -> Any:
        """Validate ``config`` with the model of the provider type (errors at ``config.<field>``)."""
        model = CONFIG_MODELS.get(info.data.get(sibling, ""))
        if model is None:
            return value  # only the type error is reported
        if isinstance(value, Model) and not isinstance(value, model):
            value = value.model_dump(context=REVEAL_SECRETS)
        return model.model_validate(value)

    return validate


TypedConfig = Annotated[ProviderConfig, WrapValidator(_config_by("type"))]


def _channel_matches(value: str, info: ValidationInfo) -> str:
    channel = info.data.get("channel")
    served = CHANNELS_OF.get(value)
    if channel is not None and served is not None and channel not in served:
        names = " or ".join(repr(c) for c in served)
        raise ValueError(f"{value!r} providers deliver on channel {names}, not {channel!r}")
    return value


class ProviderCreate(Model):
    """``POST /api/v1/providers``: the server assigns the id."""

    name: Annotated[str, Field(min_length=1, max_length=200)]
    channel: ProviderChannel
    type: Annotated[ProviderType, AfterValidator(_channel_matches)]
    config: TypedConfig

    secrets_required: ClassVar[bool] = True

    @model_validator(mode="after")
    def _has_required_secrets(self) -> ProviderCreate:
        missing = [name for name in self.config.required_secrets if getattr(self.config, name) is None]
        if self.secrets_required and missing:
            raise ValidationError.from_exception_data(
                type(self).__name__,
                [{"type": "missing", "loc": ("config", name), "input": self.config.model_dump()} for name in missing],
            )
        return self

    @model_validator(mode="after")
    def _sender_fits_channel(self) -> ProviderCreate:
        """A Twilio ``from`` says its channel: ``whatsapp:+...`` on whatsapp, a bare number on sms."""
        config = self.config
        if isinstance(config, TwilioConfig) and config.from_ is not None:
            whatsapp = config.from_.startswith(WHATSAPP_PREFIX)
            if whatsapp != (self.channel == "whatsapp"):
                reason = "must be whatsapp:+<E.164> on channel whatsapp" if not whatsapp else "is a WhatsApp sender"
                raise ValidationError.from_exception_data(
                    type(self).__name__,
                    [
                        {
                            "type": "value_error",
                            "loc": ("config", "from"),
                            "input": config.from_,
                            "ctx": {"error": ValueError(f"{reason}, not for channel {self.channel!r}")},
                        }
                    ],
                )
        return self

    def with_secrets_from(self, previous: ProviderConfig | None) -> ProviderConfig:
        """This config, with each omitted secret taken from ``previous`` (same provider type)."""
        if previous is None or type(previous) is not type(self.config):
            return self.config
        kept = {
            name: getattr(previous, name) for name in self.config.secret_fields if getattr(self.config, name) is None
        }
        return self.config.model_copy(update=kept)


class ProviderUpdate(ProviderCreate):
    """``PUT /api/v1/providers/{id}``: like create; an omitted secret keeps the stored one."""

    secrets_required: ClassVar[bool] = False


class _ProviderFields(Model):
    """What a provider holds (definitions key ``provider/<id>``); each form types ``config``."""

    type: Literal["provider"] = "provider"
    id: str
    project_id: str
    name: str
    channel: ProviderChannel
    provider_type: ProviderType
    config: Any
    version: int
    created_at: UTCDateTime
    updated_at: UTCDateTime
    deleted: bool = False


class ProviderDefinition(_ProviderFields):
    """A provider with its config typed by its provider type, secrets included (in clear)."""

    config: Annotated[ProviderConfig, WrapValidator(_config_by("provider_type"))]

    def storage_dump(self) -> dict[str, Any]:
        """JSON-ready, with secrets in clear: only for sealing (``spotzee.providers.sealing``)."""
        return self.model_dump(mode="json", context=REVEAL_SECRETS)


class StoredProvider(_ProviderFields):
    """A provider as the definitions store holds it: ``config`` with each secret field sealed
    (``{"sealed": "v1...."}``), or a clear string when written by a version before sealing."""

    config: dict[str, Any]


# -- public views -------------------------------------------------------------------------------


class SmtpPublicConfig(Model):
    host: str
    port: int
    username: str | None
    has_password: bool
    security: Literal["none", "starttls", "ssl"]
    timeout: float


class WebhookPublicConfig(Model):
    has_signing_secret: bool
    timeout: float
    max_retries: int


class TwilioPublicConfig(Model):
    model_config = ConfigDict(validate_by_name=True, validate_by_alias=True, serialize_by_alias=True)

    account_sid: str
    has_auth_token: bool
    from_: str | None = Field(alias="from")
    messaging_service_sid: str | None
    base_url: str
    timeout: float


class MetaWhatsAppPublicConfig(Model):
    phone_number_id: str
    has_access_token: bool
    has_app_secret: bool
    api_version: str
    base_url: str
    timeout: float


class VonagePublicConfig(Model):
    model_config = ConfigDict(validate_by_name=True, validate_by_alias=True, serialize_by_alias=True)

    api_key: str
    has_api_secret: bool
    from_: str = Field(alias="from")
    base_url: str
    timeout: float


class SendgridPublicConfig(Model):
    has_api_key: bool
    base_url: str
    timeout: float


class PostmarkPublicConfig(Model):
    has_server_token: bool
    message_stream: str
    base_url: str
    timeout: float


class SesPublicConfig(Model):
    region: str
    access_key_id: str
    has_secret_access_key: bool
    configuration_set: str | None
    base_url: str
    timeout: float


class FcmPublicConfig(Model):
    project_id: str
    client_email: str
    has_private_key: bool
    token_uri: str
    base_url: str
    timeout: float


class ApnsPublicConfig(Model):
    team_id: str
    key_id: str
    has_private_key: bool
    topic: str
    environment: Literal["production", "sandbox"]
    base_url: str
    timeout: float


PublicConfig = (
    MetaWhatsAppPublicConfig
    | ApnsPublicConfig
    | FcmPublicConfig
    | SmtpPublicConfig
    | WebhookPublicConfig
    | TwilioPublicConfig
    | VonagePublicConfig
    | SendgridPublicConfig
    | PostmarkPublicConfig
    | SesPublicConfig
)


def _push_public_config(config: FcmConfig | ApnsConfig, has: Callable[[str], bool]) -> PublicConfig:
    if isinstance(config, ApnsConfig):
        return ApnsPublicConfig(
            team_id=config.team_id,
            key_id=config.key_id,
            has_private_key=has("private_key"),
            topic=config.topic,
            environment=config.environment,
            base_url=config.base_url,
            timeout=config.timeout,
        )
    return FcmPublicConfig(
        project_id=config.project_id,
        client_email=config.client_email,
        has_private_key=has("private_key"),
        token_uri=config.token_uri,
        base_url=config.base_url,
        timeout=config.timeout,
    )


def public_config(config: ProviderConfig, secrets_set: frozenset[str] | None = None) -> PublicConfig:
    """The config without secrets; ``secrets_set`` names the secrets stored (default: those in ``config``)."""

    def has(name: str) -> bool:
        return name in secrets_set if secrets_set is not None else getattr(config, name) is not None

    if isinstance(config, SmtpConfig):
        return SmtpPublicConfig(
            host=config.host,
            port=config.resolved_port(),
            username=config.username,
            has_password=has("password"),
            security=config.security,
            timeout=config.timeout,
        )
    if isinstance(config, TwilioConfig):
        return TwilioPublicConfig(
            account_sid=config.account_sid,
            has_auth_token=has("auth_token"),
            from_=config.from_,
            messaging_service_sid=config.messaging_service_sid,
            base_url=config.base_url,
            timeout=config.timeout,
        )
    if isinstance(config, FcmConfig | ApnsConfig):
        return _push_public_config(config, has)
    if isinstance(config, MetaWhatsAppConfig):
        return MetaWhatsAppPublicConfig(
            phone_number_id=config.phone_number_id,
            has_access_token=has("access_token"),
            has_app_secret=has("app_secret"),
            api_version=config.api_version,
            base_url=config.base_url,
            timeout=config.timeout,
        )
    if isinstance(config, VonageConfig):
        return VonagePublicConfig(
            api_key=config.api_key,
            has_api_secret=has("api_secret"),
            from_=config.from_,
            base_url=config.base_url,
            timeout=config.timeout,
        )
    if isinstance(config, SendgridConfig):
        return SendgridPublicConfig(has_api_key=has("api_key"), base_url=config.base_url, timeout=config.timeout)
    if isinstance(config, PostmarkConfig):
        return PostmarkPublicConfig(
            has_server_token=has("server_token"),
            message_stream=config.message_stream,
            base_url=config.base_url,
            timeout=config.timeout,
        )
    if isinstance(config, SesConfig):
        return SesPublicConfig(
            region=config.region,
            access_key_id=config.access_key_id,
            has_secret_access_key=has("secret_access_key"),
            configuration_set=config.configuration_set,
            base_url=config.base_url,
            timeout=config.timeout,
        )
    return WebhookPublicConfig(
        has_signing_secret=has("signing_secret"), timeout=config.timeout, max_retries=config.max_retries
    )


class ProviderPublic(Model):
    """What the API returns: no secret, only ``has_password`` / ``has_signing_secret`` /
    ``has_auth_token`` / ``has_api_secret``."""

    id: str
    project_id: str
    name: str
    channel: ProviderChannel
    type: ProviderType
    config: PublicConfig
    version: int
    created_at: datetime
    updated_at: datetime

    @classmethod
    def from_stored(cls, stored: StoredProvider) -> ProviderPublic:
        """From the store's form, without opening a secret (a key problem can't hide the list)."""
        model = CONFIG_MODELS[stored.provider_type]
        present = frozenset(name for name in model.secret_fields if stored.config.get(name) is not None)
        config = model.model_validate({k: v for k, v in stored.config.items() if k not in model.secret_fields})
        return cls._of(stored, public_config(config, present))

    @classmethod
    def from_definition(cls, definition: ProviderDefinition) -> ProviderPublic:
        return cls._of(definition, public_config(definition.config))

    @classmethod
    def _of(cls, item: _ProviderFields, config: PublicConfig) -> ProviderPublic:
        return cls(
            id=item.id,
            project_id=item.project_id,
            name=item.name,
            channel=item.channel,
            type=item.provider_type,
            config=config,
            version=item.version,
            created_at=item.created_at,
            updated_at=item.updated_at,
        )
