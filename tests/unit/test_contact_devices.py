"""Push devices on contacts: ``context.device.token`` registers a token, bounded, merged, removed."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Any

from pydantic import TypeAdapter

from spotzee.domain.contacts import apply_message, merge_profiles, without_devices
from spotzee.schemas.contact_models import MAX_DEVICES, ContactPublic, ContactState
from spotzee.schemas.events import SegmentMessage
from spotzee.schemas.message_data import message_data

T0 = datetime(2026, 3, 1, tzinfo=UTC)
adapter = TypeAdapter[SegmentMessage](SegmentMessage)


def apply(state: ContactState | None, device: Any, at: datetime = T0, mid: str = "m") -> ContactState:
    body = {"type": "track", "userId": "u1", "event": "open", "context": {"device": device}}
    message = message_data(adapter.validate_python(body))
    return apply_message(
        state, message, project_id="p", contact_id="u1", message_id=mid, received_at=at, recent_limit=5
    ).state


def test_a_token_is_registered_with_its_type_and_seen_times() -> None:
    state = apply(None, {"token": "tok-1", "type": "iOS"})
    state = apply(state, {"token": "tok-1", "type": "ios"}, T0 + timedelta(hours=1), mid="2")
    state = apply(state, {"token": "tok-2", "type": "android"}, T0 + timedelta(hours=2), mid="3")
    assert [(d.token, d.type) for d in state.devices] == [("tok-1", "ios"), ("tok-2", "android")]
    assert (state.devices[0].first_seen, state.devices[0].last_seen) == (T0, T0 + timedelta(hours=1))
    public = ContactPublic.from_state(state)
    assert [d.token for d in public.devices] == ["tok-1", "tok-2"]


def test_no_or_invalid_token_registers_nothing_and_the_event_still_counts() -> None:
    state = None
    for i, device in enumerate([{"type": "ios"}, {"token": ""}, {"token": 5}, {"token": "x" * 5000}, "tok"]):
        state = apply(state, device, mid=str(i))
    assert state is not None
    assert state.devices == []
    assert state.events["open"].count == 5


def test_unknown_type_is_other() -> None:
    assert apply(None, {"token": "t", "type": "windows"}).devices[0].type == "other"


def test_devices_are_bounded_the_least_recently_seen_dropped() -> None:
    state = None
    for i in range(MAX_DEVICES + 3):
        state = apply(state, {"token": f"t{i}"}, T0 + timedelta(minutes=i), mid=str(i))
    assert state is not None
    assert len(state.devices) == MAX_DEVICES
    assert {d.token for d in state.devices} == {f"t{i}" for i in range(3, MAX_DEVICES + 3)}
    # seeing an old one again keeps it, dropping the now least recent
    state = apply(state, {"token": "t3"}, T0 + timedelta(days=1), mid="again")
    state = apply(state, {"token": "new"}, T0 + timedelta(days=2), mid="new")
    assert "t3" in {d.token for d in state.devices}
    assert "t4" not in {d.token for d in state.devices}


def test_the_input_state_is_not_changed() -> None:
    before = apply(None, {"token": "a"})
    after = apply(before, {"token": "b"}, T0 + timedelta(minutes=1), mid="2")
    assert [d.token for d in before.devices] == ["a"]
    assert [d.token for d in after.devices] == ["a", "b"]


def test_a_merge_combines_devices_and_removal_drops_tokens() -> None:
    target = apply(None, {"token": "a"})
    source = apply(None, {"token": "b"}, T0 + timedelta(minutes=1))
    merged = merge_profiles(target, source, source_id="anon", target_id="u1", project_id="p", now=T0, recent_limit=5)
    assert sorted(d.token for d in merged.state.devices) == ["a", "b"]
    assert [d.token for d in without_devices(merged.state.devices, ["a", "zzz"])] == ["b"]
