"""``clarion serve --workers N``: N hub processes on the same ports under one supervisor.

The supervisor (:class:`Supervisor`, in the process the user started) runs no hub and imports
no Django: it starts each worker as a fresh interpreter (``python -m clarion`` with the user's
own arguments plus internal ``--worker-*`` flags), restarts one that dies, and passes SIGTERM
and SIGINT on. A fresh interpreter rather than ``fork`` (nothing of the parent's state, locks or
event loop is copied) and rather than ``multiprocessing`` (nothing to pickle, and a worker is
started exactly as a single-process ``clarion serve`` is, so it configures itself the same way).

Each worker binds its own listeners with ``SO_REUSEPORT`` and the kernel spreads new
connections over them. A worker that dies takes only its own socket (and the connections
waiting in its accept queue) with it; the others go on accepting, and its replacement binds a
new socket that joins the group.

Workers and the supervisor talk over Unix sockets in a private run directory (mode 0700): a
worker answers ``metrics`` with its own exposition and ``wake`` by waking the embedded webhook
worker; the one that receives a ``/metrics`` scrape gathers its siblings' (see
:func:`clarion.hub.metrics.merge_expositions`).

SIGHUP is a rolling restart (docs/deployment/rolling-restart.md): slot by slot, a new worker
(a fresh interpreter: new code, the configuration file read again) is started and must say it
is ready (listening, its broker connected) before the old one of that slot is retired with
SIGUSR1. A retired worker closes its listening socket first, so that the kernel sends new
connections to the others, then tells its clients to reconnect (3001) a few at a time over
``reconnect_window`` seconds, then shuts down as on SIGTERM. A new worker that exits before it
is ready, or that would listen elsewhere or count the workers differently, ends the reload:
the old workers keep serving.
"""

from __future__ import annotations

import asyncio
import contextlib
import math
import os
import shutil
import signal
import socket
import sys
import tempfile
from collections.abc import Callable, Coroutine, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

from clarion.errors import ClarionError, Disconnect
from clarion.hub.http import HttpProtocol, Request, Response
from clarion.hub.logs import Logger
from clarion.hub.metrics import merge_expositions
from clarion.protocol import codes

if TYPE_CHECKING:
    from collections.abc import Iterator

    from clarion.hub.app import Hub
    from clarion.hub.config import Config

# A restarted worker waits 1 s, then twice as long after each death, up to 30 s; one that ran
# for a minute starts the count again (a crash loop must not spin, one crash must not linger).
BACKOFF_FIRST = 1.0
BACKOFF_MAX = 30.0
BACKOFF_RESET_AFTER = 60.0
# Beyond shutdown_timeout: the broker's close and the interpreter's own exit.
EXIT_GRACE = 5.0
# A sibling that does not answer a metrics request within this is left out of the scrape.
SIBLING_TIMEOUT = 2.0
SUPERVISOR_SOCKET = "supervisor.sock"
CLEAN_EXITS = frozenset({0, 130, -signal.SIGTERM, -signal.SIGINT})
# The signal that retires a worker whose replacement is ready (a rolling restart).
RETIRE = signal.SIGUSR1
# A new worker of a reload must be ready within this (worker 0 may run webhook migrations);
# one that is not is stopped and the reload ends, leaving the old workers in place.
READY_TIMEOUT = 120.0
# The window is cut into steps this long: each step disconnects its share of the clients.
RECONNECT_STEP = 0.05


def worker_socket(run_dir: str | Path, slot: int) -> Path:
    return Path(run_dir) / f"worker-{slot}.sock"


def _describe(code: int) -> str:
    if code < 0:
        with contextlib.suppress(ValueError):
            return signal.Signals(-code).name
    return f"exit status {code}"


