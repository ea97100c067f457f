"""Journey state and messages written by the pydantic models read back with the msgspec Structs.

The samples are the exact bytes the pydantic models (``RunState``, ``EntranceHistory``, ``SendCommand``,
``JourneyAdvance``, ``DeliveryState``) wrote before the move to Structs: stored runs, entrance histories,
queued sends and delivery states must stay readable, and a value read and written again must be the same
bytes (field names, order, ``null``s and datetimes in RFC 3339 with ``Z``).
"""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Any

import orjson
import pytest

from spotzee.domain.journeys import EntranceHistory, EventData, RunState
from spotzee.schemas.events import TrackMessage
from spotzee.schemas.message_data import TrackData
from spotzee.schemas.messages import JourneyAdvance, SendCommand, track_record
from spotzee.schemas.structs import decode, encode
from spotzee.streams.delivery_decisions import DeliveryState
from spotzee.streams.journey_processor import ContactRuns

T0 = datetime(2026, 3, 2, 10, 0, tzinfo=UTC)
EVENT = (
    b'{"name":"signed_up","properties":{"plan":"pro","n":2,"nested":{"a":[1,2.5,null,true]}},'
    b'"message_id":"m1","timestamp":"2026-03-02T10:00:00Z"}'
)
WAITING_RUN = (
    b'{"run_id":"run_0123456789abcdef0123456789abcdef","journey_id":"jrn_welcome","journey_version":3,'
    b'"contact_id":"u1","status":"waiting","step_id":"wait","step_type":"wait_for_event","visit":2,'
    b'"entered_at":"2026-03-02T10:00:00Z","updated_at":"2026-03-02T10:00:01.250000Z",'
    b'"wake_at":"2026-03-03T10:00:00Z","variables":{"event":' + EVENT + b',"journey":{"split":{"variant":"B"}}},'
    b'"assignments":{"split":"B"},"visits":{"split":1,"wait":2},"seen":["m1","m2"],'
    b'"exited_at":null,"exit_reason":null}'
)
EXITED_RUN = (
    b'{"run_id":"run_x","journey_id":"j","journey_version":1,"contact_id":"u2","status":"exited",'
    b'"step_id":"done","step_type":"","visit":0,"entered_at":"2026-03-02T10:00:00Z",'
    b'"updated_at":"2026-03-02T10:00:00Z","wake_at":null,"variables":{"event":{},"journey":{}},'
    b'"assignments":{},"visits":{},"seen":[],"exited_at":"2026-03-02T10:00:00Z","exit_reason":"exit_step"}'
)
HISTORY = (
    b'{"entries":2,"active_run_ids":["run_a","run_b"],"last_entered_at":"2026-03-02T10:00:00Z",'
    b'"last_exited_at":"2026-03-02T09:00:00Z","last_occurrence":"2026-03-02T10:00:00Z"}'
)
FRESH_HISTORY = b'{"entries":0,"active_run_ids":[],"last_entered_at":null,"last_exited_at":null,"last_occurrence":null}'
SEND = (
    b'{"type":"send","project_id":"p","contact_id":"u1","send_id":"run_x:mail:1","channel":"email",'
    b'"template_id":"tpl","journey_id":"j","run_id":"run_x","step_id":"mail",'
    b'"variables":{"event":' + EVENT + b',"journey":{}},"queued_at":"2026-03-02T10:00:00Z"}'
)
ADVANCE = (
    b'{"type":"journey_advance","project_id":"p","contact_id":"u1","journey_id":"j","journey_version":1,'
    b'"run_id":"run_x","step_id":"mail","visit":1,"kind":"completed","at":"2026-03-02T10:00:00Z",'
    b'"detail":{"next":"done","send_id":"run_x:mail:1"}}'
)
DELIVERY = b'{"status":"retry","attempts":2,"due_at":"2026-03-02T10:00:00Z","command":' + SEND + b"}"

SAMPLES: list[tuple[type[Any], bytes]] = [
    (RunState, WAITING_RUN),
    (RunState, EXITED_RUN),
    (EntranceHistory, HISTORY),
    (EntranceHistory, FRESH_HISTORY),
    (SendCommand, SEND),
    (JourneyAdvance, ADVANCE),
    (DeliveryState, DELIVERY),
    (EventData, EVENT),
]


@pytest.mark.parametrize(("kind", "stored"), SAMPLES, ids=[f"{k.__name__}-{i}" for i, (k, _) in enumerate(SAMPLES)])
def test_pydantic_era_json_decodes_and_encodes_to_the_same_bytes(kind: type[Any], stored: bytes) -> None:
    value = decode(kind, stored)
    assert encode(value) == stored


def test_decoded_values_have_their_types() -> None:
    run = decode(RunState, WAITING_RUN)
    assert run.wake_at == T0 + timedelta(days=1)
    assert run.updated_at == T0 + timedelta(seconds=1, microseconds=250000)
    assert run.variables.journey == {"split": {"variant": "B"}}
    timer = run.timer()
    assert timer is not None
    assert (timer.step_id, timer.visit) == ("wait", 2)
    assert decode(DeliveryState, DELIVERY).command.queued_at == T0
    assert EventData(
        name="signed_up",
        properties={"plan": "pro", "n": 2, "nested": {"a": [1, 2.5, None, True]}},
        message_id="m1",
        timestamp=T0,
    ).as_variables() == orjson.loads(EVENT)


def test_the_run_index_is_a_plain_list_of_ids() -> None:
    assert encode(ContactRuns(run_ids=["run_a", "run_b"])) == b'{"run_ids":["run_a","run_b"]}'


def test_a_track_record_is_what_the_api_keeps_for_the_same_call() -> None:
    """The synthetic events (an ``event`` step, a delivery outcome): the raw JSON the ingestion API's
    model writes, and the message the processor would have made of it."""
    properties = {"send_id": "run_x:mail:1", "channel": "email", "nested": {"é": [1, 2.5]}}
    record = track_record(
        project_id="p",
        message_id="run_x:mail:1:sent",
        user_id="u1",
        event="message_sent",
        properties=properties,
        received_at=T0,
        forwarded_to="u1",
    )
    api = TrackMessage.model_validate({"userId": "u1", "event": "message_sent", "properties": properties})
    assert record.raw == api.model_dump_json(by_alias=True)
    assert record.message == TrackData(user_id="u1", event="message_sent", properties=properties)
    assert (record.contact_id, record.received_at, record.forwarded_to) == ("u1", T0, "u1")
