"""A loopback WhatsApp Cloud API (Meta Graph API): ``POST /{api_version}/{phone_number_id}/messages``.

Strict about what Meta documents: the path's version (``v21.0``) and the business phone number id,
``Authorization: Bearer <access token>``, a JSON body (``Content-Type: application/json``) with
``messaging_product: "whatsapp"``, ``recipient_type: "individual"`` (optional), ``to`` (the number's
digits), ``type`` ``template`` (``template: {"name", "language": {"code"}, "components"?}``, each
component ``{"type": "header"|"body"|"button", "sub_type"?, "index"?, "parameters": [...]}``) or
``text`` (``text: {"body", "preview_url"?}``), no other field. Like Meta it knows which templates
are approved (name, languages, the number of body parameters) and whose 24-hour customer-service
window is open: a session text to anyone else is refused with 131047 (re-engagement message).

Answers as Meta does: ``200 {"messaging_product", "contacts": [{"input", "wa_id"}], "messages":
[{"id": "wamid...."}]}``; errors as Graph API errors ``{"error": {"message", "type", "code",
"error_subcode"?, "error_data"?, "fbtrace_id"}}``: 190 (invalid OAuth token, HTTP 401), 100
(invalid parameter), 131047, 132000 (parameter count mismatch), 132001 (template does not exist).
"""

from __future__ import annotations

import base64
import json
import re
import secrets
from dataclasses import dataclass, field
from typing import Any, Final

from tests.vendors.http_vendor import Answer, Received, VendorServer

PATH: Final = re.compile(r"/(v[0-9]+\.[0-9]+)/([0-9]+)/messages")
DIGITS: Final = re.compile(r"[1-9][0-9]{1,14}")
TOP_LEVEL: Final = frozenset({"messaging_product", "recipient_type", "to", "type", "template", "text"})
COMPONENT_TYPES: Final = frozenset({"header", "body", "button"})
BUTTON_SUB_TYPES: Final = frozenset({"quick_reply", "url"})


def meta_error(
    code: int,
    message: str,
    *,
    type_: str = "OAuthException",
    subcode: int | None = None,
    details: str | None = None,
) -> dict[str, Any]:
    """A Graph API error body, as Meta's Cloud API sends it."""
    error: dict[str, Any] = {"message": message, "type": type_, "code": code}
    if subcode is not None:
        error["error_subcode"] = subcode
    if details is not None:
        error["error_data"] = {"messaging_product": "whatsapp", "details": details}
    error["fbtrace_id"] = "A" + secrets.token_urlsafe(16)
    return {"error": error}


@dataclass
class Approved:
    """An approved message template: its languages and how many body parameters it takes."""

    languages: tuple[str, ...]
    body_parameters: int = 0


