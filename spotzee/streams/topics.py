"""Topic names of the one topology both runtimes run."""

from __future__ import annotations

import zlib

EVENTS = "events"  # ingested messages and contact commands, key = project:contact
ANALYTICS = "analytics"  # rows and history mutations for the ClickHouse sink
SEGMENT_CHANGES = "segment-changes"
JOURNEY_ADVANCE = "journey-advance"
SENDS = "sends"
DEFINITIONS = "definitions"  # compacted
DEAD_LETTER = "dead-letter"

ALL = (EVENTS, ANALYTICS, SEGMENT_CHANGES, JOURNEY_ADVANCE, SENDS, DEFINITIONS, DEAD_LETTER)


def partition_for(key: str, partitions: int) -> int:
    """Stable partition of a ``project:contact`` key (CRC-32, the same in every process)."""
    return zlib.crc32(key.encode()) % partitions
