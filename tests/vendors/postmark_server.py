"""A loopback Postmark email API: ``POST /email``.

Strict about what Postmark documents: the ``X-Postmark-Server-Token`` header, ``Accept`` and
``Content-Type`` both ``application/json``, only documented fields, ``From`` and ``To`` present,
``HtmlBody`` or ``TextBody``, ``Headers`` a list of ``{"Name", "Value"}``, ``Metadata`` a map of
strings (keys up to 20 characters, values up to 80), ``MessageStream`` one of the server's
streams. Answers as Postmark does: ``200 {"To", "SubmittedAt", "MessageID", "ErrorCode": 0,
"Message": "OK"}``; errors as ``{"ErrorCode", "Message"}`` (401 with code 10 for a bad token,
422 with 300 invalid email request, 409 JSON required, 1235 unknown message stream).
"""

from __future__ import annotations

import json
import uuid
from datetime import UTC, datetime
from typing import Any, Final

from tests.vendors.http_vendor import Answer, Received, VendorServer

KNOWN: Final = frozenset(
    {
        "From",
        "To",
        "Cc",
        "Bcc",
        "Subject",
        "Tag",
        "HtmlBody",
        "TextBody",
        "ReplyTo",
        "Headers",
        "TrackOpens",
        "TrackLinks",
        "Metadata",
        "Attachments",
        "MessageStream",
    }
)


def postmark_error(code: int, message: str) -> dict[str, Any]:
    return {"ErrorCode": code, "Message": message}


def _problem(body: object, streams: frozenset[str]) -> dict[str, Any] | None:
    if not isinstance(body, dict):
        return postmark_error(402, "Received invalid JSON input.")
    unknown = set(body) - KNOWN
    if unknown:
        return postmark_error(403, f"Incompatible JSON input: {sorted(unknown)}")
    for field in ("From", "To"):
        if not isinstance(body.get(field), str) or "@" not in body[field]:
            return postmark_error(300, f"Invalid email request: '{field}' address is missing or invalid.")
    if not body.get("HtmlBody") and not body.get("TextBody"):
        return postmark_error(300, "Invalid email request: Provide either email TextBody or HtmlBody or both.")
    headers = body.get("Headers", [])
    if not isinstance(headers, list) or not all(
        isinstance(h, dict) and set(h) == {"Name", "Value"} and all(isinstance(v, str) for v in h.values())
        for h in headers
    ):
        return postmark_error(300, "Invalid email request: Headers must be a list of Name/Value pairs.")
    metadata = body.get("Metadata", {})
    if not isinstance(metadata, dict) or not all(
        isinstance(k, str) and isinstance(v, str) and len(k) <= 20 and len(v) <= 80 for k, v in metadata.items()
    ):
        return postmark_error(300, "Invalid email request: Metadata values must be strings of up to 80 characters.")
    if body.get("MessageStream", "outbound") not in streams:
        return postmark_error(1235, f"The message stream for the provided 'ID' was not found: {body['MessageStream']}")
    return None


class PostmarkServer(VendorServer):
    def __init__(self, server_token: str, streams: frozenset[str] = frozenset({"outbound", "broadcast"})) -> None:
        super().__init__()
        self.server_token = server_token
        self.streams = streams

    def json(self, request: Received) -> dict[str, Any]:
        body: dict[str, Any] = json.loads(request.body)
        return body

    def answer(self, request: Received) -> Answer:
        if request.method != "POST" or request.path != "/email":
            return Answer(404, postmark_error(404, "Not found"))
        if request.headers.get("x-postmark-server-token") != self.server_token:
            return Answer(
                401,
                postmark_error(
                    10, "The Server Token you provided in the X-Postmark-Server-Token request header was invalid."
                ),
            )
        for header in ("content-type", "accept"):
            if request.headers.get(header, "").split(";")[0].strip() != "application/json":
                return Answer(415, postmark_error(409, "JSON data required. Please check your request headers."))
        try:
            body = json.loads(request.body)
        except ValueError:
            return Answer(422, postmark_error(402, "Received invalid JSON input."))
        problem = _problem(body, self.streams)
        if problem is not None:
            return Answer(422, problem)
        with self.lock:
            self.accepted.append(request)
        return Answer(
            200,
            {
                "To": body["To"],
                "SubmittedAt": datetime.now(UTC).isoformat(),
                "MessageID": str(uuid.uuid4()),
                "ErrorCode": 0,
                "Message": "OK",
            },
        )
