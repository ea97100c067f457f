"""Journey stats from the ClickHouse history: per-step counts and experiment conversions.

Steps (``journey_steps``, every version of the journey). Rows are grouped by visit, one
``(run_id, step_id, visit)``; a visit counts as

- ``entered`` when it has an ``entered`` row;
- ``completed`` when it also has a ``completed`` row (the run moved on) or an ``exited`` row (the
  run ended at the step: an exit or link step, ``exit_when``, ``journey_changed``, archiving ...);
  ``exited`` is that second part alone;
- ``waiting`` otherwise: the run is at that step now (a delay, a ``wait_for_event`` or a full
  balancer, on its timer). Steps that take no time are entered and left in one transition, so
  ``entered = completed + waiting``.

Rows are counted by their ids (``uniqExact`` and ``GROUP BY``), never by row, so rows a replay
wrote twice that a background merge hasn't collapsed yet count once (no ``FINAL`` needed).

Experiments: every ``variant`` row assigns a contact to a variant; a contact counts once per
variant, from its first assignment. Contacts are resolved through ``contact_aliases`` (a contact
merged since counts as the contact it was merged into), like ``events_resolved``. A conversion is
a ``track`` event named ``goal`` of that contact in ``events_resolved`` (this project's) whose
``timestamp`` is at or after the assignment, and at most ``within`` after it when given. The
variants x {converted, not converted} table is tested for independence with Pearson's
chi-squared (``scipy.stats.chi2_contingency``, ``correction=False``: Yates' correction applies
to 2 x 2 tables only, so without it a 2-variant and a 3-variant experiment are tested alike).
"""

from __future__ import annotations

import math
import re
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, TypedDict, Unpack

from scipy.stats import chi2_contingency

from spotzee.analytics.clickhouse import ClickHouse
from spotzee.errors import InvalidInput
from spotzee.schemas.journey_models import ExperimentStep, JourneyDefinition
from spotzee.schemas.journey_stats_models import ExperimentStats, JourneyStatsPublic, StepStats, VariantStats

UNITS = {"s": 1, "m": 60, "h": 3600, "d": 86400, "w": 7 * 86400}
MAX_WITHIN = 3650 * 86400  # ten years
_WITHIN = re.compile(r"^([0-9]{1,9})([smhdw])$")
LOW_EXPECTED = 5.0  # the usual rule of thumb for the chi-squared approximation

STEPS_SQL = """
SELECT step_id,
       countIf(reached) AS entered,
       countIf(reached AND (moved OR ended)) AS completed,
       countIf(reached AND ended) AS exited,
       uniqExactIf(run_id, reached) AS runs,
       uniqExactIf(contact_id, reached) AS contacts
FROM (
    SELECT step_id, run_id, visit, any(contact_id) AS contact_id,
           toBool(max(kind = 'entered')) AS reached,
           toBool(max(kind = 'completed')) AS moved,
           toBool(max(kind = 'exited')) AS ended
    FROM journey_steps
    WHERE project_id = {p:String} AND journey_id = {j:String} AND kind IN ('entered', 'completed', 'exited')
    GROUP BY step_id, run_id, visit
)
GROUP BY step_id
"""

NEXT_SQL = """
SELECT step_id, JSONExtractString(detail, 'next') AS next, uniqExact(run_id, visit) AS visits
FROM journey_steps
WHERE project_id = {p:String} AND journey_id = {j:String} AND kind = 'completed'
GROUP BY step_id, next
"""

_ASSIGNED = """
WITH aliases AS (
    SELECT alias_id, argMax(contact_id, merged_at) AS contact_id
    FROM contact_aliases WHERE project_id = {p:String} GROUP BY alias_id
),
assigned AS (
    SELECT s.step_id AS step_id, JSONExtractString(s.detail, 'variant') AS variant,
           if(a.contact_id = '', s.contact_id, a.contact_id) AS contact, min(s.at) AS assigned_at
    FROM journey_steps AS s LEFT JOIN aliases AS a ON a.alias_id = s.contact_id
    WHERE s.project_id = {p:String} AND s.journey_id = {j:String} AND s.kind = 'variant'
    GROUP BY step_id, variant, contact
)"""

