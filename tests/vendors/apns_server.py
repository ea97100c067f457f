"""A loopback APNs: HTTP/2 over TLS only (ALPN ``h2``; the ``h2`` library), with a self-signed
certificate for 127.0.0.1 made here (``client_context`` trusts it).

``POST /3/device/{token}``: ``authorization: bearer <JWT>`` verified ES256 with the key's public
half (header ``kid`` the key id, ``iss`` the team id, ``iat`` within the hour; else 403
``InvalidProviderToken`` / ``ExpiredProviderToken``), ``apns-topic`` the app's bundle id (else 400
``TopicDisallowed``), ``apns-push-type: alert`` (else 400 ``InvalidPushType``), a JSON payload with
``aps.alert`` (else 400 ``PayloadEmpty``). A token that is not 64 hexadecimal digits is 400
``BadDeviceToken``; a well-formed one not registered here 410 ``Unregistered``. Sent: 200 with
``apns-id``. Errors as Apple sends them: ``{"reason"}`` (and ``timestamp`` with 410).
"""

from __future__ import annotations

import asyncio
import datetime
import ipaddress
import json
import re
import ssl
import tempfile
import threading
import time
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import h2.config
import h2.connection
import h2.events
import jwt
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

TOKEN = re.compile(r"[0-9a-f]{64}")


def p8_key() -> tuple[str, ec.EllipticCurvePrivateKey]:
    key = ec.generate_private_key(ec.SECP256R1())
    pem = key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    ).decode()
    return pem, key


def self_signed() -> tuple[bytes, bytes]:
    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "apns-test")])
    now = datetime.datetime.now(datetime.UTC)
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(hours=1))
        .add_extension(x509.SubjectAlternativeName([x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]), False)
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), True)
        .sign(key, hashes.SHA256())
    )
    key_pem = key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    )
    return cert.public_bytes(serialization.Encoding.PEM), key_pem


@dataclass
class ApnsRequest:
    headers: dict[str, str]
    body: bytes

    @property
    def token(self) -> str:
        return self.headers[":path"].removeprefix("/3/device/")

    def payload(self) -> dict[str, Any]:
        loaded: dict[str, Any] = json.loads(self.body)
        return loaded


