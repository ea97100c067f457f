"""Backfill through ClickHouse (``analytics/segment_seeds.py``): exact, property-wise, on real chDB.

For generated histories (duplicate rows of one messageId included, as a ReplacingMergeTree keeps
them until it merges) and generated rules (rolling windows, absolute ranges, every aggregate,
first/last occurrence, property filters of every operator on every JSON type), a contact's segment
state seeded from the SQL aggregates must equal the one today's facts path builds from the same
ClickHouse rows -- slot by slot, membership and wake-up -- and the membership a full recompute
gives, at the query's instant and later (the processor may apply a seed after the query).
Contacts the query does not name start from the empty trackers (``on_sweep``).
"""

from __future__ import annotations

import itertools
from collections.abc import Iterator
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any

import msgspec
import orjson
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from spotzee.analytics.clickhouse import ClickHouse
from spotzee.analytics.migrations import migrate
from spotzee.analytics.segment_seeds import SeedQuery, Unseedable, _number_of, _Params, filter_sql
from spotzee.domain.segments import EventFact, evaluate
from spotzee.domain.segments import membership as m
from spotzee.domain.segments.operators import filters_pass, number, read_path
from spotzee.domain.segments.seeding import holds_without_history
from spotzee.domain.segments.trackers import CountSlot, LatestSlot, SlotModel
from spotzee.schemas.contact_models import ContactState
from spotzee.schemas.rules import PropertyFilter, SegmentRuleAdapter
from spotzee.schemas.segment_models import HistoryFact
from spotzee.schemas.structs import encode, replace
from spotzee.services.segment_service import history_facts
from tests.unit.test_segment_engine import DAY, HOUR, T0, UNITS, attribute_rule, contact, datetimes_iso, grid
from tests.unit.test_segment_membership import definition

NAMES = ("buy", "buy", "view", "refund")
OTHER = {"buy": "view", "view": "refund", "refund": "buy"}
CONTACTS = ("c1", "c2", "c3")
COLUMNS = (
    "project_id", "message_id", "event_type", "event", "contact_id", "user_id", "anonymous_id", "timestamp",
    "received_at", "properties", "traits", "context", "raw",
)  # fmt: skip
SLOTS = msgspec.json.Decoder(dict[str, SlotModel])
projects = itertools.count()

# -- generated data ------------------------------------------------------------------------------

scalars = st.one_of(
    st.integers(0, 4),
    st.sampled_from([2**53, 2**53 + 1, -(2**63), 2**64 - 1, 0.5, -0.0, 30.3, 1e300, 45.5]),
    st.sampled_from(["a1", "b2", "é", "", "A", "a1x", "ß"]),
    st.booleans(),
)
texts = st.sampled_from(["a1", "b2", "é", "", "A", "a", "x"])
numbers = st.one_of(st.integers(0, 4), st.sampled_from([2**53, 2**53 + 1, 0.5, -0.0, 2.0, 30.3, 45.5]))
properties = st.fixed_dictionaries(
    {"amount": st.one_of(numbers, numbers, numbers, st.sampled_from(["n/a", True, None, 2**64 - 1, 1e300]))},
    optional={
        "sku": st.one_of(scalars, st.none(), st.lists(scalars, max_size=3)),
        "meta": st.one_of(st.fixed_dictionaries({"channel": st.sampled_from(["web", "app", 3])}), st.just("web")),
        "at": datetimes_iso,
    },
)
paths = st.sampled_from(["amount", "sku", "sku", "meta.channel", "at", "missing"])


@st.composite
def filters(draw: st.DrawFn) -> dict[str, Any]:
    path = draw(paths)
    op = draw(
        st.sampled_from(
            ["eq", "neq", "gt", "gte", "lt", "lte", "between", "contains", "not_contains", "starts_with",
             "ends_with", "in", "not_in", "exists", "not_exists", "before", "after"]
        )
    )  # fmt: skip
    body: dict[str, Any] = {"path": path, "op": op}
    if op in ("eq", "neq"):
        body["value"] = draw(st.one_of(scalars, scalars, st.lists(scalars, min_size=1, max_size=2)))
    elif op in ("gt", "gte", "lt", "lte"):
        body["value"] = draw(st.one_of(numbers, texts))
    elif op == "between":
        low, high = sorted(
            draw(st.one_of(st.lists(numbers, min_size=2, max_size=2), st.lists(texts, min_size=2, max_size=2)))
        )
        body["value"] = [low, high]
    elif op in ("contains", "not_contains"):
        body["value"] = draw(scalars)
    elif op in ("starts_with", "ends_with"):
        body["value"] = draw(texts)
    elif op in ("in", "not_in"):
        body["value"] = draw(st.lists(scalars, min_size=1, max_size=3))
    elif op in ("before", "after"):
        body["value"] = draw(datetimes_iso)
    return body