def check_ports_free(addresses: Sequence[tuple[str, int]]) -> None:
    """Refuse to start when something already listens on a port. Workers bind with
    SO_REUSEPORT, which would otherwise join them silently to another server of the same user
    on that port (another ``clarion serve --workers``) and split its traffic with it; a bind
    without SO_REUSEPORT fails against any listener."""
    for host, port in addresses:
        try:
            infos = socket.getaddrinfo(host or None, port, type=socket.SOCK_STREAM,
                                       flags=socket.AI_PASSIVE)
        except socket.gaierror as exc:
            raise ClarionError(f"cannot listen on {host}:{port}: {exc.strerror}") from None
        for family, kind, proto, _, address in infos:
            with socket.socket(family, kind, proto) as probe:
                probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
                if family == socket.AF_INET6:
                    probe.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 1)
                try:
                    probe.bind(address)
                except OSError as exc:
                    raise ClarionError(f"cannot listen on {host}:{port}: {exc.strerror}"
                                       ) from None


# -- the supervisor -------------------------------------------------------------------------------


@dataclass
class _Slot:
    index: int
    process: asyncio.subprocess.Process | None = None
    ready: asyncio.Future[dict[str, str] | None] | None = None
    started_at: float = 0.0
    deaths: int = 0
    restarts: int = 0
    backoff: float = BACKOFF_FIRST
    pids: list[int] = field(default_factory=list)
    # What the worker said when it was ready: address, workers, drain (seconds it may take to
    # stop), each a string. A reload compares a new worker's with the one it replaces.
    facts: dict[str, str] | None = None


