"""The error envelope every API error answers with, as ``/openapi.json`` documents it.

``spotzee.api.error_handlers`` writes the body (``error_body``); these models only describe it, so
a generated client reads ``error.details[].path`` of a 400 as it really comes.
"""

from __future__ import annotations

from typing import Annotated

from pydantic import BaseModel, Field
from pydantic.json_schema import SkipJsonSchema


class ErrorDetail(BaseModel):
    path: str = Field(
        description="The field at fault, as the request spells it: `userId`, `batch[2].traits.email`, "
        "`rule.rules[1].count.op`, `content.html`; `(body)` for the body as a whole.",
        examples=["batch[1].traits.phone"],
    )
    reason: str = Field(description="What is wrong with it.")
    # Absent, never null, when there is no line: the schema says so (an optional integer).
    line: Annotated[
        int | SkipJsonSchema[None], Field(description="Template errors only: the line in the template.")
    ] = None


class ErrorBody(BaseModel):
    code: str = Field(
        description="Stable and machine-readable, e.g. `invalid_input`, `unauthorized`, `forbidden`, `not_found`, "
        "`conflict`, `payload_too_large`, `overloaded`, `log_unavailable` (docs/api.md lists them).",
        examples=["invalid_input"],
    )
    message: str = Field(description="For people: the details joined, or what went wrong.")
    details: list[ErrorDetail] = Field(description="One entry per field at fault; empty when no field is.")


class ErrorResponse(BaseModel):
    """The body of every error answer."""

    error: ErrorBody
