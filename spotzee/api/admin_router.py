"""The router every ``/api/v1`` (bearer-key) router starts from."""

from __future__ import annotations

from collections.abc import Sequence

from fastapi import APIRouter, params

from spotzee.api.bodies import BoundedJSONRoute
from spotzee.api.error_handlers import error_responses


def admin_router(prefix: str, tag: str, *, dependencies: Sequence[params.Depends] = ()) -> APIRouter:
    """Routes under ``prefix`` (one OpenAPI tag) whose JSON bodies are bounded (``BoundedJSONRoute``),
    each documenting the 401 and 403 of its key check (and any other error: ``default``); a route adds
    the errors it can answer itself."""
    return APIRouter(
        prefix=prefix,
        tags=[tag],
        dependencies=dependencies,
        route_class=BoundedJSONRoute,
        responses=error_responses(401, 403, "default"),
    )
