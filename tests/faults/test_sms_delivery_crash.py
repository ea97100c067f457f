"""SIGKILL the server while the Twilio server holds its answer to an SMS (the provider has the
message, the commit never happened); restart: the send is not made again (at most once per
send_id), and it is recorded ``failed`` with ``outcome unknown``."""

from __future__ import annotations

import json
import os
import signal
import threading
from pathlib import Path

import httpx

from tests.faults.test_crash import server
from tests.support import LOOPBACK_RELAY_ENV, free_port, wait_until
from tests.vendors.twilio_server import TwilioServer

ACCOUNT = "AC" + "0123456789abcdef" * 2
TOKEN = "twilio-crash-token"


def test_a_crash_during_the_twilio_call_sends_nothing_twice(tmp_path: Path) -> None:
    twilio = TwilioServer(ACCOUNT, TOKEN)
    twilio.hold = threading.Event()
    data, port = tmp_path / "data", free_port()
    with twilio.running():
        try:
            with server(data, port, LOOPBACK_RELAY_ENV) as proc:
                keys = json.loads((data / "keys.json").read_text())
                base = f"http://127.0.0.1:{port}"
                api = httpx.Client(base_url=base, headers={"Authorization": f"Bearer {keys['secret_key']}"})
                config = {
                    "account_sid": ACCOUNT,
                    "auth_token": TOKEN,
                    "from": "+14155550100",
                    "base_url": twilio.base_url,
                    "timeout": 60,
                }
                provider = {"name": "twilio", "channel": "sms", "type": "twilio", "config": config}
                assert api.post("/api/v1/providers", json=provider).status_code == 201
                template = {"name": "t", "channel": "sms", "content": {"body": "Hi {{ contact.first_name }}"}}
                template_id = api.post("/api/v1/templates", json=template).json()["id"]
                journey = {
                    "name": "sms",
                    "trigger": {"type": "event", "event": "signed_up"},
                    "start": "text",
                    "steps": {
                        "text": {"type": "send", "channel": "sms", "template_id": template_id, "next": "done"},
                        "done": {"type": "exit"},
                    },
                }
                journey_id = api.post("/api/v1/journeys", json=journey).json()["id"]
                assert api.post(f"/api/v1/journeys/{journey_id}/publish").status_code == 200
                ingest = httpx.Client(base_url=base, auth=(keys["write_key"], ""))
                traits = {"first_name": "Ada", "phone": "+447700900123"}
                ingest.post("/v1/identify", json={"userId": "ada", "traits": traits})
                ingest.post("/v1/track", json={"userId": "ada", "event": "signed_up"})
                wait_until(lambda: len(twilio.received) == 1, timeout=30)
                os.kill(proc.pid, signal.SIGKILL)  # Twilio has the message; the commit never happened
            twilio.hold.set()
            twilio.hold = None
            with server(data, port, LOOPBACK_RELAY_ENV):
                api = httpx.Client(base_url=base, headers={"Authorization": f"Bearer {keys['admin_key']}"})

                def rows() -> list[list[str]]:
                    query = "SELECT channel, status, detail FROM messages FINAL WHERE contact_id = 'ada' ORDER BY at"
                    rows: list[list[str]] = api.post("/api/v1/sql", json={"query": query}).json()["rows"]
                    return rows

                wait_until(lambda: [r[1] for r in rows()] == ["queued", "failed"], timeout=60, interval=0.5)
                channel, _, detail = rows()[1]
                assert channel == "sms"
                assert "outcome unknown" in detail
                assert len(twilio.received) == 1  # never called again for that send_id
                assert twilio.received[0].form()["Body"] == "Hi Ada"
        finally:
            if twilio.hold is not None:
                twilio.hold.set()
