"""A real Pushpin (Debian's ``pushpin`` package) with a configuration of its own.

One launcher for the tests and the benchmarks (bench/common.py imports this module):

* :func:`write_config` writes a complete Pushpin configuration into a directory: free ports for
  the client HTTP listener, the HTTP publish (control) listener and the ZMQ endpoints, IPC
  sockets and logs in that directory, a routes file pointing at one origin, and a zurl allowed
  to reach 127.0.0.1.
* :class:`Pushpin` runs it: ``pushpin --config <dir>/pushpin.conf`` in its own session
  (process group), waits until it is ready (below), kills the whole group at stop.
* :func:`pushpin_available` says whether the binaries are installed.

Why the configuration is rewritten:

* The package's ``/etc/pushpin/pushpin.conf`` runs ``condure, pushpin-proxy, pushpin-handler``
  and its ``/usr/lib/pushpin/internal.conf`` points the proxy at a system-wide zurl
  (``ipc:///var/run/zurl/``, the separate ``zurl`` service).  Here the runner starts its own
  zurl (service ``zurl``), rendered from ``{libdir}/runner/zurl.conf.template`` with its
  sockets in our run dir.  ``[global] libdir`` is pointed at a copy of
  ``/usr/lib/pushpin`` in the config dir so both files can be changed.
* That zurl template has ``deny=127.*,10.*,192.168.*,*.local``.  Our copy empties ``deny`` and
  allows ``127.*``: nothing Pushpin fetches from this machine is refused.  (Observed with
  Pushpin 1.36: requests to the route's target, WebSocket-over-HTTP and the handler's
  ``Grip-Link: <...>; rel=next`` fetches all carry zurl's ``ignore-policies`` and passed even
  with the stock list; the policy would bite a next-link URI pointing elsewhere on the box.)
* ``message_rate=2500`` / ``message_hwm=25000`` (the stock file's handler throttle) can be
  unset with ``rate_limit=False`` (the fan-out benchmark does; tests keep the stock values).

When Pushpin is ready: its client port answering is not enough. A held request crosses three
of its processes (condure, pushpin-proxy, pushpin-handler), linked by ZeroMQ sockets that
connect on their own schedule, and the proxy hands a hold to the handler over the "accept"
link: before that link is up, Pushpin answers a hold with ``500 Accept service unavailable.``
(seen under load as a flake in test_grip_proxy). So :meth:`Pushpin.start` sends a real
request through the proxy to an origin of the launcher's own that answers with a stream hold,
and repeats it until the handler's answer comes back. The route to that origin
(:data:`READY_HOST`, matched by host name) is the first line of the routes file; no test
request carries that host.
"""

from __future__ import annotations

import contextlib
import http.server
import os
import shutil
import signal
import socket
import subprocess
import tempfile
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

PUSHPIN_BIN = os.environ.get("CLARION_PUSHPIN", "/usr/bin/pushpin")
PUSHPIN_CONF = Path("/etc/pushpin/pushpin.conf")
PUSHPIN_LIBDIR = Path("/usr/lib/pushpin")
HELPERS = ("condure", "zurl", "pushpin-proxy", "pushpin-handler")
HOST = "127.0.0.1"
READY_HOST = "clarion-pushpin-ready.invalid"  # the readiness probe's route (see start)
READY_BODY = b"pushpin-ready\n"


def free_port() -> int:
    with socket.socket() as s:
        s.bind((HOST, 0))
        return int(s.getsockname()[1])


def pushpin_available() -> tuple[bool, str]:
    """(True, "") when pushpin and the helpers its runner starts are installed."""
    if not (os.path.isfile(PUSHPIN_BIN) and os.access(PUSHPIN_BIN, os.X_OK)):
        return False, f"{PUSHPIN_BIN} is missing (scripts/install-test-deps installs pushpin)"
    for b in HELPERS:
        if not shutil.which(b):
            return False, f"{b} not found (it comes with Debian's pushpin package)"
    for f in (PUSHPIN_CONF, PUSHPIN_LIBDIR / "internal.conf",
              PUSHPIN_LIBDIR / "runner" / "zurl.conf.template"):  # fmt: skip
        if not f.is_file():
            return False, f"{f} is missing (Debian's pushpin package)"
    return True, ""