class Supervisor:
    """Starts ``count`` workers with ``command`` + ``--worker-*`` flags and keeps them running
    until SIGTERM/SIGINT, replacing them one at a time on SIGHUP; :meth:`run` returns the exit
    status."""

    def __init__(self, command: Sequence[str], count: int, shutdown_timeout: float,
                 log: Logger, run_dir: str | None = None) -> None:
        self.command = list(command)
        self.count = count
        self.shutdown_timeout = shutdown_timeout
        self.log = log
        self.slots = [_Slot(i) for i in range(count)]
        self.run_dir = run_dir or _make_run_dir()
        self.reloads = {"ok": 0, "failed": 0}
        self.reloading = False
        self._stopping = asyncio.Event()
        self._reload_wanted = asyncio.Event()
        self._tasks: set[asyncio.Task[None]] = set()
        self._keepers: dict[int, asyncio.Task[None]] = {}
        # The old worker of the slot a reload is replacing, from before its replacement starts
        # until it has gone: a stop meanwhile stops it with the rest. _draining: those of them
        # told to retire.
        self._retiring: set[asyncio.subprocess.Process] = set()
        self._draining: set[asyncio.subprocess.Process] = set()

    def run(self) -> int:
        try:
            return asyncio.run(self._run())
        finally:
            shutil.rmtree(self.run_dir, ignore_errors=True)

    async def _run(self) -> int:
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, self._stop, sig)
        loop.add_signal_handler(signal.SIGHUP, self.request_reload)
        registry = CollectorRegistry(auto_describe=True)
        registry.register(_SupervisorCollector(self))
        server = await asyncio.start_unix_server(
            lambda r, w: _answer(r, w, lambda: generate_latest(registry), None),
            path=os.path.join(self.run_dir, SUPERVISOR_SOCKET))
        self.log.info("supervisor starting workers", workers=self.count, pid=os.getpid())
        try:
            # Worker 0 first: it alone brings shared state up to date (the webhook database's
            # migrations and key file), and a configuration error shows once, not N times.
            failed = await self._start_first([self.slots[0]])
            if failed is None and self.count > 1 and not self._stopping.is_set():
                failed = await self._start_first(self.slots[1:])
            if failed is not None:
                code = failed
            else:
                if not self._stopping.is_set():
                    self.log.info("workers ready", workers=self.count)
                for slot in self.slots:
                    self._keep_slot(slot)
                reloader = loop.create_task(self._reloader())
                await self._stopping.wait()
                reloader.cancel()
                await asyncio.gather(reloader, return_exceptions=True)
                keepers = list(self._keepers.values())
                for task in keepers:
                    task.cancel()
                await asyncio.gather(*keepers, return_exceptions=True)
                code = 0
            clean = await self._stop_all()
            return code if code else (0 if clean else 1)
        finally:
            server.close()

    @property
    def draining(self) -> int:
        """Old workers of a reload told to go that have not exited yet."""
        return sum(1 for p in self._draining if p.returncode is None)

    def _stop(self, sig: int) -> None:
        if not self._stopping.is_set():
            self.log.info("supervisor stopping", signal=signal.Signals(sig).name)
        self._stopping.set()

    # -- reload (SIGHUP) ----------------------------------------------------------------------

    def request_reload(self) -> None:
        """SIGHUP: a rolling restart. One asked for during a reload is queued (several such
        requests make one more reload): the configuration may have changed again since this
        reload's workers read it."""
        if self._stopping.is_set():
            self.log.warning("SIGHUP ignored: the server is stopping")
        elif self.reloading:
            queued = self._reload_wanted.is_set()
            self.log.warning("SIGHUP during a reload: " + (
                "a reload is already queued" if queued else "queued, to run after this one"))
        else:
            self.log.info("SIGHUP: reload requested")
        self._reload_wanted.set()

    async def _reloader(self) -> None:
        while True:
            await self._reload_wanted.wait()
            self._reload_wanted.clear()
            if self._stopping.is_set():
                return
            self.reloading = True
            try:
                await self.reload()
            except Exception as exc:  # noqa: BLE001 - logged with traceback; the server goes on
                self.reloads["failed"] += 1
                self.log.failure("reload failed", exc)
            finally:
                self.reloading = False

    async def reload(self) -> bool:
        """Replace every worker, one slot at a time; False (and the old workers of the slots
        not yet replaced keep serving) when a new worker cannot take over."""
        self.log.info("reload starting", workers=self.count)
        for slot in self.slots:
            why = await self._replace(slot)
            if self._stopping.is_set():
                return False
            if why is not None:
                self.reloads["failed"] += 1
                self.log.error("reload aborted; the old workers keep serving",
                               worker=slot.index, reason=why)
                return False
        self.reloads["ok"] += 1
        self.log.info("reload done", workers=self.count)
        return True

    async def _replace(self, slot: _Slot) -> str | None:
        """Start slot's new worker; once it is ready, retire the old one and wait until it has
        gone (so that one worker at a time drains). Why it could not, or None."""
        keeper = self._keepers.pop(slot.index, None)
        if keeper is not None:
            keeper.cancel()
            await asyncio.gather(keeper, return_exceptions=True)
        old, old_ready, old_facts = slot.process, slot.ready, slot.facts
        if old is not None:
            self._retiring.add(old)
        try:
            await self._spawn(slot)
        except OSError as exc:
            self._restore(slot, old, old_ready, old_facts)
            return f"cannot start a worker: {exc}"
        new = slot.process
        assert new is not None and slot.ready is not None
        why = await self._await_replacement(slot, old_facts)
        if why is not None:
            if new.returncode is None:
                await self._end(new, signal.SIGTERM, self.shutdown_timeout + EXIT_GRACE)
            self._restore(slot, old, old_ready, old_facts)
            return why
        self.log.info("worker ready", worker=slot.index, pid=new.pid)
        slot.started_at = asyncio.get_running_loop().time()
        slot.backoff = BACKOFF_FIRST
        self._keep_slot(slot)
        if old is not None and old.returncode is None:
            # A worker that never said it was ready has no SIGUSR1 handler: SIGTERM instead.
            ready = old_ready is not None and old_ready.done() and old_ready.result() is not None
            bound = _drain_bound(old_facts, self.shutdown_timeout)
            self.log.info("worker retiring", worker=slot.index, pid=old.pid,
                          replaced_by=new.pid)
            self._draining.add(old)
            await self._end(old, RETIRE if ready else signal.SIGTERM, bound)
            self._draining.discard(old)
            self.log.info("worker retired", worker=slot.index, pid=old.pid,
                          status=_describe(old.returncode or 0))
        if old is not None:
            self._retiring.discard(old)
        return None

    def _restore(self, slot: _Slot, old: asyncio.subprocess.Process | None,
                 ready: asyncio.Future[dict[str, str] | None] | None,
                 facts: dict[str, str] | None) -> None:
        slot.process, slot.ready, slot.facts = old, ready, facts
        if old is not None:
            self._retiring.discard(old)
        self._keep_slot(slot)

    async def _await_replacement(self, slot: _Slot, old_facts: dict[str, str] | None
                                 ) -> str | None:
        assert slot.ready is not None and slot.process is not None
        stop: asyncio.Future[Any] = asyncio.ensure_future(self._stopping.wait())
        try:
            done, _ = await asyncio.wait([slot.ready, stop], timeout=READY_TIMEOUT,
                                         return_when=asyncio.FIRST_COMPLETED)
        finally:
            stop.cancel()
        if self._stopping.is_set():
            return "the server is stopping"
        if not done:
            return f"the new worker was not ready within {READY_TIMEOUT:g}s"
        facts = slot.ready.result()
        if facts is None:
            code = await slot.process.wait()
            return (f"the new worker exited before it was ready ({_describe(code)}); "
                    "its log above says why")
        slot.facts = facts
        if old_facts is not None:
            for key, what in (("address", "the listening address"),
                              ("workers", "the number of workers")):
                if facts.get(key) != old_facts.get(key):
                    return (f"the new configuration changes {what} ({old_facts.get(key)} to "
                            f"{facts.get(key)}), which takes a full restart")
        return None

    async def _end(self, process: asyncio.subprocess.Process, sig: int, bound: float) -> None:
        """Send ``sig``, wait ``bound`` seconds for the exit, then SIGKILL."""
        with contextlib.suppress(ProcessLookupError):
            process.send_signal(sig)
        try:
            await asyncio.wait_for(asyncio.shield(process.wait()), bound)
        except TimeoutError:
            self.log.error("worker did not stop in time; killing it", pid=process.pid)
            with contextlib.suppress(ProcessLookupError):
                process.kill()
            await process.wait()

    # -- workers ------------------------------------------------------------------------------

    async def _spawn(self, slot: _Slot) -> None:
        loop = asyncio.get_running_loop()
        read_fd, write_fd = os.pipe()
        try:
            slot.process = await asyncio.create_subprocess_exec(
                *self.command, "--worker-slot", str(slot.index), "--worker-dir", self.run_dir,
                "--worker-ready-fd", str(write_fd), "--worker-parent", str(os.getpid()),
                pass_fds=(write_fd,), stdin=asyncio.subprocess.DEVNULL)
        except BaseException:
            os.close(read_fd)
            raise
        finally:
            os.close(write_fd)
        slot.started_at = loop.time()
        slot.pids.append(slot.process.pid)
        reader = asyncio.StreamReader()
        transport, _ = await loop.connect_read_pipe(
            lambda: asyncio.StreamReaderProtocol(reader), os.fdopen(read_fd, "rb", 0))
        slot.ready = loop.create_future()
        self._background(self._await_ready(slot.ready, reader, transport))
        self.log.info("worker started", worker=slot.index, pid=slot.process.pid)

    @staticmethod
    async def _await_ready(ready: asyncio.Future[dict[str, str] | None],
                           reader: asyncio.StreamReader, transport: asyncio.BaseTransport
                           ) -> None:
        try:
            line = await reader.readline()
        finally:
            transport.close()
        if not ready.done():
            ready.set_result(parse_ready(line))

    async def _start_first(self, slots: Sequence[_Slot]) -> int | None:
        """Start ``slots`` and wait until each is ready; a worker that exits first (or a stop)
        ends the start: the exit status to end with, or None."""
        for slot in slots:
            await self._spawn(slot)
        stop: asyncio.Future[Any] = asyncio.ensure_future(self._stopping.wait())
        try:
            for slot in slots:
                assert slot.ready is not None
                waits: list[asyncio.Future[Any]] = [slot.ready, stop]
                await asyncio.wait(waits, return_when=asyncio.FIRST_COMPLETED)
                if self._stopping.is_set():
                    return None
                if slot.ready.result() is None:
                    assert slot.process is not None
                    code = await slot.process.wait()
                    self.log.error("worker exited before it was ready; stopping", worker=slot.index,
                                   status=_describe(code))
                    return code if code in (1, 2) else 1
                slot.facts = slot.ready.result()
                self.log.info("worker ready", worker=slot.index,
                              pid=slot.process.pid if slot.process else None)
            return None
        finally:
            stop.cancel()

    def _keep_slot(self, slot: _Slot) -> None:
        if not self._stopping.is_set():
            self._keepers[slot.index] = asyncio.get_running_loop().create_task(self._keep(slot))

    async def _keep(self, slot: _Slot) -> None:
        """Restart the worker of ``slot`` whenever it dies, with backoff, until the stop."""
        loop = asyncio.get_running_loop()
        while True:
            process = slot.process
            code = await process.wait() if process is not None else None
            if self._stopping.is_set():
                return
            ran = loop.time() - slot.started_at
            if ran >= BACKOFF_RESET_AFTER:
                slot.backoff = BACKOFF_FIRST
            delay = slot.backoff
            slot.backoff = min(BACKOFF_MAX, slot.backoff * 2)
            if process is not None and code is not None:
                slot.deaths += 1
                self.log.error("worker died; restarting", worker=slot.index, pid=process.pid,
                               status=_describe(code), after=f"{ran:.1f}s",
                               restart_in=f"{delay:g}s", deaths=slot.deaths)
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._stopping.wait(), delay)
                return
            slot.restarts += 1
            try:
                await self._spawn(slot)
            except OSError as exc:  # out of processes or file descriptors: try again later
                self.log.error("worker could not be started", worker=slot.index, error=str(exc))
                slot.process = None
                slot.started_at = loop.time()
                continue
            self._background(self._log_ready(slot))

    def _background(self, coro: Coroutine[Any, Any, None]) -> None:
        task = asyncio.get_running_loop().create_task(coro)
        self._tasks.add(task)  # the loop keeps only weak references to tasks
        task.add_done_callback(self._tasks.discard)

    async def _log_ready(self, slot: _Slot) -> None:
        ready, process = slot.ready, slot.process
        if ready is not None and process is not None and (facts := await ready) is not None:
            slot.facts = facts
            self.log.info("worker ready", worker=slot.index, pid=process.pid)

    async def _stop_all(self) -> bool:
        """SIGTERM to every worker (and to old ones still draining after a reload); SIGKILL to
        any still there after the shutdown bound. True when all of them ended by themselves
        and cleanly."""
        live = [s.process for s in self.slots
                if s.process is not None and s.process.returncode is None]
        live += [p for p in self._retiring if p.returncode is None and p not in live]
        for process in live:
            with contextlib.suppress(ProcessLookupError):
                process.send_signal(signal.SIGTERM)
        if not live:
            return True
        bound = max(_drain_bound(s.facts, self.shutdown_timeout) for s in self.slots)
        waits = [asyncio.ensure_future(p.wait()) for p in live]
        _, pending = await asyncio.wait(waits, timeout=bound)
        for process in live:
            if process.returncode is None:
                self.log.error("worker did not stop in time; killing it", pid=process.pid)
                with contextlib.suppress(ProcessLookupError):
                    process.kill()
        if pending:
            await asyncio.wait(pending)
        codes_ = [p.returncode for p in live]
        clean = not pending and all(c in CLEAN_EXITS for c in codes_)
        self.log.info("supervisor stopped", clean=clean)
        return clean


