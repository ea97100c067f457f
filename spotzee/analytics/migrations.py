"""Versioned ClickHouse migrations. Applied in order at start-up; each version once.

Every table has ``project_id`` first in its sort key. Tables are documented in docs/analytics.md;
a change to a table is a new migration, never an edit of an applied one.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass

from spotzee.analytics.clickhouse import ClickHouse

log = logging.getLogger(__name__)

# Keeps the sink's insert_deduplication_token effective on plain (non-replicated) MergeTree.
DEDUP = "non_replicated_deduplication_window = 10000"


@dataclass(frozen=True)
class Migration:
    version: int
    name: str
    statements: tuple[str, ...]


MIGRATIONS: tuple[Migration, ...] = (
    Migration(
        1,
        "events, contact history, aliases, audit log, dead letters",
        (
            f"""
            CREATE TABLE IF NOT EXISTS events (
                project_id LowCardinality(String),
                message_id String,
                event_type LowCardinality(String),
                event String,
                contact_id String,
                user_id String,
                anonymous_id String,
                timestamp DateTime64(3, 'UTC'),
                original_timestamp Nullable(DateTime64(3, 'UTC')),
                sent_at Nullable(DateTime64(3, 'UTC')),
                received_at DateTime64(3, 'UTC'),
                properties String,
                traits String,
                context String,
                raw String,
                INDEX idx_contact contact_id TYPE bloom_filter GRANULARITY 4
            ) ENGINE = ReplacingMergeTree
            PARTITION BY toYYYYMM(timestamp)
            ORDER BY (project_id, event, timestamp, contact_id, message_id)
            SETTINGS {DEDUP}
            """,
            f"""
            CREATE TABLE IF NOT EXISTS contact_changes (
                project_id LowCardinality(String),
                contact_id String,
                change_id String,
                changed_at DateTime64(3, 'UTC'),
                source LowCardinality(String),
                path String,
                old_value String,
                new_value String
            ) ENGINE = ReplacingMergeTree
            PARTITION BY toYYYYMM(changed_at)
            ORDER BY (project_id, contact_id, changed_at, change_id)
            SETTINGS {DEDUP}
            """,
            f"""
            CREATE TABLE IF NOT EXISTS contact_aliases (
                project_id LowCardinality(String),
                alias_id String,
                contact_id String,
                merged_at DateTime64(3, 'UTC')
            ) ENGINE = ReplacingMergeTree(merged_at)
            ORDER BY (project_id, alias_id)
            SETTINGS {DEDUP}
            """,
            f"""
            CREATE TABLE IF NOT EXISTS audit_log (
                organisation_id LowCardinality(String),
                project_id LowCardinality(String),
                audit_id String,
                actor_key_id String,
                action LowCardinality(String),
                target String,
                at DateTime64(3, 'UTC'),
                before String,
                after String
            ) ENGINE = ReplacingMergeTree
            ORDER BY (project_id, at, audit_id)
            SETTINGS {DEDUP}
            """,
            f"""
            CREATE TABLE IF NOT EXISTS dead_letters (
                project_id LowCardinality(String),
                dead_letter_id String,
                topic LowCardinality(String),
                partition UInt16,
                offset UInt64,
                key String,
                error String,
                payload String,
                at DateTime64(3, 'UTC')
            ) ENGINE = ReplacingMergeTree
            ORDER BY (project_id, at, dead_letter_id)
            SETTINGS {DEDUP}
            """,
            # Identity resolution at query time (merges never rewrite history rows): every event
            # with the contact it belongs to now, and the id it was recorded under.
            """
            CREATE VIEW IF NOT EXISTS events_resolved AS
            SELECT
                e.* EXCEPT (contact_id),
                if(a.contact_id = '', e.contact_id, a.contact_id) AS contact_id,
                e.contact_id AS recorded_contact_id
            FROM events AS e
            LEFT JOIN (
                SELECT project_id, alias_id, argMax(contact_id, merged_at) AS contact_id
                FROM contact_aliases GROUP BY project_id, alias_id
            ) AS a ON e.project_id = a.project_id AND e.contact_id = a.alias_id
            """,
        ),
    ),
    Migration(
        2,
        "segment membership history",
        (
            f"""
            CREATE TABLE IF NOT EXISTS segment_changes (
                project_id LowCardinality(String),
                segment_id LowCardinality(String),
                contact_id String,
                version UInt32,
                change LowCardinality(String),
                at DateTime64(3, 'UTC'),
                cause String,
                change_id String
            ) ENGINE = ReplacingMergeTree
            PARTITION BY toYYYYMM(at)
            ORDER BY (project_id, segment_id, contact_id, change_id)
            SETTINGS {DEDUP}
            """,
        ),
    ),
    Migration(
        3,
        "journey steps and messages",
        (
            f"""
            CREATE TABLE IF NOT EXISTS journey_steps (
                project_id LowCardinality(String),
                journey_id LowCardinality(String),
                journey_version UInt32,
                run_id String,
                contact_id String,
                step_id LowCardinality(String),
                visit UInt32,
                kind LowCardinality(String),
                at DateTime64(3, 'UTC'),
                seq UInt32,
                detail String
            ) ENGINE = ReplacingMergeTree
            PARTITION BY toYYYYMM(at)
            ORDER BY (project_id, journey_id, run_id, step_id, visit, kind)
            SETTINGS {DEDUP}
            """,
            f"""
            CREATE TABLE IF NOT EXISTS messages (
                project_id LowCardinality(String),
                send_id String,
                contact_id String,
                channel LowCardinality(String),
                template_id String,
                journey_id String,
                run_id String,
                step_id String,
                status LowCardinality(String),
                at DateTime64(3, 'UTC'),
                detail String
            ) ENGINE = ReplacingMergeTree
            PARTITION BY toYYYYMM(at)
            ORDER BY (project_id, send_id, status)
            SETTINGS {DEDUP}
            """,
        ),
    ),
)


def migrate(clickhouse: ClickHouse) -> list[int]:
    """Apply every migration not yet recorded in ``schema_migrations``; returns those applied."""
    clickhouse.command(
        """
        CREATE TABLE IF NOT EXISTS schema_migrations (
            version UInt32, name String, applied_at DateTime64(3, 'UTC') DEFAULT now64(3)
        ) ENGINE = MergeTree ORDER BY version
        """
    )
    _, rows = clickhouse.query("SELECT version FROM schema_migrations")
    done = {int(row[0]) for row in rows}
    applied = []
    for migration in MIGRATIONS:
        if migration.version in done:
            continue
        for statement in migration.statements:
            clickhouse.command(statement)
        clickhouse.insert("schema_migrations", [[migration.version, migration.name]], ["version", "name"])
        log.info("applied ClickHouse migration %d: %s", migration.version, migration.name)
        applied.append(migration.version)
    return applied