@st.composite
def event_rules(draw: st.DrawFn) -> dict[str, Any]:
    body: dict[str, Any] = {"type": "event", "name": draw(st.sampled_from(NAMES))}
    if draw(st.integers(0, 2)) == 0:
        body["where"] = draw(st.lists(filters(), min_size=1, max_size=2))
    window = draw(st.sampled_from(["none", "within", "within", "between"]))
    if window == "within":
        body["within"] = {"last": draw(st.integers(1, 6)), "unit": draw(UNITS)}
    elif window == "between":
        a, b = sorted([draw(grid), draw(grid)])
        body["between"] = [a.isoformat(), b.isoformat()]
    if draw(st.booleans()):
        body["count"] = {
            "op": draw(st.sampled_from(["eq", "neq", "gt", "gte", "lt", "lte"])),
            "value": draw(st.integers(0, 3)),
        }
    if draw(st.booleans()):
        body["aggregate"] = {
            "fn": draw(st.sampled_from(["sum", "min", "max", "avg"])),
            "property": draw(st.sampled_from(["amount", "amount", "meta.channel"])),
            "op": draw(st.sampled_from(["eq", "neq", "gt", "gte", "lt", "lte"])),
            "value": draw(st.one_of(st.integers(0, 8), st.sampled_from([0.5, 2.0, 30.3, 45.5]))),
        }
    if window != "within":
        for which in ("first_occurred", "last_occurred"):
            if draw(st.integers(0, 3)) == 0:
                relative = {
                    "op": draw(st.sampled_from(["within_last", "more_than"])),
                    "value": draw(st.integers(1, 5)),
                    "unit": draw(UNITS),
                }
                body[which] = draw(
                    st.one_of(
                        st.just(relative),
                        st.builds(
                            lambda op, v: {"op": op, "value": v}, st.sampled_from(["before", "after"]), datetimes_iso
                        ),
                    )
                )
    return body


rules = st.one_of(
    event_rules(),
    st.builds(
        lambda kind, items: {"type": kind, "rules": items},
        st.sampled_from(["all", "any", "none"]),
        st.lists(
            st.one_of(event_rules(), event_rules(), attribute_rule(), st.just({"type": "everyone"})),
            min_size=1,
            max_size=3,
        ),
    ),
)
offsets = st.one_of(
    st.sampled_from([timedelta(0), -HOUR, -DAY, HOUR]),
    st.integers(-10 * 24, 6).map(lambda h: h * HOUR),
    st.integers(-600, 60).map(lambda minutes: minutes * timedelta(minutes=1)),
)
# (contact, name, offset from T0, properties, how the row is stored: once, twice as one, or again later)
rows = st.lists(
    st.tuples(
        st.sampled_from(CONTACTS),
        st.sampled_from(NAMES),
        offsets,
        properties,
        st.sampled_from(["once", "copy", "later"]),
    ),
    min_size=2,
    max_size=24,
)


@pytest.fixture(scope="module")
def clickhouse(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ClickHouse]:
    ch = ClickHouse(f"chdb://{Path(tmp_path_factory.mktemp('seeds')) / 'ch'}")
    migrate(ch)
    yield ch
    ch.close()


def insert(ch: ClickHouse, project_id: str, history: list[tuple[Any, ...]]) -> None:
    data: list[list[Any]] = []
    for n, (contact_id, name, offset, props, stored) in enumerate(history):
        copies = [(name, T0 + offset)]
        if stored == "copy":
            copies.append((name, T0 + offset))  # the same row twice (an insert repeated)
        elif stored == "later":  # the messageId again, later, as another event: the later row wins
            copies.append((OTHER[name], T0 + offset + HOUR))
        for i, (event, at) in enumerate(copies):
            text = orjson.dumps(props if i == 0 else {"amount": 3}).decode()
            data.append(
                [project_id, f"m{n}", "track", event, contact_id, contact_id, "", at, at, text, "{}", "{}", "{}"]
            )
    if data:
        ch.insert("events", data, COLUMNS)


def who(contact_id: str) -> ContactState:
    return contact(id=contact_id, created_at=T0 - 3 * DAY, traits={"plan": "pro", "score": 1, "tags": ["vip"]})


def facts_path(
    project: m.ProjectSegments, history: dict[str, list[HistoryFact]], now: datetime
) -> dict[str, m.ContactSegments]:
    keys = sorted(project.tracker_keys)
    return {
        c: m.on_refresh(
            project,
            m.fresh(project, new_contact=False),
            who(c),
            segment_id="S",
            version=1,
            tracker_keys=keys,
            facts=history.get(c, []),
            last=True,
            now=now,
        ).state
        for c in CONTACTS
    }


