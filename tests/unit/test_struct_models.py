"""Edge models (pydantic) and their hot-path twins (msgspec Structs) agree on every field.

``ContactPublic`` is what the API answers for a ``ContactState``; the Segment-spec edge models of
``schemas/events.py`` become ``schemas/message_data.py`` in records. A field added on one side
only, or a value that does not survive the trip, fails here.
"""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Any

import msgspec
from hypothesis import given, settings
from hypothesis import strategies as st
from pydantic import TypeAdapter

from spotzee.schemas import structs
from spotzee.schemas.contact_models import ContactPublic, ContactState, Device, EventStats, RecentEvent
from spotzee.schemas.events import SegmentMessage
from spotzee.schemas.message_data import MessageData, message_data

names = st.text(st.characters(codec="utf-8", exclude_categories=("Cs",)), min_size=1, max_size=12)
moments = st.datetimes(min_value=datetime(1970, 1, 1), max_value=datetime(2100, 1, 1)).map(
    lambda d: d.replace(microsecond=d.microsecond // 1000 * 1000, tzinfo=UTC)
)
scalars = st.none() | st.booleans() | st.integers(-(2**53), 2**53) | names
json_values = st.recursive(
    scalars, lambda inner: st.lists(inner, max_size=3) | st.dictionaries(names, inner, max_size=3), max_leaves=8
)
objects = st.dictionaries(names, json_values, max_size=4)


@st.composite
def contact_states(draw: st.DrawFn) -> ContactState:
    created = draw(moments)
    events = draw(
        st.dictionaries(
            names,
            st.builds(
                lambda n, a, b: EventStats(count=n, first_at=min(a, b), last_at=max(a, b)),
                st.integers(1, 9),
                moments,
                moments,
            ),
            max_size=3,
        )
    )
    recent = draw(
        st.lists(
            st.builds(
                lambda i, n, at, props: RecentEvent(
                    message_id=i, type="track", event=n, timestamp=at, properties=props
                ),
                names,
                names,
                moments,
                objects,
            ),
            max_size=3,
        )
    )
    devices = draw(
        st.lists(
            st.builds(
                lambda t, k, a, b: Device(token=t, type=k, first_seen=min(a, b), last_seen=max(a, b)),
                names,
                st.sampled_from(["ios", "android", "other"]),
                moments,
                moments,
            ),
            max_size=3,
        )
    )
    return ContactState(
        project_id=draw(names),
        id=draw(names),
        user_id=draw(st.none() | names),
        anonymous_ids=draw(st.lists(names, max_size=3)),
        email=draw(st.none() | names),
        phone=draw(st.none() | names),
        timezone=draw(st.none() | names),
        locale=draw(st.none() | names),
        traits=draw(objects),
        groups=draw(st.dictionaries(names, objects, max_size=2)),
        first_seen=draw(st.none() | moments),
        last_seen=draw(st.none() | moments),
        events=events,
        recent_events=recent,
        devices=devices,
        created_at=created,
        updated_at=created + timedelta(seconds=draw(st.integers(0, 10**6))),
        version=draw(st.integers(0, 10**6)),
    )


def test_contact_state_and_public_have_the_same_fields() -> None:
    assert set(ContactState.__struct_fields__) == set(ContactPublic.model_fields)


@settings(max_examples=150, deadline=None)
@given(contact_states())
def test_contact_state_round_trips_through_the_edge_model(state: ContactState) -> None:
    public = ContactPublic.from_state(state)
    # edge -> bytes -> Struct: the same value; Struct -> bytes -> edge: the same model
    assert structs.decode(ContactState, public.model_dump_json().encode()) == state
    assert ContactPublic.model_validate_json(structs.encode(state)) == public
    assert structs.decode(ContactState, structs.encode(state)) == state


def test_pydantic_era_contact_bytes_decode() -> None:
    """What the pydantic ContactState wrote (model_dump_json) reads back unchanged."""
    stored = (
        b'{"project_id":"p","id":"u1","user_id":"u1","anonymous_ids":["a1"],"email":"x@example.com","phone":null,'
        b'"timezone":null,"locale":null,"traits":{"plan":"pro","n":{"a":1}},"groups":{},'
        b'"first_seen":"2026-01-02T03:04:05.678000Z","last_seen":"2026-01-02T03:04:05.678000Z",'
        b'"events":{"buy":{"count":2,"first_at":"2026-01-02T03:04:05Z","last_at":"2026-01-03T00:00:00Z"}},'
        b'"recent_events":[{"message_id":"m1","type":"track","event":"buy","timestamp":"2026-01-02T03:04:05Z",'
        b'"properties":{"price":9.5}}],"created_at":"2026-01-01T00:00:00Z","updated_at":"2026-01-03T00:00:00Z",'
        b'"version":3}'
    )
    state = structs.decode(ContactState, stored)
    assert state.events["buy"].last_at == datetime(2026, 1, 3, tzinfo=UTC)
    assert state.recent_events[0].properties == {"price": 9.5}
    # bytes written before devices existed read with none; written back, they gain the empty list
    assert state.devices == []
    assert msgspec.json.decode(structs.encode(state)) == {**msgspec.json.decode(stored), "devices": []}


edge_messages: TypeAdapter[Any] = TypeAdapter(SegmentMessage)
ids = st.text(st.characters(codec="ascii", categories=("L", "N")), min_size=1, max_size=10)


@st.composite
def edge_bodies(draw: st.DrawFn) -> dict[str, Any]:
    kind = draw(st.sampled_from(["track", "identify", "page", "screen", "group", "alias"]))
    body: dict[str, Any] = {"type": kind, "userId": draw(ids)}
    if draw(st.booleans()):
        body["anonymousId"] = draw(ids)
    for field in ("messageId",):
        if draw(st.booleans()):
            body[field] = draw(ids)
    for field in ("timestamp", "originalTimestamp", "sentAt"):
        if draw(st.booleans()):
            body[field] = draw(moments).isoformat()
    body["context"] = draw(objects)
    if kind == "track":
        body["event"] = draw(names)
        body["properties"] = draw(objects)
    elif kind in ("identify", "group"):
        body["traits"] = draw(objects)
        if kind == "group":
            body["groupId"] = draw(ids)
    elif kind in ("page", "screen"):
        body["name"] = draw(st.none() | names)
        body["properties"] = draw(objects)
    else:
        body["previousId"] = draw(ids)
    return body


def test_message_data_covers_every_edge_field() -> None:
    for member in SegmentMessage.__origin__.__args__:  # type: ignore[attr-defined]
        kind = member.model_fields["type"].default
        twin = next(t for t in MessageData.__args__ if t.type == kind)  # type: ignore[attr-defined]
        assert set(twin.__struct_fields__) == set(member.model_fields) - {"type", "write_key"}, kind


@settings(max_examples=200, deadline=None)
@given(edge_bodies())
def test_a_validated_message_and_its_record_form_agree(body: dict[str, Any]) -> None:
    edge = edge_messages.validate_python(body)
    data = message_data(edge)
    assert data.type == edge.type
    for name in data.__struct_fields__:
        assert getattr(data, name) == getattr(edge, name), name
    assert structs.decode(MessageData, structs.encode(data)) == data  # type: ignore[arg-type]
    assert data.contact_id == edge.contact_id
