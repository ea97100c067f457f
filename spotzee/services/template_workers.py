"""Template parsing and rendering in worker processes, with a hard deadline.

Why processes, not threads: a render is CPU-bound Python. In a thread it holds the GIL against the
event loop (``POST /v1/track`` of every project waits), and a thread cannot be stopped: a render
that outlives its deadline -- a filter python-liquid runs in one call, a parse of a large source
-- would keep a thread and a share of the GIL for as long as it likes. The bounds inside
expressions (``domain/template_bounds.py``) and the cooperative deadline make such renders
unlikely; a worker process makes them harmless: past ``deadline`` seconds the process is killed,
the job fails with a ``TemplateRenderError`` (400 in the API; the send fails with a render error)
and a fresh worker is started for the next job.

A pool has at most ``size`` processes, started on first use (a process that never previews or
delivers starts none); each holds one job at a time, and a job waits at most ``deadline`` x 4
for a free worker (then ``Overloaded``: 429). A worker's address space is capped
(``WORKER_MEMORY_BYTES``): an allocation past it fails inside the worker, not on the host. The
pool is not tied to one event loop (a lock and short polls while every worker is busy), so the
API loop and a delivery thread's loop may each own one.

``coalesce=True`` (a delivery agent's pool: many sends render at once, each a small job): the
calls made in one turn of the event loop go to the workers together, one job per worker holding
a share of them (``_run_jobs``), so a pass of sends pays a round trip per worker rather than
one per send. Each call still gets its own result or error; a chunk that passes the deadline or
kills its worker is run again one call per job, so a slow template fails its own send only
(after up to twice the deadline), as without coalescing.
"""

from __future__ import annotations

import asyncio
import logging
import math
import pickle
import resource
import signal
import socket
import subprocess
import sys
import threading
from collections.abc import Callable
from multiprocessing.connection import Connection
from typing import Any, Final, ParamSpec, TypeVar

from spotzee.domain.templates import TemplateRenderError
from spotzee.errors import InvalidInput, Overloaded

log = logging.getLogger(__name__)

P = ParamSpec("P")
T = TypeVar("T")

WORKER_MEMORY_BYTES: Final = 512 * 1024 * 1024
"""Address space of one worker: imports take ~50 MB of it, a render may allocate the rest."""
STARTUP_SECONDS: Final = 60.0  # a worker imports Spotzee's template code before its first job
_POLL: Final = 0.005  # seconds between looks for a free worker while every one is busy
_READY: Final = b"ready"


def _serve(conn: Connection, memory_bytes: int) -> None:  # pragma: no cover - runs in the worker
    """The worker: jobs ``(function, args, kwargs)`` in, ``(kind, ...)`` out, until the pipe closes."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # Ctrl-C stops the parent, which stops us
    resource.setrlimit(resource.RLIMIT_AS, (memory_bytes, memory_bytes))
    import spotzee.domain.templates  # noqa: F401  # before "ready": the deadline excludes imports

    conn.send_bytes(_READY)
    while True:
        try:
            function, args, kwargs = pickle.loads(conn.recv_bytes())
        except EOFError:
            return
        out: tuple[Any, ...]
        try:
            out = _outcome(function, args, kwargs)
        except MemoryError:
            out = ("render", "content", f"needs more than {memory_bytes // 2**20} MB of memory", None)
        try:
            conn.send_bytes(pickle.dumps(out))
        except MemoryError:
            conn.send_bytes(pickle.dumps(("render", "content", "rendered result too large", None)))


def _outcome(function: Callable[..., Any], args: tuple[Any, ...], kwargs: dict[str, Any]) -> tuple[Any, ...]:
    """One job's answer as the worker sends it: ``("ok", value)`` or the error it raised."""
    try:
        return ("ok", function(*args, **kwargs))
    except TemplateRenderError as exc:
        return ("render", exc.field, exc.reason, exc.line)
    except InvalidInput as exc:
        return ("invalid", exc.message, exc.details)
    except MemoryError:
        raise  # the worker's cap: answered for the whole job (a coalesced chunk is re-run one by one)
    except Exception as exc:  # a bug: reported to the caller, the worker carries on
        return ("error", f"{type(exc).__name__}: {exc}")


def _run_jobs(jobs: list[tuple[Callable[..., Any], tuple[Any, ...], dict[str, Any]]]) -> list[tuple[Any, ...]]:
    """A coalesced chunk, in a worker: each job's answer, in order (one job's error is its own)."""
    return [_outcome(function, args, kwargs) for function, args, kwargs in jobs]


class _Worker:
    def __init__(self, process: subprocess.Popen[bytes], conn: Connection) -> None:
        self.process = process
        self.conn = conn

    def kill(self) -> None:
        self.conn.close()
        self.process.kill()
        # Reaped in the background: a wait must not hold the caller's loop.
        threading.Thread(target=self.process.wait, args=(5,), daemon=True).start()


