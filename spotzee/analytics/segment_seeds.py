"""Segment backfill through ClickHouse: a rule's event conditions as one query of per-contact seeds.

A new segment version needs, for every contact, its trackers' slots over the contact's past events
(``domain/segments/trackers.py``). Instead of sending each contact its events to replay, the
backfill asks ClickHouse for what each slot keeps, grouped by contact, and only for contacts whose
history matches (``domain/segments/seeding.py`` builds the slots):

- ``count``: ``countIf(matches)``; ``span``: the first and last matching timestamps;
- ``latest``: the K latest matching timestamps after the window's cutoff;
- ``total``, ``sum``, ``min``, ``max``: the matching numeric values (with their time and messageId,
  in event order, after the cutoff for a rolling window): sums stay exact rationals in Python.

"Matching" is the tracker's event name, its absolute range and its property filters compiled to
ClickHouse's JSON functions with the operators' exact semantics (``domain/segments/operators.py``:
types are never coerced, a missing property passes only the negated operators). A filter SQL can't
reproduce exactly (``before``/``after`` read ISO dates, a list compared with ``eq``) leaves its
tracker to the facts path: the contacts with events of its name get those events, as before.

Rows are those of ``events_resolved`` (merges resolved) of type ``track``, one per contact and
messageId: of several rows with one messageId the latest is taken, as the facts path does.
Rolling windows are cut at ``seeded_at - window``, ``seeded_at`` being ``SEED_MARGIN`` before the
query: the seed then holds whatever is still in the window at any clock from ``seeded_at`` on
(the processor prunes it at its own clock, and refuses a seed when its clock is earlier).
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any

import orjson

from spotzee.analytics.clickhouse import ClickHouse
from spotzee.domain.segments.seeding import count_seed, latest_seed, span_seed, total_seed, values_seed
from spotzee.domain.segments.trackers import SlotModel, Tracker
from spotzee.schemas.common import as_utc
from spotzee.schemas.rules import PropertyFilter
from spotzee.schemas.segment_models import HistoryFact

SEED_MARGIN = timedelta(hours=1)  # clocks of the processors may lag the API's by this much
_INT64 = (-(2**63), 2**63 - 1)
_UINT64_MAX = 2**64 - 1
_NUMERIC = "('Int64', 'UInt64', 'Double')"
_ORDER = {"gt": ">", "gte": ">=", "lt": "<", "lte": "<=", "eq": "="}
_NEGATED = {"neq": "eq", "not_contains": "contains", "not_in": "in"}


class Unseedable(Exception):
    """A filter whose semantics SQL can't reproduce exactly: its tracker is replayed from facts."""


@dataclass
class ContactSeeds:
    """One contact's seeds (only trackers with matching history) and the facts of replayed trackers."""

    slots: dict[str, SlotModel] = field(default_factory=dict)
    facts: list[HistoryFact] = field(default_factory=list)


@dataclass
class SeedResult:
    seeded_at: datetime
    replayed: list[str]  # tracker keys built from facts
    contacts: dict[str, ContactSeeds]


class _Params:
    """Query parameters, named in order of use (values are never spliced into the SQL text)."""

    def __init__(self) -> None:
        self.values: dict[str, Any] = {}

    def add(self, value: Any, kind: str) -> str:
        name = f"v{len(self.values)}"
        self.values[name] = value
        return f"{{{name}:{kind}}}"

    def instant(self, at: datetime) -> str:
        return self.add(as_utc(at).strftime("%Y-%m-%d %H:%M:%S.%f"), "DateTime64(6, 'UTC')")


class _Json:
    """SQL over one JSON value: ``args`` are the arguments that reach it (``props, 'a', 'b'``)."""

    def __init__(self, params: _Params, args: str) -> None:
        self.params = params
        self.args = args
        self.type = f"JSONType({args})"

    def string(self) -> str:
        return f"JSONExtractString({self.args})"

    def equals(self, value: Any) -> str:
        """``operators.equal(actual, value)`` for a scalar ``value`` (a list: Unseedable)."""
        if isinstance(value, bool):
            return f"({self.type} = 'Bool' AND JSONExtractBool({self.args}) = {self.params.add(int(value), 'UInt8')})"
        if isinstance(value, str):
            return f"({self.type} = 'String' AND {self.string()} = {self.params.add(value, 'String')})"
        if isinstance(value, int | float):
            return self.numeric("=", value)
        raise Unseedable(f"eq with a {type(value).__name__}")

    def numeric(self, op: str, value: float) -> str:
        """``actual op value`` for a JSON number ``actual`` (ClickHouse compares integers and
        floats exactly, as Python does); anything else is false."""
        literal = _number(self.params, value)
        return (
            f"multiIf({self.type} = 'Int64', JSONExtract({self.args}, 'Int64') {op} {literal}, "
            f"{self.type} = 'UInt64', JSONExtract({self.args}, 'UInt64') {op} {literal}, "
            f"{self.type} = 'Double', JSONExtract({self.args}, 'Float64') {op} {literal}, 0)"
        )

    def ordered(self, op: str, value: Any) -> str:
        """``operators.compare`` for gt/gte/lt/lte: numbers with numbers, strings with strings
        (UTF-8 bytes sort as code points)."""
        if isinstance(value, str):
            return f"({self.type} = 'String' AND {self.string()} {_ORDER[op]} {self.params.add(value, 'String')})"
        if isinstance(value, int | float) and not isinstance(value, bool):
            return self.numeric(_ORDER[op], value)
        raise Unseedable(f"{op} with a {type(value).__name__}")

    def in_array(self, values: Iterable[Any]) -> str:
        """An element of the JSON array equals one of ``values``."""
        element = _Json(self.params, "x")
        any_of = " OR ".join(element.equals(v) for v in values)
        return f"({self.type} = 'Array' AND arrayExists(x -> {any_of}, JSONExtractArrayRaw({self.args})))"


