"""The README's commands, pasted as a newcomer would: every ```sh block, in order, against a live server.

The test plays the newcomer's shells:

- the first shell is ``make up``: a block made only of ``make`` lines is carried out here, not in
  bash. ``[VAR=value …] make up`` (re)starts ``spotzee up`` (what the Makefile runs) on a free
  port, with those variables, on ``<tmp>/spotzee-data``; a server already running is stopped first
  with SIGINT, the Ctrl-C the README asks for. ``make test`` is skipped: it would run this test;
- the second shell runs every other block with bash (``set -euo pipefail``: the first failing
  command fails the block), in a fresh process per block, with the working directory set so that
  ``spotzee-data/keys.json`` and ``.venv/bin/spotzee`` resolve as written (``.venv`` is a link to
  this interpreter's venv, whose ``bin`` is also first on ``PATH``). A block that exits non-zero
  fails the test; the README's ``curl -fsS`` exits non-zero on a 4xx or 5xx;
- the third shell is the SMTP relay the journey example sends to: an aiosmtpd server here that
  keeps every message, so the test asserts that the email arrives, with its rendered subject.

What the test substitutes, and nothing else: the server's address ``http://127.0.0.1:8000`` and
the relay's port ``"port":1025`` (free ports, so the test never reaches a developer's own server
and runs beside other tests). The blocks under ``CHECKED_NOT_RUN`` need a Kafka download and a
broker: their commands are checked, not run (``bash -n``, the scripts they name exist, and each
``.venv/bin/spotzee`` command line parses: it answers ``--help``).
"""

from __future__ import annotations

import email
import email.policy
import os
import re
import shlex
import signal
import subprocess
import sys
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from email.message import EmailMessage
from pathlib import Path

import httpx
from aiosmtpd.controller import Controller
from aiosmtpd.smtp import SMTP as SMTPServer
from aiosmtpd.smtp import Envelope, Session

from tests.support import free_port, wait_until

ROOT = Path(__file__).resolve().parents[2]
README = ROOT / "README.md"
VENV = Path(sys.executable).parent.parent  # ``sys.executable`` is ``<venv>/bin/python``, unresolved
SERVER_URL = "http://127.0.0.1:8000"
RELAY_PORT = '"port":1025'
RELAY_COMMAND = "python -m aiosmtpd -n -l 127.0.0.1:1025"
CHECKED_NOT_RUN = {"Scaling out: the Kafka runtime"}
EMAIL_SUBJECT = "Welcome Ada"
EMAIL_TO = "ada@example.com"
BLOCK_TIMEOUT = 120.0


@dataclass(frozen=True)
class Block:
    heading: str  # the nearest heading above it
    line: int  # where its code starts in README.md (1-based)
    code: str


def sh_blocks(text: str) -> list[Block]:
    """Every ```sh block of a Markdown text, in order, with the heading it is under."""
    blocks: list[Block] = []
    heading = ""
    lines = text.splitlines()
    i = 0
    while i < len(lines):
        line = lines[i]
        if line.startswith("```"):  # any fence: a `#` inside is code, not a heading
            end = lines.index("```", i + 1)
            if line.strip() == "```sh":
                blocks.append(Block(heading, i + 2, "\n".join(lines[i + 1 : end]) + "\n"))
            i = end
        elif line.startswith("#"):
            heading = line.lstrip("#").strip()
        i += 1
    return blocks


ASSIGNMENT = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*=")
MAKE_LINE = re.compile(r"^([A-Za-z_][A-Za-z0-9_]*=\S*\s+)*make\s")


def make_call(words: list[str]) -> tuple[dict[str, str], list[str]]:
    """``[VAR=value …] make target …`` as (the variables, the targets)."""
    env: dict[str, str] = {}
    while words and ASSIGNMENT.match(words[0]):
        name, _, value = words.pop(0).partition("=")
        env[name] = value
    assert words[:1] == ["make"], words
    return env, words[1:]


def make_lines(block: Block) -> list[tuple[dict[str, str], list[str]]] | None:
    """The block's ``make`` calls when it holds nothing else (the first shell's), else None."""
    lines = [line for line in block.code.splitlines() if line.strip() and not line.lstrip().startswith("#")]
    if not lines or not all(MAKE_LINE.match(line) for line in lines):
        return None
    return [make_call(shlex.split(line, comments=True)) for line in lines]


class Inbox:
    """An SMTP server's handler that keeps every message it is given."""

    def __init__(self) -> None:
        self.messages: list[EmailMessage] = []
        self.lock = threading.Lock()

    async def handle_DATA(self, server: SMTPServer, session: Session, envelope: Envelope) -> str:
        message = email.message_from_bytes(bytes(envelope.original_content or b""), policy=email.policy.default)
        assert isinstance(message, EmailMessage)
        with self.lock:
            self.messages.append(message)
        return "250 OK"

    def subjects(self) -> list[tuple[str, str]]:
        with self.lock:
            return [(str(m["To"]), str(m["Subject"])) for m in self.messages]