@dataclass
class PushpinConfig:
    """What :func:`write_config` wrote, and where Pushpin will listen."""

    directory: Path
    conf: Path
    routes: Path
    rundir: Path
    logdir: Path
    http_port: int  # clients connect here (condure)
    publish_port: int  # HTTP control API: POST /publish/ (push_in_http_port)
    zmq_ports: dict[str, int] = field(default_factory=dict)

    @property
    def argv(self) -> list[str]:
        return [PUSHPIN_BIN, "--config", str(self.conf), "--merge-output"]

    @property
    def url(self) -> str:
        return f"http://{HOST}:{self.http_port}"

    @property
    def ws_url(self) -> str:
        return f"ws://{HOST}:{self.http_port}"

    @property
    def control_uri(self) -> str:
        """What a GRIP publisher is configured with (pubcontrol appends ``/publish/``)."""
        return f"http://{HOST}:{self.publish_port}"


def route_line(origin_port: int, *, over_http: bool = False, options: str = "") -> str:
    """A routes-file line sending every host to ``127.0.0.1:origin_port``."""
    target = f"{HOST}:{origin_port}" + (",over_http" if over_http else "")
    cond = "*" + (f",{options}" if options else "")
    return f"{cond} {target}"


def write_config(
    directory: str | os.PathLike[str],
    origin_port: int | None = None,
    *,
    over_http: bool = False,
    routes: str | None = None,
    rate_limit: bool = True,
    ipc_prefix: str = "clarion-",
    log_level: int = 2,
) -> PushpinConfig:
    """Write pushpin.conf, routes, internal.conf and the zurl template into ``directory``.

    ``routes`` is the routes file's text; by default one line to ``origin_port``
    (``* 127.0.0.1:PORT`` or ``* 127.0.0.1:PORT,over_http``)."""
    d = Path(directory)
    run, logs, lib = d / "run", d / "log", d / "lib"
    for p in (run, logs, lib / "runner"):
        p.mkdir(parents=True, exist_ok=True)

    # internal.conf: the proxy talks to the zurl the runner starts, in our run dir
    internal = (PUSHPIN_LIBDIR / "internal.conf").read_text()
    internal = internal.replace("ipc:///var/run/zurl/zurl-", "ipc://{rundir}/{ipc_prefix}zurl-")
    (lib / "internal.conf").write_text(internal)

    # zurl: reach 127.0.0.1 (next-links, WebSocket-over-HTTP go to the local origin)
    zurl = []
    for line in (PUSHPIN_LIBDIR / "runner" / "zurl.conf.template").read_text().splitlines():
        key = line.split("=", 1)[0].strip()
        if not line.startswith("#") and key == "deny":
            line = "deny="
        elif not line.startswith("#") and key == "allow":
            line = "allow=127.*,localhost"
        zurl.append(line)
    (lib / "runner" / "zurl.conf.template").write_text("\n".join(zurl) + "\n")

    if routes is None:
        if origin_port is None:
            raise ValueError("write_config needs origin_port or routes")
        routes = route_line(origin_port, over_http=over_http)
    routes_path = d / "routes"
    routes_path.write_text(routes.rstrip("\n") + "\n")

    http_port, publish_port = free_port(), free_port()
    zmq = {"push_in_spec": free_port(), "push_in_sub_specs": free_port(),
           "command_spec": free_port()}  # fmt: skip
    rep = {
        "include": str(lib / "internal.conf"),
        "rundir": str(run),
        "ipc_prefix": ipc_prefix,
        "services": "condure,zurl,pushpin-proxy,pushpin-handler",
        "http_port": str(http_port),
        "logdir": str(logs),
        "log_level": str(log_level),
        "routesfile": str(routes_path),
        "push_in_http_addr": HOST,
        "push_in_http_port": str(publish_port),
        **{k: f"tcp://{HOST}:{port}" for k, port in zmq.items()},
    }
    # The stock file limits the handler to message_rate=2500 deliveries/s and drops (with a
    # warning per delivery) beyond message_hwm=25000 queued; unset, the handler does not
    # rate-limit.  A fan-out benchmark must not measure that throttle.
    unset = set() if rate_limit else {"message_rate", "message_hwm"}
    out = []
    section = ""
    for line in PUSHPIN_CONF.read_text().splitlines():
        stripped = line.strip()
        if stripped.startswith("["):
            section = stripped
        key = line.split("=", 1)[0].strip()
        if not line.startswith("#") and key in rep:
            line = f"{key}={rep.pop(key)}"
        elif not line.startswith("#") and key in unset:
            unset.discard(key)
            line = f"# {line}  (unset by tests/pushpin.py: no rate limit)"
        out.append(line)
        if section == "[global]" and stripped.startswith("include="):
            out.append(f"libdir={lib}")
    if rep or unset:
        raise RuntimeError(f"{PUSHPIN_CONF} keys not found: {sorted(rep) + sorted(unset)}")
    conf = d / "pushpin.conf"
    conf.write_text("\n".join(out) + "\n")
    return PushpinConfig(d, conf, routes_path, run, logs, http_port, publish_port, zmq)