def _number(params: _Params, value: float) -> str:
    if isinstance(value, float):
        if not math.isfinite(value):
            raise Unseedable("a number that is not finite")
        return params.add(value, "Float64")
    if _INT64[0] <= value <= _INT64[1]:
        return params.add(value, "Int64")
    if 0 <= value <= _UINT64_MAX:
        return params.add(value, "UInt64")
    raise Unseedable("an integer beyond 64 bits")


def _read(params: _Params, path: str) -> _Json:
    keys = ", ".join(params.add(part, "String") for part in path.split("."))
    return _Json(params, f"props, {keys}")


def filter_sql(params: _Params, rule: PropertyFilter) -> str:
    """``operators.holds(op, read_path(properties, path), value)`` over the ``props`` column."""
    op, value = rule.op, rule.value
    actual = _read(params, rule.path)
    if op == "exists":
        return f"({actual.type} != 'Null')"
    if op == "not_exists":
        return f"({actual.type} = 'Null')"
    if op in _NEGATED:  # exactly ``not`` the positive operator: a missing value passes
        return f"NOT {filter_sql(params, rule.model_copy(update={'op': _NEGATED[op]}))}"
    if op == "eq":
        return actual.equals(value)
    if op in _ORDER:
        return actual.ordered(op, value)
    if op == "between":
        low, high = value
        return f"({actual.ordered('gte', low)} AND {actual.ordered('lte', high)})"
    if op in ("starts_with", "ends_with"):
        function = "startsWith" if op == "starts_with" else "endsWith"
        return f"({actual.type} = 'String' AND {function}({actual.string()}, {params.add(value, 'String')}))"
    if op == "contains":
        inside = f"({actual.type} = 'String' AND position({actual.string()}, {params.add(value, 'String')}) > 0)"
        return f"({inside} OR {actual.in_array([value])})" if isinstance(value, str) else actual.in_array([value])
    if op == "in":
        return f"({actual.in_array(value)} OR {' OR '.join(actual.equals(v) for v in value)})"
    raise Unseedable(f"the {op} operator")  # before / after: ISO dates parsed as Python does


def _number_of(params: _Params, path: str) -> str:
    """``operators.number(read_path(properties, path))``: a finite JSON number as Float64, else NULL."""
    actual = _read(params, path)
    value = f"JSONExtractFloat({actual.args})"
    return f"if({actual.type} IN {_NUMERIC} AND isFinite({value}), {value}, NULL)"


@dataclass
class _Column:
    tracker: Tracker
    sql: str  # the aggregate over the contact's rows
    nonempty: str  # true when the tracker holds something


