"""Queries run in a small pool of worker processes, so the operating system bounds what one query
can take: each worker caps its own address space and may write only to its spill folder
(``confine.py``); a query that overruns its time is killed with its worker, and a worker that
died or grew too large is replaced. The API process never holds more of a result than its
encoded bytes (bounded by the result byte limit).

Workers are forked from multiprocessing's fork server (a clean process that has imported DuckDB
and pyarrow once), so starting one costs milliseconds, never the API process's threads or
connections. They live as long as the pool and are reused: a query's fixed cost is one pickle
over a pipe each way. A worker remembers the tenant it last served and its bound views, and the
pool prefers it for that tenant's next query.
"""

from __future__ import annotations

import logging
import multiprocessing
import os
import signal
import threading
import time
from dataclasses import dataclass
from multiprocessing.connection import Connection
from typing import Any

from duckmesh.domain import TenantId
from duckmesh.errors import DuckMeshError, QueryInvalid, QueryResourceLimit, QueryTimeout, SqlNotAllowed
from duckmesh.query import confine
from duckmesh.query.engine import EngineResult, Executor, ExecutorConfig, IoFailure, Job

log = logging.getLogger(__name__)
# After the timeout, how long a worker may take to answer its own interrupt before it is killed.
KILL_GRACE_S = 0.5
# A worker whose address space grew beyond this share of its limit is replaced after its query
# (DuckDB's allocator keeps what it reserved; the next big query would fail for no reason).
RETIRE_SHARE = 0.75
_ERRORS: dict[str, type[DuckMeshError]] = {
    cls.__name__: cls for cls in (QueryTimeout, QueryResourceLimit, SqlNotAllowed, QueryInvalid, IoFailure)
}
_CONTEXT = multiprocessing.get_context("forkserver")
_CONTEXT.set_forkserver_preload(["duckmesh.query.workers"])


@dataclass(frozen=True)
class WorkerLimits:
    executor: ExecutorConfig
    max_address_space: int  # bytes of virtual memory per worker


def _address_space() -> int:
    with open(f"/proc/{os.getpid()}/statm") as statm:
        return int(statm.read().split()[0]) * os.sysconf("SC_PAGE_SIZE")


