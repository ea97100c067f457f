"""The processor's shortcuts (issue 11, target 5) against the long way they replace.

Each shortcut skips or caches work the processor did per record; these tests hold it to the same
result: the recent-events insert against the dedupe-and-sort, the copy-on-write trait merge against
the deep copy, the e-mail cache (bounded) against the validator, the run index of a project without
journeys (never read or written), and the batch overlay's per-record savepoint over the tables a
record touched and its emits.
"""

from __future__ import annotations

import copy
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from email_validator import validate_email
from hypothesis import given, settings
from hypothesis import strategies as st
from pydantic import TypeAdapter

from spotzee.domain import contacts, traits
from spotzee.schemas.contact_models import RecentEvent
from spotzee.schemas.events import SegmentMessage
from spotzee.schemas.journey_models import JourneyDefinition
from spotzee.schemas.message_data import message_data
from spotzee.schemas.records import IngestedMessage, record_key
from spotzee.streams.contact_processor import ContactProcessor
from spotzee.streams.journey_processor import JOURNEY_RUN_IDS, JourneyRegistry
from spotzee.streams.record_codec import dumps
from spotzee.tables.overlay import BatchContext
from spotzee.tables.rocksdb_store import RocksDB
from spotzee.testing import ManualClock, MemoryContext

T0 = datetime(2026, 3, 1, tzinfo=UTC)

# -- recent events: a binary-search insert, not a dedupe and a sort per event ------------------------

RECENT = st.builds(
    RecentEvent,
    message_id=st.sampled_from([f"m{i}" for i in range(12)]),
    type=st.just("track"),
    event=st.just("view"),
    timestamp=st.integers(0, 6).map(lambda minutes: T0 + timedelta(minutes=minutes)),
)


@settings(max_examples=300, deadline=None)
@given(history=st.lists(RECENT, max_size=30), new=RECENT, limit=st.integers(0, 8))
def test_inserting_a_recent_event_equals_the_dedupe_and_sort(
    history: list[RecentEvent], new: RecentEvent, limit: int
) -> None:
    kept = contacts._recent(history, 8)  # what a stored contact holds: unique ids, in order
    assert contacts._with_recent(kept, new, limit) == contacts._recent([*kept, new], limit)


# -- traits: copy on write instead of a deep copy ---------------------------------------------------

LEAVES = st.one_of(st.none(), st.integers(0, 3), st.sampled_from(["a", "b"]), st.lists(st.integers(0, 2), max_size=2))
KEYS = st.sampled_from(["a", "b", "c", "a.b", "b.c"])
TRAITS = st.recursive(LEAVES, lambda inner: st.dictionaries(KEYS, inner, max_size=3), max_leaves=8)


def _deep_copy_merge(current: dict[str, Any], update: dict[str, Any]) -> tuple[dict[str, Any], list[Any]]:
    """``merge_traits`` as it was: the whole of ``current`` deep-copied, then merged into in place."""

    def merge_into(target: dict[str, Any], update: dict[str, Any], path: str, changes: list[Any]) -> None:
        for key, value in update.items():
            here = f"{path}.{key}" if path else key
            old = target.get(key)
            if value is None:
                if key in target:
                    changes.append((here, target.pop(key), None))
            elif isinstance(value, dict) and isinstance(old, dict):
                merge_into(old, value, here, changes)
                if not old:
                    target.pop(key)
            elif isinstance(value, dict):
                cleaned = traits._drop_nulls(value)
                if old != cleaned:
                    target[key] = cleaned
                    changes.append((here, old, cleaned))
            elif old != value:
                target[key] = value
                changes.append((here, old, value))

    merged = copy.deepcopy(current)
    changes: list[Any] = []
    merge_into(merged, traits.expand_paths(update), "", changes)
    return merged, changes


@settings(max_examples=300, deadline=None)
@given(
    current=st.dictionaries(KEYS.filter(lambda k: "." not in k), TRAITS, max_size=3),
    update=st.dictionaries(KEYS, TRAITS, max_size=3),
)
def test_the_copy_on_write_merge_equals_the_deep_copy_merge_and_leaves_current_alone(
    current: dict[str, Any], update: dict[str, Any]
) -> None:
    current = traits._drop_nulls(current)  # stored traits hold no nulls
    before = copy.deepcopy(current)
    assert traits.merge_traits(current, update) == _deep_copy_merge(current, update)
    assert current == before


# -- e-mail addresses: normalised once, in a bounded cache -----------------------------------------------


