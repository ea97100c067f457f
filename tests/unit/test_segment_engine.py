"""The segment engine: scenarios over time, and the incremental state against a full recompute."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from spotzee.domain.segments import (
    EventFact,
    MembershipContext,
    SegmentState,
    bundle,
    compile_rule,
    depends_on,
    evaluate,
    matches,
    matches_and_wake,
    next_change,
    observe,
    prune,
    random_bucket,
    retain,
)
from spotzee.domain.segments.trackers import LatestSlot, ValuesSlot
from spotzee.schemas.contact_models import ContactState
from spotzee.schemas.rules import RuleNode, SegmentRuleAdapter
from spotzee.schemas.structs import decode, encode, replace, to_builtins

T0 = datetime(2026, 3, 1, tzinfo=UTC)
HOUR = timedelta(hours=1)
DAY = timedelta(days=1)
UNIT_LENGTH = {"second": timedelta(seconds=1), "minute": timedelta(minutes=1), "hour": HOUR, "day": DAY}


def rule_of(body: dict[str, Any]) -> RuleNode:
    return SegmentRuleAdapter.validate_python(body)


def contact(**fields: Any) -> ContactState:
    base: dict[str, Any] = {"project_id": "p", "id": "u1", "created_at": T0 - 100 * DAY, "updated_at": T0}
    return ContactState(**{**base, **fields})


class Run:
    """Drives one rule through events and clock moves, checking the engine against the oracle."""

    def __init__(self, body: dict[str, Any], who: ContactState | None = None, context: MembershipContext | None = None):
        self.rule = rule_of(body)
        self.compiled = compile_rule(self.rule)
        self.state = SegmentState()
        self.log: list[EventFact] = []
        self.now = T0
        self.contact = who or contact()
        self.context = context or MembershipContext()

    def event(self, name: str, at: datetime | None = None, **properties: Any) -> Run:
        fact = EventFact(name=name, timestamp=at or self.now, properties=properties)
        self.log.append(fact)
        self.state = observe(self.compiled, self.state, fact, self.now)
        return self

    def advance(self, by: timedelta) -> Run:
        self.now += by
        return self

    def member(self) -> bool:
        incremental = matches(self.compiled, self.state, self.contact, self.now, self.context)
        assert incremental == evaluate(self.rule, self.contact, self.log, self.now, self.context)
        return incremental

    def wake(self) -> datetime | None:
        return next_change(self.compiled, self.state, self.contact, self.now, self.context)


PURCHASE = {"type": "event", "name": "purchase"}
REPEAT_BUYERS_FR = {
    "type": "all",
    "rules": [
        {"type": "attribute", "path": "country", "op": "eq", "value": "FR"},
        {
            "type": "event",
            "name": "purchase",
            "where": [{"path": "amount", "op": "gte", "value": 50}],
            "count": {"op": "gte", "value": 2},
            "within": {"last": 30, "unit": "day"},
        },
        {"type": "none", "rules": [{"type": "event", "name": "refund", "within": {"last": 7, "unit": "day"}}]},
    ],
}

# Each scenario: a rule and steps; ("event", name, offset from now, properties), ("advance", timedelta),
# ("expect", membership) -- and at every "expect", next_change must be consistent with the oracle.
SCENARIOS: dict[str, tuple[dict[str, Any], list[tuple[Any, ...]]]] = {
    "no purchase in the last 30 days flips on day 30 without an event": (
        {"type": "none", "rules": [{**PURCHASE, "within": {"last": 30, "unit": "day"}}]},
        [
            ("expect", True),
            ("event", "purchase", timedelta(0), {}),
            ("expect", False),
            ("advance", 29 * DAY),
            ("expect", False),
            ("advance", DAY),  # exactly 30 days after: out of the window
            ("expect", True),
        ],
    ),
    "last purchase more than 30 days ago": (
        {**PURCHASE, "last_occurred": {"op": "more_than", "value": 30, "unit": "day"}},
        [
            ("expect", False),  # never purchased: no last purchase
            ("event", "purchase", -40 * DAY, {}),
            ("expect", True),
            ("event", "purchase", -5 * DAY, {}),
            ("expect", False),
            ("advance", 25 * DAY),
            ("expect", True),
        ],
    ),
    "repeat buyers in France": (
        REPEAT_BUYERS_FR,
        [
            ("event", "purchase", timedelta(0), {"amount": 60}),
            ("expect", False),
            ("event", "purchase", timedelta(0), {"amount": 40}),  # too small
            ("expect", False),
            ("advance", 10 * DAY),
            ("event", "purchase", timedelta(0), {"amount": 55}),
            ("expect", True),
            ("event", "refund", timedelta(0), {}),
            ("expect", False),
            ("advance", 7 * DAY),  # the refund leaves its 7-day window
            ("expect", True),
            ("advance", 13 * DAY),  # day 30: the first big purchase leaves its window
            ("expect", False),
        ],
    ),
    "out-of-order events: too old is ignored, inside the window counts": (
        {**PURCHASE, "count": {"op": "gte", "value": 2}, "within": {"last": 7, "unit": "day"}},
        [
            ("event", "purchase", timedelta(0), {}),
            ("event", "purchase", -8 * DAY, {}),  # arrives late, already outside the window
            ("expect", False),
            ("event", "purchase", -3 * DAY, {}),  # arrives late, inside
            ("expect", True),
            ("advance", 4 * DAY),  # the late one expires first
            ("expect", False),
        ],
    ),
    "has not performed: count eq 0 over all time": (
        {**PURCHASE, "count": {"op": "eq", "value": 0}},
        [("expect", True), ("event", "purchase", -400 * DAY, {}), ("expect", False), ("advance", 1000 * DAY)],
    ),
    "sum over a rolling window": (
        {
            **PURCHASE,
            "aggregate": {"fn": "sum", "property": "amount", "op": "gte", "value": 100},
            "within": {"last": 7, "unit": "day"},
        },
        [
            ("event", "purchase", timedelta(0), {"amount": 70.5}),
            ("event", "purchase", timedelta(0), {"amount": "n/a"}),
            ("expect", False),
            ("advance", 2 * DAY),
            ("event", "purchase", timedelta(0), {"amount": 29.5}),
            ("expect", True),
            ("advance", 5 * DAY),
            ("expect", False),
        ],
    ),
    "max over a rolling window, and avg over all time": (
        {
            "type": "all",
            "rules": [
                {
                    **PURCHASE,
                    "aggregate": {"fn": "max", "property": "amount", "op": "gt", "value": 10},
                    "within": {"last": 2, "unit": "hour"},
                },
                {**PURCHASE, "aggregate": {"fn": "avg", "property": "amount", "op": "lte", "value": 20}},
            ],
        },
        [
            ("event", "purchase", timedelta(0), {"amount": 30}),
            ("expect", False),  # avg 30
            ("event", "purchase", timedelta(0), {"amount": 0}),
            ("expect", True),  # avg 15, max 30
            ("advance", HOUR),
            ("event", "purchase", timedelta(0), {"amount": 11}),
            ("advance", HOUR),  # 30 leaves, 11 remains
            ("expect", True),
            ("advance", HOUR),
            ("expect", False),
        ],
    ),
    "first purchase within the last week (new customers)": (
        {**PURCHASE, "first_occurred": {"op": "within_last", "value": 1, "unit": "week"}},
        [
            ("event", "purchase", -2 * DAY, {}),
            ("expect", True),
            ("event", "purchase", timedelta(0), {}),
            ("advance", 5 * DAY),
            ("expect", False),
        ],
    ),
    "event between absolute dates and property filters": (
        {
            **PURCHASE,
            "where": [{"path": "item.sku", "op": "starts_with", "value": "promo-"}],
            "between": [(T0 - DAY).isoformat(), (T0 + DAY).isoformat()],
        },
        [
            ("event", "purchase", 2 * DAY, {"item": {"sku": "promo-1"}}),  # after the range
            ("event", "purchase", timedelta(0), {"item": {"sku": "full-1"}}),
            ("expect", False),
            ("event", "purchase", -DAY, {"item": {"sku": "promo-2"}}),  # on the boundary: inclusive
            ("expect", True),
            ("advance", 365 * DAY),
            ("expect", True),
        ],
    ),
}


@pytest.mark.parametrize("name", list(SCENARIOS))
def test_scenario(name: str) -> None:
    body, steps = SCENARIOS[name]
    run = Run(body, contact(traits={"country": "FR"}))
    for step in steps:
        if step[0] == "event":
            run.event(step[1], run.now + step[2], **step[3])
        elif step[0] == "advance":
            wake = run.wake()
            before = run.member()
            target = run.now + step[1]
            # Advancing by timers only: membership changes exactly at the instants next_change gives.
            while wake is not None and wake <= target:
                run.now = wake
                assert run.member() != before
                before = run.member()
                wake = run.wake()
            run.now = target
            assert run.member() == before
        else:
            assert run.member() is step[1], f"{name}: at {run.now - T0}"


def test_no_purchase_in_30_days_schedules_the_flip() -> None:
    run = Run({"type": "none", "rules": [{**PURCHASE, "within": {"last": 30, "unit": "day"}}]})
    run.event("purchase")
    assert not run.member()
    assert run.wake() == T0 + 30 * DAY
    assert depends_on(run.compiled).time
    run.now = T0 + 30 * DAY - timedelta(microseconds=1)
    assert not run.member()
    run.now = T0 + 30 * DAY
    assert run.member()
    assert run.wake() is None


def test_relative_attribute_dates_cross_thresholds() -> None:
    trial = {"type": "attribute", "path": "trial_ends", "op": "within_last", "value": 3, "unit": "day"}
    run = Run(trial, contact(traits={"trial_ends": (T0 + DAY).isoformat().replace("+00:00", "Z")}))
    assert not run.member()  # in the future: not "within the last 3 days" yet
    assert run.wake() == T0 + DAY
    run.now = T0 + DAY
    assert run.member()
    assert run.wake() == T0 + 4 * DAY
    old = Run({"type": "attribute", "path": "created_at", "op": "more_than", "value": 100, "unit": "day"})
    assert old.member()  # created exactly 100 days ago
    assert old.wake() is None


def test_time_boundaries_are_exact() -> None:
    """Every time condition has already flipped at its boundary instant (so timers can be exact)."""
    tick = timedelta(microseconds=1)
    cases: list[tuple[dict[str, Any], datetime, bool, bool]] = [
        # rule, boundary, value just before, value at the boundary
        ({**PURCHASE, "within": {"last": 2, "unit": "hour"}}, T0 + 2 * HOUR, True, False),
        ({**PURCHASE, "last_occurred": {"op": "within_last", "value": 2, "unit": "hour"}}, T0 + 2 * HOUR, True, False),
        ({**PURCHASE, "last_occurred": {"op": "more_than", "value": 2, "unit": "hour"}}, T0 + 2 * HOUR, False, True),
        ({**PURCHASE, "first_occurred": {"op": "before", "value": T0.isoformat()}}, T0 + DAY, False, False),
        ({**PURCHASE, "first_occurred": {"op": "after", "value": (T0 - tick).isoformat()}}, T0 + DAY, True, True),
    ]
    for body, boundary, before, at in cases:
        run = Run(body).event("purchase")
        for instant, expected in ((boundary - tick, before), (boundary, at)):
            run.now = instant
            assert run.member() is expected, (body, instant)
    trial = {"type": "attribute", "path": "trial_ends", "op": "within_last", "value": 3, "unit": "day"}
    run = Run(trial, contact(traits={"trial_ends": T0.isoformat()}))
    for instant, expected in ((T0 - tick, False), (T0, True), (T0 + 3 * DAY - tick, True), (T0 + 3 * DAY, False)):
        run.now = instant
        assert run.member() is expected, instant


def test_absolute_range_includes_both_ends() -> None:
    body = {**PURCHASE, "count": {"op": "eq", "value": 2}, "between": [T0.isoformat(), (T0 + DAY).isoformat()]}
    run = Run(body).event("purchase", T0 - timedelta(microseconds=1)).event("purchase", T0)
    assert not run.member()
    run.event("purchase", T0 + DAY + timedelta(microseconds=1)).event("purchase", T0 + DAY)
    assert run.member()


def test_rolling_min_and_max_with_equal_timestamps() -> None:
    for fn, amounts, op, value in (("min", [9, 3], "lt", 5), ("max", [3, 9], "gt", 5)):
        run = Run(
            {
                **PURCHASE,
                "aggregate": {"fn": fn, "property": "amount", "op": op, "value": value},
                "within": {"last": 1, "unit": "day"},
            }
        )
        for amount in amounts:
            run.event("purchase", amount=amount)
        assert run.member()
        (slot,) = run.state.slots.values()
        assert isinstance(slot, ValuesSlot)
        assert len(slot.entries) == 1


def test_absolute_attribute_dates_and_first_class_fields() -> None:
    who = contact(email="ada@example.com", last_seen=T0, traits={"signup": "2026-01-15"})
    cases = [
        ({"path": "signup", "op": "before", "value": "2026-02-01"}, True),
        ({"path": "signup", "op": "after", "value": "2026-02-01T00:00:00+01:00"}, False),
        ({"path": "last_seen", "op": "gte", "value": "2026-03-01T00:00:00Z"}, True),
        ({"path": "last_seen", "op": "eq", "value": "2026-03-01T01:00:00+01:00"}, True),
        ({"path": "email", "op": "ends_with", "value": "@example.com"}, True),
        ({"path": "phone", "op": "not_exists"}, True),
        ({"path": "user_id", "op": "exists"}, False),
    ]
    for body, expected in cases:
        assert Run({"type": "attribute", **body}, who).member() is expected, body


@pytest.mark.parametrize(
    ("op", "value", "actual", "expected"),
    [
        ("eq", "FR", "FR", True),
        ("eq", 1, 1.0, True),
        ("eq", True, 1, False),
        ("eq", ["a", "b"], ["a", "b"], True),
        ("neq", "FR", None, True),
        ("gt", 5, 6, True),
        ("gt", 5, "6", False),
        ("gte", "b", "b", True),
        ("lt", 5, 4.5, True),
        ("lte", 5, None, False),
        ("between", [1, 3], 3, True),
        ("between", [1, 3], 4, False),
        ("contains", "ell", "hello", True),
        ("contains", "vip", ["new", "vip"], True),
        ("not_contains", "vip", ["new"], True),
        ("starts_with", "he", "hello", True),
        ("ends_with", "lo", "hello", True),
        ("in", ["FR", "DE"], "DE", True),
        ("in", ["FR", "DE"], ["US", "FR"], True),
        ("not_in", ["FR", "DE"], "US", True),
        ("not_in", ["FR"], None, True),
        ("exists", None, 0, True),
        ("not_exists", None, None, True),
    ],
)
def test_attribute_operators(op: str, value: Any, actual: Any, expected: bool) -> None:
    traits = {} if actual is None else {"x": {"y": actual}}
    body: dict[str, Any] = {"type": "attribute", "path": "x.y", "op": op}
    if value is not None:
        body["value"] = value
    assert Run(body, contact(traits=traits)).member() is expected
    body["path"] = "traits.x.y"
    assert Run(body, contact(traits=traits)).member() is expected


def test_membership_nodes() -> None:
    who = contact(traits={"subscriptions": {"email": "subscribed", "sms": False}})
    context = MembershipContext(lists={"vip"}, segments=lambda segment_id: segment_id == "s1")
    cases: list[tuple[dict[str, Any], bool]] = [
        ({"type": "list", "list_id": "vip"}, True),
        ({"type": "list", "list_id": "other"}, False),
        ({"type": "segment", "segment_id": "s1"}, True),
        ({"type": "segment", "segment_id": "s2"}, False),
        ({"type": "subscription", "channel": "email", "state": "subscribed"}, True),
        ({"type": "subscription", "channel": "sms", "state": "unsubscribed"}, True),
        ({"type": "subscription", "channel": "push", "state": "unsubscribed"}, False),  # unknown
        ({"type": "random", "percent": 100, "seed": "x"}, True),
        ({"type": "random", "percent": 0, "seed": "x"}, False),
        ({"type": "everyone"}, True),
        ({"type": "any", "rules": [{"type": "list", "list_id": "other"}, {"type": "everyone"}]}, True),
        ({"type": "none", "rules": [{"type": "everyone"}]}, False),
    ]
    for body, expected in cases:
        assert Run(body, who, context).member() is expected, body


def test_random_bucket_is_deterministic_and_near_the_percentage() -> None:
    assert random_bucket("seed", "u1") == random_bucket("seed", "u1")
    rule = {"type": "random", "percent": 10, "seed": "spring"}
    inside = sum(Run(rule, contact(id=f"c{i}")).member() for i in range(5000))
    assert 400 < inside < 600
    seeded = sum(random_bucket("spring", f"c{i}") < 1000 for i in range(5000))
    assert seeded == inside


def test_rolling_count_keeps_only_what_the_threshold_needs() -> None:
    run = Run({**PURCHASE, "count": {"op": "gte", "value": 2}, "within": {"last": 1, "unit": "day"}})
    for i in range(1000):
        run.event("purchase", T0 - timedelta(minutes=i % 700))
    (slot,) = run.state.slots.values()
    assert isinstance(slot, LatestSlot)
    assert len(slot.at) == 2
    assert run.member()
    static = Run({**PURCHASE, "count": {"op": "gte", "value": 2}})
    for _ in range(100):
        static.event("purchase")
    assert to_builtins(static.state)["slots"].popitem()[1] == {"kind": "count", "n": 100}


def test_rolling_min_keeps_a_monotonic_queue() -> None:
    run = Run(
        {
            **PURCHASE,
            "aggregate": {"fn": "min", "property": "amount", "op": "lt", "value": 5},
            "within": {"last": 10, "unit": "hour"},
        }
    )
    for i, amount in enumerate([9, 3, 7, 8, 4, 6]):
        run.event("purchase", T0 + i * timedelta(minutes=1), amount=amount)
    (slot,) = run.state.slots.values()
    assert isinstance(slot, ValuesSlot)
    assert [v for _, v in slot.entries] == [3, 4, 6]
    assert run.member()


def test_state_is_json_and_survives_a_round_trip() -> None:
    run = Run(REPEAT_BUYERS_FR, contact(traits={"country": "FR"}))
    run.event("purchase", amount=80).event("purchase", T0 - DAY, amount=50.25)
    stored = encode(run.state)
    loaded = decode(SegmentState, stored)
    assert loaded == run.state
    assert matches(run.compiled, loaded, run.contact, run.now) is True


def test_observe_touches_only_trackers_of_the_event_name() -> None:
    run = Run(REPEAT_BUYERS_FR)
    run.event("purchase", amount=60)
    before = run.state
    run.event("page_view")
    assert run.state is before
    run.event("refund")
    purchase = {tracker.key for tracker in run.compiled.by_event["purchase"]}
    refund = {tracker.key for tracker in run.compiled.by_event["refund"]}
    assert all(run.state.slots[key] is before.slots[key] for key in purchase)
    assert set(run.state.slots) == purchase | refund


def test_dependencies() -> None:
    rule = {
        "type": "any",
        "rules": [
            REPEAT_BUYERS_FR,
            {"type": "attribute", "path": "address.city", "op": "eq", "value": "Paris"},
            {"type": "attribute", "path": "email", "op": "exists"},
            {"type": "list", "list_id": "L"},
            {"type": "segment", "segment_id": "S"},
            {"type": "subscription", "channel": "sms", "state": "subscribed"},
            {"type": "random", "percent": 5},
        ],
    }
    deps = depends_on(compile_rule(rule_of(rule)))
    assert deps.event_names == {"purchase", "refund"}
    assert deps.attribute_paths == {"traits.country", "traits.address.city", "email", "traits.subscriptions.sms"}
    assert (deps.list_ids, deps.segment_ids, deps.time) == (frozenset({"L"}), frozenset({"S"}), True)
    assert deps.affected_by_attribute("traits.address")  # the whole object replaced
    assert deps.affected_by_attribute("traits")
    assert deps.affected_by_attribute("address.city.district")
    assert deps.affected_by_attribute("country")
    assert not deps.affected_by_attribute("traits.plan")
    assert not deps.affected_by_attribute("phone")
    assert deps.affected_by_event("refund")
    assert not deps.affected_by_event("page_view")
    static = depends_on(compile_rule(rule_of({**PURCHASE, "count": {"op": "gte", "value": 3}})))
    assert not static.time


def test_one_shared_state_for_many_segments() -> None:
    """Identical conditions share a slot; a bundle observes each event once for all segments."""
    first = compile_rule(rule_of(REPEAT_BUYERS_FR))
    second = compile_rule(
        rule_of({"type": "all", "rules": [REPEAT_BUYERS_FR["rules"][1], {"type": "list", "list_id": "L"}]})
    )
    shared = bundle([first, second])
    assert len(shared.trackers) == len(first.trackers)
    state = SegmentState()
    who = contact(traits={"country": "FR"})
    for offset in (0, 1):
        state = observe(
            shared,
            state,
            EventFact(name="purchase", timestamp=T0 + offset * HOUR, properties={"amount": 99}),
            T0 + HOUR,
        )
    now = T0 + HOUR
    assert matches(first, state, who, now)
    assert matches(second, state, who, now, MembershipContext(lists={"L"}))
    assert retain(first, state).slots.keys() == state.slots.keys()
    assert retain(compile_rule(rule_of({"type": "everyone"})), state).slots == {}
    pruned = prune(shared, state, now + 31 * DAY)
    assert not matches(first, pruned, who, now + 31 * DAY)


# -- property: the incremental state equals a full recompute at every instant ------------------

NAMES = ("buy", "buy", "view", "refund")
UNITS = st.sampled_from(["hour", "day"])
grid = st.integers(-10 * 24, 24).map(lambda h: T0 + h * HOUR)
datetimes_iso = grid.map(lambda t: t.isoformat())


def filter_strategy() -> st.SearchStrategy[dict[str, Any]]:
    amount = st.one_of(
        st.builds(
            lambda op, v: {"path": "amount", "op": op, "value": v},
            st.sampled_from(["gte", "lt", "eq"]),
            st.integers(0, 60),
        ),
        st.builds(
            lambda a, b: {"path": "amount", "op": "between", "value": [min(a, b), max(a, b)]},
            st.integers(0, 60),
            st.integers(0, 60),
        ),
        st.just({"path": "amount", "op": "exists"}),
    )
    sku = st.one_of(
        st.builds(
            lambda v: {"path": "sku", "op": "in", "value": v},
            st.lists(st.sampled_from(["a1", "b2"]), min_size=1, max_size=2),
        ),
        st.just({"path": "meta.channel", "op": "neq", "value": "web"}),
        st.builds(lambda v: {"path": "at", "op": "before", "value": v}, datetimes_iso),
    )
    return st.one_of(amount, sku)


compare_ops = st.sampled_from(["eq", "neq", "gt", "gte", "lt", "lte"])
relative = st.builds(
    lambda op, v, u: {"op": op, "value": v, "unit": u},
    st.sampled_from(["within_last", "more_than"]),
    st.integers(1, 5),
    UNITS,
)
absolute = st.builds(lambda op, v: {"op": op, "value": v}, st.sampled_from(["before", "after"]), datetimes_iso)


@st.composite
def event_rule(draw: st.DrawFn, rolling: bool = False) -> dict[str, Any]:
    body: dict[str, Any] = {"type": "event", "name": draw(st.sampled_from(NAMES))}
    if draw(st.integers(0, 3)) == 0:
        body["where"] = draw(st.lists(filter_strategy(), max_size=2))
    window = "within" if rolling else draw(st.sampled_from(["none", "within", "within", "between"]))
    if window == "within":
        body["within"] = {"last": draw(st.integers(1, 6)), "unit": draw(UNITS)}
    elif window == "between":
        a, b = sorted([draw(grid), draw(grid)])
        body["between"] = [a.isoformat(), b.isoformat()]
    if draw(st.booleans()):
        body["count"] = {"op": draw(compare_ops), "value": draw(st.integers(0, 3))}
    if draw(st.booleans()):
        body["aggregate"] = {
            "fn": draw(st.sampled_from(["sum", "min", "max", "avg"])),
            "property": "amount",
            "op": draw(compare_ops),
            "value": draw(st.one_of(st.integers(-10, 80), st.sampled_from([0.1, 30.3, 45.5]))),
        }
    if window != "within":
        for which in ("first_occurred", "last_occurred"):
            if draw(st.integers(0, 3)) == 0:
                body[which] = draw(st.one_of(relative, absolute))
    return body


def attribute_rule() -> st.SearchStrategy[dict[str, Any]]:
    def attr(path: str, op: str, value: Any = None, unit: str | None = None) -> dict[str, Any]:
        body: dict[str, Any] = {"type": "attribute", "path": path, "op": op}
        if value is not None:
            body["value"] = value
        if unit is not None:
            body["unit"] = unit
        return body

    plan = st.sampled_from(["free", "pro", "team"])
    return st.one_of(
        st.builds(
            attr,
            st.sampled_from(["plan", "traits.plan"]),
            st.sampled_from(["eq", "neq", "gt", "starts_with", "contains"]),
            plan,
        ),
        st.builds(attr, st.just("plan"), st.sampled_from(["in", "not_in"]), st.lists(plan, min_size=1, max_size=2)),
        st.builds(attr, st.just("score"), compare_ops, st.integers(-3, 3)),
        st.builds(
            lambda a, b: attr("score", "between", [min(a, b), max(a, b)]), st.integers(-3, 3), st.integers(-3, 3)
        ),
        st.builds(attr, st.sampled_from(["tags", "address.city", "email"]), st.sampled_from(["exists", "not_exists"])),
        st.builds(
            attr, st.just("tags"), st.sampled_from(["contains", "not_contains"]), st.sampled_from(["vip", "new"])
        ),
        st.builds(
            attr,
            st.sampled_from(["signup", "last_seen", "created_at"]),
            st.sampled_from(["within_last", "more_than"]),
            st.integers(1, 5),
            UNITS,
        ),
        st.builds(attr, st.sampled_from(["signup", "last_seen"]), st.sampled_from(["before", "after"]), datetimes_iso),
        st.builds(attr, st.just("last_seen"), st.sampled_from(["gt", "lte"]), datetimes_iso),
    )


membership = st.one_of(
    st.builds(lambda i: {"type": "list", "list_id": i}, st.sampled_from(["L1", "L2"])),
    st.builds(lambda i: {"type": "segment", "segment_id": i}, st.sampled_from(["S1", "S2"])),
    st.builds(
        lambda c, s: {"type": "subscription", "channel": c, "state": s},
        st.sampled_from(["email", "sms"]),
        st.sampled_from(["subscribed", "unsubscribed"]),
    ),
    st.builds(lambda p: {"type": "random", "percent": p, "seed": "s"}, st.sampled_from([0, 12.5, 50, 100])),
    st.just({"type": "everyone"}),
)

kinds = st.sampled_from(["all", "any", "none"])
trees = st.recursive(
    st.one_of(event_rule(), attribute_rule(), membership),
    lambda children: st.builds(
        lambda kind, items: {"type": kind, "rules": items}, kinds, st.lists(children, min_size=1, max_size=3)
    ),
    max_leaves=5,
)
# Every rule has at least one event condition (uniform trees would mostly have none).
rules = st.one_of(
    event_rule(),
    st.builds(
        lambda kind, event, others, at: {"type": kind, "rules": [*others[:at], event, *others[at:]]},
        kinds,
        event_rule(),
        st.lists(trees, max_size=2),
        st.integers(0, 2),
    ),
)

amounts = st.one_of(st.integers(-5, 60), st.floats(-100, 100, allow_nan=False), st.sampled_from([45.5, 30.3, 0.1]))
properties = st.one_of(
    st.fixed_dictionaries(
        {"amount": amounts},
        optional={
            "sku": st.sampled_from(["a1", "b2", "c3"]),
            "meta": st.fixed_dictionaries({"channel": st.sampled_from(["web", "app"])}),
            "at": datetimes_iso,
        },
    ),
    st.sampled_from([{}, {"amount": "n/a"}, {"amount": True}]),
)
# Event times relative to the clock: mostly recent (rolling windows are hours to days), some late
# or ahead; a few fixed offsets make equal timestamps (ties) common.
offsets = st.one_of(
    st.sampled_from([timedelta(0), -HOUR, -2 * HOUR, -DAY, HOUR]),
    st.integers(-36, 6).map(lambda h: h * HOUR),
    st.integers(-8 * 24, 30).map(lambda h: h * HOUR),
    st.integers(-600, 60).map(lambda m: m * timedelta(minutes=1)),
)
event_step = st.tuples(st.just("event"), st.sampled_from(NAMES), offsets, properties)
advance_step = st.tuples(
    st.just("advance"),
    st.one_of(
        st.integers(0, 72).map(lambda h: h * HOUR),
        st.sampled_from([HOUR, DAY]),
        st.integers(0, 3600).map(lambda s: timedelta(seconds=s)),
    ),
)
hours_from_now = st.integers(-10 * 24, 3 * 24)
trait_updates = st.fixed_dictionaries(
    {},
    optional={
        "plan": st.one_of(st.none(), st.sampled_from(["free", "pro", "team"])),
        "score": st.one_of(st.none(), st.integers(-3, 3), st.just(1.5)),
        "tags": st.one_of(st.none(), st.lists(st.sampled_from(["vip", "new"]), max_size=2)),
        "signup": st.one_of(st.none(), hours_from_now),  # hours from the clock, may lie ahead
        "address": st.one_of(st.none(), st.just({"city": "Paris"})),
        "subscriptions": st.fixed_dictionaries(
            {"email": st.sampled_from(["subscribed", "unsubscribed", True]), "sms": st.booleans()}
        ),
    },
)
attribute_step = st.tuples(st.just("attributes"), trait_updates, st.one_of(st.none(), hours_from_now))


def scripts(event: st.SearchStrategy[tuple[Any, ...]], events: int = 2) -> st.SearchStrategy[list[tuple[Any, ...]]]:
    """An explicit length: hypothesis's own list sizes stay short, and long runs are where windows expire."""
    step = st.one_of(*[event] * events, advance_step, attribute_step)
    return st.integers(5, 30).flatmap(lambda n: st.lists(step, min_size=n, max_size=n))


