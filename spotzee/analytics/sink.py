"""The analytics sink: writes analytics records to ClickHouse, idempotently.

A runtime hands the sink ranges of records in order (``seq`` ascending, never reused). Rows are
grouped by table and inserted with ``insert_deduplication_token = epoch:table:first:last``, so
re-writing the same range after a crash inserts nothing twice. History mutations (GDPR erase)
run alone, after every row before them, and are idempotent by construction.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from operator import attrgetter
from typing import Any

import msgspec

from spotzee.analytics.clickhouse import ClickHouse
from spotzee.schemas.analytics_models import (
    AliasRow,
    AnalyticsRecord,
    AuditRow,
    ContactChangeRow,
    DeadLetterRow,
    EraseHistory,
    EventRow,
    JourneyStepRow,
    MessageRow,
    SegmentChangeRow,
)

_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
_MS = timedelta(milliseconds=1)


@dataclass(frozen=True)
class Table:
    """Where one row class goes: the table, its columns (the Struct's fields, in order) and which of
    them hold datetimes (sent as epoch milliseconds, what a ``DateTime64(3)`` column stores)."""

    name: str
    columns: tuple[str, ...]
    datetimes: tuple[int, ...]
    getters: tuple[Callable[[Any], Any], ...]

    @classmethod
    def of(cls, name: str, row: type[msgspec.Struct]) -> Table:
        fields = msgspec.structs.fields(row)
        datetimes = tuple(i for i, f in enumerate(fields) if datetime in _types(f.type))
        columns = tuple(f.name for f in fields)
        return cls(name, columns, datetimes, tuple(attrgetter(c) for c in columns))


def _types(annotation: Any) -> tuple[Any, ...]:
    """``datetime | None`` -> (datetime, NoneType); a plain type -> (type,)."""
    return getattr(annotation, "__args__", (annotation,))


TABLES: dict[type, Table] = {
    row: Table.of(name, row)
    for row, name in (
        (EventRow, "events"),
        (ContactChangeRow, "contact_changes"),
        (AliasRow, "contact_aliases"),
        (AuditRow, "audit_log"),
        (DeadLetterRow, "dead_letters"),
        (SegmentChangeRow, "segment_changes"),
        (JourneyStepRow, "journey_steps"),
        (MessageRow, "messages"),
    )
}
MUTATIONS = (EraseHistory,)


def is_mutation(record: AnalyticsRecord) -> bool:
    return isinstance(record, MUTATIONS)


def epoch_ms(moment: datetime | None) -> int | None:
    """Milliseconds since the epoch, floored like clickhouse-connect (a naive datetime is UTC, as the
    rows' former pydantic models made it)."""
    if moment is None:
        return None
    if moment.tzinfo is None:
        moment = moment.replace(tzinfo=UTC)
    return (moment - _EPOCH) // _MS


def _epoch_ms_column(values: Sequence[datetime | None]) -> list[int | None]:
    try:  # the common case, tz-aware datetimes, without a call per value
        return [None if v is None else (v - _EPOCH) // _MS for v in values]
    except TypeError:  # a naive datetime can't be subtracted from an aware one
        return [epoch_ms(v) for v in values]


def columns_of(table: Table, rows: Sequence[msgspec.Struct]) -> list[list[Any]]:
    """The rows of one table as its columns, datetimes as epoch milliseconds: one list per field,
    filled by C loops (no tuple per row, nothing for the garbage collector to count)."""
    columns: list[list[Any]] = [list(map(getter, rows)) for getter in table.getters]
    for index in table.datetimes:
        columns[index] = _epoch_ms_column(columns[index])
    return columns


class AnalyticsSink:
    def __init__(self, clickhouse: ClickHouse, *, epoch: str = "") -> None:
        """``epoch`` names the sequence the record numbers come from (a data dir's outbox, a
        topic partition), so that a new sequence restarting at 0 never matches old tokens."""
        self.clickhouse = clickhouse
        self.epoch = epoch
        self.rows_written = 0

    def write(self, records: Sequence[tuple[int, AnalyticsRecord]], *, epoch: str | None = None) -> None:
        """Write one range: rows only, or exactly one mutation. ``epoch`` overrides the sink's
        (a Kafka sink numbers records by offset within each topic partition).

        Rows are grouped by class (tables in the order their first row came) and each table gets
        one column-oriented insert: no per-row object is built beyond the decoded record."""
        if not records:
            return
        if is_mutation(records[0][1]):
            if len(records) != 1:
                raise ValueError("a mutation is written alone")
            self._mutate(records[0][1])
            return
        by_class: dict[type, list[Any]] = {}
        for _, record in records:
            rows = by_class.get(type(record))
            if rows is None:
                rows = by_class[type(record)] = []
            rows.append(record)
        first, last = records[0][0], records[-1][0]
        prefix = epoch if epoch is not None else self.epoch
        for row_class, rows in by_class.items():
            table = TABLES.get(row_class)
            if table is None:
                raise ValueError(f"a mutation is written alone, not among rows: {row_class.__name__}")
            self.clickhouse.insert_columns(
                table.name,
                columns_of(table, rows),
                table.columns,
                settings={"insert_deduplication_token": f"{prefix}:{table.name}:{first}:{last}"},
            )
            self.rows_written += len(rows)

    def _mutate(self, record: AnalyticsRecord) -> None:
        if isinstance(record, EraseHistory):
            keys = [f"{record.project_id}:{contact_id}" for contact_id in record.contact_ids]
            erase: dict[str, Any] = {"p": record.project_id, "ids": record.contact_ids, "keys": keys}
            statements = (
                "DELETE FROM events WHERE project_id = {p:String} AND "
                "(contact_id IN {ids:Array(String)} OR user_id IN {ids:Array(String)} "
                "OR anonymous_id IN {ids:Array(String)})",
                "DELETE FROM contact_changes WHERE project_id = {p:String} AND contact_id IN {ids:Array(String)}",
                "DELETE FROM contact_aliases WHERE project_id = {p:String} AND "
                "(alias_id IN {ids:Array(String)} OR contact_id IN {ids:Array(String)})",
                "DELETE FROM dead_letters WHERE project_id = {p:String} AND key IN {keys:Array(String)}",
                "DELETE FROM segment_changes WHERE project_id = {p:String} AND contact_id IN {ids:Array(String)}",
                "DELETE FROM journey_steps WHERE project_id = {p:String} AND contact_id IN {ids:Array(String)}",
                "DELETE FROM messages WHERE project_id = {p:String} AND contact_id IN {ids:Array(String)}",
            )
            for statement in statements:
                self.clickhouse.command(statement, parameters=erase)


def json_cell(value: Any) -> Any:
    """Make a ClickHouse cell JSON-serialisable for the SQL API."""
    if isinstance(value, datetime):
        return value.isoformat()
    if isinstance(value, bytes):
        return value.decode(errors="replace")
    if isinstance(value, list | tuple):
        return [json_cell(v) for v in value]
    if isinstance(value, dict):
        return {str(k): json_cell(v) for k, v in value.items()}
    if isinstance(value, int | float | str | bool) or value is None:
        return value
    return json.loads(json.dumps(value, default=str))
