"""The analytics rows (msgspec Structs) round-trip through their JSON, and read what pydantic wrote.

Analytics records wait in the embedded runtime's outbox and on the ``analytics`` topic as JSON; the
rows were pydantic models before they were Structs, so bytes written then must decode to the same
values now. The samples below are what ``model_dump_json()`` of the former models produced.
"""

from __future__ import annotations

import types
from datetime import UTC, datetime, timedelta, timezone
from typing import Any

import msgspec
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from spotzee.schemas.analytics_models import (
    RECORD_CLASSES,
    ROW_TYPES,
    AliasRow,
    AnalyticsRecord,
    AuditRow,
    ContactChangeRow,
    DeadLetterRow,
    EraseHistory,
    EventRow,
    JourneyStepRow,
    MessageRow,
    SegmentChangeRow,
    analytics_record_adapter,
    decode_analytics,
)
from spotzee.schemas.structs import encode

texts = st.text(st.characters(codec="utf-8", exclude_categories=("Cs",)), max_size=40)
moments = st.datetimes(min_value=datetime(1900, 1, 1), max_value=datetime(2299, 12, 31), timezones=st.just(UTC))
STRATEGIES: dict[Any, st.SearchStrategy[Any]] = {
    str: texts,
    int: st.integers(0, 2**63 - 1),
    datetime: moments,
    list[str]: st.lists(texts, max_size=4),
}


def strategy(kind: Any) -> st.SearchStrategy[Any]:
    if isinstance(kind, types.UnionType):  # ``datetime | None``
        return st.one_of(*(st.none() if arg is type(None) else STRATEGIES[arg] for arg in kind.__args__))
    return STRATEGIES[kind]


def rows(cls: type[msgspec.Struct]) -> st.SearchStrategy[Any]:
    fields = msgspec.structs.fields(cls)
    return st.builds(cls, **{f.name: strategy(f.type) for f in fields})


records = st.one_of(*(rows(cls) for cls in RECORD_CLASSES))


@settings(max_examples=300)
@given(records)
def test_every_row_round_trips_through_its_json(record: AnalyticsRecord) -> None:
    data = encode(record)
    assert data.startswith(b'{"type":"%s"' % record.type.encode())  # sink_loop tells mutations by this prefix
    decoded = decode_analytics(data)
    assert type(decoded) is type(record)
    assert decoded == record
    assert analytics_record_adapter.validate_json(data) == record
    assert encode(decoded) == data


T = datetime(2026, 1, 2, 3, 4, 5, 678000, tzinfo=UTC)
T_WHOLE = datetime(2026, 1, 2, 3, 4, 5, tzinfo=UTC)
T_MICRO = datetime(2025, 12, 31, 23, 59, 59, 999999, tzinfo=UTC)

