"""The ``faust.App`` every Kafka-runtime app is made from (the worker's processor app, the sink app)."""

from __future__ import annotations

from typing import Any

import faust

from spotzee.files import private_dir
from spotzee.runtime.kafka import faust_codec
from spotzee.runtime.kafka.config import faust_broker_settings
from spotzee.settings import Settings


def faust_app(settings: Settings, app_id: str, consumer_scheduler: type[Any] | None = None) -> faust.App:
    """An app (consumer group ``app_id``) with Spotzee's broker, partitions and commit settings;
    ``consumer_scheduler``: faust's ``ConsumerScheduler`` (which fetched records go where) if not its default."""
    extra: dict[str, Any] = {} if consumer_scheduler is None else {"ConsumerScheduler": consumer_scheduler}
    faust_codec.register()
    datadir = settings.data_dir / "faust" / f"{settings.worker_id}-{app_id}"
    private_dir(datadir)
    return faust.App(
        app_id,
        **faust_broker_settings(settings),
        store="memory://",
        topic_partitions=settings.partitions,
        topic_replication_factor=settings.kafka_replication_factor,
        web_enabled=False,
        autodiscover=False,
        consumer_auto_offset_reset="earliest",
        broker_commit_interval=0.5,
        broker_session_timeout=settings.kafka_session_timeout,
        broker_heartbeat_interval=max(settings.kafka_session_timeout / 5, 0.5),
        producer_acks=-1,
        processing_guarantee="at_least_once",
        broker_max_poll_records=5000,  # faust's consumer thread hands over records in polls this large
        stream_buffer_maxsize=20000,
        datadir=str(datadir),
        **extra,
    )