def _own_session() -> None:
    """Child setup: own session (so the whole group can be killed); die with the parent."""
    os.setsid()
    with contextlib.suppress(Exception):
        import ctypes

        libc = ctypes.CDLL("libc.so.6", use_errno=True)
        libc.prctl(1, signal.SIGTERM)  # PR_SET_PDEATHSIG


def port_answers(port: int, host: str = HOST) -> bool:
    try:
        with socket.create_connection((host, port), timeout=1):
            return True
    except OSError:
        return False


def http_answers(port: int, path: str = "/", host: str = HOST) -> bool:
    """True when something answers an HTTP request on the port (any status)."""
    try:
        with socket.create_connection((host, port), timeout=2) as s:
            s.sendall(f"GET {path} HTTP/1.1\r\nHost: {host}\r\nConnection: close\r\n\r\n".encode())
            s.settimeout(5)
            return s.recv(16).startswith(b"HTTP/1.")
    except OSError:
        return False


class _HoldingOrigin(http.server.BaseHTTPRequestHandler):
    """Answers every request with a stream hold: Pushpin's proxy must hand it to its handler,
    which then sends the answer's body to the client and keeps the stream open."""

    def do_GET(self) -> None:
        self.send_response(200)
        self.send_header("Content-Type", "text/plain")
        self.send_header("Grip-Hold", "stream")
        self.send_header("Grip-Channel", "clarion-pushpin-ready")
        self.send_header("Content-Length", str(len(READY_BODY)))
        self.end_headers()
        self.wfile.write(READY_BODY)

    def log_message(self, format: str, *args: object) -> None:
        pass  # a probe per 0.2 s would fill the test output


def _start_holding_origin() -> http.server.ThreadingHTTPServer:
    server = http.server.ThreadingHTTPServer((HOST, 0), _HoldingOrigin)
    server.daemon_threads = True
    threading.Thread(target=server.serve_forever, name="pushpin-ready-origin",
                     daemon=True).start()
    return server


def hold_answers(port: int, host: str = HOST) -> tuple[bool, str]:
    """One readiness probe: a request for :data:`READY_HOST` through the proxy on ``port``.
    (True, "") when the handler's answer to the hold arrives; else (False, what came back)."""
    request = f"GET / HTTP/1.1\r\nHost: {READY_HOST}\r\nConnection: close\r\n\r\n"
    got = b""
    try:
        with socket.create_connection((host, port), timeout=2) as s:
            s.sendall(request.encode())
            s.settimeout(5)
            # The hold stays open: read until the body is in, an error answer ends, or 5 s.
            while READY_BODY not in got:
                chunk = s.recv(4096)
                if not chunk:
                    break
                got += chunk
    except OSError as exc:
        return False, f"{got[:200]!r} then {exc!r}"
    if got.startswith(b"HTTP/1.1 200") and READY_BODY in got:
        return True, ""
    return False, repr(got[:200])


