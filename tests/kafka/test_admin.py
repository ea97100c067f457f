"""Kafka runtime administration: client config, topic specs, topic creation/description, consumer lag, CLI.

The broker tests run against a real Apache Kafka (the session fixture ``kafka_bootstrap``); each uses its own
topic prefix so they never see each other's topics.
"""

from __future__ import annotations

import json
import ssl
import time
import uuid
from collections.abc import Iterator

import certifi
import faust
import pytest
import typer
from kafka import KafkaAdminClient, KafkaConsumer, KafkaProducer, TopicPartition  # type: ignore[import-untyped, unused-ignore]
from kafka.structs import OffsetAndMetadata  # type: ignore[import-untyped, unused-ignore]
from pydantic import SecretStr
from typer.testing import CliRunner

from spotzee.errors import InvalidInput, LogUnavailable
from spotzee.runtime.kafka.admin import (
    CONTACTS_CHANGELOG,
    PROCESSOR_GROUP,
    SINK_GROUP,
    LagRow,
    TopicMismatch,
    TopicMissing,
    consumer_lag,
    create_topics,
    describe_topics,
    group_id,
    topic_name,
    topic_specs,
    total_lag,
)
from spotzee.runtime.kafka.config import aiokafka_config, faust_broker_settings, kafka_python_config
from spotzee.runtime.kafka.kafka_cli import lag, topics_app
from spotzee.settings import Settings
from spotzee.streams import topics
from tests.kafka_broker import free_port

WEEK_MS = str(7 * 24 * 3600 * 1000)
MONTH_MS = str(30 * 24 * 3600 * 1000)
FAIL_FAST_S = 1.0


def _prefix() -> str:
    return f"t{uuid.uuid4().hex[:12]}."


@pytest.fixture
def settings(kafka_bootstrap: str) -> Settings:
    return Settings(kafka_bootstrap=kafka_bootstrap, kafka_topic_prefix=_prefix(), partitions=3)


@pytest.fixture
def raw_admin(kafka_bootstrap: str) -> Iterator[KafkaAdminClient]:
    client = KafkaAdminClient(bootstrap_servers=kafka_bootstrap, request_timeout_ms=10_000)
    try:
        yield client
    finally:
        client.close()


def _unreachable() -> Settings:
    return Settings(
        kafka_bootstrap=f"127.0.0.1:{free_port()}", kafka_topic_prefix=_prefix(), kafka_request_timeout=FAIL_FAST_S
    )


# -- configuration (no broker) --------------------------------------------------------------------------------


def test_plaintext_configs_carry_only_what_is_set() -> None:
    settings = Settings(kafka_bootstrap="k1:9092, k2:9093,")
    assert kafka_python_config(settings) == {
        "bootstrap_servers": ["k1:9092", "k2:9093"],
        "security_protocol": "PLAINTEXT",
    }
    assert aiokafka_config(settings) == {"bootstrap_servers": ["k1:9092", "k2:9093"], "security_protocol": "PLAINTEXT"}
    assert faust_broker_settings(settings) == {"broker": "kafka://k1:9092;kafka://k2:9093"}


def test_sasl_ssl_configs() -> None:
    settings = Settings(
        kafka_bootstrap="k1:9093",
        kafka_security_protocol="SASL_SSL",
        kafka_sasl_mechanism="SCRAM-SHA-512",
        kafka_sasl_username="spotzee",
        kafka_sasl_password=SecretStr("s3cret"),
        kafka_ssl_cafile=certifi.where(),
    )
    assert kafka_python_config(settings) == {
        "bootstrap_servers": ["k1:9093"],
        "security_protocol": "SASL_SSL",
        "sasl_mechanism": "SCRAM-SHA-512",
        "sasl_plain_username": "spotzee",
        "sasl_plain_password": "s3cret",
        "ssl_cafile": certifi.where(),
    }
    aio = aiokafka_config(settings)
    assert isinstance(aio.pop("ssl_context"), ssl.SSLContext)
    assert aio == {
        "bootstrap_servers": ["k1:9093"],
        "security_protocol": "SASL_SSL",
        "sasl_mechanism": "SCRAM-SHA-512",
        "sasl_plain_username": "spotzee",
        "sasl_plain_password": "s3cret",
    }
    fst = faust_broker_settings(settings)
    credentials = fst["broker_credentials"]
    assert isinstance(credentials, faust.SASLCredentials)
    assert (credentials.username, credentials.password, credentials.mechanism.value) == (
        "spotzee",
        "s3cret",
        "SCRAM-SHA-512",
    )
    assert credentials.protocol.value == "SASL_SSL"
    assert isinstance(credentials.ssl_context, ssl.SSLContext)


