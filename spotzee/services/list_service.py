"""Static lists: definitions, membership changes, CSV/JSON import and export.

Membership goes through the contact processor (``ListMembership`` records keyed by contact), so
a list change re-evaluates the segments that read the list, in order with the contact's events.
An import row creates the contact when it is missing (its other columns become attributes); a
bad row is reported with its number and field while the valid rows are kept.
"""

from __future__ import annotations

import asyncio
import csv
import io
import secrets
import uuid
from collections.abc import Iterator
from typing import Any

import orjson
from starlette.concurrency import run_in_threadpool

from spotzee.domain.traits import TraitError, normalize_traits
from spotzee.errors import Conflict, InvalidInput, NotFound, Overloaded
from spotzee.runtime.runtime_protocol import Position, Runtime
from spotzee.schemas.segment_models import (
    ImportResult,
    ImportRowError,
    ListCreate,
    ListDefinition,
    ListMembership,
    ListPublic,
    Member,
    MembersPage,
)
from spotzee.schemas.tenancy_models import ApiKey
from spotzee.services.segment_service import Segments, list_references, members_page
from spotzee.services.tenancy_service import Tenancy
from spotzee.streams.interface import Clock
from spotzee.streams.record_codec import dumps, loads
from spotzee.streams.segment_processor import LIST_MEMBERS, member_prefix

ID_COLUMNS = ("id", "user_id", "userId")
MAX_IMPORT_ROWS = 100_000
WAIT_SECONDS = 30.0


class Lists:
    def __init__(self, runtime: Runtime, clock: Clock, tenancy: Tenancy, segments: Segments) -> None:
        self.runtime = runtime
        self.clock = clock
        self.tenancy = tenancy
        self.segments = segments

    def get(self, project_id: str, list_id: str) -> ListDefinition:
        found = next((item for item in self.segments.lists(project_id) if item.id == list_id), None)
        if found is None:
            raise NotFound(f"list {list_id} not found")
        return found

    def public(self, item: ListDefinition) -> ListPublic:
        """The list as the API shows it: its definition (without the store's fields) and its size."""
        count = sum(1 for _ in self.runtime.scan(LIST_MEMBERS, member_prefix(item.project_id, item.id)))
        return ListPublic(**item.model_dump(exclude={"type", "deleted"}), count=count)

    async def create(self, actor: ApiKey, body: ListCreate) -> ListDefinition:
        item = ListDefinition(
            id=f"lst_{secrets.token_hex(8)}",
            project_id=actor.project,
            name=body.name,
            description=body.description,
            created_at=self.clock.now(),
        )
        await self._write(actor, "list.create", item, None)
        return item

    async def delete(self, actor: ApiKey, list_id: str) -> None:
        project_id = actor.project
        item = self.get(project_id, list_id)
        users = sorted(d.id for d in self.segments.live(project_id) if list_id in list_references(d.rule))
        if users:
            raise Conflict(
                f"list {list_id} is used by segment(s) {', '.join(users)}: change or delete those first",
                details=[{"path": "id", "reason": f"referenced by {', '.join(users)}"}],
            )
        members = [
            key.split("\x00", 1)[1] for key, _ in self.runtime.scan(LIST_MEMBERS, member_prefix(project_id, list_id))
        ]
        await self.change(actor, list_id, members, member=False, check=False)
        await self._write(actor, "list.delete", item.model_copy(update={"deleted": True}), item)

    async def _write(self, actor: ApiKey, action: str, item: ListDefinition, before: ListDefinition | None) -> None:
        await run_in_threadpool(self.tenancy.commit_definition, actor, action, item, before)

    # -- membership -------------------------------------------------------------------------------

    async def change(
        self,
        actor: ApiKey,
        list_id: str,
        ids: list[str],
        *,
        member: bool,
        traits: list[dict[str, Any]] | None = None,
        check: bool = True,
    ) -> int:
        project_id = actor.project
        if check:
            self.get(project_id, list_id)
        request_id = str(uuid.uuid4())
        now = self.clock.now()
        records = [
            (
                f"{project_id}:{contact_id}",
                dumps(
                    ListMembership(
                        project_id=project_id,
                        id=contact_id,
                        list_id=list_id,
                        member=member,
                        traits=(traits[i] if traits else {}),
                        requested_at=now,
                        request_id=request_id,
                    )
                ),
            )
            for i, contact_id in enumerate(ids)
        ]
        positions = []
        for start in range(0, len(records), 1000):
            positions.extend(await self._append(records[start : start + 1000]))
        # Read-your-writes: the members API shows the change once the call returns.
        await self.runtime.wait_processed(positions, WAIT_SECONDS)
        if ids:
            await run_in_threadpool(
                self.tenancy.audit,
                actor,
                "list.add" if member else "list.remove",
                f"list/{list_id}",
                project_id,
                None,
                {"contacts": len(ids)},
            )
        return len(records)

    async def _append(self, records: list[tuple[str, bytes]]) -> list[Position]:
        """Append, yielding to live traffic while the backlog is over its bound (≤ ~2 min)."""
        for _ in range(120):
            try:
                return await self.runtime.append(records)
            except Overloaded as exc:
                await asyncio.sleep(min(exc.retry_after, 1))
        raise Overloaded("the log stayed over its bound during the import", retry_after=5)

    async def import_rows(self, actor: ApiKey, list_id: str, body: bytes, content_type: str) -> ImportResult:
        self.get(actor.project, list_id)
        rows = list(_parse(body, content_type))
        if len(rows) > MAX_IMPORT_ROWS:
            raise InvalidInput(
                f"import has {len(rows)} rows; at most {MAX_IMPORT_ROWS} per request",
                details=[{"path": "(body)", "reason": "too many rows"}],
            )
        ids: list[str] = []
        traits: list[dict[str, Any]] = []
        errors: list[ImportRowError] = []
        for number, row in rows:
            if isinstance(row, ImportRowError):
                errors.append(row)
                continue
            contact_id = next((str(row[c]).strip() for c in ID_COLUMNS if row.get(c) not in (None, "")), "")
            if not contact_id:
                errors.append(ImportRowError(row=number, field="id", error="missing contact id (column id)"))
                continue
            if len(contact_id) > 512:
                errors.append(ImportRowError(row=number, field="id", error="longer than 512 characters"))
                continue
            attributes = {k: v for k, v in row.items() if k not in ID_COLUMNS and v not in (None, "")}
            try:
                normalised = normalize_traits(attributes, prefix="")
            except TraitError as exc:
                errors.append(ImportRowError(row=number, field=exc.path.lstrip("."), error=exc.reason))
                continue
            ids.append(contact_id)
            traits.append(normalised)
        accepted = await self.change(actor, list_id, ids, member=True, traits=traits) if ids else 0
        return ImportResult(accepted=accepted, rejected=len(errors), errors=errors)

    # -- reads ------------------------------------------------------------------------------------

    def members(self, project_id: str, list_id: str, cursor: str | None, limit: int) -> MembersPage:
        self.get(project_id, list_id)
        return members_page(self.runtime, LIST_MEMBERS, member_prefix(project_id, list_id), cursor, limit)

    def export(self, project_id: str, list_id: str, fmt: str) -> Iterator[bytes]:
        """The list's members as CSV or NDJSON. The list is looked up now, not when the first chunk
        is pulled: an unknown list must be a 404 before the response has started."""
        self.get(project_id, list_id)
        return self._export_rows(project_id, list_id, fmt)

    def _export_rows(self, project_id: str, list_id: str, fmt: str) -> Iterator[bytes]:
        prefix = member_prefix(project_id, list_id)
        rows = ((key[len(prefix) :], loads(Member, raw)) for key, raw in self.runtime.scan(LIST_MEMBERS, prefix))
        if fmt == "csv":
            yield b"id,since\r\n"
            for contact_id, member in rows:
                out = io.StringIO()
                csv.writer(out).writerow([contact_id, member.since.isoformat()])
                yield out.getvalue().encode()
        else:
            for contact_id, member in rows:
                yield orjson.dumps({"id": contact_id, "since": member.since.isoformat()}) + b"\n"


