from __future__ import annotations

import pytest

from spotzee.domain.traits import TraitError, expand_paths, merge_traits, normalize_traits


@pytest.mark.parametrize(
    ("traits", "expected"),
    [
        ({"email": "Ann@Example.COM"}, {"email": "Ann@example.com"}),
        ({"phone": "+1 (415) 555-2671"}, {"phone": "+14155552671"}),
        ({"phone": "+44 20 7946 0958"}, {"phone": "+442079460958"}),
        ({"timezone": "America/New_York"}, {"timezone": "America/New_York"}),
        ({"locale": "pt_br"}, {"locale": "pt-BR"}),
        ({"email": None, "plan": "x"}, {"email": None, "plan": "x"}),
    ],
)
def test_first_class_fields_are_normalised(traits: dict[str, object], expected: dict[str, object]) -> None:
    assert normalize_traits(traits) == expected


@pytest.mark.parametrize(
    ("traits", "path"),
    [
        ({"email": "nope"}, "traits.email"),
        ({"email": 42}, "traits.email"),
        ({"phone": "4155552671"}, "traits.phone"),
        ({"phone": "+1 12"}, "traits.phone"),
        ({"timezone": "Europe/Atlantis"}, "traits.timezone"),
        ({"locale": "english please"}, "traits.locale"),
        ({"a": {"": 1}}, "traits.a."),
    ],
)
def test_invalid_values_are_rejected_with_their_path(traits: dict[str, object], path: str) -> None:
    with pytest.raises(TraitError) as error:
        normalize_traits(traits)
    assert error.value.path == path


def test_depth_is_bounded() -> None:
    deep: dict[str, object] = {}
    node = deep
    for _ in range(20):
        node["n"] = {}
        node = node["n"]  # type: ignore[assignment]
    with pytest.raises(TraitError, match="nested deeper"):
        normalize_traits(deep)


def test_dotted_keys_are_paths() -> None:
    assert expand_paths({"a.b.c": 1, "a.d": 2, "e": {"f.g": 3}}) == {"a": {"b": {"c": 1}, "d": 2}, "e": {"f": {"g": 3}}}


def test_merge_deep_merges_and_null_removes() -> None:
    current = {"address": {"city": "Paris", "zip": "75001"}, "plan": "free", "tags": ["a"]}
    merged, changes = merge_traits(current, {"address": {"city": "Lyon", "zip": None}, "plan": None, "tags": ["b"]})
    assert merged == {"address": {"city": "Lyon"}, "tags": ["b"]}
    assert sorted(changes) == [
        ("address.city", "Paris", "Lyon"),
        ("address.zip", "75001", None),
        ("plan", "free", None),
        ("tags", ["a"], ["b"]),
    ]
    assert current["plan"] == "free"  # the input is not mutated


def test_removing_the_last_nested_key_removes_the_object() -> None:
    merged, _ = merge_traits({"a": {"b": 1}}, {"a": {"b": None}})
    assert merged == {}


def test_new_objects_drop_their_nulls_and_unchanged_values_are_not_changes() -> None:
    merged, changes = merge_traits({"x": 1}, {"x": 1, "o": {"k": None, "v": 2}})
    assert merged == {"x": 1, "o": {"v": 2}}
    assert changes == [("o", None, {"v": 2})]
