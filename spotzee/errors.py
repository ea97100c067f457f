"""The one exception hierarchy. Third-party errors are mapped to these at the edges."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, Protocol


class _HasErrors(Protocol):  # pydantic's ValidationError, FastAPI's RequestValidationError
    def errors(self) -> Sequence[Any]: ...


def validation_details(exc: _HasErrors, prefix: str = "", skip: int = 0) -> list[dict[str, Any]]:
    """Pydantic errors as ``{"path": "batch[2].userId", "reason": ...}`` entries."""
    details = []
    for error in exc.errors():
        path = prefix
        for part in error["loc"][skip:]:
            if isinstance(part, int):
                path += f"[{part}]"
            else:
                path += f".{part}" if path else str(part)
        reason = str(error["msg"]).removeprefix("Value error, ")
        details.append({"path": path or "(body)", "reason": reason})
    return details


class SpotzeeError(Exception):
    """Root of every error Spotzee raises on purpose.

    A subclass names its HTTP status and error code in its bases:
    ``class NotFound(SpotzeeError, status_code=404, code="not_found")``."""

    status_code = 500
    code = "internal_error"

    def __init_subclass__(cls, *, status_code: int | None = None, code: str | None = None, **kwargs: Any) -> None:
        super().__init_subclass__(**kwargs)
        if status_code is not None:
            cls.status_code = status_code
        if code is not None:
            cls.code = code

    def __init__(self, message: str, *, details: list[dict[str, Any]] | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.details = details or []


class InvalidInput(SpotzeeError, status_code=400, code="invalid_input"):
    """The caller sent something malformed; ``details`` carry the field paths."""


class Unauthorized(SpotzeeError, status_code=401, code="unauthorized"):
    """No API key, or one that is unknown or revoked."""


class Forbidden(SpotzeeError, status_code=403, code="forbidden"):
    """A valid key that may not do this (a kind the endpoint does not take)."""


class NotFound(SpotzeeError, status_code=404, code="not_found"):
    """Nothing by that id for the caller (another project's is not found either)."""


class Conflict(SpotzeeError, status_code=409, code="conflict"):
    """The request contradicts the current state (a reference, a status, a quarantine)."""


class PayloadTooLarge(SpotzeeError, status_code=413, code="payload_too_large"):
    """A request body over its limit."""


class Overloaded(SpotzeeError, status_code=429, code="overloaded"):
    """The inbound backlog is over its bound; the caller should retry later."""

    def __init__(self, message: str, *, retry_after: int) -> None:
        super().__init__(message)
        self.retry_after = retry_after


class LogUnavailable(SpotzeeError, status_code=503, code="log_unavailable"):
    """The durable log cannot accept writes (closed, disk error, broker down)."""


class AnalyticsError(SpotzeeError, status_code=400, code="analytics_error"):
    """ClickHouse refused or failed a statement."""


class AnalyticsUnavailable(SpotzeeError, status_code=503, code="analytics_unavailable"):
    """ClickHouse cannot be reached."""
