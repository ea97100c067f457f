"""Segment-spec ingestion: ``POST /v1/track|identify|page|screen|group|alias|batch``.

Limits and codes follow Segment: 32 KB per event (its bytes as sent), 500 KB and 2,500 events per
batch. A request is validated whole before anything is appended, so a bad request stores nothing;
2xx is returned only once every event of the request is durable in the log.

Two paths give the same answers. The fast path reads a body with msgspec in C: a batch once, into
its envelope and each event's bytes as sent (``msgspec.Raw``), then each event into a ``*Wire``
Struct (``schemas/events.py``), from which the processor's message is built directly; an event's
size is the length of its bytes, which become the record's ``raw``. The reference path is the
pydantic contract (``build_record``): it takes every event the fast path does not (a numeric id
given as a float, a snake_case key, a time that is not RFC 3339, anything invalid...), so a refusal
always comes from the models, with their field path and reason. A whole request takes the reference
path when its body could read differently in the two JSON readers (an integer beyond 64 bits), is
nested deeper than an event may be, or has an envelope the fast path does not know.
"""

from __future__ import annotations

import json
import re
import time
import uuid
import zlib
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any, Final

import msgspec
import orjson
from fastapi import APIRouter, Request
from msgspec import UNSET
from pydantic import TypeAdapter, ValidationError

from spotzee.api.bodies import json_depth, read_bounded
from spotzee.api.deps import MetricsDep, ServicesDep, project_of
from spotzee.api.error_handlers import error_responses
from spotzee.api.key_schemes import BasicUsername
from spotzee.domain.event_time import Timed, effective_timestamp
from spotzee.domain.traits import TraitError, normalize_traits
from spotzee.errors import InvalidInput, PayloadTooLarge, SpotzeeError, Unauthorized
from spotzee.schemas.events import (
    EARLIEST_TIMESTAMP,
    LATEST_TIMESTAMP,
    MAX_EVENT_DEPTH,
    MESSAGE_TYPES,
    WIRE_TYPES,
    GroupWire,
    IdentifyMessage,
    IdentifyWire,
    PageWire,
    ScreenWire,
    SegmentMessage,
    TrackWire,
    WireMessage,
    timestamp_problem,
    too_deep,
)
from spotzee.schemas.message_data import (
    AliasData,
    GroupData,
    IdentifyData,
    MessageData,
    PageData,
    ScreenData,
    TrackData,
    message_data,
)
from spotzee.schemas.records import IngestedMessage, record_key
from spotzee.schemas.tenancy_models import ApiKey, KeyKind
from spotzee.services.container import Services
from spotzee.streams.record_codec import dumps

router = APIRouter(tags=["ingestion"], responses=error_responses(400, 401, 403, 413, 429, 503, "default"))

MAX_EVENT_BYTES = 32 * 1024
MAX_BATCH_BYTES = 500 * 1024
MAX_BATCH_EVENTS = 2500
_message = TypeAdapter[SegmentMessage](SegmentMessage)


async def read_body(request: Request, limit: int) -> bytes:
    """The request body, gunzipped if needed, refused past ``limit`` bytes (either form)."""
    body = await read_bounded(request, limit)
    if request.headers.get("content-encoding", "").lower() in ("gzip", "x-gzip"):
        inflater = zlib.decompressobj(16 + zlib.MAX_WBITS)
        try:
            body = inflater.decompress(body, limit + 1)
        except zlib.error as exc:
            raise InvalidInput(f"body is not valid gzip: {exc}") from exc
        if len(body) > limit or inflater.unconsumed_tail:
            raise PayloadTooLarge(f"decompressed body exceeds the limit of {limit // 1024} KB")
    return body


