"""The read-only world a transition sees, injected by the caller (no I/O in the machine)."""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any

import msgspec

from spotzee.schemas.rules import RuleNode

RuleEvaluator = Callable[[RuleNode], bool]
Renderer = Callable[[str, Mapping[str, Any]], str]


class JourneyEnv(msgspec.Struct, frozen=True, kw_only=True):
    """The contact and counters as of this transition.

    - ``evaluate_rule(rule)``: whether the contact matches a gate's rule now (the caller holds the
      segment state);
    - ``render(template, variables)``: Liquid, with ``contact``, ``event`` and ``journey``; it must
      not raise (render errors are the renderer's to handle). Called only for strings holding
      markup (a ``{``): any other string is its own rendering;
    - ``contact``: the contact's attributes (first-class fields and traits, by dot path) -- a
      snapshot: steps after an ``update`` in the same transition still see the old values; read
      only by the steps that need it (a mapping may build itself on first use);
    - ``timezone``: the contact's IANA zone; ``default_timezone`` the project's (used when neither
      the contact nor the journey has one);
    - ``balancer_counts``: counter snapshot by ``balancer_key``; the machine adds what it takes
      within one transition and returns ``BalancerTaken`` effects for the caller to add.

    A frozen msgspec Struct (never encoded): built for every transition, it costs a tenth of a
    frozen dataclass.
    """

    evaluate_rule: RuleEvaluator
    render: Renderer
    contact: Mapping[str, Any] = msgspec.field(default_factory=dict)
    timezone: str | None = None
    default_timezone: str = "UTC"
    balancer_counts: Mapping[str, int] = msgspec.field(default_factory=dict)
