"""Rule leaves that read only the contact and its memberships (no event state)."""

from __future__ import annotations

import hashlib
from datetime import datetime

from spotzee.domain.segments.facts import MembershipContext
from spotzee.domain.segments.operators import attribute_holds, read_path
from spotzee.schemas.contact_models import ContactState
from spotzee.schemas.rules import (
    AttributeRule,
    EveryoneRule,
    ListRule,
    RandomRule,
    SegmentRefRule,
    SubscriptionRule,
)

StaticRule = AttributeRule | ListRule | SegmentRefRule | SubscriptionRule | RandomRule | EveryoneRule

_SUBSCRIBED = {"subscribed": True, "unsubscribed": False, True: True, False: False}


def subscription_state(contact: ContactState, channel: str) -> str | None:
    """``subscribed``/``unsubscribed`` from the trait ``subscriptions.<channel>``, or None if unknown."""
    raw = read_path(contact.traits, f"subscriptions.{channel}")
    if isinstance(raw, str | bool) and raw in _SUBSCRIBED:
        return "subscribed" if _SUBSCRIBED[raw] else "unsubscribed"
    return None


def random_bucket(seed: str, contact_id: str) -> int:
    """A stable bucket in 0..9999: ``int(sha256(seed + ":" + contact_id)) mod 10000``."""
    digest = hashlib.sha256(f"{seed}:{contact_id}".encode()).digest()
    return int.from_bytes(digest, "big") % 10_000


def static_holds(rule: StaticRule, contact: ContactState, now: datetime, context: MembershipContext) -> bool:
    if isinstance(rule, AttributeRule):
        return attribute_holds(rule, contact, now)
    if isinstance(rule, ListRule):
        return context.in_list(rule.list_id)
    if isinstance(rule, SegmentRefRule):
        return context.in_segment(rule.segment_id)
    if isinstance(rule, SubscriptionRule):
        return subscription_state(contact, rule.channel) == rule.state
    if isinstance(rule, RandomRule):
        return random_bucket(rule.seed, contact.id) < rule.percent * 100
    return True