def parse_object(body: bytes) -> dict[str, Any]:
    try:
        value = orjson.loads(body)
    except orjson.JSONDecodeError as exc:
        raise InvalidInput(
            f"body is not valid JSON: {exc}", details=[{"path": "(body)", "reason": "invalid JSON"}]
        ) from exc
    if not isinstance(value, dict):
        raise InvalidInput("body must be a JSON object", details=[{"path": "(body)", "reason": "not an object"}])
    if any(_inexact_ids(item) for item in _messages(value)):
        _restore_exact_ids(value, json.loads(body))
    return value


# Segment accepts numeric ids. orjson reads integers beyond 64 bits as floats, so two different
# 20-digit user ids could become one float, and so one contact; those bodies are read again with
# the standard library, whose integers are exact, and the ids keep their digits.
_ID_FIELDS: Final = (
    *("userId", "user_id", "anonymousId", "anonymous_id", "messageId", "message_id"),
    *("groupId", "group_id", "previousId", "previous_id"),
)


def _messages(body: dict[str, Any]) -> list[Any]:
    batch = body.get("batch")
    return [body, *batch] if isinstance(batch, list) else [body]


def _inexact_ids(item: Any) -> bool:
    """Whether an id field of ``item`` was read as a float (a plain loop: this runs for every event)."""
    if not isinstance(item, dict):
        return False
    get = item.get
    for field in _ID_FIELDS:  # noqa: SIM110 -- a loop, not any(<genexpr>): no generator per event
        if type(get(field)) is float:
            return True
    return False


def _restore_exact_ids(fast: dict[str, Any], exact: dict[str, Any]) -> None:
    for item, original in zip(_messages(fast), _messages(exact), strict=True):
        if not isinstance(item, dict) or not isinstance(original, dict):
            continue
        for field in _ID_FIELDS:
            if isinstance(item.get(field), float) and isinstance(original.get(field), int):
                item[field] = str(original[field])


def _details(exc: ValidationError, prefix: str) -> list[dict[str, str]]:
    details = []
    for error in exc.errors():
        loc = list(error["loc"])
        if str(error["type"]).startswith("union_tag"):
            loc = ["type"]
        elif loc and loc[0] in MESSAGE_TYPES:
            loc = loc[1:]  # the discriminator tag pydantic puts first
        reason = str(error["msg"]).removeprefix("Value error, ")
        if not loc and "userId" in reason:
            loc = ["userId"]
        details.append({"path": _join_path(prefix, loc), "reason": reason})
    return details


def _join_path(prefix: str, parts: list[str | int]) -> str:
    path = prefix
    for part in parts:
        path += f"[{part}]" if isinstance(part, int) else (f".{part}" if path else str(part))
    return path or "(body)"


def _check_times(message: Timed, path: str, received_at: datetime) -> None:
    """Every time the event carries, and the time it is filed under after clock-skew correction,
    within the documented range (a year-1 or year-9999 time used to be accepted, then dead-lettered)."""
    for name, value in (
        ("timestamp", message.timestamp),
        ("originalTimestamp", message.original_timestamp),
        ("sentAt", message.sent_at),
    ):
        problem = timestamp_problem(value) if value is not None else None
        if problem is not None:
            where = _join_path(path, [name])
            raise InvalidInput(f"{where}: {problem}", details=[{"path": where, "reason": problem}])
    problem = timestamp_problem(effective_timestamp(message, received_at))
    if problem is not None:
        where = _join_path(path, ["sentAt"])
        reason = f"the clock-skew corrected time (receivedAt - (sentAt - timestamp)) {problem}"
        raise InvalidInput(f"{where}: {reason}", details=[{"path": where, "reason": reason}])


def _event_too_large(path: str, size: int) -> PayloadTooLarge:
    where = path or "body"
    return PayloadTooLarge(
        f"{where}: event is {size} bytes; the limit is 32 KB per event",
        details=[{"path": path or "(body)", "reason": "event larger than 32 KB"}],
    )


