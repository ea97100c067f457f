"""The loopback vendor servers of ``bench/sends.py``, in a process of their own (one event loop).

Four servers on 127.0.0.1, each counting the connections it accepts (reuse shows as few of them):

- ``email``: SMTP (``aiosmtpd``'s protocol on this process's loop);
- ``webhook``: an HTTP/1.1 receiver answering ``200 {"ok": true}`` to a ``POST /hook``;
- ``twilio`` / ``vonage``: HTTP/1.1 with the strict request rules and answers of
  ``tests/vendors/twilio_server.py`` and ``tests/vendors/vonage_server.py`` (their ``answer``
  methods, reused as they are); only the transport is different: a small asyncio HTTP/1.1
  server with keep-alive instead of a thread per connection, so the server is not the bound.

Every message carries ``bench <contact id>`` (SMTP: the ``Subject``; HTTP: the form's ``Body`` /
``text``, or the webhook body); the server records when it first had each one.

Control over stdin/stdout, one JSON line each: on start it prints ``{"ports": {...}}``; then
``stats <channel>`` answers that channel's counters, arrival times (``time.monotonic``, the same
clock as the bench process's) and this process's CPU seconds so far. EOF on stdin stops it.

    python bench/vendor_servers.py   # started by bench/sends.py; not meant to be run by hand
"""

from __future__ import annotations

import asyncio
import json
import os
import re
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

# The strict vendor rules live with the tests (tests/vendors); this process imports them from the checkout
# this file is in, whichever interpreter runs it.
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from aiosmtpd.smtp import SMTP, Envelope, Session

from tests.vendors.http_vendor import Answer, Received
from tests.vendors.twilio_server import TwilioServer
from tests.vendors.vonage_server import VonageServer

HOST = "127.0.0.1"
TWILIO_ACCOUNT = "AC" + "0123456789abcdef" * 2
TWILIO_TOKEN = "bench-twilio-auth-token"
VONAGE_KEY = "benchkey1"
VONAGE_SECRET = "bench-vonage-secret"
KEY = re.compile(rb"bench (c[0-9]+)")
SUBJECT = re.compile(rb"^Subject: bench (c[0-9]+)", re.MULTILINE)
MESSAGE_ID = re.compile(rb"^Message-ID: *(\S+)", re.MULTILINE | re.IGNORECASE)


@dataclass
class Channel:
    requests: int = 0
    accepted: int = 0
    rejected: int = 0
    connections: int = 0
    duplicates: int = 0
    first_at: float = 0.0
    last_at: float = 0.0
    arrived: dict[str, float] = field(default_factory=dict)
    rejections: list[str] = field(default_factory=list)

    def record(self, key: str | None, at: float) -> None:
        if key is None:
            return
        if key in self.arrived:
            self.duplicates += 1
            return
        self.arrived[key] = at
        self.first_at = self.first_at or at
        self.last_at = max(self.last_at, at)

    def refuse(self, why: str) -> None:
        self.rejected += 1
        if len(self.rejections) < 5:
            self.rejections.append(why[:300])


CHANNELS = {name: Channel() for name in ("email", "webhook", "twilio", "vonage")}


# -- HTTP/1.1 -------------------------------------------------------------------------------------


class HttpVendor(asyncio.Protocol):
    """Keep-alive HTTP/1.1 with ``Content-Length`` bodies (what the senders send); answers in order."""

    def __init__(self, name: str, answer: Any, body_of: Any) -> None:
        self.channel = CHANNELS[name]
        self.answer = answer
        self.body_of = body_of  # request -> the text carrying "bench <id>" (or None)
        self.buffer = bytearray()
        self.transport: asyncio.Transport | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        assert isinstance(transport, asyncio.Transport)
        self.transport = transport
        self.channel.connections += 1

    def data_received(self, data: bytes) -> None:
        self.buffer += data
        while self.transport is not None:
            end = self.buffer.find(b"\r\n\r\n")
            if end < 0:
                return
            lines = bytes(self.buffer[:end]).decode("latin-1").split("\r\n")
            method, path, _version = lines[0].split(" ", 2)
            headers: dict[str, str] = {}
            for line in lines[1:]:
                name, _, value = line.partition(":")
                headers[name.strip().lower()] = value.strip()
            if "transfer-encoding" in headers:
                self.reply(Answer(411, {"error": "Content-Length required"}), close=True)
                return
            length = int(headers.get("content-length", "0"))
            if len(self.buffer) < end + 4 + length:
                return
            body = bytes(self.buffer[end + 4 : end + 4 + length])
            del self.buffer[: end + 4 + length]
            self.handle(Received(method, path, headers, body, self.transport.get_extra_info("peername")[1]))

    def handle(self, request: Received) -> None:
        at = time.monotonic()
        channel = self.channel
        channel.requests += 1
        answer = self.answer(request)
        if 200 <= answer.status < 300 and _vendor_ok(answer.body):
            channel.accepted += 1
            match = KEY.search(self.body_of(request))
            channel.record(match.group(1).decode() if match else None, at)
        else:
            channel.refuse(f"{answer.status} {json.dumps(answer.body)}")
        self.reply(answer, close=request.headers.get("connection", "").lower() == "close")

    def reply(self, answer: Answer, *, close: bool) -> None:
        assert self.transport is not None
        raw = json.dumps(answer.body).encode()
        head = [f"HTTP/1.1 {answer.status} {'OK' if answer.status < 400 else 'Error'}"]
        head += ["Content-Type: application/json; charset=utf-8", f"Content-Length: {len(raw)}"]
        head += [f"{name}: {value}" for name, value in answer.headers.items()]
        if close:
            head.append("Connection: close")
        self.transport.write(("\r\n".join(head) + "\r\n\r\n").encode("latin-1") + raw)
        if close:
            self.transport.close()
            self.transport = None

    def connection_lost(self, exc: Exception | None) -> None:
        self.transport = None


