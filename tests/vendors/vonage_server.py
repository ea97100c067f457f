"""A loopback Vonage SMS API: ``POST /sms/json``.

Strict about what Vonage documents: ``api_key``, ``api_secret``, ``from``, ``to`` and ``text``
required (status ``2``), the credentials right (status ``4``), ``to`` digits only, without ``+``
(status ``3``), ``type`` one of ``text``/``unicode``/``binary``, ``client-ref`` at most 100
characters; form-encoded or JSON bodies, as Vonage accepts both. One check Vonage does not make
(it would garble the text instead): a text outside GSM-7 must come with ``type=unicode``.
Answers ``200`` with ``{"message-count", "messages": [...]}``: per part ``status`` ``"0"`` with a
``message-id``, or the error status and ``error-text``.
"""

from __future__ import annotations

import json
import re
import secrets
from typing import Any, Final

from spotzee.domain.sms_segments import encoding_of
from tests.vendors.http_vendor import Answer, Received, VendorServer

REQUIRED: Final = ("api_key", "api_secret", "from", "to", "text")
KNOWN: Final = frozenset({*REQUIRED, "type", "client-ref", "callback", "ttl", "status-report-req"})


def vonage_error(status: str, text: str) -> dict[str, Any]:
    return {"message-count": "1", "messages": [{"status": status, "error-text": text}]}


class VonageServer(VendorServer):
    def __init__(self, api_key: str, api_secret: str) -> None:
        super().__init__()
        self.api_key = api_key
        self.api_secret = api_secret
        self.parts = 1  # how many parts a successful answer lists

    def params(self, request: Received) -> dict[str, str]:
        kind = request.headers.get("content-type", "").split(";")[0].strip()
        if kind == "application/json":
            loaded = json.loads(request.body)
            assert isinstance(loaded, dict)
            return {str(k): str(v) for k, v in loaded.items()}
        assert kind == "application/x-www-form-urlencoded", f"unexpected content type {kind!r}"
        return request.form()

    def answer(self, request: Received) -> Answer:
        if request.method != "POST" or request.path != "/sms/json":
            return Answer(404, {"type": "https://developer.vonage.com/api-errors#not-found", "title": "Not Found"})
        params = self.params(request)
        missing = [name for name in REQUIRED if not params.get(name)]
        if missing:
            return Answer(200, vonage_error("2", f"Missing {missing[0]} param"))
        unknown = set(params) - KNOWN
        if unknown:
            return Answer(200, vonage_error("3", f"Invalid parameters {sorted(unknown)}"))
        if (params["api_key"], params["api_secret"]) != (self.api_key, self.api_secret):
            return Answer(200, vonage_error("4", "Bad Credentials"))
        if not re.fullmatch(r"[1-9][0-9]{6,14}", params["to"]):
            return Answer(200, vonage_error("3", "Invalid to param"))
        kind = params.get("type", "text")
        if kind not in ("text", "unicode", "binary"):
            return Answer(200, vonage_error("3", "Invalid type param"))
        if kind == "text" and encoding_of(params["text"]) != "GSM-7":
            return Answer(200, vonage_error("3", "text outside GSM-7 sent without type=unicode"))
        if len(params.get("client-ref", "")) > 100:
            return Answer(200, vonage_error("3", "Invalid client-ref param"))
        with self.lock:
            self.accepted.append(request)
        messages = [
            {
                "to": params["to"],
                "message-id": secrets.token_hex(8).upper(),
                "status": "0",
                "remaining-balance": "15.53590000",
                "message-price": "0.03330000",
                "network": "23410",
                **({"client-ref": params["client-ref"]} if "client-ref" in params else {}),
            }
            for _ in range(self.parts)
        ]
        return Answer(200, {"message-count": str(len(messages)), "messages": messages})
