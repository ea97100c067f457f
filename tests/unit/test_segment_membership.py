"""A contact's membership in a project's segments (``domain.segments.membership``), property-wise.

The incremental path as the processor runs it -- segments created while the contact already
has history, live events buffered until the backfill refresh arrives (carrying overlapping
facts, as ClickHouse may), timers firing at ``wake_at``, attribute changes, a segment that
references another -- must give, at every step, the membership a full recompute of every rule
over the contact's complete event log gives at that instant.
"""

from __future__ import annotations

from datetime import datetime, timedelta
from typing import Any

from hypothesis import given, settings
from hypothesis import strategies as st

from spotzee.domain.segments import EventFact, MembershipContext, evaluate
from spotzee.domain.segments import membership as m
from spotzee.domain.segments.trackers import CountSlot, LatestSlot, SpanSlot, TotalSlot, ValuesSlot
from spotzee.schemas.contact_models import FieldChange
from spotzee.schemas.rules import SegmentRuleAdapter
from spotzee.schemas.segment_models import HistoryFact, SegmentDefinition, SegmentStatus
from spotzee.schemas.structs import decode, encode, replace
from tests.unit.test_segment_engine import T0, apply_traits, attribute_step, contact, event_step, rules

advance = st.tuples(
    st.just("advance"),
    st.one_of(
        st.integers(0, 72).map(lambda h: h * timedelta(hours=1)),
        st.integers(0, 3600).map(lambda s: timedelta(seconds=s)),
    ),
)
steps = st.one_of(event_step, event_step, advance, attribute_step, st.just(("refresh",)))


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


@settings(max_examples=200, deadline=None)
@given(
    first=rules,
    second=rules,
    history=st.lists(event_step, max_size=6),
    script=st.integers(4, 20).flatmap(lambda n: st.lists(steps, min_size=n, max_size=n)),
    overlap=st.booleans(),
    new_contact=st.booleans(),
)
def test_incremental_membership_equals_recompute_with_backfill_and_timers(
    first: dict[str, Any],
    second: dict[str, Any],
    history: list[tuple[Any, ...]],
    script: list[tuple[Any, ...]],
    overlap: bool,
    new_contact: bool,
) -> None:
    """``new_contact``: the contact's first message comes after the segments exist (no
    backfill; every tracker complete from the start); else it has history and is backfilled."""
    who = contact(id="u1", created_at=T0 - timedelta(days=3))
    now = T0
    log: list[HistoryFact] = []
    n = 0

    def record(step: tuple[Any, ...]) -> list[HistoryFact]:
        nonlocal n
        facts = []
        for properties in step[3] if isinstance(step[3], list) else [step[3]]:
            n += 1
            facts.append(HistoryFact(message_id=f"m{n}", name=step[1], timestamp=now + step[2], properties=properties))
        log.extend(facts)
        return facts

    for step in [] if new_contact else history:  # before any segment exists: only in ClickHouse
        record(step)
    created = len(log)
    # The second segment references the first: membership flows through the reference.
    b_body = {"type": "any", "rules": [second, {"type": "segment", "segment_id": "A"}]}
    project = m.ProjectSegments([definition("A", first), definition("B", b_body)])
    cs = m.fresh(project, new_contact=new_contact)  # an existing contact's trackers wait for backfill
    seeded = new_contact
    started = not new_contact  # a new contact is evaluated from its first message on
    members: set[str] = set()

    numbered = [0]

    def apply(outcome: m.Outcome) -> m.ContactSegments:
        for t in outcome.transitions:
            assert (t.segment_id in members) != t.entered, "a transition must change membership"
            (members.add if t.entered else members.discard)(t.segment_id)
            numbered[0] += 1
            assert t.seq == numbered[0], "transitions are numbered 1, 2, ... per contact"
        assert outcome.state.changes == numbered[0]
        assert set(outcome.state.members) == members
        return decode(m.ContactSegments, encode(outcome.state))  # what the table keeps

    def check() -> None:
        if not started:
            return
        if not seeded and project.bundle.trackers:
            return  # not evaluable before its backfill (unless the rules need no history)
        facts = [EventFact(name=f.name, timestamp=f.timestamp, properties=f.properties) for f in log]
        a = evaluate(project.segments["A"].compiled.rule, who, facts, now)
        b = evaluate(
            project.segments["B"].compiled.rule, who, facts, now, MembershipContext(segments={"A"} if a else set())
        )
        assert members == {sid for sid, inside in (("A", a), ("B", b)) if inside}

    def run_wakes(until: datetime) -> None:
        nonlocal now, cs
        while cs.wake_at is not None and cs.wake_at <= until:
            now = max(now, cs.wake_at)
            cs = apply(m.on_wake(project, cs, who, now))
            check()
        now = until

    for step in [*script, ("refresh",)]:
        started = started or step[0] in ("event", "attributes")
        if step[0] == "event":
            for fact in record(step):
                cs = apply(m.on_event(project, cs, who, fact, [], now))
        elif step[0] == "advance":
            run_wakes(now + step[1])
        elif step[0] == "attributes":
            who = apply_traits(who, step[1], step[2], now)
            changes = [FieldChange(path=f"traits.{k}") for k in step[1]]
            cs = apply(m.on_event(project, cs, who, None, changes, now))
        elif not seeded:
            # ClickHouse holds the history, and maybe some events the live path buffered too.
            facts = list(log) if overlap else log[:created]
            for segment_id in ("A", "B"):
                keys = sorted(project.segments[segment_id].tracker_keys)
                half = len(facts) // 2
                cs = apply(
                    m.on_refresh(
                        project,
                        cs,
                        who,
                        segment_id=segment_id,
                        version=1,
                        tracker_keys=keys,
                        facts=facts[:half],
                        last=False,
                        now=now,
                    )
                )
                cs = apply(
                    m.on_refresh(
                        project,
                        cs,
                        who,
                        segment_id=segment_id,
                        version=1,
                        tracker_keys=keys,
                        facts=facts[half:],
                        last=True,
                        now=now,
                    )
                )
            seeded = True
            assert cs.pending == []
        check()


