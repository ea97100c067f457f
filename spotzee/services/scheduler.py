"""Fires scheduled journeys: at each occurrence, the audience enters (runtime-neutral).

Runs as a background task of every API process (``Services``), on both runtimes. Each pass
(``tick``) looks at the live journeys with a ``scheduled`` trigger (the process's
``JourneyRegistry``, so a publish, edit or pause is seen at the next pass, at most ``poll``
seconds later) and, for each one whose next occurrence is due, enumerates the audience (segment or
list members, as the process reads them now) in pages and appends one ``JourneyEntry`` per contact
to ``events``: the same path as API entries, entry id and trigger key
``schedule:<journey id>:<occurrence>``.

Which occurrence: the first one after both the last occurrence fired and the journey's
``updated_at`` (its publish, resume or latest edit), so a journey never fires retroactively. When
several are due (the process was down), only the most recent fires, once, and not if it is older
than ``missed_limit`` (default 24 hours): those are skipped with a log line.

Exactly once per contact and occurrence: progress is kept in the definitions store at
``schedule/<journey id>`` (``ScheduleState``: the last occurrence fully emitted, and the page
cursor of one being emitted), written after every page, so a restart resumes where it stopped and
another API process sees it; what can still be emitted twice (a crash between a page and its
cursor, two API processes firing at once) is refused by the contact processor, which records the
last occurrence in each contact's entrance history.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Awaitable, Callable
from datetime import UTC, datetime, timedelta
from typing import Final, Literal, TypedDict, Unpack

from spotzee.domain import journeys as machine
from spotzee.errors import Overloaded
from spotzee.runtime.runtime_protocol import Runtime
from spotzee.schemas.common import Model, UTCDateTime
from spotzee.schemas.journey_models import JourneyDefinition, JourneyStatus, ScheduledTrigger
from spotzee.schemas.records import JourneyEntry
from spotzee.schemas.segment_models import SegmentStatus
from spotzee.services.segment_service import decode_cursor, members_page
from spotzee.streams.interface import Clock
from spotzee.streams.journey_processor import JourneyRegistry
from spotzee.streams.record_codec import dumps
from spotzee.streams.segment_processor import LIST_MEMBERS, SEGMENT_MEMBERS, SegmentRegistry, member_prefix

log = logging.getLogger(__name__)

KIND: Final = "schedule"
POLL: Final = 0.5  # seconds between looks at the definitions (publish, edit, pause)
PAGE: Final = 1000  # audience members per page (one append, one progress write)
MISSED_LIMIT: Final = timedelta(hours=24)  # an occurrence missed by longer is skipped
EVENT_NAME: Final = "journey_scheduled"

ProjectZone = Callable[[str], str]


class ScheduleState(Model):
    """A scheduled journey's progress, at ``schedule/<journey id>`` in the definitions store."""

    type: Literal["journey_schedule"] = "journey_schedule"
    project_id: str
    journey_id: str
    last_occurrence: UTCDateTime | None = None  # every member of its audience was emitted
    current: UTCDateTime | None = None  # an occurrence being emitted ...
    cursor: str | None = None  # ... up to this members cursor (None: from the start)
    updated_at: UTCDateTime


def state_key(journey_id: str) -> str:
    return f"{KIND}/{journey_id}"


def scheduled_event(occurrence: datetime) -> machine.EventData:
    """The run's ``event``: ``journey_scheduled`` with the occurrence (also its ``timestamp``)."""
    return machine.EventData(
        name=EVENT_NAME, properties={"occurrence": machine.occurrence_iso(occurrence)}, timestamp=occurrence
    )


class Tuning(TypedDict, total=False):
    """How often the scheduler looks (``poll``, seconds), how many members it enters per
    append (``page``), and how late an occurrence may still fire (``missed_limit``)."""

    poll: float
    page: int
    missed_limit: timedelta


