"""SMTP sending throughput: one pooled ``SmtpSender`` against a sender per message, to a local aiosmtpd.

``python bench/smtp.py [--emails 1000] [--concurrency 1,4,16] [--security none,starttls] [--json]``

What runs: an aiosmtpd server in a child process on 127.0.0.1 (its own interpreter, so its CPU is not this
process's GIL), accepting and counting every message and connection; with ``starttls`` it requires STARTTLS (a
self-signed certificate made for the run, trusted by the client) and AUTH PLAIN/LOGIN. This process sends
``--emails`` messages (a welcome email, text + HTML, ~1.3 kB, each with its own send_id) through the project's
``SmtpSender`` with ``--concurrency`` tasks, in two ways:

- ``pooled``: one sender for the whole run (``POOL_SIZE`` connections at most, reused);
- ``per message``: a new sender per message, ``aclose()`` after it: what the delivery service did before
  (a TCP connection, EHLO, STARTTLS and AUTH for every email).

emails/s = messages / wall time of the run; every outcome must be ``Sent`` and the server must have received
exactly ``--emails`` distinct Message-IDs for each configuration (else ``FAIL``, exit 1). The table also gives
the connections the server saw, the p50 / p99 of one ``send()`` call, and the CPU time per email of this process
and of the server's (steadier than wall time on a shared machine).
"""

from __future__ import annotations

import argparse
import asyncio
import ipaddress
import json
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

from bench_common import HOST, BenchError, percentile, progress
from pydantic import SecretStr

from spotzee.providers.adapter import EmailDelivery, Sent
from spotzee.providers.safety import OutboundPolicy
from spotzee.providers.smtp import POOL_SIZE, SmtpSender
from spotzee.schemas.provider_models import SmtpConfig
from spotzee.schemas.template_models import RenderedEmail

USER, PASSWORD = "bench", "bench-password"
HTML = "<html><body><h1>Welcome, Ada</h1>" + "<p>Thanks for signing up to the free plan.</p>" * 12 + "</body></html>"
TEXT = "Welcome, Ada\n\n" + "Thanks for signing up to the free plan.\n" * 12

# -- the server (child process) -------------------------------------------------------------------

SERVER = r"""
import json, logging, ssl, sys, time
from aiosmtpd.controller import Controller
from aiosmtpd.smtp import SMTP, AuthResult, LoginPassword

logging.getLogger("mail.log").setLevel(logging.ERROR)  # aiosmtpd logs a deprecation notice per AUTH
port, cert, key = int(sys.argv[1]), sys.argv[2], sys.argv[3]
stats = {"connections": 0, "messages": 0}
ids = set()

class Counting(SMTP):
    def connection_made(self, transport):
        if self.transport is None:  # not the STARTTLS upgrade of a connection already counted
            stats["connections"] += 1
        super().connection_made(transport)

class Handler:
    async def handle_DATA(self, server, session, envelope):
        stats["messages"] += 1
        for line in envelope.original_content.split(b"\r\n"):
            if line.lower().startswith(b"message-id:"):
                ids.add(line)
                break
        return "250 2.0.0 queued"

def login(server, session, envelope, mechanism, data):
    ok = isinstance(data, LoginPassword) and (data.login, data.password) == (b"bench", b"bench-password")
    return AuthResult(success=ok, handled=False)

class Control(Controller):
    def factory(self):
        return Counting(self.handler, **self.SMTP_kwargs)

kwargs = {}
if cert:
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    context.load_cert_chain(cert, key)
    kwargs = dict(tls_context=context, require_starttls=True, authenticator=login, auth_require_tls=True)
controller = Control(Handler(), hostname="127.0.0.1", port=port, **kwargs)
controller.start()
print("ready", flush=True)
cpu = time.process_time()
for line in sys.stdin:
    if line.strip() == "stats":
        now = time.process_time()
        print(json.dumps({**stats, "distinct_ids": len(ids), "cpu_ms": (now - cpu) * 1000}), flush=True)
        stats.update(connections=0, messages=0)
        ids.clear()
        cpu = now
controller.stop()
"""


class Server:
    """The aiosmtpd child; ``stats()`` returns and resets its counters."""

    def __init__(self, port: int, cert: Path | None, key: Path | None) -> None:
        self.process = subprocess.Popen(
            [sys.executable, "-c", SERVER, str(port), str(cert or ""), str(key or "")],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            text=True,
        )
        assert self.process.stdout is not None
        if self.process.stdout.readline().strip() != "ready":
            raise BenchError("the SMTP server did not start")
        self.port = port
        self.stats()  # Controller.start() connects once to see the server up: not one of ours

    def stats(self) -> dict[str, float]:
        assert self.process.stdin is not None
        assert self.process.stdout is not None
        self.process.stdin.write("stats\n")
        self.process.stdin.flush()
        answer: dict[str, float] = json.loads(self.process.stdout.readline())
        return answer

    def stop(self) -> None:
        if self.process.stdin is not None:
            self.process.stdin.close()
        try:
            self.process.wait(timeout=10)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait()


def self_signed(directory: Path) -> tuple[Path, Path]:
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID

    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "spotzee bench")])
    now = datetime.now(UTC)
    certificate = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - timedelta(minutes=5))
        .not_valid_after(now + timedelta(days=1))
        .add_extension(x509.SubjectAlternativeName([x509.IPAddress(ipaddress.ip_address(HOST))]), critical=False)
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .sign(key, hashes.SHA256())
    )
    cert_path, key_path = directory / "cert.pem", directory / "key.pem"
    cert_path.write_bytes(certificate.public_bytes(serialization.Encoding.PEM))
    key_path.write_bytes(
        key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption())
    )
    return cert_path, key_path


