"""Tenant isolation, generated from ``/openapi.json``: every route x every key kind x own/other.

Each operation the API documents is called with: no key, the write key (``pk_``), the project's
secret key (``sk_``), the organisation's admin key (``ak_``) and the admin key of another
organisation, aimed at objects of the caller's own project and of another project. A key never
reaches a route its kind may not use, and no key ever reads or changes another project's (or
organisation's) objects. A route added later is covered without editing this file; a path
parameter this file does not know how to fill fails the test, so it can't be skipped silently.
"""

from __future__ import annotations

import re
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest

from spotzee.schemas.tenancy_models import KeyKind, Organisation
from spotzee.services.tenancy_service import SYSTEM_ACTOR, Change
from tests.integration.test_catalogue import WELCOME_EMAIL, welcome_journey
from tests.support import Stack, running_stack

PUBLIC = {("GET", "/health"), ("GET", "/metrics"), ("GET", "/u/{token}"), ("POST", "/u/{token}")}
ORGANISATION_ROUTES = ("/api/v1/projects", "/api/v1/keys", "/api/v1/sql")
DENIED = {401, 403}
HIDDEN = {403, 404}


@dataclass
class Tenant:
    """One project's keys and one object of every kind it owns (the path parameters' values)."""

    write: str
    secret: str
    objects: dict[str, str]


def _make_objects(client: httpx.Client, contact: str) -> dict[str, str]:
    def created(path: str, body: dict[str, Any]) -> str:
        response = client.post(path, json=body)
        assert response.status_code == 201, (path, response.text)
        return str(response.json()["id"])

    template = created("/api/v1/templates", WELCOME_EMAIL)
    return {
        "segment_id": created("/api/v1/segments", {"name": "s", "rule": {"type": "event", "name": "e"}}),
        "list_id": created("/api/v1/lists", {"name": "l"}),
        "template_id": template,
        "provider_id": created(
            "/api/v1/providers",
            {"name": "hook", "channel": "webhook", "type": "webhook", "config": {"signing_secret": "s" * 32}},
        ),
        "journey_id": created("/api/v1/journeys", welcome_journey(template)),
        "topic_id": created("/api/v1/topics", {"name": "News", "default": "opted_in"}),
        "contact_id": contact,
        **_suppressed(client, f"{contact}@example.com"),
    }


def _suppressed(client: httpx.Client, address: str) -> dict[str, str]:
    """A suppression list entry of the project: its path parameters (each project's own address)."""
    response = client.post("/api/v1/suppressions", json={"channel": "email", "address": address})
    assert response.status_code == 201, response.text
    return {"channel": "email", "address": address}


def _second_organisation(stack: Stack) -> str:
    """An organisation the installation's API can't create (one per installation today)."""
    tenancy = stack.services.tenancy
    now = stack.services.clock.now()
    org = Organisation(id=f"org_{uuid.uuid4().hex[:12]}", name="Other organisation", created_at=now)
    raw, admin = tenancy._make_key(KeyKind.admin, org.id, None, "other organisation's admin key")
    change = Change(actor_id=SYSTEM_ACTOR, organisation_id=org.id, action="bootstrap", target=org.id, project_id="")
    tenancy._commit([org, admin], change)
    return raw


@pytest.fixture(scope="module")
def world(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Stack, Tenant, Tenant, str]]:
    data_dir: Path = tmp_path_factory.mktemp("matrix") / "data"
    with running_stack(data_dir) as stack:
        other = stack.admin.post("/api/v1/projects", json={"name": "Other"}).json()
        own = Tenant(stack.keys.write_key, stack.keys.secret_key, {})
        theirs = Tenant(other["write_key"]["key"], other["secret_key"]["key"], {})
        for tenant, contact in ((own, "own-contact"), (theirs, "their-contact")):
            ingest = stack.client(tenant.write, basic=True)
            assert ingest.post("/v1/identify", json={"userId": contact, "traits": {"plan": "x"}}).status_code == 200
            with stack.client(tenant.secret) as client:
                tenant.objects = _make_objects(client, contact)
        theirs.objects["project_id"] = other["id"]
        own.objects["project_id"] = stack.keys.project_id
        keys = stack.admin.get(f"/api/v1/projects/{other['id']}/keys").json()
        theirs.objects["key_id"] = keys[0]["id"]
        own_keys = stack.admin.get(f"/api/v1/projects/{stack.keys.project_id}/keys").json()
        own.objects["key_id"] = own_keys[0]["id"]
        stack.settle()
        yield stack, own, theirs, _second_organisation(stack)


