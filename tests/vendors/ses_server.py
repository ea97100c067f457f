"""A loopback Amazon SES v2 API: ``SendEmail`` at ``POST /v2/email/outbound-emails``.

Strict about what AWS documents: the request is signed with Signature Version 4 (``Authorization:
AWS4-HMAC-SHA256 Credential=<key>/<date>/<region>/ses/aws4_request, SignedHeaders=..., Signature=...``):
the access key must be known (else 403 ``UnrecognizedClientException``), the scope's region and
service this endpoint's, ``host`` and ``x-amz-date`` signed, the date within 15 minutes (else 403
``InvalidSignatureException``, "Signature expired"), and the signature recomputed here from the
received request, with the same algorithm (``spotzee.providers.sigv4``, itself tested against
AWS's published test vectors), must match (else 403 ``SignatureDoesNotMatch``). The JSON body
takes only ``SendEmail``'s fields; ``FromEmailAddress``, ``Destination.ToAddresses`` and
``Content.Simple`` (``Subject.Data``, ``Body.Text`` and/or ``Body.Html``, ``Headers`` as
``{"Name", "Value"}``) are required; ``ConfigurationSetName`` must exist. Answers as SES does:
``200 {"MessageId"}``; errors with the ``x-amzn-ErrorType`` header and ``{"message"}``.
"""

from __future__ import annotations

import json
import re
import secrets
from datetime import UTC, datetime
from typing import Any, Final

from spotzee.providers.sigv4 import signature
from tests.vendors.http_vendor import Answer, Received, VendorServer

PATH: Final = "/v2/email/outbound-emails"
AUTHORIZATION: Final = re.compile(
    r"AWS4-HMAC-SHA256 Credential=([^/\s]+)/(\d{8})/([a-z0-9-]+)/([a-z0-9]+)/aws4_request, "
    r"SignedHeaders=([a-z0-9;-]+), Signature=([0-9a-f]{64})"
)
KNOWN: Final = frozenset(
    {
        "FromEmailAddress",
        "FromEmailAddressIdentityArn",
        "Destination",
        "ReplyToAddresses",
        "FeedbackForwardingEmailAddress",
        "FeedbackForwardingEmailAddressIdentityArn",
        "Content",
        "EmailTags",
        "ConfigurationSetName",
        "EndpointId",
        "ListManagementOptions",
    }
)
MAX_SKEW: Final = 15 * 60


def ses_error(kind: str, message: str) -> tuple[dict[str, Any], dict[str, str]]:
    """SES's error body and headers: ``fail_next(status, *ses_error(...))`` needs ``headers=``."""
    return {"message": message}, {"x-amzn-ErrorType": f"{kind}:http://internal.amazon.com/coral/com.amazonaws.sesv2/"}


def _error(status: int, kind: str, message: str) -> Answer:
    body, headers = ses_error(kind, message)
    return Answer(status, body, headers)


def _content_problem(content: object) -> str | None:
    simple = content.get("Simple") if isinstance(content, dict) else None
    if not isinstance(simple, dict) or set(simple) - {"Subject", "Body", "Headers"}:
        return "Content.Simple is required"
    subject = simple.get("Subject")
    if not isinstance(subject, dict) or not isinstance(subject.get("Data"), str):
        return "Content.Simple.Subject.Data is required"
    body = simple.get("Body")
    if not isinstance(body, dict) or not body or set(body) - {"Text", "Html"}:
        return "Content.Simple.Body needs Text or Html"
    if not all(isinstance(part, dict) and isinstance(part.get("Data"), str) for part in body.values()):
        return "Content.Simple.Body parts need Data"
    headers = simple.get("Headers", [])
    if not isinstance(headers, list) or not all(
        isinstance(h, dict) and set(h) == {"Name", "Value"} and all(isinstance(v, str) for v in h.values())
        for h in headers
    ):
        return "Content.Simple.Headers must be Name/Value pairs"
    return None


