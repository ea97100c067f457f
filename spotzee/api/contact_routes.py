"""Contacts admin API (secret key of the project): read, patch attributes, GDPR erase.

``{id}`` is the app's userId, or an anonymousId; an id merged into another contact resolves
to that contact.
"""

from __future__ import annotations

import uuid
from typing import Any

from fastapi import Response

from spotzee.api.admin_router import admin_router
from spotzee.api.deps import ProjectId, SecretKeyDep, ServicesDep
from spotzee.api.error_handlers import error_responses
from spotzee.domain.traits import TraitError, normalize_traits
from spotzee.errors import InvalidInput, NotFound
from spotzee.schemas.contact_models import ContactPublic, ContactState, ContactUpdate
from spotzee.schemas.records import ContactErase, ContactPatch, record_key
from spotzee.schemas.segment_models import ContactSegmentPublic, ContactSegmentsPublic
from spotzee.services.container import Services
from spotzee.streams.contact_processor import ALIASES, CONTACTS
from spotzee.streams.record_codec import dumps
from spotzee.tables.keyspace import contact_key

router = admin_router("/api/v1/contacts", "contacts")
WAIT_SECONDS = 10.0
_PROCESSING: dict[int | str, dict[str, Any]] = {
    202: {
        "model": ContactPublic,
        "description": f"Stored, not processed within {WAIT_SECONDS:g} s: the contact as read then (maybe the old)",
    }
}


def resolve(services: Services, project_id: str, contact_id: str) -> ContactState | None:
    """The contact ``contact_id`` names, following merges (at most a few hops)."""
    current = contact_id
    for _ in range(8):
        raw = services.runtime.read(CONTACTS.name, contact_key(project_id, current))
        if raw is not None:
            return CONTACTS.decode(raw)
        alias = services.runtime.read(ALIASES.name, contact_key(project_id, current))
        if alias is None:
            return None
        current = ALIASES.decode(alias).merged_into
    return None


def _existing(services: Services, project_id: str, contact_id: str) -> ContactState:
    state = resolve(services, project_id, contact_id)
    if state is None:
        raise NotFound(f"contact {contact_id} not found")
    return state


@router.get("/{contact_id:path}/segments", response_model=ContactSegmentsPublic, responses=error_responses(404))
async def contact_segments(contact_id: str, project_id: ProjectId, services: ServicesDep) -> ContactSegmentsPublic:
    """The segments the contact is in now (an id ending in ``/segments`` can't be read here)."""
    contact = _existing(services, project_id, contact_id)
    items = [
        ContactSegmentPublic(id=d.id, name=d.name, since=m.since, version=m.version)
        for d, m in services.segments.of_contact(contact)
    ]
    return ContactSegmentsPublic(items=items)


@router.get("/{contact_id:path}", response_model=ContactPublic, responses=error_responses(404))
async def get_contact(contact_id: str, project_id: ProjectId, services: ServicesDep) -> ContactPublic:
    return ContactPublic.from_state(_existing(services, project_id, contact_id))


@router.patch(
    "/{contact_id:path}",
    response_model=ContactPublic,
    responses={**_PROCESSING, **error_responses(400, 404, 413, 429, 503)},
)
async def patch_contact(
    contact_id: str,
    body: ContactUpdate,
    key: SecretKeyDep,
    project_id: ProjectId,
    services: ServicesDep,
    response: Response,
) -> ContactPublic:
    before = _existing(services, project_id, contact_id)
    try:
        traits = normalize_traits(body.as_traits(), prefix="traits")
    except TraitError as exc:
        field = exc.path.removeprefix("traits.")
        path = field if field in body.model_fields_set else exc.path  # sent top-level, reported there
        raise InvalidInput(f"{path}: {exc.reason}", details=[{"path": path, "reason": exc.reason}]) from exc
    patch = ContactPatch(
        project_id=project_id,
        id=before.id,
        traits=traits,
        requested_at=services.clock.now(),
        request_id=str(uuid.uuid4()),
    )
    positions = await services.runtime.append([(record_key(patch), dumps(patch))])
    if not await services.runtime.wait_processed(positions, WAIT_SECONDS):
        response.status_code = 202
    after = resolve(services, project_id, before.id) or before
    # The audit names the fields, never their values: an erase must not leave personal data behind.
    fields = sorted(traits)
    services.tenancy.audit(
        key,
        "contact.update",
        before.id,
        project_id,
        {"version": before.version, "fields": fields},
        {"version": after.version},
    )
    return ContactPublic.from_state(after)


@router.delete("/{contact_id:path}", status_code=202, responses=error_responses(404, 429, 503))
async def erase_contact(
    contact_id: str, key: SecretKeyDep, project_id: ProjectId, services: ServicesDep
) -> dict[str, object]:
    """GDPR erase: state, dedupe entries, merged ids and ClickHouse rows. A later event for the
    same id starts a new, empty contact (erase is not a suppression)."""
    state = resolve(services, project_id, contact_id)
    target = state.id if state is not None else contact_id
    if state is None and services.runtime.read(ALIASES.name, contact_key(project_id, contact_id)) is None:
        raise NotFound(f"contact {contact_id} not found")
    erase = ContactErase(
        project_id=project_id, id=target, requested_at=services.clock.now(), request_id=str(uuid.uuid4())
    )
    positions = await services.runtime.append([(record_key(erase), dumps(erase))])
    processed = await services.runtime.wait_processed(positions, WAIT_SECONDS)
    services.tenancy.audit(
        key,
        "contact.erase",
        target,
        project_id,
        {"id": target, "merged_ids": len(state.anonymous_ids) if state else 0},
        None,
    )
    return {
        "id": target,
        "status": "erased" if processed else "accepted",
        "history": "queued for deletion in ClickHouse",
    }
