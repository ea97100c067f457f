"""Structured logging (structlog), for Spotzee's own lines and the standard library's alike.

No secret ever reaches a log line: tracebacks are plain (no local variables, which held request
headers with API keys), and every formatted line -- message, arguments and traceback together --
passes through ``redact`` last, which masks API keys (``pk_``/``sk_``/``ak_``), HTTP credentials,
unsubscribe tokens and every secret value registered with ``register_secret`` (the Settings'
secrets, provider credentials as they are decrypted).
"""

from __future__ import annotations

import logging
import re
import sys
import threading
from typing import Final

import structlog
from pydantic import BaseModel, SecretStr

MASK: Final = "***"
_MIN_SECRET_LENGTH: Final = 6  # shorter registered values would mask ordinary words
_PATTERNS: Final = (
    # Spotzee API keys: the prefix stays so a reader still knows which kind of key it was.
    (re.compile(r"\b(pk|sk|ak)_[A-Za-z0-9_\-]{6,}"), r"\1_" + MASK),
    # HTTP credentials in headers, however quoted (repr of a header list, a raw request line, ...).
    (re.compile(r"(?i)\b(bearer|basic|token)(\s+|['\"]?\s*[:=]\s*['\"]?)[A-Za-z0-9+/=._~\-]{6,}"), r"\1\2" + MASK),
    (re.compile(r"(?i)(authorization['\"]?\s*[:=,]\s*\(?\s*b?['\"])[^'\"]+"), r"\1" + MASK),
    # Signed links: /u/<payload>.<mac> unsubscribes whoever holds it.
    (re.compile(r"/u/[A-Za-z0-9_\-%]+\.[A-Za-z0-9_\-%]+"), "/u/" + MASK),
    # user:password@ in URLs (ClickHouse and Kafka DSNs).
    (re.compile(r"(?i)\b([a-z][a-z0-9+.\-]*://[^\s/:@]+):[^\s/@]+@"), r"\1:" + MASK + "@"),
)

_secrets: set[str] = set()
_secrets_lock = threading.Lock()
_secret_pattern: re.Pattern[str] | None = None


def register_secret(value: str | SecretStr | None) -> None:
    """Mask ``value`` wherever it would appear in a log line from now on."""
    global _secret_pattern
    raw = value.get_secret_value() if isinstance(value, SecretStr) else value
    if not raw or len(raw) < _MIN_SECRET_LENGTH:
        return
    with _secrets_lock:
        if raw in _secrets:
            return
        _secrets.add(raw)
        # Longest first, so a secret containing another is masked whole.
        alternatives = sorted(_secrets, key=len, reverse=True)
        _secret_pattern = re.compile("|".join(re.escape(s) for s in alternatives))


def redact(text: str) -> str:
    """``text`` with every known kind of secret masked."""
    pattern = _secret_pattern
    if pattern is not None:
        text = pattern.sub(MASK, text)
    for regex, replacement in _PATTERNS:
        text = regex.sub(replacement, text)
    return text


class RedactingFormatter(structlog.stdlib.ProcessorFormatter):
    """structlog's formatter, with the whole rendered line (traceback included) redacted."""

    def format(self, record: logging.LogRecord) -> str:
        return redact(super().format(record))


def settings_secrets(settings: BaseModel) -> tuple[SecretStr | None, ...]:
    """Every ``SecretStr`` field of a settings object (to register before anything logs)."""
    return tuple(value for value in settings.model_dump().values() if isinstance(value, SecretStr))


def configure(level: str = "INFO", *, json_lines: bool = False, secrets: tuple[SecretStr | None, ...] = ()) -> None:
    for secret in secrets:
        register_secret(secret)
    shared: list[structlog.types.Processor] = [
        structlog.contextvars.merge_contextvars,
        structlog.stdlib.add_log_level,
        structlog.stdlib.add_logger_name,
        structlog.processors.TimeStamper(fmt="iso", utc=True),
    ]
    renderer: structlog.types.Processor = (
        structlog.processors.JSONRenderer()
        if json_lines
        # plain_traceback: rich's tracebacks print every frame's local variables.
        else structlog.dev.ConsoleRenderer(colors=False, exception_formatter=structlog.dev.plain_traceback)
    )
    structlog.configure(
        processors=[*shared, structlog.stdlib.ProcessorFormatter.wrap_for_formatter],
        logger_factory=structlog.stdlib.LoggerFactory(),
        cache_logger_on_first_use=True,
    )
    formatter = RedactingFormatter(
        foreign_pre_chain=shared,
        processors=[
            structlog.stdlib.ProcessorFormatter.remove_processors_meta,
            structlog.processors.format_exc_info,
            renderer,
        ],
    )
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(formatter)
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level.upper())
    for noisy in ("uvicorn.access",):
        logging.getLogger(noisy).setLevel(logging.WARNING)
