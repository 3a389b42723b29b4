"""Both OpenAPI documents against the servers that publish them, with schemathesis 4.x
(pinned in the ``test`` extra: its Python API changed completely between 3 and 4).

One real ``clarion serve --webhooks-db`` process serves both: the hub's server API
(``/openapi.json``, API key) and the webhook REST API (``/webhooks/api/openapi.json``, a user's
bearer key made with ``clarion manage``). For every operation schemathesis generates requests
from the document, sends them over the socket, and checks each answer: no 5xx, a documented
status code, the documented content type, a body that matches the response schema."""

from __future__ import annotations

import itertools
import os
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest
from hypothesis import HealthCheck, Phase, given, settings

from conftest import API_KEY, BASE_CONFIG, _stop, _wait_until, free_port, in_ci

try:
    import schemathesis
except ImportError:  # a missing tool fails CI; elsewhere the module is skipped
    if in_ci():
        raise
    pytest.skip("schemathesis is not installed", allow_module_level=True)



from schemathesis.checks import not_a_server_error
from schemathesis.specs.openapi.checks import (
    content_type_conformance,
    response_schema_conformance,
    status_code_conformance,
)

CHECKS = [not_a_server_error, status_code_conformance, content_type_conformance,
          response_schema_conformance]
# Per operation and mode; the module stays well under two minutes.
EXAMPLES = int(os.environ.get("CLARION_SCHEMATHESIS_EXAMPLES", "30"))


@dataclass
class Server:
    url: str
    webhooks_key: str


def _clarion(*args: str, cwd: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "clarion", *args], cwd=cwd,
                          capture_output=True, text=True, timeout=120, check=False)


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    tmp = tmp_path_factory.mktemp("schemathesis")
    db = tmp / "hooks.sqlite3"
    cfg = tmp / "hub.toml"
    cfg.write_text(BASE_CONFIG + "\n[namespaces.chat]\nhistory_size = 10\nhistory_ttl = 60\n"
                   "presence = true\n")
    port = free_port()
    log = tmp / "serve.log"
    env = {**os.environ, "CLARION_WEBHOOKS": '{"ALLOWED_NETWORKS": ["127.0.0.0/8"]}'}
    with log.open("wb") as out:
        proc = subprocess.Popen(
            [sys.executable, "-m", "clarion", "serve", "--host", "127.0.0.1", "--port",
             str(port), "--config", str(cfg), "--webhooks-db", str(db),
             "--webhook-types", "order.created,order.paid"],
            cwd=tmp, stdout=out, stderr=subprocess.STDOUT, env=env)
    url = f"http://127.0.0.1:{port}"

    def healthy() -> bool:
        try:
            return httpx.get(f"{url}/health", timeout=1).status_code == 200
        except httpx.TransportError:
            return False

    _wait_until(healthy, proc, "clarion serve", lambda: log.read_text(errors="replace"), 60)
    made = _clarion("manage", "--db", str(db), "shell", "-c",
                    "from django.contrib.auth.models import User;"
                    "from clarion.django.models import ApiKey;"
                    "u = User.objects.create_user('fuzz', 'fuzz@example.com', 'pw');"
                    "print(ApiKey.issue(u, 'schemathesis')[1])", cwd=tmp)
    assert made.returncode == 0, made.stderr
    yield Server(url, made.stdout.strip().splitlines()[-1])
    _stop(proc)
    assert "Traceback" not in log.read_text(errors="replace"), log.read_text(errors="replace")


def _run_document(schema_url: str, base_url: str, headers: dict[str, str]) -> list[str]:
    schema = schemathesis.openapi.from_url(schema_url, headers=headers, timeout=30)
    failures: list[str] = []
    operations = [result.ok() for result in schema.get_all_operations()]
    # Positive requests follow the document; negative ones break it on purpose (wrong types,
    # missing fields), so the 4xx answers and their documented shapes are checked too.
    for operation, mode in itertools.product(operations, list(schemathesis.GenerationMode)):
        label = f"{operation.label} ({mode.value})"

        # A path that does not match the URL pattern (/subscriptions/-1, /subscriptions/true)
        # is no operation of the API: the framework's 404 answers it. Negative cases keep the
        # path parameters valid and break the query and the body.
        fixed = ({p.name: 1 for p in operation.path_parameters}
                 if mode is schemathesis.GenerationMode.NEGATIVE else None)

        @settings(max_examples=EXAMPLES, deadline=None, database=None, derandomize=True,
                  phases=[Phase.explicit, Phase.generate],
                  suppress_health_check=list(HealthCheck))
        @given(case=operation.as_strategy(generation_mode=mode, path_parameters=fixed))
        def check(case: Any) -> None:
            response = case.call(base_url=base_url, headers=headers, timeout=30)
            case.validate_response(response, checks=CHECKS, headers=headers)

        try:
            check()
        # Schemathesis raises a FailureGroup, a BaseExceptionGroup; every operation is checked
        # before the test reports what failed.
        except (Exception, BaseExceptionGroup) as exc:  # noqa: BLE001
            failures.append(f"{label}: {exc}")
    return failures


def test_hub_server_api_conforms_to_its_openapi_document(server: Server) -> None:
    started = time.monotonic()
    failures = _run_document(f"{server.url}/openapi.json", server.url, {"X-API-Key": API_KEY})
    print(f"hub API: {time.monotonic() - started:.1f}s")
    assert not failures, "\n\n".join(failures)


def test_webhooks_api_conforms_to_its_openapi_document(server: Server) -> None:
    # The document's paths start at /api/, relative to where the app is mounted.
    base = f"{server.url}/webhooks"
    failures = _run_document(f"{base}/api/openapi.json", base,
                             {"Authorization": f"Bearer {server.webhooks_key}"})
    assert not failures, "\n\n".join(failures)
