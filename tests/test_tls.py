"""TLS served by the hub itself (issue 12): https for the API and SSE, wss for WebSocket (raw
and through centrifuge-python), the GRIP proxy's client port, ``--workers 2``, and clear
startup errors for a bad certificate. A CA and a server certificate are made per test session
with ``cryptography``; clients verify against that CA, as a browser would against a real one."""

from __future__ import annotations

import asyncio
import contextlib
import datetime
import ipaddress
import json
import os
import signal
import socket
import ssl
import subprocess
import sys
import time
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import httpx
import pytest
import websockets
from centrifuge import Client
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID
from tests.centrifuge_support import Recorder
from tests.conftest import API_KEY, BASE_CONFIG, CHAT_NAMESPACE, free_port, in_ci, redis_up, token

BOUND = 20.0


# -- certificates -----------------------------------------------------------------------------


@dataclass
class Certs:
    ca: Path
    cert: Path
    key: Path
    combined: Path  # certificate and key in one file
    other_key: Path  # a key that does not belong to ``cert``
    encrypted_key: Path  # ``key`` under a password
    ca_cert: x509.Certificate
    ca_key: ec.EllipticCurvePrivateKey

    def client_context(self) -> ssl.SSLContext:
        return ssl.create_default_context(cafile=str(self.ca))


def _name(cn: str) -> x509.Name:
    return x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, cn)])


def _pem_key(key: ec.EllipticCurvePrivateKey) -> bytes:
    return key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                             serialization.NoEncryption())


@pytest.fixture(scope="session")
def certs(tmp_path_factory: pytest.TempPathFactory) -> Certs:
    root = tmp_path_factory.mktemp("tls")
    now = datetime.datetime.now(datetime.UTC)
    ca_key = ec.generate_private_key(ec.SECP256R1())
    ca = (x509.CertificateBuilder().subject_name(_name("Clarion test CA"))
          .issuer_name(_name("Clarion test CA")).public_key(ca_key.public_key())
          .serial_number(x509.random_serial_number())
          .not_valid_before(now - datetime.timedelta(minutes=5))
          .not_valid_after(now + datetime.timedelta(days=1))
          .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
          .add_extension(x509.KeyUsage(digital_signature=True, key_cert_sign=True, crl_sign=True,
                                       content_commitment=False, key_encipherment=False,
                                       data_encipherment=False, key_agreement=False,
                                       encipher_only=False, decipher_only=False), critical=True)
          .add_extension(x509.SubjectKeyIdentifier.from_public_key(ca_key.public_key()),
                         critical=False)
          .sign(ca_key, hashes.SHA256()))
    key, cert = _server_cert(ca, ca_key)
    out = Certs(root / "ca.pem", root / "cert.pem", root / "key.pem", root / "both.pem",
                root / "other-key.pem", root / "encrypted-key.pem", ca, ca_key)
    out.ca.write_bytes(ca.public_bytes(serialization.Encoding.PEM))
    out.cert.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    out.key.write_bytes(_pem_key(key))
    out.combined.write_bytes(out.cert.read_bytes() + out.key.read_bytes())
    out.other_key.write_bytes(_pem_key(ec.generate_private_key(ec.SECP256R1())))
    out.encrypted_key.write_bytes(key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
        serialization.BestAvailableEncryption(b"secret")))
    return out


def _server_cert(ca: x509.Certificate, ca_key: ec.EllipticCurvePrivateKey
                 ) -> tuple[ec.EllipticCurvePrivateKey, x509.Certificate]:
    """A certificate for 127.0.0.1 and localhost, signed by the test CA."""
    now = datetime.datetime.now(datetime.UTC)
    key = ec.generate_private_key(ec.SECP256R1())
    cert = (x509.CertificateBuilder().subject_name(_name("localhost"))
            .issuer_name(ca.subject).public_key(key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(now - datetime.timedelta(minutes=5))
            .not_valid_after(now + datetime.timedelta(days=1))
            .add_extension(x509.SubjectAlternativeName([
                x509.DNSName("localhost"), x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]),
                critical=False)
            .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
            .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH]),
                           critical=False)
            .add_extension(x509.AuthorityKeyIdentifier.from_issuer_public_key(
                ca_key.public_key()), critical=False)
            .sign(ca_key, hashes.SHA256()))
    return key, cert