class SesServer(VendorServer):
    def __init__(
        self,
        access_key_id: str,
        secret_access_key: str,
        *,
        region: str = "us-east-1",
        configuration_sets: frozenset[str] = frozenset(),
    ) -> None:
        super().__init__()
        self.keys = {access_key_id: secret_access_key}
        self.region = region
        self.configuration_sets = configuration_sets

    def json(self, request: Received) -> dict[str, Any]:
        body: dict[str, Any] = json.loads(request.body)
        return body

    def authenticate(self, request: Received) -> Answer | None:
        """None when the request is signed by a known key; else SES's 403."""
        match = AUTHORIZATION.fullmatch(request.headers.get("authorization", ""))
        if match is None:
            return _error(403, "MissingAuthenticationTokenException", "Missing Authentication Token")
        key, date, region, service, signed, given = match.groups()
        secret = self.keys.get(key)
        if secret is None:
            return _error(403, "UnrecognizedClientException", "The security token included in the request is invalid.")
        names = signed.split(";")
        timestamp = request.headers.get("x-amz-date", "")
        if region != self.region or service != "ses" or not {"host", "x-amz-date"} <= set(names):
            return _error(
                403, "InvalidSignatureException", f"Credential should be scoped correctly: {region}/{service}"
            )
        try:
            moment = datetime.strptime(timestamp, "%Y%m%dT%H%M%SZ").replace(tzinfo=UTC)
        except ValueError:
            return _error(403, "InvalidSignatureException", "X-Amz-Date is not in the ISO 8601 basic format")
        if date != timestamp[:8] or abs((datetime.now(UTC) - moment).total_seconds()) > MAX_SKEW:
            return _error(403, "InvalidSignatureException", "Signature expired")
        if any(name not in request.headers for name in names):
            return _error(403, "SignatureDoesNotMatch", "a signed header is missing")
        headers = {name: request.headers[name] for name in names}
        expected, _ = signature(
            secret,
            request.method,
            f"http://{request.headers['host']}{request.path}",
            headers,
            request.body,
            region=region,
            service=service,
        )
        if not secrets.compare_digest(expected, given):
            return _error(
                403,
                "SignatureDoesNotMatch",
                "The request signature we calculated does not match the signature you provided. "
                "Check your AWS Secret Access Key and signing method. Consult the service documentation for details.",
            )
        return None

    def answer(self, request: Received) -> Answer:
        if request.method != "POST" or request.path != PATH:
            return _error(404, "UnknownOperationException", "")
        refused = self.authenticate(request)
        if refused is not None:
            return refused
        try:
            body = json.loads(request.body)
        except ValueError:
            return _error(400, "SerializationException", "Start of structure or map found where not expected.")
        if not isinstance(body, dict) or set(body) - KNOWN:
            return _error(400, "SerializationException", f"Unexpected fields: {sorted(set(body) - KNOWN)}")
        if not isinstance(body.get("FromEmailAddress"), str) or "@" not in body["FromEmailAddress"]:
            return _error(400, "BadRequestException", "Missing final '@domain'")
        destination = body.get("Destination")
        to = destination.get("ToAddresses") if isinstance(destination, dict) else None
        if not isinstance(to, list) or not to or not all(isinstance(a, str) and "@" in a for a in to):
            return _error(400, "BadRequestException", "Destination.ToAddresses is required")
        problem = _content_problem(body.get("Content"))
        if problem is not None:
            return _error(400, "BadRequestException", problem)
        configuration_set = body.get("ConfigurationSetName")
        if configuration_set is not None and configuration_set not in self.configuration_sets:
            return _error(404, "NotFoundException", f"Configuration set <{configuration_set}> does not exist.")
        with self.lock:
            self.accepted.append(request)
        message_id = f"0100{secrets.token_hex(6)}-{secrets.token_hex(4)}-{secrets.token_hex(2)}-000000"
        return Answer(200, {"MessageId": message_id})
