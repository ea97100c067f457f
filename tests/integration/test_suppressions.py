"""The project-wide suppression list through the API and at send time, on both runtimes:
normalised entries, paging, the per-project bound, bad input refused without storing anything,
projects kept apart, and a journey email to a suppressed address recorded ``suppressed`` and never
sent, until the entry is removed."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any
from urllib.parse import quote

import httpx
import pytest

import spotzee.services.suppression_service as suppression_service
from spotzee.schemas.suppression_models import MAX_NOTE, MAX_PAGE, suppression_key
from spotzee.services.suppression_service import SuppressionIndex, suppression_lookup
from spotzee.streams.record_codec import dumps
from tests.integration.test_delivery import Inbox, inbox, journey, publish, welcome_through_relay
from tests.support import LOOPBACK_RELAY, Stack, running_stack, wait_until

__all__ = ["inbox"]  # the SMTP server fixture, shared with test_delivery

ADA = {"channel": "email", "address": "Ada@Example.COM", "reason": "complaint", "note": "asked by phone"}


@pytest.fixture
def stack(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Stack]:
    """conftest's ``stack``, allowed to deliver to the SMTP server on loopback."""
    runtime = getattr(request, "param", "embedded")
    bootstrap = request.getfixturevalue("kafka_bootstrap") if runtime == "kafka" else None
    with running_stack(tmp_path / "data", runtime=runtime, kafka_bootstrap=bootstrap, **LOOPBACK_RELAY) as running:
        yield running


def path(channel: str, address: str) -> str:
    return f"/api/v1/suppressions/{channel}/{quote(address, safe='')}"


def listed(client: httpx.Client, **params: Any) -> list[dict[str, Any]]:
    response = client.get("/api/v1/suppressions", params=params)
    assert response.status_code == 200, response.text
    items: list[dict[str, Any]] = response.json()["items"]
    return items


def test_entries_are_added_read_normalised_and_removed(stack: Stack) -> None:
    project = stack.project
    added = project.post("/api/v1/suppressions", json=ADA)
    assert added.status_code == 201, added.text
    entry = added.json()
    assert set(entry) == {"channel", "address", "reason", "note", "created_at"}
    assert (entry["channel"], entry["address"], entry["reason"], entry["note"]) == (
        "email",
        "ada@example.com",  # normalised as the contact's email trait, then lower-cased whole
        "complaint",
        "asked by phone",
    )
    # the same address in another spelling is the same entry: POST is idempotent (200, unchanged)
    again = project.post("/api/v1/suppressions", json={"channel": "email", "address": "  Ada@EXAMPLE.com "})
    assert again.status_code == 200, again.text
    assert again.json() == entry
    for spelling in ("Ada@Example.COM", "ada@example.com", "ADA@EXAMPLE.COM"):
        got = project.get(path("email", spelling))
        assert got.status_code == 200, got.text
        assert got.json() == entry
    # an IDNA domain is stored in the form the contact's email trait has
    idna = project.post("/api/v1/suppressions", json={"channel": "email", "address": "X@BÜCHER.de"}).json()
    assert idna["address"] == "x@bücher.de"
    punycode = project.post("/api/v1/suppressions", json={"channel": "email", "address": "x@xn--bcher-kva.de"})
    assert punycode.status_code == 200  # the same mailbox
    assert punycode.json() == idna
    assert (idna["reason"], idna["note"]) == ("manual", None)
    # phones are E.164, formatting tolerated; push tokens as given
    phone = project.post("/api/v1/suppressions", json={"channel": "sms", "address": "+44 20 7946 0958"})
    assert phone.status_code == 201, phone.text
    assert phone.json()["address"] == "+442079460958"
    assert project.get(path("sms", "+442079460958")).status_code == 200
    assert project.get(path("whatsapp", "+442079460958")).status_code == 404  # channels are apart
    token = "fcm:APA91b/Hx_+=-token"
    assert project.post("/api/v1/suppressions", json={"channel": "push", "address": token}).status_code == 201
    assert project.get(path("push", token)).json()["address"] == token

    assert project.delete(path("email", "ADA@example.com")).status_code == 204
    for response in (project.get(path("email", "ada@example.com")), project.delete(path("email", "ada@example.com"))):
        assert response.status_code == 404, response.text
        assert response.json()["error"]["code"] == "not_found"
    assert sorted(e["address"] for e in listed(project)) == sorted(["x@bücher.de", "+442079460958", token])

    # each write has its audit row, before and after
    stack.settle()
    key = suppression_key(stack.keys.project_id, "email", "ada@example.com")
    items = stack.project.get("/api/v1/audit", params={"limit": 1000}).json()["items"]
    rows = [(i["action"], i["before"], i["after"]) for i in items if i["target"] == key][::-1]
    assert [r[0] for r in rows] == ["suppression.create", "suppression.delete"]
    assert (rows[0][1], rows[0][2]["address"]) == (None, "ada@example.com")
    assert (rows[1][1]["reason"], rows[1][2]) == ("complaint", None)


