"""Tiny purpose-built HTTP(S) servers for clarion.connect's edge cases (tests/test_connect_core.py).

A :class:`DocServer` is the standard library's threaded HTTP server on 127.0.0.1 with a route
table: each path answers what the test put there, including what real servers do wrong
(oversized, slow, dripping, garbage, hostile XML, redirects to forbidden places). Every request
is recorded (method, path with query, headers, body) so a test can check what was sent.
:func:`make_tls` makes a private CA and a certificate for a name, for the TLS cases.
"""

from __future__ import annotations

import datetime
import gzip
import json
import ssl
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager, suppress
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

Handler = Callable[["_Handler"], None]


@dataclass
class Seen:
    method: str
    path: str  # with the query
    headers: dict[str, str]
    body: bytes


@dataclass
class DocServer:
    server: ThreadingHTTPServer
    scheme: str = "http"
    address: str = "127.0.0.1"
    routes: dict[str, Handler] = field(default_factory=dict)
    seen: list[Seen] = field(default_factory=list)

    @property
    def port(self) -> int:
        return int(self.server.server_address[1])

    @property
    def host(self) -> str:
        return f"{self.address}:{self.port}"

    @property
    def url(self) -> str:
        return f"{self.scheme}://{self.host}"

    def route(self, path: str, handler: Handler) -> None:
        self.routes[path] = handler

    def paths(self) -> list[str]:
        return [s.path.split("?")[0] for s in self.seen]


class _Handler(BaseHTTPRequestHandler):
    server: Any
    protocol_version = "HTTP/1.1"

    def log_message(self, format: str, *args: Any) -> None:
        pass  # quiet tests

    def _serve(self) -> None:
        doc: DocServer = self.server.doc
        length = int(self.headers.get("content-length") or 0)
        body = self.rfile.read(length) if length else b""
        doc.seen.append(Seen(self.command, self.path, {k.lower(): v for k, v in
                                                        self.headers.items()}, body))
        handler = doc.routes.get(self.path.split("?")[0])
        if handler is None:
            send(self, 404, b'{"error": "not found"}', "application/json")
            return
        handler(self)

    do_GET = _serve
    do_POST = _serve


def send(h: _Handler, status: int, body: bytes, content_type: str = "application/json",
         headers: dict[str, str] | None = None) -> None:
    h.send_response(status)
    h.send_header("Content-Type", content_type)
    h.send_header("Content-Length", str(len(body)))
    for k, v in (headers or {}).items():
        h.send_header(k, v)
    h.end_headers()
    h.wfile.write(body)


# -- route makers ------------------------------------------------------------------------------

def answer(status: int, body: bytes | str, content_type: str = "application/json",
           headers: dict[str, str] | None = None) -> Handler:
    data = body.encode() if isinstance(body, str) else body
    return lambda h: send(h, status, data, content_type, headers)


def as_json(value: Any, status: int = 200, content_type: str = "application/json") -> Handler:
    return answer(status, json.dumps(value), content_type)


def redirect(location: str, status: int = 302) -> Handler:
    return answer(status, b"", "text/plain", {"Location": location})


def chunked(total: int, piece: int = 65536, content_type: str = "application/json") -> Handler:
    """``total`` bytes with no Content-Length (chunked): the cap must hold while streaming."""
    def handle(h: _Handler) -> None:
        h.send_response(200)
        h.send_header("Content-Type", content_type)
        h.send_header("Transfer-Encoding", "chunked")
        h.end_headers()
        sent = 0
        try:
            while sent < total:
                n = min(piece, total - sent)
                h.wfile.write(f"{n:x}\r\n".encode() + b" " * n + b"\r\n")
                sent += n
            h.wfile.write(b"0\r\n\r\n")
        except OSError:
            pass  # the client hung up at its limit: what the test expects
    return handle


def gzip_bomb(decoded: int) -> Handler:
    """A small gzip body that decodes to ``decoded`` bytes."""
    data = gzip.compress(b" " * decoded, compresslevel=9)
    return answer(200, data, "application/json", {"Content-Encoding": "gzip"})


