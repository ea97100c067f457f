"""Client configuration for the Kafka runtime, derived from :class:`~spotzee.settings.Settings`.

Three shapes of the same connection settings:

- :func:`kafka_python_config` — keyword arguments for kafka-python clients (admin, lag);
- :func:`aiokafka_config` — keyword arguments for aiokafka producers/consumers;
- :func:`faust_broker_settings` — ``broker`` and ``broker_credentials`` for ``faust.App``.

Only keys that are set are returned, so each client keeps its own defaults for the rest.
"""

from __future__ import annotations

import ssl
from pathlib import Path
from typing import Any

import faust
from aiokafka import AIOKafkaProducer
from aiokafka.helpers import create_ssl_context  # type: ignore[import-untyped, unused-ignore]

from spotzee.errors import InvalidInput
from spotzee.settings import Settings

SSL_PROTOCOLS = frozenset({"SSL", "SASL_SSL"})
SASL_PROTOCOLS = frozenset({"SASL_PLAINTEXT", "SASL_SSL"})
DEFAULT_SASL_MECHANISM = "PLAIN"


def bootstrap_servers(settings: Settings) -> list[str]:
    """``host:port`` entries of ``SPOTZEE_KAFKA_BOOTSTRAP`` (comma-separated), without blanks."""
    servers = [part.strip() for part in settings.kafka_bootstrap.split(",") if part.strip()]
    if not servers:
        raise InvalidInput("SPOTZEE_KAFKA_BOOTSTRAP is empty: give at least one host:port")
    return servers


def uses_ssl(settings: Settings) -> bool:
    return settings.kafka_security_protocol in SSL_PROTOCOLS


def uses_sasl(settings: Settings) -> bool:
    return settings.kafka_security_protocol in SASL_PROTOCOLS


def _sasl(settings: Settings) -> tuple[str, str, str]:
    """(mechanism, username, password) for a SASL protocol; PLAIN when no mechanism is configured."""
    username = settings.kafka_sasl_username
    password = settings.kafka_sasl_password.get_secret_value() if settings.kafka_sasl_password else None
    if not username or password is None:
        raise InvalidInput(
            f"security protocol {settings.kafka_security_protocol} needs SPOTZEE_KAFKA_SASL_USERNAME "
            "and SPOTZEE_KAFKA_SASL_PASSWORD"
        )
    return settings.kafka_sasl_mechanism or DEFAULT_SASL_MECHANISM, username, password


def _ssl_files(settings: Settings) -> dict[str, Path]:
    files = {
        "cafile": settings.kafka_ssl_cafile,
        "certfile": settings.kafka_ssl_certfile,
        "keyfile": settings.kafka_ssl_keyfile,
    }
    return {name: path for name, path in files.items() if path is not None}


def _connection(settings: Settings) -> dict[str, Any]:
    """What kafka-python and aiokafka name alike: servers, protocol, SASL (TLS differs)."""
    config: dict[str, Any] = {
        "bootstrap_servers": bootstrap_servers(settings),
        "security_protocol": settings.kafka_security_protocol,
    }
    if uses_sasl(settings):
        mechanism, username, password = _sasl(settings)
        config.update(sasl_mechanism=mechanism, sasl_plain_username=username, sasl_plain_password=password)
    return config


def kafka_python_config(settings: Settings) -> dict[str, Any]:
    """Connection keyword arguments for kafka-python (``KafkaAdminClient``, ``KafkaConsumer``, ...)."""
    config = _connection(settings)
    if uses_ssl(settings):
        config.update({f"ssl_{name}": str(path) for name, path in _ssl_files(settings).items()})
    return config


def ssl_context(settings: Settings) -> ssl.SSLContext:
    """An SSL context from the configured CA / client certificate files (system CAs when no CA file is set)."""
    files = _ssl_files(settings)
    if "keyfile" in files and "certfile" not in files:
        raise InvalidInput("SPOTZEE_KAFKA_SSL_KEYFILE is set without SPOTZEE_KAFKA_SSL_CERTFILE")
    try:
        context: ssl.SSLContext = create_ssl_context(**{name: str(path) for name, path in files.items()})
    except (OSError, ssl.SSLError) as exc:
        names = ", ".join(f"{name}={path}" for name, path in files.items()) or "system defaults"
        raise InvalidInput(f"cannot build the Kafka SSL context ({names}): {exc}") from exc
    return context


def aiokafka_config(settings: Settings) -> dict[str, Any]:
    """Connection keyword arguments for aiokafka (``AIOKafkaProducer``, ``AIOKafkaConsumer``)."""
    config = _connection(settings)
    if uses_ssl(settings):
        config["ssl_context"] = ssl_context(settings)
    return config


def faust_broker_url(settings: Settings) -> str:
    """``kafka://host:port;kafka://host2:port`` — faust's form of a multi-broker bootstrap list."""
    return ";".join(server if "://" in server else f"kafka://{server}" for server in bootstrap_servers(settings))


def faust_broker_settings(settings: Settings) -> dict[str, Any]:
    """``broker`` and, when the connection is authenticated or encrypted, ``broker_credentials`` for faust.App."""
    result: dict[str, Any] = {"broker": faust_broker_url(settings)}
    context = ssl_context(settings) if uses_ssl(settings) else None
    if uses_sasl(settings):
        mechanism, username, password = _sasl(settings)
        result["broker_credentials"] = faust.SASLCredentials(
            username=username, password=password, ssl_context=context, mechanism=mechanism
        )
    elif context is not None:
        result["broker_credentials"] = faust.SSLCredentials(context)
    return result


def make_producer(settings: Settings) -> AIOKafkaProducer:
    return AIOKafkaProducer(
        **aiokafka_config(settings),
        acks="all",
        enable_idempotence=True,
        linger_ms=5,
        max_batch_size=512 * 1024,
        request_timeout_ms=int(settings.kafka_request_timeout * 1000),
    )
