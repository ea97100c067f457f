"""Ingestion's fast path (msgspec) answers exactly as the reference path (the pydantic models) does.

``batch_records`` / ``single_record`` are what the routes run: msgspec first, the models for what it
leaves them; ``reference_batch_records`` / ``reference_single_record`` run the models on everything.
On generated requests -- valid, subtly invalid and plainly broken, with the batch-level fields, write
keys in every place and every JSON spelling -- both give the same records, byte for byte as appended
to the log, or the same error (class, message, field paths). Then: the 32 KB limit and ``raw`` are
the event's bytes as sent, SDK-shaped events really take the fast path, and ``json_depth`` (measured
on every request) agrees with the regular-expression version it replaced.
"""

from __future__ import annotations

import json
import re
import uuid
from datetime import UTC, datetime, timedelta, timezone
from itertools import accumulate
from types import SimpleNamespace
from typing import Any
from unittest.mock import patch

import msgspec
import orjson
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from pydantic import BaseModel, TypeAdapter

from spotzee.api import ingest_routes
from spotzee.api.bodies import json_depth
from spotzee.api.ingest_routes import (
    MAX_EVENT_BYTES,
    batch_records,
    fast_record,
    reference_batch_records,
    reference_single_record,
    single_record,
)
from spotzee.errors import PayloadTooLarge, Unauthorized
from spotzee.schemas.common import UTCDateTime
from spotzee.schemas.events import (
    MESSAGE_TYPES,
    WIRE_TYPES,
    AliasMessage,
    GroupMessage,
    IdentifyMessage,
    PageMessage,
    ScreenMessage,
    TrackMessage,
)
from spotzee.schemas.records import IngestedMessage
from spotzee.schemas.tenancy_models import ApiKey, KeyKind
from spotzee.streams.record_codec import dumps

GOOD_KEY = "pk_good"
NOW = datetime(2030, 6, 1, 12, 0, tzinfo=UTC)
KEY = ApiKey(
    id="key_1",
    kind=KeyKind.write,
    organisation_id="org_1",
    project_id="prj_1",
    hash="",
    prefix="pk_",
    created_at=NOW,
)


class _Tenancy:
    def authenticate(self, raw_key: str, *, allowed: tuple[KeyKind, ...]) -> ApiKey:
        if raw_key != GOOD_KEY:
            raise Unauthorized("unknown or revoked API key")
        return KEY


SERVICES: Any = SimpleNamespace(tenancy=_Tenancy(), clock=SimpleNamespace(now=lambda: NOW))
FIXED_UUID = uuid.UUID(int=7)


def outcome(run: Any, *args: Any) -> tuple[Any, ...]:
    """What a request gives: the appended bytes of its records, or its error (class, message, details)."""
    with patch.object(uuid, "uuid4", lambda: FIXED_UUID):  # the id a message without messageId gets
        try:
            result = run(*args)
        except Exception as exc:  # any error, compared between the paths
            return ("error", type(exc).__name__, str(exc), getattr(exc, "details", None))
    records = result if isinstance(result, list) else [result]
    return ("ok", [dumps(record) for record in records])


# -- generated requests -------------------------------------------------------------------------


def mostly(good: st.SearchStrategy[Any], bad: st.SearchStrategy[Any], odds: int = 15) -> st.SearchStrategy[Any]:
    """``good`` ``odds`` times in ``odds + 1``: most generated messages are valid, so the fast path is
    exercised as much as the models' refusals."""
    return st.integers(0, odds).flatmap(lambda roll: bad if roll == odds else good)


