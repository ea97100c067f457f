"""A segment build through ClickHouse, end to end in one process: ``Segments`` over a ``MemoryRuntime``
running the ``ContactProcessor``, and real chDB holding the history.

What the build appends is watched: a refresh goes only to contacts whose history matches (and to
those that fall back to facts), every other contact is covered by one sweep per partition.
"""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any, cast

import orjson
import pytest
from pydantic import TypeAdapter

from spotzee.analytics.clickhouse import ClickHouse
from spotzee.analytics.migrations import migrate
from spotzee.domain.segments.membership import ContactSegments
from spotzee.domain.segments.trackers import CountSlot
from spotzee.runtime.runtime_protocol import Position
from spotzee.schemas.events import SegmentMessage
from spotzee.schemas.message_data import message_data
from spotzee.schemas.records import IngestedMessage, decode_record, record_key
from spotzee.schemas.rules import SegmentRuleAdapter
from spotzee.schemas.segment_models import SegmentDefinition, SegmentRefresh, SegmentStatus
from spotzee.services.segment_service import Segments
from spotzee.settings import Settings
from spotzee.streams.contact_processor import ContactProcessor
from spotzee.streams.record_codec import dumps, loads
from spotzee.streams.segment_processor import MEMBERSHIPS, SEGMENT_MEMBERS, SegmentRegistry, member_prefix
from spotzee.testing import ManualClock, MemoryRuntime

NOW = datetime(2026, 3, 1, tzinfo=UTC)
PARTITIONS = 2
message_adapter = TypeAdapter[SegmentMessage](SegmentMessage)
COLUMNS = (
    "project_id", "message_id", "event_type", "event", "contact_id", "user_id", "anonymous_id", "timestamp",
    "received_at", "properties", "traits", "context", "raw",
)  # fmt: skip


class Build:
    """A project "p" with contacts, history in ClickHouse, and the records each build appended."""

    def __init__(self, clickhouse: ClickHouse, tmp_path: Path) -> None:
        self.clock = ManualClock(NOW)
        self.registry = SegmentRegistry()
        processor = ContactProcessor(dedupe_window=timedelta(days=1), recent_limit=10, segments=self.registry)
        self.runtime = MemoryRuntime(processor, self.clock, partitions=PARTITIONS)
        self.clickhouse = clickhouse
        settings = Settings(data_dir=tmp_path / "data", partitions=PARTITIONS)
        self.segments = Segments(settings, self.runtime, clickhouse, self.clock, cast(Any, None), self.registry)
        self.refreshed: list[SegmentRefresh] = []  # what the builds appended, in order
        append, broadcast = self.runtime.append, self.runtime.broadcast

        async def watched_append(records: list[tuple[str, bytes]]) -> list[Position]:
            self.refreshed += [r for _, v in records if isinstance(r := decode_record(v), SegmentRefresh)]
            return await append(records)

        async def watched_broadcast(key: str, value: bytes) -> list[Position]:
            record = decode_record(value)
            if isinstance(record, SegmentRefresh):
                self.refreshed += [record] * PARTITIONS
            return await broadcast(key, value)

        self.runtime.append = watched_append  # type: ignore[method-assign]
        self.runtime.broadcast = watched_broadcast  # type: ignore[method-assign]
        self.n = 0

    def send(self, sink: bool = False, **body: Any) -> None:
        """A message through the processor (``sink``: and its row in ClickHouse, as the sink writes it)."""
        self.n += 1
        message = message_adapter.validate_python({"timestamp": self.clock.now().isoformat(), **body})
        record = IngestedMessage(
            project_id="p",
            message_id=f"live{self.n}",
            received_at=self.clock.now(),
            message=message_data(message),
            raw="{}",
        )
        self.runtime.ctx.send(record_key(record), dumps(record))
        if sink and body["type"] == "track":
            self.history(body["userId"], body["event"], timedelta(0), body.get("properties", {}), f"live{self.n}")

    def history(self, contact_id: str, event: str, ago: timedelta, props: dict[str, Any], message_id: str) -> None:
        at = self.clock.now() - ago
        text = orjson.dumps(props).decode()
        row = ["p", message_id, "track", event, contact_id, contact_id, "", at, at, text, "{}", "{}", "{}"]
        self.clickhouse.insert("events", [row], COLUMNS)

    def build(self, segment_id: str, body: dict[str, Any], version: int = 1) -> SegmentDefinition:
        definition = SegmentDefinition(
            id=segment_id, project_id="p", name=segment_id, rule=SegmentRuleAdapter.validate_python(body),
            version=version, status=SegmentStatus.building, created_at=NOW, updated_at=NOW,
        )  # fmt: skip
        self.registry.apply(definition)
        self.refreshed.clear()
        asyncio.run(self.segments._build_once(definition))
        return definition

    def members(self, segment_id: str) -> set[str]:
        prefix = member_prefix("p", segment_id)
        return {key[len(prefix) :] for key, _ in self.runtime.scan(SEGMENT_MEMBERS, prefix)}

    def seeded(self) -> dict[str, SegmentRefresh]:
        """The per-contact refreshes of the last build (sweeps aside), by contact."""
        return {r.id: r for r in self.refreshed if not r.sweep}