def seeded_path(
    project: m.ProjectSegments, ch: ClickHouse, project_id: str, queried: datetime, now: datetime
) -> dict[str, m.ContactSegments]:
    keys = sorted(project.tracker_keys)
    found = SeedQuery(project.bundle.trackers).run(ch, project_id, queried)
    states: dict[str, m.ContactSegments] = {}
    for c in CONTACTS:
        cs = m.fresh(project, new_contact=False)
        seeds = found.contacts.get(c)
        if seeds is None:  # no matching history: the sweep
            states[c] = m.on_sweep(project, cs, who(c), segment_id="S", seeded=frozenset(keys), now=now).state
            continue
        slots = SLOTS.decode(encode(seeds.slots))  # as a record carries them
        states[c] = m.on_refresh(
            project,
            cs,
            who(c),
            segment_id="S",
            version=1,
            tracker_keys=keys,
            facts=seeds.facts,
            last=True,
            seeds=slots,
            replayed=found.replayed,
            seeded_at=found.seeded_at,
            now=now,
        ).state
    return states


@settings(
    max_examples=250, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow]
)
@given(
    body=rules,
    history=rows,
    delay=st.sampled_from([timedelta(0), timedelta(minutes=30), 5 * HOUR, DAY]),
    later=st.integers(0, 72),
)
def test_sql_seeds_equal_the_facts_path_and_a_full_recompute(
    clickhouse: ClickHouse, body: dict[str, Any], history: list[tuple[Any, ...]], delay: timedelta, later: int
) -> None:
    try:
        project = m.ProjectSegments([definition("S", body)])
    except ValueError:
        return  # a combination the rule validation refuses (e.g. a filter value its op can't take)
    project_id = f"p{next(projects)}"
    insert(clickhouse, project_id, history)
    now = T0 + delay  # the seeds are applied a while after the query, as a processor may
    names = sorted({t.event for t in project.bundle.trackers.values()})
    facts = history_facts(clickhouse, project_id, names, list(CONTACTS)) if names else {}
    expected = facts_path(project, facts, now)
    got = seeded_path(project, clickhouse, project_id, T0, now)
    rule = project.segments["S"].compiled.rule
    for c in CONTACTS:
        for key, tracker in project.bundle.trackers.items():
            assert tracker.slot(got[c].state) == tracker.slot(expected[c].state), (c, key)
        assert got[c].members.keys() == expected[c].members.keys()
        assert got[c].wakes == expected[c].wakes
        log = [EventFact(name=f.name, timestamp=f.timestamp, properties=f.properties) for f in facts.get(c, [])]
        assert ("S" in got[c].members) == evaluate(rule, who(c), log, now)
        # later, with the clock alone: windows expire the same way on both sides
        at = now + later * HOUR
        a, b = m.on_wake(project, got[c], who(c), at).state, m.on_wake(project, expected[c], who(c), at).state
        assert a.members.keys() == b.members.keys() == ({"S"} if evaluate(rule, who(c), log, at) else set())


def test_a_seed_is_refused_while_a_live_fact_it_may_count_is_buffered() -> None:
    """An aggregate can't be deduplicated by messageId: with a buffered live fact its tracker
    accepts, the seed waits for a refresh with facts; with one it doesn't accept, it is taken."""
    project = m.ProjectSegments([definition("S", {"type": "event", "name": "buy", "count": {"op": "gte", "value": 2}})])
    (key,) = project.tracker_keys
    live = HistoryFact(message_id="m9", name="buy", timestamp=T0)
    cs = m.on_event(project, m.fresh(project, new_contact=False), who("c1"), live, [], T0).state
    assert cs.pending == [live]  # buffered: the tracker waits for its backfill
    seeds: dict[str, SlotModel] = {key: CountSlot(n=1)}
    out = m.on_refresh(
        project,
        cs,
        who("c1"),
        segment_id="S",
        version=1,
        tracker_keys=[key],
        facts=[],
        last=True,
        seeds=seeds,
        replayed=[],
        seeded_at=T0 - HOUR,
        now=T0,
    )
    assert key not in out.state.complete
    assert "S" in out.state.seeding
    assert out.transitions == []
    # the fallback: the history as facts, the buffered fact among them (ClickHouse had it): counted once
    facts = [HistoryFact(message_id="m1", name="buy", timestamp=T0 - DAY), live]
    out = m.on_refresh(
        project, out.state, who("c1"), segment_id="S", version=1, tracker_keys=[key], facts=facts, last=True, now=T0
    )
    assert out.state.state.slots[key] == CountSlot(n=2)
    assert "S" in out.state.members
    assert not out.state.seeding
    # a seed cut for a later clock than the processor's is refused too
    fresh = m.fresh(project, new_contact=False)
    out = m.on_refresh(
        project,
        fresh,
        who("c1"),
        segment_id="S",
        version=1,
        tracker_keys=[key],
        facts=[],
        last=True,
        seeds=seeds,
        replayed=[],
        seeded_at=T0 + HOUR,
        now=T0,
    )
    assert "S" in out.state.seeding


