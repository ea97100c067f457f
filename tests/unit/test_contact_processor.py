"""The contact processor, run on both store backends: in-memory and the embedded runtime."""

from __future__ import annotations

import random
import time
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any, Protocol

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from pydantic import TypeAdapter

from spotzee.runtime.embedded.embedded_runtime import EmbeddedRuntime
from spotzee.schemas.analytics_models import (
    AliasRow,
    AnalyticsRecord,
    EraseHistory,
    EventRow,
    analytics_record_adapter,
)
from spotzee.schemas.contact_models import AliasState, ContactState
from spotzee.schemas.events import SegmentMessage
from spotzee.schemas.message_data import message_data
from spotzee.schemas.records import ContactErase, EventsRecord, IngestedMessage, record_key
from spotzee.settings import Settings
from spotzee.streams import topics
from spotzee.streams.contact_processor import ALIASES, CONTACTS, DEDUPE, ContactProcessor
from spotzee.streams.record_codec import dumps, loads
from spotzee.tables.rocksdb_store import OUTBOX
from spotzee.testing import ManualClock, MemoryContext
from tests.support import wait_until

WINDOW = timedelta(hours=24)
message_adapter = TypeAdapter[SegmentMessage](SegmentMessage)


class Harness(Protocol):
    clock: ManualClock

    def send(self, record: EventsRecord) -> None: ...

    def settle(self) -> None: ...

    def get(self, table: str, key: str) -> bytes | None: ...

    def table_keys(self, table: str) -> list[str]: ...

    def analytics(self) -> list[AnalyticsRecord]: ...


class MemoryHarness:
    def __init__(self, clock: ManualClock) -> None:
        self.clock = clock
        self.ctx = MemoryContext(ContactProcessor(dedupe_window=WINDOW, recent_limit=10), clock)

    def send(self, record: EventsRecord) -> None:
        self.ctx.send(record_key(record), dumps(record))

    def settle(self) -> None:
        self.ctx.drain()

    def get(self, table: str, key: str) -> bytes | None:
        return self.ctx.table(table).get(key)

    def table_keys(self, table: str) -> list[str]:
        return sorted(self.ctx.table(table).data)

    def analytics(self) -> list[AnalyticsRecord]:
        return [analytics_record_adapter.validate_json(v) for v in self.ctx.emitted(topics.ANALYTICS)]


class EmbeddedHarness:
    def __init__(self, path: Path, clock: ManualClock, partitions: int = 4) -> None:
        self.clock = clock
        settings = Settings(data_dir=path, partitions=partitions)
        self.runtime = EmbeddedRuntime(settings, ContactProcessor(dedupe_window=WINDOW, recent_limit=10), clock)
        self.runtime.start()

    def send(self, record: EventsRecord) -> None:
        self.runtime.append_sync([(record_key(record), dumps(record))])
        self.settle()

    def settle(self) -> None:
        with self.runtime.wakeup:
            self.runtime.wakeup.notify_all()
        time.sleep(0.12)  # let due timers fire (the loop polls every 50 ms)
        wait_until(lambda: self.runtime.processing_lag() == 0, timeout=20, interval=0.01)

    def get(self, table: str, key: str) -> bytes | None:
        return self.runtime.read(table, key)

    def table_keys(self, table: str) -> list[str]:
        return [k for k, _ in self.runtime.scan(table, "")]

    def analytics(self) -> list[AnalyticsRecord]:
        return [analytics_record_adapter.validate_json(bytes(v)) for v in self.runtime.db.cf(OUTBOX).values()]

    def close(self) -> None:
        self.runtime.stop()
        self.runtime.close()


@pytest.fixture(params=["memory", "embedded"])
def harness(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Harness]:
    clock = ManualClock(datetime(2026, 3, 1, tzinfo=UTC))
    if request.param == "memory":
        yield MemoryHarness(clock)
    else:
        embedded = EmbeddedHarness(tmp_path / "data", clock)
        yield embedded
        embedded.close()


def ingest(clock: ManualClock, message_id: str, **body: Any) -> IngestedMessage:
    message = message_adapter.validate_python(body)
    return IngestedMessage(
        project_id="p", message_id=message_id, received_at=clock.now(), message=message_data(message), raw="{}"
    )


def state(h: Harness, contact_id: str) -> ContactState | None:
    raw = h.get(CONTACTS.name, f"p:{contact_id}")
    return loads(ContactState, raw) if raw is not None else None


def test_merge_forwarding_and_history(harness: Harness) -> None:
    c = harness.clock
    harness.send(ingest(c, "1", type="track", anonymousId="a1", event="view"))
    harness.send(ingest(c, "2", type="identify", userId="u1", anonymousId="a1", traits={"plan": "pro"}))
    harness.send(ingest(c, "3", type="track", anonymousId="a1", event="view"))
    harness.settle()
    merged = state(harness, "u1")
    assert merged is not None
    assert merged.events["view"].count == 2
    assert state(harness, "a1") is None
    alias = harness.get(ALIASES.name, "p:a1")
    assert alias is not None
    assert loads(AliasState, alias).merged_into == "u1"
    records = harness.analytics()
    events = [r for r in records if isinstance(r, EventRow)]
    assert [(e.message_id, e.contact_id) for e in events] == [("1", "a1"), ("2", "u1"), ("3", "u1")]
    aliases = [(r.alias_id, r.contact_id) for r in records if isinstance(r, AliasRow)]
    assert aliases == [("a1", "u1")]


