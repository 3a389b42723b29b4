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
"""

from __future__ import annotations

import asyncio
import contextlib
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

from clarion.errors import ClarionError
from clarion.hub.http import HttpProtocol, Request, Response
from clarion.hub.logs import Logger
from clarion.hub.metrics import merge_expositions

if TYPE_CHECKING:
    from collections.abc import Iterator

    from clarion.hub.app import Hub

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
    ready: asyncio.Future[bool] | None = None
    started_at: float = 0.0
    deaths: int = 0
    restarts: int = 0
    backoff: float = BACKOFF_FIRST
    pids: list[int] = field(default_factory=list)


class Supervisor:
    """Starts ``count`` workers with ``command`` + ``--worker-*`` flags and keeps them running
    until SIGTERM/SIGINT; :meth:`run` returns the exit status."""

    def __init__(self, command: Sequence[str], count: int, shutdown_timeout: float,
                 log: Logger, run_dir: str | None = None) -> None:
        self.command = list(command)
        self.count = count
        self.shutdown_timeout = shutdown_timeout
        self.log = log
        self.slots = [_Slot(i) for i in range(count)]
        self.run_dir = run_dir or _make_run_dir()
        self._stopping = asyncio.Event()
        self._tasks: set[asyncio.Task[None]] = set()

    def run(self) -> int:
        try:
            return asyncio.run(self._run())
        finally:
            shutil.rmtree(self.run_dir, ignore_errors=True)

    async def _run(self) -> int:
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, self._stop, sig)
        # Reloading (new code, new configuration) is the deployment issue's; until then SIGHUP
        # must not kill the server, which is its default action.
        loop.add_signal_handler(signal.SIGHUP, self.log.warning,
                                "SIGHUP ignored: reloading is not supported; restart instead")
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
                keepers = [loop.create_task(self._keep(slot)) for slot in self.slots]
                await self._stopping.wait()
                for task in keepers:
                    task.cancel()
                await asyncio.gather(*keepers, return_exceptions=True)
                code = 0
            clean = await self._stop_all()
            return code if code else (0 if clean else 1)
        finally:
            server.close()

    def _stop(self, sig: int) -> None:
        if not self._stopping.is_set():
            self.log.info("supervisor stopping", signal=signal.Signals(sig).name)
        self._stopping.set()

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
    async def _await_ready(ready: asyncio.Future[bool],
                           reader: asyncio.StreamReader, transport: asyncio.BaseTransport
                           ) -> None:
        try:
            line = await reader.readline()
        finally:
            transport.close()
        if not ready.done():
            ready.set_result(line.strip() == b"ready")

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
                if not slot.ready.result():
                    assert slot.process is not None
                    code = await slot.process.wait()
                    self.log.error("worker exited before it was ready; stopping", worker=slot.index,
                                   status=_describe(code))
                    return code if code in (1, 2) else 1
                self.log.info("worker ready", worker=slot.index,
                              pid=slot.process.pid if slot.process else None)
            return None
        finally:
            stop.cancel()

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
        if ready is not None and process is not None and await ready:
            self.log.info("worker ready", worker=slot.index, pid=process.pid)

    async def _stop_all(self) -> bool:
        """SIGTERM to every worker; SIGKILL to any still there after the shutdown bound. True
        when all of them ended by themselves and cleanly."""
        live = [s.process for s in self.slots
                if s.process is not None and s.process.returncode is None]
        for process in live:
            with contextlib.suppress(ProcessLookupError):
                process.send_signal(signal.SIGTERM)
        if not live:
            return True
        waits = [asyncio.ensure_future(p.wait()) for p in live]
        _, pending = await asyncio.wait(waits, timeout=self.shutdown_timeout + EXIT_GRACE)
        for process in live:
            if process.returncode is None:
                self.log.error("worker did not stop in time; killing it", pid=process.pid)
                with contextlib.suppress(ProcessLookupError):
                    process.kill()
        if pending:
            await asyncio.wait(pending)
        codes = [p.returncode for p in live]
        clean = not pending and all(c in CLEAN_EXITS for c in codes)
        self.log.info("supervisor stopped", clean=clean)
        return clean


class _SupervisorCollector(Collector):
    def __init__(self, supervisor: Supervisor) -> None:
        self.supervisor = supervisor

    def collect(self) -> Iterator[Metric]:
        slots = self.supervisor.slots
        yield GaugeMetricFamily("clarion_workers", "Worker processes configured (--workers).",
                                value=len(slots))
        yield GaugeMetricFamily(
            "clarion_workers_running", "Worker processes alive now.",
            value=sum(1 for s in slots if s.process is not None and s.process.returncode is None))
        c = CounterMetricFamily("clarion_worker_restarts", "Worker processes started again "
                                "after one died, by worker slot.", labels=["slot"])
        for s in slots:
            c.add_metric([str(s.index)], s.restarts)
        yield c


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
        self.unreachable = 0
        self._server: asyncio.AbstractServer | None = None
        self._watch: asyncio.Task[None] | None = None

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
        loop = asyncio.get_running_loop()
        # A terminal's hangup reaches the whole process group; the supervisor decides (and so
        # far ignores it), and a worker must not die of it meanwhile.
        loop.add_signal_handler(signal.SIGHUP, lambda: None)
        if self.parent is not None:
            self._watch = loop.create_task(self._watch_parent(hub))
        if self.ready_fd is not None:
            with contextlib.suppress(OSError):
                os.write(self.ready_fd, b"ready\n")
            with contextlib.suppress(OSError):
                os.close(self.ready_fd)
            self.ready_fd = None

    def close(self) -> None:
        if self._watch is not None:
            self._watch.cancel()
        if self._server is not None:
            self._server.close()
            with contextlib.suppress(FileNotFoundError):
                self.path.unlink()

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