def _serve(conn: Connection, limits: WorkerLimits) -> None:
    """A worker's life: confine itself, then run one job at a time until the pipe closes."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # the server stops its workers itself
    spill = limits.executor.spill_directory
    os.makedirs(spill, mode=0o700, exist_ok=True)
    confined = confine.forbid_writes_outside([spill])
    confine.limit_address_space(limits.max_address_space)
    executor = Executor(limits.executor)
    conn.send(("ready", {"landlock": confined}))
    while True:
        try:
            job: Job = conn.recv()
        except (EOFError, OSError):
            return
        reply: tuple[str, Any]
        try:
            reply = ("ok", executor.execute(job))
        except DuckMeshError as exc:
            reply = ("error", (type(exc).__name__, exc.message, exc.context))
        except MemoryError:
            reply = ("error", ("QueryResourceLimit", "the query needs more memory than its limit", {}))
        retire = _address_space() > limits.max_address_space * RETIRE_SHARE
        try:
            conn.send((*reply, retire))
        except MemoryError:
            conn.send(("error", ("QueryResourceLimit", "the query's result needs more memory than its limit", {}),
                       True))
        if retire:
            return


class _Worker:
    def __init__(self, limits: WorkerLimits) -> None:
        parent, child = _CONTEXT.Pipe()
        self.process = _CONTEXT.Process(target=_serve, args=(child, limits), daemon=True, name="duckmesh-query")
        self.process.start()
        child.close()
        self.conn = parent
        self.last_tenant: TenantId | None = None
        if not parent.poll(30):
            self.kill()
            raise QueryResourceLimit("a query worker process did not start")
        kind, hello = parent.recv()
        self.landlock = bool(hello.get("landlock")) if kind == "ready" else False

    @property
    def alive(self) -> bool:
        return self.process.is_alive()

    def kill(self) -> None:
        self.process.kill()
        self.process.join(5)
        self.conn.close()


class WorkerPool:
    """Runs jobs on up to ``size`` worker processes (thread-safe; callers block)."""

    def __init__(self, size: int, limits: WorkerLimits) -> None:
        self.size = size
        self.limits = limits
        self._idle: list[_Worker] = []
        self._count = 0
        self._closed = False
        self._changed = threading.Condition()
        self._warned = False
        self.started = 0  # workers started over the pool's life (replacements included)

    def prestart(self) -> None:
        """Start one worker before the first query: the first start also starts the fork server,
        which imports DuckDB and pyarrow (a few hundred milliseconds), and a fresh process's first
        query should not pay for that. Best effort: a failure leaves workers to start on demand."""
        with self._changed:
            if self._closed or self._idle or self._count >= self.size:
                return
            self._count += 1
        try:
            worker = self._start()
        except Exception:
            log.warning("query_worker_prestart_failed", exc_info=True)
            return
        self._release(worker, healthy=True)

    def execute(self, job: Job) -> EngineResult:
        worker = self._acquire(job.tenant_id, time.monotonic() + job.timeout)
        healthy = False
        try:
            result, healthy = self._call(worker, job)
            return result
        finally:
            self._release(worker, healthy)

    def _call(self, worker: _Worker, job: Job) -> tuple[EngineResult, bool]:
        try:
            worker.conn.send(job)
            answered = worker.conn.poll(job.timeout + KILL_GRACE_S)
            if not answered:
                raise QueryTimeout("the query ran longer than its time limit", timeout_ms=int(job.timeout * 1000))
            kind, payload, retire = worker.conn.recv()
        except (EOFError, OSError, BrokenPipeError):
            raise QueryResourceLimit(
                "the query stopped its worker process (out of memory or a crash); it was replaced"
            ) from None
        worker.last_tenant = job.tenant_id
        if kind == "ok":
            return payload, not retire
        name, message, context = payload
        if retire:
            worker.last_tenant = None
        raise _ERRORS.get(name, QueryInvalid)(message, **context)

    def _acquire(self, tenant_id: TenantId, deadline: float) -> _Worker:
        with self._changed:
            while True:
                if self._closed:
                    raise QueryResourceLimit("the query engine is shutting down")
                if self._idle:
                    warm = [w for w in self._idle if w.last_tenant == tenant_id]
                    chosen = (warm or self._idle)[-1]
                    self._idle.remove(chosen)
                    if chosen.alive:
                        return chosen
                    self._count -= 1
                    chosen.kill()
                    continue
                if self._count < self.size:
                    self._count += 1
                    break
                remaining = deadline - time.monotonic()
                if remaining <= 0 or not self._changed.wait(remaining):
                    raise QueryTimeout("no query worker became free within the time limit")
        return self._start()

    def _start(self) -> _Worker:
        try:
            worker = _Worker(self.limits)
        except BaseException:
            with self._changed:
                self._count -= 1
                self._changed.notify()
            raise
        self.started += 1
        if not worker.landlock and not self._warned:
            self._warned = True
            log.warning("query_worker_write_confinement_unavailable",
                        extra={"hint": "the kernel has no Landlock; DuckDB's statement checks still refuse writes"})
        return worker

    def _release(self, worker: _Worker, healthy: bool) -> None:
        if not healthy:
            worker.kill()  # timed out, crashed, or grew too large: its replacement starts on demand
        with self._changed:
            if healthy and not self._closed:
                self._idle.append(worker)
            else:
                self._count -= 1
                if healthy:
                    worker.kill()
            self._changed.notify()

    def close(self) -> None:
        with self._changed:
            self._closed = True
            idle, self._idle = self._idle, []
            self._count -= len(idle)
            self._changed.notify_all()
        for worker in idle:
            worker.kill()