def test_an_empty_seed_takes_the_buffered_facts_and_a_seed_without_them_is_taken() -> None:
    body = {"type": "event", "name": "buy", "within": {"last": 2, "unit": "day"}, "count": {"op": "gte", "value": 2}}
    project = m.ProjectSegments([definition("S", body)])
    (key,) = project.tracker_keys
    view = HistoryFact(message_id="v1", name="view", timestamp=T0)
    buy = HistoryFact(message_id="b1", name="buy", timestamp=T0)
    cs = m.fresh(project, new_contact=False)
    for fact in (view, buy):
        cs = m.on_event(project, cs, who("c1"), fact, [], T0).state
    assert cs.pending == [buy]  # (a view counts for no tracker: not kept)
    # no seed for the tracker (nothing in ClickHouse): the buffered purchase alone
    out = m.on_refresh(
        project,
        cs,
        who("c1"),
        segment_id="S",
        version=1,
        tracker_keys=[key],
        facts=[],
        last=True,
        seeds={},
        replayed=[],
        seeded_at=T0 - HOUR,
        now=T0,
    )
    assert out.state.state.slots[key] == LatestSlot(at=[T0])
    assert out.state.pending == []
    assert not out.state.members
    # a seed and no buffered purchase: taken, pruned at the processor's clock
    seed = LatestSlot(at=[T0 - 3 * DAY, T0 - DAY])
    fresh = m.fresh(project, new_contact=False)
    out = m.on_refresh(
        project,
        fresh,
        who("c1"),
        segment_id="S",
        version=1,
        tracker_keys=[key],
        facts=[],
        last=True,
        seeds={key: seed},
        replayed=[],
        seeded_at=T0 - HOUR,
        now=T0,
    )
    assert out.state.state.slots[key] == LatestSlot(at=[T0 - DAY])
    assert key in out.state.complete


@pytest.mark.parametrize(
    ("body", "expected"),
    [
        ({"type": "event", "name": "buy"}, False),
        ({"type": "event", "name": "buy", "count": {"op": "eq", "value": 0}}, True),
        ({"type": "none", "rules": [{"type": "event", "name": "refund"}]}, True),
        ({"type": "attribute", "path": "country", "op": "eq", "value": "FR"}, None),
        (
            {
                "type": "all",
                "rules": [
                    {"type": "attribute", "path": "country", "op": "eq", "value": "FR"},
                    {"type": "event", "name": "buy"},
                ],
            },
            False,
        ),
        ({"type": "any", "rules": [{"type": "everyone"}, {"type": "event", "name": "buy"}]}, True),
        (
            {"type": "event", "name": "buy", "aggregate": {"fn": "sum", "property": "amount", "op": "lt", "value": 5}},
            True,
        ),
        (
            {"type": "event", "name": "buy", "aggregate": {"fn": "avg", "property": "amount", "op": "lt", "value": 5}},
            False,
        ),
    ],
)
def test_what_a_rule_makes_of_a_contact_without_history(body: dict[str, Any], expected: bool | None) -> None:
    """A segment False without history needs its sweep to look only at members and waiting contacts."""
    assert holds_without_history(SegmentRuleAdapter.validate_python(body)) is expected


# -- the property filters, exhaustively ------------------------------------------------------------