def free_port() -> int:
    import socket

    with socket.socket() as probe:
        probe.bind((HOST, 0))
        port: int = probe.getsockname()[1]
        return port


# -- the client -----------------------------------------------------------------------------------


@dataclass
class Result:
    mode: str
    security: str
    concurrency: int
    emails: int
    seconds: float
    connections: int
    p50_ms: float
    p99_ms: float
    client_cpu_ms: float  # per email
    server_cpu_ms: float  # per email

    @property
    def per_second(self) -> float:
        return self.emails / self.seconds


def emails(count: int, run: str) -> list[EmailDelivery]:
    return [
        EmailDelivery(
            send_id=f"bench-{run}:c{n}",
            to=f"contact{n}@example.com",
            email=RenderedEmail(subject="Welcome, Ada", html=HTML, text=TEXT, from_="Spotzee <team@example.com>"),
            unsubscribe_url=f"https://mail.example.com/u/token-{n}",
        )
        for n in range(count)
    ]


async def run(
    mode: str, config: SmtpConfig, policy: OutboundPolicy, tls: Any, messages: list[EmailDelivery], concurrency: int
) -> tuple[float, list[float]]:
    queue = iter(messages)
    latencies: list[float] = []
    failures: list[str] = []
    pooled = SmtpSender(config, policy=policy, tls_context=tls) if mode == "pooled" else None

    async def worker() -> None:
        for delivery in queue:
            started = time.perf_counter()
            if pooled is not None:
                outcome = await pooled.send(delivery)
            else:
                sender = SmtpSender(config, policy=policy, tls_context=tls)
                try:
                    outcome = await sender.send(delivery)
                finally:
                    await sender.aclose()
            latencies.append(time.perf_counter() - started)
            if not isinstance(outcome, Sent):
                failures.append(str(outcome))

    started = time.perf_counter()
    await asyncio.gather(*(worker() for _ in range(concurrency)))
    elapsed = time.perf_counter() - started
    if pooled is not None:
        await pooled.aclose()
    if failures:
        raise BenchError(f"{len(failures)} sends failed, the first: {failures[0]}")
    return elapsed, latencies


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--emails", type=int, default=1000)
    parser.add_argument("--concurrency", default="1,4,16", help="comma-separated task counts")
    parser.add_argument("--security", default="none,starttls", help="none and/or starttls (with AUTH)")
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args()
    concurrencies = [int(c) for c in args.concurrency.split(",")]
    securities = [s.strip() for s in args.security.split(",")]
    policy = OutboundPolicy(allowed_networks=(ipaddress.ip_network(f"{HOST}/32"),))
    results: list[Result] = []
    with tempfile.TemporaryDirectory(prefix="spotzee-bench-smtp-") as tmp:
        for security in securities:
            cert = key = None
            tls = None
            if security == "starttls":
                import ssl

                cert, key = self_signed(Path(tmp))
                tls = ssl.create_default_context(cafile=str(cert))
            server = Server(free_port(), cert, key)
            try:
                config = SmtpConfig(
                    host=HOST,
                    port=server.port,
                    security="starttls" if security == "starttls" else "none",
                    username=USER if security == "starttls" else None,
                    password=SecretStr(PASSWORD) if security == "starttls" else None,
                    timeout=30,
                )
                for concurrency in concurrencies:
                    for mode in ("pooled", "per message"):
                        progress(f"{security}, {concurrency} task(s), {mode}: {args.emails} emails")
                        batch = emails(args.emails, f"{security}-{concurrency}-{mode}")
                        cpu = time.process_time()
                        seconds, latencies = asyncio.run(run(mode, config, policy, tls, batch, concurrency))
                        client_cpu = time.process_time() - cpu
                        seen = server.stats()
                        if seen["messages"] != args.emails or seen["distinct_ids"] != args.emails:
                            raise BenchError(f"the server received {seen}, expected {args.emails} distinct messages")
                        results.append(
                            Result(
                                mode,
                                security,
                                concurrency,
                                args.emails,
                                seconds,
                                int(seen["connections"]),
                                percentile(latencies, 50) * 1000,
                                percentile(latencies, 99) * 1000,
                                client_cpu * 1000 / args.emails,
                                seen["cpu_ms"] / args.emails,
                            )
                        )
            finally:
                server.stop()
    if args.json:
        print(
            json.dumps(
                {"pool_size": POOL_SIZE, "results": [r.__dict__ | {"per_second": r.per_second} for r in results]}
            )
        )
        return 0
    print(f"SmtpSender, {args.emails} emails per row, POOL_SIZE={POOL_SIZE}, aiosmtpd on {HOST} (child process)")
    print()
    columns = ["security", "tasks", "sender", "emails/s", "connections", "send p50 ms", "send p99 ms"]
    print("| " + " | ".join([*columns, "CPU ms/email client + server"]) + " |")
    print("|---|---:|---|---:|---:|---:|---:|---:|")
    for r in results:
        security = "STARTTLS + AUTH" if r.security == "starttls" else "plain"
        print(
            f"| {security} | {r.concurrency} | {r.mode} | {r.per_second:,.0f} | {r.connections:,} "
            f"| {r.p50_ms:.2f} | {r.p99_ms:.2f} | {r.client_cpu_ms:.2f} + {r.server_cpu_ms:.2f} |"
        )
    return 0


if __name__ == "__main__":
    try:
        sys.exit(main())
    except BenchError as exc:
        print(f"FAIL {exc}", file=sys.stderr)
        sys.exit(1)
    except KeyboardInterrupt:
        sys.exit(130)