@pytest.fixture(scope="module")
def clickhouse(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ClickHouse]:
    ch = ClickHouse(f"chdb://{tmp_path_factory.mktemp('build') / 'ch'}")
    migrate(ch)
    yield ch
    ch.close()


@pytest.fixture
def world(clickhouse: ClickHouse, tmp_path: Path) -> Build:
    clickhouse.command("TRUNCATE TABLE events")
    clickhouse.command("TRUNCATE TABLE contact_aliases")
    return Build(clickhouse, tmp_path)


def test_only_contacts_with_matching_history_get_a_refresh_and_the_rest_are_swept(world: Build) -> None:
    for user in ("u1", "u2", "u3", "u4"):
        world.send(type="identify", userId=user, traits={"country": "FR" if user != "u4" else "DE"})
    world.history("u1", "buy", timedelta(days=2), {"amount": 10}, "h1")
    world.history("u1", "buy", timedelta(days=40), {"amount": 10}, "h2")  # outside the window
    world.history("u2", "buy", timedelta(days=50), {"amount": 10}, "h3")  # outside the window: no seed
    world.history("u3", "view", timedelta(days=1), {}, "h4")  # another event
    rule = {
        "type": "all",
        "rules": [
            {"type": "attribute", "path": "country", "op": "eq", "value": "FR"},
            {"type": "event", "name": "buy", "within": {"last": 30, "unit": "day"}},
        ],
    }
    definition = world.build("S", rule)
    assert set(world.seeded()) == {"u1"}  # one seed; u2, u3, u4 only through the sweeps
    assert sum(r.sweep for r in world.refreshed) == PARTITIONS
    assert world.members("S") == {"u1"}
    progress = world.segments.progress["S"]
    assert (progress.total, progress.done) == (1 + PARTITIONS, 1 + PARTITIONS)
    # a contact the build never wrote to: its first live purchase counts from the empty tracker
    assert world.runtime.read(MEMBERSHIPS, "p:u2") is None
    world.send(type="track", userId="u2", event="buy")
    assert world.members("S") == {"u1", "u2"}
    # the clock alone: u1's purchase leaves the window
    world.clock.advance(timedelta(days=29))
    world.runtime.ctx.drain()
    assert world.members("S") == {"u2"}
    assert definition.version == 1


def test_a_rule_that_holds_without_history_is_evaluated_for_every_contact_in_one_sweep(world: Build) -> None:
    for user in ("u1", "u2", "u3"):
        world.send(type="identify", userId=user, traits={"plan": "pro" if user != "u3" else "free"})
    world.history("u2", "refund", timedelta(days=3), {}, "h1")
    world.build("never", {"type": "none", "rules": [{"type": "event", "name": "refund"}]})
    assert set(world.seeded()) == {"u2"}
    assert world.members("never") == {"u1", "u3"}
    world.build("pro", {"type": "attribute", "path": "plan", "op": "eq", "value": "pro"})
    assert world.seeded() == {}  # attribute-only: no query, no refresh, the sweep evaluates from state
    assert world.members("pro") == {"u1", "u2"}
    # an edit: the member that no longer matches exits at the sweep, the other keeps its membership
    world.build("pro", {"type": "attribute", "path": "plan", "op": "in", "value": ["free"]}, version=2)
    assert world.members("pro") == {"u3"}