def test_a_normalised_address_is_the_validators_and_the_cache_stays_bounded(monkeypatch: pytest.MonkeyPatch) -> None:
    assert (
        traits.normalize_email("Ada@EXAMPLE.com")
        == validate_email("Ada@EXAMPLE.com", check_deliverability=False).normalized
    )
    with pytest.raises(ValueError, match="@"):
        traits.normalize_email("not-an-address")
    with pytest.raises(ValueError, match="@"):
        traits.normalize_email("not-an-address")  # an invalid address is not remembered as valid
    assert traits._normalized_email.cache_info().maxsize == traits.EMAIL_CACHE_SIZE
    traits._normalized_email.cache_clear()
    for n in range(traits.EMAIL_CACHE_SIZE + 50):
        traits.normalize_email(f"user{n}@example.com")
    assert traits._normalized_email.cache_info().currsize == traits.EMAIL_CACHE_SIZE
    traits.normalize_email("user1@example.com")  # evicted (the oldest): validated again, same answer
    assert traits.normalize_email("user1@example.com") == "user1@example.com"
    assert traits._normalized_email.cache_info().currsize == traits.EMAIL_CACHE_SIZE


# -- the run index: a project without journeys never reads or writes it --------------------------------

MESSAGE = TypeAdapter[SegmentMessage](SegmentMessage)


def _track(project_id: str, user_id: str, message_id: str) -> IngestedMessage:
    message = MESSAGE.validate_python({"type": "track", "userId": user_id, "event": "purchase"})
    return IngestedMessage(
        project_id=project_id, message_id=message_id, received_at=T0, message=message_data(message), raw="{}"
    )


def _journey(project_id: str) -> JourneyDefinition:
    return JourneyDefinition.model_validate(
        {
            "id": "jrn_1",
            "project_id": project_id,
            "name": "receipt",
            "trigger": {"type": "event", "event": "purchase"},
            "start": "done",
            "steps": {"done": {"type": "exit"}},
            "version": 1,
            "status": "live",
            "created_at": T0,
            "updated_at": T0,
        }
    )


def test_the_run_index_is_left_alone_in_a_project_without_journeys() -> None:
    registry = JourneyRegistry()
    registry.apply(_journey("p_journeys"))
    processor = ContactProcessor(dedupe_window=timedelta(days=1), recent_limit=10, journeys=registry)
    ctx = MemoryContext(processor, ManualClock(T0))
    run_ids = ctx.table(JOURNEY_RUN_IDS)
    reads: list[str] = []
    original_get = run_ids.get_value

    def counted_get(key: str, spec: Any) -> Any:
        reads.append(key)
        return original_get(key, spec)

    run_ids.get_value = counted_get  # type: ignore[method-assign]
    for n, project_id in enumerate(["p_plain", "p_plain", "p_journeys"]):
        record = _track(project_id, "u1", f"m{n}")
        ctx.send(record_key(record), dumps(record))
    assert registry.has_journeys("p_journeys")
    assert not registry.has_journeys("p_plain")
    assert sorted(run_ids.data) == ["p_journeys:u1"]  # indexed where journeys run, nowhere else
    assert reads
    assert all(key == "p_journeys:u1" for key in reads)


# -- the overlay's per-record savepoint ---------------------------------------------------------------


def test_a_rolled_back_record_leaves_the_batch_as_the_records_before_it_made_it(tmp_path: Path) -> None:
    db = RocksDB(tmp_path / "db", ("a", "b", "c"))
    try:
        ctx = BatchContext(db, ("a", "b", "c"), ManualClock(T0))
        ctx.table("a").set("k1", b"1")
        ctx.emit("analytics", "k1", b"row1")
        ctx.schedule("t1", T0, "events", "k1", b"wake1")
        ctx.commit_record()
        ctx.table("a").set("k1", b"2")
        ctx.table("b").set("k2", b"2")
        ctx.emit("analytics", "k2", b"row2")
        ctx.schedule("t2", T0, "events", "k2", b"wake2")
        ctx.cancel("t1")
        ctx.rollback_record()
        ctx.table("c").set("k3", b"3")
        ctx.emit("analytics", "k3", b"row3")
        ctx.commit_record()
        assert ctx.batch.emits == [("analytics", "k1", b"row1"), ("analytics", "k3", b"row3")]
        assert [op.timer_id for op in ctx.batch.timers] == ["t1"]
        assert ctx._timer_exists("t1")
        assert not ctx._timer_exists("t2")
        assert {name: dict(table.encoded_batch()) for name, table in ctx.tables.items()} == {
            "a": {"k1": b"1"},
            "b": {},
            "c": {"k3": b"3"},
        }
        assert all(not table.record for table in ctx.tables.values())
    finally:
        db.close()