def build_record(
    item: Any,
    *,
    path: str,
    project_id: str,
    received_at: datetime,
    maybe_deep: bool = True,
    raw: bytes | None = None,
) -> IngestedMessage:
    """One event of a request as a record, or the 4xx it gets: the reference path, through the
    pydantic models. ``raw`` is the event's bytes as sent (its size, and the record's ``raw``); without
    them (an event built in code, e.g. bench/processor.py) the event's compact JSON stands for them.
    ``maybe_deep=False`` when the whole body was measured no deeper than an event may nest
    (``_Received.maybe_deep``): the event's own walk is skipped, which is most of its cost."""
    if not isinstance(item, dict):
        raise InvalidInput(
            f"{path or 'body'}: each event must be an object",
            details=[{"path": path or "(body)", "reason": "not an object"}],
        )
    deep = too_deep(item) if maybe_deep else None
    if deep is not None:
        where = _join_path(path, deep)
        reason = f"nested deeper than {MAX_EVENT_DEPTH} levels"
        raise InvalidInput(f"{where}: {reason}", details=[{"path": where, "reason": reason}])
    sent = orjson.dumps(item) if raw is None else raw
    if len(sent) > MAX_EVENT_BYTES:
        raise _event_too_large(path, len(sent))
    try:
        message = _message.validate_python(item)
    except ValidationError as exc:
        details = _details(exc, path)
        raise InvalidInput("; ".join(f"{d['path']}: {d['reason']}" for d in details), details=details) from exc
    _check_times(message, path, received_at)
    if isinstance(message, IdentifyMessage):
        prefix = f"{path}.traits" if path else "traits"
        try:
            message.traits = normalize_traits(message.traits, prefix=prefix)
        except TraitError as exc:
            raise InvalidInput(str(exc), details=[{"path": exc.path, "reason": exc.reason}]) from exc
    message_id = message.message_id or f"spz-{uuid.uuid4()}"
    return IngestedMessage(
        project_id=project_id,
        message_id=message_id,
        received_at=received_at,
        message=message_data(message),
        raw=sent.decode(),
    )


# -- the fast path ------------------------------------------------------------------------------


class _Slow:
    """A value the fast path leaves to the models (``_SLOW``)."""


_SLOW: Final = _Slow()

# The times pydantic and datetime.fromisoformat read alike: RFC 3339, up to microseconds. Either
# takes forms the other refuses (fromisoformat ``+01`` offsets, ``20300101T1200``; pydantic numbers as
# Unix time, a date alone, a ``,`` before the fraction); those go to the models.
_RFC3339: Final = re.compile(
    r"[0-9]{4}-[0-9]{2}-[0-9]{2}[T ](?:[01][0-9]|2[0-3]):[0-5][0-9]:[0-5][0-9](?:\.[0-9]{1,6})?"
    r"(?:Z|[+-](?:[01][0-9]|2[0-3]):[0-5][0-9])?"
)


def _time(text: str | None) -> datetime | _Slow | None:
    """A time as the models read it (naive is UTC; converted to UTC), or ``_SLOW``."""
    if text is None:
        return None
    if _RFC3339.fullmatch(text) is None:
        return _SLOW
    try:
        value = datetime.fromisoformat(text)
    except ValueError:  # 2030-02-30
        return _SLOW
    if value.tzinfo is UTC:  # Z and +00:00
        return value
    if value.tzinfo is None:
        return value.replace(tzinfo=UTC)
    try:
        return value.astimezone(UTC)
    except OverflowError:  # year 1 at +14:00 is before year 1 in UTC
        return _SLOW


def _id(value: str | int | None) -> str | None:
    """Segment accepts numeric ids, as strings: an integer's digits (at most 19 here, ``_plain``)."""
    return str(value) if isinstance(value, int) else value