def _operations(stack: Stack) -> list[tuple[str, str, list[str]]]:
    spec = stack.client().get("/openapi.json").json()
    found = []
    for path, item in spec["paths"].items():
        for method, operation in item.items():
            if method.upper() not in ("GET", "POST", "PUT", "PATCH", "DELETE"):
                continue
            names = [p["name"] for p in operation.get("parameters", []) if p["in"] == "path"]
            found.append((method.upper(), path, names))
    return found


def _fill(path: str, names: list[str], objects: dict[str, str]) -> str:
    for name in names:
        if name == "action":
            value = "pause"
        else:
            assert name in objects, f"{path}: no value for path parameter {name!r}; add one to the matrix"
            value = objects[name]
        path = path.replace("{" + name + "}", value)
    return path


def _body(method: str, path: str) -> dict[str, Any] | None:
    """A body valid for the route, so a refusal is about the key, not the payload."""
    if method == "DELETE" and not path.endswith("/members"):
        return None
    if path.startswith("/v1/"):
        return {"userId": "intruder", "event": "e", "previousId": "p", "groupId": "g", "batch": []}
    bodies = {
        r"/segments(/preview|/[^/]+)?$": {"name": "x", "rule": {"type": "event", "name": "e"}},
        r"/lists$": {"name": "x"},
        r"/lists/[^/]+/members(/remove)?$": {"ids": ["own-contact"]},
        r"/templates(/[^/]+)?$": WELCOME_EMAIL,
        r"/preview$": {"contact_id": "own-contact"},
        r"/providers(/[^/]+)?$": {
            "name": "x",
            "channel": "webhook",
            "type": "webhook",
            "config": {"signing_secret": "s" * 32},
        },
        r"/enter$": {"ids": ["own-contact"]},
        r"/topics(/[^/]+)?$": {"name": "x"},
        r"/suppressions$": {"channel": "email", "address": "intruder@example.com"},
        r"/journeys(/[^/]+)?$": welcome_journey("tpl_0000000000000000"),
        r"/contacts/.+": {"traits": {"plan": "intruder"}},
        r"/projects(/[^/]+/keys)?$": {"name": "x", "kind": "secret"},
        r"/keys$": {"name": "x"},
        r"/sql$": {"query": "SELECT 1"},
    }
    return next((body for pattern, body in bodies.items() if re.search(pattern, path)), {})


def _call(stack: Stack, method: str, path: str, key: str | None, *, basic: bool = False) -> httpx.Response:
    client = stack.client(key, basic=basic) if key else stack.client()
    with client:
        return client.request(method, path, json=_body(method, path))


