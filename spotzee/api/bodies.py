"""JSON request bodies of the admin API: at most ``MAX_BODY_BYTES`` and ``MAX_BODY_DEPTH`` levels,
refused before they are parsed.

Without a size limit a client could make the server hold a body of any size in memory (FastAPI
reads it whole before validating it); routes that take large uploads read their own body with
their own limit and declare no body model (list imports: 50 MB), so they are not affected.

The standard library's JSON reader (which FastAPI uses) recurses once per level and fails with a
RecursionError -- an unhandled 500 -- near 1,000 levels; pydantic's validators recurse too. The
nesting is measured on the bytes instead, by whole-buffer operations in C (``json_depth``), so a
large body costs little: about 0.3 µs per event of a ``/v1/batch`` body, which is measured on every
request.
"""

from __future__ import annotations

from collections.abc import Callable, Coroutine
from itertools import accumulate
from typing import Any, Final

from fastapi import Request, Response
from fastapi.routing import APIRoute

from spotzee.errors import InvalidInput, PayloadTooLarge
from spotzee.schemas.limits import MAX_BODY_BYTES, MAX_BODY_DEPTH

_NOT_STRUCTURE: Final = bytes(b for b in range(256) if b not in b'[]{}"')
_PARENS: Final = bytes.maketrans(b"[{]}", b"(())")
_STEP: Final = [1 if b in b"[{" else -1 if b in b"]}" else 0 for b in range(256)]
_ROUNDS: Final = 64


def json_depth(body: bytes) -> int:
    """The deepest nesting of brackets in ``body`` outside strings; 0 for a scalar.

    Escaped backslashes, then escaped quotes, are removed, so every quote left opens or closes a
    string. Keeping only brackets and quotes empties every string without a bracket (``""``, removed);
    the few strings left are cut out. The brackets are then mapped to parentheses and the innermost
    pairs removed, one level per round, each round one ``replace`` in C. A body deeper than
    ``_ROUNDS`` levels (a round copies what is left: rounds are kept few) or unbalanced (invalid JSON)
    is summed bracket by bracket instead: for what a JSON reader reads before its first error, either
    way counts the same levels."""
    if b"\\" in body:
        body = body.replace(b"\\\\", b"").replace(b'\\"', b"")
    structure = body.translate(None, _NOT_STRUCTURE).replace(b'""', b"")
    if b'"' in structure:
        structure = b"".join(structure.split(b'"')[::2])
    rest, depth = structure.translate(_PARENS), 0
    while rest:
        inner = rest.replace(b"()", b"")
        if len(inner) == len(rest) or depth == _ROUNDS:
            return max(accumulate(map(_STEP.__getitem__, structure)), default=0)
        rest, depth = inner, depth + 1
    return depth


def _size(limit: int) -> str:
    return f"{limit // 1024} KB" if limit % 1024 == 0 else f"{limit} bytes"


async def read_bounded(request: Request, limit: int) -> bytes:
    """The body, refused with 413 past ``limit`` bytes (declared or streamed), cached on the request
    as Starlette caches it (``Request.body``), so the handler reads it again for free."""
    declared = request.headers.get("content-length", "")
    if declared.isdigit() and int(declared) > limit:
        raise PayloadTooLarge(f"request body is {declared} bytes; the limit is {_size(limit)}")
    chunks, size = [], 0
    async for chunk in request.stream():
        size += len(chunk)
        if size > limit:
            raise PayloadTooLarge(f"request body exceeds the limit of {_size(limit)}")
        chunks.append(chunk)
    body = b"".join(chunks)
    request._body = body  # what Request.body() sets: later readers get the same bytes
    return body


class BoundedJSONRoute(APIRoute):
    """A route whose JSON body is at most ``MAX_BODY_BYTES`` (else 413) and nests at most
    ``MAX_BODY_DEPTH`` levels (else 400 at ``(body)``). Routes without a body model are untouched."""

    def get_route_handler(self) -> Callable[[Request], Coroutine[Any, Any, Response]]:
        handler = super().get_route_handler()
        if self.body_field is None:
            return handler

        async def bounded(request: Request) -> Response:
            body = await read_bounded(request, MAX_BODY_BYTES)
            if body and json_depth(body) > MAX_BODY_DEPTH:
                reason = f"JSON nested deeper than {MAX_BODY_DEPTH} levels"
                raise InvalidInput(f"(body): {reason}", details=[{"path": "(body)", "reason": reason}])
            return await handler(request)

        return bounded