@dataclass(frozen=True, slots=True)
class _Shared:
    """What a batch's top level gives each of its events: ``context`` and ``integrations`` merged
    under the event's own, ``sentAt`` where the event has none (``UNSET``: the body has none;
    ``sent_time``: it read as ``_time`` reads an event's, once per batch)."""

    context: dict[str, Any]
    integrations: dict[str, Any]
    sent_at: Any = UNSET
    sent_time: datetime | _Slow | None = None

    @classmethod
    def of(cls, context: Any, integrations: Any, sent_at: Any) -> _Shared:
        if sent_at is UNSET or sent_at is None:
            sent_time = None
        else:
            sent_time = _time(sent_at) if isinstance(sent_at, str) else _SLOW
        return cls(
            context if isinstance(context, dict) else {},
            integrations if isinstance(integrations, dict) else {},
            sent_at,
            sent_time,
        )

    def apply(self, item: Any) -> None:
        """The merge, on an event read as builtins (the reference path)."""
        if not isinstance(item, dict):
            return
        if self.context and isinstance(item.get("context", {}), dict):
            item["context"] = {**self.context, **item.get("context", {})}
        if self.integrations and isinstance(item.get("integrations", {}), dict):
            item["integrations"] = {**self.integrations, **item.get("integrations", {})}
        if "sentAt" not in item and self.sent_at is not UNSET:
            item["sentAt"] = self.sent_at


_NOTHING_SHARED: Final = _Shared({}, {})


def _message_of(wire: WireMessage, shared: _Shared) -> MessageData | None:
    """The processor's message the models would give for ``wire`` (after the batch's fields), or None
    when the models must read it: they may refuse it (no identity) or read it otherwise (a time)."""
    user_id, anonymous_id = _id(wire.user_id), _id(wire.anonymous_id)
    if not user_id and not anonymous_id:
        return None
    timestamp = _time(wire.timestamp)
    # SDKs often send the same text twice (timestamp and originalTimestamp): read it once
    original = wire.original_timestamp
    original_timestamp = timestamp if original == wire.timestamp else _time(original)
    sent_at = shared.sent_time if wire.sent_at is UNSET else _time(wire.sent_at)
    if isinstance(timestamp, _Slow) or isinstance(original_timestamp, _Slow) or isinstance(sent_at, _Slow):
        return None
    message_id = _id(wire.message_id)
    context = {**shared.context, **wire.context} if shared.context else wire.context
    integrations = {**shared.integrations, **wire.integrations} if shared.integrations else wire.integrations
    # Each type spelled out: keywords from a dict (``**common``) cost msgspec 6x more per message.
    if isinstance(wire, TrackWire):
        return TrackData(
            message_id=message_id,
            user_id=user_id,
            anonymous_id=anonymous_id,
            timestamp=timestamp,
            original_timestamp=original_timestamp,
            sent_at=sent_at,
            context=context,
            integrations=integrations,
            event=wire.event,
            properties=wire.properties,
        )
    if isinstance(wire, IdentifyWire):
        return IdentifyData(
            message_id=message_id,
            user_id=user_id,
            anonymous_id=anonymous_id,
            timestamp=timestamp,
            original_timestamp=original_timestamp,
            sent_at=sent_at,
            context=context,
            integrations=integrations,
            traits=wire.traits,
        )
    if isinstance(wire, PageWire | ScreenWire):
        return (PageData if isinstance(wire, PageWire) else ScreenData)(
            message_id=message_id,
            user_id=user_id,
            anonymous_id=anonymous_id,
            timestamp=timestamp,
            original_timestamp=original_timestamp,
            sent_at=sent_at,
            context=context,
            integrations=integrations,
            name_=wire.name_,
            category=wire.category,
            properties=wire.properties,
        )
    if isinstance(wire, GroupWire):
        return GroupData(
            message_id=message_id,
            user_id=user_id,
            anonymous_id=anonymous_id,
            timestamp=timestamp,
            original_timestamp=original_timestamp,
            sent_at=sent_at,
            context=context,
            integrations=integrations,
            group_id=str(wire.group_id),
            traits=wire.traits,
        )
    if not user_id:
        return None  # alias requires userId
    return AliasData(
        message_id=message_id,
        user_id=user_id,
        anonymous_id=anonymous_id,
        timestamp=timestamp,
        original_timestamp=original_timestamp,
        sent_at=sent_at,
        context=context,
        integrations=integrations,
        previous_id=str(wire.previous_id),
    )


