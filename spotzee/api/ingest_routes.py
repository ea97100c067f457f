"""Segment-spec ingestion: ``POST /v1/track|identify|page|screen|group|alias|batch``.

Limits and codes follow Segment: 32 KB per event, 500 KB and 2,500 events per batch.
A request is validated whole before anything is appended, so a bad request stores nothing;
2xx is returned only once every event of the request is durable in the log.
"""

from __future__ import annotations

import json
import time
import uuid
import zlib
from dataclasses import dataclass
from datetime import datetime
from typing import Any, Final

import orjson
from fastapi import APIRouter, Request
from pydantic import TypeAdapter, ValidationError

from spotzee.api.bodies import json_depth, read_bounded
from spotzee.api.deps import MetricsDep, ServicesDep, project_of
from spotzee.api.error_handlers import error_responses
from spotzee.api.key_schemes import BasicUsername
from spotzee.domain.event_time import effective_timestamp
from spotzee.domain.traits import TraitError, normalize_traits
from spotzee.errors import InvalidInput, PayloadTooLarge, SpotzeeError, Unauthorized
from spotzee.schemas.events import (
    MAX_EVENT_DEPTH,
    MESSAGE_TYPES,
    IdentifyMessage,
    SegmentMessage,
    timestamp_problem,
    too_deep,
)
from spotzee.schemas.message_data import message_data
from spotzee.schemas.records import IngestedMessage, record_key
from spotzee.schemas.tenancy_models import ApiKey, KeyKind
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


def _check_times(message: SegmentMessage, path: str, received_at: datetime) -> None:
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


def build_record(
    item: Any, *, path: str, project_id: str, received_at: datetime, maybe_deep: bool = True
) -> IngestedMessage:
    """One event of a request as a record, or the 4xx it gets. ``maybe_deep=False`` when the whole
    body was measured no deeper than an event may nest (``_Received.maybe_deep``): the event's own
    walk is skipped, which is most of its cost."""
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
    raw = orjson.dumps(item)
    if len(raw) > MAX_EVENT_BYTES:
        where = path or "body"
        raise PayloadTooLarge(
            f"{where}: event is {len(raw)} bytes; the limit is 32 KB per event",
            details=[{"path": path or "(body)", "reason": "event larger than 32 KB"}],
        )
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
        raw=raw.decode(),
    )


def _write_key(basic: str | None, body: dict[str, Any]) -> str:
    key = basic
    if not key:
        candidate = body.get("writeKey")
        if candidate is None and isinstance(body.get("batch"), list) and body["batch"]:
            first = body["batch"][0]
            candidate = first.get("writeKey") if isinstance(first, dict) else None
        key = candidate if isinstance(candidate, str) else None
    if not key:
        raise Unauthorized("missing write key: send it as the HTTP Basic username or as 'writeKey' in the body")
    return key


@dataclass(frozen=True)
class _Received:
    """A request's body, the write key that may send it, and whether any event in it could nest
    deeper than ``MAX_EVENT_DEPTH``: the body's bracket depth, measured once on its bytes (in C,
    ``json_depth``), bounds every event's (a batch-level ``context`` merged into an event keeps its
    depth), so only a deeper body has its events walked."""

    body: dict[str, Any]
    key: ApiKey
    maybe_deep: bool


async def _authenticated_body(request: Request, services: ServicesDep, basic: str | None, limit: int) -> _Received:
    """The body (at most ``limit`` bytes) and the write key that may send it.

    A key sent in the Basic header is checked before the body is read: a bad key is a 401 whatever
    the body, and an unauthenticated caller can't make the server parse 500 KB. Without one, the
    body's ``writeKey`` is checked before the body's events: a caller without a valid key learns
    nothing about its payload (401 before any 400)."""
    write = (KeyKind.write,)
    header_key = services.tenancy.authenticate(basic, allowed=write) if basic else None
    raw = await read_body(request, limit)
    body = parse_object(raw)
    key = (
        header_key if header_key is not None else services.tenancy.authenticate(_write_key(basic, body), allowed=write)
    )
    return _Received(body, key, maybe_deep=json_depth(raw) > MAX_EVENT_DEPTH)


async def _accept(
    services: ServicesDep, metrics: MetricsDep, items: list[tuple[str, Any]], received: _Received
) -> dict[str, bool]:
    project_id = project_of(received.key)
    received_at = services.clock.now()
    records = [
        build_record(item, path=path, project_id=project_id, received_at=received_at, maybe_deep=received.maybe_deep)
        for path, item in items
    ]
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


def _single(kind: str) -> Any:
    async def endpoint(
        request: Request, services: ServicesDep, metrics: MetricsDep, basic: BasicUsername
    ) -> dict[str, bool]:
        started = time.perf_counter()
        received = await _authenticated_body(request, services, basic, MAX_EVENT_BYTES)
        body = received.body
        declared = body.get("type")
        if declared is not None and declared != kind:
            raise InvalidInput(
                f"type: '{declared}' sent to /v1/{kind}", details=[{"path": "type", "reason": f"must be '{kind}' here"}]
            )
        body["type"] = kind
        result = await _accept(services, metrics, [("", body)], received)
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
    received = await _authenticated_body(request, services, basic, MAX_BATCH_BYTES)
    body = received.body
    batch = body.get("batch")
    if not isinstance(batch, list):
        raise InvalidInput(
            "batch: must be a list of events", details=[{"path": "batch", "reason": "missing or not a list"}]
        )
    if not batch:
        raise InvalidInput("batch: is empty", details=[{"path": "batch", "reason": "no events"}])
    if len(batch) > MAX_BATCH_EVENTS:
        raise InvalidInput(
            f"batch: {len(batch)} events; the limit is {MAX_BATCH_EVENTS} per batch",
            details=[{"path": "batch", "reason": f"more than {MAX_BATCH_EVENTS} events"}],
        )
    shared_context = body.get("context") if isinstance(body.get("context"), dict) else {}
    shared_integrations = body.get("integrations") if isinstance(body.get("integrations"), dict) else {}
    items: list[tuple[str, Any]] = []
    for index, item in enumerate(batch):
        if isinstance(item, dict):
            if shared_context and isinstance(item.get("context", {}), dict):
                item["context"] = {**shared_context, **item.get("context", {})}
            if shared_integrations and isinstance(item.get("integrations", {}), dict):
                item["integrations"] = {**shared_integrations, **item.get("integrations", {})}
            if "sentAt" not in item and "sentAt" in body:
                item["sentAt"] = body["sentAt"]
        items.append((f"batch[{index}]", item))
    result = await _accept(services, metrics, items, received)
    metrics.ingest_latency.labels(endpoint="batch").observe(time.perf_counter() - started)
    return result
