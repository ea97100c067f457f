"""``GET /api/v1/journeys/{id}/stats``: per-step counts and experiment conversions (response models).

How each number is made: ``spotzee/services/journey_stats.py`` and ``docs/journeys.md`` (Stats).
"""

from __future__ import annotations

from spotzee.schemas.common import Model
from spotzee.schemas.journey_models import JourneyStatus


class StepStats(Model):
    """One step. A *visit* is one run reaching the step once (a loop that comes back is a new visit).

    ``entered`` = ``completed`` + ``waiting``; ``completed`` counts ``exited`` too.
    """

    type: str | None  # the step's type in the current version; None: no longer in the journey
    entered: int  # visits that reached the step (`entered` rows)
    completed: int  # of those, visits that left it: moved on (`completed`) or the run ended here (`exited`)
    waiting: int  # of those, visits still there: runs at a delay, a wait or a full balancer now
    exited: int  # of ``completed``, visits where the run ended at this step
    runs: int  # distinct runs that reached the step
    contacts: int  # distinct contacts (as recorded) that reached the step
    next: dict[str, int]  # visits that moved on, by the step they went to


class VariantStats(Model):
    name: str
    contacts: int  # distinct contacts assigned this variant
    conversions: int | None  # of those, contacts who performed the goal after their assignment; None: no goal
    rate: float | None  # conversions / contacts; None without a goal or contacts


class ExperimentStats(Model):
    goal: str | None
    within: str | None  # the conversion window as given (`7d`); None: any time after the assignment
    variants: list[VariantStats]
    chi_squared: float | None  # Pearson's statistic on variants × {converted, not converted}, no continuity correction
    dof: int | None
    p_value: float | None
    alpha: float
    significant: bool | None  # p_value < alpha
    reason: str | None  # why p_value is null
    warning: str | None  # e.g. an expected count below 5 (the approximation is rough)


class JourneyStatsPublic(Model):
    journey_id: str
    version: int  # the journey's current version (counts span every version)
    status: JourneyStatus
    steps: dict[str, StepStats]
    experiments: dict[str, ExperimentStats]