def _times_in_range(message: MessageData, received_at: datetime) -> bool:
    """``_check_times`` finds nothing to refuse (its comparisons inline: it runs for every event)."""
    for value in (message.timestamp, message.original_timestamp, message.sent_at):
        if value is not None and not EARLIEST_TIMESTAMP <= value < LATEST_TIMESTAMP:
            return False
    return EARLIEST_TIMESTAMP <= effective_timestamp(message, received_at) < LATEST_TIMESTAMP


def fast_record(
    wire: WireMessage,
    raw: bytes,
    *,
    path: str,
    project_id: str,
    received_at: datetime,
    shared: _Shared = _NOTHING_SHARED,
) -> IngestedMessage | None:
    """The record ``build_record`` makes of the same event (``raw``: its bytes as sent), from its
    wire form; None when the models must read it (they accept it or name the error). Refuses only
    what the reference path refuses after the models accepted the event: time range, traits."""
    if len(raw) > MAX_EVENT_BYTES:
        return None  # too large: the reference path says so, after the checks that come first
    message = _message_of(wire, shared)
    if message is None:
        return None
    if not _times_in_range(message, received_at):
        _check_times(message, path, received_at)
    if isinstance(message, IdentifyData):
        try:
            message.traits = normalize_traits(message.traits, prefix=f"{path}.traits" if path else "traits")
        except TraitError as exc:
            raise InvalidInput(str(exc), details=[{"path": exc.path, "reason": exc.reason}]) from exc
    return IngestedMessage(
        project_id=project_id,
        message_id=message.message_id or f"spz-{uuid.uuid4()}",
        received_at=received_at,
        message=message,
        raw=raw.decode(),
    )


class _BatchBody(msgspec.Struct, forbid_unknown_fields=True):
    """A ``/v1/batch`` body as the fast path reads it: each event's bytes as sent."""

    batch: list[msgspec.Raw]
    context: Any = None
    integrations: Any = None
    sent_at: Any = msgspec.field(default=UNSET, name="sentAt")
    write_key: Any = msgspec.field(default=None, name="writeKey")


_BATCH_DECODER: Final = msgspec.json.Decoder(_BatchBody)
_WIRE_DECODER: Final = msgspec.json.Decoder(WireMessage)
_SINGLE_DECODERS: Final = {kind: msgspec.json.Decoder(wire) for kind, wire in WIRE_TYPES.items()}

# Integers orjson reads as floats (beyond 64 bits) and msgspec exactly: a run of 20 digits, or 19
# after a minus sign, anywhere in the body (in a string too: rare, and only slower).
_DIGITS: Final = bytes.maketrans(b"123456789", b"000000000")
_LONG_INTEGERS: Final = (b"0" * 20, b"-" + b"0" * 19)


def _plain(body: bytes) -> bool:
    """Whether the fast path may read ``body``: both JSON readers read its numbers alike and no event
    in it can nest deeper than ``MAX_EVENT_DEPTH`` (the body's depth bounds its events', see
    ``_Received``)."""
    digits = body.translate(_DIGITS)
    if any(run in digits for run in _LONG_INTEGERS):
        return False
    return json_depth(body) <= MAX_EVENT_DEPTH


class _Event(msgspec.Struct, frozen=True):
    """One event of a request read by the fast path: its wire form, or (when msgspec refused it)
    the builtins the reference path takes."""

    raw: bytes
    wire: WireMessage | None
    item: Any = None

    def write_key(self) -> Any:
        if self.wire is not None:
            return self.wire.write_key
        return self.item.get("writeKey") if isinstance(self.item, dict) else None


