"""The shipped nginx site (deploy/nginx) on free ports, with a certificate made here.

``render_site`` fills the ports and certificate paths into deploy/nginx/clarion.conf by exact
replacement of the values the file ships with; a value that is missing (the file changed)
fails with its name instead of running a site that is not the shipped one. ``Nginx`` runs
Debian's nginx as the current user under a prefix directory of its own:
``nginx -p DIR -c DIR/conf/nginx.conf -e DIR/logs/error.log -g 'daemon off;'``.
"""

from __future__ import annotations

import datetime
import getpass
import ipaddress
import os
import shutil
import socket
import subprocess
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

__all__ = ["NGINX", "SITE_DIR", "Certificate", "Nginx", "SitePorts", "make_certificate",
           "nginx_available", "render_site"]

REPO = Path(__file__).resolve().parents[2]
SITE_DIR = REPO / "deploy" / "nginx"
NGINX = os.environ.get("CLARION_NGINX", shutil.which("nginx") or "/usr/sbin/nginx")


def nginx_available() -> tuple[bool, str]:
    if not Path(NGINX).exists():
        return False, f"nginx is not installed ({NGINX}; run scripts/install-test-deps)"
    return True, ""


@dataclass(frozen=True)
class SitePorts:
    https: int  # nginx's TLS port
    http: int  # nginx's plain port (redirects to https)
    hub: int  # clarion serve --port
    grip: int  # clarion serve --grip-port
    app: int  # gunicorn


@dataclass(frozen=True)
class Certificate:
    cert: Path
    key: Path


def render_site(ports: SitePorts, cert: Certificate) -> str:
    """deploy/nginx/clarion.conf with this run's ports and certificate, on 127.0.0.1 only."""
    text = (SITE_DIR / "clarion.conf").read_text()
    replacements = [
        ("server 127.0.0.1:8000;", f"server 127.0.0.1:{ports.hub};"),
        ("server 127.0.0.1:7999;", f"server 127.0.0.1:{ports.grip};"),
        ("server 127.0.0.1:8001;", f"server 127.0.0.1:{ports.app};"),
        # IPv6 may be missing on a CI machine: the test listens on 127.0.0.1 only.
        ("    listen [::]:80;\n", ""),
        ("    listen [::]:443 ssl http2;\n", ""),
        ("listen 80;", f"listen 127.0.0.1:{ports.http};"),
        ("listen 443 ssl http2;", f"listen 127.0.0.1:{ports.https} ssl http2;"),
        ("/etc/letsencrypt/live/chat.example.com/fullchain.pem", str(cert.cert)),
        ("/etc/letsencrypt/live/chat.example.com/privkey.pem", str(cert.key)),
    ]
    for old, new in replacements:
        count = text.count(old)
        if count != 1:
            raise ValueError(f"deploy/nginx/clarion.conf: expected {old!r} once, found {count}")
        text = text.replace(old, new)
    return text


def make_certificate(directory: Path) -> Certificate:
    """A self-signed certificate for 127.0.0.1 and localhost (EC P-256, a day long)."""
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID

    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "127.0.0.1")])
    now = datetime.datetime.now(datetime.UTC)
    cert = (
        x509.CertificateBuilder()
        .subject_name(name).issuer_name(name).public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(days=1))
        .add_extension(x509.SubjectAlternativeName([
            x509.IPAddress(ipaddress.ip_address("127.0.0.1")), x509.DNSName("localhost")]),
            critical=False)
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .sign(key, hashes.SHA256())
    )
    directory.mkdir(parents=True, exist_ok=True)
    paths = Certificate(directory / "cert.pem", directory / "key.pem")
    paths.cert.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    paths.key.write_bytes(key.private_bytes(serialization.Encoding.PEM,
                                            serialization.PrivateFormat.PKCS8,
                                            serialization.NoEncryption()))
    paths.key.chmod(0o600)
    return paths


MAIN_CONF = """\
# Written by tests/deploy_app/nginx.py: the parts of Debian's /etc/nginx/nginx.conf a site
# relies on, with every path under this prefix.
{user}worker_processes {workers};
pid {prefix}/nginx.pid;
error_log {prefix}/logs/error.log info;

events {{
    worker_connections {connections};
}}

http {{
    include /etc/nginx/mime.types;
    default_type application/octet-stream;
    sendfile on;
    tcp_nopush on;
    access_log {prefix}/logs/access.log;
    client_body_temp_path {prefix}/tmp/body;
    proxy_temp_path {prefix}/tmp/proxy;
    fastcgi_temp_path {prefix}/tmp/fastcgi;
    uwsgi_temp_path {prefix}/tmp/uwsgi;
    scgi_temp_path {prefix}/tmp/scgi;

    include {prefix}/conf/sites-enabled/clarion.conf;
}}
"""


