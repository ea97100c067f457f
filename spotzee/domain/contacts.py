"""The contact reducer: how messages, admin patches and merges change a contact's state.

Identity rule (docs/contacts.md): a contact is identified by the app's ``userId``, or by its
``anonymousId`` until a ``userId`` is known. When a call carries both (usually ``identify``; any
call, as in Segment's identity resolution), or an ``alias`` names ``previousId -> userId``, the
profile of the other id is merged into the known one:
values already set on the known profile win, the other profile fills what is missing, and
behavioural counters and event history are combined.
"""

from __future__ import annotations

import bisect
import copy
from collections.abc import Sequence
from datetime import datetime
from typing import Any, TypedDict, Unpack

import msgspec

from spotzee.domain.event_time import effective_timestamp
from spotzee.domain.traits import merge_traits
from spotzee.schemas.contact_models import (
    FIRST_CLASS_FIELDS,
    MAX_DEVICE_TOKEN_CHARS,
    MAX_DEVICES,
    ContactState,
    Device,
    EventStats,
    FieldChange,
    RecentEvent,
)
from spotzee.schemas.message_data import (
    AliasData,
    GroupData,
    IdentifyData,
    MessageData,
    PageData,
    ScreenData,
    TrackData,
    event_name,
)
from spotzee.schemas.structs import replace

BEHAVIOURAL = (TrackData, PageData, ScreenData)


class Outcome(msgspec.Struct, frozen=True, gc=False):
    """What a reducer returns: the new state, the attributes it changed, the ids to merge in. A frozen
    Struct (one per message: several times cheaper to build than a frozen dataclass), plain data left to
    its lists for the cyclic collector (``gc=False``)."""

    state: ContactState
    changes: list[FieldChange] = msgspec.field(default_factory=list)
    merge_sources: list[str] = msgspec.field(default_factory=list)


def new_contact(project_id: str, contact_id: str, now: datetime, *, user_id: str | None = None) -> ContactState:
    return ContactState(project_id=project_id, id=contact_id, user_id=user_id, created_at=now, updated_at=now)


class Arrival(TypedDict):
    """A message as it reached a contact: the contact (project and id), the message's id and
    receipt time, and how many recent events the contact keeps."""

    project_id: str
    contact_id: str
    message_id: str
    received_at: datetime
    recent_limit: int


class Merge(TypedDict):
    """A merge of ``source_id`` into ``target_id`` of a project at ``now``, and how many recent
    events the contact keeps."""

    source_id: str
    target_id: str
    project_id: str
    now: datetime
    recent_limit: int


def apply_message(state: ContactState | None, message: MessageData, **arrival: Unpack[Arrival]) -> Outcome:
    """Apply one Segment-spec message to the contact ``contact_id`` (pure: ``state`` is not changed)."""
    project_id, contact_id, received_at = arrival["project_id"], arrival["contact_id"], arrival["received_at"]
    before = state
    current = (
        _message_copy(state, message)
        if state is not None
        else new_contact(
            project_id, contact_id, received_at, user_id=message.user_id if message.user_id == contact_id else None
        )
    )
    happened = effective_timestamp(message, received_at)
    merge_sources: list[str] = []

    if message.user_id and message.user_id == contact_id:
        current.user_id = message.user_id
        if message.anonymous_id and message.anonymous_id != contact_id:
            merge_sources.append(message.anonymous_id)
    if isinstance(message, AliasData) and message.previous_id != contact_id:
        merge_sources.append(message.previous_id)
    # anonymous_ids lists completed merges only (merge_profiles adds them); until the hand-over
    # arrives, every message carrying both ids asks again, which the source side ignores.
    merge_sources = [s for s in merge_sources if s not in current.anonymous_ids]

    if isinstance(message, IdentifyData):
        _set_attributes(current, message.traits)
    elif isinstance(message, GroupData):
        group, _ = merge_traits(current.groups.get(message.group_id, {}), message.traits)
        current.groups[message.group_id] = group

    current.first_seen = happened if current.first_seen is None else min(current.first_seen, happened)
    current.last_seen = happened if current.last_seen is None else max(current.last_seen, happened)
    device = message.context.get("device") if message.context else None
    if isinstance(device, dict) and device.get("token"):
        current.devices = with_device(current.devices, device, happened)
    if isinstance(message, BEHAVIOURAL):
        name = event_name(message)
        _count(current, name, happened)
        if arrival["recent_limit"] > 0:
            recent = RecentEvent(
                message_id=arrival["message_id"],
                type=message.type,
                event=name,
                timestamp=happened,
                properties=message.properties,  # the message is this record's own, decoded for it
            )
            current.recent_events = _with_recent(current.recent_events, recent, arrival["recent_limit"])

    current.updated_at = max(current.updated_at, received_at)
    current.version += 1
    # Only identify sets attributes (first-class fields and traits): other calls change none, so
    # their diff (two flattenings of every trait) is known to be empty.
    changes = diff_attributes(before, current) if isinstance(message, IdentifyData) else []
    return Outcome(current, changes, merge_sources)


