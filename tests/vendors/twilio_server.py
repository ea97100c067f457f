"""A loopback Twilio Programmable Messaging API: ``POST /2010-04-01/Accounts/{sid}/Messages.json``.

Strict about what Twilio documents: the path's account SID, HTTP Basic ``AccountSid:AuthToken``,
a form-encoded body (``application/x-www-form-urlencoded``) with ``To``, ``Body`` and exactly one
of ``From`` / ``MessagingServiceSid`` (``StatusCallback`` optional, an absolute URL), no other
parameter. Answers as Twilio does: ``201`` with the new Message resource (``sid`` ``SM`` + 32 hex,
``status`` ``queued``, or ``accepted`` through a Messaging Service), errors as
``{"code", "message", "more_info", "status"}`` (20003 authenticate, 20404 not found, 21602 body
required, 21603/21604 sender/recipient required, 21211 invalid To).
"""

from __future__ import annotations

import base64
import re
import secrets
from email.utils import formatdate
from typing import Any, Final

from tests.vendors.http_vendor import Answer, Received, VendorServer

E164: Final = re.compile(r"\+[1-9][0-9]{1,14}")
KNOWN: Final = frozenset({"To", "From", "MessagingServiceSid", "Body", "StatusCallback"})
PATH: Final = re.compile(r"/2010-04-01/Accounts/(AC[0-9a-f]{32})/Messages\.json")


def twilio_error(status: int, code: int, message: str) -> dict[str, Any]:
    return {
        "code": code,
        "message": message,
        "more_info": f"https://www.twilio.com/docs/errors/{code}",
        "status": status,
    }


class TwilioServer(VendorServer):
    def __init__(self, account_sid: str, auth_token: str) -> None:
        super().__init__()
        self.account_sid = account_sid
        self.auth_token = auth_token

    def answer(self, request: Received) -> Answer:
        match = PATH.fullmatch(request.path)
        if request.method != "POST" or match is None:
            return Answer(404, twilio_error(404, 20404, f"The requested resource {request.path} was not found"))
        expected = "Basic " + base64.b64encode(f"{self.account_sid}:{self.auth_token}".encode()).decode()
        if request.headers.get("authorization") != expected or match.group(1) != self.account_sid:
            return Answer(401, twilio_error(401, 20003, "Authenticate"))
        if request.headers.get("content-type", "").split(";")[0].strip() != "application/x-www-form-urlencoded":
            return Answer(400, twilio_error(400, 21000, "the body must be form-encoded"))
        form = request.form()
        unknown = set(form) - KNOWN
        if unknown:
            return Answer(400, twilio_error(400, 21000, f"unknown parameters {sorted(unknown)}"))
        to = form.get("To", "")
        if not to:
            return Answer(400, twilio_error(400, 21604, "A 'To' phone number is required."))
        if not E164.fullmatch(to.removeprefix("whatsapp:")):
            return Answer(400, twilio_error(400, 21211, f"The 'To' number {to} is not a valid phone number."))
        if not form.get("Body"):
            return Answer(400, twilio_error(400, 21602, "Message body is required."))
        if len(form["Body"]) > 1600:
            return Answer(
                400, twilio_error(400, 21617, "The concatenated message body exceeds the 1600 character limit.")
            )
        if ("From" in form) == ("MessagingServiceSid" in form):
            return Answer(400, twilio_error(400, 21603, "A 'From' or 'MessagingServiceSid' parameter is required."))
        callback = form.get("StatusCallback")
        if callback is not None and not re.fullmatch(r"https?://[^/\s]+/\S*", callback):
            return Answer(400, twilio_error(400, 21609, "Invalid StatusCallback URL"))
        sid = "SM" + secrets.token_hex(16)
        with self.lock:
            self.accepted.append(request)
        now = formatdate(usegmt=False)
        return Answer(
            201,
            {
                "account_sid": self.account_sid,
                "api_version": "2010-04-01",
                "body": form["Body"],
                "date_created": now,
                "date_sent": None,
                "date_updated": now,
                "direction": "outbound-api",
                "error_code": None,
                "error_message": None,
                "from": form.get("From"),
                "messaging_service_sid": form.get("MessagingServiceSid"),
                "num_media": "0",
                "num_segments": "1",
                "price": None,
                "price_unit": None,
                "sid": sid,
                "status": "accepted" if "MessagingServiceSid" in form else "queued",
                "subresource_uris": {"media": f"/2010-04-01/Accounts/{self.account_sid}/Messages/{sid}/Media.json"},
                "to": to,
                "uri": f"/2010-04-01/Accounts/{self.account_sid}/Messages/{sid}.json",
            },
        )
