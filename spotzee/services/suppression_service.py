"""The project-wide suppression list: its entries in the definitions store, an in-memory index of
them, and the send-time check (``suppression_lookup``) both runtimes' deliverers use.

An entry lives at ``suppression/<project_id>/<channel>/<address hash>`` (``suppression_models``),
so every process of either runtime sees it: the embedded process through its own writes, a Kafka
API process and worker through the replica of the definitions topic. ``SuppressionIndex`` keeps the
entries per project in a dict (built from a scan at start, then kept by every write and by the
runtime's definition listener), so a send's check, a read and the per-project bound are dict
operations, never a scan of the store. Entries are added and removed only through ``Suppressions``
(the API today; bounce, complaint and STOP hooks later), each write with its audit row.
"""

from __future__ import annotations

import asyncio
import logging
import re
from collections.abc import Callable, Iterable

from pydantic import ValidationError
from starlette.concurrency import run_in_threadpool

from spotzee.errors import Conflict, InvalidInput, NotFound
from spotzee.runtime.runtime_protocol import Runtime
from spotzee.schemas.suppression_models import (
    KEY_HASH_LENGTH,
    MAX_SUPPRESSIONS_PER_PROJECT,
    SuppressionCreate,
    SuppressionEntry,
    normalised_address,
    suppression_key,
)
from spotzee.schemas.tenancy_models import ApiKey
from spotzee.services.tenancy_service import Change, Tenancy
from spotzee.streams.interface import Clock
from spotzee.streams.record_codec import dumps

log = logging.getLogger(__name__)

PREFIX = "suppression/"
_E164 = re.compile(r"\+[1-9][0-9]{1,14}")
_CURSOR = re.compile(rf"(email|sms|whatsapp|push)/[0-9a-f]{{{KEY_HASH_LENGTH}}}")

IsSuppressed = Callable[[str, str, str], str | None]
"""``(project_id, channel, address)`` -> the entry's reason when the address is suppressed, else None."""


def _split(key: str) -> tuple[str, str] | None:
    """``suppression/<project>/<channel>/<hash>`` -> (project, "<channel>/<hash>")."""
    parts = key.split("/")
    if len(parts) != 4 or parts[0] != "suppression":
        return None
    return parts[1], f"{parts[2]}/{parts[3]}"


def suppression_lookup(get: Callable[[str], bytes | None]) -> IsSuppressed:
    """The send-time check over ``get``, a point read of the definitions store by key (the
    embedded index's ``get``, or a Kafka worker's replica ``items.get``): O(1) per send."""

    def is_suppressed(project_id: str, channel: str, address: str) -> str | None:
        if channel in ("sms", "whatsapp") and _E164.fullmatch(address):
            # A contact's phone is stored normalised (E.164) already: parsing it again costs
            # ~20 µs a send for the same string.
            normalised = address
        else:
            try:
                normalised = normalised_address(channel, address)
            except ValueError:
                normalised = address  # stored entries are normalised: one this can't be is not among them
        raw = get(suppression_key(project_id, channel, normalised))
        if raw is None:
            return None
        try:
            entry = SuppressionEntry.model_validate_json(raw)
        except ValidationError:
            # An entry this process can't read still says "don't send": failing closed never
            # mails an address its project asked us not to.
            log.error("suppression entry for project %s channel %s can't be read", project_id, channel)
            return "unreadable entry"
        return entry.reason if entry.project_id == project_id else None

    return is_suppressed


class SuppressionIndex:
    """Every project's entries (``<channel>/<hash>`` -> stored JSON), kept from the store's writes."""

    def __init__(self, items: Iterable[tuple[str, bytes]] = ()) -> None:
        self._projects: dict[str, dict[str, bytes]] = {}
        for key, value in items:
            self.apply(key, value)

    def apply(self, key: str, value: bytes | None) -> None:
        """A definition written (None: deleted); any key outside the list is ignored."""
        split = _split(key) if key.startswith(PREFIX) else None
        if split is None:
            return
        project_id, inner = split
        if value is not None:
            self._projects.setdefault(project_id, {})[inner] = value
            return
        entries = self._projects.get(project_id)
        if entries is not None:
            entries.pop(inner, None)
            if not entries:
                del self._projects[project_id]

    def get(self, key: str) -> bytes | None:
        split = _split(key)
        if split is None:
            return None
        return self._projects.get(split[0], {}).get(split[1])

    def count(self, project_id: str) -> int:
        return len(self._projects.get(project_id, {}))

    def page(
        self, project_id: str, channel: str | None, after: str | None, limit: int
    ) -> tuple[list[tuple[str, bytes]], bool]:
        """Up to ``limit`` (``<channel>/<hash>``, entry) in key order after ``after``; and whether
        more follow. Sorts the project's keys (bounded: ``MAX_SUPPRESSIONS_PER_PROJECT``)."""
        entries = self._projects.get(project_id, {})
        keys = sorted(
            k for k in entries if (channel is None or k.startswith(f"{channel}/")) and (after is None or k > after)
        )
        return [(k, entries[k]) for k in keys[:limit]], len(keys) > limit