MISSING = object()
ACTUALS: list[Any] = [
    MISSING,
    None,
    0,
    1,
    2,
    -1,
    2**53,
    2**53 + 1,
    2**63 - 1,
    -(2**63),
    2**64 - 1,
    0.5,
    -0.0,
    1.0,
    2.0,
    1e300,
    "",
    "a",
    "A",
    "a1",
    "ab",
    "é",
    "ß",
    "b",
    True,
    False,
    [],
    ["a", 1, True],
    [1, 2.0],
    ["é"],
    [[1]],
    {},
    {"a": 1},
]
SCALARS: list[Any] = [0, 1, 2, 2**53, 2**53 + 1, -(2**63), 2**64 - 1, 0.5, -0.0, 2.0, "", "a", "é", "b", True, False]
FILTERS: list[tuple[str, Any]] = [
    *[(op, v) for op in ("eq", "neq") for v in SCALARS],
    *[(op, v) for op in ("gt", "gte", "lt", "lte") for v in [0, 1, 2, 2**53, 0.5, -0.0, 1e300, "", "a", "b", "é"]],
    *[("between", v) for v in ([0, 2], [0.5, 2**53], [-1, 0], ["a", "b"], ["", "a"], ["a", "é"])],
    *[(op, v) for op in ("contains", "not_contains") for v in ["a", "", 1, True, 2.0, "é"]],
    *[(op, v) for op in ("starts_with", "ends_with") for v in ["a", "", "é", "b"]],
    *[(op, v) for op in ("in", "not_in") for v in (["a", 1], [True], [2.0, "é"], [0], [2**53 + 1])],
    ("exists", None),
    ("not_exists", None),
]


def documents(path: str) -> list[tuple[dict[str, Any], str]]:
    """Properties holding each actual value at ``path`` (and, nested, a parent that is no object)."""
    docs: list[dict[str, Any]] = []
    for actual in ACTUALS:
        value: dict[str, Any] = {} if actual is MISSING else {"x": actual}
        docs.append(value if path == "x" else {"n": value})
    if path != "x":
        docs += [{"n": 5}, {"n": ["x"]}, {"n": None}]
    return [(doc, orjson.dumps(doc).decode()) for doc in docs]


@pytest.mark.parametrize("path", ["x", "n.x"])
def test_every_filter_compiles_to_what_its_operator_means(clickhouse: ClickHouse, path: str) -> None:
    """Each operator with values of every JSON type, against properties of every JSON type: the
    SQL gives what ``operators.holds`` gives (or the filter is left to the facts path)."""
    docs = documents(path)
    checked = 0
    for op, value in FILTERS:
        rule = PropertyFilter.model_validate({"path": path, "op": op, "value": value})
        params = _Params()
        expression = filter_sql(params, rule)
        params.values["docs"] = [text for _, text in docs]
        _, rows = clickhouse.query(
            f"SELECT arrayMap(props -> toUInt8({expression}), {{docs:Array(String)}})", parameters=params.values
        )
        expected = [int(filters_pass([rule], doc)) for doc, _ in docs]
        wrong = [doc for (doc, _), a, b in zip(docs, rows[0][0], expected, strict=True) if a != b]
        assert rows[0][0] == expected, (op, value, wrong)
        checked += 1
    assert checked == len(FILTERS)


@pytest.mark.parametrize("path", ["x", "n.x"])
def test_aggregated_values_are_the_numbers_the_trackers_read(clickhouse: ClickHouse, path: str) -> None:
    docs = documents(path)
    params = _Params()
    params.values["docs"] = [text for _, text in docs]
    _, rows = clickhouse.query(
        f"SELECT arrayMap(props -> {_number_of(params, path)}, {{docs:Array(String)}})", parameters=params.values
    )
    assert rows[0][0] == [number(read_path(doc, path)) for doc, _ in docs]


def test_a_list_compared_for_equality_and_iso_dates_are_left_to_the_facts_path() -> None:
    for op, value in [("eq", ["a", 1]), ("neq", [1]), ("before", "2026-03-01T00:00:00Z"), ("after", "2026-03-01")]:
        with pytest.raises(Unseedable):
            filter_sql(_Params(), PropertyFilter.model_validate({"path": "x", "op": op, "value": value}))


def test_a_merge_evaluates_every_segment_of_the_merged_contact() -> None:
    """``on_merge`` (and ``evaluate_all``) evaluate every segment, also for a contact evaluated before:
    the merged slots may put it in a segment no single event named."""
    project = m.ProjectSegments([definition("S", {"type": "event", "name": "buy", "count": {"op": "gte", "value": 2}})])
    target, source = m.fresh(project, new_contact=True), m.fresh(project, new_contact=True)
    target = m.on_event(project, target, who("c1"), HistoryFact(message_id="1", name="buy", timestamp=T0), [], T0).state
    source = m.on_event(project, source, who("c2"), HistoryFact(message_id="2", name="buy", timestamp=T0), [], T0).state
    assert target.evaluated
    assert not target.members
    assert not source.members
    out = m.on_merge(project, target, source, who("c1"), [], T0)
    assert [(t.segment_id, t.entered) for t in out.transitions] == [("S", True)]
    again = m.evaluate_all(project, replace(out.state, members={}), who("c1"), T0)
    assert [(t.segment_id, t.entered) for t in again.transitions] == [("S", True)]