# (bytes the pydantic models wrote, the same record built now)
PYDANTIC_WROTE: list[tuple[bytes, AnalyticsRecord]] = [
    (
        '{"type":"event","project_id":"p","message_id":"m1","event_type":"track","event":"Order Completed",'
        '"contact_id":"c1","user_id":"u1","anonymous_id":"a1","timestamp":"2026-01-02T03:04:05.678000Z",'
        '"original_timestamp":null,"sent_at":"2025-12-31T23:59:59.999999Z","received_at":"2026-01-02T03:04:05Z",'
        '"properties":"{\\"amount\\":12.5,\\"note\\":\\"café \\\\\\"q\\\\\\"\\"}","traits":"{}",'
        '"context":"{\\"ip\\":\\"203.0.113.9\\"}","raw":"{\\"type\\":\\"track\\",\\"event\\":\\"Order Completed\\"}"}'
        "".encode(),
        EventRow(
            project_id="p", message_id="m1", event_type="track", event="Order Completed", contact_id="c1",
            user_id="u1", anonymous_id="a1", timestamp=T, original_timestamp=None, sent_at=T_MICRO,
            received_at=T_WHOLE, properties='{"amount":12.5,"note":"café \\"q\\""}', traits="{}",
            context='{"ip":"203.0.113.9"}', raw='{"type":"track","event":"Order Completed"}',
        ),
    ),
    (
        b'{"type":"contact_change","project_id":"p","contact_id":"c1","change_id":"x1",'
        b'"changed_at":"2026-01-02T03:04:05.678000Z","source":"identify","path":"plan",'
        b'"old_value":"\\"free\\"","new_value":"\\"pro\\""}',
        ContactChangeRow(
            project_id="p", contact_id="c1", change_id="x1", changed_at=T, source="identify", path="plan",
            old_value='"free"', new_value='"pro"',
        ),
    ),
    (
        b'{"type":"alias","project_id":"p","alias_id":"anon-1","contact_id":"c1","merged_at":"2026-01-02T03:04:05Z"}',
        AliasRow(project_id="p", alias_id="anon-1", contact_id="c1", merged_at=T_WHOLE),
    ),
    (
        b'{"type":"audit","audit_id":"a1","organisation_id":"o1","project_id":"p","actor_key_id":"k1",'
        b'"action":"project.create","target":"project/p","at":"2026-01-02T03:04:05.678000Z","before":"null",'
        b'"after":"{\\"name\\":\\"P\\"}"}',
        AuditRow(
            audit_id="a1", organisation_id="o1", project_id="p", actor_key_id="k1", action="project.create",
            target="project/p", at=T, before="null", after='{"name":"P"}',
        ),
    ),
    (
        b'{"type":"dead_letter","project_id":"p","dead_letter_id":"events/3/42/40","topic":"events","partition":3,'
        b'"offset":42,"key":"p:c1","error":"ValueError: bad","payload":"{\\"x\\":1}",'
        b'"at":"2025-12-31T23:59:59.999999Z"}',
        DeadLetterRow(
            project_id="p", dead_letter_id="events/3/42/40", topic="events", partition=3, offset=42, key="p:c1",
            error="ValueError: bad", payload='{"x":1}', at=T_MICRO,
        ),
    ),
    (
        b'{"type":"segment_membership","project_id":"p","segment_id":"seg_1","contact_id":"c1","version":2,'
        b'"change":"entered","at":"2026-01-02T03:04:05.678000Z","cause":"event:m1","change_id":"sc1"}',
        SegmentChangeRow(
            project_id="p", segment_id="seg_1", contact_id="c1", version=2, change="entered", at=T,
            cause="event:m1", change_id="sc1",
        ),
    ),
    (
        b'{"type":"journey_step","project_id":"p","journey_id":"j1","journey_version":3,"run_id":"r1",'
        b'"contact_id":"c1","step_id":"send_1","visit":1,"kind":"entered","at":"2026-01-02T03:04:05.678000Z",'
        b'"seq":1,"detail":"{\\"cause\\":\\"event:m1\\"}"}',
        JourneyStepRow(
            project_id="p", journey_id="j1", journey_version=3, run_id="r1", contact_id="c1", step_id="send_1",
            visit=1, kind="entered", at=T, seq=1, detail='{"cause":"event:m1"}',
        ),
    ),
    (
        b'{"type":"message","project_id":"p","send_id":"s1","contact_id":"c1","channel":"email",'
        b'"template_id":"t1","journey_id":"j1","run_id":"r1","step_id":"send_1","status":"queued",'
        b'"at":"2026-01-02T03:04:05Z","detail":"{}"}',
        MessageRow(
            project_id="p", send_id="s1", contact_id="c1", channel="email", template_id="t1", journey_id="j1",
            run_id="r1", step_id="send_1", status="queued", at=T_WHOLE, detail="{}",
        ),
    ),
    (
        b'{"type":"erase_history","project_id":"p","contact_ids":["c1","anon-1"]}',
        EraseHistory(project_id="p", contact_ids=["c1", "anon-1"]),
    ),
]  # fmt: skip


def test_the_samples_cover_every_record_type() -> None:
    assert {record.type for _, record in PYDANTIC_WROTE} == {*ROW_TYPES, "erase_history"}
    assert {type(record) for _, record in PYDANTIC_WROTE} == set(RECORD_CLASSES)


@pytest.mark.parametrize(("data", "record"), PYDANTIC_WROTE, ids=[r.type for _, r in PYDANTIC_WROTE])
def test_what_pydantic_wrote_decodes_to_the_same_values(data: bytes, record: AnalyticsRecord) -> None:
    decoded = decode_analytics(data)
    assert decoded == record
    for name in msgspec.structs.asdict(record):  # datetimes equal *and* still UTC, microseconds kept
        value = getattr(decoded, name)
        if isinstance(value, datetime):
            assert value.utcoffset() == timedelta(0)
            assert value == getattr(record, name)
    # Written again, the bytes are the same: old and new readers see one format.
    assert encode(decoded) == data


def test_a_non_utc_datetime_is_the_same_instant_after_the_trip() -> None:
    moment = datetime(2026, 1, 2, 5, 4, 5, tzinfo=timezone(timedelta(hours=2)))
    row = AliasRow(project_id="p", alias_id="a", contact_id="c", merged_at=moment)
    assert decode_analytics(encode(row)).merged_at == T_WHOLE


def test_the_adapter_keeps_its_former_callers_working() -> None:
    row = AliasRow(project_id="p", alias_id="a", contact_id="c", merged_at=T)
    assert analytics_record_adapter.validate_python(row) is row
    assert analytics_record_adapter.validate_python(msgspec.to_builtins(row)) == row
    assert analytics_record_adapter.dump_json(row) == encode(row)
    with pytest.raises(msgspec.ValidationError):
        decode_analytics(b'{"type":"nope","project_id":"p"}')