def _parse(body: bytes, content_type: str) -> Iterator[tuple[int, dict[str, Any] | ImportRowError]]:
    """(1-based row number, row or its error). CSV needs a header with an ``id`` column; JSON is
    an array of objects (or ``{"rows": [...]}``), or newline-delimited objects."""
    kind = content_type.split(";")[0].strip().lower()
    if kind in ("text/csv", "application/csv"):
        return _csv_rows(body)
    if kind in ("application/json", "application/x-ndjson"):
        return _json_rows(body, ndjson=kind == "application/x-ndjson")
    raise InvalidInput(
        f"unsupported content type {content_type!r}: send text/csv, application/json or application/x-ndjson",
        details=[{"path": "content-type", "reason": "unsupported"}],
    )


def _csv_rows(body: bytes) -> Iterator[tuple[int, dict[str, Any] | ImportRowError]]:
    try:
        text = body.decode("utf-8-sig")
    except UnicodeDecodeError as exc:
        raise InvalidInput("CSV must be UTF-8", details=[{"path": "(body)", "reason": "not UTF-8"}]) from exc
    reader = csv.DictReader(io.StringIO(text))
    if not reader.fieldnames or not any(c in reader.fieldnames for c in ID_COLUMNS):
        raise InvalidInput(
            "CSV needs a header row with an id column",
            details=[{"path": "(header)", "reason": "no id column"}],
        )
    return _csv_records(reader)


def _csv_records(reader: csv.DictReader[str]) -> Iterator[tuple[int, dict[str, Any] | ImportRowError]]:
    for number, row in enumerate(reader, start=1):
        if None in row:
            yield number, ImportRowError(row=number, field=None, error="more cells than header columns")
            continue
        yield number, {k: v for k, v in row.items() if k}


def _json_rows(body: bytes, *, ndjson: bool) -> Iterator[tuple[int, dict[str, Any] | ImportRowError]]:
    try:
        if ndjson:
            data: Any = [orjson.loads(line) for line in body.splitlines() if line.strip()]
        else:
            data = orjson.loads(body)
    except orjson.JSONDecodeError as exc:
        raise InvalidInput(
            f"body is not valid JSON: {exc}", details=[{"path": "(body)", "reason": "invalid JSON"}]
        ) from exc
    if isinstance(data, dict) and isinstance(data.get("rows"), list):
        data = data["rows"]
    if not isinstance(data, list):
        raise InvalidInput(
            'JSON import is an array of objects (or {"rows": [...]})',
            details=[{"path": "(body)", "reason": "not an array"}],
        )
    return (
        (number, row if isinstance(row, dict) else ImportRowError(row=number, field=None, error="not an object"))
        for number, row in enumerate(data, start=1)
    )
