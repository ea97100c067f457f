"""The processor side of segments (``streams/segment_processor.py``) over a ``MemoryContext``: typed
tables, nothing written for a record that changes nothing, barriered definitions validated once."""

from __future__ import annotations

from datetime import timedelta
from types import SimpleNamespace
from typing import Any

import orjson
import pytest

from spotzee.schemas.contact_models import ContactState
from spotzee.schemas.rules import SegmentRuleAdapter
from spotzee.schemas.segment_models import HistoryFact, SegmentDefinition, SegmentStatus
from spotzee.streams import segment_processor as sp
from spotzee.streams import topics
from spotzee.tables.keyspace import contact_key, member_key
from spotzee.testing import ManualClock, MemoryContext
from tests.unit.test_segment_engine import T0

BUY_A = {"type": "event", "name": "buy", "where": [{"path": "sku", "op": "eq", "value": "A"}]}


def definition(segment_id: str, body: dict[str, Any], version: int = 1) -> SegmentDefinition:
    return SegmentDefinition(
        id=segment_id,
        project_id="p",
        name=segment_id,
        rule=SegmentRuleAdapter.validate_python(body),
        version=version,
        status=SegmentStatus.ready,
        created_at=T0,
        updated_at=T0,
    )


def context() -> MemoryContext:
    return MemoryContext(SimpleNamespace(tables=sp.TABLES, topic=topics.EVENTS), ManualClock(T0))


def contact() -> ContactState:
    return ContactState(project_id="p", id="u1", created_at=T0, updated_at=T0)


def fact(n: int, sku: str) -> HistoryFact:
    return HistoryFact(message_id=f"m{n}", name="buy", timestamp=T0, properties={"sku": sku})


def test_a_record_that_changes_nothing_writes_nothing_and_a_transition_is_emitted(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    registry = sp.SegmentRegistry()
    registry.apply(definition("A", BUY_A))
    segments = sp.SegmentMemberships(registry)
    ctx, who = context(), contact()
    segments.after_message(ctx, who, is_new=True, fact=fact(1, "B"), changes=[], cause="c1")
    key = contact_key("p", "u1")
    stored = ctx.tables[sp.MEMBERSHIPS].data[key]

    writes: list[str] = []
    table = ctx.tables[sp.MEMBERSHIPS]
    original = table.set

    def counted(name: str, value: bytes) -> None:
        writes.append(name)
        original(name, value)

    monkeypatch.setattr(table, "set", counted)
    ctx.clock.advance(timedelta(minutes=1))  # type: ignore[attr-defined]
    segments.after_message(ctx, who, is_new=False, fact=fact(2, "B"), changes=[], cause="c2")
    assert writes == [], "the filter rejects the event: the state is the same, nothing is written"
    assert table.data[key] == stored
    assert ctx.outputs[topics.SEGMENT_CHANGES] == []

    segments.after_message(ctx, who, is_new=False, fact=fact(3, "A"), changes=[], cause="c3")
    assert writes == [key]
    (change,) = [orjson.loads(v) for _, v in ctx.outputs[topics.SEGMENT_CHANGES]]
    assert change == {
        "type": "segment_change",
        "project_id": "p",
        "contact_id": "u1",
        "segment_id": "A",
        "version": 1,
        "change": "entered",
        "at": "2026-03-01T00:01:00Z",
        "cause": "c3",
        "change_id": "u1#1",
    }
    rows = [orjson.loads(v) for _, v in ctx.outputs[topics.ANALYTICS]]
    assert rows == [{**change, "type": "segment_membership"}]
    member = orjson.loads(ctx.tables[sp.SEGMENT_MEMBERS].data[member_key("p", "A", "u1")])
    assert member == {"since": "2026-03-01T00:01:00Z", "version": 1}


def test_barriered_definitions_are_validated_once_not_per_record(monkeypatch: pytest.MonkeyPatch) -> None:
    barriered = definition("seg_validated_once", {"type": "everyone"})
    writer = sp.SegmentMemberships(sp.SegmentRegistry())
    ctx = context()
    writer.barrier(ctx, barriered)

    validations: list[bytes] = []
    original = SegmentDefinition.model_validate_json

    def counted(data: Any, *args: Any, **kwargs: Any) -> SegmentDefinition:
        validations.append(data)
        return original(data, *args, **kwargs)

    monkeypatch.setattr(SegmentDefinition, "model_validate_json", counted)
    for _ in range(3):  # other processes, each reading the partition's barriered definitions
        registry = sp.SegmentRegistry()
        reader = sp.SegmentMemberships(registry)
        for _ in range(20):
            reader.sync(ctx, "p")
        assert registry.definition(barriered.id) == barriered
    assert len(validations) <= 1, "validated once per distinct definition, whatever reads it"


def test_leave_hands_over_the_stored_state_and_drops_the_rows() -> None:
    registry = sp.SegmentRegistry()
    registry.apply(definition("A", {"type": "everyone"}))
    segments = sp.SegmentMemberships(registry)
    ctx, who = context(), contact()
    segments.list_membership(ctx, who, "lst_1", member=True, is_new=True)
    assert member_key("p", "lst_1", "u1") in ctx.tables[sp.LIST_MEMBERS].data
    assert member_key("p", "A", "u1") in ctx.tables[sp.SEGMENT_MEMBERS].data

    handed = segments.leave(ctx, "p", "u1", "erased")
    assert handed is not None
    assert sp.MEMBERSHIPS_TABLE.decode(handed).lists == ["lst_1"]
    assert ctx.tables[sp.MEMBERSHIPS].data == {}
    assert ctx.tables[sp.SEGMENT_MEMBERS].data == {}
    assert ctx.tables[sp.LIST_MEMBERS].data == {}
    exits = [orjson.loads(v)["change"] for _, v in ctx.outputs[topics.SEGMENT_CHANGES]]
    assert exits == ["entered", "exited"]
