"""The full recompute: a rule over a contact's complete event log (the reference the engine must equal).

Deliberately independent of the incremental engine: it filters the whole history at ``now`` and
folds it, with no state, no pruning and no compiled form.
"""

from __future__ import annotations

from datetime import datetime

from spotzee.domain.segments.facts import NO_MEMBERSHIPS, EventFact, MembershipContext
from spotzee.domain.segments.leaves import static_holds
from spotzee.domain.segments.operators import (
    compare,
    exact_float,
    exact_sum,
    filters_pass,
    number,
    occurred,
    read_path,
)
from spotzee.schemas.contact_models import ContactState
from spotzee.schemas.rules import AllRule, AnyRule, EventRule, NoneRule, RuleNode


def evaluate(
    rule: RuleNode,
    contact: ContactState,
    history: list[EventFact],
    now: datetime,
    context: MembershipContext = NO_MEMBERSHIPS,
) -> bool:
    """Whether ``contact`` is in the segment at ``now``, given every event it ever sent."""
    if isinstance(rule, AllRule):
        return all(evaluate(child, contact, history, now, context) for child in rule.rules)
    if isinstance(rule, AnyRule):
        return any(evaluate(child, contact, history, now, context) for child in rule.rules)
    if isinstance(rule, NoneRule):
        return not any(evaluate(child, contact, history, now, context) for child in rule.rules)
    if isinstance(rule, EventRule):
        return event_holds(rule, history, now)
    return static_holds(rule, contact, now, context)


def in_scope(rule: EventRule, fact: EventFact, now: datetime) -> bool:
    """The event counts for ``rule`` at ``now``: its name, its properties, its window."""
    if fact.name != rule.name or not filters_pass(rule.where, fact.properties):
        return False
    if rule.within is not None:
        return fact.timestamp > now - rule.within.length()
    if rule.between is not None:
        return rule.between[0] <= fact.timestamp <= rule.between[1]
    return True


def event_holds(rule: EventRule, history: list[EventFact], now: datetime) -> bool:
    """One event condition over the complete event log at ``now``."""
    matching = [fact for fact in history if in_scope(rule, fact, now)]
    results: list[bool] = []
    if rule.count is not None:
        results.append(compare(rule.count.op, len(matching), rule.count.value))
    if rule.aggregate is not None:
        agg = rule.aggregate
        values = [v for v in (number(read_path(f.properties, agg.property)) for f in matching) if v is not None]
        result: float | None
        if agg.fn == "sum":
            result = exact_float(exact_sum(values))
        elif not values:
            result = None
        elif agg.fn == "min":
            result = min(values)
        elif agg.fn == "max":
            result = max(values)
        else:
            result = exact_float(exact_sum(values) / len(values))
        results.append(result is not None and compare(agg.op, result, agg.value))
    times = [fact.timestamp for fact in matching]
    if rule.first_occurred is not None:
        results.append(occurred(rule.first_occurred, min(times, default=None), now))
    if rule.last_occurred is not None:
        results.append(occurred(rule.last_occurred, max(times, default=None), now))
    if not results:
        return len(matching) >= 1
    return all(results)
