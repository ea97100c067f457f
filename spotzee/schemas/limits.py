"""Size and nesting limits of definitions (segment rules, journeys): properties of the data.

Every definition is stored as JSON and read back by readers that refuse deep nesting (pydantic's
JSON reader stops near 200 levels, orjson's writer at 255, both counted over the whole document,
and a rule sits up to five levels inside a stored record). The limits below keep everything that
passes validation far below those: a rule at ``MAX_RULE_DEPTH`` is at most 66 JSON levels deep,
a free-form value at most ``MAX_VALUE_DEPTH``, a request body at most ``MAX_BODY_DEPTH``. They are
checked by walking the input iteratively, before any recursive validation, so an over-deep input
is refused with its path instead of exhausting the interpreter's stack.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any, Final, NamedTuple

from pydantic import BaseModel, ValidationError
from pydantic_core import InitErrorDetails, PydanticCustomError

from spotzee.schemas.common import Model

MAX_RULE_DEPTH: Final = 32  # rule nodes on the way from a rule's root to its deepest node
MAX_RULE_NODES: Final = 500  # rule nodes (leaves and combinators) in one rule
MAX_RULE_BYTES: Final = 65_536  # a rule's compact JSON as stored
MAX_VALUE_DEPTH: Final = 16  # free-form JSON values: update step ``set``, event step ``properties``
MAX_JOURNEY_BYTES: Final = 1_048_576  # a journey's compact JSON as stored (without identity fields)
MAX_PAYLOAD_BYTES: Final = 32_768  # the payload of ``POST /journeys/{id}/enter`` (Segment's event size)
MAX_BODY_DEPTH: Final = 256  # JSON nesting of an admin API request body (the standard library
# reader FastAPI uses recurses per level and fails near 1,000: a 500)
MAX_BODY_BYTES: Final = 4 * 1024 * 1024  # an admin API JSON request body (a journey is at most 1 MiB)

# A valid rule at MAX_RULE_DEPTH nests 2 JSON levels per rule level (object, ``rules`` list) and
# at most 4 inside a leaf (``where`` list, filter, value list, scalar): anything deeper is invalid.
_MAX_RULE_JSON_DEPTH: Final = 2 * MAX_RULE_DEPTH + 4
_COMBINATORS: Final = frozenset({"all", "any", "none"})

Loc = tuple[str | int, ...]


def _error(kind: str, message: str, loc: Loc) -> ValidationError:
    # input None: an over-limit input is never echoed back (nor into logs)
    details: list[InitErrorDetails] = [{"type": PydanticCustomError(kind, message), "loc": loc, "input": None}]
    return ValidationError.from_exception_data("Limits", details)


def _children(value: Any) -> Iterator[tuple[str | int, Any]]:
    if isinstance(value, dict):
        yield from value.items()
    elif isinstance(value, list | tuple):
        yield from enumerate(value)
    elif isinstance(value, BaseModel):
        for name in type(value).model_fields:
            yield name, getattr(value, name)


def _is_container(value: Any) -> bool:
    return isinstance(value, dict | list | tuple | BaseModel)


def _tag(value: Any) -> Any:
    return value.get("type") if isinstance(value, dict) else getattr(value, "type", None)


def _scalar_size(value: Any) -> int:
    """A lower bound of the bytes a scalar takes in compact JSON."""
    return len(value) + 2 if isinstance(value, str) else 1


def _container_size(value: Any, children: list[tuple[str | int, Any]]) -> int:
    """A lower bound of a container's own bytes: brackets, separators and keys (not its values)."""
    return 2 + len(children) + sum(len(key) + 3 for key, _ in children if isinstance(key, str))


def _check_size(size: int) -> None:
    if size > MAX_RULE_BYTES:
        raise _error("rule_too_large", f"larger than {MAX_RULE_BYTES} bytes", ())


class _Node(NamedTuple):
    """A container met on the walk of a rule: where it is, how deep in JSON and in rule nodes,
    and whether it is a rule node itself (or only data inside one)."""

    value: Any
    loc: Loc
    json_depth: int
    rule_depth: int
    is_rule: bool


def check_rule_shape(rule: Any) -> None:
    """Raise a ValidationError (located at the offending node) when ``rule`` -- raw JSON data or
    already built models -- exceeds the rule limits. Iterative: any nesting is safe to pass in."""
    if not _is_container(rule):
        return  # not a rule at all: validation says why
    stack = [_Node(rule, (), 1, 1, True)]
    nodes = 0
    size = 0
    while stack:
        node = stack.pop()
        nodes += node.is_rule
        _check_depth_and_count(node, nodes)
        children = list(_children(node.value))
        size += _container_size(node.value, children)
        _check_size(size)  # before walking a huge container's items
        size = _push_children(node, children, stack, size)
        _check_size(size)


def _check_depth_and_count(node: _Node, nodes: int) -> None:
    if node.json_depth > _MAX_RULE_JSON_DEPTH:
        raise _error("rule_too_deep", f"nested too deeply (rules may nest {MAX_RULE_DEPTH} levels)", node.loc)
    if node.is_rule and node.rule_depth > MAX_RULE_DEPTH:
        raise _error("rule_too_deep", f"rules nested deeper than {MAX_RULE_DEPTH} levels", node.loc)
    if node.is_rule and nodes > MAX_RULE_NODES:
        raise _error("rule_too_large", f"more than {MAX_RULE_NODES} rule nodes", ())


def _push_children(node: _Node, children: list[tuple[str | int, Any]], stack: list[_Node], size: int) -> int:
    """Push ``node``'s containers on ``stack`` (first child on top); ``size`` plus its scalars."""
    tag = _tag(node.value)
    combinator = node.is_rule and isinstance(tag, str) and tag in _COMBINATORS  # a tag may be any JSON
    for key, child in reversed(children):
        if not _is_container(child):
            size += _scalar_size(child)
        elif combinator and key == "rules":
            # the list is one JSON level; its items are rule nodes one level down
            items = list(_children(child))
            size += _container_size(child, items)
            _check_size(size)
            for index, item in reversed(items):
                if _is_container(item):
                    stack.append(_Node(item, (*node.loc, key, index), node.json_depth + 2, node.rule_depth + 1, True))
        else:
            stack.append(_Node(child, (*node.loc, key), node.json_depth + 1, node.rule_depth, False))
    return size


def check_stored_size(encoded: bytes, limit: int, what: str) -> None:
    if len(encoded) > limit:
        raise _error(f"{what}_too_large", f"{len(encoded)} bytes as stored; at most {limit}", ())


def check_value_depth(value: Any, limit: int = MAX_VALUE_DEPTH) -> Any:
    """``value`` itself when its JSON nesting is at most ``limit`` (a scalar is 0, ``{}`` 1);
    else a ValidationError at the first container beyond the limit. Iterative."""
    stack: list[tuple[Any, Loc, int]] = [(value, (), 1)]
    while stack:
        item, loc, depth = stack.pop()
        if not _is_container(item):
            continue
        if depth > limit:
            raise _error("value_too_deep", f"nested deeper than {limit} levels", loc)
        stack.extend((child, (*loc, key), depth + 1) for key, child in _children(item))
    return value


class QuarantinedDefinition(Model):
    """A stored definition that can't be read back (see ``spotzee.streams.quarantine``)."""

    id: str
    reason: str