text = st.text(st.characters(codec="utf-8", exclude_categories=("Cs",)), max_size=12)
keys = st.sampled_from(["a", "b", "email", "plan", "x.y", "", "ip", "library", "n"]) | text
scalars = (
    st.none()
    | st.booleans()
    | st.integers(-(2**53), 2**53)
    | st.floats(allow_nan=False, allow_infinity=False)
    | text
    | mostly(st.integers(0, 9), st.integers(-(2**70), 2**70), odds=60)
)
json_values = st.recursive(
    scalars, lambda inner: st.lists(inner, max_size=3) | st.dictionaries(keys, inner, max_size=3), max_leaves=10
)
objects = st.dictionaries(keys, json_values, max_size=4)
not_objects = st.none() | st.lists(scalars, max_size=2) | text | st.integers()
maybe_objects = mostly(objects, not_objects)

good_ids = st.text(min_size=1, max_size=10) | st.integers(-(2**53), 2**53)
ids = mostly(
    good_ids,
    st.just("")
    | st.text(min_size=511, max_size=513)
    | st.integers(-(2**63), 2**64)
    | st.integers(-(2**80), 2**80)
    | st.floats(allow_nan=False, allow_infinity=False)
    | st.booleans()
    | st.none()
    | st.lists(st.integers(), max_size=1),
)

offsets: st.SearchStrategy[Any] = st.sampled_from(
    [None, UTC, timezone(timedelta(hours=14)), timezone(timedelta(hours=-14))]
) | st.builds(lambda minutes: timezone(timedelta(minutes=minutes)), st.integers(-23 * 60 - 59, 23 * 60 + 59))


@st.composite
def time_texts(draw: st.DrawFn, good: bool = False) -> Any:
    """Times as SDKs (``good``: RFC 3339 only), sloppy clients and attackers write them."""
    earliest, latest = (
        (datetime(1890, 1, 1), datetime(2210, 1, 1)) if good else (datetime(1, 1, 2), datetime(9999, 12, 30))
    )
    moment = draw(st.datetimes(min_value=earliest, max_value=latest, timezones=offsets))
    spelling = draw(st.integers(0, 3 if good else 12))
    if spelling == 0:
        return moment.isoformat()
    if spelling == 1:
        return moment.isoformat(timespec="milliseconds").replace("+00:00", "Z")
    if spelling == 2:
        return moment.isoformat(sep=" ", timespec="seconds")
    if spelling == 3:
        return moment.isoformat(timespec="microseconds")
    if spelling == 4:  # more than 6 fractional digits: the readers round differently
        base = moment.replace(tzinfo=None).isoformat(timespec="microseconds")
        return base + draw(st.sampled_from(["5", "49", "999"])) + draw(st.sampled_from(["Z", "+01:00", ""]))
    if spelling == 5:
        return moment.date().isoformat()
    if spelling == 6:
        return moment.isoformat(timespec="minutes")
    if spelling == 7:
        return moment.isoformat().lower()
    if spelling == 8:
        return moment.isoformat().replace(":", "", 1)
    if spelling == 9:
        return str(int(moment.timestamp())) if moment.tzinfo else "1700000000"
    if spelling == 10:
        return draw(st.sampled_from(["2030-02-30T00:00:00Z", "2030-01-01T24:00:00Z", "2030-01-01T23:59:60Z"]))
    if spelling == 11:
        return moment.isoformat() + draw(st.sampled_from([" ", "x", "+01", "+01:00:00", "Z"]))
    return draw(st.integers(0, 2_000_000_000) | st.floats(0, 2e9) | text | st.none())


times = mostly(time_texts(good=True), time_texts())
names_512 = mostly(st.text(min_size=1, max_size=8), st.just("") | st.text(min_size=511, max_size=513) | st.integers())
emails = st.sampled_from(["ada@example.com", "Ada@Example.COM", "not-an-email", "a@b", "x@localhost", 5])
traits = mostly(
    st.fixed_dictionaries(
        {},
        optional={
            "email": emails,
            "phone": st.sampled_from(["+33612345678", "0612345678", "+1 (555) 010-9999", None]),
            "timezone": st.sampled_from(["Europe/Paris", "Mars/Olympus", "UTC"]),
            "locale": st.sampled_from(["en-gb", "xx_yy_zz_1", "pt_BR"]),
            "plan": json_values,
            "a.b.c": json_values,
        },
    )
    | objects,
    st.just({"a..b": 1}) | st.just({"x" * 257: 1}) | not_objects,
)

