"""Kafka runtime: a worker SIGKILLed while the SMTP server holds a message (between the provider
call and the commit). Whoever owns the partition next -- the same worker restarted, or the other
worker taking the partition over -- does not call the provider again for that send_id (at most
once), records it ``failed`` (outcome unknown), and delivers the sends queued behind it exactly
once. Real broker, real ``spotzee worker`` processes, a real SMTP server (aiosmtpd)."""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import threading
from collections import Counter
from pathlib import Path

import pytest
from aiosmtpd.controller import Controller
from aiosmtpd.smtp import SMTP as SMTPServer
from aiosmtpd.smtp import Envelope, Session
from kafka import KafkaAdminClient

from spotzee.runtime.kafka import admin
from spotzee.runtime.kafka.config import kafka_python_config
from spotzee.settings import Settings
from tests.integration.test_catalogue import WELCOME_EMAIL, welcome_journey
from tests.support import LOOPBACK_RELAY, Stack, free_port, running_stack, start_worker, wait_until

HELD = "ada@example.com"
OTHERS = ("bob@example.com", "cy@example.com")


class HoldingInbox:
    """Takes every message; holds the 250 of the messages to ``HELD`` until released (the sender
    is mid-call), and notes the client's port of that session."""

    def __init__(self) -> None:
        self.received: list[str] = []
        self.held_peer_port: int | None = None
        self.release = threading.Event()

    async def handle_DATA(self, server: SMTPServer, session: Session, envelope: Envelope) -> str:
        recipients = [str(r) for r in envelope.rcpt_tos]
        self.received += recipients
        if HELD in recipients:
            peer = session.peer
            self.held_peer_port = int(peer[1]) if isinstance(peer, tuple) else None
            await asyncio.to_thread(self.release.wait)  # set from the test's thread
        return "250 OK"


def socket_owner(local_port: int, procs: list[subprocess.Popen[bytes]]) -> subprocess.Popen[bytes]:
    """The process holding the TCP socket whose local port is ``local_port`` (Linux /proc)."""
    inodes: set[str] = set()
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        with open(table) as handle:
            for line in handle.readlines()[1:]:
                fields = line.split()
                if int(fields[1].rsplit(":", 1)[1], 16) == local_port:
                    inodes.add(fields[9])
    for proc in procs:
        fd_dir = Path(f"/proc/{proc.pid}/fd")
        for fd in fd_dir.iterdir():
            try:
                target = os.readlink(fd)
            except OSError:
                continue
            if target.startswith("socket:[") and target[8:-1] in inodes:
                return proc
    raise AssertionError(f"no worker holds the SMTP connection from port {local_port}")


def group_stable(settings: Settings, members: int) -> bool:
    """The processor group has ``members`` members and no rebalance in progress."""
    client = KafkaAdminClient(**kafka_python_config(settings))
    try:
        group_id = admin.group_id(settings, admin.PROCESSOR_GROUP)
        group = client.describe_groups([group_id])[group_id]
    finally:
        client.close()
    return bool(group.get("group_state") == "Stable" and len(group.get("members") or []) == members)


def statuses(stack: Stack) -> dict[str, list[str]]:
    rows = stack.sql("SELECT contact_id, status FROM messages FINAL ORDER BY contact_id, at")
    out: dict[str, list[str]] = {}
    for contact, status in rows:
        out.setdefault(contact, []).append(status)
    return out


@pytest.mark.parametrize("after_kill", ["restart", "takeover"])
def test_a_worker_killed_during_the_provider_call_sends_nothing_twice(
    tmp_path: Path, kafka_bootstrap: str, after_kill: str
) -> None:
    inbox = HoldingInbox()
    smtp_port = free_port()
    controller = Controller(inbox, hostname="127.0.0.1", port=smtp_port)
    controller.start()
    workers = 1 if after_kill == "restart" else 2
    try:
        # One partition: every send queues behind the held one.
        with running_stack(
            tmp_path / "data",
            runtime="kafka",
            kafka_bootstrap=kafka_bootstrap,
            workers=workers,
            partitions=1,
            **LOOPBACK_RELAY,
        ) as stack:
            provider = {
                "name": "relay",
                "channel": "email",
                "type": "smtp",
                "config": {"host": "127.0.0.1", "port": smtp_port, "security": "none", "timeout": 120},
            }
            assert stack.project.post("/api/v1/providers", json=provider).status_code == 201
            template_id = stack.project.post("/api/v1/templates", json=WELCOME_EMAIL).json()["id"]
            body = welcome_journey(template_id)
            body["steps"]["wait"]["duration"] = {"value": 1, "unit": "second"}
            journey_id = stack.project.post("/api/v1/journeys", json=body).json()["id"]
            assert stack.project.post(f"/api/v1/journeys/{journey_id}/publish").status_code == 200

            def sign_up(address: str) -> None:
                user = address.split("@")[0]
                traits = {"plan": "free", "email": address}
                assert stack.ingest.post("/v1/identify", json={"userId": user, "traits": traits}).status_code == 200
                assert stack.ingest.post("/v1/track", json={"userId": user, "event": "signed_up"}).status_code == 200

            # The held call must not meet the start-up rebalance (that one waits for it, then gives it up).
            wait_until(lambda: group_stable(stack.services.settings, workers), timeout=90, interval=0.5)
            sign_up(HELD)
            wait_until(lambda: HELD in inbox.received, timeout=90)
            for address in OTHERS:  # queued behind the held send, on the same partition
                sign_up(address)
            wait_until(lambda: all(statuses(stack).get(a.split("@")[0]) == ["queued"] for a in OTHERS), 60, 0.5)
            assert inbox.held_peer_port is not None
            victim = socket_owner(inbox.held_peer_port, stack.workers)
            os.kill(victim.pid, signal.SIGKILL)  # the provider has the message; the commit never happens
            victim.wait()
            inbox.release.set()
            index = stack.workers.index(victim)
            if after_kill == "restart":
                stack.workers[index] = start_worker(stack.services.settings, f"worker-{index + 1}")
            # takeover: the other worker gets the partition once the victim's session expires

            def done() -> bool:
                now = statuses(stack)
                return now.get("ada") == ["queued", "failed"] and all(
                    now.get(a.split("@")[0]) == ["queued", "sent"] for a in OTHERS
                )

            wait_until(done, timeout=180, interval=0.5)
            detail = stack.scalar("SELECT detail FROM messages FINAL WHERE contact_id = 'ada' AND status = 'failed'")
            assert "outcome unknown" in detail
            stack.settle(timeout=60)
            assert Counter(inbox.received) == {HELD: 1, **dict.fromkeys(OTHERS, 1)}  # nothing twice
            events = stack.sql("SELECT contact_id, event FROM events FINAL WHERE event LIKE 'message_%' ORDER BY 1")
            assert events == [["ada", "message_failed"], ["bob", "message_sent"], ["cy", "message_sent"]]
            assert statuses(stack) == {
                "ada": ["queued", "failed"],
                "bob": ["queued", "sent"],
                "cy": ["queued", "sent"],
            }
            alive = [proc for proc in stack.workers if proc is not victim]
            assert all(proc.poll() is None for proc in alive)
    finally:
        inbox.release.set()
        controller.stop()