def _drain_bound(facts: dict[str, str] | None, shutdown_timeout: float) -> float:
    """How long a worker may take to stop: what it said when it was ready (its own
    configuration's shutdown_timeout and reconnect window, which a reload may have changed),
    else the supervisor's shutdown_timeout; plus the exit grace."""
    try:
        drain = float((facts or {})["drain"])
    except (KeyError, ValueError):
        drain = shutdown_timeout
    return (drain if math.isfinite(drain) and drain >= 0 else shutdown_timeout) + EXIT_GRACE


def ready_line(address: str, workers: int, drain: float) -> bytes:
    """What a worker writes to the supervisor once it listens and its broker is connected."""
    return f"ready address={address} workers={workers} drain={drain:g}\n".encode()


def parse_ready(line: bytes) -> dict[str, str] | None:
    """The facts of a ready line, or None for anything else (an exit before ready is EOF)."""
    words = line.decode("utf-8", "replace").split()
    if not words or words[0] != "ready":
        return None
    return dict(w.partition("=")[::2] for w in words[1:])


class _SupervisorCollector(Collector):
    def __init__(self, supervisor: Supervisor) -> None:
        self.supervisor = supervisor

    def collect(self) -> Iterator[Metric]:
        sup = self.supervisor
        slots = sup.slots
        yield GaugeMetricFamily("clarion_workers", "Worker processes configured (--workers).",
                                value=len(slots))
        yield GaugeMetricFamily(
            "clarion_workers_running", "Worker processes alive now (not counting old ones "
            "draining during a reload).",
            value=sum(1 for s in slots if s.process is not None and s.process.returncode is None))
        yield GaugeMetricFamily(
            "clarion_workers_draining", "Old worker processes of a reload still draining.",
            value=sup.draining)
        c = CounterMetricFamily("clarion_worker_restarts", "Worker processes started again "
                                "after one died, by worker slot.", labels=["slot"])
        for s in slots:
            c.add_metric([str(s.index)], s.restarts)
        yield c
        r = CounterMetricFamily("clarion_worker_reloads", "Rolling restarts (SIGHUP) by "
                                "result: ok, or failed (a new worker could not take over; the "
                                "old ones kept serving).", labels=["result"])
        for result, count in sup.reloads.items():
            r.add_metric([result], count)
        yield r
        yield GaugeMetricFamily("clarion_worker_reload_in_progress",
                                "1 while a rolling restart is replacing workers.",
                                value=int(sup.reloading))