class Pushpin:
    """A running Pushpin: ``with Pushpin(origin_port, over_http=True) as pp: pp.url ...``."""

    def __init__(
        self,
        origin_port: int | None = None,
        *,
        over_http: bool = False,
        routes: str | None = None,
        rate_limit: bool = True,
        directory: str | os.PathLike[str] | None = None,
    ) -> None:
        self._own_dir = directory is None
        self.directory = Path(directory or tempfile.mkdtemp(prefix="pushpin-"))
        self.config = write_config(
            self.directory, origin_port, over_http=over_http, routes=routes, rate_limit=rate_limit
        )
        self.log_path = self.directory / "pushpin.out"
        self.proc: subprocess.Popen[bytes] | None = None

    # where it listens
    @property
    def http_port(self) -> int:
        return self.config.http_port

    @property
    def publish_port(self) -> int:
        return self.config.publish_port

    @property
    def url(self) -> str:
        return self.config.url

    @property
    def ws_url(self) -> str:
        return self.config.ws_url

    @property
    def control_uri(self) -> str:
        return self.config.control_uri

    def start(self, timeout: float = 45) -> Pushpin:
        """Start Pushpin and return once a held request goes through it (module docstring):
        the control API answers and a probe through the client port gets the handler's
        answer to a hold. Raises RuntimeError (with Pushpin's logs and the last probe's
        answer) after ``timeout`` seconds."""
        origin = _start_holding_origin()
        try:
            lines = [line for line in self.config.routes.read_text().splitlines()
                     if not line.startswith(f"{READY_HOST} ")]  # a previous start's probe
            probe_route = f"{READY_HOST} {HOST}:{origin.server_address[1]}"
            self.config.routes.write_text("\n".join([probe_route, *lines]) + "\n")
            with self.log_path.open("wb") as out:
                self.proc = subprocess.Popen(
                    self.config.argv, stdout=out, stderr=subprocess.STDOUT,
                    stdin=subprocess.DEVNULL, cwd=self.directory, preexec_fn=_own_session,
                )  # fmt: skip
            last = "nothing yet"
            deadline = time.monotonic() + timeout
            while time.monotonic() < deadline:
                if self.proc.poll() is not None:
                    raise RuntimeError(
                        f"pushpin exited with {self.proc.returncode}:\n{self.output()}"
                    )
                if http_answers(self.publish_port):
                    ready, last = hold_answers(self.http_port)
                    if ready:
                        return self
                time.sleep(0.2)
            tail = self.output()
            self.stop()
            raise RuntimeError(f"pushpin did not pass a held request on {self.http_port} in "
                               f"{timeout}s (last answer: {last}):\n{tail}")
        finally:
            origin.shutdown()
            origin.server_close()

    def alive(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def output(self, tail: int = 60) -> str:
        """The runner's merged output plus the tail of every helper's log."""
        parts = []
        with contextlib.suppress(OSError):
            parts.append(self.log_path.read_text(errors="replace"))
        for log in sorted(self.config.logdir.glob("*.log")):
            with contextlib.suppress(OSError):
                lines = log.read_text(errors="replace").splitlines()[-tail:]
                parts.append(f"--- {log.name}\n" + "\n".join(lines))
        return "\n".join(parts)

    def stop(self) -> None:
        if self.proc is None:
            return
        pgid = self.proc.pid
        if self.proc.poll() is None:
            try:
                os.killpg(pgid, signal.SIGTERM)
            except (ProcessLookupError, PermissionError):
                self.proc.terminate()
            try:
                self.proc.wait(timeout=15)
            except subprocess.TimeoutExpired:
                with contextlib.suppress(ProcessLookupError, PermissionError):
                    os.killpg(pgid, signal.SIGKILL)
                with contextlib.suppress(subprocess.TimeoutExpired):
                    self.proc.wait(timeout=5)
        # anything left in the group (condure, zurl, pushpin-proxy, pushpin-handler)
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(pgid, signal.SIGKILL)

    def cleanup(self) -> None:
        if self._own_dir:
            shutil.rmtree(self.directory, ignore_errors=True)

    def __enter__(self) -> Pushpin:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()
        self.cleanup()