def gzip_answer(body: bytes) -> Handler:
    """``body`` gzip-compressed although the client asked for identity."""
    return answer(200, gzip.compress(body), "application/json", {"Content-Encoding": "gzip"})


def slow(delay: float, then: Handler) -> Handler:
    def handle(h: _Handler) -> None:
        time.sleep(delay)
        with suppress(OSError):  # the client gave up first: what the test expects
            then(h)
    return handle


def drip(interval: float, count: int) -> Handler:
    """Headers at once, then one byte every ``interval`` s: each read is quick, the whole slow."""
    def handle(h: _Handler) -> None:
        h.send_response(200)
        h.send_header("Content-Type", "application/json")
        h.send_header("Content-Length", str(count))
        h.end_headers()
        try:
            for _ in range(count):
                h.wfile.write(b" ")
                h.wfile.flush()
                time.sleep(interval)
        except OSError:
            pass
    return handle


@contextmanager
def running(tls: ssl.SSLContext | None = None, address: str = "127.0.0.1"
            ) -> Iterator[DocServer]:
    """A server on ``address`` (any of 127.0.0.0/8 on Linux), on a free port."""
    server = ThreadingHTTPServer((address, 0), _Handler)
    server.daemon_threads = True
    if tls is not None:
        server.socket = tls.wrap_socket(server.socket, server_side=True)
    doc = DocServer(server, "https" if tls else "http", address)
    server.doc = doc  # type: ignore[attr-defined]
    thread = threading.Thread(target=server.serve_forever, name="connect-docserver",
                              daemon=True)
    thread.start()
    try:
        yield doc
    finally:
        server.shutdown()
        server.server_close()
        thread.join(10)


# -- TLS ---------------------------------------------------------------------------------------

@dataclass
class Tls:
    ca_file: Path
    server_context: ssl.SSLContext


def make_tls(directory: Path, name: str) -> Tls:
    """A private CA, and a certificate for ``name`` signed by it (the server's context)."""
    now = datetime.datetime.now(datetime.UTC)
    ca_key = ec.generate_private_key(ec.SECP256R1())
    ca_name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "connect test CA")])
    ca = (x509.CertificateBuilder().subject_name(ca_name).issuer_name(ca_name)
          .public_key(ca_key.public_key()).serial_number(x509.random_serial_number())
          .not_valid_before(now - datetime.timedelta(days=1))
          .not_valid_after(now + datetime.timedelta(days=2))
          .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
          .add_extension(x509.KeyUsage(digital_signature=True, key_cert_sign=True,
                                       crl_sign=True, content_commitment=False,
                                       key_encipherment=False, data_encipherment=False,
                                       key_agreement=False, encipher_only=False,
                                       decipher_only=False), critical=True)
          .add_extension(x509.SubjectKeyIdentifier.from_public_key(ca_key.public_key()),
                         critical=False)
          .sign(ca_key, hashes.SHA256()))
    key = ec.generate_private_key(ec.SECP256R1())
    cert = (x509.CertificateBuilder()
            .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, name)]))
            .issuer_name(ca_name).public_key(key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(now - datetime.timedelta(days=1))
            .not_valid_after(now + datetime.timedelta(days=2))
            .add_extension(x509.SubjectAlternativeName([x509.DNSName(name)]), critical=False)
            .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
            .add_extension(x509.AuthorityKeyIdentifier.from_issuer_public_key(
                ca_key.public_key()), critical=False)
            .sign(ca_key, hashes.SHA256()))
    ca_file = directory / "ca.pem"
    ca_file.write_bytes(ca.public_bytes(serialization.Encoding.PEM))
    cert_file = directory / "server.pem"
    cert_file.write_bytes(cert.public_bytes(serialization.Encoding.PEM) + key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption()))
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    context.load_cert_chain(cert_file)
    return Tls(ca_file, context)
