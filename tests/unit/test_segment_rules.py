"""The segment rule language: what parses, what is rejected (and where), and reference cycles."""

from __future__ import annotations

import json
from datetime import UTC, datetime
from typing import Any

import pytest
from pydantic import ValidationError

from spotzee.domain.segments import find_cycle, segment_references
from spotzee.schemas.rules import (
    AllRule,
    AttributeRule,
    EventRule,
    NoneRule,
    RuleNode,
    SegmentCreate,
    SegmentRefRule,
    SegmentRuleAdapter,
)

ISSUE_EXAMPLE: dict[str, Any] = {
    "name": "Repeat buyers in France",
    "rule": {
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
    },
}


def parse(body: dict[str, Any]) -> RuleNode:
    return SegmentRuleAdapter.validate_python(body)


def error_locs(body: Any) -> list[str]:
    with pytest.raises(ValidationError) as caught:
        SegmentCreate.model_validate({"name": "s", "rule": body})
    return [".".join(str(part) for part in error["loc"]) for error in caught.value.errors()]


def test_the_issue_example_parses() -> None:
    segment = SegmentCreate.model_validate(ISSUE_EXAMPLE)
    assert segment.description is None
    rule = segment.rule
    assert isinstance(rule, AllRule)
    country, purchases, no_refund = rule.rules
    assert isinstance(country, AttributeRule)
    assert (country.path, country.op, country.value) == ("country", "eq", "FR")
    assert isinstance(purchases, EventRule)
    assert purchases.count is not None
    assert purchases.within is not None
    assert (purchases.count.op, purchases.count.value, purchases.within.length().days) == ("gte", 2, 30)
    assert isinstance(no_refund, NoneRule)
    assert SegmentCreate.model_validate_json(json.dumps(ISSUE_EXAMPLE)) == segment
    assert SegmentCreate.model_validate_json(segment.model_dump_json()) == segment


VALID_RULES: list[dict[str, Any]] = [
    {"type": "attribute", "path": "email", "op": "exists"},
    {"type": "attribute", "path": "traits.plan", "op": "in", "value": ["pro", "team"]},
    {"type": "attribute", "path": "address.city", "op": "eq", "value": "Paris"},
    {"type": "attribute", "path": "created_at", "op": "more_than", "value": 30, "unit": "day"},
    {"type": "event", "name": "purchase"},
    {"type": "event", "name": "purchase", "count": {"op": "eq", "value": 0}},
    {"type": "event", "name": "purchase", "between": ["2026-01-01", "2026-02-01T00:00:00Z"]},
    {"type": "event", "name": "purchase", "aggregate": {"fn": "sum", "property": "amount", "op": "gte", "value": 100}},
    {"type": "event", "name": "purchase", "last_occurred": {"op": "more_than", "value": 30, "unit": "day"}},
    {"type": "event", "name": "purchase", "first_occurred": {"op": "within_last", "value": 1, "unit": "week"}},
    {"type": "event", "name": "purchase", "first_occurred": {"op": "after", "value": "2026-01-01T00:00:00Z"}},
    {
        "type": "event",
        "name": "view",
        "within": {"last": 1.5, "unit": "hour"},
        "where": [{"path": "a.b", "op": "exists"}],
    },
    {"type": "list", "list_id": "vip"},
    {"type": "segment", "segment_id": "s1"},
    {"type": "subscription", "channel": "email", "state": "subscribed"},
    {"type": "subscription", "channel": "sms", "state": "unsubscribed"},
    {"type": "random", "percent": 10, "seed": "spring"},
    {"type": "random", "percent": 12.5},
    {"type": "everyone"},
    {"type": "any", "rules": [{"type": "everyone"}, {"type": "none", "rules": [{"type": "list", "list_id": "x"}]}]},
]


@pytest.mark.parametrize("body", VALID_RULES, ids=lambda body: str(body["type"]))
def test_each_node_type_parses_and_round_trips(body: dict[str, Any]) -> None:
    rule = parse(body)
    assert rule.type == body["type"]
    assert SegmentRuleAdapter.validate_json(SegmentRuleAdapter.dump_json(rule)) == rule