# -- a hub serving TLS ------------------------------------------------------------------------


@dataclass
class TlsHub:
    process: subprocess.Popen[bytes]
    port: int
    log: Path

    @property
    def url(self) -> str:
        return f"https://127.0.0.1:{self.port}"

    def output(self) -> str:
        return self.log.read_text(errors="replace")


def _run(tmp_path: Path, config: str, *args: str) -> tuple[subprocess.Popen[bytes], Path, int]:
    port = free_port()
    cfg = tmp_path / f"hub-{port}.toml"
    cfg.write_text(BASE_CONFIG + config)
    log = tmp_path / f"hub-{port}.log"
    cmd = [sys.executable, "-m", "clarion", "serve", "--host", "127.0.0.1", "--port", str(port),
           "--config", str(cfg), *args]
    with log.open("wb") as out:
        proc = subprocess.Popen(cmd, stdout=out, stderr=subprocess.STDOUT)
    return proc, log, port


@pytest.fixture
def tls_hub(tmp_path: Path, certs: Certs) -> Iterator[Callable[..., TlsHub]]:
    started: list[TlsHub] = []

    def start(config: str = CHAT_NAMESPACE, *args: str) -> TlsHub:
        if "--certfile" not in args:
            args = ("--certfile", str(certs.cert), "--keyfile", str(certs.key), *args)
        proc, log, port = _run(tmp_path, config, *args)
        hub = TlsHub(proc, port, log)
        started.append(hub)
        deadline = time.monotonic() + BOUND
        while time.monotonic() < deadline:
            if proc.poll() is not None:
                raise RuntimeError(f"hub exited with {proc.returncode}:\n{hub.output()}")
            try:
                resp = httpx.get(f"{hub.url}/health", timeout=1, verify=certs.client_context())
                if resp.status_code == 200:
                    return hub
            except httpx.TransportError:
                time.sleep(0.1)
        raise RuntimeError(f"hub did not become healthy:\n{hub.output()}")

    yield start
    for hub in started:
        if hub.process.poll() is None:
            hub.process.terminate()
            try:
                hub.process.wait(15)
            except subprocess.TimeoutExpired:
                hub.process.kill()
                hub.process.wait()


# -- serving ----------------------------------------------------------------------------------


def test_api_and_health_over_https(tls_hub: Callable[..., TlsHub], certs: Certs) -> None:
    hub = tls_hub()
    with httpx.Client(verify=certs.client_context(), timeout=BOUND) as client:
        resp = client.post(f"{hub.url}/api/publish", headers={"X-API-Key": API_KEY},
                           json={"channel": "chat:a", "data": {"n": 1}})
        assert resp.status_code == 200, resp.text
        assert "result" in resp.json()
        # Several requests on one TLS connection (keep-alive).
        assert all(client.get(f"{hub.url}/health").status_code == 200 for _ in range(3))
    # A client that does not trust the CA is refused by its own verification.
    with pytest.raises(httpx.ConnectError, match="CERTIFICATE_VERIFY_FAILED"):
        httpx.get(f"{hub.url}/health", timeout=BOUND)
    assert f"address=https://127.0.0.1:{hub.port}" in hub.output()


def test_clarion_client_trusts_a_private_ca_by_its_file(tls_hub: Callable[..., TlsHub],
                                                        certs: Certs) -> None:
    from clarion.client import Client
    from clarion.errors import HubUnavailable

    hub = tls_hub()
    with Client(hub.url, api_key=API_KEY, timeout=BOUND, verify=str(certs.ca)) as client:
        assert client.publish("chat:ca", {"n": 1}).offset == 1
    with Client(hub.url, api_key=API_KEY, timeout=BOUND) as untrusting, \
            pytest.raises(HubUnavailable, match="CERTIFICATE_VERIFY_FAILED"):
        untrusting.publish("chat:ca", {"n": 2})