def _event(raw: bytes, decoder: msgspec.json.Decoder[Any]) -> _Event | None:
    """An event's bytes read; None when they are not JSON at all (the reference path refuses the body)."""
    try:
        return _Event(raw, decoder.decode(raw))
    except msgspec.MsgspecError:
        pass
    try:
        return _Event(raw, None, orjson.loads(raw))  # exact: _plain allows no integer orjson reads as a float
    except orjson.JSONDecodeError:
        return None


@dataclass(frozen=True, slots=True)
class _FastBatch:
    body: _BatchBody
    events: list[_Event]


def _read_batch(body: bytes) -> _FastBatch | None:
    """A batch body read by the fast path (nothing is refused here: refusals come after the write
    key is checked); None when the whole request takes the reference path."""
    if not _plain(body):
        return None
    try:
        parsed = _BATCH_DECODER.decode(body)
    except msgspec.MsgspecError:
        return None
    events = []
    for part in parsed.batch:
        event = _event(bytes(part), _WIRE_DECODER)
        if event is None:
            return None
        events.append(event)
    return _FastBatch(parsed, events)


def _read_single(kind: str, body: bytes) -> _Event | None:
    """A single call's body read by the fast path (its ``type`` absent or ``kind``), or None."""
    if not _plain(body):
        return None
    try:
        return _Event(body, _SINGLE_DECODERS[kind].decode(body))
    except msgspec.MsgspecError:
        return None


def _record(event: _Event, *, path: str, project_id: str, received_at: datetime, shared: _Shared) -> IngestedMessage:
    """An event read by the fast path as its record: built from the wire form, else by the models."""
    if event.wire is not None:
        record = fast_record(
            event.wire,
            event.raw,
            path=path,
            project_id=project_id,
            received_at=received_at,
            shared=shared,
        )
        if record is not None:
            return record
    item = orjson.loads(event.raw) if event.item is None else event.item
    shared.apply(item)
    return build_record(
        item, path=path, project_id=project_id, received_at=received_at, maybe_deep=False, raw=event.raw
    )


# -- the write key and the reference path's reading ------------------------------------------------


def _checked_key(basic: str | None, candidate: Any) -> str:
    key = basic or (candidate if isinstance(candidate, str) else None)
    if not key:
        raise Unauthorized("missing write key: send it as the HTTP Basic username or as 'writeKey' in the body")
    return key


def _write_candidate(body: dict[str, Any]) -> Any:
    candidate = body.get("writeKey")
    if candidate is None and isinstance(body.get("batch"), list) and body["batch"]:
        first = body["batch"][0]
        candidate = first.get("writeKey") if isinstance(first, dict) else None
    return candidate


_WRITE: Final = (KeyKind.write,)


def _header_key(services: Services, basic: str | None) -> ApiKey | None:
    """A key sent in the Basic header, checked before the body is read: a bad key is a 401 whatever
    the body, and an unauthenticated caller can't make the server parse 500 KB. Without one, the
    body's ``writeKey`` is checked before the body's events: a caller without a valid key learns
    nothing about its payload (401 before any 400)."""
    return services.tenancy.authenticate(basic, allowed=_WRITE) if basic else None


def _body_key(services: Services, basic: str | None, candidate: Any) -> ApiKey:
    """The key a body names (its ``writeKey``, else its first event's), when no header sent one."""
    return services.tenancy.authenticate(_checked_key(basic, candidate), allowed=_WRITE)


@dataclass(frozen=True)
class _Received:
    """A request's body, the write key that may send it, and whether any event in it could nest
    deeper than ``MAX_EVENT_DEPTH``: the body's bracket depth, measured once on its bytes (in C,
    ``json_depth``), bounds every event's (a batch-level ``context`` merged into an event keeps its
    depth), so only a deeper body has its events walked."""

    body: dict[str, Any]
    key: ApiKey
    maybe_deep: bool


def _reference_body(services: Services, basic: str | None, header_key: ApiKey | None, raw: bytes) -> _Received:
    """The body as the reference path reads it (orjson, ids beyond 64 bits restored), and its key."""
    body = parse_object(raw)
    key = header_key if header_key is not None else _body_key(services, basic, _write_candidate(body))
    return _Received(body, key, maybe_deep=json_depth(raw) > MAX_EVENT_DEPTH)


