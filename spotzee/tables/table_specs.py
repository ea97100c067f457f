"""Typed tables: a table is a name and a value codec, and processors read and write values, not bytes.

``TableSpec("contacts", ContactState)`` declares a table whose values are ``ContactState`` Structs
(msgspec JSON, schemas/structs.py); ``typed(ctx, CONTACTS)`` is the processor's view of it for the
record in progress. The stores keep bytes (RocksDB, the changelog); the batch overlay keeps the
decoded values (``tables/overlay.OverlayTable``), so within a batch a key is decoded on first use
and encoded once, at commit, however many records touch it, and a bounded cache (``StateCache``)
keeps hot keys decoded across batches.

Values handed out are shared with that cache: callers never change one in place. They build a new
value (``structs.replace``, new lists and dicts) and ``put`` it -- the reducers in ``spotzee/domain``
work that way already (copy on write), which is what makes the sharing safe.
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any, Generic, Protocol, TypeVar

from spotzee.schemas import structs

V = TypeVar("V")


@dataclass(frozen=True, eq=False)
class TableSpec(Generic[V]):
    """A processor table: its name and how its values are stored.

    The default codec is msgspec JSON of ``kind``; a table of plain values with a legacy format
    (the dedupe table's ISO times) passes its own ``encoder`` / ``decoder``."""

    name: str
    kind: type[V]
    encoder: Callable[[V], bytes] = field(default=structs.encode)
    decoder: Callable[[bytes], V] | None = None

    def encode(self, value: V) -> bytes:
        return self.encoder(value)

    def decode(self, data: bytes) -> V:
        if self.decoder is not None:
            return self.decoder(data)
        return structs.decode(self.kind, data)


class ValueTable(Protocol):
    """What a typed view needs of a runtime's table (``tables/table_protocol.Table`` adds these)."""

    def get_value(self, key: str, spec: TableSpec[V]) -> V | None: ...

    def put_value(self, key: str, value: V, spec: TableSpec[V]) -> None: ...

    def delete(self, key: str) -> None: ...

    def scan_values(self, prefix: str, spec: TableSpec[V]) -> Iterator[tuple[str, V]]: ...


class _HasTables(Protocol):
    def table(self, name: str) -> Any: ...


class TypedTable(Generic[V]):
    """One table of the record in progress, seen as values of its spec."""

    __slots__ = ("_spec", "_table")

    def __init__(self, table: ValueTable, spec: TableSpec[V]) -> None:
        self._table = table
        self._spec = spec

    def get(self, key: str) -> V | None:
        return self._table.get_value(key, self._spec)

    def put(self, key: str, value: V) -> None:
        self._table.put_value(key, value, self._spec)

    def delete(self, key: str) -> None:
        self._table.delete(key)

    def scan_prefix(self, prefix: str) -> Iterator[tuple[str, V]]:
        """Live entries under ``prefix`` in key order, the record's own writes included."""
        return self._table.scan_values(prefix, self._spec)


def typed(ctx: _HasTables, spec: TableSpec[V]) -> TypedTable[V]:
    return TypedTable(ctx.table(spec.name), spec)


class StateCache:
    """Decoded values kept across batches for the hot keys of one table of one store (an LRU).

    Written through at commit with each committed key's final value (``None``: absent), so it never
    holds a value the store does not; a store that changes behind it (a Kafka partition restored
    from its changelog) is dropped with ``clear``. ``limit`` 0 disables it."""

    def __init__(self, limit: int) -> None:
        self.limit = limit
        self._entries: OrderedDict[str, Any] = OrderedDict()

    def get(self, key: str) -> tuple[bool, Any]:
        """(found, value): ``value`` may be None (known absent)."""
        try:
            value = self._entries[key]
        except KeyError:
            return False, None
        self._entries.move_to_end(key)
        return True, value

    def put(self, key: str, value: Any) -> None:
        if self.limit <= 0:
            return
        self._entries[key] = value
        self._entries.move_to_end(key)
        while len(self._entries) > self.limit:
            self._entries.popitem(last=False)

    def discard(self, key: str) -> None:
        self._entries.pop(key, None)

    def clear(self) -> None:
        self._entries.clear()

    def __len__(self) -> int:
        return len(self._entries)


def state_caches(processor: object, limit: int) -> dict[str, StateCache]:
    """One cache per table the processor lists in ``cached_tables`` (values read again and again:
    a contact's state, its segment and journey state), none for the rest (a dedupe entry is read
    once)."""
    names: tuple[str, ...] = getattr(processor, "cached_tables", ())
    return {name: StateCache(limit) for name in names} if limit > 0 else {}