def _make_run_dir() -> str:
    # Unix socket paths are limited to about 100 bytes: a long $TMPDIR falls back to /tmp.
    path = tempfile.mkdtemp(prefix="clarion-")
    if len(path) > 80:
        os.rmdir(path)
        path = tempfile.mkdtemp(prefix="clarion-", dir="/tmp")
    return path


# -- a worker ------------------------------------------------------------------------------------


async def _answer(reader: asyncio.StreamReader, writer: asyncio.StreamWriter,
                  metrics: Callable[[], bytes], wake: Callable[[], None] | None) -> None:
    try:
        with contextlib.suppress(TimeoutError, OSError, asyncio.IncompleteReadError):
            request = await asyncio.wait_for(reader.readline(), SIBLING_TIMEOUT)
            if request.strip() == b"metrics":
                writer.write(metrics())
            elif request.strip() == b"wake" and wake is not None:
                wake()
            await writer.drain()
    finally:
        writer.close()


async def _ask(path: Path, timeout: float) -> bytes | None:
    try:
        async with asyncio.timeout(timeout):
            reader, writer = await asyncio.open_unix_connection(str(path))
            try:
                writer.write(b"metrics\n")
                return await reader.read()
            finally:
                writer.close()
    except (OSError, TimeoutError):
        return None