def test_plain_http_to_the_tls_port_gets_no_answer(tls_hub: Callable[..., TlsHub]) -> None:
    hub = tls_hub()
    data = b""
    with socket.create_connection(("127.0.0.1", hub.port), timeout=BOUND) as sock:
        sock.sendall(b"GET /health HTTP/1.1\r\nHost: x\r\n\r\n")
        with contextlib.suppress(ConnectionResetError):
            while chunk := sock.recv(4096):
                data += chunk
    assert b"HTTP/1.1 200" not in data  # closed after a failed handshake, nothing served
    # The hub goes on serving TLS.
    assert hub.process.poll() is None
    assert "Traceback" not in hub.output()  # a failed handshake is the client's business


async def test_sse_over_https(tls_hub: Callable[..., TlsHub], certs: Certs) -> None:
    hub = tls_hub()
    params = {"channel": "chat:sse", "token": token("ann")}
    async with httpx.AsyncClient(verify=certs.client_context(), timeout=BOUND) as client, \
            client.stream("GET", f"{hub.url}/connection/sse", params=params) as resp:
        assert resp.status_code == 200
        lines = resp.aiter_lines()
        async with asyncio.timeout(BOUND):
            async for line in lines:
                if line.startswith("data:") and '"connect"' in line:
                    break
            await client.post(f"{hub.url}/api/publish", headers={"X-API-Key": API_KEY},
                              json={"channel": "chat:sse", "data": {"n": 7}})
            async for line in lines:
                if line.startswith("data:") and '"pub"' in line:
                    assert json.loads(line[5:])["pub"]["data"] == {"n": 7}
                    break


async def test_websocket_over_wss(tls_hub: Callable[..., TlsHub], certs: Certs) -> None:
    hub = tls_hub()
    url = f"wss://127.0.0.1:{hub.port}/connection/websocket"
    async with websockets.connect(url, ssl=certs.client_context(),
                                  origin=websockets.Origin(f"http://127.0.0.1:{hub.port}")) as ws:
        await ws.send(json.dumps({"id": 1, "connect": {"token": token("ann")}}))
        async with asyncio.timeout(BOUND):
            while (reply := json.loads(await ws.recv())).get("id") != 1:
                pass
        assert "connect" in reply, reply


async def test_centrifuge_python_over_wss(tls_hub: Callable[..., TlsHub],
                                          certs: Certs) -> None:
    hub = tls_hub()
    client = Client(f"wss://127.0.0.1:{hub.port}/connection/websocket", token=token("ann"),
                    ssl_context=certs.client_context())
    rec = Recorder()
    sub = client.new_subscription("chat:wss", rec)
    try:
        await client.connect()
        await sub.subscribe()
        await rec.wait_for(lambda: bool(rec.subscribed))
        await sub.publish({"n": 1})
        await rec.wait_for(lambda: len(rec.pubs) == 1)
    finally:
        await client.disconnect()


def test_grip_proxy_client_port_serves_tls(tls_hub: Callable[..., TlsHub], certs: Certs,
                                           tmp_path: Path) -> None:
    dead_origin = free_port()  # nothing listens: the proxy answers for the origin itself
    routes = tmp_path / "routes"
    routes.write_text(f"* 127.0.0.1:{dead_origin}\n")
    grip_port, control_port = free_port(), free_port()
    hub = tls_hub(CHAT_NAMESPACE, "--grip-routes", str(routes), "--grip-port", str(grip_port),
                  "--control-port", str(control_port))
    resp = httpx.get(f"https://127.0.0.1:{grip_port}/anything", verify=certs.client_context(),
                     timeout=BOUND)
    assert resp.status_code in (502, 503), resp.text
    # The control API (publishing, for origins on the private side) stays plain HTTP.
    assert httpx.get(f"http://127.0.0.1:{control_port}/publish/",
                     timeout=BOUND).status_code != 0
    assert f"https://127.0.0.1:{grip_port}" in hub.output()


def test_grip_routes_with_ssl_conditions_match_on_the_tls_port(
        tls_hub: Callable[..., TlsHub], certs: Certs, tmp_path: Path) -> None:
    # Pushpin's route condition ssl=yes|no: only the ssl=yes route applies to clients of a
    # TLS client port.
    dead_origin = free_port()
    routes = tmp_path / "routes"
    routes.write_text(f"*,ssl=no,path_beg=/plain 127.0.0.1:{dead_origin}\n"
                      f"*,ssl=yes,path_beg=/secure 127.0.0.1:{dead_origin}\n")
    grip_port, control_port = free_port(), free_port()
    tls_hub(CHAT_NAMESPACE, "--grip-routes", str(routes), "--grip-port", str(grip_port),
            "--control-port", str(control_port))
    with httpx.Client(verify=certs.client_context(), timeout=BOUND) as client:
        plain = client.get(f"https://127.0.0.1:{grip_port}/plain/x")
        secure = client.get(f"https://127.0.0.1:{grip_port}/secure/x")
    assert plain.status_code == 502 and "no route" in plain.text
    assert secure.status_code in (502, 503) and "no route" not in secure.text


