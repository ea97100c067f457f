"""Segments referencing segments: the references of a rule and cycle detection."""

from __future__ import annotations

from collections.abc import Mapping

from spotzee.schemas.rules import AllRule, AnyRule, NoneRule, RuleNode, SegmentRefRule


def segment_references(rule: RuleNode) -> set[str]:
    """Ids of the segments ``rule`` refers to, at any depth."""
    if isinstance(rule, SegmentRefRule):
        return {rule.segment_id}
    if isinstance(rule, AllRule | AnyRule | NoneRule):
        return set().union(*(segment_references(child) for child in rule.rules))
    return set()


def find_cycle(segments: Mapping[str, RuleNode]) -> list[str] | None:
    """A reference cycle among ``segments`` as ``[a, b, ..., a]``, or None.

    References to ids not in ``segments`` are not followed (an unknown segment has no members).
    Deterministic: segments and references are visited in sorted order.
    """
    references = {sid: sorted(segment_references(rule)) for sid, rule in segments.items()}
    done: set[str] = set()
    for start in sorted(references):
        if start in done:
            continue
        path: list[str] = [start]
        on_path = {start}
        stack = [iter(references[start])]
        while stack:
            nxt = next(stack[-1], None)
            if nxt is None:
                stack.pop()
                finished = path.pop()
                on_path.discard(finished)
                done.add(finished)
                continue
            if nxt in on_path:
                return [*path[path.index(nxt) :], nxt]
            if nxt in done or nxt not in references:
                continue
            path.append(nxt)
            on_path.add(nxt)
            stack.append(iter(references[nxt]))
    return None
