"""Issue 9, class 7: malformed requests are 4xx answers, never 500s or broken connections."""

from __future__ import annotations

import httpx
import pytest

from tests.support import Stack


@pytest.mark.parametrize(
    "header",
    [
        "Basic !!!not-base64!!!",
        "Basic " + "é" * 8,
        "Basic cGtf",  # valid base64 of "pk_": no such key
        "Basic //79/Q==",  # base64 of bytes that are not UTF-8
        "Basic",
    ],
)
def test_malformed_basic_authorization_is_401(shared_stack: Stack, header: str) -> None:
    response = httpx.post(
        f"{shared_stack.base_url}/v1/track",
        content=b'{"userId":"u1","event":"e"}',
        headers={"authorization": header.encode("utf-8"), "content-type": "application/json"},
    )
    assert response.status_code == 401, response.text
    assert response.json()["error"]["code"] == "unauthorized"


@pytest.mark.parametrize("token", ["é", "abc.déf", "%E2%98%83.%E2%98%83", "x" * 5000, "a.b.c", "..."])
def test_unsubscribe_links_that_are_not_ours_are_400(shared_stack: Stack, token: str) -> None:
    client = shared_stack.client()
    for method in ("GET", "POST"):
        response = client.request(method, f"/u/{token}")
        assert response.status_code == 400, (method, token, response.text)
        assert "not valid" in response.text


def test_exporting_an_unknown_or_foreign_list_is_404_before_any_byte(shared_stack: Stack) -> None:
    other = shared_stack.admin.post("/api/v1/projects", json={"name": "other"})
    assert other.status_code == 201, other.text
    foreign_key = other.json()["secret_key"]["key"]
    with shared_stack.client(foreign_key) as foreign:
        created = foreign.post("/api/v1/lists", json={"name": "theirs"})
        assert created.status_code == 201, created.text
        foreign_list = created.json()["id"]
    for list_id in ("lst_unknown", foreign_list, "é", "../../keys"):
        for fmt in ("csv", "ndjson"):
            response = shared_stack.project.get(f"/api/v1/lists/{list_id}/export", params={"format": fmt})
            assert response.status_code == 404, (list_id, response.status_code, response.text)
            assert response.json()["error"]["code"] == "not_found"