def test_another_project_never_sees_or_changes_the_entries(stack: Stack) -> None:
    assert stack.project.post("/api/v1/suppressions", json=ADA).status_code == 201
    created = stack.admin.post("/api/v1/projects", json={"name": "Second"})
    assert created.status_code == 201, created.text
    with stack.client(created.json()["secret_key"]["key"]) as other:
        assert listed(other) == []
        assert listed(other, address="ada@example.com") == []
        assert other.get(path("email", "Ada@example.com")).status_code == 404
        assert other.delete(path("email", "Ada@example.com")).status_code == 404
        # its own entry for the same address is its own
        assert other.post("/api/v1/suppressions", json={**ADA, "reason": "bounce"}).status_code == 201
        assert other.delete(path("email", "Ada@example.com")).status_code == 204
    assert stack.project.get(path("email", "Ada@example.com")).json()["reason"] == "complaint"


def test_entries_are_listed_in_pages_and_filtered(stack: Stack) -> None:
    project = stack.project
    emails = [f"user{i}@example.com" for i in range(7)]
    for address in emails:
        assert project.post("/api/v1/suppressions", json={"channel": "email", "address": address}).status_code == 201
    assert project.post("/api/v1/suppressions", json={"channel": "sms", "address": "+14155550100"}).status_code == 201

    seen: list[str] = []
    cursor = None
    pages = 0
    while True:
        params: dict[str, Any] = {"limit": 3, **({"cursor": cursor} if cursor else {})}
        page = project.get("/api/v1/suppressions", params=params).json()
        assert len(page["items"]) <= 3
        seen += [i["address"] for i in page["items"]]
        pages += 1
        cursor = page["next_cursor"]
        if cursor is None:
            break
    assert pages == 3
    assert sorted(seen) == sorted([*emails, "+14155550100"])  # every entry once
    assert sorted(i["address"] for i in listed(project, channel="email", limit=MAX_PAGE)) == sorted(emails)
    assert [i["address"] for i in listed(project, channel="sms")] == ["+14155550100"]
    assert [i["address"] for i in listed(project, address="USER3@example.com".lower())] == ["user3@example.com"]
    assert [i["address"] for i in listed(project, address="+1 415 555 0100")] == ["+14155550100"]
    assert listed(project, channel="email", address="nobody@example.com") == []


def test_the_bound_per_project_refuses_more_with_409(stack: Stack, monkeypatch: pytest.MonkeyPatch) -> None:
    # The real bound is 100,000; the check is the same at 3.
    monkeypatch.setattr(suppression_service, "MAX_SUPPRESSIONS_PER_PROJECT", 3)
    project = stack.project
    for i in range(3):
        assert (
            project.post("/api/v1/suppressions", json={"channel": "email", "address": f"u{i}@x.io"}).status_code == 201
        )
    refused = project.post("/api/v1/suppressions", json={"channel": "email", "address": "u3@x.io"})
    assert refused.status_code == 409, refused.text
    assert refused.json()["error"]["details"] == [{"path": "(body)", "reason": "at most 3 entries per project"}]
    assert project.get(path("email", "u3@x.io")).status_code == 404
    # an entry already there is still answered (nothing is added), and a removal makes room
    assert project.post("/api/v1/suppressions", json={"channel": "email", "address": "U0@X.io"}).status_code == 200
    assert project.delete(path("email", "u0@x.io")).status_code == 204
    assert project.post("/api/v1/suppressions", json={"channel": "email", "address": "u3@x.io"}).status_code == 201


BAD_BODIES: list[tuple[dict[str, Any], str]] = [
    ({"address": "a@example.com"}, "channel"),
    ({"channel": "fax", "address": "a@example.com"}, "channel"),
    ({"channel": "email"}, "address"),
    ({"channel": "email", "address": ""}, "address"),
    ({"channel": "email", "address": "not an email"}, "address"),
    ({"channel": "sms", "address": "020 7946 0958"}, "address"),  # no country code
    ({"channel": "whatsapp", "address": "+1"}, "address"),
    ({"channel": "push", "address": "a token with spaces"}, "address"),
    ({"channel": "push", "address": "t" * 4097}, "address"),
    ({"channel": "email", "address": "a@example.com", "reason": "because"}, "reason"),
    ({"channel": "email", "address": "a@example.com", "note": "n" * (MAX_NOTE + 1)}, "note"),
    ({"channel": "email", "address": "a@example.com", "note": "bell\x07"}, "note"),
    ({"channel": "email", "address": "a@example.com", "project_id": "prj_other"}, "project_id"),
]


