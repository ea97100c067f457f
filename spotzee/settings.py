"""One Settings object, read from the environment (prefix ``SPOTZEE_``)."""

from __future__ import annotations

import ipaddress
from datetime import timedelta
from pathlib import Path
from typing import Annotated, Any, Literal

from pydantic import AfterValidator, AliasChoices, BeforeValidator, Field, SecretStr
from pydantic_settings import BaseSettings, SettingsConfigDict


def _networks(value: list[str]) -> list[str]:
    """Each entry a CIDR (a bad one stops startup with its value, not a send later)."""
    for network in value:
        ipaddress.ip_network(network, strict=False)
    return value


def _seconds(value: Any) -> Any:
    """Durations from the environment may be plain seconds (``86400``)."""
    if isinstance(value, str) and value.strip().isdigit():
        return timedelta(seconds=int(value))
    return value


class Settings(BaseSettings):
    """Every tunable of a Spotzee process. Secrets are ``SecretStr``."""

    # validate_by_name: fields with an environment alias are still set by name (Settings(outbound_...=)).
    model_config = SettingsConfigDict(
        env_prefix="SPOTZEE_", env_file=None, extra="ignore", validate_by_name=True, validate_by_alias=True
    )

    data_dir: Path = Field(default=Path("./spotzee-data"), description="Where RocksDB state, the log and chDB live.")
    host: str = "127.0.0.1"
    port: int = Field(default=8000, ge=0, le=65535)
    public_base_url: str | None = Field(
        default=None, description="Base URL used in links; defaults to the address the server listens on."
    )

    runtime: Literal["embedded", "kafka"] = Field(
        default="embedded", description="embedded: one process, RocksDB log; kafka: Apache Kafka + workers."
    )
    partitions: int = Field(default=8, ge=1, le=1024, description="Partitions of the contact key space.")
    process_batch_size: int = Field(default=1000, ge=1, description="Records per partition per commit.")
    state_cache_entries: int = Field(
        default=20_000,
        ge=0,
        description="Decoded values kept across batches per cached processor table (contacts, segment and "
        "journey state) per store: an embedded data dir, or each partition of a Kafka worker split evenly. "
        "0 disables; about 10 KiB each for a contact with 20 recent events.",
    )
    inbound_max_backlog: int = Field(
        default=200_000, ge=0, description="Unprocessed records above which ingestion answers 429."
    )
    retry_after_seconds: int = Field(default=2, ge=1)
    dedupe_window: Annotated[timedelta, BeforeValidator(_seconds)] = Field(
        default=timedelta(hours=24), description="messageId dedupe window: seconds, or ISO 8601 (PT24H)."
    )
    recent_events_per_contact: int = Field(default=20, ge=0, le=500)
    unsubscribe_secret: SecretStr | None = Field(
        default=None,
        description="Signs unsubscribe links (>= 32 characters); default: made once in <data_dir>/unsubscribe.key.",
    )
    # Where tenant-configured connections (SMTP relays, webhooks, every provider) may go. The
    # SPOTZEE_WEBHOOK_* names are the earlier ones, still read.
    outbound_allow_private: bool = Field(
        default=False,
        validation_alias=AliasChoices("SPOTZEE_OUTBOUND_ALLOW_PRIVATE", "SPOTZEE_WEBHOOK_ALLOW_PRIVATE"),
        description="Allow provider destinations on private, loopback or link-local addresses.",
    )
    outbound_allowed_networks: Annotated[list[str], AfterValidator(_networks)] = Field(
        default_factory=list,
        validation_alias=AliasChoices("SPOTZEE_OUTBOUND_ALLOWED_NETWORKS", "SPOTZEE_WEBHOOK_ALLOWED_NETWORKS"),
        description="CIDRs provider destinations may use despite being private, as JSON: '[\"10.1.0.0/16\"]'.",
    )
    secrets_key: SecretStr | None = Field(
        default=None,
        min_length=32,
        description="Seals provider secrets at rest (>= 32 characters, the same on every API process and "
        "worker); embedded default: made once in <data_dir>/secrets.key.",
    )
    delivery_max_attempts: int = Field(default=5, ge=1, le=50, description="Provider calls per send before failing.")
    delivery_retry_base: float = Field(default=2.0, gt=0, description="Seconds before the first retry (exponential).")
    delivery_concurrency: int = Field(
        default=16,
        ge=1,
        le=1000,
        description="Provider calls in flight at once per delivery agent (per partition on Kafka).",
    )
    delivery_retry_cap: float = Field(default=600.0, gt=0, description="Longest wait between two attempts, seconds.")
    template_render_timeout: float = Field(
        default=2.0,
        gt=0,
        le=60,
        description="Hard deadline, seconds, of one template parse or render in a worker process: past it "
        "the worker is killed and the request gets a 400 (the send fails with a render error).",
    )
    template_workers: int = Field(
        default=2,
        ge=1,
        le=64,
        description="Worker processes that parse and render templates, per API process "
        "and per delivery agent (started on first use).",
    )
    topic_retention_records: int = Field(
        default=1_000_000,
        ge=1000,
        description="Embedded runtime: records kept per output topic (segment-changes) for its consumers.",
    )
    segment_backfill_chunk: int = Field(
        default=1000, ge=1, le=100_000, description="Past events per backfill record of one contact."
    )
    segment_backfill_timeout: float = Field(
        default=600.0, gt=0, description="Seconds a backfill step may wait for processing or the sink."
    )

    clickhouse_dsn: str | None = Field(
        default=None, description="chdb:///path or http(s)://host:port; default chdb://<data_dir>/clickhouse"
    )
    clickhouse_username: str = "default"
    clickhouse_password: SecretStr = SecretStr("")
    clickhouse_database: str = "default"
    # Records per ClickHouse insert at most (a backlog fills it; light load flushes on the interval):
    # chDB's per-insert cost (sort, compress, write a part) is amortised over the batch, 5,000 ->
    # 20,000 measured 63k -> 90k rows/s (bench/sink.py --batch).
    sink_batch_rows: int = Field(default=20_000, ge=1)
    sink_flush_interval: float = Field(default=0.2, gt=0, description="Seconds a row may wait in the sink batch.")

    sql_max_rows: int = Field(default=10_000, ge=1)
    sql_max_seconds: int = Field(default=30, ge=1)
    sql_max_memory_bytes: int = Field(
        default=1_073_741_824,
        ge=16_777_216,
        description="ClickHouse max_memory_usage of one analyst SQL query (1 GiB).",
    )
    sql_max_result_bytes: int = Field(
        default=16_777_216,
        ge=1024,
        description="Largest analyst SQL answer (its rows as JSON, 16 MiB); a larger result is refused with 400.",
    )
    sql_max_concurrency: int = Field(
        default=4, ge=1, le=64, description="Analyst SQL queries running at once; one more is answered 429."
    )

    admin_key: SecretStr | None = Field(default=None, description="Used by `spotzee sql` when no keys.json is found.")

    log_level: str = "INFO"
    log_json: bool = Field(default=False, description="JSON log lines instead of the console renderer.")

    # -- Kafka runtime ------------------------------------------------------------------------
    kafka_bootstrap: str = Field(default="127.0.0.1:9092", description="Comma-separated bootstrap servers.")
    kafka_security_protocol: Literal["PLAINTEXT", "SSL", "SASL_PLAINTEXT", "SASL_SSL"] = "PLAINTEXT"
    kafka_sasl_mechanism: Literal["PLAIN", "SCRAM-SHA-256", "SCRAM-SHA-512"] | None = None
    kafka_sasl_username: str | None = None
    kafka_sasl_password: SecretStr | None = None
    kafka_ssl_cafile: Path | None = None
    kafka_ssl_certfile: Path | None = None
    kafka_ssl_keyfile: Path | None = None
    kafka_topic_prefix: str = Field(default="spotzee.", description="Prefix of every topic name (namespacing).")
    kafka_replication_factor: int = Field(default=1, ge=1, description="Replication factor of created topics.")
    kafka_request_timeout: float = Field(default=10.0, gt=0, description="Seconds before a produce counts as failed.")
    kafka_session_timeout: float = Field(
        default=10.0, gt=0, description="Seconds before a silent worker's partitions go to the others."
    )
    clock_shift_file: Path | None = Field(
        default=None,
        description="Tests and drills only: a file holding seconds added to the system time in every "
        "process that reads it (timers fire as if that much time had passed). Unset in production.",
    )
    worker_id: str = Field(default="worker-1", description="Names this worker's state directory under data_dir.")

    def resolved_clickhouse_dsn(self) -> str:
        if self.clickhouse_dsn:
            return self.clickhouse_dsn
        return f"chdb://{(self.data_dir / 'clickhouse').resolve()}"

    def resolved_public_base_url(self) -> str:
        if self.public_base_url:
            return self.public_base_url.rstrip("/")
        return f"http://{self.host}:{self.port}"
