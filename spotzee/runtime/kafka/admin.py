"""Topic administration and consumer lag for the Kafka runtime (kafka-python's ``KafkaAdminClient``).

Partition counts are a contract: contact keys hash onto them (``streams.topics.partition_for``), so
:func:`create_topics` creates what is missing and refuses to go on when an existing topic has a different
partition count than its spec. Every kafka-python failure (no broker, timeout, broker error) leaves this module
as :class:`~spotzee.errors.LogUnavailable` with a one-line message (``broker_errors.kafka_errors``).
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any, TypeVar

import kafka.errors as kafka_error_types  # type: ignore[import-untyped, unused-ignore]
from kafka import KafkaAdminClient, TopicPartition  # type: ignore[import-untyped, unused-ignore]
from kafka.admin import ConfigResource, ConfigResourceType, OffsetSpec  # type: ignore[import-untyped, unused-ignore]

from spotzee.errors import Conflict, NotFound
from spotzee.runtime.kafka.broker_errors import describe_error, kafka_errors
from spotzee.runtime.kafka.config import kafka_python_config
from spotzee.settings import Settings
from spotzee.streams import topics

PROCESSOR_GROUP = "spotzee-processor"
SINK_GROUP = "spotzee-sink"
DEFAULT_GROUPS = (PROCESSOR_GROUP, SINK_GROUP)
CONTACTS_CHANGELOG = "contacts-changelog"
# Base names (without the prefix) of the topics each of Spotzee's consumer groups reads.
GROUP_TOPICS: dict[str, tuple[str, ...]] = {PROCESSOR_GROUP: (topics.EVENTS,), SINK_GROUP: (topics.ANALYTICS,)}

DAY_MS = 24 * 60 * 60 * 1000
RETENTION_MS = 7 * DAY_MS
DEAD_LETTER_RETENTION_MS = 30 * DAY_MS
# The configs `describe_topics` reports (the ones topic_specs sets).
RELEVANT_CONFIGS = ("cleanup.policy", "retention.ms", "min.compaction.lag.ms", "min.insync.replicas")

_DELETE_TOPICS = (
    topics.EVENTS,
    topics.ANALYTICS,
    topics.SEGMENT_CHANGES,
    topics.JOURNEY_ADVANCE,
    topics.SENDS,
    topics.DEAD_LETTER,
)
_RETRY_SLEEP_S = 0.2
_T = TypeVar("_T")


class TopicMismatch(Conflict):
    """An existing topic contradicts its spec (partition count): keys would hash onto the wrong partitions."""

    code = "topic_mismatch"


class TopicMissing(NotFound):
    """A topic a consumer group reads does not exist (``spotzee topics create`` has not run)."""

    code = "topic_missing"


@dataclass(frozen=True)
class TopicSpec:
    """What one topic must look like."""

    name: str
    partitions: int
    config: dict[str, str] = field(default_factory=dict)
    replication_factor: int = 1


@dataclass(frozen=True)
class LagRow:
    """One partition of one group: ``committed`` is the log start offset when the group never committed."""

    group: str
    topic: str
    partition: int
    committed: int
    end: int
    lag: int


def group_id(settings: Settings, group: str) -> str:
    """The Kafka consumer group of a logical group: namespaced by the topic prefix, like the topics,
    so that installations (and test runs) sharing a cluster never share a group."""
    return settings.kafka_topic_prefix + group


def topic_name(settings: Settings, base: str) -> str:
    """The full name of a topology topic: ``settings.kafka_topic_prefix + base``."""
    return settings.kafka_topic_prefix + base


def topic_specs(settings: Settings) -> list[TopicSpec]:
    """Every topic of the Kafka runtime, with partitions, replication factor and configs."""
    replication = settings.kafka_replication_factor
    durability = {"min.insync.replicas": "2"} if replication > 1 else {}

    def spec(base: str, partitions: int, config: dict[str, str]) -> TopicSpec:
        return TopicSpec(topic_name(settings, base), partitions, {**config, **durability}, replication)

    specs = [
        spec(
            base,
            settings.partitions,
            {
                "cleanup.policy": "delete",
                "retention.ms": str(DEAD_LETTER_RETENTION_MS if base == topics.DEAD_LETTER else RETENTION_MS),
            },
        )
        for base in _DELETE_TOPICS
    ]
    specs.append(spec(topics.DEFINITIONS, 1, {"cleanup.policy": "compact"}))
    specs.append(
        spec(CONTACTS_CHANGELOG, settings.partitions, {"cleanup.policy": "compact", "min.compaction.lag.ms": "0"})
    )
    return specs


# -- the edge: kafka-python errors become LogUnavailable ------------------------------------------------------


def _timeout_ms(settings: Settings) -> int:
    return max(1, int(settings.kafka_request_timeout * 1000))


@contextmanager
def _admin(settings: Settings, action: str) -> Iterator[Any]:
    """A connected admin client (closed afterwards); any kafka-python error inside becomes LogUnavailable."""
    timeout_ms = _timeout_ms(settings)
    config = kafka_python_config(settings)
    connecting = (
        f"cannot connect to Kafka at {settings.kafka_bootstrap} within {settings.kafka_request_timeout:g}s ({action})"
    )
    with kafka_errors(connecting, detail=describe_error):
        client = KafkaAdminClient(
            **config,
            client_id="spotzee-admin",
            request_timeout_ms=timeout_ms,
            bootstrap_timeout_ms=timeout_ms,
            reconnect_backoff_max_ms=1000,
        )
    with kafka_errors(f"Kafka at {settings.kafka_bootstrap} failed while {action}", detail=describe_error):
        try:
            yield client
        finally:
            client.close()


def _retrying(settings: Settings, call: Callable[[], _T]) -> _T:
    """Retry retriable broker errors (e.g. the group coordinator loading on a fresh broker) up to the timeout."""
    deadline = time.monotonic() + settings.kafka_request_timeout
    while True:
        try:
            return call()
        except kafka_error_types.KafkaError as exc:
            if not getattr(exc, "retriable", False) or time.monotonic() + _RETRY_SLEEP_S > deadline:
                raise
            time.sleep(_RETRY_SLEEP_S)


# -- topics ---------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class _Existing:
    partitions: int
    replication_factor: int


def _existing_topics(client: Any, names: list[str]) -> dict[str, _Existing]:
    """Partition count and replication factor of those of ``names`` that exist."""
    found: dict[str, _Existing] = {}
    for meta in client.describe_topics(names):
        error = kafka_error_types.for_code(meta.get("error_code", 0))
        if error is kafka_error_types.UnknownTopicOrPartitionError:
            continue
        if error is not kafka_error_types.NoError:
            raise error(f"describing topic {meta.get('name')}")
        partitions = meta.get("partitions") or []
        replicas = max((len(p.get("replica_nodes") or []) for p in partitions), default=0)
        found[str(meta["name"])] = _Existing(partitions=len(partitions), replication_factor=replicas)
    return found


def _check_partitions(specs: list[TopicSpec], existing: dict[str, _Existing]) -> None:
    wrong = [
        f"{spec.name} has {existing[spec.name].partitions} (expected {spec.partitions})"
        for spec in specs
        if spec.name in existing and existing[spec.name].partitions != spec.partitions
    ]
    if wrong:
        raise TopicMismatch(
            f"existing topics have another partition count than the spec: {', '.join(wrong)}; keys hash onto "
            "partitions, so the count cannot change in place: set SPOTZEE_PARTITIONS to the existing count "
            "or use new topics (another SPOTZEE_KAFKA_TOPIC_PREFIX)"
        )


def create_topics(settings: Settings) -> list[str]:
    """Create the missing topics of :func:`topic_specs`; returns the names created (idempotent).

    Raises :class:`TopicMismatch` (creating nothing) when an existing topic has another partition count.
    """
    specs = topic_specs(settings)
    names = [spec.name for spec in specs]
    with _admin(settings, "creating topics") as client:
        existing = _existing_topics(client, names)
        _check_partitions(specs, existing)
        missing = [spec for spec in specs if spec.name not in existing]
        if not missing:
            return []
        response = client.create_topics(
            {
                spec.name: {
                    "num_partitions": spec.partitions,
                    "replication_factor": spec.replication_factor,
                    "configs": spec.config,
                }
                for spec in missing
            },
            timeout_ms=_timeout_ms(settings),
            raise_errors=False,
        )
        created: list[str] = []
        raced: list[str] = []
        for result in response.get("topics", []):
            error = kafka_error_types.for_code(result.get("error_code", 0))
            if error is kafka_error_types.NoError:
                created.append(str(result["name"]))
            elif error is kafka_error_types.TopicAlreadyExistsError:
                raced.append(str(result["name"]))  # created concurrently by someone else
            else:
                raise error(f"creating topic {result.get('name')}: {result.get('error_message') or error.__name__}")
        if created:
            client.wait_for_topics(created, timeout_ms=_timeout_ms(settings))
        if raced:  # created by someone else since we looked: hold them to the spec as well
            client.wait_for_topics(raced, timeout_ms=_timeout_ms(settings))
            _check_partitions(specs, _existing_topics(client, raced))
    return [name for name in names if name in created]


def describe_topics(settings: Settings) -> list[dict[str, Any]]:
    """One dict per spec'd topic: name, exists, partitions (actual), expected_partitions, replication_factor and
    ``configs`` (the values of :data:`RELEVANT_CONFIGS` on the broker; empty when the topic does not exist)."""
    specs = topic_specs(settings)
    with _admin(settings, "describing topics") as client:
        existing = _existing_topics(client, [spec.name for spec in specs])
        configs: dict[str, dict[str, Any]] = {}
        if existing:
            resources = [
                ConfigResource(ConfigResourceType.TOPIC, name, list(RELEVANT_CONFIGS)) for name in sorted(existing)
            ]
            described = client.describe_configs(resources, config_filter="all")
            configs = dict(described.get("topic", {}))
    rows: list[dict[str, Any]] = []
    for spec in specs:
        found = existing.get(spec.name)
        topic_configs = configs.get(spec.name, {})
        rows.append(
            {
                "name": spec.name,
                "exists": found is not None,
                "partitions": found.partitions if found else None,
                "expected_partitions": spec.partitions,
                "replication_factor": found.replication_factor if found else None,
                "configs": {
                    key: str(topic_configs[key]["value"])
                    for key in RELEVANT_CONFIGS
                    if key in topic_configs and topic_configs[key].get("value") is not None
                },
            }
        )
    return rows


# -- consumer lag ---------------------------------------------------------------------------------------------


def consumer_lag(settings: Settings, groups: list[str] | None = None) -> list[LagRow]:
    """Committed offset vs end offset for every partition of the topics each group reads.

    A group reads the topics :data:`GROUP_TOPICS` declares for it, plus any topic under the prefix it has
    committed offsets on. A partition without a committed offset counts as committed at its log start offset
    (where a new consumer starts), and ``lag = end - max(committed, log start)``, never negative.
    """
    wanted = list(dict.fromkeys(groups or DEFAULT_GROUPS))
    ids = {group: group_id(settings, group) for group in wanted}
    with _admin(settings, "reading consumer lag") as client:
        by_id: dict[str, dict[Any, Any]] = _retrying(settings, lambda: client.list_group_offsets(list(ids.values())))
        committed = {group: by_id.get(ids[group], {}) for group in wanted}
        group_topics = {group: _group_topics(settings, group, committed[group]) for group in wanted}
        all_topics = sorted({name for names in group_topics.values() for name in names})
        if not all_topics:
            return []
        existing = _existing_topics(client, all_topics)
        _check_declared(settings, wanted, existing)
        partitions = [
            TopicPartition(name, index) for name in sorted(existing) for index in range(existing[name].partitions)
        ]
        if not partitions:
            return []
        ends = _offsets(settings, client, partitions, OffsetSpec.LATEST)
        starts = _offsets(settings, client, partitions, OffsetSpec.EARLIEST)
    return [
        row
        for group in wanted
        for name in group_topics[group]
        for row in _lag_rows(ids[group], name, existing, committed[group], ends, starts)
    ]


def _group_topics(settings: Settings, group: str, committed: dict[Any, Any]) -> list[str]:
    """The topics ``group`` declares, then those under the prefix it has committed offsets on."""
    declared = [topic_name(settings, base) for base in GROUP_TOPICS.get(group, ())]
    committed_topics = sorted({tp.topic for tp in committed if tp.topic.startswith(settings.kafka_topic_prefix)})
    return list(dict.fromkeys([*declared, *committed_topics]))


def _check_declared(settings: Settings, groups: list[str], existing: dict[str, _Existing]) -> None:
    missing = sorted(
        topic_name(settings, base)
        for group in groups
        for base in GROUP_TOPICS.get(group, ())
        if topic_name(settings, base) not in existing
    )
    if missing:
        raise TopicMissing(
            f"topic {', '.join(missing)} does not exist on {settings.kafka_bootstrap} (run `spotzee topics create`)"
        )


def _offsets(settings: Settings, client: Any, partitions: list[Any], spec: Any) -> dict[Any, Any]:
    """The ``spec`` (latest, earliest) offset of each partition."""
    offsets: dict[Any, Any] = _retrying(
        settings, lambda: client.list_partition_offsets(dict.fromkeys(partitions, spec))
    )
    return offsets


def _lag_rows(
    group: str,
    name: str,
    existing: dict[str, _Existing],
    committed: dict[Any, Any],
    ends: dict[Any, Any],
    starts: dict[Any, Any],
) -> list[LagRow]:
    """One row per partition of topic ``name`` (none when it does not exist)."""
    rows: list[LagRow] = []
    for index in range(existing[name].partitions if name in existing else 0):
        tp = TopicPartition(name, index)
        end = int(ends[tp].offset)
        start = int(starts[tp].offset)
        position = committed.get(tp)
        offset = int(position.offset) if position is not None and position.offset is not None else -1
        if offset < 0:
            offset = start
        rows.append(LagRow(group, name, index, offset, end, max(end - max(offset, start), 0)))
    return rows


def total_lag(settings: Settings, group: str) -> int:
    """Messages ``group`` has yet to process across all partitions of the topics it reads."""
    return sum(row.lag for row in consumer_lag(settings, [group]))