EXTRA_KEYS = [
    "channel",
    "_metadata",
    "version",
    "options",
    "receivedAt",
    "user_id",
    "anonymous_id",
    "message_id",
    "sent_at",
    "original_timestamp",
    "write_key",
    "group_id",
    "previous_id",
    "name_",
    "batch",
    "unknownField",
]


@st.composite
def events(draw: st.DrawFn, *, typed: bool = True) -> dict[str, Any]:
    """One message; ``typed``: with its ``type`` (a batch's), else as a single call sends it."""
    kind = draw(st.sampled_from(MESSAGE_TYPES))
    event: dict[str, Any] = {}
    if typed:
        tag = draw(mostly(st.just(kind), st.sampled_from(["purchase", 5, None, "missing"])))
        if tag != "missing":
            event["type"] = tag
    elif draw(st.integers(0, 6)) == 0:
        event["type"] = draw(st.sampled_from([kind, "track", None]))
    identity = draw(mostly(st.sampled_from(["user", "anonymous", "both"]), st.just("neither")))
    if identity in ("user", "both"):
        event["userId"] = draw(ids)
    if identity in ("anonymous", "both"):
        event["anonymousId"] = draw(ids)
    own = {
        "track": {"event": names_512, "properties": maybe_objects},
        "identify": {"traits": traits},
        "page": {"name": names_512 | st.none(), "category": names_512 | st.none(), "properties": maybe_objects},
        "screen": {"name": names_512 | st.none(), "category": names_512 | st.none(), "properties": maybe_objects},
        "group": {"groupId": ids, "traits": traits},
        "alias": {"previousId": ids},
    }[kind]
    common = {
        "messageId": ids,
        "timestamp": times,
        "originalTimestamp": times,
        "sentAt": times,
        "context": maybe_objects,
        "integrations": maybe_objects,
        "writeKey": st.sampled_from([GOOD_KEY, "pk_bad", 5, None]),
    }
    required = {"event", "groupId", "previousId"}
    for name, strategy in own.items():
        if (name in required and draw(mostly(st.just(True), st.just(False)))) or draw(st.booleans()):
            event[name] = draw(strategy)
    for name, strategy in common.items():
        if draw(st.integers(0, 2)) == 0:
            event[name] = draw(strategy)
    if draw(st.integers(0, 5)) == 5:  # another type's field, or one Spotzee does not know
        for name in draw(st.lists(st.sampled_from([*EXTRA_KEYS, "event", "traits", "name", "groupId"]), max_size=2)):
            event[name] = draw(json_values)
    if draw(st.integers(0, 12)) == 12:
        event["properties"] = {"blob": "x" * draw(st.sampled_from([32_600, 32_900]))}
    return event


def encode(draw: st.DrawFn, value: Any) -> bytes:
    """``value`` in one of the JSON spellings clients send (compact, spaced, indented, escaped)."""
    spelling = draw(st.sampled_from(["orjson", "compact", "spaced", "indent", "ascii"]))
    if spelling == "orjson":
        try:
            return orjson.dumps(value)
        except TypeError:  # an integer beyond 64 bits
            spelling = "compact"
    separators = (",", ":") if spelling == "compact" else None
    indent = 1 if spelling == "indent" else None
    return json.dumps(value, separators=separators, indent=indent, ensure_ascii=spelling == "ascii").encode()


@st.composite
def batch_bodies(draw: st.DrawFn) -> bytes:
    body: dict[str, Any] = {"batch": draw(st.lists(events(), min_size=1, max_size=4))}
    optional = {
        "context": maybe_objects,
        "integrations": maybe_objects,
        "sentAt": times,
        "writeKey": st.sampled_from([GOOD_KEY, "pk_bad", 5, None]),
    }
    for name, strategy in optional.items():
        if draw(st.integers(0, 2)) == 0:
            body[name] = draw(strategy)
    if draw(st.integers(0, 12)) == 12:
        body["unknownTopLevel"] = draw(json_values)
    if draw(st.integers(0, 20)) == 20:
        body["batch"] = draw(st.sampled_from([[], "nope", None, [1, "x"]]))
    return encode(draw, body)


