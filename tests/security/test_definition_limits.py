"""Issue 9, class 1: one project's definitions can never break another project or a restart.

Rules and journeys have explicit limits (depth, nodes, bytes) checked before anything is stored,
everything within them round-trips through the store's encoder and decoder, and a definition that
can't be read (written by an older version) is quarantined: listed to its project, logged by key,
and never in the way of another project's routes or of a start.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import orjson
import pytest
from pydantic import ValidationError

from spotzee.schemas.journey_models import JourneyDefinition
from spotzee.schemas.limits import (
    MAX_BODY_DEPTH,
    MAX_JOURNEY_BYTES,
    MAX_PAYLOAD_BYTES,
    MAX_RULE_BYTES,
    MAX_RULE_DEPTH,
    MAX_RULE_NODES,
    MAX_VALUE_DEPTH,
)
from spotzee.schemas.records import JourneyBarrier, decode_record
from spotzee.schemas.segment_models import SegmentBarrier, SegmentDefinition
from spotzee.streams.record_codec import dumps
from spotzee.streams.segment_processor import read_barriered
from tests.support import Stack, running_stack, start_worker, stop_worker, wait_until

LEAF: dict[str, Any] = {"type": "attribute", "path": "plan", "op": "eq", "value": "pro"}
MARKER = "content-never-logged"  # in the unreadable definitions: must not reach the log


def nest(levels: int, leaf: dict[str, Any] | None = None) -> dict[str, Any]:
    """A rule ``levels`` rule nodes deep: ``all`` combinators around ``leaf``."""
    rule = leaf or LEAF
    for _ in range(levels - 1):
        rule = {"type": "all", "rules": [rule]}
    return rule


def nested_value(levels: int) -> Any:
    value: Any = 1
    for _ in range(levels):
        value = {"k": value}
    return value


def journey(rule: dict[str, Any], **step_fields: Any) -> dict[str, Any]:
    update = {"type": "update", "set": {"plan": "gold"}, "next": "done", **step_fields}
    return {
        "name": "gated",
        "trigger": {"type": "api"},
        "start": "check",
        "steps": {
            "check": {"type": "gate", "rule": rule, "yes": "mark", "no": "done"},
            "mark": update,
            "done": {"type": "exit"},
        },
    }


def refused(response: Any) -> list[dict[str, str]]:
    assert response.status_code == 400, response.text[:500]
    details: list[dict[str, str]] = response.json()["error"]["details"]
    assert details, response.text
    return details


def stored(stack: Stack, prefix: str) -> list[str]:
    return [key for key, _ in stack.services.runtime.scan_definitions(prefix)]


@pytest.fixture
def embedded(tmp_path: Path) -> Iterator[Stack]:
    with running_stack(tmp_path / "data") as stack:
        yield stack


# -- limits, checked before anything is stored --------------------------------------------------


def test_an_over_deep_or_oversized_segment_rule_is_refused_with_its_path(embedded: Stack) -> None:
    project = embedded.project
    for levels in (MAX_RULE_DEPTH + 1, 100):
        details = refused(project.post("/api/v1/segments", json={"name": "deep", "rule": nest(levels)}))
        assert details[0]["path"] == "rule" + ".rules[0]" * MAX_RULE_DEPTH, details
        assert str(MAX_RULE_DEPTH) in details[0]["reason"]
    wide = {"type": "any", "rules": [LEAF] * (MAX_RULE_NODES + 1)}
    details = refused(project.post("/api/v1/segments", json={"name": "wide", "rule": wide}))
    assert details == [{"path": "rule", "reason": f"more than {MAX_RULE_NODES} rule nodes"}]
    big = {"type": "attribute", "path": "plan", "op": "in", "value": ["x" * 1000] * (MAX_RULE_BYTES // 1000 + 1)}
    details = refused(project.post("/api/v1/segments", json={"name": "big", "rule": big}))
    assert details[0]["path"] == "rule", details
    assert str(MAX_RULE_BYTES) in details[0]["reason"]
    # the same limits hold for previews and edits
    refused(project.post("/api/v1/segments/preview", json={"rule": nest(100)}))
    assert stored(embedded, "segment/") == []
    assert project.get("/api/v1/segments").json() == {"items": [], "quarantined": []}
    # at the limit: accepted, and readable back (listed, fetched) like any other
    created = project.post("/api/v1/segments", json={"name": "edge", "rule": nest(MAX_RULE_DEPTH)})
    assert created.status_code == 201, created.text
    segment_id = created.json()["id"]
    refused(project.put(f"/api/v1/segments/{segment_id}", json={"name": "deeper", "rule": nest(MAX_RULE_DEPTH + 1)}))
    assert project.get(f"/api/v1/segments/{segment_id}").json()["version"] == 1
    assert [s["id"] for s in project.get("/api/v1/segments").json()["items"]] == [segment_id]


def test_a_request_body_nested_beyond_any_reader_is_a_400_not_a_500(embedded: Stack) -> None:
    headers = {"content-type": "application/json"}
    project = embedded.project
    for depth in (MAX_BODY_DEPTH + 1, 400, 100_000):
        deep = b"[" * depth + b"]" * depth
        for path in ("/api/v1/segments", "/api/v1/segments/preview", "/api/v1/journeys"):
            details = refused(project.post(path, content=b'{"name": "x", "rule": ' + deep + b"}", headers=headers))
            assert details == [{"path": "(body)", "reason": f"JSON nested deeper than {MAX_BODY_DEPTH} levels"}]
    # a rule nested 400 levels (800 JSON levels) used to exhaust the validator's recursion: a 500
    deep_rule = b'{"rule": ' + b'{"type": "all", "rules": [' * 399 + orjson.dumps(LEAF) + b"]}" * 399 + b"}"
    assert refused(project.post("/api/v1/segments/preview", content=deep_rule, headers=headers))[0]["path"] == "(body)"
    # within the body limit, an over-deep rule is reported at its own path
    details = refused(project.post("/api/v1/segments/preview", json={"rule": nest(120)}))
    assert details[0]["path"] == "rule" + ".rules[0]" * MAX_RULE_DEPTH
    # brackets inside strings are text, not nesting
    text = {"name": "[" * 200, "rule": {**LEAF, "value": "{" * 500}}
    assert project.post("/api/v1/segments", json=text).status_code == 201


def test_an_over_deep_journey_gate_or_value_and_an_oversized_journey_are_refused(embedded: Stack) -> None:
    project = embedded.project
    details = refused(project.post("/api/v1/journeys", json=journey(nest(99))))
    assert details[0]["path"] == "steps.check.rule" + ".rules[0]" * MAX_RULE_DEPTH, details
    deep_set = journey(LEAF, set={"plan": nested_value(MAX_VALUE_DEPTH + 1)})
    details = refused(project.post("/api/v1/journeys", json=deep_set))
    assert details[0]["path"] == "steps.mark.set.plan" + ".k" * MAX_VALUE_DEPTH, details
    huge = journey(LEAF, set={f"t{i}": "x" * 10_000 for i in range(MAX_JOURNEY_BYTES // 10_000 + 1)})
    details = refused(project.post("/api/v1/journeys", json=huge))
    assert details[0]["path"] == "(body)", details
    assert str(MAX_JOURNEY_BYTES) in details[0]["reason"]
    assert stored(embedded, "journey/") == []
    # at the limits: accepted, published, entered
    edge = journey(nest(MAX_RULE_DEPTH), set={"plan": nested_value(MAX_VALUE_DEPTH - 1)})
    created = project.post("/api/v1/journeys", json=edge)
    assert created.status_code == 201, created.text
    journey_id = created.json()["id"]
    assert project.post(f"/api/v1/journeys/{journey_id}/publish").status_code == 200
    enter = f"/api/v1/journeys/{journey_id}/enter"
    details = refused(project.post(enter, json={"ids": ["c1"], "payload": nested_value(MAX_VALUE_DEPTH + 1)}))
    assert details[0]["path"] == "payload" + ".k" * MAX_VALUE_DEPTH, details
    details = refused(project.post(enter, json={"ids": ["c1"], "payload": {"x": "y" * MAX_PAYLOAD_BYTES}}))
    assert details[0]["path"] == "payload", details
    assert project.post(enter, json={"ids": ["c1"], "payload": {"plan": "pro"}}).status_code == 202


def test_everything_within_the_limits_round_trips_through_the_stored_forms() -> None:
    """The deepest valid rule (an event leaf with a list value) and the deepest free values, in
    the most deeply wrapped records the store and the topics hold, encode and decode again."""
    leaf = {
        "type": "event",
        "name": "bought",
        "where": [{"path": "tags", "op": "in", "value": ["a", "b"]}],
        "between": ["2024-01-01T00:00:00Z", "2024-02-01T00:00:00Z"],
    }
    rule = nest(MAX_RULE_DEPTH, leaf)
    now = "2025-01-01T00:00:00Z"
    body = journey(rule, set={"plan": nested_value(MAX_VALUE_DEPTH - 1)})
    definition = JourneyDefinition.model_validate(
        {**body, "id": "jrn_x", "project_id": "p", "version": 1, "created_at": now, "updated_at": now}
    )
    barrier = JourneyBarrier.of(definition)
    decoded = decode_record(dumps(barrier))
    assert isinstance(decoded, JourneyBarrier)
    assert decoded.parsed() == definition
    assert JourneyDefinition.model_validate_json(orjson.dumps(orjson.loads(dumps(definition)))) == definition
    segment = SegmentDefinition.model_validate(
        {
            "id": "seg_x",
            "project_id": "p",
            "name": "n",
            "rule": rule,
            "version": 1,
            "status": "ready",
            "created_at": now,
            "updated_at": now,
        }
    )
    wrapped = SegmentBarrier.of(segment, "__segment__seg_x")
    unwrapped = decode_record(dumps(wrapped))
    assert isinstance(unwrapped, SegmentBarrier)
    assert unwrapped.parsed() == segment
    assert SegmentDefinition.model_validate_json(orjson.dumps(orjson.loads(dumps(segment)))) == segment
    # one level more is refused by the stored models themselves, whoever builds them
    with pytest.raises(ValidationError, match="nested deeper"):
        SegmentDefinition.model_validate({**segment.model_dump(), "rule": nest(MAX_RULE_DEPTH + 1, leaf)})
    with pytest.raises(ValidationError, match="nested deeper"):
        JourneyDefinition.model_validate(
            {**definition.model_dump(), "steps": journey(nest(MAX_RULE_DEPTH + 1))["steps"]}
        )


# -- unreadable definitions are quarantined -----------------------------------------------------


def unreadable_definitions(project_id: str) -> list[tuple[str, bytes | None]]:
    """What an older version accepted: a segment and a journey gate nested too deep to read back."""
    now = "2025-01-01T00:00:00+00:00"
    segment = {
        "type": "segment",
        "id": "seg_bad",
        "project_id": project_id,
        "name": MARKER,
        "description": None,
        "rule": nest(100),
        "version": 1,
        "status": "building",
        "progress": {"total": 0, "done": 0},
        "created_at": now,
        "updated_at": now,
        "ready_at": None,
    }
    gated = {
        **journey(nest(99)),
        "name": MARKER,
        "type": "journey",
        "id": "jrn_bad",
        "project_id": project_id,
        "version": 1,
        "status": "live",
        "created_at": now,
        "updated_at": now,
    }
    return [
        ("segment/seg_bad", orjson.dumps(segment)),
        ("journey/jrn_bad", orjson.dumps(gated)),
        ("list/lst_bad", b'{"type": "list", "id": "lst_bad", "project_id": "' + project_id.encode() + b'", '),
    ]


def second_project(stack: Stack) -> Any:
    created = stack.admin.post("/api/v1/projects", json={"name": "Second"})
    assert created.status_code == 201, created.text
    return stack.client(created.json()["secret_key"]["key"])


def works_for_everyone(stack: Stack, clients: list[Any], tag: str) -> None:
    """Every project can list, create, preview and publish with the unreadable ones present."""
    for i, client in enumerate(clients):
        listed = client.get("/api/v1/segments")
        assert listed.status_code == 200, listed.text
        assert client.get("/api/v1/journeys").status_code == 200
        created = client.post("/api/v1/segments", json={"name": f"{tag}{i}", "rule": LEAF})
        assert created.status_code == 201, created.text
        preview = client.post("/api/v1/segments/preview", json={"rule": LEAF})
        assert preview.status_code == 200, preview.text
        made = client.post("/api/v1/journeys", json=journey({"type": "segment", "segment_id": created.json()["id"]}))
        assert made.status_code == 201, made.text
        published = client.post(f"/api/v1/journeys/{made.json()['id']}/publish")
        assert published.status_code == 200, published.text


def test_an_unreadable_definition_is_quarantined_and_breaks_nothing_else(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO)
    data_dir = tmp_path / "data"
    with running_stack(data_dir) as stack:
        owner = stack.project
        other = second_project(stack)
        other_key = other.headers["Authorization"]
        stack.services.runtime.put_definitions(unreadable_definitions(stack.keys.project_id), [])
        works_for_everyone(stack, [owner, other], "first")
        listed = owner.get("/api/v1/segments").json()
        assert [q["id"] for q in listed["quarantined"]] == ["seg_bad"]
        assert "nested" in listed["quarantined"][0]["reason"] or "recursion" in listed["quarantined"][0]["reason"]
        assert [q["id"] for q in owner.get("/api/v1/journeys").json()["quarantined"]] == ["jrn_bad"]
        assert other.get("/api/v1/segments").json()["quarantined"] == []  # another project's stays its own
        assert other.get("/api/v1/journeys").json()["quarantined"] == []
        assert owner.get("/api/v1/segments/seg_bad").status_code == 409
        assert owner.get("/api/v1/journeys/jrn_bad").status_code == 409
        assert other.get("/api/v1/segments/seg_bad").status_code == 404
        assert other.get("/api/v1/journeys/jrn_bad").status_code == 404
        assert owner.post("/api/v1/lists", json={"name": "fine"}).status_code == 201
        assert stack.ingest.post("/v1/identify", json={"userId": "u1", "traits": {"plan": "pro"}}).status_code == 200
        stack.settle()
    # a restart on the same data: the start succeeds and everything still works
    with running_stack(data_dir) as again:
        other = again.client(other_key.removeprefix("Bearer "))
        works_for_everyone(again, [again.project, other], "second")
        assert [q["id"] for q in again.project.get("/api/v1/segments").json()["quarantined"]] == ["seg_bad"]
        segment = again.project.get("/api/v1/segments").json()["items"][0]
        wait_until(lambda: again.project.get(f"/api/v1/segments/{segment['id']}").json()["status"] == "ready")
        members = again.project.get(f"/api/v1/segments/{segment['id']}/members").json()["items"]
        assert [m["id"] for m in members] == ["u1"]  # the processor evaluates the readable ones
    logged = [r.getMessage() for r in caplog.records if "quarantined" in r.getMessage()]
    assert any("segment/seg_bad" in line for line in logged), logged
    assert any("journey/jrn_bad" in line for line in logged), logged
    assert all(MARKER not in r.getMessage() for r in caplog.records)


def test_a_kafka_worker_starts_and_processes_with_an_unreadable_definition(
    tmp_path: Path, kafka_bootstrap: str
) -> None:
    with running_stack(tmp_path / "data", runtime="kafka", kafka_bootstrap=kafka_bootstrap) as stack:
        stack.services.runtime.put_definitions(unreadable_definitions(stack.keys.project_id), [])
        listed = stack.project.get("/api/v1/segments")
        assert listed.status_code == 200, listed.text
        assert [q["id"] for q in listed.json()["quarantined"]] == ["seg_bad"]
        # a worker started now loads the unreadable definitions from the topic; the first one
        # followed them; then the first stops, so the new one owns every partition
        settings = stack.services.settings
        late = start_worker(settings, "worker-late")
        stack.workers.append(late)
        time.sleep(2)
        stop_worker(stack.workers[0])
        assert late.poll() is None, (settings.data_dir / "worker-late.log").read_text()
        segment = stack.project.post("/api/v1/segments", json={"name": "pro", "rule": LEAF})
        assert segment.status_code == 201, segment.text
        segment_id = segment.json()["id"]
        wait_until(lambda: stack.project.get(f"/api/v1/segments/{segment_id}").json()["status"] == "ready", 120)
        assert stack.ingest.post("/v1/identify", json={"userId": "k1", "traits": {"plan": "pro"}}).status_code == 200
        stack.settle(120)
        members = stack.project.get(f"/api/v1/segments/{segment_id}/members").json()["items"]
        assert [m["id"] for m in members] == ["k1"]
        assert late.poll() is None
        log_text = (settings.data_dir / "worker-late.log").read_text()
        assert "segment/seg_bad" in log_text
        assert MARKER not in log_text


def test_a_partitions_barriered_definitions_are_read_one_by_one() -> None:
    """The embedded and Kafka processors keep the segment definitions seen in barriers per project
    in one state value: an unreadable one in there drops only itself, never the project's records."""
    now = "2025-01-01T00:00:00+00:00"
    good = {"id": "seg_ok", "project_id": "p", "name": "n", "rule": LEAF, "version": 1, "status": "ready"}
    good |= {"created_at": now, "updated_at": now}
    raw = orjson.dumps({"seg_ok": good, "seg_bad": {**good, "id": "seg_bad", "rule": nest(MAX_RULE_DEPTH + 1)}})
    assert list(read_barriered("p", raw)) == ["seg_ok"]
    too_deep = b'{"seg_x": ' + b"[" * 300 + b"]" * 300 + b"}"
    assert read_barriered("p", too_deep) == {}