def test_certificate_and_key_in_one_file(tls_hub: Callable[..., TlsHub], certs: Certs) -> None:
    hub = tls_hub(CHAT_NAMESPACE, "--certfile", str(certs.combined))
    assert httpx.get(f"{hub.url}/health", verify=certs.client_context(),
                     timeout=BOUND).status_code == 200


def test_tls_from_the_config_file(tls_hub: Callable[..., TlsHub], certs: Certs) -> None:
    hub = tls_hub(f'certfile = "{certs.cert}"\nkeyfile = "{certs.key}"\n' + CHAT_NAMESPACE,
                  "--certfile", str(certs.cert))  # the flag agrees with the file
    assert httpx.get(f"{hub.url}/health", verify=certs.client_context(),
                     timeout=BOUND).status_code == 200


# -- workers ----------------------------------------------------------------------------------




def test_workers_serve_tls(tls_hub: Callable[..., TlsHub], certs: Certs) -> None:
    if not redis_up():
        if in_ci():
            pytest.fail("no Redis at 127.0.0.1:6379; CI must run one")
        pytest.skip("no Redis at 127.0.0.1:6379")
    prefix = f"clarion-tls{uuid.uuid4().hex[:8]}"
    hub = tls_hub(f'broker = "redis://127.0.0.1:6379/12"\n[redis]\nprefix = "{prefix}"\n'
                  + CHAT_NAMESPACE, "--workers", "2")
    deadline = time.monotonic() + BOUND
    while hub.output().count("worker ready") < 2 and time.monotonic() < deadline:
        time.sleep(0.1)
    assert hub.output().count("worker ready") >= 2, hub.output()
    # New connections spread over both workers; each one must complete a TLS handshake.
    for _ in range(10):
        with httpx.Client(verify=certs.client_context(), timeout=BOUND) as client:
            assert client.get(f"{hub.url}/health").status_code == 200


def _served_serial(port: int, certs: Certs) -> int:
    context = certs.client_context()
    with socket.create_connection(("127.0.0.1", port), timeout=BOUND) as raw, \
            context.wrap_socket(raw, server_hostname="127.0.0.1") as tls:
        der = tls.getpeercert(binary_form=True)
    assert der is not None
    return x509.load_der_x509_certificate(der).serial_number


def _wait_for(hub: TlsHub, text: str, count: int) -> None:
    deadline = time.monotonic() + 60
    while hub.output().count(text) < count and time.monotonic() < deadline:
        time.sleep(0.2)
    assert hub.output().count(text) >= count, hub.output()


def test_renewed_certificate_is_served_after_a_rolling_restart(
        tls_hub: Callable[..., TlsHub], certs: Certs, tmp_path: Path) -> None:
    if not redis_up():
        if in_ci():
            pytest.fail("no Redis at 127.0.0.1:6379; CI must run one")
        pytest.skip("no Redis at 127.0.0.1:6379")
    cert, key = tmp_path / "live-cert.pem", tmp_path / "live-key.pem"
    cert.write_bytes(certs.cert.read_bytes())
    key.write_bytes(certs.key.read_bytes())
    prefix = f"clarion-tls{uuid.uuid4().hex[:8]}"
    hub = tls_hub(f'broker = "redis://127.0.0.1:6379/12"\n[redis]\nprefix = "{prefix}"\n'
                  + CHAT_NAMESPACE, "--workers", "2", "--certfile", str(cert),
                  "--keyfile", str(key))
    _wait_for(hub, "worker ready", 2)
    old = _served_serial(hub.port, certs)
    # Renewal: new files in place, then SIGHUP. The workers are replaced one by one, each new
    # one reading the files again.
    new_key, new_cert = _server_cert(certs.ca_cert, certs.ca_key)
    cert.write_bytes(new_cert.public_bytes(serialization.Encoding.PEM))
    key.write_bytes(_pem_key(new_key))
    hub.process.send_signal(signal.SIGHUP)
    _wait_for(hub, "reload done", 1)
    assert {_served_serial(hub.port, certs) for _ in range(10)} == {new_cert.serial_number}
    assert old != new_cert.serial_number
    # A broken renewal: the new worker cannot start, the reload stops, the old ones serve on.
    cert.write_text("-----BEGIN CERTIFICATE-----\nbroken\n-----END CERTIFICATE-----\n")
    hub.process.send_signal(signal.SIGHUP)
    _wait_for(hub, "reload aborted", 1)
    assert "could not be loaded" in hub.output()
    assert {_served_serial(hub.port, certs) for _ in range(10)} == {new_cert.serial_number}