@pytest.mark.parametrize(
    ("op", "value", "unit"),
    [
        ("eq", "FR", None),
        ("eq", ["a", "b"], None),
        ("neq", 3, None),
        ("gt", 1.5, None),
        ("gte", "b", None),
        ("lt", -1, None),
        ("lte", 0, None),
        ("between", [1, 2], None),
        ("between", ["a", "b"], None),
        ("contains", "vip", None),
        ("not_contains", "vip", None),
        ("starts_with", "+33", None),
        ("ends_with", "@example.com", None),
        ("in", ["FR", "DE"], None),
        ("not_in", [1, 2], None),
        ("exists", None, None),
        ("not_exists", None, None),
        ("before", "2026-01-01", None),
        ("after", "2026-01-01T10:00:00+02:00", None),
        ("within_last", 7, "day"),
        ("more_than", 2, "month"),
    ],
)
def test_each_attribute_operator(op: str, value: Any, unit: str | None) -> None:
    body: dict[str, Any] = {"type": "attribute", "path": "x", "op": op}
    if value is not None:
        body["value"] = value
    if unit is not None:
        body["unit"] = unit
    rule = parse(body)
    assert isinstance(rule, AttributeRule)
    assert rule.op == op


def test_values_are_normalised() -> None:
    before = parse({"type": "attribute", "path": "signup", "op": "before", "value": "2026-01-01T02:00:00+02:00"})
    assert isinstance(before, AttributeRule)
    assert before.value == datetime(2026, 1, 1, tzinfo=UTC)
    python_made = AttributeRule(path="last_seen", op="gte", value=datetime(2026, 1, 1, tzinfo=UTC))
    assert python_made.value == "2026-01-01T00:00:00+00:00"  # as it would arrive in JSON
    nested = AllRule(rules=[EventRule(name="purchase"), SegmentRefRule(segment_id="s")])
    assert parse(nested.model_dump(mode="json")) == nested


INVALID: list[tuple[Any, str]] = [
    (
        {
            "type": "all",
            "rules": [{"type": "everyone"}, {"type": "event", "name": "x", "count": {"op": "ge", "value": 1}}],
        },
        "rule.rules.1.count.op",
    ),
    ({"type": "event", "name": "x", "count": {"op": "gte", "value": -1}}, "rule.count.value"),
    ({"type": "event", "name": "x", "count": {"op": "gte", "value": True}}, "rule.count.value"),
    ({"type": "event", "name": "x", "count": {"op": "gte", "value": 10_001}}, "rule.count.value"),
    ({"type": "event", "name": ""}, "rule.name"),
    ({"type": "event", "name": "x", "within": {"last": 0, "unit": "day"}}, "rule.within.last"),
    ({"type": "event", "name": "x", "within": {"last": 5, "unit": "year"}}, "rule.within.unit"),
    ({"type": "event", "name": "x", "within": {"last": 2000, "unit": "month"}}, "rule.within.last"),
    ({"type": "event", "name": "x", "between": ["2026-02-01", "2026-01-01"]}, "rule.between"),
    ({"type": "event", "name": "x", "between": ["2026-02-01"]}, "rule.between.1"),
    (
        {"type": "event", "name": "x", "within": {"last": 1, "unit": "day"}, "between": ["2026-01-01", "2026-02-01"]},
        "rule.between",
    ),
    (
        {
            "type": "event",
            "name": "x",
            "within": {"last": 1, "unit": "day"},
            "last_occurred": {"op": "after", "value": "2026-01-01"},
        },
        "rule.last_occurred",
    ),
    ({"type": "event", "name": "x", "last_occurred": {"op": "more_than", "value": 30}}, "rule.last_occurred.unit"),
    ({"type": "event", "name": "x", "first_occurred": {"op": "soon", "value": 3}}, "rule.first_occurred.op"),
    (
        {"type": "event", "name": "x", "aggregate": {"fn": "median", "property": "a", "op": "gt", "value": 1}},
        "rule.aggregate.fn",
    ),
    (
        {"type": "event", "name": "x", "aggregate": {"fn": "sum", "property": "a", "op": "between", "value": 1}},
        "rule.aggregate.op",
    ),
    (
        {"type": "event", "name": "x", "aggregate": {"fn": "sum", "property": "a", "op": "gt", "value": "big"}},
        "rule.aggregate.value",
    ),
    (
        {"type": "event", "name": "x", "where": [{"path": "a", "op": "within_last", "value": 1, "unit": "day"}]},
        "rule.where.0.op",
    ),
    ({"type": "event", "name": "x", "where": [{"path": "a", "op": "in", "value": "a"}]}, "rule.where.0.value"),
    ({"type": "attribute", "path": "a", "op": "between", "value": [1]}, "rule.value"),
    ({"type": "attribute", "path": "a", "op": "between", "value": [3, 1]}, "rule.value"),
    ({"type": "attribute", "path": "a", "op": "between", "value": [1, "z"]}, "rule.value"),
    ({"type": "attribute", "path": "a", "op": "in", "value": "FR"}, "rule.value"),
    ({"type": "attribute", "path": "a", "op": "not_in", "value": []}, "rule.value"),
    ({"type": "attribute", "path": "a", "op": "exists", "value": 1}, "rule.value"),
    ({"type": "attribute", "path": "a", "op": "eq"}, "rule.value"),
    ({"type": "attribute", "path": "a", "op": "eq", "value": {"x": 1}}, "rule.value"),
    ({"type": "attribute", "path": "a", "op": "gt", "value": True}, "rule.value"),
    ({"type": "attribute", "path": "a", "op": "starts_with", "value": 3}, "rule.value"),
    ({"type": "attribute", "path": "a", "op": "before", "value": "soon"}, "rule.value"),
    ({"type": "attribute", "path": "a", "op": "within_last", "value": 3}, "rule.unit"),
    ({"type": "attribute", "path": "a", "op": "within_last", "value": -3, "unit": "day"}, "rule.value"),
    ({"type": "attribute", "path": "a", "op": "eq", "value": 1, "unit": "day"}, "rule.unit"),
    ({"type": "attribute", "path": "a", "op": "like", "value": "x"}, "rule.op"),
    ({"type": "attribute", "path": "a..b", "op": "exists"}, "rule.path"),
    ({"type": "attribute", "path": "traits", "op": "exists"}, "rule.path"),
    ({"type": "attribute", "path": "a", "op": "exists", "colour": "red"}, "rule.colour"),
    ({"type": "random", "percent": 101}, "rule.percent"),
    ({"type": "random", "percent": -1}, "rule.percent"),
    ({"type": "subscription", "channel": "pigeon", "state": "subscribed"}, "rule.channel"),
    ({"type": "subscription", "channel": "email", "state": "maybe"}, "rule.state"),
    ({"type": "list"}, "rule.list_id"),
    ({"type": "segment", "segment_id": ""}, "rule.segment_id"),
    ({"type": "any", "rules": []}, "rule.rules"),
    ({"type": "sometimes"}, "rule.type"),
    ({"rules": []}, "rule.type"),
    ("everyone", "rule"),
    (
        {
            "type": "none",
            "rules": [{"type": "any", "rules": [{"type": "all", "rules": [{"type": "list", "list_id": 5}]}]}],
        },
        "rule.rules.0.rules.0.rules.0.list_id",
    ),
]


