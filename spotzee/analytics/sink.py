"""The analytics sink: writes analytics records to ClickHouse, idempotently.

A runtime hands the sink ranges of records in order (``seq`` ascending, never reused). Rows are
grouped by table and inserted with ``insert_deduplication_token = epoch:table:first:last``, so
re-writing the same range after a crash inserts nothing twice. History mutations (GDPR erase)
run alone, after every row before them, and are idempotent by construction.
"""

from __future__ import annotations

import json
from collections import defaultdict
from collections.abc import Sequence
from datetime import datetime
from typing import Any

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

TABLES: dict[type, str] = {
    EventRow: "events",
    ContactChangeRow: "contact_changes",
    AliasRow: "contact_aliases",
    AuditRow: "audit_log",
    DeadLetterRow: "dead_letters",
    SegmentChangeRow: "segment_changes",
    JourneyStepRow: "journey_steps",
    MessageRow: "messages",
}
MUTATIONS = (EraseHistory,)


def is_mutation(record: AnalyticsRecord) -> bool:
    return isinstance(record, MUTATIONS)


def _columns(model: type) -> list[str]:
    return [name for name in model.model_fields if name != "type"]  # type: ignore[attr-defined]


COLUMNS = {model: _columns(model) for model in TABLES}


class AnalyticsSink:
    def __init__(self, clickhouse: ClickHouse, *, epoch: str = "") -> None:
        """``epoch`` names the sequence the record numbers come from (a data dir's outbox, a
        topic partition), so that a new sequence restarting at 0 never matches old tokens."""
        self.clickhouse = clickhouse
        self.epoch = epoch
        self.rows_written = 0

    def write(self, records: Sequence[tuple[int, AnalyticsRecord]], *, epoch: str | None = None) -> None:
        """Write one range: rows only, or exactly one mutation. ``epoch`` overrides the sink's
        (a Kafka sink numbers records by offset within each topic partition)."""
        if not records:
            return
        if is_mutation(records[0][1]):
            if len(records) != 1:
                raise ValueError("a mutation is written alone")
            self._mutate(records[0][1])
            return
        by_model: dict[type, list[list[Any]]] = defaultdict(list)
        for _, record in records:
            model = type(record)
            by_model[model].append([getattr(record, c) for c in COLUMNS[model]])
        first, last = records[0][0], records[-1][0]
        for model, rows in by_model.items():
            table = TABLES[model]
            self.clickhouse.insert(
                table,
                rows,
                COLUMNS[model],
                settings={
                    "insert_deduplication_token": f"{epoch if epoch is not None else self.epoch}:{table}:{first}:{last}"
                },
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