def apply_patch(
    state: ContactState | None,
    traits: dict[str, Any],
    *,
    project_id: str,
    contact_id: str,
    now: datetime,
    remove_devices: Sequence[str] = (),
) -> Outcome:
    """An admin API attribute change: identify semantics, without an event; ``remove_devices``
    takes those push tokens off the contact (reported unregistered by a push provider)."""
    before = state
    current = _working_copy(state) if state is not None else new_contact(project_id, contact_id, now)
    _set_attributes(current, traits)
    if remove_devices:
        current.devices = without_devices(current.devices, list(remove_devices))
    current.updated_at = max(current.updated_at, now)
    current.version += 1
    return Outcome(current, diff_attributes(before, current))


def merge_profiles(target: ContactState | None, source: ContactState | None, **merge: Unpack[Merge]) -> Outcome:
    """Merge the profile of ``source_id`` into ``target_id`` (the known contact wins)."""
    source_id, target_id, now = merge["source_id"], merge["target_id"], merge["now"]
    project_id = merge["project_id"]
    before = target
    merged = _working_copy(target) if target is not None else new_contact(project_id, target_id, now, user_id=target_id)
    aliases = [source_id, *(source.anonymous_ids if source else [])]
    for alias in aliases:
        if alias != target_id and alias not in merged.anonymous_ids:
            merged.anonymous_ids.append(alias)
    if source is not None:
        for name in FIRST_CLASS_FIELDS:
            if getattr(merged, name) is None:
                setattr(merged, name, getattr(source, name))
        merged.traits = _fill_missing(merged.traits, source.traits)
        for group_id, traits in source.groups.items():
            merged.groups[group_id] = _fill_missing(merged.groups.get(group_id, {}), traits)
        merged.first_seen = _min_opt(merged.first_seen, source.first_seen)
        merged.last_seen = _max_opt(merged.last_seen, source.last_seen)
        for name, stats in source.events.items():
            mine = merged.events.get(name)
            merged.events[name] = (
                stats  # never changed in place (see _count): sharing it is safe
                if mine is None
                else EventStats(
                    count=mine.count + stats.count,
                    first_at=min(mine.first_at, stats.first_at),
                    last_at=max(mine.last_at, stats.last_at),
                )
            )
        merged.recent_events = _recent([*merged.recent_events, *source.recent_events], merge["recent_limit"])
        for device in source.devices:
            merged.devices = _with_device(merged.devices, device)
        merged.created_at = min(merged.created_at, source.created_at)
    merged.updated_at = max(merged.updated_at, now)
    merged.version += 1
    return Outcome(merged, diff_attributes(before, merged))


def with_device(devices: list[Device], device: dict[str, Any], seen: datetime) -> list[Device]:
    """``devices`` with the token of a message's ``context.device`` (Segment's convention) seen at
    ``seen``: a known token's ``last_seen`` (and type) updated, a new one added; at most
    ``MAX_DEVICES``, the one seen least recently dropped. A token that is not a non-empty string of
    at most ``MAX_DEVICE_TOKEN_CHARS`` is ignored (the event still counts)."""
    token = device.get("token")
    if not isinstance(token, str) or not token.strip() or len(token) > MAX_DEVICE_TOKEN_CHARS:
        return devices
    kind = device.get("type")
    kind = kind.lower() if isinstance(kind, str) and kind.lower() in ("ios", "android") else "other"
    return _with_device(devices, Device(token=token, type=kind, first_seen=seen, last_seen=seen))


def without_devices(devices: list[Device], tokens: list[str]) -> list[Device]:
    """``devices`` less ``tokens`` (a provider reported them unregistered)."""
    gone = set(tokens)
    return [d for d in devices if d.token not in gone]


def _with_device(devices: list[Device], new: Device) -> list[Device]:
    """A new list (Devices are never changed in place: they may be shared with the input state)."""
    out: list[Device] = []
    for known in devices:
        if known.token == new.token:
            new = Device(
                token=new.token,
                type=new.type if new.last_seen >= known.last_seen else known.type,
                first_seen=min(known.first_seen, new.first_seen),
                last_seen=max(known.last_seen, new.last_seen),
            )
        else:
            out.append(known)
    out.append(new)
    if len(out) > MAX_DEVICES:
        out = sorted(out, key=lambda d: (d.last_seen, d.token))[-MAX_DEVICES:]
    return out