@pytest.mark.parametrize(("body", "loc"), INVALID, ids=[loc for _, loc in INVALID])
def test_invalid_rules_are_rejected_at_the_offending_field(body: Any, loc: str) -> None:
    assert error_locs(body) == [loc]


def test_segment_create_fields() -> None:
    with pytest.raises(ValidationError) as caught:
        SegmentCreate.model_validate({"name": "", "rule": {"type": "everyone"}, "extra": 1})
    assert sorted(".".join(map(str, e["loc"])) for e in caught.value.errors()) == ["extra", "name"]
    described = SegmentCreate.model_validate({"name": "All", "description": "everyone", "rule": {"type": "everyone"}})
    assert described.description == "everyone"


def test_json_schema_keeps_the_discriminated_union() -> None:
    schema = json.dumps(SegmentCreate.model_json_schema())
    assert '"propertyName": "type"' in schema
    for name in ("AttributeRule", "EventRule", "RandomRule", "NoneRule"):
        assert name in schema


def seg(*refs: str) -> RuleNode:
    return parse(
        {"type": "any", "rules": [{"type": "everyone"}, *({"type": "segment", "segment_id": r} for r in refs)]}
    )


def test_segment_references_at_any_depth() -> None:
    rule = parse(
        {
            "type": "all",
            "rules": [
                {"type": "segment", "segment_id": "a"},
                {"type": "none", "rules": [{"type": "any", "rules": [{"type": "segment", "segment_id": "b"}]}]},
                {"type": "list", "list_id": "c"},
            ],
        }
    )
    assert segment_references(rule) == {"a", "b"}
    assert segment_references(parse({"type": "everyone"})) == set()


def test_find_cycle() -> None:
    assert find_cycle({"a": seg("b"), "b": seg("c"), "c": seg()}) is None
    assert find_cycle({"a": seg("b"), "b": seg("a")}) == ["a", "b", "a"]
    assert find_cycle({"a": seg("a")}) == ["a", "a"]
    assert find_cycle({"x": seg("a"), "a": seg("b"), "b": seg("c"), "c": seg("a")}) == ["a", "b", "c", "a"]
    assert find_cycle({"a": seg("missing")}) is None
    # a diamond is not a cycle
    assert find_cycle({"a": seg("b", "c"), "b": seg("d"), "c": seg("d"), "d": seg()}) is None