async def _readable(conn: Connection, timeout: float) -> bool:
    """Wait (without blocking the loop) until ``conn`` has data or EOF; False on timeout."""
    loop = asyncio.get_running_loop()
    ready: asyncio.Future[None] = loop.create_future()
    fd = conn.fileno()

    def wake() -> None:
        if not ready.done():
            ready.set_result(None)

    loop.add_reader(fd, wake)
    try:
        await asyncio.wait_for(ready, timeout)
        return True
    except TimeoutError:
        return False
    finally:
        loop.remove_reader(fd)


class TemplateWorkers:
    """At most ``size`` worker processes; ``await call(function, *args, **kwargs)`` runs one job in one."""

    def __init__(
        self, size: int, deadline: float, *, memory_bytes: int = WORKER_MEMORY_BYTES, coalesce: bool = False
    ) -> None:
        self.size = size
        self.deadline = deadline
        self.memory_bytes = memory_bytes
        self.coalesce = coalesce
        # Coalescing (one event loop's calls): the jobs of this turn of the loop, and the chunks in flight.
        self._pending: list[tuple[Callable[..., Any], tuple[Any, ...], dict[str, Any], asyncio.Future[Any]]] = []
        self._pending_loop: asyncio.AbstractEventLoop | None = None
        self._chunks: set[asyncio.Task[None]] = set()
        self._deferred: asyncio.TimerHandle | None = None  # a flush waiting for a free worker
        self._lock = threading.Lock()
        self._idle: list[_Worker] = []
        self._all: set[_Worker] = set()
        self._slots = size  # workers that may still be started
        self._closed = False
        self.killed = 0  # workers killed at their deadline (observability, tests)

    async def call(self, function: Callable[P, T], *args: P.args, **kwargs: P.kwargs) -> T:
        if self.coalesce:
            loop = asyncio.get_running_loop()
            if self._pending_loop is None or self._pending_loop is loop:
                future: asyncio.Future[T] = loop.create_future()
                self._pending.append((function, args, kwargs, future))
                if self._pending_loop is None:
                    self._pending_loop = loop
                    loop.call_soon(self._flush)
                return await future
        return await self._call_one(function, *args, **kwargs)

    def _flush(self) -> None:
        """The pending calls: one chunk per free worker, each a single job in a worker. While every
        worker is busy they wait (joined by later calls) until one is free, so calls that arrive
        one by one while the workers work still go together."""
        loop, self._deferred = self._pending_loop, None
        assert loop is not None
        with self._lock:
            free = len(self._idle) + self._slots
            closed = self._closed
        if free == 0 and not closed:
            self._deferred = loop.call_later(_POLL, self._flush)  # or sooner: ``_worker_freed``
            return
        pending, self._pending, self._pending_loop = self._pending, [], None
        share = math.ceil(len(pending) / max(1, free))
        for start in range(0, len(pending), share):
            task = loop.create_task(self._run_chunk(pending[start : start + share]))
            self._chunks.add(task)  # referenced until done (a task nobody holds may be collected)
            task.add_done_callback(self._chunks.discard)

    async def _run_chunk(
        self, chunk: list[tuple[Callable[..., Any], tuple[Any, ...], dict[str, Any], asyncio.Future[Any]]]
    ) -> None:
        if len(chunk) == 1:
            await self._settle_one(chunk[0])
            return
        try:
            replies = await self._call_one(_run_jobs, [(function, args, kwargs) for function, args, kwargs, _ in chunk])
        except TemplateRenderError:
            # Past the deadline, or the worker died: one job at a time, each with its own deadline,
            # so only the job that caused it fails.
            await asyncio.gather(*(self._settle_one(job) for job in chunk))
            return
        except Exception as exc:  # no worker for the chunk (Overloaded, closed): every job's answer
            for *_, future in chunk:
                if not future.done():
                    future.set_exception(exc)
            return
        except BaseException:  # cancelled (the loop is stopping): so are the jobs
            for *_, future in chunk:
                future.cancel()
            raise
        for (*_, future), reply in zip(chunk, replies, strict=True):
            _answer(future, reply)

    async def _settle_one(
        self, job: tuple[Callable[..., Any], tuple[Any, ...], dict[str, Any], asyncio.Future[Any]]
    ) -> None:
        function, args, kwargs, future = job
        try:
            value = await self._call_one(function, *args, **kwargs)
        except Exception as exc:
            if not future.done():
                future.set_exception(exc)
            return
        if not future.done():
            future.set_result(value)

    async def _call_one(self, function: Callable[P, T], *args: P.args, **kwargs: P.kwargs) -> T:
        worker = await self._acquire()
        reply: tuple[Any, ...] | None = None
        try:
            if worker is None:
                worker = await self._start()
            reply = await self._run(worker, function, args, kwargs)
        finally:
            if reply is not None and worker is not None:
                self._release(worker)
                self._worker_freed()
            elif worker is not None:  # killed, dead, cancelled mid-job: never reused
                self._forget(worker)
            else:
                with self._lock:
                    self._slots += 1
        value: T = _unpack(reply)
        return value

    def _worker_freed(self) -> None:
        """A deferred flush on this loop runs now rather than at its next poll."""
        deferred, loop = self._deferred, self._pending_loop
        if deferred is not None and loop is asyncio.get_running_loop():
            deferred.cancel()
            self._deferred = None
            loop.call_soon(self._flush)

    async def warm(self) -> None:
        """Start every worker now, so the first sends don't each wait for a process to start
        (about 0.2 s: it was the p99 of event -> email). One that fails to start is left to start
        on first use, as without warming."""
        started: list[_Worker] = []
        while True:
            with self._lock:
                if self._closed or self._slots == 0:
                    break
                self._slots -= 1
            try:
                started.append(await self._start())
            except (OSError, RuntimeError) as exc:
                with self._lock:
                    self._slots += 1
                log.warning("template workers: warming stopped (%s); they start on first use", exc)
                break
        for worker in started:
            self._release(worker)

    def close(self) -> None:
        with self._lock:
            self._closed = True
            workers, self._idle = list(self._all), []
            self._all.clear()
        for worker in workers:
            worker.kill()

    # -- internals ----------------------------------------------------------------------------

    async def _acquire(self) -> _Worker | None:
        """An idle worker, or None: the caller may start one. Waits while all are busy."""
        loop = asyncio.get_running_loop()
        give_up = loop.time() + self.deadline * 4
        while True:
            with self._lock:
                if self._closed:
                    raise RuntimeError("template workers are closed")
                if self._idle:
                    return self._idle.pop()
                if self._slots > 0:
                    self._slots -= 1
                    return None
            if loop.time() > give_up:
                raise Overloaded("every template worker is busy; try again", retry_after=1)
            await asyncio.sleep(_POLL)

    async def _start(self) -> _Worker:
        # A fresh interpreter (not a fork of a process holding threads and locks, and unlike
        # multiprocessing's spawn, independent of how the parent's __main__ can be imported).
        ours, theirs = socket.socketpair()
        command = [sys.executable, "-m", __name__, str(theirs.fileno()), str(self.memory_bytes)]
        try:
            process = await asyncio.to_thread(
                subprocess.Popen, command, pass_fds=(theirs.fileno(),), stdin=subprocess.DEVNULL
            )
        finally:
            theirs.close()
        parent = Connection(ours.detach())
        worker = _Worker(process, parent)
        with self._lock:
            self._all.add(worker)
        if not await _readable(parent, STARTUP_SECONDS) or parent.recv_bytes() != _READY:
            raise RuntimeError("a template worker did not start")
        return worker

    async def _run(
        self, worker: _Worker, function: Callable[..., Any], args: tuple[Any, ...], kwargs: dict[str, Any]
    ) -> tuple[Any, ...]:
        worker.conn.send_bytes(pickle.dumps((function, args, kwargs)))
        if not await _readable(worker.conn, self.deadline):
            self.killed += 1
            log.warning("template job %s passed its %gs deadline; worker killed", function.__name__, self.deadline)
            raise TemplateRenderError("content", f"rendering took longer than {self.deadline:g}s")
        try:
            reply: tuple[Any, ...] = pickle.loads(worker.conn.recv_bytes())
        except (EOFError, OSError):  # the worker died (its memory cap, a crash)
            raise TemplateRenderError(
                "content", "rendering stopped: the template worker ran out of resources"
            ) from None
        return reply

    def _release(self, worker: _Worker) -> None:
        with self._lock:
            if self._closed or worker not in self._all:
                closed = True
            else:
                closed = False
                self._idle.append(worker)
        if closed:
            worker.kill()

    def _forget(self, worker: _Worker) -> None:
        with self._lock:
            known = worker in self._all
            self._all.discard(worker)
            if known:
                self._slots += 1
        worker.kill()


def _answer(future: asyncio.Future[Any], reply: tuple[Any, ...]) -> None:
    """A coalesced job's answer to its caller (unless the caller was cancelled)."""
    if future.done():
        return
    try:
        future.set_result(_unpack(reply))
    except Exception as exc:
        future.set_exception(exc)


def _unpack(reply: tuple[Any, ...] | None) -> Any:
    """A worker's answer: its value, or the error it reported raised here."""
    assert reply is not None
    kind, *rest = reply
    if kind == "ok":
        return rest[0]
    if kind == "render":
        field, reason, line = rest
        raise TemplateRenderError(field, reason, line=line)
    if kind == "invalid":
        message, details = rest
        raise InvalidInput(message, details=details)
    raise RuntimeError(f"template worker: {rest[0]}")


if (
    __name__ == "__main__"
):  # pragma: no cover - the worker process: python -m spotzee.services.template_workers FD MEMORY
    _serve(Connection(int(sys.argv[1])), int(sys.argv[2]))