@st.composite
def single_bodies(draw: st.DrawFn) -> tuple[str, bytes]:
    kind = draw(st.sampled_from(MESSAGE_TYPES))
    return kind, encode(draw, draw(events(typed=False)))


PROPERTY = settings(max_examples=600, deadline=None, suppress_health_check=[HealthCheck.too_slow])


@PROPERTY
@given(body=batch_bodies(), basic=st.sampled_from([None, "", GOOD_KEY]))
def test_a_batch_gets_the_same_answer_from_both_paths(body: bytes, basic: str | None) -> None:
    header_key = KEY if basic else None
    assert outcome(batch_records, SERVICES, basic, header_key, body) == outcome(
        reference_batch_records, SERVICES, basic, header_key, body
    )


@PROPERTY
@given(call=single_bodies(), basic=st.sampled_from([None, GOOD_KEY]))
def test_a_single_call_gets_the_same_answer_from_both_paths(call: tuple[str, bytes], basic: str | None) -> None:
    kind, body = call
    header_key = KEY if basic else None
    assert outcome(single_record, kind, SERVICES, basic, header_key, body) == outcome(
        reference_single_record, kind, SERVICES, basic, header_key, body
    )


@pytest.mark.parametrize(
    "body",
    [
        b"{not json",
        b"[1, 2]",
        b'{"batch": [{"type": "track", "userId": "u", "event": "e", "x": "\xff"}]}',
        b'{"batch": [{"type": "track", "userId": "u", "event": "e", "x": 1e400}]}',
        b'{"batch": [{"type": "track", "userId": "u", "event": "e"}], "x": 1e400}',
        b'{"batch": [{"type": "track", "userId": "u", "event": "e", "properties": {"n": 18446744073709551616}}]}',
        b'{"batch": [{"type": "track", "userId": 18446744073709551617, "event": "e"}]}',
        b'{"batch": [{"type": "track", "userId": "u", "event": "e", "n": -9223372036854775809}]}',
        b'{"batch": [{"type": "track", "userId": "u", "event": "e", "properties": ' + b"[" * 40 + b"]" * 40 + b"}]}",
        b'{"batch": [{"type": "track", "userId": "u", "event": "e", "properties": ' + b"[" * 300 + b"]" * 300 + b"}]}",
        b'{"batch": [{"type": "track", "type": "identify", "userId": "u", "event": "e"}]}',
        b'{"batch": [{"type": "track", "userId": "u", "userId": "v", "event": "e"}]}',
        b'{"batch": [{"type": "track", "userId": "u", "event": "e"}], "batch": []}',
        b'{"batch": [{"type": "identify", "userId": "u", "traits": {"email": "ADA@EXAMPLE.COM"}}]}',
        b'{"batch": [{"type": "track", "userId": "u", "event": "e", "timestamp": "0001-01-01T00:00:00+14:00"}]}',
        b'{"batch": [{"type": "track", "userId": "u", "event": "e"}], "sentAt": 1700000000}',
        b'{"batch": [{"type": "track", "userId": "u", "event": "e", "sentAt": null}], "sentAt": "2030-01-01"}',
        b'{"batch": [5, {"type": "track", "userId": "u", "event": "e"}]}',
        b'{"batch": [{"type": "track", "anonymousId": "a", "event": "e", "writeKey": "pk_good"}]}',
    ],
)
def test_edge_bodies_get_the_same_answer_from_both_paths(body: bytes) -> None:
    for basic, header_key in ((None, None), (GOOD_KEY, KEY)):
        assert outcome(batch_records, SERVICES, basic, header_key, body) == outcome(
            reference_batch_records, SERVICES, basic, header_key, body
        )


