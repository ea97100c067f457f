"""The one ClickHouse client (clickhouse-connect, chDB in-process or a server over HTTP).

clickhouse-connect and chDB exceptions are mapped here, at the edge, to Spotzee's errors.
A client is one session (chDB: one handle on the process's single embedded engine), and its
calls are serialised through a lock; the read-only analyst session is a second client.
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Sequence
from typing import Any

import clickhouse_connect
from clickhouse_connect.driver.client import Client
from clickhouse_connect.driver.exceptions import (
    ClickHouseError,
    DatabaseError,
    OperationalError,
    StreamFailureError,
)

from spotzee.errors import AnalyticsError, AnalyticsUnavailable
from spotzee.settings import Settings


class ClickHouse:
    def __init__(
        self,
        dsn: str,
        *,
        username: str = "default",
        password: str = "",
        database: str = "default",
        session_settings: dict[str, Any] | None = None,
    ) -> None:
        self.dsn = dsn
        self._username, self._password, self._database = username, password, database
        self._lock = threading.Lock()
        self._column_types: dict[tuple[str, tuple[str, ...]], list[Any]] = {}
        settings = session_settings or {}
        try:
            if dsn.startswith("chdb://"):
                self.client: Client = clickhouse_connect.get_client(dsn=dsn, settings=settings)
            else:
                self.client = clickhouse_connect.get_client(
                    dsn=dsn, settings=settings, username=username, password=password, database=database
                )
        except ClickHouseError as exc:
            raise AnalyticsUnavailable(f"cannot open ClickHouse at {dsn}: {exc}") from exc

    @classmethod
    def from_settings(cls, settings: Settings) -> ClickHouse:
        if settings.resolved_clickhouse_dsn().startswith("chdb://"):
            (settings.data_dir / "clickhouse").mkdir(parents=True, exist_ok=True)
        return cls(
            settings.resolved_clickhouse_dsn(),
            username=settings.clickhouse_username,
            password=settings.clickhouse_password.get_secret_value(),
            database=settings.clickhouse_database,
        )

    def read_only(self, *, max_seconds: int, max_rows: int, max_memory_bytes: int) -> ClickHouse:
        """Another session, read-only for good, with time, memory and row limits (analyst SQL).

        The limits are set before ``readonly = 1`` and never per query: once a session is
        read-only it can't change settings, and chDB applies some per-call settings with SET
        and restores them after, which a read-only session would refuse. Keeping analysts'
        SQL in its own session also keeps the sink's session writable whatever they send.
        """
        limits = {
            "max_execution_time": max_seconds,
            "max_memory_usage": max_memory_bytes,
            "max_result_rows": max_rows + 1,  # one more than returned, to tell "exactly the limit" from "cut"
            "result_overflow_mode": "break",
            "readonly": 1,
        }
        return ClickHouse(
            self.dsn,
            username=self._username,
            password=self._password,
            database=self._database,
            session_settings=limits,
        )

    def command(
        self, sql: str, *, parameters: dict[str, Any] | None = None, settings: dict[str, Any] | None = None
    ) -> None:
        with self._lock, _mapped():
            self.client.command(sql, parameters=parameters, settings=settings)

    def insert(
        self,
        table: str,
        rows: Sequence[Sequence[Any]],
        columns: Sequence[str],
        *,
        settings: dict[str, Any] | None = None,
    ) -> None:
        """Rows, each a sequence of values in ``columns``' order."""
        self._insert(table, rows, columns, settings=settings, column_oriented=False)

    def insert_columns(
        self,
        table: str,
        data: Sequence[Sequence[Any]],
        columns: Sequence[str],
        *,
        settings: dict[str, Any] | None = None,
    ) -> None:
        """Columns, one sequence of values per name in ``columns``: clickhouse-connect writes each
        straight into the Native block, without pivoting rows first (the sink's bulk path).
        ``DateTime64`` columns take epoch ticks (ints) as they are."""
        self._insert(table, data, columns, settings=settings, column_oriented=True)

    def _insert(
        self,
        table: str,
        data: Sequence[Sequence[Any]],
        columns: Sequence[str],
        *,
        settings: dict[str, Any] | None,
        column_oriented: bool,
    ) -> None:
        with self._lock, _mapped():
            key = (table, tuple(columns))
            types = self._column_types.get(key)
            if types is None:  # one DESCRIBE per table and column list, not one per insert
                context = self.client.create_insert_context(table, list(columns))
                types = self._column_types[key] = list(context.column_types)
            try:
                self.client.insert(
                    table,
                    data if isinstance(data, list) else list(data),
                    column_names=list(columns),
                    column_types=types,
                    settings=settings,
                    column_oriented=column_oriented,
                )
            except Exception:
                self._column_types.pop(key, None)  # the table may have changed: describe it again next time
                raise

    def query(
        self, sql: str, *, parameters: dict[str, Any] | None = None, settings: dict[str, Any] | None = None
    ) -> tuple[list[str], list[list[Any]]]:
        with self._lock, _mapped():
            result = self.client.query(sql, parameters=parameters, settings=settings)
            return list(result.column_names), [list(row) for row in result.result_rows]

    def stream(self, sql: str, consume: Callable[[list[str], list[list[Any]]], bool]) -> list[str]:
        """Hands the result to ``consume`` block by block until it returns False; returns the column
        names. Stopping early keeps a large result from being decoded whole."""
        with self._lock, _mapped():
            try:
                with self.client.query_row_block_stream(sql) as stream:
                    columns = list(stream.source.column_names)
                    for block in stream:
                        if not consume(columns, [list(row) for row in block]):
                            break
                    return columns
            except StreamFailureError as exc:
                # The engine refused the query while streaming (memory limit, bad IN ...): the
                # caller's fault, unless no ClickHouse answer came back at all.
                if "DB::Exception" in str(exc):
                    raise AnalyticsError(_first_line(str(exc))) from exc
                raise

    def ping(self) -> bool:
        try:
            self.query("SELECT 1")
            return True
        except (AnalyticsError, AnalyticsUnavailable):
            return False

    def close(self) -> None:
        with self._lock:
            self.client.close()


class _mapped:
    """Context manager mapping clickhouse-connect errors to Spotzee errors."""

    def __enter__(self) -> None:
        return None

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: object) -> None:
        if isinstance(exc, OperationalError):
            raise AnalyticsUnavailable(f"ClickHouse unavailable: {exc}") from exc
        if isinstance(exc, DatabaseError | ClickHouseError):
            raise AnalyticsError(_first_line(str(exc))) from exc


def _first_line(message: str) -> str:
    text = message.strip().splitlines()[0] if message.strip() else message
    return text[:2000]
