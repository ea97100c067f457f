"""State changelog for the Kafka runtime: batched, marker-delimited, replayable.

A worker commits one batch of a partition as: the batch's outputs (acked), then one changelog
record per changed key (``table\\x00key`` -> value, ``None`` deletes) followed by a *marker*
carrying the last input offset of the batch, all to the changelog partition with the input's
partition number (acked, in order: the producer is idempotent), then the local RocksDB write.

Whoever replays the changelog (a worker restoring a partition, the API's read replica) applies
records only through the last marker. Records after it belong to a batch that never completed;
its inputs are processed again, so they must be ignored -- and, because compaction would let
them replace the last good value of their keys, the restoring worker *compensates* them: it
re-writes the good value (or a tombstone) of each such key and a new marker.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field

MARKER = b"\x00marker"
SEP = "\x00"


def changelog_key(table: str, key: str) -> bytes:
    return f"{table}{SEP}{key}".encode()


def split_key(raw: bytes) -> tuple[str, str]:
    table, _, key = raw.decode().partition(SEP)
    return table, key


def marker_value(input_offset: int) -> bytes:
    """``input_offset`` is the next input offset to process (-1 based offsets are never used)."""
    return json.dumps({"input_offset": input_offset}).encode()


def marker_input_offset(value: bytes) -> int:
    return int(json.loads(value)["input_offset"])


@dataclass
class Replay:
    """Folds changelog records: complete batches into ``applied``, the rest into ``tail``."""

    applied: dict[bytes, bytes | None] = field(default_factory=dict)
    tail: dict[bytes, bytes | None] = field(default_factory=dict)
    input_offset: int | None = None
    marker_offset: int | None = None

    def add(self, offset: int, key: bytes, value: bytes | None) -> None:
        if key == MARKER:
            if value is not None:
                self.applied.update(self.tail)
                self.tail.clear()
                self.input_offset = marker_input_offset(value)
                self.marker_offset = offset
            return
        self.tail[key] = value

    def take_applied(self) -> dict[bytes, bytes | None]:
        applied, self.applied = self.applied, {}
        return applied