def test_every_route_refuses_every_key_it_should(world: tuple[Stack, Tenant, Tenant, str]) -> None:
    stack, own, theirs, stranger_admin = world
    problems: list[str] = []
    operations = _operations(stack)
    assert len(operations) >= 50, "the OpenAPI document lost its routes"
    for method, template, names in operations:
        if (method, template) in PUBLIC:
            continue
        mine = _fill(template, names, own.objects)
        foreign = _fill(template, names, theirs.objects)
        ingestion = template.startswith("/v1/")
        organisation = template.startswith(ORGANISATION_ROUTES) or template == "/api/v1/audit"

        def expect(
            label: str, response: httpx.Response, allowed: set[int], route: str = f"{method} {template}"
        ) -> None:
            if response.status_code not in allowed:
                problems.append(f"{route} {label}: {response.status_code} {response.text[:160]}")

        # no key at all
        expect("without a key", _call(stack, method, mine, None), DENIED)
        if ingestion:
            # only a write key ingests; secret and admin keys in its place are refused
            for label, key in (("secret key", own.secret), ("admin key", stack.keys.admin_key)):
                expect(f"with a {label} as write key", _call(stack, method, mine, key, basic=True), DENIED)
            continue
        # the public write key never reaches the admin API
        expect("with the write key", _call(stack, method, mine, own.write), DENIED)
        expect("with the write key as Basic", _call(stack, method, mine, own.write, basic=True), DENIED)
        # another organisation's admin key reaches nothing of this organisation
        if names:
            expect(
                "with another organisation's admin key",
                _call(stack, method, mine, stranger_admin),
                DENIED | HIDDEN,
            )
        if organisation:
            if template != "/api/v1/audit":
                expect("with a secret key", _call(stack, method, mine, own.secret), DENIED)
            continue
        # project routes: the organisation's admin key is not a project key
        expect("with the admin key", _call(stack, method, mine, stack.keys.admin_key), DENIED)
        # and one project's secret key never reaches another project's objects
        if names:
            expect("with a secret key on another project's object", _call(stack, method, foreign, own.secret), HIDDEN)
    assert not problems, "\n".join(problems)


def test_listings_never_show_another_projects_objects(world: tuple[Stack, Tenant, Tenant, str]) -> None:
    stack, own, theirs, stranger_admin = world
    foreign_ids = {v for k, v in theirs.objects.items() if k not in ("contact_id", "channel")}
    for method, template, names in _operations(stack):
        if method != "GET" or names or not template.startswith("/api/v1/"):
            continue
        # the secret key is one project's: nothing of the other project in any listing it can read
        # (the organisation's admin key sees the whole organisation by design: audit, projects)
        response = _call(stack, method, template, own.secret)
        if response.status_code == 200:
            leaked = [i for i in foreign_ids if i in response.text]
            assert not leaked, (template, leaked)
    # another organisation sees none of this one
    with stack.client(stranger_admin) as client:
        projects = client.get("/api/v1/projects")
        assert projects.status_code == 200
        assert projects.json() == []
        assert client.get(f"/api/v1/projects/{theirs.objects['project_id']}/keys").status_code in HIDDEN
        assert client.post("/api/v1/sql", json={"query": "SELECT 1"}).status_code == 403


def test_nothing_of_the_other_project_changed(world: tuple[Stack, Tenant, Tenant, str]) -> None:
    stack, _, theirs, _ = world
    with stack.client(theirs.secret) as client:
        for name, path in (
            ("segment_id", "/api/v1/segments/{}"),
            ("list_id", "/api/v1/lists/{}"),
            ("template_id", "/api/v1/templates/{}"),
            ("provider_id", "/api/v1/providers/{}"),
            ("journey_id", "/api/v1/journeys/{}"),
            ("topic_id", "/api/v1/topics/{}"),
            ("contact_id", "/api/v1/contacts/{}"),
        ):
            response = client.get(path.format(theirs.objects[name]))
            assert response.status_code == 200, (name, response.text)
        contact = client.get(f"/api/v1/contacts/{theirs.objects['contact_id']}").json()
        assert contact["traits"]["plan"] == "x"
        assert client.get(f"/api/v1/journeys/{theirs.objects['journey_id']}").json()["status"] == "draft"
        topic = client.get(f"/api/v1/topics/{theirs.objects['topic_id']}").json()
        assert (topic["name"], topic["version"]) == ("News", 1)
        # their suppression list: their one entry, untouched (no intruder's address added to it)
        entries = client.get("/api/v1/suppressions").json()["items"]
        assert [e["address"] for e in entries] == [theirs.objects["address"]]