def flatten_attributes(state: ContactState | None) -> dict[str, Any]:
    """First-class fields and trait leaves as ``path -> value`` (the unit of change history)."""
    if state is None:
        return {}
    flat: dict[str, Any] = {
        name: getattr(state, name) for name in FIRST_CLASS_FIELDS if getattr(state, name) is not None
    }
    _flatten(state.traits, "traits", flat)
    return flat


def diff_attributes(before: ContactState | None, after: ContactState) -> list[FieldChange]:
    old, new = flatten_attributes(before), flatten_attributes(after)
    return [
        FieldChange(path=path, old=old.get(path), new=new.get(path))
        for path in sorted(old.keys() | new.keys())
        if old.get(path) != new.get(path)
    ]


def _working_copy(state: ContactState) -> ContactState:
    """A copy the reducer may change without touching ``state``.

    Shallow, with fresh containers: every nested value the reducer changes (traits, groups,
    event stats, recent events) is replaced, never mutated in place, so a deep copy -- most of
    the cost of an event -- is not needed.
    """
    return replace(
        state,
        anonymous_ids=list(state.anonymous_ids),
        groups=dict(state.groups),
        events=dict(state.events),
        recent_events=list(state.recent_events),
    )


def _message_copy(state: ContactState, message: MessageData) -> ContactState:
    """``_working_copy`` for ``apply_message``, copying only the containers a message changes in place:
    ``events`` (counted by behavioural messages) and ``groups`` (a group call). ``anonymous_ids`` is only
    read and ``recent_events`` replaced whole, so the copy shares them with ``state``."""
    if isinstance(message, BEHAVIOURAL):
        return replace(state, events=dict(state.events))
    if isinstance(message, GroupData):
        return replace(state, groups=dict(state.groups))
    return replace(state)


def _set_attributes(state: ContactState, traits: dict[str, Any]) -> None:
    """Apply (already normalised) traits: first-class fields to their columns, the rest merged."""
    rest = dict(traits)
    for name in FIRST_CLASS_FIELDS:
        if name in rest:
            setattr(state, name, rest.pop(name))
    state.traits, _ = merge_traits(state.traits, rest)


def _count(state: ContactState, name: str, happened: datetime) -> None:
    stats = state.events.get(name)
    if stats is None:
        state.events[name] = EventStats(count=1, first_at=happened, last_at=happened)
    else:  # replaced, not mutated: the stats object may be shared with the input state
        state.events[name] = EventStats(
            count=stats.count + 1, first_at=min(stats.first_at, happened), last_at=max(stats.last_at, happened)
        )


def _recent_key(event: RecentEvent) -> tuple[datetime, str]:
    return event.timestamp, event.message_id


def _recent(events: list[RecentEvent], limit: int) -> list[RecentEvent]:
    unique = {e.message_id: e for e in events}
    ordered = sorted(unique.values(), key=_recent_key)
    return ordered[-limit:] if limit > 0 else []


def _with_recent(events: list[RecentEvent], new: RecentEvent, limit: int) -> list[RecentEvent]:
    """``_recent([*events, new], limit)`` for ``events`` as ``_recent`` left them (unique message ids,
    in order): ``new`` inserted at its place (a binary search) instead of a dedupe and a sort per event.
    A message id already kept (a redelivery) takes the general way, which keeps the newer copy."""
    if limit <= 0:
        return []
    if new.message_id in [e.message_id for e in events]:
        return _recent([*events, new], limit)
    at = bisect.bisect_right(events, _recent_key(new), key=_recent_key)
    return [*events[:at], new, *events[at:]][-limit:]


def _fill_missing(known: dict[str, Any], other: dict[str, Any]) -> dict[str, Any]:
    out = copy.deepcopy(known)
    for key, value in other.items():
        if key not in out:
            out[key] = copy.deepcopy(value)
        elif isinstance(out[key], dict) and isinstance(value, dict):
            out[key] = _fill_missing(out[key], value)
    return out


def _flatten(value: dict[str, Any], prefix: str, into: dict[str, Any]) -> None:
    for key, item in value.items():
        path = f"{prefix}.{key}"
        if isinstance(item, dict) and item:
            _flatten(item, path, into)
        else:
            into[path] = item


def _min_opt(a: datetime | None, b: datetime | None) -> datetime | None:
    return b if a is None else a if b is None else min(a, b)


def _max_opt(a: datetime | None, b: datetime | None) -> datetime | None:
    return b if a is None else a if b is None else max(a, b)
