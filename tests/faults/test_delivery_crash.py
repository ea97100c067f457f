"""SIGKILL the server while the SMTP server holds a message (between the provider call and the
commit); restart: the send is not made again (at most once per send_id), and it is recorded."""

from __future__ import annotations

import asyncio
import json
import os
import signal
import threading
from pathlib import Path

import httpx
from aiosmtpd.controller import Controller
from aiosmtpd.smtp import SMTP as SMTPServer
from aiosmtpd.smtp import Envelope, Session

from tests.faults.test_crash import server
from tests.integration.test_catalogue import WELCOME_EMAIL, welcome_journey
from tests.support import LOOPBACK_RELAY_ENV, free_port, wait_until


class SlowInbox:
    """Takes each message, then holds its 250 until released: the sender is mid-call."""

    def __init__(self) -> None:
        self.received: list[bytes] = []
        self.release = threading.Event()

    async def handle_DATA(self, server: SMTPServer, session: Session, envelope: Envelope) -> str:
        self.received.append(bytes(envelope.original_content or b""))
        await asyncio.to_thread(self.release.wait)  # set from the test's thread
        return "250 OK"


def test_a_crash_during_the_provider_call_sends_nothing_twice(tmp_path: Path) -> None:
    inbox = SlowInbox()
    smtp_port = free_port()
    controller = Controller(inbox, hostname="127.0.0.1", port=smtp_port)
    controller.start()
    data = tmp_path / "data"
    port = free_port()
    try:
        with server(data, port, LOOPBACK_RELAY_ENV) as proc:
            keys = json.loads((data / "keys.json").read_text())
            api = httpx.Client(
                base_url=f"http://127.0.0.1:{port}", headers={"Authorization": f"Bearer {keys['secret_key']}"}
            )
            provider = {
                "name": "relay",
                "channel": "email",
                "type": "smtp",
                "config": {"host": "127.0.0.1", "port": smtp_port, "security": "none", "timeout": 60},
            }
            assert api.post("/api/v1/providers", json=provider).status_code == 201
            template_id = api.post("/api/v1/templates", json=WELCOME_EMAIL).json()["id"]
            body = welcome_journey(template_id)
            body["steps"]["wait"]["duration"] = {"value": 1, "unit": "second"}
            journey_id = api.post("/api/v1/journeys", json=body).json()["id"]
            assert api.post(f"/api/v1/journeys/{journey_id}/publish").status_code == 200
            ingest = httpx.Client(base_url=f"http://127.0.0.1:{port}", auth=(keys["write_key"], ""))
            ingest.post("/v1/identify", json={"userId": "ada", "traits": {"plan": "free", "email": "ada@example.com"}})
            ingest.post("/v1/track", json={"userId": "ada", "event": "signed_up"})
            wait_until(lambda: len(inbox.received) == 1, timeout=30)
            os.kill(proc.pid, signal.SIGKILL)  # the provider has the message; the commit never happened
        inbox.release.set()
        with server(data, port, LOOPBACK_RELAY_ENV):
            api = httpx.Client(
                base_url=f"http://127.0.0.1:{port}", headers={"Authorization": f"Bearer {keys['admin_key']}"}
            )

            def statuses() -> list[str]:
                response = api.post(
                    "/api/v1/sql",
                    json={"query": "SELECT status FROM messages FINAL WHERE contact_id = 'ada' ORDER BY at"},
                )
                return [row[0] for row in response.json()["rows"]]

            wait_until(lambda: statuses() == ["queued", "failed"], timeout=60, interval=0.5)
            detail = api.post(
                "/api/v1/sql", json={"query": "SELECT detail FROM messages FINAL WHERE status = 'failed'"}
            ).json()["rows"][0][0]
            assert "outcome unknown" in detail
            assert len(inbox.received) == 1  # never called again for that send_id
    finally:
        inbox.release.set()
        controller.stop()