class WorkerLink:
    """A worker's side: its Unix socket, the whole-server ``/metrics``, the ready signal, and
    stopping if the supervisor is gone."""

    def __init__(self, slot: int, count: int, run_dir: str, ready_fd: int | None,
                 parent: int | None) -> None:
        self.slot = slot
        self.count = count
        self.run_dir = run_dir
        self.ready_fd = ready_fd
        self.parent = parent
        self.on_wake: Callable[[], None] | None = None
        # Called when this worker is retired by a reload, before its clients are told to go:
        # what must not run twice at once while the replacement already runs (the embedded
        # webhook delivery of worker 0).
        self.on_retire: list[Callable[[], None]] = []
        self.unreachable = 0
        self.retiring = False
        self._server: asyncio.AbstractServer | None = None
        self._inode: int | None = None
        self._watch: asyncio.Task[None] | None = None
        self._drain: asyncio.Task[None] | None = None

    @property
    def path(self) -> Path:
        return worker_socket(self.run_dir, self.slot)

    def prepare(self, hub: Hub) -> None:
        """Before ``hub.start()``: bind with SO_REUSEPORT, name the node after the slot."""
        hub.reuse_port = True
        hub.node_name = f"{hub.node_name}/worker-{self.slot}"

        async def metrics(request: Request, http: HttpProtocol) -> Response:
            return await self._metrics(hub)

        hub.router.add("/metrics", metrics)

    async def start(self, hub: Hub) -> None:
        """After ``hub.start()``: answer siblings, then tell the supervisor this one is ready."""
        with contextlib.suppress(FileNotFoundError):
            self.path.unlink()  # left by the worker this one replaces
        self._server = await asyncio.start_unix_server(
            lambda r, w: _answer(r, w, hub.metrics.render, self._wake), path=str(self.path))
        # During a reload the old worker of this slot still runs, and must not remove this
        # socket (its own is the one this start unlinked) when it stops.
        self._inode = self.path.stat().st_ino
        loop = asyncio.get_running_loop()
        # A terminal's hangup reaches the whole process group; the supervisor decides (a
        # rolling restart), and a worker must not die of it meanwhile.
        loop.add_signal_handler(signal.SIGHUP, lambda: None)
        loop.add_signal_handler(RETIRE, self.retire, hub)
        if self.parent is not None:
            self._watch = loop.create_task(self._watch_parent(hub))
        if self.ready_fd is not None:
            window = reconnect_window(hub.config)
            drain = window + hub.config.seconds("shutdown_timeout")
            with contextlib.suppress(OSError):
                os.write(self.ready_fd, ready_line(hub.address.partition("://")[2],
                                                   self.count, drain))
            with contextlib.suppress(OSError):
                os.close(self.ready_fd)
            self.ready_fd = None

    def close(self) -> None:
        if self._watch is not None:
            self._watch.cancel()
        if self._drain is not None:
            self._drain.cancel()
        if self._server is not None:
            self._server.close()
            with contextlib.suppress(FileNotFoundError):
                if self.path.stat().st_ino == self._inode:
                    self.path.unlink()

    def retire(self, hub: Hub) -> None:
        """SIGUSR1 from the supervisor: this worker's replacement is ready. Stop accepting,
        tell the clients to reconnect a few at a time, then shut down as on SIGTERM."""
        if self.retiring:
            return
        self.retiring = True
        self._drain = asyncio.get_running_loop().create_task(self._retire(hub))

    async def _retire(self, hub: Hub) -> None:
        window = reconnect_window(hub.config)
        hub.log.info("worker retiring: its replacement is ready", worker=self.slot,
                     pid=os.getpid(), connections=hub.connection_count,
                     reconnect_window=f"{window:g}s")
        try:
            for callback in self.on_retire:
                try:
                    callback()
                except Exception as exc:  # noqa: BLE001 - logged with traceback; retiring goes on
                    hub.failed("retire", exc, callback=getattr(callback, "__qualname__", "?"))
            bye = Disconnect(*codes.SHUTDOWN)
            stop_accepting(hub)
            if hub.grip is not None:
                # The GRIP proxy's listeners close with the hub's, and its clients (held
                # requests, WebSocket-over-HTTP) are told at once: the proxy has no spread.
                hub.grip.begin_shutdown(bye)
            await spread_disconnects(hub, bye, window)
        finally:
            hub.stop()

    def _wake(self) -> None:
        if self.on_wake is not None:
            self.on_wake()

    def wake_sibling(self, slot: int) -> None:
        """Wake the webhook worker that runs in worker ``slot`` (an event was committed here).
        Blocking and short: called from a WSGI thread after a commit. If that worker is down,
        its replacement finds the event when it starts."""
        with contextlib.suppress(OSError), socket.socket(socket.AF_UNIX) as sock:
            sock.settimeout(0.5)
            sock.connect(str(worker_socket(self.run_dir, slot)))
            sock.sendall(b"wake\n")

    async def _watch_parent(self, hub: Hub) -> None:
        # A supervisor killed with SIGKILL cannot stop its workers; they would keep the ports.
        while True:
            await asyncio.sleep(1.0)
            if os.getppid() != self.parent:
                hub.log.error("supervisor gone; stopping", worker=self.slot)
                hub.stop()
                return

    async def _metrics(self, hub: Hub) -> Response:
        own = hub.metrics.render()
        others = [i for i in range(self.count) if i != self.slot]
        answers = await asyncio.gather(
            *(_ask(worker_socket(self.run_dir, i), SIBLING_TIMEOUT) for i in others),
            _ask(Path(self.run_dir) / SUPERVISOR_SOCKET, SIBLING_TIMEOUT))
        parts: list[tuple[str | None, bytes]] = [(str(self.slot), own)]
        missing = 0
        for i, text in zip(others, answers[:-1], strict=True):
            if text is None:
                missing += 1
            else:
                parts.append((str(i), text))
        if answers[-1] is not None:
            parts.append((None, answers[-1]))
        self.unreachable += missing
        # Labelled with this worker: each worker counts the scrapes it answered.
        parts.append((str(self.slot), _scrape_text(missing, self.unreachable)))
        return Response(200, merge_expositions(parts),
                        "text/plain; version=0.0.4; charset=utf-8")