class Suppressions:
    def __init__(self, runtime: Runtime, tenancy: Tenancy, clock: Clock) -> None:
        self.tenancy = tenancy
        self.clock = clock
        self.index = SuppressionIndex(runtime.scan_definitions(PREFIX))
        runtime.on_definition(self.index.apply)  # other API processes' writes (Kafka runtime)
        self.is_suppressed = suppression_lookup(self.index.get)
        self._writing = asyncio.Lock()  # the bound's check and the write are one step

    async def create(self, actor: ApiKey, body: SuppressionCreate) -> tuple[SuppressionEntry, bool]:
        """The entry for the address, and whether it was added now (an existing one is returned
        unchanged: the POST is idempotent, its reason and note are kept)."""
        key = suppression_key(actor.project, body.channel, body.address)
        async with self._writing:
            existing = self._entry(key)
            if existing is not None:
                return existing, False
            count = self.index.count(actor.project)
            if count >= MAX_SUPPRESSIONS_PER_PROJECT:
                raise Conflict(
                    f"the project's suppression list has {count} entries, the most it may have: remove one first",
                    details=[
                        {"path": "(body)", "reason": f"at most {MAX_SUPPRESSIONS_PER_PROJECT} entries per project"}
                    ],
                )
            entry = SuppressionEntry(project_id=actor.project, created_at=self.clock.now(), **body.model_dump())
            change = Change.by(
                actor, "suppression.create", key, actor.project, before=None, after=entry.model_dump(mode="json")
            )
            stored = dumps(entry)
            await run_in_threadpool(self.tenancy.commit, [(key, stored)], change)
            self.index.apply(key, stored)
            return entry, True

    def get(self, project_id: str, channel: str, address: str) -> SuppressionEntry:
        entry = self._entry(suppression_key(project_id, channel, _address(channel, address)))
        if entry is None:
            raise NotFound(f"{channel} address not on the suppression list")
        return entry

    async def delete(self, actor: ApiKey, channel: str, address: str) -> None:
        key = suppression_key(actor.project, channel, _address(channel, address))
        async with self._writing:
            entry = self._entry(key)
            if entry is None:
                raise NotFound(f"{channel} address not on the suppression list")
            change = Change.by(
                actor, "suppression.delete", key, actor.project, before=entry.model_dump(mode="json"), after=None
            )
            await run_in_threadpool(self.tenancy.commit, [(key, None)], change)
            self.index.apply(key, None)

    def page(
        self, project_id: str, channel: str | None, address: str | None, cursor: str | None, limit: int
    ) -> tuple[list[SuppressionEntry], str | None]:
        """A page of the project's entries (by channel, then address hash: a stable order), and
        the cursor of the next page (None on the last)."""
        if cursor is not None and not _CURSOR.fullmatch(cursor):
            raise InvalidInput(
                "cursor: not a cursor this API returned", details=[{"path": "cursor", "reason": "invalid"}]
            )
        if address is not None:
            channels = [channel] if channel is not None else ["email", "sms", "whatsapp", "push"]
            found = []
            for each in channels:
                try:
                    normalised = normalised_address(each, address)
                except ValueError:
                    if channel is not None:
                        raise _invalid_address(channel, address) from None
                    continue  # not an address of this channel: it has no entry there
                entry = self._entry(suppression_key(project_id, each, normalised))
                if entry is not None:
                    found.append(entry)
            return found, None
        rows, more = self.index.page(project_id, channel, cursor, limit)
        entries = []
        for _, raw in rows:
            try:
                entries.append(SuppressionEntry.model_validate_json(raw))
            except ValidationError:
                continue  # unreadable (written by a newer version?): left out, still enforced at send time
        return entries, rows[-1][0] if more and rows else None

    def _entry(self, key: str) -> SuppressionEntry | None:
        raw = self.index.get(key)
        if raw is None:
            return None
        try:
            return SuppressionEntry.model_validate_json(raw)
        except ValidationError as exc:
            raise Conflict(
                "the entry is stored but can't be read (it is still enforced at send time)",
                details=[{"path": "address", "reason": "quarantined: unreadable entry"}],
            ) from exc


def _address(channel: str, address: str) -> str:
    try:
        return normalised_address(channel, address)
    except ValueError as exc:
        raise _invalid_address(channel, address) from exc


def _invalid_address(channel: str, address: str) -> InvalidInput:
    try:
        normalised_address(channel, address)
    except ValueError as exc:
        reason = str(exc)
    else:
        reason = "invalid"
    return InvalidInput(
        f"address: not a valid {channel} address ({reason})", details=[{"path": "address", "reason": reason}]
    )
