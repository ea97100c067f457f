"""JSON request bodies nested deeper than ``MAX_BODY_DEPTH`` are refused before they are parsed.

The standard library's JSON reader (which FastAPI uses) recurses once per level and fails with a
RecursionError -- an unhandled 500 -- near 1,000 levels; pydantic's validators recurse too. The
nesting is measured on the bytes instead: strings are cut out by one regular expression, the
remaining brackets are summed in C (``accumulate``), so a large body costs little.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Coroutine
from itertools import accumulate
from typing import Any, Final

from fastapi import Request, Response
from fastapi.routing import APIRoute

from spotzee.errors import InvalidInput
from spotzee.schemas.limits import MAX_BODY_DEPTH

_STRING: Final = re.compile(rb'"(?:[^"\\]|\\.?)*+"?', re.DOTALL)  # an unclosed string runs to the end: never rescans
_NOT_BRACKETS: Final = bytes(b for b in range(256) if b not in b"[]{}")
_STEP: Final = [1 if b in b"[{" else -1 if b in b"]}" else 0 for b in range(256)]


def json_depth(body: bytes) -> int:
    """The deepest nesting of brackets in ``body`` (outside strings); 0 for a scalar."""
    brackets = _STRING.sub(b"", body).translate(None, _NOT_BRACKETS)
    return max(accumulate(map(_STEP.__getitem__, brackets)), default=0)


class BoundedJSONRoute(APIRoute):
    """A route whose JSON body may nest at most ``MAX_BODY_DEPTH`` levels (else 400 at ``(body)``)."""

    def get_route_handler(self) -> Callable[[Request], Coroutine[Any, Any, Response]]:
        handler = super().get_route_handler()

        async def bounded(request: Request) -> Response:
            body = await request.body()  # cached on the request: the handler reads it again for free
            if body and json_depth(body) > MAX_BODY_DEPTH:
                reason = f"JSON nested deeper than {MAX_BODY_DEPTH} levels"
                raise InvalidInput(f"(body): {reason}", details=[{"path": "(body)", "reason": reason}])
            return await handler(request)

        return bounded