def durations_in(body: Any) -> set[timedelta]:
    """Every rolling-window and relative-date length written in a rule."""
    found: set[timedelta] = set()
    if isinstance(body, dict):
        if "unit" in body and ("last" in body or "value" in body):
            found.add(body["last" if "last" in body else "value"] * UNIT_LENGTH[body["unit"]])
        for item in body.values():
            found |= durations_in(item)
    elif isinstance(body, list):
        for item in body:
            found |= durations_in(item)
    return found


def brute_force_next_change(
    rule: RuleNode, body: dict[str, Any], who: ContactState, log: list[EventFact], now: datetime, context: Any
) -> datetime | None:
    """Independent of the engine: a flip can only happen at a known instant (an event's time, a
    date attribute) plus one of the rule's lengths (or zero), so try them all with the oracle."""
    instants = {fact.timestamp for fact in log} | {who.created_at}
    instants |= {t for t in (who.last_seen, who.first_seen) if t is not None}
    if isinstance(who.traits.get("signup"), str):
        instants.add(datetime.fromisoformat(who.traits["signup"]))
    lengths = durations_in(body) | {timedelta(0)}
    candidates = sorted({at + length for at in instants for length in lengths if at + length > now})
    current = evaluate(rule, who, log, now, context)
    return next((at for at in candidates if evaluate(rule, who, log, at, context) != current), None)