async def _append(services: ServicesDep, metrics: MetricsDep, records: list[IngestedMessage]) -> dict[str, bool]:
    try:
        await services.runtime.append([(record_key(r), dumps(r)) for r in records])
    except SpotzeeError:
        metrics.ingest_events.labels(status="refused").inc(len(records))
        raise
    metrics.ingest_events.labels(status="accepted").inc(len(records))
    return {"success": True}


def _request_body(description: str, example: dict[str, Any]) -> dict[str, Any]:
    """The body as ``/openapi.json`` shows it. The routes read it themselves (key first, then size,
    gzip and JSON), so FastAPI can't derive it; docs/api.md has every field."""
    schema = {"type": "object", "additionalProperties": True, "description": description}
    return {"requestBody": {"required": True, "content": {"application/json": {"schema": schema, "example": example}}}}


_EXAMPLES: Final[dict[str, dict[str, Any]]] = {
    "track": {"userId": "u1", "event": "Order Completed", "properties": {"total": 42.5}},
    "identify": {"userId": "u1", "traits": {"email": "ada@example.com"}},
    "page": {"userId": "u1", "name": "Pricing"},
    "screen": {"userId": "u1", "name": "Home"},
    "group": {"userId": "u1", "groupId": "g1", "traits": {"name": "Acme"}},
    "alias": {"previousId": "anon-1", "userId": "u1"},
}


def single_record(
    kind: str, services: Services, basic: str | None, header_key: ApiKey | None, raw: bytes
) -> IngestedMessage:
    """The record of a ``/v1/<kind>`` call's body, or the 4xx it gets (the fast path)."""
    event = _read_single(kind, raw)
    if event is None or event.wire is None:
        return reference_single_record(kind, services, basic, header_key, raw)
    key = header_key if header_key is not None else _body_key(services, basic, event.wire.write_key)
    project_id, received_at = project_of(key), services.clock.now()
    record = fast_record(event.wire, raw, path="", project_id=project_id, received_at=received_at)
    if record is not None:
        return record
    item = orjson.loads(raw)
    item["type"] = kind
    return build_record(item, path="", project_id=project_id, received_at=received_at, maybe_deep=False, raw=raw)


def reference_single_record(
    kind: str, services: Services, basic: str | None, header_key: ApiKey | None, raw: bytes
) -> IngestedMessage:
    """The same through the reference path only."""
    received = _reference_body(services, basic, header_key, raw)
    body = received.body
    declared = body.get("type")
    if declared is not None and declared != kind:
        raise InvalidInput(
            f"type: '{declared}' sent to /v1/{kind}", details=[{"path": "type", "reason": f"must be '{kind}' here"}]
        )
    body["type"] = kind
    return build_record(
        body,
        path="",
        project_id=project_of(received.key),
        received_at=services.clock.now(),
        maybe_deep=received.maybe_deep,
        raw=raw,
    )


def _single(kind: str) -> Any:
    async def endpoint(
        request: Request, services: ServicesDep, metrics: MetricsDep, basic: BasicUsername
    ) -> dict[str, bool]:
        started = time.perf_counter()
        header_key = _header_key(services, basic)
        raw = await read_body(request, MAX_EVENT_BYTES)
        result = await _append(services, metrics, [single_record(kind, services, basic, header_key, raw)])
        metrics.ingest_latency.labels(endpoint=kind).observe(time.perf_counter() - started)
        return result

    endpoint.__name__ = f"ingest_{kind}"
    return endpoint


for _kind in MESSAGE_TYPES:
    router.add_api_route(
        f"/v1/{_kind}",
        _single(_kind),
        methods=["POST"],
        summary=f"Segment-spec {_kind} call",
        response_model=dict[str, bool],
        openapi_extra=_request_body(f"One Segment-spec {_kind} message, at most 32 KB.", _EXAMPLES[_kind]),
    )


