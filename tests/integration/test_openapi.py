"""``/openapi.json`` is true to the API: the errors it documents are the ``ErrorResponse`` envelope
the app really answers (a 400, never FastAPI's 422), and each route declares the key it takes, so
``/docs`` and a generated client can send it."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import httpx
import pytest

from spotzee.schemas.error_models import ErrorResponse
from tests.support import Stack, running_stack

ENVELOPE = {"$ref": "#/components/schemas/ErrorResponse"}
NO_KEY = {"/health", "/metrics", "/u/{token}"}
# The two error answers that are not the envelope: an unsubscribe link's HTML page, and /health's
# own body while the service is not ready.
NOT_ENVELOPE = {("/u/{token}", "400"), ("/health", "503")}
METHODS = {"get", "post", "put", "patch", "delete"}
# A parameter whose schema says more than "a string" can be refused with a 400.
CONSTRAINTS = {"minimum", "maximum", "exclusiveMinimum", "exclusiveMaximum", "enum", "const", "minLength", "maxLength"}


@pytest.fixture(scope="module")
def live(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    with running_stack(tmp_path_factory.mktemp("openapi") / "data") as stack:
        yield stack


@pytest.fixture(scope="module")
def spec(live: Stack) -> dict[str, Any]:
    document: dict[str, Any] = live.client().get("/openapi.json").json()
    return document


def _operations(spec: dict[str, Any]) -> Iterator[tuple[str, str, dict[str, Any]]]:
    for path, item in spec["paths"].items():
        for method, operation in item.items():
            if method in METHODS:
                yield method.upper(), path, operation


def _json_schema(response: dict[str, Any]) -> Any:
    return response.get("content", {}).get("application/json", {}).get("schema")


def _constrained(schema: dict[str, Any]) -> bool:
    options = [schema, *schema.get("anyOf", []), *schema.get("oneOf", [])]
    return any(CONSTRAINTS & option.keys() for option in options)


def test_no_422_anywhere(spec: dict[str, Any]) -> None:
    documented = [(m, p) for m, p, op in _operations(spec) if "422" in op["responses"]]
    assert not documented
    assert not {"HTTPValidationError", "ValidationError"} & spec["components"]["schemas"].keys()


def test_every_error_is_documented_as_the_envelope(spec: dict[str, Any]) -> None:
    operations = list(_operations(spec))
    assert len(operations) >= 50
    for method, path, operation in operations:
        label = f"{method} {path}"
        responses = operation["responses"]
        assert _json_schema(responses["default"]) == ENVELOPE, label
        for status, response in responses.items():
            if status != "default" and int(status) >= 400:
                assert _json_schema(response) == ENVELOPE or (path, status) in NOT_ENVELOPE, (label, status)
        takes_input = "requestBody" in operation or any(
            _constrained(parameter["schema"]) for parameter in operation.get("parameters", [])
        )
        if takes_input:
            assert _json_schema(responses.get("400", {})) == ENVELOPE, f"{label}: its 400 is not documented"
        if "requestBody" in operation:
            assert "413" in responses, f"{label}: a body over its limit is a 413"


def test_the_envelope_schema_is_the_one_the_handlers_write(spec: dict[str, Any]) -> None:
    schemas = spec["components"]["schemas"]
    assert schemas["ErrorResponse"]["required"] == ["error"]
    assert set(schemas["ErrorBody"]["required"]) == {"code", "message", "details"}
    assert set(schemas["ErrorDetail"]["required"]) == {"path", "reason"}


def test_routes_declare_the_key_they_take(spec: dict[str, Any]) -> None:
    schemes = spec["components"]["securitySchemes"]
    assert (schemes["writeKey"]["type"], schemes["writeKey"]["scheme"]) == ("http", "basic")
    assert (schemes["bearerKey"]["type"], schemes["bearerKey"]["scheme"]) == ("http", "bearer")
    for method, path, operation in _operations(spec):
        label = f"{method} {path}"
        if path.startswith("/api/v1/"):
            assert operation.get("security") == [{"bearerKey": []}], label
            assert {"401", "403"} <= operation["responses"].keys(), label
        elif path.startswith("/v1/"):
            assert operation.get("security") == [{"writeKey": []}], label
            assert {"400", "401", "403", "413", "429", "503"} <= operation["responses"].keys(), label
        else:
            assert path in NO_KEY, label
            assert "security" not in operation, label


def test_the_api_is_described(spec: dict[str, Any]) -> None:
    assert spec["info"]["title"] == "Spotzee"
    description = spec["info"]["description"]
    for term in ("writeKey", "bearerKey", "ErrorResponse", "400", "Retry-After"):
        assert term in description, term
    tags = {tag["name"] for tag in spec["tags"]}
    used = {tag for _, _, operation in _operations(spec) for tag in operation.get("tags", [])}
    assert used <= tags, used - tags


def _malformed(stack: Stack) -> list[tuple[str, str, httpx.Response]]:
    ingest, project, admin = stack.ingest, stack.project, stack.admin
    return [
        ("POST", "/v1/track", ingest.post("/v1/track", content=b"{not json")),
        ("POST", "/v1/identify", ingest.post("/v1/identify", json={"userId": "u1", "traits": {"email": "nope"}})),
        ("POST", "/v1/batch", ingest.post("/v1/batch", json={"batch": "nope"})),
        ("POST", "/api/v1/segments", project.post("/api/v1/segments", json={"name": "x", "rule": {"type": "?"}})),
        ("POST", "/api/v1/segments", project.post("/api/v1/segments", content=b"[" * 300 + b"]" * 300)),
        ("POST", "/api/v1/lists", project.post("/api/v1/lists", json=[1, 2])),
        ("GET", "/api/v1/segments/{segment_id}/members", project.get("/api/v1/segments/s/members?limit=0")),
        ("GET", "/api/v1/lists/{list_id}/export", project.get("/api/v1/lists/l/export?format=xml")),
        ("POST", "/api/v1/projects", admin.post("/api/v1/projects", json={"name": "X", "timezone": "Mars/Base"})),
    ]


def test_a_malformed_request_answers_the_documented_envelope(live: Stack, spec: dict[str, Any]) -> None:
    for method, path, response in _malformed(live):
        label = f"{method} {path}"
        assert response.status_code == 400, (label, response.text)
        assert "400" in spec["paths"][path][method.lower()]["responses"], label
        body = response.json()
        envelope = ErrorResponse.model_validate(body)
        assert envelope.error.code == "invalid_input", (label, body)
        assert envelope.error.details, (label, body)
        documented = set(spec["components"]["schemas"]["ErrorDetail"]["properties"])
        for detail in body["error"]["details"]:
            assert set(detail) <= documented, (label, detail)
        assert list(body) == ["error"], (label, body)
        assert set(body["error"]) == {"code", "message", "details"}, (label, body)


def test_missing_keys_answer_the_documented_envelope(live: Stack, spec: dict[str, Any]) -> None:
    anonymous = live.client()
    for method, path, response in [
        ("POST", "/v1/track", anonymous.post("/v1/track", json={"userId": "u1", "event": "e"})),
        ("GET", "/api/v1/segments", anonymous.get("/api/v1/segments")),
        ("GET", "/api/v1/segments", live.client(live.keys.write_key).get("/api/v1/segments")),
    ]:
        assert str(response.status_code) in spec["paths"][path][method.lower()]["responses"], (path, response.text)
        assert ErrorResponse.model_validate(response.json()).error.code in ("unauthorized", "forbidden")


def test_swagger_ui_is_served(live: Stack) -> None:
    assert live.client().get("/docs").status_code == 200