def apply_traits(who: ContactState, update: dict[str, Any], last_seen: int | None, now: datetime) -> ContactState:
    traits = dict(who.traits)
    for key, value in update.items():
        if value is None:
            traits.pop(key, None)
        elif key == "signup":
            traits[key] = (now + value * HOUR).isoformat()
        else:
            traits[key] = value
    seen = who.last_seen if last_seen is None else now + last_seen * HOUR
    return replace(who, traits=traits, last_seen=seen)


def run_script(
    body: dict[str, Any],
    script: list[tuple[Any, ...]],
    context: MembershipContext,
    contact_id: str,
    data: st.DataObject,
) -> None:
    """At every step: incremental == full recompute, and next_change is exactly the next flip."""
    rule = rule_of(body)
    compiled = compile_rule(rule)
    who = contact(id=contact_id, created_at=T0 - 3 * DAY)
    state = SegmentState()
    log: list[EventFact] = []
    now = T0

    def check() -> None:
        expected = evaluate(rule, who, log, now, context)
        assert matches(compiled, state, who, now, context) == expected
        wake = next_change(compiled, state, who, now, context)
        assert wake == brute_force_next_change(rule, body, who, log, now, context)
        loose = next_change(compiled, state, who, now)  # without memberships: when it *could* flip
        assert matches_and_wake(compiled, state, who, now, context) == (expected, loose)  # one reading
        if wake is None:
            later = now + data.draw(st.integers(0, 60 * 24)) * HOUR
        else:
            assert loose is not None
            assert now < loose <= wake
            assert evaluate(rule, who, log, wake, context) != expected
            assert matches(compiled, state, who, wake, context) != expected
            span = wake - now
            later = data.draw(
                st.one_of(
                    st.floats(0, 1, exclude_max=True).map(lambda f: now + span * f),
                    st.just(wake - timedelta(microseconds=1)),
                )
            )
            later = max(now, min(later, wake - timedelta(microseconds=1)))
        assert evaluate(rule, who, log, later, context) == expected
        assert matches(compiled, state, who, later, context) == expected

    check()
    for step in script:
        if step[0] == "event":
            for properties in step[3] if isinstance(step[3], list) else [step[3]]:  # a list: a burst, one timestamp
                fact = EventFact(name=step[1], timestamp=now + step[2], properties=properties)
                log.append(fact)
                state = observe(compiled, state, fact, now)
        elif step[0] == "advance":
            now += step[1]
        else:
            who = apply_traits(who, step[1], step[2], now)
        state = decode(SegmentState, encode(state))  # what the store keeps
        check()