# -- the wire Structs mirror the models -----------------------------------------------------------

MODELS: dict[str, type[BaseModel]] = {
    "track": TrackMessage,
    "identify": IdentifyMessage,
    "page": PageMessage,
    "screen": ScreenMessage,
    "group": GroupMessage,
    "alias": AliasMessage,
}


@pytest.mark.parametrize("kind", MESSAGE_TYPES)
def test_every_field_of_a_model_is_read_by_its_wire_struct(kind: str) -> None:
    aliases = {field.alias or name for name, field in MODELS[kind].model_fields.items()} - {"type"}
    wire = {field.encode_name for field in msgspec.structs.fields(WIRE_TYPES[kind])}
    assert aliases <= wire, aliases - wire


# -- bytes as sent ---------------------------------------------------------------------------------


def test_raw_is_the_event_as_sent_and_the_batch_fields_reach_only_the_message() -> None:
    event = b'{ "type" : "track",\n  "userId": "u1", "event": "e", "messageId": "m1" }'
    body = b'{"batch": [' + event + b'], "context": {"ip": "10.0.0.1"}, "sentAt": "2030-06-01T12:00:00Z"}'
    (record,) = batch_records(SERVICES, GOOD_KEY, KEY, body)
    assert record.raw == event.decode()
    assert record.message.context == {"ip": "10.0.0.1"}
    assert record.message.sent_at == datetime(2030, 6, 1, 12, tzinfo=UTC)
    single = b'{"userId": "u1",  "event": "e"}'
    assert single_record("track", SERVICES, GOOD_KEY, KEY, single).raw == single.decode()


def _event_of_size(size: int, *, spaced: bool) -> bytes:
    head = b'{"type": "track", "userId": "u1", "event": "e", "properties": {"blob": "'
    tail = b'"}' + (b" " * 64 if spaced else b"") + b"}"
    return head + b"x" * (size - len(head) - len(tail)) + tail


@pytest.mark.parametrize("spaced", [False, True])
def test_the_32_kb_limit_is_on_the_bytes_as_sent(spaced: bool) -> None:
    at_limit = _event_of_size(MAX_EVENT_BYTES, spaced=spaced)
    over = _event_of_size(MAX_EVENT_BYTES + 1, spaced=spaced)
    assert len(at_limit) == MAX_EVENT_BYTES
    assert batch_records(SERVICES, GOOD_KEY, KEY, b'{"batch": [' + at_limit + b"]}")[0].raw == at_limit.decode()
    for run in (batch_records, reference_batch_records):
        with pytest.raises(PayloadTooLarge) as refused:
            run(SERVICES, GOOD_KEY, KEY, b'{"batch": [{"type": "identify", "userId": "u"}, ' + over + b"]}")
        assert refused.value.details == [{"path": "batch[1]", "reason": "event larger than 32 KB"}]
        assert f"event is {MAX_EVENT_BYTES + 1} bytes" in str(refused.value)


# -- SDK-shaped events take the fast path ---------------------------------------------------------

