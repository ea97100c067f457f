"""Issue 9, class 2: analyst SQL reads the analytics tables and nothing else on the host.

Before the guard, ``SELECT file('<data dir>/keys.json')`` answered every raw key: ``readonly=1``
refuses writes and settings, not scalar functions that read files.
"""

from __future__ import annotations

import threading
import time
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.support import Stack, running_stack, wait_until

pytestmark = pytest.mark.runtimes("embedded")


def refused(stack: Stack, query: str) -> dict[str, Any]:
    response = stack.admin.post("/api/v1/sql", json={"query": query})
    assert response.status_code == 400, (query, response.status_code, response.text)
    error: dict[str, Any] = response.json()["error"]
    return error


def test_file_cannot_read_the_keys_or_anything_else(stack: Stack) -> None:
    data_dir = stack.services.settings.data_dir
    secret = stack.keys.admin_key
    assert secret in (data_dir / "keys.json").read_text()
    for query in (
        f"SELECT file('{data_dir / 'keys.json'}')",
        "SELECT file('keys.json')",
        "SELECT file('../keys.json')",
        "SELECT file('/proc/self/environ')",
        f"SELECT FILE('{data_dir / 'keys.json'}')",
        f"SELECT `file`('{data_dir / 'keys.json'}')",
        f"SELECT fIlE('{data_dir / 'unsubscribe.key'}') AS f",
        f"SELECT * APPLY(file) FROM (SELECT '{data_dir / 'keys.json'}' AS p)",
        f"SELECT arrayMap(p -> file(p), ['{data_dir / 'keys.json'}'])",
        f"WITH (SELECT file('{data_dir / 'keys.json'}')) AS k SELECT k",
        f"WITH k AS (SELECT file('{data_dir / 'keys.json'}') AS f) SELECT f FROM k",
        f"SELECT e.event FROM events AS e JOIN (SELECT file('{data_dir / 'keys.json'}') AS f) AS k ON 1 = 1",
        f"SELECT count() FROM events WHERE event IN (SELECT file('{data_dir / 'keys.json'}'))",
    ):
        error = refused(stack, query)
        assert error["code"] == "sql_refused", (query, error)
        assert "file() is not allowed" in error["message"].lower(), (query, error)
        assert secret not in str(error)


def test_table_functions_system_tables_and_dictionaries_are_refused(stack: Stack) -> None:
    cases = {
        "SELECT * FROM url('http://127.0.0.1:9/x', CSV)": "table function url()",
        "SELECT * FROM file('keys.json', RawBLOB)": "table function file()",
        "SELECT * FROM s3('http://127.0.0.1:9/b/k', CSV)": "table function s3()",
        "SELECT * FROM remote('127.0.0.1', system.one)": "table function remote()",
        "SELECT * FROM cluster('default', system.one)": "table function cluster()",
        "SELECT * FROM input('x String')": "table function input()",
        "SELECT * FROM numbers(10)": "table function numbers()",
        "SELECT * FROM executable('id', TSV, 'x String')": "table function executable()",
        "SELECT * FROM dictionary('d')": "table function dictionary()",
        "SELECT name FROM system.tables": "table system.tables",
        "SELECT * FROM system.processes": "table system.processes",
        "SELECT * FROM information_schema.tables": "table information_schema.tables",
        "SELECT * FROM INFORMATION_SCHEMA.TABLES": "table information_schema.tables",
        "SELECT * FROM schema_migrations": "table schema_migrations",
        "SELECT count() FROM events WHERE 'x' IN system.one": "table system.one",
        "SELECT count() FROM events AS e JOIN system.users AS u ON 1 = 1": "table system.users",
        "WITH t AS (SELECT name FROM system.tables) SELECT * FROM t": "table system.tables",
        "SELECT (SELECT any(name) FROM system.databases)": "table system.databases",
        "SELECT arrayMap(x -> (SELECT count() FROM system.tables), [1])": "table system.tables",
        "SELECT dictGet('d', 'a', toUInt64(1))": "dictget()",
        "SELECT dictGetString('d', 'a', toUInt64(1))": "dictgetstring()",
        "SELECT joinGet('j', 'a', 1)": "joinget()",
        "SELECT getSetting('readonly')": "getsetting()",
        "SELECT getServerSetting('tcp_port')": "getserversetting()",
        "SELECT getMacro('shard')": "getmacro()",
        "SELECT hostName()": "hostname()",
        "SELECT currentUser()": "currentuser()",
        "SELECT filesystemAvailable()": "filesystemavailable()",
        "SELECT hasColumnInTable('system', 'tables', 'name')": "hascolumnintable()",
        "SELECT url('http://127.0.0.1:9/')": "url()",
        "SELECT sleep(3)": "sleep()",
        "SELECT aiGenerate('hello')": "aigenerate()",
    }
    for query, reason in cases.items():
        error = refused(stack, query)
        assert error["code"] == "sql_refused", (query, error)
        assert reason in error["message"].lower(), (query, error)
        assert error["details"] == [{"path": "query", "reason": error["message"].removeprefix("query refused: ")}]