def _vendor_ok(body: Any) -> bool:
    """Vonage answers 200 to errors too: its per-message ``status`` says."""
    messages = body.get("messages") if isinstance(body, dict) else None
    if isinstance(messages, list):
        return all(isinstance(m, dict) and m.get("status") == "0" for m in messages)
    return True


def _form_value(name: str) -> Any:
    def body_of(request: Received) -> bytes:
        if request.headers.get("content-type", "").startswith("application/json"):
            return str(json.loads(request.body).get(name, "")).encode()
        return request.form().get(name, "").encode()

    return body_of


def webhook_answer(request: Received) -> Answer:
    if request.method != "POST" or request.path != "/hook":
        return Answer(404, {"error": "not found"})
    if not request.headers.get("idempotency-key"):
        return Answer(400, {"error": "Idempotency-Key header missing"})
    return Answer(200, {"ok": True})


# -- SMTP -----------------------------------------------------------------------------------------


class CountingSMTP(SMTP):
    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        CHANNELS["email"].connections += 1
        super().connection_made(transport)


class Inbox:
    async def handle_DATA(self, server: SMTP, session: Session, envelope: Envelope) -> str:
        at = time.monotonic()
        channel = CHANNELS["email"]
        channel.requests += 1
        raw = envelope.original_content or envelope.content
        assert isinstance(raw, bytes)
        subject, message_id = SUBJECT.search(raw), MESSAGE_ID.search(raw)
        if subject is None or message_id is None:
            channel.refuse("a message without a bench Subject or a Message-ID")
            return "550 no Subject or Message-ID"
        channel.accepted += 1
        channel.record(subject.group(1).decode(), at)
        return "250 OK"


# -- control --------------------------------------------------------------------------------------


def stats(name: str) -> dict[str, Any]:
    channel = CHANNELS[name]
    times = os.times()
    return {
        "requests": channel.requests,
        "accepted": channel.accepted,
        "rejected": channel.rejected,
        "rejections": channel.rejections,
        "connections": channel.connections,
        "duplicates": channel.duplicates,
        "first_at": channel.first_at,
        "last_at": channel.last_at,
        "arrived": channel.arrived,
        "cpu_s": times.user + times.system,
    }


async def main() -> None:
    loop = asyncio.get_running_loop()
    twilio = TwilioServer(TWILIO_ACCOUNT, TWILIO_TOKEN)
    vonage = VonageServer(VONAGE_KEY, VONAGE_SECRET)
    inbox = Inbox()
    servers = {
        "email": await loop.create_server(lambda: CountingSMTP(inbox, hostname=HOST), HOST, 0, backlog=512),
        "webhook": await loop.create_server(
            lambda: HttpVendor("webhook", webhook_answer, lambda r: r.body), HOST, 0, backlog=512
        ),
        "twilio": await loop.create_server(
            lambda: HttpVendor("twilio", twilio.answer, _form_value("Body")), HOST, 0, backlog=512
        ),
        "vonage": await loop.create_server(
            lambda: HttpVendor("vonage", vonage.answer, _form_value("text")), HOST, 0, backlog=512
        ),
    }
    ports = {name: server.sockets[0].getsockname()[1] for name, server in servers.items()}
    print(json.dumps({"ports": ports}), flush=True)
    reader = asyncio.StreamReader()
    await loop.connect_read_pipe(lambda: asyncio.StreamReaderProtocol(reader), sys.stdin)
    while line := await reader.readline():
        command, _, name = line.decode().strip().partition(" ")
        if command == "stats":
            sys.stdout.write(json.dumps(stats(name)) + "\n")
            sys.stdout.flush()
    for server in servers.values():
        server.close()


if __name__ == "__main__":
    asyncio.run(main())