def test_ssl_only_and_sasl_default_mechanism() -> None:
    tls = Settings(kafka_bootstrap="k1:9093", kafka_security_protocol="SSL")
    assert set(aiokafka_config(tls)) == {"bootstrap_servers", "security_protocol", "ssl_context"}
    assert isinstance(faust_broker_settings(tls)["broker_credentials"], faust.SSLCredentials)
    sasl = Settings(kafka_security_protocol="SASL_PLAINTEXT", kafka_sasl_username="u", kafka_sasl_password="p")
    assert kafka_python_config(sasl)["sasl_mechanism"] == "PLAIN"
    assert "ssl_context" not in aiokafka_config(sasl)
    assert faust_broker_settings(sasl)["broker_credentials"].protocol.value == "SASL_PLAINTEXT"


def test_bad_security_settings_are_invalid_input() -> None:
    with pytest.raises(InvalidInput, match="SASL_USERNAME"):
        kafka_python_config(Settings(kafka_security_protocol="SASL_SSL"))
    with pytest.raises(InvalidInput, match="SSL context"):
        aiokafka_config(Settings(kafka_security_protocol="SSL", kafka_ssl_cafile="/nonexistent/ca.pem"))
    with pytest.raises(InvalidInput, match="empty"):
        kafka_python_config(Settings(kafka_bootstrap=" , "))


def test_topic_specs() -> None:
    settings = Settings(kafka_topic_prefix="acme.", partitions=6)
    specs = {spec.name: spec for spec in topic_specs(settings)}
    bases = [topics.EVENTS, topics.ANALYTICS, topics.SEGMENT_CHANGES, topics.JOURNEY_ADVANCE, topics.SENDS]
    assert set(specs) == {f"acme.{base}" for base in [*topics.ALL, CONTACTS_CHANGELOG]}
    assert topic_name(settings, topics.EVENTS) == "acme.events"
    for base in bases:
        assert specs[f"acme.{base}"].partitions == 6
        assert specs[f"acme.{base}"].config == {"cleanup.policy": "delete", "retention.ms": WEEK_MS}
    assert specs["acme.dead-letter"].partitions == 6
    assert specs["acme.dead-letter"].config == {"cleanup.policy": "delete", "retention.ms": MONTH_MS}
    assert specs["acme.definitions"].partitions == 1
    assert specs["acme.definitions"].config == {"cleanup.policy": "compact"}
    assert specs["acme.contacts-changelog"].partitions == 6
    assert specs["acme.contacts-changelog"].config == {"cleanup.policy": "compact", "min.compaction.lag.ms": "0"}
    assert all(spec.replication_factor == 1 for spec in specs.values())

    replicated = topic_specs(Settings(kafka_replication_factor=3))
    assert all(spec.replication_factor == 3 for spec in replicated)
    assert all(spec.config["min.insync.replicas"] == "2" for spec in replicated)


# -- topics against the broker ---------------------------------------------------------------------------------


def test_create_is_idempotent_and_topics_match_the_spec(settings: Settings) -> None:
    expected = [spec.name for spec in topic_specs(settings)]
    assert create_topics(settings) == expected
    assert create_topics(settings) == []

    described = {item["name"]: item for item in describe_topics(settings)}
    assert list(described) == expected
    for spec in topic_specs(settings):
        item = described[spec.name]
        assert item["exists"] is True
        assert item["partitions"] == item["expected_partitions"] == spec.partitions
        assert item["replication_factor"] == 1
        for key, value in spec.config.items():
            assert item["configs"][key] == value, (spec.name, key)
    assert described[topic_name(settings, topics.EVENTS)]["partitions"] == 3
    assert described[topic_name(settings, topics.DEFINITIONS)]["partitions"] == 1
    assert described[topic_name(settings, topics.DEFINITIONS)]["configs"]["cleanup.policy"] == "compact"
    assert described[topic_name(settings, CONTACTS_CHANGELOG)]["configs"]["cleanup.policy"] == "compact"
    assert described[topic_name(settings, topics.DEAD_LETTER)]["configs"]["retention.ms"] == MONTH_MS