def _checked_count(count: int) -> None:
    if not count:
        raise InvalidInput("batch: is empty", details=[{"path": "batch", "reason": "no events"}])
    if count > MAX_BATCH_EVENTS:
        raise InvalidInput(
            f"batch: {count} events; the limit is {MAX_BATCH_EVENTS} per batch",
            details=[{"path": "batch", "reason": f"more than {MAX_BATCH_EVENTS} events"}],
        )


def batch_records(
    services: Services, basic: str | None, header_key: ApiKey | None, raw: bytes
) -> list[IngestedMessage]:
    """The records of a ``/v1/batch`` body, or the 4xx it gets (the fast path)."""
    batch = _read_batch(raw)
    if batch is None:
        return reference_batch_records(services, basic, header_key, raw)
    body, events = batch.body, batch.events
    candidate = body.write_key
    if candidate is None and events:
        candidate = events[0].write_key()
    key = header_key if header_key is not None else _body_key(services, basic, candidate)
    _checked_count(len(events))
    project_id, received_at = project_of(key), services.clock.now()
    shared = _Shared.of(body.context, body.integrations, body.sent_at)
    return [
        _record(event, path=f"batch[{index}]", project_id=project_id, received_at=received_at, shared=shared)
        for index, event in enumerate(events)
    ]


def reference_batch_records(
    services: Services, basic: str | None, header_key: ApiKey | None, raw: bytes
) -> list[IngestedMessage]:
    """The same through the reference path only."""
    received = _reference_body(services, basic, header_key, raw)
    body = received.body
    batch = body.get("batch")
    if not isinstance(batch, list):
        raise InvalidInput(
            "batch: must be a list of events", details=[{"path": "batch", "reason": "missing or not a list"}]
        )
    _checked_count(len(batch))
    sent = _sent_events(raw, len(batch))
    shared = _Shared.of(body.get("context"), body.get("integrations"), body.get("sentAt", UNSET))
    project_id, received_at = project_of(received.key), services.clock.now()
    records = []
    for index, item in enumerate(batch):
        shared.apply(item)
        records.append(
            build_record(
                item,
                path=f"batch[{index}]",
                project_id=project_id,
                received_at=received_at,
                maybe_deep=received.maybe_deep,
                raw=sent[index],
            )
        )
    return records


class _SentBatch(msgspec.Struct):
    batch: list[msgspec.Raw]


def _sent_events(body: bytes, count: int) -> list[bytes | None]:
    """Each event's bytes as sent, in a body orjson read: msgspec finds them without reading them
    (it skips what it is not asked for, so it reads whatever orjson did). None where unknown."""
    try:
        events = msgspec.json.decode(body, type=_SentBatch).batch
    except (msgspec.MsgspecError, RecursionError):  # nested ~1,000 deep: refused before its size matters
        events = []
    if len(events) != count:
        return [None] * count
    return [bytes(event) for event in events]


@router.post(
    "/v1/batch",
    summary="Segment-spec batch of up to 2,500 events / 500 KB",
    openapi_extra=_request_body(
        "`batch`: up to 2,500 messages, each with its `type` and at most 32 KB; `context`, `integrations` and "
        "`sentAt` at the top apply to every message. At most 500 KB.",
        {"batch": [{"type": "track", **_EXAMPLES["track"]}, {"type": "identify", **_EXAMPLES["identify"]}]},
    ),
)
async def ingest_batch(
    request: Request, services: ServicesDep, metrics: MetricsDep, basic: BasicUsername
) -> dict[str, bool]:
    started = time.perf_counter()
    header_key = _header_key(services, basic)
    raw = await read_body(request, MAX_BATCH_BYTES)
    result = await _append(services, metrics, batch_records(services, basic, header_key, raw))
    metrics.ingest_latency.labels(endpoint="batch").observe(time.perf_counter() - started)
    return result