@settings(max_examples=300, deadline=None)
@given(
    body=rules,
    script=scripts(event_step),
    lists=st.sets(st.sampled_from(["L1", "L2"])),
    segments=st.sets(st.sampled_from(["S1", "S2"])),
    contact_id=st.sampled_from(["u1", "u2", "u3"]),
    data=st.data(),
)
def test_incremental_equals_full_recompute_at_every_step(
    body: dict[str, Any],
    script: list[tuple[Any, ...]],
    lists: set[str],
    segments: set[str],
    contact_id: str,
    data: st.DataObject,
) -> None:
    run_script(body, script, MembershipContext(lists=lists, segments=segments), contact_id, data)


@st.composite
def buy_condition(draw: st.DrawFn, shape: tuple[str, str] | None = None) -> dict[str, Any]:
    """One condition on "buy" with one measure; ``shape`` (window, measure) fixes both, so two
    conditions can differ only in filters and thresholds (they must not share state)."""
    window, measure = shape or (
        draw(st.sampled_from(["within", "within", "none", "between"])),
        draw(st.sampled_from(["count", "sum", "avg", "min", "max", "min", "max", "first", "last"])),
    )
    if window == "within" and measure in ("first", "last"):
        measure = "count"
    body: dict[str, Any] = {"type": "event", "name": "buy"}
    if window == "within":
        body["within"] = {"last": draw(st.integers(1, 6)), "unit": draw(UNITS)}
    elif window == "between":
        a, b = sorted([draw(grid), draw(grid)])
        body["between"] = [a.isoformat(), b.isoformat()]
    if draw(st.integers(0, 3)) == 0:
        body["where"] = [draw(filter_strategy())]
    if measure == "count":
        body["count"] = {"op": draw(compare_ops), "value": draw(st.integers(0, 4))}
    elif measure in ("first", "last"):
        body[f"{measure}_occurred"] = draw(st.one_of(relative, absolute))
    else:
        threshold = draw(st.one_of(st.integers(-10, 80), st.sampled_from([0.1, 30.3, 45.5])))
        body["aggregate"] = {"fn": measure, "property": "amount", "op": draw(compare_ops), "value": threshold}
    return body