def test_describe_before_create_reports_missing_topics(settings: Settings) -> None:
    described = describe_topics(settings)
    assert [item["exists"] for item in described] == [False] * len(topic_specs(settings))
    assert all(item["partitions"] is None and item["configs"] == {} for item in described)


def test_create_only_adds_what_is_missing(settings: Settings, raw_admin: KafkaAdminClient) -> None:
    events = topic_name(settings, topics.EVENTS)
    raw_admin.create_topics({events: {"num_partitions": 3, "replication_factor": 1}}, wait_for_metadata=True)
    created = create_topics(settings)
    assert events not in created
    assert sorted(created) == sorted(spec.name for spec in topic_specs(settings) if spec.name != events)


def test_mismatched_partition_count_is_a_clear_error(settings: Settings, raw_admin: KafkaAdminClient) -> None:
    events = topic_name(settings, topics.EVENTS)
    raw_admin.create_topics({events: {"num_partitions": 2, "replication_factor": 1}}, wait_for_metadata=True)
    with pytest.raises(TopicMismatch) as caught:
        create_topics(settings)
    assert f"{events} has 2 (expected 3)" in caught.value.message
    assert "SPOTZEE_PARTITIONS" in caught.value.message
    # Nothing else was created: the mismatch is found before creating anything.
    assert [item["name"] for item in describe_topics(settings) if item["exists"]] == [events]


# -- consumer lag ----------------------------------------------------------------------------------------------


def _produce(settings: Settings, topic: str, counts: dict[int, int]) -> None:
    producer = KafkaProducer(**kafka_python_config(settings), acks="all")
    try:
        futures = [
            producer.send(topic, key=f"p:c{i}".encode(), value=b"{}", partition=partition)
            for partition, count in counts.items()
            for i in range(count)
        ]
        producer.flush(timeout=10)
        for future in futures:
            future.get(timeout=10)
    finally:
        producer.close(timeout=10)


def _commit(settings: Settings, group: str, offsets: dict[TopicPartition, int]) -> None:
    consumer = KafkaConsumer(**kafka_python_config(settings), group_id=group, enable_auto_commit=False)
    try:
        consumer.commit({tp: OffsetAndMetadata(offset, "", -1) for tp, offset in offsets.items()})
    finally:
        consumer.close(autocommit=False)


def test_lag_is_end_minus_committed(settings: Settings) -> None:
    create_topics(settings)
    events = topic_name(settings, topics.EVENTS)
    analytics = topic_name(settings, topics.ANALYTICS)
    _produce(settings, events, {0: 5, 1: 3})
    _produce(settings, analytics, {2: 4})

    # Spotzee's own groups have committed nothing under this prefix: everything produced is lag.
    rows = consumer_lag(settings)
    assert rows == [
        LagRow(group_id(settings, PROCESSOR_GROUP), events, 0, 0, 5, 5),
        LagRow(group_id(settings, PROCESSOR_GROUP), events, 1, 0, 3, 3),
        LagRow(group_id(settings, PROCESSOR_GROUP), events, 2, 0, 0, 0),
        LagRow(group_id(settings, SINK_GROUP), analytics, 0, 0, 0, 0),
        LagRow(group_id(settings, SINK_GROUP), analytics, 1, 0, 0, 0),
        LagRow(group_id(settings, SINK_GROUP), analytics, 2, 0, 4, 4),
    ]
    assert total_lag(settings, PROCESSOR_GROUP) == 8
    assert total_lag(settings, SINK_GROUP) == 4

    # A group that committed part of the way: every partition of the topic it reads is reported.
    group = f"g-{uuid.uuid4().hex[:12]}"
    _commit(settings, group_id(settings, group), {TopicPartition(events, 0): 2, TopicPartition(events, 1): 3})
    assert consumer_lag(settings, [group]) == [
        LagRow(group_id(settings, group), events, 0, 2, 5, 3),
        LagRow(group_id(settings, group), events, 1, 3, 3, 0),
        LagRow(group_id(settings, group), events, 2, 0, 0, 0),
    ]
    assert total_lag(settings, group) == 3

    _produce(settings, events, {1: 2})
    assert total_lag(settings, group) == 5


def test_lag_needs_the_topics(settings: Settings) -> None:
    with pytest.raises(TopicMissing, match="topics create"):
        consumer_lag(settings)
    assert consumer_lag(settings, [f"g-{uuid.uuid4().hex[:12]}"]) == []