def test_a_new_contact_is_evaluated_live_and_leaves_on_erase() -> None:
    project = m.ProjectSegments([definition("A", {"type": "event", "name": "buy", "count": {"op": "gte", "value": 2}})])
    cs = m.fresh(project, new_contact=True)
    who = contact(id="u1", created_at=T0)
    fact = HistoryFact(message_id="1", name="buy", timestamp=T0)
    out = m.on_event(project, cs, who, fact, [], T0)
    assert out.transitions == []
    assert out.state.pending == []
    out = m.on_event(project, out.state, who, replace(fact, message_id="2"), [], T0)
    assert [(t.segment_id, t.entered) for t in out.transitions] == [("A", True)]
    left = m.on_leave(out.state)
    assert [(t.segment_id, t.entered) for t in left.transitions] == [("A", False)]


def test_a_deleted_segment_ends_its_memberships_and_its_state() -> None:
    a = definition("A", {"type": "everyone"})
    project = m.ProjectSegments([a])
    who = contact(id="u1", created_at=T0)
    out = m.evaluate_all(project, m.fresh(project, new_contact=True), who, T0)
    assert set(out.state.members) == {"A"}
    gone = m.ProjectSegments([a.model_copy(update={"status": SegmentStatus.deleted, "version": 2})])
    out = m.on_refresh(gone, out.state, who, segment_id="A", version=2, tracker_keys=[], facts=[], last=True, now=T0)
    assert [(t.segment_id, t.version, t.entered) for t in out.transitions] == [("A", 1, False)]
    assert out.state.members == {}


def test_an_edit_keeps_members_that_still_match_without_a_transition() -> None:
    v1 = definition("A", {"type": "attribute", "path": "plan", "op": "eq", "value": "pro"})
    who = contact(id="u1", created_at=T0, traits={"plan": "pro"})
    project = m.ProjectSegments([v1])
    out = m.evaluate_all(project, m.fresh(project, new_contact=True), who, T0)
    v2 = definition("A", {"type": "attribute", "path": "plan", "op": "in", "value": ["pro", "team"]}, version=2)
    edited = m.ProjectSegments([v2])
    out = m.on_refresh(edited, out.state, who, segment_id="A", version=2, tracker_keys=[], facts=[], last=True, now=T0)
    assert out.transitions == []
    assert out.state.members["A"].version == 2
    assert out.state.members["A"].since == T0


# What the pydantic models wrote for a contact's segment state (every slot kind, a buffered fact, a
# backfill in progress, memberships, lists, wake-ups): the Structs read it and write the same bytes.
PYDANTIC_ERA_STATE = (
    b'{"state":{"slots":{"count:aaa":{"kind":"count","n":3},"latest:bbb":{"kind":"latest","at":'
    b'["2026-03-01T00:00:00Z","2026-03-01T00:00:01.000005Z"]},"total:ccc":{"kind":"total","n":2,'
    b'"total":"3/10","low":0.1,"high":0.2},"sum:ddd":{"kind":"values","entries":[["2026-03-01T00:00:00Z",1.5],'
    b'["2026-03-01T00:01:00Z",-2.0]]},"span:eee":{"kind":"span","first":"2026-03-01T00:00:00Z","last":null},'
    b'"total:fff":{"kind":"total","n":0,"total":"0","low":null,"high":null}}},"complete":["count:aaa",'
    b'"latest:bbb","span:eee","sum:ddd","total:ccc","total:fff"],"pending":[{"message_id":"m1","name":'
    b'"purchase","timestamp":"2026-03-01T00:00:00.123000Z","properties":{"amount":12.5,"items":[1,"a",null],'
    b'"nested":{"ok":true}}}],"seeding":{"seg_b":{"version":2,"facts":[{"message_id":"m2","name":"login",'
    b'"timestamp":"2026-03-01T01:00:00Z","properties":{}}]}},"members":{"seg_a":{"since":'
    b'"2026-03-01T00:00:00Z","version":1},"seg_c":{"since":"2026-03-02T00:00:00.999999Z","version":3}},'
    b'"lists":["lst_1"],"wakes":{"seg_a":"2026-03-31T00:00:00Z"},"changes":7,"evaluated":true}'
)


def test_a_pydantic_era_state_reads_and_writes_back_the_same_json() -> None:

    cs = decode(m.ContactSegments, PYDANTIC_ERA_STATE)
    assert encode(cs) == PYDANTIC_ERA_STATE
    slots = cs.state.slots
    assert [type(slot) for slot in slots.values()] == [
        CountSlot,
        LatestSlot,
        TotalSlot,
        ValuesSlot,
        SpanSlot,
        TotalSlot,
    ]
    assert slots["sum:ddd"] == ValuesSlot(entries=[(T0, 1.5), (T0 + timedelta(minutes=1), -2.0)])
    assert cs.members["seg_c"] == m.Membership(since=T0 + timedelta(days=1, microseconds=999999), version=3)
    assert cs.pending[0].timestamp == T0 + timedelta(microseconds=123000)
    assert cs.wake_at == T0 + timedelta(days=30)
    assert cs.wake_at.tzinfo is not None
    assert cs.seeding["seg_b"].facts[0].name == "login"
