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
    """Root of every error Spotzee raises on purpose."""

    status_code = 500
    code = "internal_error"

    def __init__(self, message: str, *, details: list[dict[str, Any]] | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.details = details or []


class InvalidInput(SpotzeeError):
    """The caller sent something malformed; ``details`` carry the field paths."""

    status_code = 400
    code = "invalid_input"


class Unauthorized(SpotzeeError):
    status_code = 401
    code = "unauthorized"


class Forbidden(SpotzeeError):
    status_code = 403
    code = "forbidden"


class NotFound(SpotzeeError):
    status_code = 404
    code = "not_found"


class Conflict(SpotzeeError):
    status_code = 409
    code = "conflict"


class PayloadTooLarge(SpotzeeError):
    status_code = 413
    code = "payload_too_large"


class Overloaded(SpotzeeError):
    """The inbound backlog is over its bound; the caller should retry later."""

    status_code = 429
    code = "overloaded"

    def __init__(self, message: str, *, retry_after: int) -> None:
        super().__init__(message)
        self.retry_after = retry_after


class LogUnavailable(SpotzeeError):
    """The durable log cannot accept writes (closed, disk error, broker down)."""

    status_code = 503
    code = "log_unavailable"


class AnalyticsError(SpotzeeError):
    """ClickHouse refused or failed a statement."""

    status_code = 400
    code = "analytics_error"


class AnalyticsUnavailable(SpotzeeError):
    status_code = 503
    code = "analytics_unavailable"
