"""Every table key the processors build, in one place.

A contact's state lives under ``project:contact`` in every contact-keyed table, so the partition
that owns the contact (records are keyed the same way) is the single writer of all of it. Entries
that hang under a contact or a definition add ``\\x00`` and a sub-key, so one prefix scan lists
them (``x00`` sorts before every printable character: a contact's entries are contiguous).
"""

from __future__ import annotations

SEP = "\x00"


def contact_key(project_id: str, contact_id: str) -> str:
    """``contacts``, ``aliases``, ``memberships``: one value per contact."""
    return f"{project_id}:{contact_id}"


def sub_key(owner_key: str, part: str) -> str:
    """An entry under a contact (a dedupe messageId, a journey run) or a definition (a member)."""
    return f"{owner_key}{SEP}{part}"


def sub_prefix(owner_key: str) -> str:
    """The prefix of every ``sub_key`` of ``owner_key``."""
    return owner_key + SEP


def member_key(project_id: str, segment_or_list_id: str, contact_id: str) -> str:
    """``segment_members`` / ``list_members``: one row per member, listed by segment."""
    return f"{project_id}:{segment_or_list_id}{SEP}{contact_id}"


def member_prefix(project_id: str, segment_or_list_id: str) -> str:
    return f"{project_id}:{segment_or_list_id}{SEP}"


def journey_counter_prefix(project_id: str, journey_id: str) -> str:
    """``journey_counters``: a journey's per-step counters (balancers, limits)."""
    return f"{project_id}:{journey_id}:"
