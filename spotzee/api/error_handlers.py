"""Maps Spotzee and validation errors to HTTP responses: ``{"error": {code, message, details}}``,
and documents them in ``/openapi.json`` (``error_responses``: the ``ErrorResponse`` model per status)."""

from __future__ import annotations

import logging
from typing import Any, Final

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from starlette.exceptions import HTTPException as StarletteHTTPException

from spotzee.errors import InvalidInput, Overloaded, SpotzeeError, validation_details
from spotzee.schemas.error_models import ErrorResponse

log = logging.getLogger(__name__)


def error_body(code: str, message: str, details: list[dict[str, Any]] | None = None) -> dict[str, Any]:
    return {"error": {"code": code, "message": message, "details": details or []}}


_WHEN: Final[dict[int | str, str]] = {
    400: "`invalid_input` (also `template_render_error`, `analytics_error`): a malformed body, field or "
    "parameter; `details[].path` names each field at fault",
    401: "`unauthorized`: no key, or an unknown, revoked or malformed one",
    403: "`forbidden`: a key of a kind this route does not take",
    404: "`not_found`: nothing with this id in the key's project (or organisation)",
    409: "`conflict`: the object's state refuses this (quarantined, referenced, archived, not live, last admin key)",
    413: "`payload_too_large`: the body is over its limit",
    429: "`overloaded`: more work is queued than the service takes; retry after `Retry-After` seconds",
    503: "`log_unavailable` or `analytics_unavailable`: the log or ClickHouse can't serve the request now",
    # Every route: documenting it also keeps FastAPI from adding a 422 ``HTTPValidationError``, an
    # answer this app never gives (validation errors are 400s, ``_validation`` below).
    "default": "Any other error, in the same envelope: 405 `method_not_allowed`, 500 `internal_error`",
}
_RETRY_AFTER: Final = {
    "Retry-After": {"description": "Seconds to wait before retrying.", "schema": {"type": "integer"}}
}
_ENVELOPE_REF: Final = {"application/json": {"schema": {"$ref": "#/components/schemas/ErrorResponse"}}}


def _documented(status: int | str) -> dict[str, Any]:
    return {"description": _WHEN[status], **({"headers": _RETRY_AFTER} if status == 429 else {})}


def error_responses(*statuses: int | str) -> dict[int | str, dict[str, Any]]:
    """OpenAPI ``responses`` for the errors a JSON route can answer: each the ``ErrorResponse``
    envelope, and when it happens. Every route documents ``"default"`` too."""
    return {status: {"model": ErrorResponse, **_documented(status)} for status in statuses}


def envelope_responses(*statuses: int | str) -> dict[int | str, dict[str, Any]]:
    """The same for a route whose own answers are not JSON (an HTML page, Prometheus text): FastAPI
    would document a ``model`` in the route's media type, so the envelope is named by reference."""
    return {status: {"content": _ENVELOPE_REF, **_documented(status)} for status in statuses}


def install(app: FastAPI) -> None:
    @app.exception_handler(SpotzeeError)
    async def _spotzee(request: Request, exc: SpotzeeError) -> JSONResponse:
        headers = {"Retry-After": str(exc.retry_after)} if isinstance(exc, Overloaded) else None
        return JSONResponse(
            error_body(exc.code, exc.message, exc.details), status_code=exc.status_code, headers=headers
        )

    @app.exception_handler(StarletteHTTPException)
    async def _http(request: Request, exc: StarletteHTTPException) -> JSONResponse:
        code = {404: "not_found", 405: "method_not_allowed"}.get(exc.status_code, "http_error")
        return JSONResponse(
            error_body(code, str(exc.detail)), status_code=exc.status_code, headers=getattr(exc, "headers", None)
        )

    @app.exception_handler(Exception)
    async def _unhandled(request: Request, exc: Exception) -> JSONResponse:
        # Logged here, through the redacting root handler, whatever server runs the app; the
        # answer says nothing about the cause. (Starlette re-raises afterwards for the server.)
        log.error("unhandled error on %s %s", request.method, request.url.path, exc_info=exc)
        return JSONResponse(error_body("internal_error", "internal error"), status_code=500)

    @app.exception_handler(RequestValidationError)
    async def _validation(request: Request, exc: RequestValidationError) -> JSONResponse:
        details = validation_details(exc, skip=1)
        message = "; ".join(f"{d['path']}: {d['reason']}" for d in details)
        return JSONResponse(error_body(InvalidInput.code, message, details), status_code=400)