# -- no broker -------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("call", [create_topics, describe_topics, consumer_lag])
def test_missing_broker_fails_fast_with_log_unavailable(call: object) -> None:
    settings = _unreachable()
    started = time.monotonic()
    with pytest.raises(LogUnavailable, match=settings.kafka_bootstrap):
        call(settings)  # type: ignore[operator]
    assert time.monotonic() - started < FAIL_FAST_S + 3


# -- CLI -------------------------------------------------------------------------------------------------------


def _cli() -> typer.Typer:
    app = typer.Typer(add_completion=False)
    app.add_typer(topics_app, name="topics")
    app.command("lag")(lag)
    return app


def test_cli_topics_create_describe_and_lag(settings: Settings) -> None:
    runner = CliRunner()
    env = {"SPOTZEE_KAFKA_TOPIC_PREFIX": settings.kafka_topic_prefix, "SPOTZEE_PARTITIONS": "5"}
    common = ["--bootstrap", settings.kafka_bootstrap]
    events = topic_name(settings, topics.EVENTS)

    first = runner.invoke(_cli(), ["topics", "create", *common, "--partitions", "3"], env=env)
    assert first.exit_code == 0, first.output
    assert f"created  {events}" in first.stdout
    assert "8 created, 0 already present" in first.stdout
    again = runner.invoke(_cli(), ["topics", "create", *common, "--partitions", "3"], env=env)
    assert again.exit_code == 0, again.output
    assert "0 created, 8 already present" in again.stdout

    table = runner.invoke(_cli(), ["topics", "describe", *common, "--partitions", "3"], env=env)
    assert table.exit_code == 0, table.output
    line = next(row for row in table.stdout.splitlines() if row.startswith(f"{events} "))
    assert [cell.strip() for cell in line.split("|")][:6] == [events, "yes", "3", "3", "1", "delete"]
    assert "(8 rows)" in table.stdout
    as_json = runner.invoke(_cli(), ["topics", "describe", *common, "--partitions", "3", "--format", "json"], env=env)
    assert {item["name"]: item["partitions"] for item in json.loads(as_json.stdout)}[events] == 3

    # SPOTZEE_PARTITIONS=5 (no --partitions) contradicts the topics: a one-line error, exit 2.
    mismatch = runner.invoke(_cli(), ["topics", "create", *common], env=env)
    assert mismatch.exit_code == 2
    assert mismatch.stderr.startswith("error: existing topics have another partition count")
    assert len(mismatch.stderr.strip().splitlines()) == 1

    _produce(settings, events, {0: 4})
    group = f"g-{uuid.uuid4().hex[:12]}"
    _commit(settings, group_id(settings, group), {TopicPartition(events, 0): 1})
    lagged = runner.invoke(_cli(), ["lag", *common, "--group", group, "--group", PROCESSOR_GROUP], env=env)
    assert lagged.exit_code == 0, lagged.output
    header, _rule, *body = lagged.stdout.splitlines()
    assert [cell.strip() for cell in header.split("|")] == ["group", "topic", "partition", "committed", "end", "lag"]
    gid, pid = group_id(settings, group), group_id(settings, PROCESSOR_GROUP)
    assert [cell.strip() for cell in body[0].split("|")] == [gid, events, "0", "1", "4", "3"]
    assert f"total lag: 7 ({gid} 3, {pid} 4)" in lagged.stdout
    lag_json = runner.invoke(_cli(), ["lag", *common, "--group", group, "--format", "json"], env=env)
    payload = json.loads(lag_json.stdout)
    assert payload["total"] == 3
    assert payload["rows"][0] == {"group": gid, "topic": events, "partition": 0, "committed": 1, "end": 4, "lag": 3}


def test_cli_reports_an_unreachable_broker_in_one_line() -> None:
    runner = CliRunner()
    settings = _unreachable()
    env = {"SPOTZEE_KAFKA_REQUEST_TIMEOUT": str(FAIL_FAST_S)}
    for args in (["topics", "create"], ["topics", "describe"], ["lag"]):
        result = runner.invoke(_cli(), [*args, "--bootstrap", settings.kafka_bootstrap], env=env)
        assert result.exit_code == 2, (args, result.output)
        assert result.stderr.startswith(f"error: cannot connect to Kafka at {settings.kafka_bootstrap}")
        assert len(result.stderr.strip().splitlines()) == 1
        assert result.stdout == ""