class Scheduler:
    def __init__(
        self,
        runtime: Runtime,
        journeys: JourneyRegistry,
        segments: SegmentRegistry,
        project_zone: ProjectZone,
        clock: Clock,
        **tuning: Unpack[Tuning],
    ) -> None:
        self.runtime = runtime
        self.journeys = journeys
        self.segments = segments
        self.project_zone = project_zone
        self.clock = clock
        self.poll = tuning.get("poll", POLL)
        self.page = tuning.get("page", PAGE)
        self.missed_limit = tuning.get("missed_limit", MISSED_LIMIT)
        self.fired = 0  # occurrences fully emitted by this process
        self._states: dict[str, ScheduleState] = {}
        self._next: dict[str, tuple[tuple[object, ...], datetime | None]] = {}
        self._task: asyncio.Task[None] | None = None

    # -- the loop -------------------------------------------------------------------------------

    def start(self) -> None:
        if self._task is None:
            self._task = asyncio.get_running_loop().create_task(self.run())

    async def stop(self) -> None:
        task, self._task = self._task, None
        if task is not None:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await task

    async def run(self, sleep: Callable[[float], Awaitable[None]] = asyncio.sleep) -> None:
        delay = self.poll
        while True:
            try:
                wait = await self.tick()
                delay = self.poll
            except asyncio.CancelledError:
                raise
            except Exception as exc:  # the log or the store may be down: retry, progress is kept
                log.warning("scheduler pass failed (%s); retrying in %.0fs", exc, delay)
                wait, delay = delay, min(delay * 2, 30.0)
            await sleep(wait)

    async def tick(self) -> float:
        """Fire every due occurrence; the seconds until the next one is due (at most ``poll``)."""
        wait = self.poll
        for journey in self._scheduled():
            now = self.clock.now()
            occurrence = self.due(journey, now)
            if occurrence is not None:
                await self.fire(journey, occurrence)
                continue
            upcoming = self._upcoming(journey)
            if upcoming is not None:
                wait = min(wait, max((upcoming - now).total_seconds(), 0.01))
        return wait

    # -- which occurrence -------------------------------------------------------------------------

    def due(self, journey: JourneyDefinition, now: datetime) -> datetime | None:
        """The occurrence to fire now, if any: the most recent one due, within ``missed_limit``."""
        upcoming = self._upcoming(journey)
        if upcoming is None or upcoming > now:
            return None
        trigger = self._trigger(journey)
        floor = max(self._anchor(journey), now - self.missed_limit)
        found = machine.next_fire(trigger, floor, self._zone(journey))
        if found is None or found > now:  # every due occurrence is older than the limit: skip them
            log.warning(
                "journey %s: occurrences from %s missed by more than %s, skipped",
                journey.id,
                machine.occurrence_iso(upcoming),
                self.missed_limit,
            )
            self._remember(journey, floor, None)  # (in memory: nothing up to the floor fires)
            return None
        while (later := machine.next_fire(trigger, found, self._zone(journey))) is not None and later <= now:
            found = later
        if found != upcoming:
            log.warning(
                "journey %s: occurrences from %s missed; firing the latest, %s",
                journey.id,
                machine.occurrence_iso(upcoming),
                machine.occurrence_iso(found),
            )
        return found

    def _upcoming(self, journey: JourneyDefinition) -> datetime | None:
        """The first occurrence after the anchor (cached until the journey or its progress moves)."""
        anchor = self._anchor(journey)
        signature = (journey.version, journey.updated_at, anchor)
        cached = self._next.get(journey.id)
        if cached is not None and cached[0] == signature:
            return cached[1]
        found = machine.next_fire(self._trigger(journey), anchor, self._zone(journey))
        self._next[journey.id] = (signature, found)
        return found

    def _anchor(self, journey: JourneyDefinition) -> datetime:
        """Occurrences strictly after this may fire: after the last fired, and after going live."""
        last = self.state(journey).last_occurrence
        return journey.updated_at if last is None else max(last, journey.updated_at)

    def _zone(self, journey: JourneyDefinition) -> str:
        return journey.timezone or self.project_zone(journey.project_id)

    @staticmethod
    def _trigger(journey: JourneyDefinition) -> ScheduledTrigger:
        assert isinstance(journey.trigger, ScheduledTrigger)
        return journey.trigger

    def _scheduled(self) -> list[JourneyDefinition]:
        return sorted(
            (
                j
                for j in self.journeys.all()
                if j.status == JourneyStatus.live and isinstance(j.trigger, ScheduledTrigger)
            ),
            key=lambda j: j.id,
        )

    # -- progress ---------------------------------------------------------------------------------

    def state(self, journey: JourneyDefinition, *, reread: bool = False) -> ScheduleState:
        """This process's view of the journey's progress, merged with the stored one."""
        known = self._states.get(journey.id)
        if known is None or reread:
            key = state_key(journey.id)
            raw = next((v for k, v in self.runtime.scan_definitions(key) if k == key), None)
            stored = ScheduleState.model_validate_json(raw) if raw is not None else None
            known = _later(known, stored) or ScheduleState(
                project_id=journey.project_id, journey_id=journey.id, updated_at=self.clock.now()
            )
            self._states[journey.id] = known
        return known

    def _remember(
        self, journey: JourneyDefinition, last: datetime | None, current: tuple[datetime, str] | None
    ) -> None:
        state = self.state(journey)
        self._states[journey.id] = state.model_copy(
            update={
                "last_occurrence": last if last is not None else state.last_occurrence,
                "current": current[0] if current else None,
                "cursor": current[1] if current else None,
                "updated_at": self.clock.now(),
            }
        )

    async def _save(self, journey: JourneyDefinition) -> None:
        state = self._states[journey.id]
        await asyncio.to_thread(self.runtime.put_definitions, [(state_key(journey.id), dumps(state))], [])

    # -- firing ---------------------------------------------------------------------------------

    async def fire(self, journey: JourneyDefinition, occurrence: datetime) -> None:
        """Enter the audience for ``occurrence``, page by page, resuming a cursor left by a crash."""
        state = await asyncio.to_thread(self.state, journey, reread=True)  # another process may be ahead
        if state.last_occurrence is not None and occurrence <= state.last_occurrence:
            return
        cursor = state.cursor if state.current == occurrence else None
        table, audience_id = self._audience(journey)
        if table is None:
            log.warning(
                "journey %s: audience %s is gone; occurrence %s enters nobody",
                journey.id,
                audience_id,
                machine.occurrence_iso(occurrence),
            )
        elif table == "":
            return  # the segment is still building: try again at the next pass
        iso = machine.occurrence_iso(occurrence)
        entry_id = machine.schedule_key(journey.id, occurrence)
        event = scheduled_event(occurrence).as_variables()
        prefix = member_prefix(journey.project_id, audience_id)
        entered = 0
        while table:
            current = self.journeys.get(journey.id)
            if current is None or current.status != JourneyStatus.live or current.trigger != journey.trigger:
                log.info("journey %s: paused or changed while firing %s; stopped", journey.id, iso)
                return
            page = await asyncio.to_thread(members_page, self.runtime, table, prefix, cursor, self.page)
            if not page.items:
                break
            now = self.clock.now()
            records = [
                (
                    f"{journey.project_id}:{member.id}",
                    dumps(
                        JourneyEntry(
                            project_id=journey.project_id,
                            id=member.id,
                            journey_id=journey.id,
                            entry_id=entry_id,
                            event=event,
                            create_contact=False,
                            at=now,
                            occurrence=occurrence,
                        )
                    ),
                )
                for member in page.items
            ]
            await self._append(records)
            entered += len(records)
            if page.next_cursor is None:
                break
            cursor = page.next_cursor
            self._remember(journey, None, (occurrence, cursor))
            await self._save(journey)
        self._remember(journey, occurrence, None)
        await self._save(journey)
        self.fired += 1
        log.info("journey %s: occurrence %s fired, %d contacts", journey.id, iso, entered)

    def _audience(self, journey: JourneyDefinition) -> tuple[str | None, str]:
        """(members table, id); table None: the audience is gone, "": not ready yet."""
        audience = self._trigger(journey).audience
        if audience.list_id is not None:
            return LIST_MEMBERS, audience.list_id
        assert audience.segment_id is not None
        segment = self.segments.definition(audience.segment_id)
        if segment is None or segment.status == SegmentStatus.deleted:
            return None, audience.segment_id
        if segment.status == SegmentStatus.building:
            return "", audience.segment_id
        return SEGMENT_MEMBERS, audience.segment_id

    async def _append(self, records: list[tuple[str, bytes]]) -> None:
        while True:
            try:
                await self.runtime.append(records)
                return
            except Overloaded as exc:  # yield to live traffic
                await asyncio.sleep(min(exc.retry_after, 1))


def _later(a: ScheduleState | None, b: ScheduleState | None) -> ScheduleState | None:
    """The state further along (stored writes of several processes may interleave)."""
    if a is None or b is None:
        return a or b
    return a if _rank(a) >= _rank(b) else b


def _rank(state: ScheduleState) -> tuple[datetime, datetime, str]:
    never = datetime.min.replace(tzinfo=UTC)
    last = state.last_occurrence or never
    current = state.current if state.current is not None and state.current > last else never
    cursor = decode_cursor(state.cursor) if state.cursor and current != never else ""
    return last, current, cursor
