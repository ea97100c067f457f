"""A loopback SendGrid v3 Mail Send API: ``POST /v3/mail/send``.

Strict about what SendGrid documents: ``Authorization: Bearer <api key>``, a JSON body
(``Content-Type: application/json``) with only documented top-level fields; ``personalizations``
(1 to 1,000, each with a non-empty ``to`` of ``{"email", "name"?}``), ``from.email``, a
non-empty ``subject``, ``content`` (at least one ``{"type", "value"}``, values non-empty,
``text/plain`` first when present), ``headers`` and ``custom_args`` as string maps, ``reply_to``
an ``{"email", "name"?}``. Answers as SendGrid does: ``202 Accepted`` with an empty body and an
``X-Message-Id`` header; errors as ``{"errors": [{"message", "field", "help"}]}`` (401 bad key,
400 invalid payload, 404 unknown path).
"""

from __future__ import annotations

import json
import re
import secrets
from typing import Any, Final

from tests.vendors.http_vendor import Answer, Received, VendorServer

KNOWN: Final = frozenset(
    {
        "personalizations",
        "from",
        "reply_to",
        "reply_to_list",
        "subject",
        "content",
        "attachments",
        "template_id",
        "headers",
        "categories",
        "custom_args",
        "send_at",
        "batch_id",
        "asm",
        "ip_pool_name",
        "mail_settings",
        "tracking_settings",
    }
)
TO_REQUIRED: Final = (
    "The to array is required for all personalization objects, and must ha"
    "ve at least one email object with a valid email address."
)
FROM_REQUIRED: Final = (
    "The from object must be provided for every email send. It is an objec"
    "t that requires the email parameter, but may also contain a name parameter."
)
SUBJECT_REQUIRED: Final = (
    "The subject is required. You can get around this requirement if you u"
    "se a template with a subject defined or if every personalization has a subject defined."
)
EMAIL: Final = re.compile(r"[^@\s]+@[^@\s]+\.[^@\s]+")


def sendgrid_error(message: str, field: str | None = None) -> dict[str, Any]:
    return {"errors": [{"message": message, "field": field, "help": None}]}


def _person_error(value: object, field: str) -> str | None:
    if not isinstance(value, dict) or set(value) - {"email", "name"}:
        return f"{field} must be an object with email and an optional name"
    if not isinstance(value.get("email"), str) or not EMAIL.fullmatch(value["email"]):
        return f"Does not contain a valid address. ({field}.email)"
    if "name" in value and not isinstance(value["name"], str):
        return f"{field}.name must be a string"
    return None


def _string_map(value: object) -> bool:
    return isinstance(value, dict) and all(isinstance(k, str) and isinstance(v, str) for k, v in value.items())


def check_body(body: object) -> dict[str, Any] | None:
    """None when valid, else SendGrid's 400 error body."""
    if not isinstance(body, dict):
        return sendgrid_error("Bad Request")
    unknown = set(body) - KNOWN
    if unknown:
        return sendgrid_error(f"unknown fields {sorted(unknown)}")
    people = body.get("personalizations")
    if not isinstance(people, list) or not 1 <= len(people) <= 1000:
        return sendgrid_error(
            "The personalizations field is required and must have at least one personalization.", "personalizations"
        )
    for index, person in enumerate(people):
        to = person.get("to") if isinstance(person, dict) else None
        if not isinstance(to, list) or not to:
            return sendgrid_error(
                TO_REQUIRED,
                f"personalizations.{index}.to",
            )
        for recipient in to:
            if (problem := _person_error(recipient, f"personalizations.{index}.to")) is not None:
                return sendgrid_error(problem, f"personalizations.{index}.to")
    if (problem := _person_error(body.get("from"), "from")) is not None:
        return sendgrid_error(
            FROM_REQUIRED,
            "from",
        )
    if "reply_to" in body and (problem := _person_error(body["reply_to"], "reply_to")) is not None:
        return sendgrid_error(problem, "reply_to")
    if not isinstance(body.get("subject"), str) or not body["subject"]:
        return sendgrid_error(
            SUBJECT_REQUIRED,
            "subject",
        )
    content = body.get("content")
    if not isinstance(content, list) or not content:
        return sendgrid_error("Unless a valid template_id is provided, the content parameter is required.", "content")
    types = []
    for item in content:
        if not isinstance(item, dict) or set(item) != {"type", "value"}:
            return sendgrid_error("content items must have exactly type and value", "content")
        if not isinstance(item["value"], str) or not item["value"]:
            return sendgrid_error(
                "The content value must be a string at least one character in length.", "content.value"
            )
        types.append(item["type"])
    if "text/plain" in types and types[0] != "text/plain":
        return sendgrid_error(
            "If present, text/plain must be first, followed by text/html, followed by any other content.",
            "content.type",
        )
    for field in ("headers", "custom_args"):
        if field in body and not _string_map(body[field]):
            return sendgrid_error(f"{field} must be a map of strings", field)
    return None


class SendgridServer(VendorServer):
    def __init__(self, api_key: str) -> None:
        super().__init__()
        self.api_key = api_key

    def json(self, request: Received) -> dict[str, Any]:
        body: dict[str, Any] = json.loads(request.body)
        return body

    def answer(self, request: Received) -> Answer:
        if request.method != "POST" or request.path != "/v3/mail/send":
            return Answer(404, sendgrid_error("not found"))
        if request.headers.get("authorization") != f"Bearer {self.api_key}":
            return Answer(401, sendgrid_error("The provided authorization grant is invalid, expired, or revoked"))
        if request.headers.get("content-type", "").split(";")[0].strip() != "application/json":
            return Answer(400, sendgrid_error("Content-Type should be application/json."))
        try:
            body = json.loads(request.body)
        except ValueError:
            return Answer(400, sendgrid_error("Bad Request"))
        problem = check_body(body)
        if problem is not None:
            return Answer(400, problem)
        with self.lock:
            self.accepted.append(request)
        return Answer(202, None, {"X-Message-Id": secrets.token_urlsafe(16)[:22]})
