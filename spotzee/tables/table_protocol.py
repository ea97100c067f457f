"""The table interface: what a processor's state looks like to it, whatever the store behind it.

Implementations: ``tables/overlay.OverlayTable`` (a batch's overlay over RocksDB: the embedded
runtime and the Kafka runtime's partition stores) and ``tables/memory_store.MemoryTable`` (a dict,
for ``spotzee.testing.MemoryContext``). tests/unit/test_table_contract.py runs the same contract
over each of them.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Protocol, TypeVar

from spotzee.tables.table_specs import TableSpec

V = TypeVar("V")


class Table(Protocol):
    """One processor table. Reads see the record's own uncommitted writes."""

    def get(self, key: str) -> bytes | None: ...

    def set(self, key: str, value: bytes) -> None: ...

    def delete(self, key: str) -> None: ...

    def scan_prefix(self, prefix: str) -> Iterator[tuple[str, bytes]]:
        """Live entries whose key starts with ``prefix``, in key order, uncommitted writes included."""

    # Values of a typed table (``tables/table_specs.py``): what processors use, through ``typed``.
    def get_value(self, key: str, spec: TableSpec[V]) -> V | None: ...

    def put_value(self, key: str, value: V, spec: TableSpec[V]) -> None: ...

    def scan_values(self, prefix: str, spec: TableSpec[V]) -> Iterator[tuple[str, V]]: ...
