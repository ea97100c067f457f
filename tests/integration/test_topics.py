"""Subscription topics through the API, on both runtimes: versioned definitions, unique names per
project, explicit limits, and bad input refused without changing anything."""

from __future__ import annotations

from typing import Any

import httpx
import orjson

from spotzee.schemas.topic_models import MAX_TOPIC_DESCRIPTION, MAX_TOPIC_NAME, MAX_TOPICS_PER_PROJECT
from tests.support import Stack

NEWS = {"name": "Product news", "description": "New features, once a month.", "default": "opted_in"}


def second_project(stack: Stack) -> httpx.Client:
    created = stack.admin.post("/api/v1/projects", json={"name": "Second"})
    assert created.status_code == 201, created.text
    return stack.client(created.json()["secret_key"]["key"])


def created(client: httpx.Client, body: dict[str, Any]) -> dict[str, Any]:
    response = client.post("/api/v1/topics", json=body)
    assert response.status_code == 201, response.text
    topic: dict[str, Any] = response.json()
    return topic


def audit_actions(stack: Stack, topic_id: str) -> list[tuple[str, Any, Any]]:
    """The audit rows of one topic, oldest first: (action, before, after)."""
    stack.settle()
    items = stack.project.get("/api/v1/audit", params={"limit": 1000}).json()["items"]
    rows = [(i["action"], i["before"], i["after"]) for i in items if i["target"] == f"topic/{topic_id}"]
    return rows[::-1]


def test_topics_are_created_read_updated_and_deleted_in_versions(stack: Stack) -> None:
    project = stack.project
    topic = created(project, NEWS)
    assert topic["id"].startswith("tpc_")
    assert {k: topic[k] for k in ("name", "description", "default", "version")} == {**NEWS, "version": 1}
    assert topic["created_at"] == topic["updated_at"]
    assert set(topic) == {"id", "project_id", "name", "description", "default", "version", "created_at", "updated_at"}
    assert topic["project_id"] == stack.keys.project_id
    topic_id = topic["id"]
    assert project.get(f"/api/v1/topics/{topic_id}").json() == topic
    # defaults: no description, and opted out (nobody is sent to without asking)
    digest = created(project, {"name": "Weekly digest"})
    assert (digest["description"], digest["default"]) == (None, "opted_out")
    assert project.get("/api/v1/topics").json() == {"items": [topic, digest], "quarantined": []}

    # PUT replaces the fields it sends and keeps the others
    renamed = project.put(f"/api/v1/topics/{topic_id}", json={"name": "Product updates"})
    assert renamed.status_code == 200, renamed.text
    assert (renamed.json()["name"], renamed.json()["description"], renamed.json()["default"]) == (
        "Product updates",
        NEWS["description"],
        "opted_in",
    )
    assert renamed.json()["version"] == 2
    assert renamed.json()["created_at"] == topic["created_at"]
    cleared = project.put(f"/api/v1/topics/{topic_id}", json={"description": None, "default": "opted_out"}).json()
    assert (cleared["name"], cleared["description"], cleared["default"], cleared["version"]) == (
        "Product updates",
        None,
        "opted_out",
        3,
    )
    assert project.get(f"/api/v1/topics/{topic_id}").json() == cleared

    assert project.delete(f"/api/v1/topics/{topic_id}").status_code == 204
    for response in (
        project.get(f"/api/v1/topics/{topic_id}"),
        project.put(f"/api/v1/topics/{topic_id}", json={"name": "back"}),
        project.delete(f"/api/v1/topics/{topic_id}"),
    ):
        assert response.status_code == 404, response.text
        assert response.json()["error"]["code"] == "not_found"
    assert [t["id"] for t in project.get("/api/v1/topics").json()["items"]] == [digest["id"]]
    assert project.get("/api/v1/topics/tpc_0000000000000000").status_code == 404

    # every write is in the audit history, with the versions before and after
    history = audit_actions(stack, topic_id)
    assert [action for action, _, _ in history] == ["topic.create", "topic.update", "topic.update", "topic.delete"]
    assert history[0][1] is None
    assert history[0][2]["name"] == "Product news"
    assert (history[1][1]["version"], history[1][2]["version"]) == (1, 2)
    assert history[3][2]["deleted"] is True
    assert history[3][2]["version"] == 4


def test_names_are_unique_per_project_ignoring_case(stack: Stack) -> None:
    project = stack.project
    news = created(project, NEWS)
    digest = created(project, {"name": "Weekly digest"})
    for name in ("Product news", "PRODUCT NEWS", "  product news  ", "Product news"):
        duplicate = project.post("/api/v1/topics", json={"name": name})
        assert duplicate.status_code == 409, (name, duplicate.text)
        assert duplicate.json()["error"]["details"] == [
            {"path": "name", "reason": f"already used by topic {news['id']}"}
        ]
    # renaming onto another topic's name is a duplicate too; onto its own name (another case) is not
    clash = project.put(f"/api/v1/topics/{digest['id']}", json={"name": "product NEWS"})
    assert clash.status_code == 409, clash.text
    recased = project.put(f"/api/v1/topics/{news['id']}", json={"name": "Product News"})
    assert recased.status_code == 200, recased.text
    assert [t["name"] for t in project.get("/api/v1/topics").json()["items"]] == ["Product News", "Weekly digest"]
    assert project.get(f"/api/v1/topics/{digest['id']}").json()["version"] == 1  # the refused rename changed nothing

    # another project: its own names, and none of this project's topics
    other = second_project(stack)
    theirs = created(other, {"name": "product news"})
    assert other.get("/api/v1/topics").json() == {"items": [theirs], "quarantined": []}
    for response in (
        other.get(f"/api/v1/topics/{news['id']}"),
        other.put(f"/api/v1/topics/{news['id']}", json={"name": "taken over"}),
        other.delete(f"/api/v1/topics/{news['id']}"),
        project.get(f"/api/v1/topics/{theirs['id']}"),
    ):
        assert response.status_code == 404, response.text
    assert project.get(f"/api/v1/topics/{news['id']}").json()["name"] == "Product News"

    # a deleted topic's name is free again
    assert project.delete(f"/api/v1/topics/{news['id']}").status_code == 204
    again = created(project, {"name": "product news"})
    assert again["id"] != news["id"]
    assert again["version"] == 1