class Nginx:
    """nginx with the rendered site under ``prefix``; ``start()`` returns once both of its
    ports accept connections, ``stop()`` ends it (QUIT, then KILL)."""

    def __init__(self, prefix: Path, ports: SitePorts, cert: Certificate, *,
                 workers: int | str = 1, connections: int = 4096,
                 plain_port: int | None = None,
                 edit: Callable[[str], str] | None = None) -> None:  # fmt: skip
        self.prefix = prefix
        self.ports = ports
        self.cert = cert
        self.workers = workers
        self.connections = connections
        # bench/nginx.py only: the TLS server's locations on a plain port as well, to tell
        # what TLS costs from what proxying costs. Not part of the shipped site.
        self.plain_port = plain_port
        self.edit = edit  # bench/nginx.py: a variant of the site (e.g. a tuning) beside it
        self.process: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"https://127.0.0.1:{self.ports.https}"

    @property
    def ws_url(self) -> str:
        return f"wss://127.0.0.1:{self.ports.https}/connection/websocket"

    @property
    def conf(self) -> Path:
        return self.prefix / "conf" / "nginx.conf"

    def error_log(self) -> str:
        path = self.prefix / "logs" / "error.log"
        return path.read_text(errors="replace") if path.exists() else ""

    def access_log(self) -> str:
        path = self.prefix / "logs" / "access.log"
        return path.read_text(errors="replace") if path.exists() else ""

    def write(self) -> None:
        for sub in ("conf/sites-enabled", "conf/snippets", "logs", "tmp"):
            (self.prefix / sub).mkdir(parents=True, exist_ok=True)
        # The site includes "snippets/…" relative to the directory of nginx.conf, as in
        # /etc/nginx on Debian.
        for snippet in (SITE_DIR / "snippets").glob("*.conf"):
            shutil.copy(snippet, self.prefix / "conf" / "snippets" / snippet.name)
        site = render_site(self.ports, self.cert)
        if self.plain_port is not None:
            tls_listen = f"listen 127.0.0.1:{self.ports.https} ssl http2;"
            site = site.replace(tls_listen,
                                f"{tls_listen}\n    listen 127.0.0.1:{self.plain_port};")
        if self.edit is not None:
            site = self.edit(site)
        (self.prefix / "conf" / "sites-enabled" / "clarion.conf").write_text(site)
        # Run as root (a CI container), nginx's workers would switch to "nobody" and could not
        # write under a private temporary directory: they stay the current user.
        user = f"user {getpass.getuser()};\n" if os.geteuid() == 0 else ""
        self.conf.write_text(MAIN_CONF.format(prefix=self.prefix, user=user,
                                              workers=self.workers,
                                              connections=self.connections))

    def check(self) -> str:
        """``nginx -t`` on the written configuration: its output, or ValueError."""
        self.write()
        result = subprocess.run(self._command("-t"), capture_output=True, timeout=30)
        out = (result.stdout + result.stderr).decode(errors="replace")
        if result.returncode != 0:
            raise ValueError(f"nginx -t failed:\n{out}")
        return out

    def _command(self, *extra: str) -> list[str]:
        return [NGINX, "-p", str(self.prefix), "-c", str(self.conf),
                "-e", str(self.prefix / "logs" / "error.log"), *extra]

    def start(self, timeout: float = 20) -> Nginx:
        self.check()
        out = (self.prefix / "logs" / "stdout.log").open("wb")
        with out:
            self.process = subprocess.Popen(self._command("-g", "daemon off;"), stdout=out,
                                            stderr=subprocess.STDOUT, start_new_session=True)
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise RuntimeError(f"nginx exited with {self.process.returncode}:\n"
                                   f"{self.error_log()}")
            ports = (self.ports.https, self.ports.http, *filter(None, [self.plain_port]))
            if all(_accepts(port) for port in ports):
                return self
            time.sleep(0.05)
        raise RuntimeError(f"nginx did not listen within {timeout}s:\n{self.error_log()}")

    def stop(self) -> None:
        proc = self.process
        if proc is None or proc.poll() is not None:
            return
        proc.send_signal(3)  # SIGQUIT: graceful; held connections would keep it alive
        try:
            proc.wait(5)
        except subprocess.TimeoutExpired:
            proc.terminate()  # SIGTERM: fast shutdown
            try:
                proc.wait(5)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()


def _accepts(port: int) -> bool:
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=0.5):
            return True
    except OSError:
        return False