def test_a_seed_counting_a_buffered_live_event_falls_back_to_facts_counted_once(world: Build) -> None:
    for user in ("u1", "u2"):
        world.send(type="identify", userId=user)
    world.history("u1", "buy", timedelta(days=1), {}, "h1")
    world.history("u1", "buy", timedelta(days=2), {}, "h2")
    rule = {"type": "event", "name": "buy", "count": {"op": "eq", "value": 3}}
    # the processor knows the version before its barrier (from the definitions store): a live purchase
    # is buffered for the backfill, and the sink has written it to ClickHouse already
    early = SegmentDefinition(
        id="S", project_id="p", name="S", rule=SegmentRuleAdapter.validate_python(rule), version=1,
        status=SegmentStatus.building, created_at=NOW, updated_at=NOW,
    )  # fmt: skip
    world.registry.apply(early)
    world.send(sink=True, type="track", userId="u1", event="buy")
    pending = loads(ContactSegments, world.runtime.read(MEMBERSHIPS, "p:u1") or b"{}").pending
    assert [f.name for f in pending] == ["buy"]
    world.build("S", rule)
    seeds, facts = (
        [r for r in world.refreshed if r.id == "u1" and bytes(r.seeds) != b"null"],
        [r for r in world.refreshed if r.id == "u1" and bytes(r.seeds) == b"null"],
    )
    assert len(seeds) == 1
    assert len(facts) == 1
    assert sorted(f.message_id for f in facts[0].facts) == ["h1", "h2", "live3"]
    assert world.members("S") == {"u1"}  # 3 purchases: the live one once
    progress = world.segments.progress["S"]
    assert progress.total == progress.done == 1 + 1 + PARTITIONS


def test_a_contact_merged_after_the_build_brings_its_implicitly_complete_trackers(world: Build) -> None:
    world.build("E", {"type": "everyone"})  # from here on every contact that sends anything has a state
    world.send(type="identify", userId="u1")
    world.send(type="track", anonymousId="a1", event="view")
    world.history("u1", "buy", timedelta(days=1), {}, "h1")
    world.history("u1", "buy", timedelta(days=2), {}, "h2")
    world.build("S", {"type": "event", "name": "buy", "count": {"op": "gte", "value": 3}})
    assert set(world.seeded()) == {"u1"}
    assert world.members("S") == set()
    # a1 had a state before S, and nothing since: its tracker is complete only by the sweep's mark
    assert "S" not in str(world.runtime.read(MEMBERSHIPS, "p:a1"))
    world.send(type="identify", userId="u1", anonymousId="a1")  # a1 merges into u1
    world.send(type="track", userId="u1", event="buy")  # counted: the merged tracker is complete
    assert world.members("S") == {"u1"}
    state = loads(ContactSegments, world.runtime.read(MEMBERSHIPS, "p:u1") or b"{}")
    assert not state.seeding
    assert not state.pending


def test_a_merge_that_finds_a_tracker_complete_on_one_side_only_waits_for_a_refresh(world: Build) -> None:
    """What the merge can't know (the other side's events) comes back with the next refresh."""
    world.build("E", {"type": "everyone"})
    world.send(type="identify", userId="u1")
    world.send(type="track", anonymousId="a1", event="view")
    world.history("a1", "buy", timedelta(days=1), {}, "h1")
    rule = {"type": "event", "name": "buy", "count": {"op": "gte", "value": 2}}
    early = SegmentDefinition(
        id="S", project_id="p", name="S", rule=SegmentRuleAdapter.validate_python(rule), version=1,
        status=SegmentStatus.building, created_at=NOW, updated_at=NOW,
    )  # fmt: skip
    world.registry.apply(early)  # known, not backfilled yet: both sides incomplete
    world.send(type="identify", userId="u2")  # a new contact: complete from the start
    world.send(type="identify", userId="u2", anonymousId="a1")  # a1 (incomplete) merges into u2 (complete)
    state = loads(ContactSegments, world.runtime.read(MEMBERSHIPS, "p:u2") or b"{}")
    assert "S" in state.seeding  # waits: the merge dropped the slot only u2 had
    world.send(type="track", userId="u2", event="buy", sink=True)
    world.clickhouse.insert(
        "contact_aliases", [["p", "a1", "u2", NOW]], ["project_id", "alias_id", "contact_id", "merged_at"]
    )
    world.build("S", rule)  # u2's history, a1's purchase resolved to it, as facts (u2 buffered a live one)
    assert "u2" in world.seeded()
    assert world.members("S") == {"u2"}
    state = loads(ContactSegments, world.runtime.read(MEMBERSHIPS, "p:u2") or b"{}")
    assert not state.seeding
    assert state.state.slots[next(iter(state.complete))] == CountSlot(n=2)


def test_a_deleted_segment_ends_its_memberships_at_the_sweep(world: Build) -> None:
    world.send(type="identify", userId="u1", traits={"plan": "pro"})
    definition = world.build("pro", {"type": "attribute", "path": "plan", "op": "eq", "value": "pro"})
    assert world.members("pro") == {"u1"}
    gone = definition.model_copy(update={"version": 2, "status": SegmentStatus.deleted})
    world.registry.apply(gone)
    asyncio.run(world.segments._build_once(gone))
    assert world.members("pro") == set()
    assert loads(ContactSegments, world.runtime.read(MEMBERSHIPS, "p:u1") or b"{}").members == {}