def test_limits_are_explicit_and_bad_input_changes_nothing(stack: Stack) -> None:
    project = stack.project
    topic = created(project, NEWS)
    longest = created(project, {"name": "n" * MAX_TOPIC_NAME, "description": "d" * MAX_TOPIC_DESCRIPTION})
    assert len(longest["name"]) == MAX_TOPIC_NAME
    before = project.get("/api/v1/topics").json()
    audited = len(audit_actions(stack, topic["id"]))

    bad_bodies: list[tuple[Any, str, str]] = [
        ({"name": "x" * (MAX_TOPIC_NAME + 1)}, "name", "at most 200 characters"),
        ({"name": "   "}, "name", "at least 1 character"),
        ({"name": ""}, "name", "at least 1 character"),
        ({"name": "tab\tin name"}, "name", "control characters"),
        ({"name": "x", "description": "d" * (MAX_TOPIC_DESCRIPTION + 1)}, "description", "at most 2000 characters"),
        ({"name": "x", "description": "nul\x00"}, "description", "control characters"),
        ({"name": "x", "default": "subscribed"}, "default", "'opted_in' or 'opted_out'"),
        ({"name": "x", "default": None}, "default", "'opted_in' or 'opted_out'"),
        ({"name": 7}, "name", "valid string"),
        ({"description": "no name"}, "name", "Field required"),
        ({"name": "x", "channel": "email"}, "channel", "Extra inputs are not permitted"),
        (["name", "x"], "(body)", ""),
    ]
    for body, path, reason in bad_bodies:
        refused = project.post("/api/v1/topics", json=body)
        assert refused.status_code == 400, (body, refused.text)
        error = refused.json()["error"]
        assert error["code"] == "invalid_input", (body, error)
        assert any(d["path"] == path and reason in d["reason"] for d in error["details"]), (body, error)
    update_bodies: list[tuple[Any, str, str]] = [
        ({"name": None}, "name", "not null"),
        ({"default": None}, "default", "not null"),
        ({"name": "y" * (MAX_TOPIC_NAME + 1)}, "name", "at most 200 characters"),
        ({"description": "d" * (MAX_TOPIC_DESCRIPTION + 1)}, "description", "at most 2000 characters"),
        ({"default": "yes"}, "default", "'opted_in' or 'opted_out'"),
        ({"name": "ok", "version": 9}, "version", "Extra inputs are not permitted"),
    ]
    for body, path, reason in update_bodies:
        refused = project.put(f"/api/v1/topics/{topic['id']}", json=body)
        assert refused.status_code == 400, (body, refused.text)
        assert any(d["path"] == path and reason in d["reason"] for d in refused.json()["error"]["details"]), body
    malformed = project.post("/api/v1/topics", content=b'{"name": ', headers={"content-type": "application/json"})
    assert malformed.status_code == 400, malformed.text
    assert project.get("/api/v1/topics").json() == before  # nothing created, nothing edited
    assert len(audit_actions(stack, topic["id"])) == audited

    # at most MAX_TOPICS_PER_PROJECT topics per project; deleting one makes room
    for i in range(MAX_TOPICS_PER_PROJECT - 2):
        created(project, {"name": f"topic {i}"})
    full = project.post("/api/v1/topics", json={"name": "one too many"})
    assert full.status_code == 409, full.text
    assert full.json()["error"]["details"] == [
        {"path": "(body)", "reason": f"at most {MAX_TOPICS_PER_PROJECT} topics per project"}
    ]
    listed = project.get("/api/v1/topics").json()["items"]
    assert len(listed) == MAX_TOPICS_PER_PROJECT
    assert "one too many" not in {t["name"] for t in listed}
    assert second_project(stack).post("/api/v1/topics", json={"name": "one too many"}).status_code == 201
    assert project.delete(f"/api/v1/topics/{listed[-1]['id']}").status_code == 204
    created(project, {"name": "one too many"})


def test_an_unreadable_topic_is_quarantined_and_breaks_nothing_else(stack: Stack) -> None:
    project = stack.project
    other = second_project(stack)
    fine = created(project, NEWS)
    project_id = stack.keys.project_id
    stack.services.runtime.put_definitions(
        [("topic/tpc_bad", orjson.dumps({"type": "topic", "id": "tpc_bad", "project_id": project_id, "name": 7}))],
        [],
    )
    listed = project.get("/api/v1/topics").json()
    assert listed["items"] == [fine]
    assert [q["id"] for q in listed["quarantined"]] == ["tpc_bad"]
    assert project.get("/api/v1/topics/tpc_bad").status_code == 409
    assert project.put("/api/v1/topics/tpc_bad", json={"name": "x"}).status_code == 409
    assert other.get("/api/v1/topics").json() == {"items": [], "quarantined": []}
    assert other.get("/api/v1/topics/tpc_bad").status_code == 404
    assert created(project, {"name": "Still works"})["version"] == 1
    assert created(other, {"name": "Product news"})["version"] == 1