def test_only_one_select_without_settings(stack: Stack) -> None:
    cases = {
        "SELECT 1 SETTINGS readonly = 0": "settings clause",
        "SELECT 1 SETTINGS max_memory_usage = 0": "settings clause",
        "SELECT count() FROM (SELECT 1 SETTINGS max_result_rows = 0)": "settings clause",
        "SET readonly = 0": "set / settings",
        "KILL QUERY WHERE 1": "kill query",
        "INSERT INTO events (event) VALUES ('x')": "only select",
        "ALTER TABLE events DELETE WHERE 1": "only select",
        "CREATE TABLE t (a String) ENGINE = Memory": "only select",
        "DROP TABLE events": "only select",
        "TRUNCATE TABLE events": "only select",
        "SHOW TABLES": "only select",
        "DESCRIBE TABLE events": "only select",
        "EXPLAIN SELECT 1": "only select",
        "SELECT 1 FORMAT JSON": "format clause",
        "SELECT 1 INTO OUTFILE '/tmp/spotzee-sql-test'": "into outfile",
        "SELECT {p:String}": "query parameters",
    }
    for query, reason in cases.items():
        error = refused(stack, query)
        assert reason in error["message"].lower(), (query, error)
    assert not Path("/tmp/spotzee-sql-test").exists()
    for query in ("SELECT 1; SELECT 2", "SELECT 1; SELECT file('keys.json')", "SELECT 1;DROP TABLE events"):
        error = refused(stack, query)
        assert "multi-statements are not allowed" in error["message"].lower(), (query, error)
    assert stack.scalar("SELECT count() FROM events") == 0  # the table is still there


def test_analyst_queries_still_work(stack: Stack) -> None:
    project = stack.keys.project_id
    stack.ingest.post("/v1/identify", json={"anonymousId": "anon-1", "traits": {"plan": "pro"}})
    for n in range(3):
        stack.ingest.post(
            "/v1/track", json={"anonymousId": "anon-1", "event": "purchase", "properties": {"amount": 10 + n}}
        )
    stack.ingest.post("/v1/alias", json={"previousId": "anon-1", "userId": "u1"})
    stack.ingest.post("/v1/track", json={"userId": "u1", "event": "purchase", "properties": {"amount": 5}})
    stack.settle()
    wait_until(lambda: stack.scalar("SELECT count() FROM contact_aliases") >= 1)

    assert stack.sql(
        f"SELECT event, count() AS n, sum(JSONExtractFloat(properties, 'amount')) FROM events FINAL "
        f"WHERE project_id = '{project}' AND event_type = 'track' GROUP BY event ORDER BY n DESC"
    ) == [["purchase", 4, 38.0]]
    # events recorded under the anonymous id resolve to the identified contact
    resolved = stack.sql(
        "SELECT r.contact_id, count() FROM events_resolved AS r "
        "LEFT JOIN (SELECT alias_id, contact_id FROM contact_aliases FINAL) AS a ON a.alias_id = r.recorded_contact_id "
        f"WHERE r.project_id = '{project}' AND r.event = 'purchase' GROUP BY r.contact_id"
    )
    assert len(resolved) == 1
    assert resolved[0][1] == 4
    assert stack.sql(
        f"WITH p AS (SELECT JSONExtractString(raw, 'event') AS name, toStartOfDay(timestamp) AS day "
        f"FROM events FINAL WHERE project_id = '{project}' AND event_type = 'track') "
        "SELECT name, uniqExact(day) FROM p GROUP BY name"
    ) == [["purchase", 1]]
    assert stack.sql(
        "SELECT arrayJoin(JSONExtractKeys(properties)) AS k, countIf(k = 'amount'), quantiles(0.5)(1), "
        "multiIf(k = 'amount', 'a', 'b'), if(1, 'y', 'n') FROM events FINAL WHERE event = 'purchase' GROUP BY k"
    ) == [["amount", 4, [1.0], "a", "y"]]
    assert (
        stack.scalar(
            "SELECT uniqExactIf(message_id, event = 'purchase') + countIfOrNull(event != '') * 0 FROM default.events"
        )
        == 4
    )
    everything = stack.scalar("SELECT count() FROM events")
    assert everything == 6  # identify, 3 tracks, alias, track
    assert stack.scalar("WITH [1, 2] AS s SELECT countIf(1 IN s) FROM events") == everything
    assert stack.scalar("SELECT max(n) FROM (SELECT row_number() OVER (ORDER BY timestamp) AS n FROM events)") == 6


def test_memory_and_result_size_are_bounded(stack: Stack) -> None:
    limit = stack.services.settings.sql_max_result_bytes
    big = refused(stack, f"SELECT repeat('x', 1000000) FROM (SELECT arrayJoin(range({limit // 1_000_000 + 2})))")
    assert big["code"] == "sql_refused"
    assert "larger than" in big["message"]
    assert str(limit) in big["message"]
    memory = refused(stack, "SELECT length(groupArray(x)) FROM (SELECT arrayJoin(range(400000000)) AS x)")
    assert memory["code"] == "analytics_error"
    assert "memory limit" in memory["message"].lower()
    assert stack.scalar("SELECT 1") == 1  # the sessions still answer


def test_concurrent_queries_beyond_the_limit_get_429(tmp_path: Path) -> None:
    with running_stack(tmp_path / "data", sql_max_concurrency=1, sql_max_seconds=4) as stack:
        slow: dict[str, Any] = {}
        query = (
            "SELECT count() FROM (SELECT arrayJoin(range(100000)) AS x) AS a "
            "CROSS JOIN (SELECT arrayJoin(range(100000)) AS y) AS b WHERE cityHash64(x, y) = 0"
        )

        def run() -> None:
            with httpx.Client(base_url=stack.base_url, timeout=60) as client:
                response = client.post(
                    "/api/v1/sql", json={"query": query}, headers={"Authorization": f"Bearer {stack.keys.admin_key}"}
                )
                slow["status"] = response.status_code

        thread = threading.Thread(target=run)
        thread.start()
        time.sleep(1.0)  # the slow query has taken the only slot
        busy = stack.admin.post("/api/v1/sql", json={"query": "SELECT 1"})
        thread.join()
        assert busy.status_code == 429, busy.text
        assert int(busy.headers["Retry-After"]) >= 1
        assert slow["status"] == 400  # stopped by max_execution_time, a clean error
        assert stack.scalar("SELECT 1") == 1  # the slot is free again
