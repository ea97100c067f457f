"""Choosing a branch: experiment variants (deterministic per contact) and balancer paths."""

from __future__ import annotations

import hashlib
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime

from spotzee.domain.journeys.effects import balancer_key
from spotzee.domain.journeys.timing import period_start
from spotzee.schemas.journey_models import LimitedBalancerStep, RoundRobinBalancerStep, Variant


def variant_for(journey_id: str, step_id: str, contact_id: str, variants: list[Variant]) -> Variant:
    """A weighted pick from a hash of (journey, step, contact): the same contact always gets the
    same variant of a step (also on re-entry), and the shares follow the weights."""
    digest = hashlib.sha256(f"{journey_id}:{step_id}:{contact_id}".encode()).digest()
    point = int.from_bytes(digest[:8], "big") / 2**64 * sum(v.weight for v in variants)
    cumulative = 0.0
    for variant in variants:
        cumulative += variant.weight
        if point < cumulative:
            return variant
    return variants[-1]  # float rounding at the very top


@dataclass(frozen=True)
class Taken:
    path: str
    key: str
    period_start: datetime | None = None


@dataclass(frozen=True)
class Full:
    retry_at: datetime  # the earliest next period of any path


Count = Callable[[str], int]


def round_robin(step_id: str, step: RoundRobinBalancerStep, count: Count) -> Taken:
    key = balancer_key(step_id)
    return Taken(step.paths[count(key) % len(step.paths)], key)


def limited(step_id: str, step: LimitedBalancerStep, count: Count, now: datetime) -> Taken | Full:
    retry: datetime | None = None
    for path in step.paths:
        period = path.period.timedelta()
        start = period_start(now, period)
        key = balancer_key(step_id, path.next, start)
        if count(key) < path.limit:
            return Taken(path.next, key, start)
        retry = start + period if retry is None else min(retry, start + period)
    assert retry is not None  # at least one path
    return Full(retry)