def test_chained_merges_map_every_id_to_the_last_contact_and_erase_all(harness: Harness) -> None:
    c = harness.clock
    harness.send(ingest(c, "1", type="track", anonymousId="a", event="view"))
    harness.send(ingest(c, "2", type="identify", userId="u2", anonymousId="a"))
    harness.send(ingest(c, "3", type="alias", userId="u1", previousId="u2"))
    harness.send(ingest(c, "4", type="track", anonymousId="a", event="view"))  # forwarded a -> u2 -> u1
    harness.settle()
    merged = state(harness, "u1")
    assert merged is not None
    assert merged.events["view"].count == 2
    assert sorted(merged.anonymous_ids) == ["a", "u2"]
    latest = {r.alias_id: r.contact_id for r in harness.analytics() if isinstance(r, AliasRow)}
    assert latest == {"a": "u1", "u2": "u1"}
    harness.send(ContactErase(project_id="p", id="u1", requested_at=c.now(), request_id="r"))
    harness.settle()
    assert harness.table_keys(CONTACTS.name) == []
    assert harness.table_keys(ALIASES.name) == []


def test_dedupe_within_the_window_then_swept(harness: Harness) -> None:
    c = harness.clock
    harness.send(ingest(c, "m", type="track", userId="u1", event="e"))
    harness.send(ingest(c, "m", type="track", userId="u1", event="e"))
    assert state(harness, "u1").events["e"].count == 1  # type: ignore[union-attr]
    assert harness.table_keys(DEDUPE.name) == ["p:u1\x00m"]
    c.advance(WINDOW + timedelta(seconds=1))
    harness.settle()
    assert harness.table_keys(DEDUPE.name) == []  # the sweep timer removed the expired entry
    harness.send(ingest(c, "m", type="track", userId="u1", event="e"))
    assert state(harness, "u1").events["e"].count == 2  # type: ignore[union-attr]


def test_erase_cascades_to_merged_ids(harness: Harness) -> None:
    c = harness.clock
    harness.send(ingest(c, "1", type="track", anonymousId="a1", event="view"))
    harness.send(ingest(c, "2", type="identify", userId="u1", anonymousId="a1"))
    harness.settle()
    harness.send(ContactErase(project_id="p", id="u1", requested_at=c.now(), request_id="r"))
    harness.settle()
    assert harness.table_keys(CONTACTS.name) == []
    assert harness.table_keys(ALIASES.name) == []
    assert harness.table_keys(DEDUPE.name) == []
    erased = [r.contact_ids for r in harness.analytics() if isinstance(r, EraseHistory)]
    assert erased == [["u1", "a1"]]


ids = st.sampled_from(["u1", "u2", "u3"])
anons = st.sampled_from(["a1", "a2", "a3", "a4"])
behaviour = st.one_of(
    st.builds(lambda a: {"type": "track", "anonymousId": a, "event": "e"}, anons),
    st.builds(lambda u: {"type": "track", "userId": u, "event": "e"}, ids),
    st.builds(lambda u, a: {"type": "identify", "userId": u, "anonymousId": a}, ids, anons),
    st.builds(lambda u, a: {"type": "alias", "userId": u, "previousId": a}, ids, anons),
)


@settings(max_examples=150, deadline=None)
@given(st.lists(behaviour, min_size=1, max_size=40))
def test_merges_never_lose_or_double_an_event(stream: list[dict[str, Any]]) -> None:
    clock = ManualClock()
    h = MemoryHarness(clock)
    for i, body in enumerate(stream):
        h.send(ingest(clock, str(i), **body))
    total = sum(
        loads(ContactState, raw).events.get("e", _zero()).count for raw in h.ctx.table(CONTACTS.name).data.values()
    )
    assert total == sum(1 for body in stream if body["type"] == "track")
    for key, raw in h.ctx.table(ALIASES.name).data.items():
        target = loads(AliasState, raw).merged_into
        assert h.get(CONTACTS.name, key) is None  # an alias has no state of its own
        assert target != key.split(":", 1)[1]


def _zero() -> Any:
    class Zero:
        count = 0

    return Zero()


def test_embedded_runtime_matches_memory_on_a_random_stream(tmp_path: Path) -> None:
    rng = random.Random(7)
    stream = []
    for i in range(300):
        kind = rng.choice(["track_anon", "track_user", "identify", "alias", "page"])
        user, anon = rng.choice(["u1", "u2", "u3", "u4"]), rng.choice(["a1", "a2", "a3", "a4", "a5"])
        body: dict[str, Any] = {
            "track_anon": {"type": "track", "anonymousId": anon, "event": "e", "properties": {"i": i}},
            "track_user": {"type": "track", "userId": user, "event": rng.choice(["e", "f"])},
            "identify": {"type": "identify", "userId": user, "anonymousId": anon, "traits": {"n": i}},
            "alias": {"type": "alias", "userId": user, "previousId": anon},
            "page": {"type": "page", "userId": user, "name": "Home"},
        }[kind]
        stream.append((str(rng.randint(0, 250)), body))  # repeated ids exercise dedupe
    clock = ManualClock()
    memory = MemoryHarness(clock)
    embedded = EmbeddedHarness(tmp_path / "data", clock, partitions=8)
    try:
        for mid, body in stream:
            memory.send(ingest(clock, mid, **body))
            embedded.send(ingest(clock, mid, **body))
        memory.settle()
        embedded.settle()
        for table in (CONTACTS.name, ALIASES.name, DEDUPE.name):
            assert embedded.table_keys(table) == memory.table_keys(table)
            for key in memory.table_keys(table):
                assert embedded.get(table, key) == memory.get(table, key)
    finally:
        embedded.close()
