"""Analyst SQL (``POST /api/v1/sql``): one checked SELECT at a time per session, within limits.

Every query goes through three steps, all on the engine that runs it, so the parser that checks a
query is the parser that runs it:

1. ``formatQuerySingleLine`` turns the text into ClickHouse's canonical form of one statement
   (it refuses a second statement and comments cannot hide anything);
2. ``parseQueryToJSON`` of that canonical text is checked by :class:`SqlGuard`;
3. exactly that canonical text runs in a read-only session with memory, time and row limits,
   and its rows are read block by block until the row or byte limit.

The query text travels to steps 1-2 as a bound parameter, never spliced into SQL. Sessions form a
pool of ``max_concurrency``; one more query than that is refused at once (429), never queued.
"""

from __future__ import annotations

import json
import threading
from collections.abc import Callable
from typing import Any

from spotzee.analytics.clickhouse import ClickHouse
from spotzee.analytics.sql_guard import FunctionCatalogue, SqlGuard, SqlRefused, analytics_tables
from spotzee.errors import AnalyticsError, Overloaded


class Analyst:
    def __init__(
        self,
        open_session: Callable[[], ClickHouse],
        *,
        database: str,
        max_rows: int,
        max_result_bytes: int,
        max_concurrency: int,
        max_seconds: int,
    ) -> None:
        self._open_session = open_session
        self.database = database
        self.max_rows = max_rows
        self.max_result_bytes = max_result_bytes
        self.max_concurrency = max_concurrency
        self._retry_after = max(1, min(max_seconds, 5))
        self._lock = threading.Lock()
        self._idle: list[ClickHouse] = []
        self._sessions: list[ClickHouse] = []
        self._running = 0
        self._guard: SqlGuard | None = None
        self._idle.append(self._new_session())  # fail at start-up, not at the first query

    def query(self, sql: str, *, cell: Callable[[Any], Any] = lambda v: v) -> tuple[list[str], list[list[Any]], bool]:
        """Columns, rows (each cell passed through ``cell``) and whether rows were cut at ``max_rows``."""
        session = self._acquire()
        try:
            canonical = self._check(session, sql)
            return self._read(session, canonical, cell)
        finally:
            self._release(session)

    def close(self) -> None:
        with self._lock:
            sessions, self._sessions, self._idle = self._sessions, [], []
        for session in sessions:
            session.close()

    # -- steps ------------------------------------------------------------------------------

    def _check(self, session: ClickHouse, sql: str) -> str:
        canonical = self._parse_call(session, "formatQuerySingleLine", sql)
        parsed = self._parse_call(session, "parseQueryToJSON", canonical)
        try:
            ast = json.loads(parsed)
        except ValueError as exc:
            raise SqlRefused("the query's parse could not be read") from exc
        self._guard_for(session).check(ast)
        return canonical

    @staticmethod
    def _parse_call(session: ClickHouse, function: str, sql: str) -> str:
        try:
            _, rows = session.query(f"SELECT {function}({{q:String}})", parameters={"q": sql})
        except AnalyticsError as exc:
            if "does not support JSON serialization" in exc.message:
                raise SqlRefused("only SELECT statements may run here") from exc
            # A syntax error names the wrapper call that parsed the text: keep the analyst's part.
            raise AnalyticsError(exc.message.split(" In scope SELECT ")[0].rstrip(" :.")) from exc
        return str(rows[0][0])

    def _read(
        self, session: ClickHouse, sql: str, cell: Callable[[Any], Any]
    ) -> tuple[list[str], list[list[Any]], bool]:
        rows: list[list[Any]] = []
        size = 2
        truncated = False

        def consume(columns: list[str], block: list[list[Any]]) -> bool:
            nonlocal size, truncated
            for raw in block:
                if len(rows) == self.max_rows:
                    truncated = True  # the session returns up to max_rows + 1: one more means cut
                    return False
                row = [cell(v) for v in raw]
                size += len(json.dumps(row, default=str, ensure_ascii=False).encode()) + 1
                if size > self.max_result_bytes:
                    raise SqlRefused(
                        f"the result is larger than {self.max_result_bytes} bytes (SPOTZEE_SQL_MAX_RESULT_BYTES);"
                        " select fewer rows or columns, or aggregate"
                    )
                rows.append(row)
            return True

        columns = session.stream(sql, consume)
        return columns, rows, truncated

    def _guard_for(self, session: ClickHouse) -> SqlGuard:
        if self._guard is None:
            _, functions = session.query(
                "SELECT name, is_aggregate, case_insensitive, alias_to, origin, categories FROM system.functions"
            )
            keys = ("name", "is_aggregate", "case_insensitive", "alias_to", "origin", "categories")
            _, combinators = session.query("SELECT name FROM system.aggregate_function_combinators")
            catalogue = FunctionCatalogue.from_system(
                (dict(zip(keys, row, strict=True)) for row in functions), (str(r[0]) for r in combinators)
            )
            self._guard = SqlGuard(database=self.database, tables=analytics_tables(), functions=catalogue)
        return self._guard

    # -- sessions ---------------------------------------------------------------------------

    def _new_session(self) -> ClickHouse:
        session = self._open_session()
        with self._lock:
            self._sessions.append(session)
        return session

    def _acquire(self) -> ClickHouse:
        with self._lock:
            if self._running >= self.max_concurrency:
                raise Overloaded(
                    f"{self.max_concurrency} analyst queries are already running (SPOTZEE_SQL_MAX_CONCURRENCY)",
                    retry_after=self._retry_after,
                )
            self._running += 1
            session = self._idle.pop() if self._idle else None
        if session is None:
            try:
                session = self._new_session()
            except BaseException:
                with self._lock:
                    self._running -= 1
                raise
        return session

    def _release(self, session: ClickHouse) -> None:
        with self._lock:
            self._running -= 1
            if session in self._sessions:
                self._idle.append(session)