def reconnect_window(config: Config) -> float:
    """Seconds a retiring worker spreads its clients' reconnects over: ``reconnect_window``,
    at most half of shutdown_timeout, which bounds the drain that follows."""
    return min(config.seconds("reconnect_window"), config.seconds("shutdown_timeout") / 2)


def stop_accepting(hub: Hub) -> None:
    """Close the hub's listening socket so that the kernel sends new connections to the other
    workers of the SO_REUSEPORT group; the hub's shutdown closes it again, which does nothing.
    Connections already accepted go on."""
    # The Hub has no public "stop accepting" yet; asking for one (clarion.hub.app).
    server: asyncio.Server | None = getattr(hub, "_server", None)
    if server is not None:
        server.close()


async def spread_disconnects(hub: Hub, bye: Disconnect, window: float) -> None:
    """Disconnect every WebSocket and SSE/stream/poll client with ``bye``, a share of them
    every RECONNECT_STEP seconds over ``window`` seconds (all at once when it is 0): clients
    reconnect within about a second of being told (centrifuge-js waits 0.5-1 s, centrifuge-
    python 0.1-0.2 s by default), so telling them all at once lands them all at once on the
    other workers."""
    conns: list[Any] = [*hub.websockets, *hub.streams]
    steps = max(1, min(len(conns), math.ceil(window / RECONNECT_STEP)))
    loop = asyncio.get_running_loop()
    start = loop.time()
    for k in range(steps):
        for conn in conns[k * len(conns) // steps:(k + 1) * len(conns) // steps]:
            if conn in hub.websockets or conn in hub.streams:  # not gone by itself meanwhile
                conn.disconnect(bye)
        if k + 1 < steps:
            await asyncio.sleep(max(0.0, start + (k + 1) * window / steps - loop.time()))


def _scrape_text(missing: int, total: int) -> bytes:
    return (b"# HELP clarion_metrics_workers_missing Workers whose metrics this scrape lacks "
            b"(dead or not answering within 2 s).\n"
            b"# TYPE clarion_metrics_workers_missing gauge\n"
            b"clarion_metrics_workers_missing %d\n"
            b"# HELP clarion_metrics_workers_missing_total Workers left out of scrapes so far, "
            b"counted by the worker that answered.\n"
            b"# TYPE clarion_metrics_workers_missing_total counter\n"
            b"clarion_metrics_workers_missing_total %d\n" % (missing, total))


def worker_command() -> list[str]:
    """How to start a worker: this interpreter running Clarion's CLI."""
    return [sys.executable, "-m", "clarion"]