@dataclass
class MetaWhatsAppServer(VendorServer):
    phone_number_id: str = "106540352242922"
    access_token: str = "EAAG-test-token"
    templates: dict[str, Approved] = field(default_factory=dict)
    window_open: set[str] = field(default_factory=set)  # numbers (digits) that wrote in the last 24 hours

    def __post_init__(self) -> None:
        VendorServer.__init__(self)

    def answer(self, request: Received) -> Answer:
        match = PATH.fullmatch(request.path)
        if request.method != "POST" or match is None:
            return Answer(400, meta_error(100, "Unknown path components", type_="OAuthException"))
        if request.headers.get("authorization") != f"Bearer {self.access_token}":
            return Answer(401, meta_error(190, "Invalid OAuth access token - Cannot parse access token"))
        if match.group(2) != self.phone_number_id:
            return Answer(
                400,
                meta_error(
                    100,
                    f"Unsupported post request. Object with ID '{match.group(2)}' does not exist",
                    type_="GraphMethodException",
                    subcode=33,
                ),
            )
        if request.headers.get("content-type", "").split(";")[0].strip() != "application/json":
            return Answer(400, meta_error(100, "(#100) The parameter messaging_product is required."))
        try:
            body = json.loads(request.body)
        except ValueError:
            return Answer(400, meta_error(100, "(#100) Invalid JSON"))
        problem = self._problem(body)
        if problem is not None:
            return problem
        to = body["to"]
        if body["type"] == "text" and to not in self.window_open:
            return Answer(
                400,
                meta_error(
                    131047,
                    "(#131047) Re-engagement message",
                    details="Message failed to send because more than 24 hours have passed since the customer "
                    "last replied to this number.",
                ),
            )
        if body["type"] == "template":
            refused = self._template_refused(body["template"])
            if refused is not None:
                return refused
        message_id = "wamid." + base64.b64encode(b"HBgM" + secrets.token_bytes(24)).decode()
        with self.lock:
            self.accepted.append(request)
        message: dict[str, Any] = {"id": message_id}
        if body["type"] == "template":
            message["message_status"] = "accepted"
        return Answer(
            200, {"messaging_product": "whatsapp", "contacts": [{"input": to, "wa_id": to}], "messages": [message]}
        )

    def _problem(self, body: object) -> Answer | None:
        def invalid(what: str) -> Answer:
            return Answer(400, meta_error(100, f"(#100) {what}"))

        if not isinstance(body, dict):
            return invalid("The request body must be a JSON object")
        unknown = set(body) - TOP_LEVEL
        if unknown:
            return invalid(f"Param {sorted(unknown)[0]} is not a valid parameter")
        if body.get("messaging_product") != "whatsapp":
            return invalid("The parameter messaging_product is required.")
        if body.get("recipient_type", "individual") != "individual":
            return invalid("Param recipient_type must be one of {INDIVIDUAL, GROUP}")
        to = body.get("to")
        if not isinstance(to, str) or not DIGITS.fullmatch(to):
            return invalid("Param to must be a phone number's digits")
        kind = body.get("type")
        if kind == "text":
            text = body.get("text")
            if "template" in body or not isinstance(text, dict) or set(text) - {"body", "preview_url"}:
                return invalid("Param text must be an object with body")
            if not isinstance(text.get("body"), str) or not 1 <= len(text["body"]) <= 4096:
                return invalid("Param text['body'] must be between 1 and 4096 characters long.")
            return None
        if kind != "template":
            return invalid("Param type must be one of {TEXT, TEMPLATE, ...}")
        template = body.get("template")
        if "text" in body or not isinstance(template, dict) or set(template) - {"name", "language", "components"}:
            return invalid("Param template must be an object with name, language and components")
        language = template.get("language")
        if not isinstance(template.get("name"), str) or not template["name"]:
            return invalid("The parameter template['name'] is required.")
        if not isinstance(language, dict) or set(language) - {"code", "policy"} or not language.get("code"):
            return invalid("The parameter template['language']['code'] is required.")
        components = template.get("components", [])
        if not isinstance(components, list):
            return invalid("Param template['components'] must be an array.")
        for i, component in enumerate(components):
            where = f"template['components'][{i}]"
            if not isinstance(component, dict) or component.get("type") not in COMPONENT_TYPES:
                return invalid(f"Param {where}['type'] must be one of {{HEADER, BODY, BUTTON}}")
            if set(component) - {"type", "sub_type", "index", "parameters"}:
                return invalid(f"Param {where} has an unknown field")
            if component["type"] == "button":
                if component.get("sub_type") not in BUTTON_SUB_TYPES:
                    return invalid(f"Param {where}['sub_type'] is required for a button")
                if str(component.get("index", "")) not in {str(n) for n in range(10)}:
                    return invalid(f"Param {where}['index'] must be between 0 and 9")
            elif "sub_type" in component or "index" in component:
                return invalid(f"Param {where} takes no sub_type or index")
            parameters = component.get("parameters")
            if not isinstance(parameters, list):
                return invalid(f"Param {where}['parameters'] must be an array.")
            for j, parameter in enumerate(parameters):
                if not isinstance(parameter, dict) or parameter.get("type") not in {"text", "payload"}:
                    return invalid(f"Param {where}['parameters'][{j}]['type'] is invalid.")
                value = parameter.get(parameter["type"])
                if set(parameter) != {"type", parameter["type"]} or not isinstance(value, str) or not value:
                    return invalid(f"Param {where}['parameters'][{j}] must have a non-empty {parameter['type']}.")
        return None

    def _template_refused(self, template: dict[str, Any]) -> Answer | None:
        approved = self.templates.get(template["name"])
        code = template["language"]["code"]
        if approved is None or code not in approved.languages:
            return Answer(
                404,
                meta_error(
                    132001,
                    "(#132001) Template name does not exist in the translation",
                    details=f"template name ({template['name']}) does not exist in {code}",
                ),
            )
        body = [c for c in template.get("components", []) if c["type"] == "body"]
        given = len(body[0]["parameters"]) if body else 0
        if given != approved.body_parameters:
            return Answer(
                400,
                meta_error(
                    132000,
                    "(#132000) Number of parameters does not match the expected number of params",
                    details=f"body: number of localizable_params ({given}) does not match the expected "
                    f"number of params ({approved.body_parameters})",
                ),
            )
        return None