# -- startup errors ---------------------------------------------------------------------------


def _start_fails(tmp_path: Path, *args: str, config: str = "") -> str:
    proc, log, _ = _run(tmp_path, config, *args)
    try:
        code = proc.wait(BOUND)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()
        raise AssertionError(f"the hub started:\n{log.read_text()}") from None
    assert code == 2, log.read_text()
    return log.read_text()


@pytest.mark.parametrize("workers", [(), ("--workers", "2", "--broker",
                                          "redis://127.0.0.1:6379/12")])
def test_bad_certificates_are_clear_startup_errors(tmp_path: Path, certs: Certs,
                                                   workers: tuple[str, ...]) -> None:
    garbage = tmp_path / "garbage.pem"
    garbage.write_text("-----BEGIN CERTIFICATE-----\nnot base64 at all\n"
                       "-----END CERTIFICATE-----\n")
    cases = [
        (("--certfile", str(tmp_path / "missing.pem")), "certfile " + str(tmp_path)
         + "/missing.pem: no such file"),
        (("--certfile", str(garbage), "--keyfile", str(certs.key)), "could not be loaded"),
        (("--certfile", str(certs.cert), "--keyfile", str(certs.other_key)),
         "the key does not belong to the certificate"),
        (("--certfile", str(certs.cert)), "could not be loaded"),  # no key anywhere
        # No prompt for a password on the terminal (a service would hang): an error.
        (("--certfile", str(certs.cert), "--keyfile", str(certs.encrypted_key)),
         "is it PEM, with the key unencrypted?"),
        (("--keyfile", str(certs.key)), "keyfile: set without certfile"),
    ]
    for args, message in cases:
        out = _start_fails(tmp_path, *args, *workers)
        assert message in out, out
        assert "worker started" not in out  # found before any worker is started


def test_unreadable_key_is_a_clear_startup_error(tmp_path: Path, certs: Certs) -> None:
    if os.geteuid() == 0:
        pytest.skip("root reads any file")
    key = tmp_path / "secret.pem"
    key.write_bytes(certs.key.read_bytes())
    key.chmod(0)
    out = _start_fails(tmp_path, "--certfile", str(certs.cert), "--keyfile", str(key))
    assert "permission denied" in out, out


def test_grip_origin_is_told_the_client_used_https(tls_hub: Callable[..., TlsHub],
                                                   certs: Certs, tmp_path: Path) -> None:
    from tests.grip_origin import Origin, Reply

    with Origin() as origin:
        origin.on("/page", Reply(200, [("Content-Type", "text/plain")], "ok"))
        routes = tmp_path / "routes"
        routes.write_text(f"* 127.0.0.1:{origin.port}\n")
        grip_port = free_port()
        tls_hub(CHAT_NAMESPACE, "--grip-routes", str(routes), "--grip-port", str(grip_port),
                "--control-port", str(free_port()))
        # A client's own X-Forwarded-Proto is not believed; the listener's TLS is the fact.
        resp = httpx.get(f"https://127.0.0.1:{grip_port}/page", verify=certs.client_context(),
                         headers={"X-Forwarded-Proto": "http"}, timeout=BOUND)
        assert resp.status_code == 200 and resp.text == "ok"
        (req,) = origin.to("/page")
        assert req.header("X-Forwarded-Proto") == "https"