VARIANTS_SQL = (
    _ASSIGNED
    + """
SELECT step_id, variant, count() AS contacts, 0 AS conversions
FROM assigned
GROUP BY step_id, variant
"""
)

CONVERSIONS_SQL = (
    _ASSIGNED
    + """,
goals AS (
    SELECT contact_id, groupArray(timestamp) AS times
    FROM events_resolved
    WHERE project_id = {p:String} AND event_type = 'track' AND event = {goal:String}
      AND contact_id IN (SELECT contact FROM assigned)
    GROUP BY contact_id
)
SELECT x.step_id, x.variant, count() AS contacts,
       countIf(arrayExists(
           t -> t >= x.assigned_at AND ({w:UInt64} = 0 OR t <= x.assigned_at + toIntervalSecond({w:UInt64})),
           g.times)) AS conversions
FROM assigned AS x LEFT JOIN goals AS g ON g.contact_id = x.contact
GROUP BY x.step_id, x.variant
"""
)


@dataclass(frozen=True)
class Significance:
    """Pearson's chi-squared test of independence; ``p_value`` None (with ``reason``) when the
    table can't be tested."""

    statistic: float | None
    dof: int | None
    p_value: float | None
    reason: str | None = None
    warning: str | None = None


def parse_within(text: str | None) -> int | None:
    """``30m``, ``12h``, ``7d``, ``2w`` (also ``s``) -> seconds; None when not given."""
    if text is None:
        return None
    found = _WITHIN.match(text.strip())
    if found is None:
        reason = "a duration: a whole number and a unit s, m, h, d or w (30m, 12h, 7d, 2w)"
        raise InvalidInput(f"within: {reason}", details=[{"path": "within", "reason": reason}])
    seconds = int(found.group(1)) * UNITS[found.group(2)]
    if not 0 < seconds <= MAX_WITHIN:
        reason = "must be positive and at most 3650d"
        raise InvalidInput(f"within: {reason}", details=[{"path": "within", "reason": reason}])
    return seconds


def significance(table: Sequence[tuple[str, int, int]]) -> Significance:
    """``table``: ``(variant, contacts, conversions)`` rows; tests variants x {converted, not}."""
    if len(table) < 2:
        return Significance(None, None, None, "fewer than two variants")
    for name, contacts, conversions in table:
        if contacts <= 0:
            return Significance(None, None, None, f"variant {name!r} has no contacts")
        if not 0 <= conversions <= contacts:
            raise ValueError(f"variant {name!r}: {conversions} conversions of {contacts} contacts")
    converted = sum(c for _, _, c in table)
    total = sum(n for _, n, _ in table)
    if converted == 0:
        return Significance(None, None, None, "no contact converted")
    if converted == total:
        return Significance(None, None, None, "every contact converted")
    observed = [[c, n - c] for _, n, c in table]
    try:
        result: Any = chi2_contingency(observed, correction=False)
    except ValueError as exc:  # margins are positive above, so this is a guard
        return Significance(None, None, None, f"not testable: {exc}")
    statistic, p_value, dof = float(result.statistic), float(result.pvalue), int(result.dof)
    if math.isnan(statistic) or math.isnan(p_value):
        return Significance(None, None, None, "not testable")
    warning = None
    if float(result.expected_freq.min()) < LOW_EXPECTED:
        warning = f"an expected count is below {LOW_EXPECTED:g}: the chi-squared approximation is rough"
    return Significance(statistic, dof, p_value, None, warning)


class Question(TypedDict):
    """What the stats are asked: the ``goal`` event a conversion is, the window it counts
    ``within`` after assignment (None: any time), and the significance level ``alpha``."""

    goal: str | None
    within: str | None
    alpha: float


