"""Smart segments, the pure core: rule evaluation, incremental per-contact state, timers, cycles.

- ``evaluate(rule, contact, history, now, context)``: the full recompute over a contact's complete
  event log -- the reference (``oracle``);
- ``compile(rule)`` -> ``CompiledRule``; ``observe(compiled, state, event, now)`` -> ``SegmentState``;
  ``matches(compiled, state, contact, now, context)``; ``next_change(...)`` -> when to wake up;
  ``depends_on(compiled)`` -> ``Dependencies`` (``engine``; state layout and memory bounds in ``state``);
- ``segment_references(rule)`` and ``find_cycle(segments)`` (``graph``).

Rules are ``spotzee.schemas.rules.SegmentRule``; operator semantics are in ``operators``.
"""

from spotzee.domain.segments.engine import (
    CompiledRule,
    Dependencies,
    TrackerBundle,
    bundle,
    compile,
    compile_rule,
    depends_on,
    matches,
    matches_and_wake,
    next_change,
    observe,
    prune,
    retain,
)
from spotzee.domain.segments.facts import NO_MEMBERSHIPS, EventFact, MembershipContext
from spotzee.domain.segments.graph import find_cycle, segment_references
from spotzee.domain.segments.leaves import random_bucket, subscription_state
from spotzee.domain.segments.oracle import evaluate
from spotzee.domain.segments.trackers import SegmentState, Tracker

__all__ = [
    "NO_MEMBERSHIPS",
    "CompiledRule",
    "Dependencies",
    "EventFact",
    "MembershipContext",
    "SegmentState",
    "Tracker",
    "TrackerBundle",
    "bundle",
    "compile",
    "compile_rule",
    "depends_on",
    "evaluate",
    "find_cycle",
    "matches",
    "matches_and_wake",
    "next_change",
    "observe",
    "prune",
    "random_bucket",
    "retain",
    "segment_references",
    "subscription_state",
]
