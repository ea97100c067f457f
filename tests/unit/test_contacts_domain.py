"""The contact reducer, including a property test against an independent recompute."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Any

from hypothesis import given, settings
from hypothesis import strategies as st
from pydantic import TypeAdapter

from spotzee.domain.contacts import apply_message, apply_patch, diff_attributes, merge_profiles
from spotzee.domain.event_time import effective_timestamp
from spotzee.schemas.contact_models import ContactState
from spotzee.schemas.events import SegmentMessage
from spotzee.schemas.message_data import MessageData, message_data

T0 = datetime(2026, 3, 1, tzinfo=UTC)
message_adapter = TypeAdapter[SegmentMessage](SegmentMessage)


def msg(**body: Any) -> MessageData:
    """A message as the API validates it and hands it to the processor."""
    return message_data(message_adapter.validate_python(body))


def apply(
    state: ContactState | None, body: dict[str, Any], at: datetime = T0, contact: str = "u1", mid: str = "m"
) -> ContactState:
    return apply_message(
        state, msg(**body), project_id="p", contact_id=contact, message_id=mid, received_at=at, recent_limit=5
    ).state


def test_track_counts_and_seen_times() -> None:
    state = apply(None, {"type": "track", "userId": "u1", "event": "buy"}, T0, mid="1")
    state = apply(
        state,
        {"type": "track", "userId": "u1", "event": "buy", "timestamp": (T0 - timedelta(days=1)).isoformat()},
        T0,
        mid="2",
    )
    state = apply(state, {"type": "page", "userId": "u1", "name": "Home"}, T0 + timedelta(hours=1), mid="3")
    assert state.events["buy"].count == 2
    assert state.events["buy"].first_at == T0 - timedelta(days=1)
    assert state.events["page"].count == 1
    assert (state.first_seen, state.last_seen) == (T0 - timedelta(days=1), T0 + timedelta(hours=1))
    assert [e.message_id for e in state.recent_events] == ["2", "1", "3"]
    assert state.version == 3


def test_identify_with_both_ids_asks_for_a_merge_until_it_is_done() -> None:
    body = {"type": "identify", "userId": "u1", "anonymousId": "a1", "traits": {"plan": "x"}}
    first = apply_message(
        None, msg(**body), project_id="p", contact_id="u1", message_id="1", received_at=T0, recent_limit=5
    )
    assert first.merge_sources == ["a1"]
    again = apply_message(
        first.state, msg(**body), project_id="p", contact_id="u1", message_id="2", received_at=T0, recent_limit=5
    )
    assert again.merge_sources == ["a1"]  # the hand-over has not arrived yet
    anon = apply(None, {"type": "track", "anonymousId": "a1", "event": "e"}, contact="a1")
    done = merge_profiles(again.state, anon, source_id="a1", target_id="u1", project_id="p", now=T0, recent_limit=5)
    after = apply_message(
        done.state, msg(**body), project_id="p", contact_id="u1", message_id="3", received_at=T0, recent_limit=5
    )
    assert after.merge_sources == []


def test_alias_merges_previous_id() -> None:
    outcome = apply_message(
        None,
        msg(type="alias", userId="new", previousId="old"),
        project_id="p",
        contact_id="new",
        message_id="1",
        received_at=T0,
        recent_limit=5,
    )
    assert outcome.merge_sources == ["old"]


def test_merge_known_wins_and_counts_add() -> None:
    known = apply(None, {"type": "identify", "userId": "u1", "traits": {"email": "k@example.com", "a": {"x": 1}}})
    known = apply(known, {"type": "track", "userId": "u1", "event": "e"}, T0 + timedelta(days=2), mid="k")
    anon = apply(
        None,
        {"type": "identify", "anonymousId": "a1", "traits": {"email": "a@example.com", "a": {"y": 2}, "b": 3}},
        contact="a1",
    )
    anon = apply(
        anon, {"type": "track", "anonymousId": "a1", "event": "e"}, T0 - timedelta(days=1), contact="a1", mid="a"
    )
    outcome = merge_profiles(
        known, anon, source_id="a1", target_id="u1", project_id="p", now=T0 + timedelta(days=3), recent_limit=5
    )
    merged = outcome.state
    assert merged.email == "k@example.com"
    assert merged.traits == {"a": {"x": 1, "y": 2}, "b": 3}
    assert merged.events["e"].count == 2
    assert merged.events["e"].first_at == T0 - timedelta(days=1)
    assert merged.anonymous_ids == ["a1"]
    assert merged.first_seen == T0 - timedelta(days=1)
    assert {c.path for c in outcome.changes} == {"traits.a.y", "traits.b"}


def test_merge_into_a_contact_not_seen_yet() -> None:
    anon = apply(None, {"type": "track", "anonymousId": "a1", "event": "e"}, contact="a1")
    merged = merge_profiles(None, anon, source_id="a1", target_id="u1", project_id="p", now=T0, recent_limit=5).state
    assert (merged.id, merged.user_id, merged.events["e"].count) == ("u1", "u1", 1)


def test_patch_reports_changes() -> None:
    state = apply(None, {"type": "identify", "userId": "u1", "traits": {"plan": "free"}})
    outcome = apply_patch(state, {"plan": "pro", "email": "x@example.com"}, project_id="p", contact_id="u1", now=T0)
    assert [(c.path, c.old, c.new) for c in outcome.changes] == [
        ("email", None, "x@example.com"),
        ("traits.plan", "free", "pro"),
    ]


def test_effective_timestamp_corrects_skew() -> None:
    m = msg(type="track", userId="u", event="e", timestamp="2026-03-01T10:00:00Z", sentAt="2026-03-01T10:00:05Z")
    assert effective_timestamp(m, T0) == T0 - timedelta(seconds=5)
    assert effective_timestamp(msg(type="track", userId="u", event="e"), T0) == T0


# -- property: the incremental state equals a recompute from the event log --------------------

leaf = st.one_of(st.none(), st.integers(-5, 5), st.sampled_from(["a", "b"]), st.booleans())
trait_keys = st.sampled_from(["plan", "score", "address.city", "address.zip", "flags.beta"])
identify = st.builds(
    lambda t: {"type": "identify", "userId": "u1", "traits": t}, st.dictionaries(trait_keys, leaf, max_size=3)
)
track = st.builds(
    lambda e, offset: {
        "type": "track",
        "userId": "u1",
        "event": e,
        "timestamp": (T0 + timedelta(minutes=offset)).isoformat(),
    },
    st.sampled_from(["buy", "view", "refund"]),
    st.integers(-1000, 1000),
)
page = st.builds(lambda n: {"type": "page", "userId": "u1", "name": n}, st.sampled_from(["Home", "Pricing"]))


def recompute(log: list[dict[str, Any]]) -> dict[str, Any]:
    """An independent fold of the log: traits as last-writer-wins per leaf path."""
    leaves: dict[str, Any] = {}
    counts: dict[str, int] = {}
    first: dict[str, datetime] = {}
    last: dict[str, datetime] = {}
    for body in log:
        if body["type"] == "identify":
            for path, value in body["traits"].items():
                for existing in [
                    p for p in leaves if p == path or p.startswith(path + ".") or path.startswith(p + ".")
                ]:
                    del leaves[existing]
                if value is not None:
                    leaves[path] = value
        else:
            name = body.get("event", body["type"])
            at = datetime.fromisoformat(body["timestamp"]) if "timestamp" in body else T0
            counts[name] = counts.get(name, 0) + 1
            first[name] = min(first.get(name, at), at)
            last[name] = max(last.get(name, at), at)
    return {"leaves": leaves, "counts": counts, "first": first, "last": last}


def flat(state: ContactState) -> dict[str, Any]:
    out: dict[str, Any] = {}

    def walk(value: dict[str, Any], prefix: str) -> None:
        for key, item in value.items():
            path = f"{prefix}.{key}" if prefix else key
            if isinstance(item, dict):
                walk(item, path)
            else:
                out[path] = item

    walk(state.traits, "")
    return out


@settings(max_examples=200, deadline=None)
@given(st.lists(st.one_of(identify, track, page), min_size=1, max_size=30))
def test_incremental_state_equals_recompute_from_the_log(log: list[dict[str, Any]]) -> None:
    state: ContactState | None = None
    changes = 0
    for i, body in enumerate(log):
        before = state
        state = apply(state, body, mid=str(i))
        changes += len(diff_attributes(before, state))
    assert state is not None
    expected = recompute(log)
    assert flat(state) == expected["leaves"]
    assert {name: s.count for name, s in state.events.items()} == expected["counts"]
    assert {name: s.first_at for name, s in state.events.items()} == expected["first"]
    assert {name: s.last_at for name, s in state.events.items()} == expected["last"]
    assert state.version == len(log)