def journey_stats(
    clickhouse: ClickHouse,
    journey: JourneyDefinition,
    *,
    goal: str | None = None,
    within: str | None = None,
    alpha: float = 0.05,
) -> JourneyStatsPublic:
    """The stats of ``journey`` (a definition already read for the caller's project)."""
    window = parse_within(within)
    params: dict[str, Any] = {"p": journey.project_id, "j": journey.id}
    _, step_rows = clickhouse.query(STEPS_SQL, parameters=params)
    _, next_rows = clickhouse.query(NEXT_SQL, parameters=params)
    if goal is None:
        _, variant_rows = clickhouse.query(VARIANTS_SQL, parameters=params)
    else:
        _, variant_rows = clickhouse.query(CONVERSIONS_SQL, parameters={**params, "goal": goal, "w": window or 0})
    return assemble(journey, step_rows, next_rows, variant_rows, goal=goal, within=within, alpha=alpha)


def assemble(
    journey: JourneyDefinition,
    step_rows: list[list[Any]],
    next_rows: list[list[Any]],
    variant_rows: list[list[Any]],
    **question: Unpack[Question],
) -> JourneyStatsPublic:
    """The response from the query rows: every step of the current version (zeros when none
    reached it) and then, by id, steps only the history knows (removed by an edit)."""
    counted = {str(r[0]): [int(v) for v in r[1:]] for r in step_rows}
    nexts: dict[str, dict[str, int]] = {}
    for step_id, following, visits in next_rows:
        nexts.setdefault(str(step_id), {})[str(following)] = int(visits)
    step_ids = list(journey.steps) + sorted((set(counted) | set(nexts)) - set(journey.steps))
    steps: dict[str, StepStats] = {}
    for step_id in step_ids:
        entered, completed, exited, runs, contacts = counted.get(step_id, [0, 0, 0, 0, 0])
        step = journey.steps.get(step_id)
        steps[step_id] = StepStats(
            type=step.type if step is not None else None,
            entered=entered,
            completed=completed,
            waiting=entered - completed,
            exited=exited,
            runs=runs,
            contacts=contacts,
            next=dict(sorted(nexts.get(step_id, {}).items())),
        )

    assigned: dict[str, dict[str, tuple[int, int]]] = {}
    for step_id, variant, contacts, conversions in variant_rows:
        assigned.setdefault(str(step_id), {})[str(variant)] = (int(contacts), int(conversions))
    experiment_ids = [s for s, step in journey.steps.items() if isinstance(step, ExperimentStep)]
    experiment_ids += sorted(set(assigned) - set(experiment_ids))
    experiments = {
        step_id: _experiment(journey, step_id, assigned.get(step_id, {}), question) for step_id in experiment_ids
    }
    return JourneyStatsPublic(
        journey_id=journey.id, version=journey.version, status=journey.status, steps=steps, experiments=experiments
    )


def _experiment(
    journey: JourneyDefinition, step_id: str, assigned: dict[str, tuple[int, int]], question: Question
) -> ExperimentStats:
    """The current version's variants in their order (zeros when unassigned yet), then variants
    only the history knows."""
    goal, within, alpha = question["goal"], question["within"], question["alpha"]
    step = journey.steps.get(step_id)
    names = [v.name for v in step.variants] if isinstance(step, ExperimentStep) else []
    names += sorted(set(assigned) - set(names))
    variants = []
    for name in names:
        contacts, conversions = assigned.get(name, (0, 0))
        variants.append(
            VariantStats(
                name=name,
                contacts=contacts,
                conversions=conversions if goal is not None else None,
                rate=conversions / contacts if goal is not None and contacts else None,
            )
        )
    if goal is None:
        test = Significance(None, None, None, "no goal: pass goal=<event name>")
    else:
        test = significance([(v.name, v.contacts, v.conversions or 0) for v in variants])
    return ExperimentStats(
        goal=goal,
        within=within.strip() if within is not None else None,
        variants=variants,
        chi_squared=test.statistic,
        dof=test.dof,
        p_value=test.p_value,
        alpha=alpha,
        significant=test.p_value < alpha if test.p_value is not None else None,
        reason=test.reason,
        warning=test.warning,
    )