amount_filter = st.builds(
    lambda op, value: {"path": "amount", "op": op, "value": value}, st.sampled_from(["gte", "lt"]), st.integers(0, 60)
)


@st.composite
def same_shape_pair(draw: st.DrawFn) -> dict[str, Any]:
    """Two conditions that differ only in their filter, or only in their threshold: their state
    must not be shared."""
    first = draw(buy_condition())
    window = "within" if "within" in first else "between" if "between" in first else "none"
    measure = first.get("aggregate", {}).get("fn") or next(
        (m for m in ("first", "last") if f"{m}_occurred" in first), "count"
    )
    if draw(st.booleans()):
        first.pop("where", None)
        second = {**first, "where": [draw(amount_filter)]}
    else:
        second = draw(buy_condition((window, measure)))
        second.update({key: first[key] for key in ("within", "between") if key in first})
        second.pop("where", None)
        if "where" in first:
            second["where"] = first["where"]
    return {"type": draw(kinds), "rules": [first, second]}


relative_signup = st.builds(
    lambda op, value, unit: {"type": "attribute", "path": "signup", "op": op, "value": value, "unit": unit},
    st.sampled_from(["within_last", "more_than"]),
    st.integers(1, 5),
    UNITS,
)
dense_rules = st.one_of(
    buy_condition(),
    st.builds(lambda kind, *rules: {"type": kind, "rules": list(rules)}, kinds, buy_condition(), relative_signup),
    same_shape_pair(),
)
buy_step = st.tuples(
    st.just("event"),
    st.just("buy"),
    st.one_of(st.sampled_from([timedelta(0), -HOUR, -DAY]), offsets),
    properties | st.lists(st.fixed_dictionaries({"amount": amounts}), min_size=2, max_size=3),
)


@settings(max_examples=200, deadline=None)
@given(body=dense_rules, script=scripts(buy_step, events=3), data=st.data())
def test_event_conditions_with_dense_events(
    body: dict[str, Any], script: list[tuple[Any, ...]], data: st.DataObject
) -> None:
    """Event conditions fed only their own events: expiries, ties and late events everywhere."""
    run_script(body, script, MembershipContext(), "u1", data)