SDK_EVENTS: list[dict[str, Any]] = [
    {  # analytics.js
        "type": "track",
        "event": "Product Viewed",
        "properties": {"sku": "SKU-1", "price": 19.99},
        "anonymousId": "6ef58b6e-1a6c-4d76-9d69-5f2c4f0e0b8a",
        "messageId": "ajs-next-1d4a1b0b4f7c9a8e1f2a",
        "timestamp": "2030-06-01T11:59:58.123Z",
        "context": {"library": {"name": "analytics.js", "version": "next-1.70.0"}, "page": {"path": "/"}},
        "integrations": {},
        "sentAt": "2030-06-01T11:59:59.001Z",
        "_metadata": {"bundled": ["Segment.io"], "unbundled": []},
        "writeKey": GOOD_KEY,
    },
    {  # analytics-python
        "type": "identify",
        "userId": "user-3",
        "traits": {"email": "user-3@example.com", "plan": "pro"},
        "anonymousId": "anon-3",
        "messageId": "3b241101-e2bb-4255-8caf-4136c566a962",
        "timestamp": "2030-06-01T11:59:58.123456+00:00",
        "context": {"library": {"name": "analytics-python", "version": "2.3.2"}},
        "integrations": {},
    },
    {"type": "page", "userId": "u", "name": "Home", "category": "docs", "properties": {"url": "https://x.io/"}},
    {"type": "screen", "userId": "u", "name": "Dashboard", "channel": "mobile", "version": 2},
    {"type": "group", "userId": "u", "groupId": "acme", "traits": {"size": 3}},
    {"type": "alias", "userId": "u", "previousId": "anon-3"},
    {"type": "track", "userId": 42, "event": "numeric ids", "messageId": 7, "originalTimestamp": "2030-06-01 12:00:00"},
]


@pytest.mark.parametrize("event", SDK_EVENTS, ids=lambda e: str(e["type"]))
def test_sdk_events_take_the_fast_path(event: dict[str, Any]) -> None:
    raw = orjson.dumps(event)
    wire = msgspec.json.decode(raw, type=WIRE_TYPES[event["type"]])
    record = fast_record(wire, raw, path="batch[0]", project_id="prj_1", received_at=NOW)
    assert isinstance(record, IngestedMessage)
    (reference,) = reference_batch_records(SERVICES, GOOD_KEY, KEY, b'{"batch": [' + raw + b"]}")
    assert dumps(record) == dumps(reference) if "messageId" in event else record.message == reference.message


# -- times ------------------------------------------------------------------------------------------

_pydantic_time = TypeAdapter(UTCDateTime)


@settings(max_examples=1500, deadline=None)
@given(value=time_texts())
def test_a_time_the_fast_path_reads_is_the_one_pydantic_reads(value: Any) -> None:
    if not isinstance(value, str):
        return
    fast = ingest_routes._time(value)
    if isinstance(fast, datetime):
        assert _pydantic_time.validate_python(value) == fast
        assert fast.tzinfo is UTC


# -- json_depth ---------------------------------------------------------------------------------------

_STRING = re.compile(rb'"(?:[^"\\]|\\.?)*+"?', re.DOTALL)
_NOT_BRACKETS = bytes(b for b in range(256) if b not in b"[]{}")
_STEP = [1 if b in b"[{" else -1 if b in b"]}" else 0 for b in range(256)]


def regex_depth(body: bytes) -> int:
    """The implementation ``json_depth`` replaced (strings cut out by a regular expression)."""
    brackets = _STRING.sub(b"", body).translate(None, _NOT_BRACKETS)
    return max(accumulate(map(_STEP.__getitem__, brackets)), default=0)


tricky_text = st.text(st.sampled_from(list('ab[]{}"\\/\n')), max_size=8)
documents = st.recursive(
    st.none() | st.integers() | tricky_text,
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(tricky_text, inner, max_size=3),
    max_leaves=30,
)


@settings(max_examples=1000, deadline=None)
@given(document=documents, indent=st.sampled_from([None, 1]))
def test_json_depth_agrees_with_the_regular_expression_on_json(document: Any, indent: int | None) -> None:
    body = json.dumps(document, indent=indent).encode()
    assert json_depth(body) == regex_depth(body)


@pytest.mark.parametrize(
    ("body", "depth"),
    [
        (b"[" * 5000 + b"]" * 5000, 5000),
        (b"[" * 5000, 5000),  # unbalanced: still counted
        (b'{"a":' * 3000 + b"1" + b"}" * 3000, 3000),
        (b'["[[[", {"k": "]]"}]', 2),
        (b'["\\\\", ["\\"[", []]]', 3),
        (b"1", 0),
        (b"", 0),
    ],
)
def test_json_depth_cases(body: bytes, depth: int) -> None:
    assert json_depth(body) == depth
