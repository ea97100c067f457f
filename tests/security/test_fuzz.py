"""A fuzz pass over every operation of ``/openapi.json`` (schemathesis): valid and malformed
bodies, path and query parameters, with the key each route takes. No answer is a 5xx, except a
503 from ``/health`` (documented: not ready). Derandomized, so CI runs the same cases each time;
``SPOTZEE_FUZZ_EXAMPLES`` raises the count for a longer local run.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
import schemathesis
from hypothesis import HealthCheck, Phase, given, settings
from hypothesis.errors import Unsatisfiable
from schemathesis import GenerationMode
from schemathesis.core.errors import InvalidSchema

from tests.support import Stack, running_stack

EXAMPLES = int(os.environ.get("SPOTZEE_FUZZ_EXAMPLES", "20"))
# schemathesis' negative generator sometimes gives up on a recursive schema it cannot malform ("Cannot
# generate an array with 1 demanded elements", seen once in CI on a run the same commit passed again):
# its limitation, not the app's. Tolerated for this many operations; the positive pass covers them.
MAX_UNMALFORMABLE = 3
ORGANISATION_ROUTES = ("/api/v1/projects", "/api/v1/keys", "/api/v1/sql", "/api/v1/audit")
# Calls that would take the fuzzer's own keys away; their refusals are covered by the tenant matrix.
SKIPPED = {("POST", "/api/v1/keys/{key_id}/rotate"), ("DELETE", "/api/v1/keys/{key_id}")}


@pytest.fixture(scope="module")
def fuzz_stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    data_dir: Path = tmp_path_factory.mktemp("fuzz") / "data"
    with running_stack(data_dir) as stack:
        yield stack


def _auth(stack: Stack, path: str) -> dict[str, str]:
    if path.startswith("/v1/"):
        return {"Authorization": httpx.BasicAuth(stack.keys.write_key, "")._auth_header}
    if path.startswith(ORGANISATION_ROUTES):
        return {"Authorization": f"Bearer {stack.keys.admin_key}"}
    if path.startswith("/api/"):
        return {"Authorization": f"Bearer {stack.keys.secret_key}"}
    return {}


@pytest.mark.parametrize("mode", [GenerationMode.POSITIVE, GenerationMode.NEGATIVE], ids=lambda m: m.value)
def test_no_operation_answers_a_server_error(fuzz_stack: Stack, mode: GenerationMode) -> None:
    spec = fuzz_stack.client().get("/openapi.json").json()
    schema = schemathesis.openapi.from_dict(spec)
    failures: list[str] = []
    calls = [0]
    unmalformable: list[str] = []
    operations = [result.ok() for result in schema.get_all_operations()]
    assert len(operations) >= 50
    for operation in operations:
        if (operation.method.upper(), operation.path) in SKIPPED:
            continue
        check = _checker(fuzz_stack, operation, mode, failures, calls)
        try:
            check()
        except Unsatisfiable:
            assert mode is GenerationMode.NEGATIVE, operation.label  # nothing to malform (GET /health)
        except InvalidSchema as exc:
            if mode is not GenerationMode.NEGATIVE or "Cannot generate an array" not in str(exc):
                raise
            unmalformable.append(f"{operation.label}: {exc}")
    assert len(unmalformable) <= MAX_UNMALFORMABLE, unmalformable
    assert calls[0] >= len(operations) * 2, "the fuzzer hardly called anything"
    assert not failures, "\n".join(sorted(set(failures))[:40])


def _checker(stack: Stack, operation: Any, mode: GenerationMode, failures: list[str], calls: list[int]) -> Any:
    headers = _auth(stack, operation.path)

    @settings(
        max_examples=EXAMPLES,
        deadline=None,
        derandomize=True,
        database=None,
        phases=[Phase.explicit, Phase.generate],
        suppress_health_check=list(HealthCheck),
    )
    @given(case=operation.as_strategy(generation_mode=mode))
    def check(case: Any) -> None:
        response = case.call(base_url=stack.base_url, headers=headers, timeout=30)
        calls[0] += 1
        status = response.status_code
        if status >= 500 and not (status == 503 and case.path == "/health"):
            failures.append(f"{case.method} {case.formatted_path} -> {status}: {response.text[:200]}")

    return check


@pytest.mark.parametrize(
    ("method", "path", "content", "content_type"),
    [
        ("POST", "/api/v1/segments", b"{not json", "application/json"),
        ("POST", "/api/v1/segments", b"\xff\xfe\x00", "application/json"),
        ("POST", "/api/v1/journeys", b"[" * 5000 + b"]" * 5000, "application/json"),
        ("POST", "/api/v1/templates", b"[" * 5000 + b"]" * 5000, "application/json"),
        ("POST", "/api/v1/providers", b'{"a":' * 3000 + b"1" + b"}" * 3000, "application/json"),
        ("PATCH", "/api/v1/contacts/u1", b"[" * 5000 + b"]" * 5000, "application/json"),
        ("POST", "/api/v1/projects", b"[" * 5000 + b"]" * 5000, "application/json"),
        ("POST", "/api/v1/lists/x/members", b"[" * 5000 + b"]" * 5000, "application/json"),
        ("POST", "/api/v1/segments", b'{"name": "' + b"x" * (5 * 1024 * 1024) + b'"}', "application/json"),
        ("POST", "/api/v1/templates", b"name=x", "application/x-www-form-urlencoded"),
        ("PUT", "/api/v1/providers/" + "x" * 10_000, b"{}", "application/json"),
        ("GET", "/api/v1/segments/%00%ff/members?limit=-1&cursor=%ff", b"", "text/plain"),
        ("GET", "/api/v1/contacts/" + "%E2%98%83" * 500, b"", "text/plain"),
        ("POST", "/api/v1/lists/x/import", b"\x00" * 1000, "text/csv"),
        ("POST", "/api/v1/sql", b'{"query": "' + b"(" * 20_000 + b'"}', "application/json"),
        ("POST", "/v1/batch", b'{"batch": [' + b"{}," * 3000 + b"{}]}", "application/json"),
    ],
)
def test_malformed_requests_are_4xx(
    fuzz_stack: Stack, method: str, path: str, content: bytes, content_type: str
) -> None:
    headers = {**_auth(fuzz_stack, path), "content-type": content_type}
    response = httpx.request(method, fuzz_stack.base_url + path, content=content, headers=headers, timeout=30)
    assert 400 <= response.status_code < 500, (response.status_code, response.text[:300])