@dataclass
class ApnsServer:
    team_id: str = "TEAM123456"
    key_id: str = "KEY1234567"
    topic: str = "com.example.shop"
    registered: set[str] = field(default_factory=set)
    received: list[ApnsRequest] = field(default_factory=list)
    accepted: list[ApnsRequest] = field(default_factory=list)
    failures: list[tuple[int, dict[str, Any]]] = field(default_factory=list)
    connections: int = 0
    port: int = 0

    def __post_init__(self) -> None:
        self.private_key_pem, key = p8_key()
        self._public = key.public_key()
        self._cert, self._cert_key = self_signed()
        self._lock = threading.Lock()

    @property
    def base_url(self) -> str:
        return f"https://127.0.0.1:{self.port}"

    def client_context(self) -> ssl.SSLContext:
        context = ssl.create_default_context(cadata=self._cert.decode())
        context.set_alpn_protocols(["h2", "http/1.1"])
        return context

    def fail_next(self, status: int, body: dict[str, Any]) -> None:
        with self._lock:
            self.failures.append((status, body))

    def answer(self, request: ApnsRequest) -> tuple[int, dict[str, str], dict[str, Any] | None]:
        with self._lock:
            self.received.append(request)
            failure = self.failures.pop(0) if self.failures else None
        h = request.headers
        if h.get(":method") != "POST" or not h.get(":path", "").startswith("/3/device/"):
            return 404, {}, {"reason": "BadPath"}
        auth = h.get("authorization", "")
        if not auth.startswith("bearer "):
            return 403, {}, {"reason": "MissingProviderToken"}
        try:
            header = jwt.get_unverified_header(auth[7:])
            claims = jwt.decode(auth[7:], self._public, algorithms=["ES256"], options={"verify_exp": False})
        except jwt.PyJWTError:
            return 403, {}, {"reason": "InvalidProviderToken"}
        if header.get("kid") != self.key_id or claims.get("iss") != self.team_id:
            return 403, {}, {"reason": "InvalidProviderToken"}
        if not isinstance(claims.get("iat"), int) or time.time() - claims["iat"] > 3600:
            return 403, {}, {"reason": "ExpiredProviderToken"}
        if failure is not None:
            return failure[0], {}, failure[1]
        if h.get("apns-topic") != self.topic:
            return 400, {}, {"reason": "TopicDisallowed"}
        if h.get("apns-push-type") != "alert":
            return 400, {}, {"reason": "InvalidPushType"}
        try:
            alert = request.payload()["aps"]["alert"]
        except (ValueError, KeyError, TypeError):
            return 400, {}, {"reason": "PayloadEmpty"}
        if not isinstance(alert, dict) or not alert.get("body"):
            return 400, {}, {"reason": "PayloadEmpty"}
        if not TOKEN.fullmatch(request.token):
            return 400, {}, {"reason": "BadDeviceToken"}
        if request.token not in self.registered:
            return 410, {}, {"reason": "Unregistered", "timestamp": int(time.time() * 1000)}
        with self._lock:
            self.accepted.append(request)
        return 200, {"apns-id": str(uuid.uuid4()).upper()}, None

    async def _connection(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        with self._lock:
            self.connections += 1
        conn = h2.connection.H2Connection(config=h2.config.H2Configuration(client_side=False))
        conn.initiate_connection()
        writer.write(conn.data_to_send())
        streams: dict[int, ApnsRequest] = {}
        try:
            while True:
                data = await reader.read(65536)
                if not data:
                    break
                for event in conn.receive_data(data):
                    if isinstance(event, h2.events.RequestReceived):
                        headers = {
                            (k.decode() if isinstance(k, bytes) else k): (v.decode() if isinstance(v, bytes) else v)
                            for k, v in event.headers
                        }
                        streams[event.stream_id] = ApnsRequest(headers, b"")
                    elif isinstance(event, h2.events.DataReceived):
                        streams[event.stream_id].body += event.data
                        conn.acknowledge_received_data(event.flow_controlled_length, event.stream_id)
                    elif isinstance(event, h2.events.StreamEnded):
                        status, extra, body = self.answer(streams.pop(event.stream_id))
                        raw = json.dumps(body).encode() if body is not None else b""
                        response = [(":status", str(status)), *extra.items()]
                        if raw:
                            response += [("content-type", "application/json"), ("content-length", str(len(raw)))]
                        conn.send_headers(event.stream_id, response, end_stream=not raw)
                        if raw:
                            conn.send_data(event.stream_id, raw, end_stream=True)
                    elif isinstance(event, h2.events.ConnectionTerminated):
                        break
                writer.write(conn.data_to_send())
                await writer.drain()
        except (ConnectionError, ssl.SSLError):
            pass
        finally:
            writer.close()

    @contextmanager
    def running(self) -> Iterator[ApnsServer]:
        context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
        with tempfile.TemporaryDirectory() as folder:
            cert, key = Path(folder) / "cert.pem", Path(folder) / "key.pem"
            cert.write_bytes(self._cert)
            key.write_bytes(self._cert_key)
            context.load_cert_chain(cert, key)
        context.set_alpn_protocols(["h2"])
        loop = asyncio.new_event_loop()
        started = threading.Event()
        holder: dict[str, asyncio.AbstractServer] = {}

        async def serve() -> None:
            server = await asyncio.start_server(self._connection, "127.0.0.1", 0, ssl=context)
            holder["server"] = server
            self.port = server.sockets[0].getsockname()[1]
            started.set()

        thread = threading.Thread(target=loop.run_forever, daemon=True)
        thread.start()
        asyncio.run_coroutine_threadsafe(serve(), loop)
        started.wait(10)
        try:
            yield self
        finally:
            loop.call_soon_threadsafe(holder["server"].close)  # the loop's own thread closes it
            loop.call_soon_threadsafe(loop.stop)
            thread.join(5)
            loop.close()