class SeedQuery:
    """The seeds of a set of trackers (a segment version's), for one query per backfill."""

    def __init__(self, trackers: Mapping[str, Tracker]) -> None:
        self.trackers = dict(trackers)

    def run(self, clickhouse: ClickHouse, project_id: str, now: datetime) -> SeedResult:
        seeded_at = now - SEED_MARGIN
        params = _Params()
        columns: list[_Column] = []
        replayed: list[Tracker] = []
        for key in sorted(self.trackers):
            tracker = self.trackers[key]
            try:
                column = self._column(params, tracker, seeded_at, len(columns))
            except Unseedable:
                replayed.append(tracker)
                continue
            if column is not None:
                columns.append(column)
        rows = self._rows(params, project_id, seeded_at)
        contacts: dict[str, ContactSeeds] = {}
        if columns:
            sql = self._seed_sql(rows, columns, replayed, params)
            _, found = clickhouse.query(sql, parameters=params.values)
            for contact_id, *values in found:
                slots = {c.tracker.key: slot for c, v in zip(columns, values, strict=False) if (slot := _slot(c, v))}
                contacts[contact_id] = ContactSeeds(slots=slots)
        if replayed:
            self._replay(clickhouse, rows, replayed, params, contacts)
        return SeedResult(seeded_at=seeded_at, replayed=sorted(t.key for t in replayed), contacts=contacts)

    def _rows(self, params: _Params, project_id: str, seeded_at: datetime) -> str:
        """One row per contact and messageId (the latest), of the trackers' event names."""
        names = sorted({t.event for t in self.trackers.values()})
        lower = _lower_bound(self.trackers.values(), seeded_at)
        since = "" if lower is None else f" AND timestamp >= {params.instant(lower)}"
        return (
            "SELECT contact_id, message_id, picked.1 AS ev, picked.2 AS props, ts FROM ("
            "SELECT contact_id, message_id, argMax(tuple(event, properties), timestamp) AS picked, "
            "max(timestamp) AS ts FROM events_resolved "
            f"WHERE project_id = {params.add(project_id, 'String')} AND event_type = 'track' "
            f"AND event IN {params.add(names, 'Array(String)')}{since} "
            "GROUP BY contact_id, message_id)"
        )

    @staticmethod
    def _seed_sql(rows: str, columns: list[_Column], replayed: list[Tracker], params: _Params) -> str:
        selected = ", ".join(f"{c.sql} AS c{i}" for i, c in enumerate(columns))
        nonempty = [c.nonempty for c in columns]
        nonempty += [f"countIf(ev = {params.add(t.event, 'String')}) > 0" for t in replayed]
        return f"SELECT contact_id, {selected} FROM ({rows}) GROUP BY contact_id HAVING {' OR '.join(nonempty)}"

    @staticmethod
    def _column(params: _Params, tracker: Tracker, seeded_at: datetime, index: int) -> _Column | None:
        """The aggregate seeding ``tracker`` (None: it never holds anything)."""
        matches = [f"ev = {params.add(tracker.event, 'String')}", *(filter_sql(params, f) for f in tracker.where)]
        if tracker.bounds is not None:
            low, high = tracker.bounds
            matches.append(f"ts >= {params.instant(low)} AND ts <= {params.instant(high)}")
        if tracker.window is not None:
            matches.append(f"ts > {params.instant(seeded_at - tracker.window)}")
        accepted = " AND ".join(f"({m})" for m in matches)
        name = f"c{index}"
        if tracker.kind == "count":
            return _Column(tracker, f"countIf({accepted})", f"{name} > 0")
        if tracker.kind == "span":
            return _Column(tracker, f"tuple(countIf({accepted}), minIf(ts, {accepted}), maxIf(ts, {accepted}))",
                           f"{name}.1 > 0")  # fmt: skip
        if tracker.kind == "latest":
            if tracker.keep <= 0:
                return None
            latest = f"arraySlice(arrayReverseSort(groupArrayIf(ts, {accepted})), 1, {tracker.keep})"
            return _Column(tracker, latest, f"notEmpty({name})")
        assert tracker.property is not None
        value = _number_of(params, tracker.property)
        values = (
            f"arraySort(groupArrayIf((ts, message_id, assumeNotNull({value})), {accepted} AND {value} IS NOT NULL))"
        )
        if tracker.kind == "total":  # the values alone, in event order
            values = f"arrayMap(entry -> entry.3, {values})"
        return _Column(tracker, values, f"notEmpty({name})")

    @staticmethod
    def _replay(
        clickhouse: ClickHouse, rows: str, replayed: list[Tracker], params: _Params, contacts: dict[str, ContactSeeds]
    ) -> None:
        """The rows of the replayed trackers' event names, as facts, for every contact that has one."""
        names = sorted({t.event for t in replayed})
        sql = (
            f"SELECT contact_id, message_id, ev, ts, props FROM ({rows}) "
            f"WHERE ev IN {params.add(names, 'Array(String)')} ORDER BY contact_id, ts, message_id"
        )
        _, found = clickhouse.query(sql, parameters=params.values)
        for contact_id, message_id, name, timestamp, properties in found:
            fact = HistoryFact(
                message_id=message_id,
                name=name,
                timestamp=as_utc(timestamp),  # ClickHouse's DateTime64 comes back naive: it is UTC
                properties=orjson.loads(properties or "{}"),
            )
            contacts.setdefault(contact_id, ContactSeeds()).facts.append(fact)


def _lower_bound(trackers: Iterable[Tracker], seeded_at: datetime) -> datetime | None:
    """The earliest instant any tracker reads (None: one reads all time). The latest row of a
    messageId is inside it whenever any of its rows is, so filtering before picking is the same."""
    lows: list[datetime] = []
    for tracker in trackers:
        if tracker.window is not None:
            lows.append(seeded_at - tracker.window)
        elif tracker.bounds is not None:
            lows.append(tracker.bounds[0])
        else:
            return None
    return min(lows, default=None)


def _slot(column: _Column, value: Any) -> SlotModel | None:
    tracker = column.tracker
    if tracker.kind == "count":
        return count_seed(int(value))
    if tracker.kind == "span":
        n, first, last = value
        return span_seed(as_utc(first), as_utc(last)) if n else None
    if tracker.kind == "latest":
        return latest_seed(tracker, (as_utc(t) for t in value))
    if tracker.kind == "total":
        return total_seed(value)
    return values_seed(tracker, [(as_utc(t), v) for t, _, v in value])