def test_bad_input_is_refused_with_the_field_and_nothing_is_stored(stack: Stack) -> None:
    project = stack.project
    for body, field in BAD_BODIES:
        response = project.post("/api/v1/suppressions", json=body)
        assert response.status_code == 400, (body, response.text)
        paths = [d["path"] for d in response.json()["error"]["details"]]
        assert any(p == field or p.endswith(f".{field}") for p in paths), (body, paths)
    assert listed(project) == []
    for params, field in (
        ({"limit": 0}, "limit"),
        ({"limit": MAX_PAGE + 1}, "limit"),
        ({"channel": "fax"}, "channel"),
        ({"cursor": "../../provider/x"}, "cursor"),
        ({"channel": "sms", "address": "nope"}, "address"),
    ):
        response = project.get("/api/v1/suppressions", params=params)
        assert response.status_code == 400, (params, response.text)
        assert field in json.dumps(response.json()["error"]["details"]), (params, response.text)
    for method in ("GET", "DELETE"):
        assert project.request(method, path("fax", "a@example.com")).status_code == 400
        bad = project.request(method, path("sms", "not-a-phone"))
        assert bad.status_code == 400, bad.text
        assert bad.json()["error"]["details"][0]["path"] == "address"


def test_a_journey_email_to_a_suppressed_address_is_suppressed_until_the_entry_goes(
    stack: Stack, inbox: tuple[Inbox, int]
) -> None:
    box, smtp_port = inbox
    project = stack.project
    template_id = welcome_through_relay(stack, smtp_port)
    first = publish(stack, journey(template_id, "signed_up"))
    second = publish(stack, journey(template_id, "upgraded"))
    assert (
        project.post("/api/v1/suppressions", json={"channel": "email", "address": "ADA@example.com"}).status_code == 201
    )
    stack.settle()  # the entry reaches every worker's replica (Kafka runtime) before the send

    ingest = stack.ingest
    traits = {"plan": "free", "email": "ada@example.com", "first_name": "Ada"}
    assert ingest.post("/v1/identify", json={"userId": "ada", "traits": traits}).status_code == 200
    assert ingest.post("/v1/track", json={"userId": "ada", "event": "signed_up"}).status_code == 200

    def statuses(journey_id: str) -> list[tuple[str, str]]:
        stack.settle()
        rows = stack.sql(f"SELECT status, detail FROM messages FINAL WHERE journey_id = '{journey_id}' ORDER BY at")
        return [(row[0], row[1]) for row in rows]

    wait_until(lambda: [s for s, _ in statuses(first)] == ["queued", "suppressed"], timeout=40, interval=0.5)
    detail = json.loads(statuses(first)[1][1])
    assert detail["reason"] == "suppressed address (manual)"
    assert box.messages == []  # nothing reached the SMTP server

    assert project.delete(path("email", "ada@example.com")).status_code == 204
    stack.settle()
    assert ingest.post("/v1/track", json={"userId": "ada", "event": "upgraded"}).status_code == 200
    wait_until(lambda: len(box.messages) == 1, timeout=40)
    assert box.messages[0]["To"] == "ada@example.com"
    wait_until(lambda: [s for s, _ in statuses(second)] == ["queued", "sent"], timeout=30, interval=0.5)


@pytest.mark.parametrize(
    ("channel", "stored", "asked"),
    [
        ("email", "ada@example.com", "ada@EXAMPLE.com"),
        ("sms", "+442079460958", "+44 20 7946 0958"),
        ("whatsapp", "+442079460958", "+442079460958"),
        ("push", "tok/1", "tok/1"),
    ],
)
def test_the_send_time_lookup_is_a_point_read_per_project(channel: str, stored: str, asked: str) -> None:
    """``suppression_lookup`` over the index (embedded) and over a plain dict (a Kafka worker's
    replica items): the project's own entry answers its reason, another project's never does."""
    from datetime import UTC, datetime

    from spotzee.schemas.suppression_models import SuppressionEntry

    entry = SuppressionEntry(
        project_id="prj_a", channel=channel, address=stored, reason="stop", note=None, created_at=datetime.now(UTC)
    )
    key = suppression_key("prj_a", channel, stored)
    replica = {key: dumps(entry), "template/x": b"{}"}
    index = SuppressionIndex(replica.items())
    for get in (replica.get, index.get):
        is_suppressed = suppression_lookup(get)
        assert is_suppressed("prj_a", channel, asked) == "stop"
        assert is_suppressed("prj_b", channel, asked) is None
        assert is_suppressed("prj_a", channel, "other@example.com" if channel == "email" else "+15550000000") is None
    index.apply(key, None)
    assert suppression_lookup(index.get)("prj_a", channel, asked) is None
    assert index.count("prj_a") == 0