@dataclass
class Newcomer:
    """The shells of someone following the README in an empty directory."""

    home: Path
    port: int
    env: dict[str, str]
    server: subprocess.Popen[bytes] | None = None
    logs: list[Path] = field(default_factory=list)

    def make(self, env: dict[str, str], targets: list[str]) -> None:
        if targets == ["test"]:
            return  # the whole suite, this test included
        assert targets == ["up"], f"the README runs `make {' '.join(targets)}`: teach this test what it does"
        self.stop_server()
        log = self.home / f"server-{len(self.logs) + 1}.log"
        self.logs.append(log)
        command = [str(VENV / "bin" / "spotzee"), "up", "--data-dir", "spotzee-data", "--port", str(self.port)]
        with log.open("wb") as out:
            self.server = subprocess.Popen(
                command, cwd=self.home, env={**self.env, **env}, stdout=out, stderr=subprocess.STDOUT
            )
        server = self.server
        wait_until(lambda: self._healthy() or server.poll() is not None, timeout=60, interval=0.1)
        assert server.poll() is None, f"spotzee up exited with {server.returncode}:\n{self.server_log()}"

    def _healthy(self) -> bool:
        try:
            return httpx.get(f"http://127.0.0.1:{self.port}/health", timeout=1).status_code == 200
        except httpx.HTTPError:
            return False

    def stop_server(self) -> None:
        if self.server is None:
            return
        if self.server.poll() is None:
            self.server.send_signal(signal.SIGINT)
            try:
                self.server.wait(timeout=45)
            except subprocess.TimeoutExpired:
                self.server.kill()
                self.server.wait()
        self.server = None

    def run(self, block: Block, code: str) -> str:
        result = subprocess.run(
            ["bash", "-c", "set -euo pipefail\n" + code],
            cwd=self.home,
            env=self.env,
            capture_output=True,
            text=True,
            timeout=BLOCK_TIMEOUT,
            check=False,
        )
        assert result.returncode == 0, (
            f"README.md:{block.line} ({block.heading}) exited with {result.returncode}\n"
            f"--- block ---\n{code}--- stdout ---\n{result.stdout}\n--- stderr ---\n{result.stderr}\n"
            f"--- server log (tail) ---\n{self.server_log()}"
        )
        return result.stdout

    def server_log(self) -> str:
        return self.logs[-1].read_text(errors="replace")[-4000:] if self.logs else "(no server started)"


@contextmanager
def relay(port: int) -> Iterator[Inbox]:
    inbox = Inbox()
    controller = Controller(inbox, hostname="127.0.0.1", port=port)
    controller.start()
    try:
        yield inbox
    finally:
        controller.stop()


def newcomer_env() -> dict[str, str]:
    """This process's environment without Spotzee's settings (a newcomer has none set), the venv first."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("SPOTZEE_")}
    env["PATH"] = f"{VENV / 'bin'}{os.pathsep}{env.get('PATH', '')}"
    return env


def test_every_sh_block_of_the_readme_runs_and_the_journey_email_arrives(tmp_path: Path) -> None:
    text = README.read_text()
    assert text.count(RELAY_PORT) == 1, f"the journey example's relay is {RELAY_PORT!r}, once"
    assert RELAY_COMMAND in text, "the README tells how to start the relay on that port"
    blocks = sh_blocks(text)
    assert {b.heading for b in blocks} >= CHECKED_NOT_RUN, "a section this test skips is gone: update the test"
    runnable = [b for b in blocks if b.heading not in CHECKED_NOT_RUN]
    assert make_lines(runnable[0]) is not None, "the README starts with `make up` / `make test`"
    assert any(SERVER_URL in b.code for b in runnable)

    port, smtp_port = free_port(), free_port()
    home = tmp_path / "newcomer"
    home.mkdir()
    (home / ".venv").symlink_to(VENV)  # `.venv/bin/spotzee` as the README writes it
    shell = Newcomer(home, port, newcomer_env())
    try:
        with relay(smtp_port) as inbox:
            outputs: list[str] = []
            for block in runnable:
                commands = make_lines(block)
                if commands is not None:
                    for env, targets in commands:
                        shell.make(env, targets)
                    continue
                assert shell.server is not None, f"README.md:{block.line} runs before any `make up`"
                code = block.code.replace(SERVER_URL, f"http://127.0.0.1:{port}")
                code = code.replace(RELAY_PORT, f'"port":{smtp_port}')
                # Nothing may still point at a fixed port: it would be a developer's server, not ours.
                assert not re.search(r"127\.0\.0\.1:(8000|1025)\b", code), f"README.md:{block.line}: {code}"
                outputs.append(shell.run(block, code))

            wait_until(lambda: len(inbox.subjects()) >= 1, timeout=30, interval=0.1)
            assert inbox.subjects() == [(EMAIL_TO, EMAIL_SUBJECT)], inbox.subjects()
            assert '"id":"u1"' in "".join(outputs), "the segment of buyers lists the contact who bought"
    finally:
        shell.stop_server()


def test_the_kafka_section_names_commands_that_exist(tmp_path: Path) -> None:
    blocks = [b for b in sh_blocks(README.read_text()) if b.heading in CHECKED_NOT_RUN]
    assert blocks
    for block in blocks:
        syntax = subprocess.run(["bash", "-n"], input=block.code, capture_output=True, text=True, check=False)
        assert syntax.returncode == 0, f"README.md:{block.line}: {syntax.stderr}"
        for line in block.code.splitlines():
            for command in re.split(r"&&|;|&(?!&)", line.split("#", 1)[0]):
                words = shlex.split(command)
                if words[:1] == ["bash"]:
                    assert (ROOT / words[1]).is_file(), f"README.md:{block.line}: no {words[1]}"
                elif words[:1] == [".venv/bin/spotzee"]:
                    parsed = subprocess.run(
                        [str(VENV / "bin" / "spotzee"), *words[1:], "--help"],
                        cwd=tmp_path,
                        env=newcomer_env(),
                        capture_output=True,
                        text=True,
                        timeout=60,
                        check=False,
                    )
                    assert parsed.returncode == 0, f"README.md:{block.line}: {' '.join(words)}\n{parsed.stderr}"
