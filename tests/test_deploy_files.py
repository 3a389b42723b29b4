"""What ships in deploy/ works with the tools that read it, and `clarion check` tells the truth.

Each file is checked by the program that will read it in production: systemd's own
`systemd-analyze verify` (and its sandboxing score), supervisord's own configuration parser,
the hub's configuration loader, Prometheus's `promtool`. The alert rules and the dashboard are
checked against the metric names a running hub (two workers on Redis, with the built-in webhook
worker) really exposes. `clarion check` runs as a command against the real Redis and
PostgreSQL of the machine. A missing tool or service skips, and fails under CI=true.
"""

from __future__ import annotations

import asyncio
import json
import os
import re
import shlex
import shutil
import signal
import socket
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
import yaml

from conftest import CHAT_NAMESPACE, free_port, in_ci

ROOT = Path(__file__).resolve().parent.parent
DEPLOY = ROOT / "deploy"
UNITS = DEPLOY / "systemd"
VENV_BIN = Path(sys.executable).parent
REDIS = ("127.0.0.1", 6379)
POSTGRES = ("127.0.0.1", 5432)


def _missing(why: str) -> None:
    if in_ci():
        pytest.fail(f"{why}; CI must run scripts/install-test-deps")
    pytest.skip(why)


def _tool(name: str) -> str:
    path = shutil.which(name)
    if path is None:
        _missing(f"{name} is not installed")
    assert path is not None
    return path


def _service(address: tuple[str, int], what: str) -> None:
    try:
        with socket.create_connection(address, timeout=1):
            pass
    except OSError:
        _missing(f"no {what} at {address[0]}:{address[1]}")


def _outside_env() -> dict[str, str]:
    """The test process's environment without what the suite sets for itself: CLARION_*,
    and the Django settings module (and path) the in-process Django tests configured. A
    deployed program sees none of them; inherited, manage.py's setdefault would load the
    tests' settings instead of the site's."""
    return {k: v for k, v in os.environ.items()
            if not k.startswith("CLARION_") and k not in ("DJANGO_SETTINGS_MODULE", "PYTHONPATH")}


def _clarion(*args: str, env: dict[str, str] | None = None,
             cwd: Path | None = None) -> subprocess.CompletedProcess[str]:
    # No CLARION_* or Django settings from the environment running the tests leak in.
    base = {k: v for k, v in os.environ.items()
            if not k.startswith("CLARION_") and k != "DJANGO_SETTINGS_MODULE"}
    return subprocess.run([sys.executable, "-m", "clarion", *args], capture_output=True,
                          text=True, timeout=60, env={**base, **(env or {})}, cwd=cwd)


# -- systemd ---------------------------------------------------------------------------------


def _units_here(tmp_path: Path) -> list[Path]:
    """The units with the venv of this test run where production has /srv/clarion/venv:
    verify checks that every ExecStart= program exists and is executable."""
    out = []
    for unit in sorted(UNITS.glob("*.service")) + sorted(UNITS.glob("*.socket")):
        name = unit.name.replace("@.service", "@1.service")
        target = tmp_path / name
        target.write_text(unit.read_text().replace("/srv/clarion/venv/bin", str(VENV_BIN)))
        out.append(target)
    return out


def test_systemd_units_verify_cleanly(tmp_path: Path) -> None:
    tool = _tool("systemd-analyze")
    units = _units_here(tmp_path)
    assert {u.name for u in units} == {"clarion-hub.service", "clarion-worker@1.service",
                                       "clarion-web.service", "clarion-web.socket"}
    result = subprocess.run([tool, "verify", "--man=no", *map(str, units)],
                            capture_output=True, text=True, timeout=60, cwd=tmp_path)
    # verify exits 0 on unknown keys and bad values and only warns: any line about our files
    # (a typo, a bad value, a missing program) is a failure.
    ours = [line for line in (result.stdout + result.stderr).splitlines() if "clarion" in line]
    assert result.returncode == 0, result.stderr
    assert ours == []


def test_systemd_verify_would_catch_a_typo(tmp_path: Path) -> None:
    """The check above is not vacuous: the same call flags a misspelt hardening key."""
    tool = _tool("systemd-analyze")
    hub = _units_here(tmp_path)[0]
    assert hub.name == "clarion-hub.service"
    hub.write_text(hub.read_text().replace("ProtectSystem=strict", "ProtectSytem=strict"))
    result = subprocess.run([tool, "verify", "--man=no", str(hub)], capture_output=True,
                            text=True, timeout=60, cwd=tmp_path)
    assert "Unknown key 'ProtectSytem'" in result.stderr


@pytest.mark.parametrize("unit", ["clarion-hub.service", "clarion-worker@1.service",
                                  "clarion-web.service"])
def test_systemd_sandboxing_score(tmp_path: Path, unit: str) -> None:
    """systemd's own exposure score (0 = locked down, 10 = unprotected): at most 2.0, "OK"."""
    tool = _tool("systemd-analyze")
    _units_here(tmp_path)
    result = subprocess.run([tool, "security", "--offline=yes", f"./{unit}"],
                            capture_output=True, text=True, timeout=60, cwd=tmp_path)
    found = re.search(r"Overall exposure level for \S+: ([0-9.]+)", result.stdout)
    assert found, result.stdout + result.stderr
    assert float(found.group(1)) <= 2.0, result.stdout


def _unit_settings(name: str) -> dict[str, list[str]]:
    settings: dict[str, list[str]] = {}
    for line in (UNITS / name).read_text().splitlines():
        if "=" in line and not line.startswith(("#", "[")):
            key, _, value = line.partition("=")
            settings.setdefault(key, []).append(value)
    return settings


def test_units_agree_with_the_hub_configuration() -> None:
    """The hub's stop timeout outlasts its graceful shutdown, the unit runs as the user the
    sysusers file creates, and every service has a file limit, a restart policy and the
    hardening the docs promise."""
    from clarion.hub.config import load_config

    config = load_config(DEPLOY / "clarion.toml", environ={})
    hub = _unit_settings("clarion-hub.service")
    # The supervisor grants its workers shutdown_timeout + 5 s before it kills them.
    assert float(hub["TimeoutStopSec"][0]) > config.seconds("shutdown_timeout") + 5
    assert hub["KillMode"] == ["mixed"]
    assert "--workers" in hub["ExecStart"][0]
    assert "clarion check" in hub["ExecStartPre"][0]
    sysusers = (UNITS / "clarion.sysusers.conf").read_text()
    assert re.search(r"^u clarion ", sysusers, re.MULTILINE)
    for name in ("clarion-hub.service", "clarion-worker@.service", "clarion-web.service"):
        unit = _unit_settings(name)
        assert unit["User"] == ["clarion"], name
        assert int(unit["LimitNOFILE"][0]) >= 65536, name
        assert unit["Restart"][0] in ("on-failure", "always"), name
        for key, value in (("NoNewPrivileges", "yes"), ("ProtectSystem", "strict"),
                           ("ProtectHome", "yes"), ("PrivateTmp", "yes")):
            assert unit[key] == [value], (name, key)
        assert unit["EnvironmentFile"] == ["/etc/clarion/clarion.env"], name
    # One descriptor per connection: the hub's limit covers max_connections per process.
    assert int(hub["LimitNOFILE"][0]) > config.max_connections


def _systemd_command(line: str, instance: str) -> list[str]:
    """An Exec line as systemd runs it for ``unit@instance``: the specifiers the units use
    (%i, %%) filled in, "$$" made "$", then split into words by systemd's quoting rules
    (which shlex follows for the quotes our units use)."""
    line = line.replace("%%", "\0").replace("%i", instance).replace("\0", "%")
    return shlex.split(line.replace("$$", "$"))


def test_worker_metrics_ports_stay_valid_for_instances_1_to_20(tmp_path: Path) -> None:
    """clarion-worker@N's port is computed by the unit's own shell line, and supervisord's
    process N by its own expansion: every N from 1 to 20 gets a distinct port that an
    unprivileged user may bind (the old 910N scheme gave 91010 from N = 10)."""
    line = _unit_settings("clarion-worker@.service")["ExecStart"][0]
    python = "/srv/clarion/venv/bin/python manage.py clarion_worker"
    assert python in line
    ports = []
    for n in range(1, 21):
        command = _systemd_command(line.replace(python, "echo"), str(n))
        result = subprocess.run(command, capture_output=True, text=True, timeout=30)
        assert result.returncode == 0, result.stderr
        flag, port = result.stdout.split()
        assert flag == "--metrics-port"
        ports.append(int(port))
    assert ports == list(range(9101, 9121))
    top = subprocess.run(_systemd_command(line.replace(python, "echo"), "999"),
                         capture_output=True, text=True, timeout=30)
    assert top.stdout.split() == ["--metrics-port", "10099"]
    # Not a number, 0 (node_exporter's 9100), a leading zero (octal to the shell: 010 would
    # be 9108, 08 an error) and four digits (past 65535 soon) are refused.
    for bad in ("blue", "0", "010", "08", "1000", "70000"):
        refused = subprocess.run(_systemd_command(line.replace(python, "echo"), bad),
                                 capture_output=True, text=True, timeout=30)
        assert refused.returncode == 2, (bad, refused.stdout)
        assert f"clarion-worker@{bad}: the instance must be a number N" in refused.stderr

    main = _supervisor_config(tmp_path)
    conf = tmp_path / "clarion.conf"
    conf.write_text(conf.read_text().replace("numprocs=2", "numprocs=20"))
    env = {**os.environ, "CLARION_API_KEY": "k", "CLARION_TOKEN_HMAC_SECRET": "s",
           "DJANGO_SETTINGS_MODULE": "mysite.settings"}
    result = subprocess.run([sys.executable, "-c", _SUPERVISOR_PARSE, str(main)],
                            capture_output=True, text=True, timeout=60, env=env)
    assert result.returncode == 0, result.stderr
    commands = {p["name"]: p["command"] for p in json.loads(result.stdout)["clarion"]}
    supervised = [int(commands[f"clarion-worker_{n}"].rpartition(" ")[2])
                  for n in range(1, 21)]
    assert supervised == list(range(9101, 9121))


def _site(tmp_path: Path) -> Path:
    app = tmp_path / "app"
    for name, text in SITE.items():
        (app / name).parent.mkdir(parents=True, exist_ok=True)
        (app / name).write_text(text)
    migrate = subprocess.run([sys.executable, "manage.py", "migrate", "-v", "0"], cwd=app,
                             capture_output=True, text=True, timeout=120, env=_outside_env())
    assert migrate.returncode == 0, migrate.stderr
    return app


def test_systemd_units_commands_run(tmp_path: Path) -> None:
    """No systemd runs as PID 1 here, so each unit's commands run as systemd would run them:
    its EnvironmentFile (deploy/clarion.env.example with test values), its
    WorkingDirectory, ExecStartPre, ExecStart, ExecReload with $MAINPID, KillSignal; the
    socket unit's ListenStream handed to gunicorn by systemd-socket-activate (LISTEN_FDS), as
    systemd does. Paths and ports are moved into the test."""
    _service(REDIS, "Redis")
    activate = _tool("systemd-socket-activate")
    app = _site(tmp_path)
    state = tmp_path / "state"
    state.mkdir()
    toml = tmp_path / "clarion.toml"
    toml.write_text((DEPLOY / "clarion.toml").read_text())
    hub_port, web_port, prefix = free_port(), free_port(), _free_ports_with_prefix()
    moves = (("/srv/clarion/venv/bin", str(VENV_BIN)), ("/etc/clarion/clarion.toml", str(toml)),
             ("/var/lib/clarion", str(state)), ("/srv/clarion/app", str(app)),
             ("--workers 4", "--workers 2"), ("9100 + %i", f"{prefix}0 + %i"),
             ("127.0.0.1:8001", f"127.0.0.1:{web_port}"))

    def unit(name: str) -> dict[str, list[str]]:
        settings = _unit_settings(name)
        for values in settings.values():
            for old, new in moves:
                values[:] = [v.replace(old, new) for v in values]
        return settings

    env_file = {}
    for line in (DEPLOY / "clarion.env.example").read_text().splitlines():
        if line and not line.startswith("#"):
            key, _, value = line.partition("=")
            env_file[key] = value
    assert set(env_file) == {"CLARION_API_KEY", "CLARION_TOKEN_HMAC_SECRET",
                             "DJANGO_SETTINGS_MODULE"}
    env_file.update({"CLARION_API_KEY": "unit-key", "CLARION_TOKEN_HMAC_SECRET": "h" * 32})
    base = {k: v for k, v in os.environ.items()
            if not k.startswith("CLARION_") and k not in ("DJANGO_SETTINGS_MODULE", "PYTHONPATH")}
    # What the test needs on top: its own port and key prefix (the file says 8000, clarion).
    env = {**base, **env_file, "CLARION_PORT": str(hub_port),
           "CLARION_REDIS_PREFIX": f"test-units-{uuid.uuid4().hex[:8]}"}
    logs = tmp_path / "logs"
    logs.mkdir()
    started: list[subprocess.Popen[bytes]] = []

    def start(name: str, command: list[str], cwd: str) -> subprocess.Popen[bytes]:
        out = (logs / f"{name}.log").open("wb")
        proc = subprocess.Popen(command, cwd=cwd, env=env, stdout=out,
                                stderr=subprocess.STDOUT)
        started.append(proc)
        return proc

    try:
        hub = unit("clarion-hub.service")
        assert hub["EnvironmentFile"] == ["/etc/clarion/clarion.env"]
        pre = subprocess.run(hub["ExecStartPre"][0].split(), cwd=hub["WorkingDirectory"][0],
                             env=env, capture_output=True, text=True, timeout=60)
        assert (pre.returncode, pre.stdout, pre.stderr) == (0, "", "")
        hub_proc = start("hub", hub["ExecStart"][0].split(), hub["WorkingDirectory"][0])
        url = f"http://127.0.0.1:{hub_port}"
        _wait_for("both hub workers", lambda: "clarion_workers_running 2.0"
                  in httpx.get(f"{url}/metrics").text, logs)

        worker = unit("clarion-worker@.service")
        worker_proc = start("worker", _systemd_command(worker["ExecStart"][0], "1"),
                            worker["WorkingDirectory"][0])
        _wait_for("the webhook worker's metrics", lambda: "clarion_webhook_attempts"
                  in httpx.get(f"http://127.0.0.1:{prefix}1/metrics").text, logs)

        socket_unit = unit("clarion-web.socket")
        web = unit("clarion-web.service")
        web_proc = start("web", [activate, "-l", socket_unit["ListenStream"][0],
                                 *web["ExecStart"][0].split()], web["WorkingDirectory"][0])
        _wait_for("gunicorn on the activated socket", lambda: httpx.get(
            f"http://127.0.0.1:{web_port}/").text == "mysite ok", logs)

        reload = hub["ExecReload"][0].replace("$MAINPID", str(hub_proc.pid)).split()
        assert subprocess.run(reload, timeout=30).returncode == 0
        _wait_for("a rolling restart", lambda: 'clarion_worker_reloads_total{result="ok"} 1.0'
                  in httpx.get(f"{url}/metrics").text, logs)

        for name, proc, settings in (("hub", hub_proc, hub), ("worker", worker_proc, worker),
                                     ("web", web_proc, web)):
            signal_name = settings.get("KillSignal", ["SIGTERM"])[0]
            proc.send_signal(getattr(signal, signal_name))
            assert proc.wait(120) == 0, (logs / f"{name}.log").read_text()[-3000:]
        assert '"event": "supervisor stopped", "clean": true' in (logs / "hub.log").read_text()
    finally:
        for proc in started:
            if proc.poll() is None:
                proc.kill()
                proc.wait()
        import redis

        with redis.Redis(*REDIS) as r:
            for key in r.scan_iter(f"{env['CLARION_REDIS_PREFIX']}:*"):
                r.delete(key)


# -- supervisord -----------------------------------------------------------------------------

_SUPERVISOR_PARSE = """
import json, sys
from supervisor.options import ServerOptions
options = ServerOptions()
options.realize(args=["-c", sys.argv[1]])
print(json.dumps({g.name: [{"name": p.name, "command": p.command, "stopsignal": p.stopsignal,
                            "stopwaitsecs": p.stopwaitsecs, "killasgroup": p.killasgroup,
                            "stopasgroup": p.stopasgroup, "environment": p.environment}
                           for p in g.process_configs] for g in options.process_group_configs}))
"""


def _supervisor_config(tmp_path: Path) -> Path:
    """deploy/supervisor/clarion.conf included from a minimal supervisord.conf, with this
    machine's user and a log directory that exists (the parser checks both)."""
    try:
        import supervisor  # noqa: F401
    except ImportError:
        _missing("supervisor (PyPI) is not installed")
    logs = tmp_path / "log"
    logs.mkdir()
    user = subprocess.run(["id", "-un"], capture_output=True, text=True, check=True).stdout
    conf = (DEPLOY / "supervisor" / "clarion.conf").read_text()
    conf = conf.replace("user=clarion", f"user={user.strip()}")
    conf = conf.replace("/var/log/clarion", str(logs))
    (tmp_path / "clarion.conf").write_text(conf)
    main = tmp_path / "supervisord.conf"
    main.write_text(f"[supervisord]\nlogfile={logs}/supervisord.log\nminfds=1024\n"
                    f"[include]\nfiles={tmp_path}/clarion.conf\n")
    return main


def test_supervisor_config_parses(tmp_path: Path) -> None:
    main = _supervisor_config(tmp_path)
    env = {**os.environ, "CLARION_API_KEY": "k-123", "CLARION_TOKEN_HMAC_SECRET": "s-456",
           "DJANGO_SETTINGS_MODULE": "mysite.settings"}
    result = subprocess.run([sys.executable, "-c", _SUPERVISOR_PARSE, str(main)],
                            capture_output=True, text=True, timeout=60, env=env)
    assert result.returncode == 0, result.stderr
    groups = json.loads(result.stdout)
    programs = {p["name"]: p for p in groups["clarion"]}
    assert set(programs) == {"clarion-hub", "clarion-worker_1", "clarion-worker_2",
                             "clarion-web"}
    hub = programs["clarion-hub"]
    assert hub["command"].split()[1:3] == ["serve", "--config"]
    # SIGTERM to the hub's own supervisor only; the whole group only when it is killed.
    assert (hub["stopasgroup"], hub["killasgroup"]) == (False, True)
    assert hub["stopwaitsecs"] > 15
    assert hub["environment"]["CLARION_API_KEY"] == "k-123"
    assert programs["clarion-worker_2"]["command"].endswith("--metrics-port 9102")


def test_supervisor_config_names_a_missing_secret(tmp_path: Path) -> None:
    main = _supervisor_config(tmp_path)
    env = {k: v for k, v in os.environ.items()
           if k not in ("CLARION_API_KEY", "CLARION_TOKEN_HMAC_SECRET")}
    env["DJANGO_SETTINGS_MODULE"] = "mysite.settings"
    result = subprocess.run([sys.executable, "-c", _SUPERVISOR_PARSE, str(main)],
                            capture_output=True, text=True, timeout=60, env=env)
    assert result.returncode != 0
    assert "ENV_CLARION_API_KEY" in result.stderr


SITE = {
    "manage.py": """import os, sys
if __name__ == "__main__":
    os.environ.setdefault("DJANGO_SETTINGS_MODULE", "mysite.settings")
    from django.core.management import execute_from_command_line
    execute_from_command_line(sys.argv)
""",
    "mysite/__init__.py": "",
    "mysite/settings.py": """from pathlib import Path
SECRET_KEY = "test"
DEBUG = False
ALLOWED_HOSTS = ["*"]
USE_TZ = True
ROOT_URLCONF = "mysite.urls"
INSTALLED_APPS = ["django.contrib.contenttypes", "django.contrib.auth", "clarion.django"]
DATABASES = {"default": {"ENGINE": "django.db.backends.sqlite3",
                         "NAME": Path(__file__).resolve().parent.parent / "db.sqlite3"}}
""",
    "mysite/urls.py": """from django.http import HttpResponse
from django.urls import path
urlpatterns = [path("", lambda request: HttpResponse("mysite ok"))]
""",
    "mysite/wsgi.py": """import os
from django.core.wsgi import get_wsgi_application
os.environ.setdefault("DJANGO_SETTINGS_MODULE", "mysite.settings")
application = get_wsgi_application()
""",
}


def _wait_for(what: str, probe: Any, log: Path, seconds: float = 90) -> None:
    deadline = time.monotonic() + seconds
    while True:
        try:
            if probe():
                return
        except (httpx.TransportError, OSError):
            pass
        if time.monotonic() > deadline:
            logs = "\n".join(f"== {p.name}\n{p.read_text(errors='replace')[-3000:]}"
                             for p in sorted(log.glob("*.log")))
            pytest.fail(f"{what} did not happen within {seconds:g} s\n{logs}")
        time.sleep(0.2)


def _free_ports_with_prefix() -> str:
    """A port prefix P such that P1 and P2 are free: the workers' metrics ports, moved."""
    for prefix in range(2000, 6500, 37):
        ports = [int(f"{prefix}{n}") for n in (1, 2)]
        try:
            for port in ports:
                with socket.socket() as s:
                    s.bind(("127.0.0.1", port))
        except OSError:
            continue
        return str(prefix)
    pytest.fail("no free pair of ports")


def test_supervisord_runs_the_programs(tmp_path: Path) -> None:
    """deploy/supervisor/clarion.conf under a real supervisord, paths and ports moved into
    this test: the hub (two workers on Redis), two webhook workers through manage.py and
    gunicorn serving a Django project all come up; signal HUP makes a rolling restart; stop
    ends the hub's supervisor cleanly (its workers drained, not killed)."""
    _service(REDIS, "Redis")
    _supervisor_config(tmp_path)  # skips without supervisor; makes tmp_path/log
    supervisord = VENV_BIN / "supervisord"
    app = _site(tmp_path)
    (tmp_path / "state").mkdir()
    toml = tmp_path / "clarion.toml"
    toml.write_text((DEPLOY / "clarion.toml").read_text())
    hub_port, web_port, prefix = free_port(), free_port(), _free_ports_with_prefix()
    logs = tmp_path / "log"
    user = subprocess.run(["id", "-un"], capture_output=True, text=True, check=True).stdout
    conf = (DEPLOY / "supervisor" / "clarion.conf").read_text()
    for old, new in (("/srv/clarion/venv/bin", str(VENV_BIN)),
                     ("/etc/clarion/clarion.toml", str(toml)),
                     ("/var/lib/clarion", str(tmp_path / "state")),
                     ("/srv/clarion/app", str(app)), ("/var/log/clarion", str(logs)),
                     ("user=clarion", f"user={user.strip()}"),
                     ("127.0.0.1:8001", f"127.0.0.1:{web_port}"),
                     ("--workers 4", "--workers 2"),
                     ("91%(process_num)02d", f"{prefix}%(process_num)d")):
        assert old in conf, old
        conf = conf.replace(old, new)
    (tmp_path / "clarion.conf").write_text(conf)
    sock = tmp_path / "s.sock"
    main = tmp_path / "supervisord.conf"
    main.write_text(f"""[supervisord]
logfile={logs}/supervisord.log
pidfile={tmp_path}/supervisord.pid
childlogdir={logs}
[unix_http_server]
file={sock}
[rpcinterface:supervisor]
supervisor.rpcinterface_factory = supervisor.rpcinterface:make_main_rpcinterface
[supervisorctl]
serverurl=unix://{sock}
[include]
files={tmp_path}/clarion.conf
""")
    env = _outside_env()
    env.update({"CLARION_API_KEY": "deploy-key", "CLARION_TOKEN_HMAC_SECRET": "s" * 32,
                "DJANGO_SETTINGS_MODULE": "mysite.settings", "CLARION_PORT": str(hub_port),
                "CLARION_REDIS_PREFIX": f"test-sup-{uuid.uuid4().hex[:8]}"})

    def ctl(*args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run([str(VENV_BIN / "supervisorctl"), "-c", str(main), *args],
                              capture_output=True, text=True, timeout=120, env=env)

    proc = subprocess.Popen([str(supervisord), "-n", "-c", str(main)], env=env,
                            stdout=subprocess.DEVNULL, stderr=subprocess.STDOUT)
    hub = f"http://127.0.0.1:{hub_port}"
    try:
        _wait_for("the hub's /health", lambda: httpx.get(f"{hub}/health").status_code == 200,
                  logs)
        _wait_for("gunicorn serving Django", lambda: httpx.get(
            f"http://127.0.0.1:{web_port}/").text == "mysite ok", logs)
        for n in (1, 2):
            _wait_for(f"webhook worker {n}'s metrics", lambda n=n: "clarion_webhook_attempts"
                      in httpx.get(f"http://127.0.0.1:{prefix}{n}/metrics").text, logs)
        _wait_for("both hub workers", lambda: 'clarion_workers_running 2.0' in
                  httpx.get(f"{hub}/metrics").text, logs)
        published = httpx.post(f"{hub}/api/publish", headers={"X-API-Key": "deploy-key"},
                               json={"channel": "chat:x", "data": {"n": 1}})
        assert published.json()["result"]["offset"] == 1
        # RUNNING once a program has lived startsecs (5 s).
        _wait_for("all four programs RUNNING",
                  lambda: ctl("status").stdout.count("RUNNING") == 4, logs)

        hup = ctl("signal", "HUP", "clarion:clarion-hub")
        assert hup.returncode == 0, hup.stdout + hup.stderr
        _wait_for("a rolling restart", lambda: 'clarion_worker_reloads_total{result="ok"} 1.0'
                  in httpx.get(f"{hub}/metrics").text, logs)
        assert httpx.get(f"{hub}/health").status_code == 200

        stop = ctl("stop", "clarion:*")
        assert stop.returncode == 0, stop.stdout + stop.stderr
        hub_log = (logs / "hub.log").read_text()
        assert '"event": "supervisor stopped", "clean": true' in hub_log  # log_format = json
        assert "killing" not in hub_log
    finally:
        ctl("shutdown")
        try:
            proc.wait(60)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
        import redis

        # The shared Redis keeps a channel's epoch for history_meta_ttl (30 days).
        with redis.Redis(*REDIS) as r:
            for key in r.scan_iter(f"{env['CLARION_REDIS_PREFIX']}:*"):
                r.delete(key)


# -- the production clarion.toml -------------------------------------------------------------


def test_production_toml_loads_with_the_hub_loader() -> None:
    from clarion.hub.config import load_config

    config = load_config(DEPLOY / "clarion.toml", environ={})
    assert config.broker.startswith("redis://")
    assert config.trusted_proxies == ["127.0.0.1", "::1"]
    assert config.log_format == "json"
    assert config.api_key == ""  # secrets come from the environment, never from the file
    assert config.namespaces["chat"].history_size == 100
    env = load_config(DEPLOY / "clarion.toml",
                      environ={"CLARION_API_KEY": "from-env", "CLARION_BROKER": "redis://h/1"})
    assert (env.api_key, env.broker) == ("from-env", "redis://h/1")


def test_env_example_names_only_settings_the_hub_reads() -> None:
    from clarion.hub.config import Config

    names = re.findall(r"^#?(CLARION_[A-Z_]+)=", (DEPLOY / "clarion.env.example").read_text(),
                       re.MULTILINE)
    assert names
    for name in names:
        assert name[len("CLARION_"):].lower() in Config.__struct_fields__, name


# -- clarion check ---------------------------------------------------------------------------


@pytest.fixture
def redis_prefix() -> Iterator[str]:
    _service(REDIS, "Redis")
    yield f"test-check-{uuid.uuid4().hex[:8]}"


def test_check_production_config_against_real_redis(redis_prefix: str) -> None:
    secret = "api-" + uuid.uuid4().hex
    hmac = "hmac-" + uuid.uuid4().hex
    result = _clarion("check", "--config", str(DEPLOY / "clarion.toml"),
                      env={"CLARION_API_KEY": secret, "CLARION_TOKEN_HMAC_SECRET": hmac,
                           "CLARION_REDIS_PREFIX": redis_prefix})
    assert result.returncode == 0, result.stderr
    out = result.stdout
    assert "configuration " + str(DEPLOY / "clarion.toml") + ": ok" in out
    assert "broker redis://127.0.0.1:6379/0: ok (connected, Pub/Sub link up" in out
    assert "all checks passed" in out
    # The effective settings are printed, with the secrets masked.
    assert 'api_key = "********"' in out
    assert 'token_hmac_secret = "********"' in out
    assert f'prefix = "{redis_prefix}"' in out
    assert secret not in out + result.stderr and hmac not in out + result.stderr
    assert result.stderr == ""


def test_check_masks_the_broker_password(redis_prefix: str) -> None:
    """A password in the URL is masked in the settings and in the error (this Redis has no
    password, so AUTH fails: a real refusal, named)."""
    password = "pw-" + uuid.uuid4().hex
    env = {"CLARION_API_KEY": "x", "CLARION_REDIS_PREFIX": redis_prefix}
    result = _clarion("check", "--broker", f"redis://:{password}@127.0.0.1:6379/0", env=env)
    assert result.returncode == 1
    assert password not in result.stdout + result.stderr
    assert 'broker = "redis://:********@127.0.0.1:6379/0"' in result.stdout
    assert "broker redis://:********@127.0.0.1:6379/0: redis: cannot connect" in result.stderr
    assert "1 problem found" in result.stderr
    # redis-py also takes the password as a query parameter.
    query = _clarion("check", "--broker", f"redis://127.0.0.1:6379/0?password={password}",
                     env=env)
    assert query.returncode == 1
    assert password not in query.stdout + query.stderr
    assert "redis://127.0.0.1:6379/0?password=********" in query.stdout


def test_check_quiet_prints_nothing_when_all_is_well(redis_prefix: str) -> None:
    result = _clarion("check", "--quiet", "--broker", "redis://127.0.0.1:6379/0",
                      env={"CLARION_API_KEY": "x", "CLARION_REDIS_PREFIX": redis_prefix})
    assert (result.returncode, result.stdout, result.stderr) == (0, "", "")


def test_check_redis_unreachable() -> None:
    port = free_port()  # nothing listens there
    result = _clarion("check", "--quiet", "--broker", f"redis://127.0.0.1:{port}/0",
                      env={"CLARION_API_KEY": "x"})
    assert result.returncode == 1
    assert f"broker redis://127.0.0.1:{port}/0: redis: cannot connect" in result.stderr
    assert "Connect call failed" in result.stderr


def test_check_broker_that_never_answers() -> None:
    """A port that accepts connections and says nothing (a firewall's half-open answer, a
    wrong service): bounded by --timeout, and named."""
    with socket.socket() as silent:
        silent.bind(("127.0.0.1", 0))
        silent.listen(16)
        port = silent.getsockname()[1]
        result = _clarion("check", "--quiet", "--timeout", "1", "--broker",
                          f"redis://127.0.0.1:{port}/0", env={"CLARION_API_KEY": "x"})
    assert result.returncode == 1
    assert f"broker redis://127.0.0.1:{port}/0: no answer within 1 s" in result.stderr


def test_effective_settings_are_a_configuration_the_hub_loads(tmp_path: Path) -> None:
    """What check prints is TOML that loads back to the same settings, secrets aside."""
    import tomllib

    import msgspec

    from clarion.check import MASK, effective_settings
    from clarion.hub.config import load_config

    source = tmp_path / "source.toml"
    # A namespace with a dot in its name (allowed) must stay one table, not nest.
    source.write_text((DEPLOY / "clarion.toml").read_text()
                      + '[namespaces."feed.v2"]\npresence = true\n')
    config = load_config(source, environ={"CLARION_API_KEY": "file:looks-like-a-path",
                                          "CLARION_GRIP_SIG_KEY": "g"})
    text = effective_settings(config)
    assert tomllib.loads(text)["api_key"] == MASK  # only GRIP keys may be file: paths
    assert "looks-like-a-path" not in text
    again_file = tmp_path / "again.toml"
    again_file.write_text(text)
    again = load_config(again_file, environ={})
    want = msgspec.to_builtins(config)
    got = msgspec.to_builtins(again)
    for secret in ("api_key", "grip_sig_key"):
        assert got.pop(secret) == MASK
        want.pop(secret)
    assert got == want


@pytest.mark.parametrize(("url", "shown"), [
    ("redis://127.0.0.1:6379/0", "redis://127.0.0.1:6379/0"),
    ("redis://:pw@h:6379/0", "redis://:********@h:6379/0"),
    ("redis://user:pw@h/0", "redis://user:********@h/0"),
    ("redis://user@h/0", "redis://user:********@h/0"),
    ("rediss://u:p%40ss@h/0?ssl_cert_reqs=none", "rediss://u:********@h/0?ssl_cert_reqs=none"),
    ("redis://h/0?password=pw&db=1", "redis://h/0?password=********&db=1"),
    ("redis+sentinel://s1,s2/mymaster?sentinel_password=pw",
     "redis+sentinel://s1,s2/mymaster?sentinel_password=********"),
    ("unix:///run/redis.sock?password=pw", "unix:///run/redis.sock?password=********"),
    ("memory", "memory"),
])
def test_mask_url(url: str, shown: str) -> None:
    from clarion.check import mask_url

    assert mask_url(url) == shown


def test_check_bad_toml(tmp_path: Path) -> None:
    bad = tmp_path / "bad.toml"
    bad.write_text('api_key = "x"\nport = \n')
    result = _clarion("check", "--config", str(bad))
    assert result.returncode == 2
    assert f"config file {bad}: " in result.stderr
    assert "line 2" in result.stderr
    assert "the hub would not start" in result.stderr
    assert result.stdout == ""


def test_check_unknown_key_is_named(tmp_path: Path) -> None:
    bad = tmp_path / "typo.toml"
    bad.write_text('api_key = "x"\nmax_conections = 10\n')
    result = _clarion("check", "--config", str(bad))
    assert result.returncode == 2
    assert "unknown field `max_conections`" in result.stderr


def test_check_bad_value_is_named(tmp_path: Path) -> None:
    bad = tmp_path / "value.toml"
    bad.write_text('api_key = "x"\nhttp_keepalive_timeout = "0.5s"\n')
    result = _clarion("check", "--config", str(bad))
    assert result.returncode == 2
    assert "http_keepalive_timeout: must be between 1 second and 1 day" in result.stderr


def test_check_missing_file() -> None:
    result = _clarion("check", "--config", "/nonexistent/clarion.toml")
    assert result.returncode == 2
    assert "config file /nonexistent/clarion.toml: No such file or directory" in result.stderr


def test_check_what_serve_refuses_at_start(tmp_path: Path) -> None:
    """Beyond the loader: --workers on the memory broker, a certificate that is not there, a
    GRIP routes file with a bad line."""
    workers = _clarion("check", "--workers", "2")
    assert workers.returncode == 2
    assert "workers = 2 needs a broker shared between processes" in workers.stderr
    tls = _clarion("check", "--certfile", str(tmp_path / "missing.pem"))
    assert tls.returncode == 2
    assert "missing.pem" in tls.stderr
    routes = tmp_path / "routes"
    routes.write_text("* 127.0.0.1:notaport\n")
    grip = tmp_path / "grip.toml"
    grip.write_text(f'grip_routes = "{routes}"\n')
    bad = _clarion("check", "--config", str(grip))
    assert bad.returncode == 2
    assert "grip_routes" in bad.stderr
    routes.write_text("* 127.0.0.1:8001\n")
    grip.write_text(f'grip_routes = "{routes}"\ngrip_sig_key = "file:{tmp_path}/no.key"\n')
    key = _clarion("check", "--config", str(grip))
    assert key.returncode == 2
    assert f"GRIP key file {tmp_path}/no.key: No such file or directory" in key.stderr
    (tmp_path / "grip.key").write_text("00ff" * 16)
    grip.write_text(f'grip_routes = "{routes}"\ngrip_sig_key = "file:{tmp_path}/grip.key"\n')
    ok = _clarion("check", "--config", str(grip), env={"CLARION_API_KEY": "x"})
    assert ok.returncode == 0, ok.stderr
    assert f'grip_sig_key = "file:{tmp_path}/grip.key"' in ok.stdout


def test_check_bad_timeout() -> None:
    result = _clarion("check", "--timeout", "0")
    assert result.returncode == 2
    assert "--timeout must be more than 0 seconds" in result.stderr


def test_check_warns_about_risky_settings() -> None:
    result = _clarion("check", "--quiet")
    assert result.returncode == 0  # warnings are not problems
    loud = _clarion("check", env={"CLARION_API_INSECURE": "true", "CLARION_HOST": "0.0.0.0"})
    assert loud.returncode == 0
    assert "warning: api_insecure = true" in loud.stdout
    assert "warning: host = '0.0.0.0' without certfile or trusted_proxies" in loud.stdout
    empty = _clarion("check")
    assert "warning: api_key is empty" in empty.stdout


def test_check_quiet_keeps_the_warnings_on_stderr() -> None:
    """--quiet is what the hub unit's ExecStartPre runs: the settings dump and the "ok" lines
    go, the warnings stay (on standard error, so the journal shows them)."""
    quiet = _clarion("check", "--quiet",
                     env={"CLARION_API_INSECURE": "true", "CLARION_HOST": "0.0.0.0"})
    assert quiet.returncode == 0  # warnings are not problems
    assert quiet.stdout == ""
    warnings = quiet.stderr.splitlines()
    assert "clarion check: warning: api_insecure = true: anyone who reaches /api/ may publish " \
        "and disconnect" in warnings
    assert any(w.startswith("clarion check: warning: host = '0.0.0.0' without certfile")
               for w in warnings)
    assert all(w.startswith("clarion check: warning: ") for w in warnings), warnings


def test_check_webhooks_db(tmp_path: Path) -> None:
    db = tmp_path / "hooks.sqlite3"
    fresh = _clarion("check", "--quiet", "--webhooks-db", str(db), env={"CLARION_API_KEY": "x"})
    assert fresh.returncode == 0, fresh.stderr
    migrate = _clarion("manage", "--db", str(db), "migrate", "-v", "0")
    assert migrate.returncode == 0, migrate.stderr
    ready = _clarion("check", "--webhooks-db", str(db), env={"CLARION_API_KEY": "x"})
    assert ready.returncode == 0, ready.stderr
    assert f"database 'default' (sqlite {db}): migrations applied" in ready.stdout
    assert "Django system checks of clarion: ok" in ready.stdout
    nowhere = _clarion("check", "--webhooks-db", "/nonexistent/dir/hooks.sqlite3")
    assert nowhere.returncode == 1
    assert "/nonexistent/dir is not a directory this user can write to" in nowhere.stderr


SETTINGS = """
SECRET_KEY = "test"
USE_TZ = True
INSTALLED_APPS = ["django.contrib.contenttypes", "django.contrib.auth", "clarion.django"]
DATABASES = {{"default": {db}}}
"""


def _settings_module(tmp_path: Path, name: str, db: dict[str, object]) -> dict[str, str]:
    (tmp_path / f"{name}.py").write_text(SETTINGS.format(db=repr(db)))
    return {"PYTHONPATH": os.pathsep.join([str(tmp_path), *sys.path])}


def test_check_django_settings_unmigrated_database(tmp_path: Path) -> None:
    env = _settings_module(tmp_path, "unmigrated", {
        "ENGINE": "django.db.backends.sqlite3", "NAME": str(tmp_path / "empty.sqlite3")})
    result = _clarion("check", "--quiet", "--settings", "unmigrated", env=env)
    assert result.returncode == 1
    assert "migration(s) that clarion needs not applied (" in result.stderr
    assert "clarion.0001_initial, clarion.0002_postgresql_match_notify" in result.stderr
    assert "contenttypes.0001_initial" in result.stderr
    assert "run: manage.py migrate clarion" in result.stderr


def test_check_settings_only_when_asked_and_from_the_project_directory(tmp_path: Path) -> None:
    """The hub unit's environment names the project's settings (for the workers), and its
    ExecStartPre check runs elsewhere: DJANGO_SETTINGS_MODULE alone must not make it fail.
    --settings finds the project in the current directory, as manage.py does."""
    project = tmp_path / "app"
    project.mkdir()
    (project / "deploysite.py").write_text(SETTINGS.format(db=repr({
        "ENGINE": "django.db.backends.sqlite3", "NAME": str(tmp_path / "app.sqlite3")})))
    hub = _clarion("check", "--quiet", env={"CLARION_API_KEY": "x",
                                            "DJANGO_SETTINGS_MODULE": "deploysite"})
    assert (hub.returncode, hub.stderr) == (0, "")
    migrate = subprocess.run([sys.executable, "-m", "django", "migrate", "-v", "0",
                              "--settings", "deploysite"], cwd=project, capture_output=True,
                             text=True, timeout=120, env={**os.environ, "PYTHONPATH": "."})
    assert migrate.returncode == 0, migrate.stderr
    # The console script, as a unit or a deploy hook runs it: `python -m` would put the
    # current directory on sys.path by itself.
    base = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH",)}
    here = subprocess.run([str(VENV_BIN / "clarion"), "check", "--settings", "deploysite"],
                          cwd=project, capture_output=True, text=True, timeout=60,
                          env={**base, "CLARION_API_KEY": "x"})
    assert here.returncode == 0, here.stderr
    assert "migrations applied" in here.stdout


def test_check_django_settings_that_do_not_import(tmp_path: Path) -> None:
    result = _clarion("check", "--quiet", "--settings", "no_such_settings_module")
    assert result.returncode == 2
    assert "Django settings no_such_settings_module: No module named" in result.stderr


def test_check_database_that_never_answers(tmp_path: Path) -> None:
    """A PostgreSQL address that accepts and says nothing: --timeout becomes libpq's
    connect_timeout, so the check ends and names it instead of waiting for the kernel."""
    pytest.importorskip("psycopg")
    with socket.socket() as silent:
        silent.bind(("127.0.0.1", 0))
        silent.listen(16)
        port = silent.getsockname()[1]
        env = _settings_module(tmp_path, "silentpg", {
            "ENGINE": "django.db.backends.postgresql", "HOST": "127.0.0.1", "PORT": port,
            "USER": "postgres", "NAME": "x"})
        result = _clarion("check", "--quiet", "--timeout", "1", "--settings", "silentpg",
                          env={**env, "CLARION_API_KEY": "x"})
    assert result.returncode == 1
    assert "database 'default' (postgresql x): connection timeout expired" in result.stderr


def test_check_postgresql_database(tmp_path: Path) -> None:
    """A database that does not exist is named with PostgreSQL's own words; one created and
    migrated for this test passes."""
    _service(POSTGRES, "PostgreSQL")
    import psycopg

    name = f"test_check_{uuid.uuid4().hex[:8]}"
    pg = {"ENGINE": "django.db.backends.postgresql", "HOST": "127.0.0.1", "PORT": 5432,
          "USER": "postgres", "NAME": name}
    env = _settings_module(tmp_path, "pgsettings", pg)
    missing = _clarion("check", "--quiet", "--settings", "pgsettings", env=env)
    assert missing.returncode == 1
    assert f'database "{name}" does not exist' in missing.stderr
    with psycopg.connect("host=127.0.0.1 user=postgres dbname=postgres", autocommit=True) as c:
        c.execute(f'CREATE DATABASE "{name}"')
    try:
        migrate = _clarion("manage", "--settings", "pgsettings", "migrate", "-v", "0", env=env)
        assert migrate.returncode == 0, migrate.stderr
        ok = _clarion("check", "--settings", "pgsettings", env={**env, "CLARION_API_KEY": "x"})
        assert ok.returncode == 0, ok.stderr
        assert f"database 'default' (postgresql {name}): migrations applied" in ok.stdout
    finally:
        with psycopg.connect("host=127.0.0.1 user=postgres dbname=postgres",
                             autocommit=True) as c:
            c.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


# -- the Redis ACL ---------------------------------------------------------------------------


@pytest.fixture
def acl_redis(tmp_path: Path) -> Iterator[tuple[int, str]]:
    """A redis-server of this test's own, its users from deploy/redis/clarion.acl (the
    password filled in) plus a default user that can do nothing."""
    exe = _tool("redis-server")
    password = uuid.uuid4().hex
    acl = (DEPLOY / "redis" / "clarion.acl").read_text().replace(">PASSWORD", f">{password}")
    users = tmp_path / "users.acl"
    users.write_text(acl + "user default off\n")
    port = free_port()
    proc = subprocess.Popen([exe, "--port", str(port), "--bind", "127.0.0.1", "--save", "",
                             "--appendonly", "no", "--aclfile", str(users), "--dir",
                             str(tmp_path)], stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    try:
        deadline = time.monotonic() + 10
        while True:
            assert proc.poll() is None, proc.stdout.read() if proc.stdout else b""
            try:
                socket.create_connection(("127.0.0.1", port), timeout=1).close()
                break
            except OSError:
                assert time.monotonic() < deadline, "redis-server did not listen within 10 s"
                time.sleep(0.05)
        yield port, password
    finally:
        proc.terminate()
        proc.wait(10)


async def test_redis_acl_is_enough_for_the_hub(
        acl_redis: tuple[int, str], hub_factory: Any) -> None:
    """The hub, two workers, as the documented ACL user: check passes, a WebSocket client
    subscribes with presence and recovery, and publish, history, presence, a ticket and the
    cross-node info all work. Anything outside the ACL (the `time` the presence scripts read,
    a key or channel off the prefix) would fail here with a permission error."""
    import websockets

    port, password = acl_redis
    broker = f"redis://clarion:{password}@127.0.0.1:{port}/0"
    check = _clarion("check", "--quiet", "--broker", broker, env={"CLARION_API_KEY": "x"})
    assert (check.returncode, check.stderr) == (0, "")
    other = _clarion("check", "--quiet", "--broker", broker,
                     env={"CLARION_API_KEY": "x", "CLARION_REDIS_PREFIX": "other"})
    assert other.returncode == 1
    assert "no permissions" in other.stderr
    assert password not in other.stdout + other.stderr

    hub = hub_factory(CHAT_NAMESPACE + "allow_subscribe_for_anonymous = true\n",
                      "--workers", "2", "--broker", broker,
                      env={"CLARION_ALLOW_ANONYMOUS_CONNECT_WITHOUT_TOKEN": "true"})
    # /health answers once worker 0 is up; the cross-node info needs worker 1 too.
    deadline = time.monotonic() + 60
    while len(hub.api("info", {}).json()["result"]["nodes"]) < 2:
        assert time.monotonic() < deadline, hub.output()
        await asyncio.sleep(0.2)
    async with websockets.connect(hub.ws_url) as ws:
        await ws.send(json.dumps({"id": 1, "connect": {}}))
        assert "connect" in json.loads(await ws.recv())
        await ws.send(json.dumps({"id": 2, "subscribe": {"channel": "chat:acl",
                                                         "recover": True}}))
        assert "subscribe" in json.loads(await ws.recv())
        published = hub.api("publish", {"channel": "chat:acl", "data": {"n": 1}}).json()
        assert published["result"]["offset"] == 1
        push = json.loads(await ws.recv())
        assert push["push"]["pub"]["data"] == {"n": 1}
        assert hub.api("history", {"channel": "chat:acl", "limit": 5}).json()[
            "result"]["publications"][0]["data"] == {"n": 1}
        stats = hub.api("presence_stats", {"channel": "chat:acl"}).json()
        assert stats["result"]["num_clients"] == 1, stats
        assert hub.api("ticket", {"user": "u1"}).json()["result"]["ticket"]
    assert "permission" not in hub.output().lower()


# -- alerts and dashboard --------------------------------------------------------------------

ALERTS = DEPLOY / "prometheus" / "clarion-alerts.yml"
DASHBOARD = DEPLOY / "grafana" / "clarion-dashboard.json"
# Series Prometheus makes itself for every target, not the target's metrics.
PROMETHEUS_OWN = {"up"}


def test_alert_rules_pass_promtool() -> None:
    promtool = _tool("promtool")
    result = subprocess.run([promtool, "check", "rules", str(ALERTS)], capture_output=True,
                            text=True, timeout=60)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "SUCCESS" in result.stdout


def test_alert_rules_fire_as_meant(tmp_path: Path) -> None:
    """promtool's rule unit tests: a hub that stops answering pages after a minute; a hub
    whose broker announcements fail alerts; a quiet healthy hub does not."""
    promtool = _tool("promtool")
    tests = {
        "rule_files": [str(ALERTS)],
        "evaluation_interval": "15s",
        "tests": [{
            "interval": "15s",
            "input_series": [
                {"series": 'up{job="clarion-hub",instance="a:8000"}', "values": "1 1 0 0 0 0 0 0"},
                {"series": 'clarion_control_messages_failed_total{job="clarion-hub",'
                           'instance="b:8000",why="send"}', "values": "0+5x20"},
                {"series": 'clarion_control_messages_failed_total{job="clarion-hub",'
                           'instance="c:8000",why="send"}', "values": "0x20"},
            ],
            "alert_rule_test": [
                {"eval_time": "2m", "alertname": "ClarionHubDown", "exp_alerts": [{
                    "exp_labels": {"severity": "critical", "job": "clarion-hub",
                                   "instance": "a:8000"},
                    "exp_annotations": {
                        "summary": "Clarion hub a:8000 does not answer /metrics",
                        "description": "Clients cannot connect and publications through this "
                                       "hub fail. Check `systemctl status clarion-hub` and "
                                       "`journalctl -u clarion-hub`."}}]},
                {"eval_time": "30s", "alertname": "ClarionHubDown", "exp_alerts": []},
                {"eval_time": "4m", "alertname": "ClarionBrokerUnreachable", "exp_alerts": [{
                    "exp_labels": {"severity": "critical", "instance": "b:8000"},
                    "exp_annotations": {
                        "summary": "Clarion hub b:8000 cannot reach its broker (Redis)",
                        "description": "Publications from other nodes do not arrive, and API "
                                       "calls that need Redis answer 503. /health reports "
                                       "status degraded. Check Redis and `clarion check`."}}]},
            ],
        }],
    }
    path = tmp_path / "tests.yml"
    path.write_text(yaml.safe_dump(tests))
    result = subprocess.run([promtool, "test", "rules", str(path)], capture_output=True,
                            text=True, timeout=60)
    assert result.returncode == 0, result.stdout + result.stderr


def test_broker_down_alert_input_rises_when_redis_dies(tmp_path: Path,
                                                      hub_factory: Any) -> None:
    """ClarionBrokerUnreachable counts failed node announcements. A real hub on a Redis of
    its own: once that Redis is killed, the counter passes the rule's threshold (5) and
    /health?strict=1 answers 503, the readiness signal the monitoring page pairs with it."""
    exe = _tool("redis-server")
    port = free_port()
    redis_proc = subprocess.Popen([exe, "--port", str(port), "--bind", "127.0.0.1", "--save",
                                   "", "--appendonly", "no", "--dir", str(tmp_path)],
                                  stdout=subprocess.DEVNULL, stderr=subprocess.STDOUT)
    try:
        _wait_for("redis-server", lambda: socket.create_connection(
            ("127.0.0.1", port), timeout=1).close() is None, tmp_path)
        hub = hub_factory("", "--broker", f"redis://127.0.0.1:{port}/0")
    finally:
        redis_proc.kill()
        redis_proc.wait()
    threshold = re.search(r"why=\"send\"}\[2m\]\)\) > (\d+)", ALERTS.read_text())
    assert threshold, "the rule's threshold"

    def failed() -> float:
        for line in httpx.get(f"{hub.url}/metrics").text.splitlines():
            if line.startswith('clarion_control_messages_failed_total{why="send"}'):
                return float(line.split()[-1])
        return 0.0

    _wait_for("failed announcements above the alert's threshold",
              lambda: failed() > int(threshold.group(1)), tmp_path)
    health = httpx.get(f"{hub.url}/health", params={"strict": "1"})
    assert health.status_code == 503
    assert health.json()["status"] == "degraded"


def test_alert_rules_structure() -> None:
    """What promtool does not insist on: every rule has a severity, a summary and a
    description, and the groups cover the hub and the webhooks."""
    doc = yaml.safe_load(ALERTS.read_text())
    names = set()
    for group in doc["groups"]:
        for rule in group["rules"]:
            names.add(rule["alert"])
            assert rule["labels"]["severity"] in ("critical", "warning", "info"), rule["alert"]
            assert rule["annotations"]["summary"] and rule["annotations"]["description"]
    assert {"ClarionHubDown", "ClarionBrokerUnreachable", "ClarionFailures",
            "ClarionSlowConsumers", "ClarionWebhookEndpointsFailing",
            "ClarionWebhookWorkerErrors", "ClarionOutboxRelayRetrying"} <= names


def _exprs() -> list[tuple[str, str]]:
    out = []
    for group in yaml.safe_load(ALERTS.read_text())["groups"]:
        out += [(f"alert {r['alert']}", r["expr"]) for r in group["rules"]]
    dashboard = json.loads(DASHBOARD.read_text())
    for panel in dashboard["panels"]:
        out += [(f"panel {panel['title']}", t["expr"]) for t in panel.get("targets", [])]
    for var in dashboard["templating"]["list"]:
        if "definition" in var:
            out.append((f"variable {var['name']}", var["definition"]))
    return out


def _selected_metrics(expr: str) -> set[str]:
    # A metric name is followed by its label matchers; functions and `by (…)` by a
    # parenthesis, label names by an operator.
    return set(re.findall(r"([a-zA-Z_:][a-zA-Z0-9_:]*)\s*\{", expr))


@pytest.fixture(scope="module")
def exposed_metrics(tmp_path_factory: pytest.TempPathFactory) -> set[str]:
    """Every sample name a running hub exposes: two workers on Redis (so the supervisor's
    metrics are there) with the built-in webhook app (so the worker's are too)."""
    _service(REDIS, "Redis")
    tmp = tmp_path_factory.mktemp("hub")
    port = free_port()
    config = tmp / "hub.toml"
    config.write_text(f'api_key = "k"\n[redis]\nprefix = "test-deploy-{uuid.uuid4().hex[:8]}"\n')
    log = tmp / "hub.log"
    base = {k: v for k, v in os.environ.items() if not k.startswith("CLARION_")}
    with log.open("wb") as out:
        proc = subprocess.Popen(
            [sys.executable, "-m", "clarion", "serve", "--port", str(port), "--config",
             str(config), "--workers", "2", "--broker", "redis://127.0.0.1:6379/0",
             "--webhooks-db", str(tmp / "hooks.sqlite3")],
            stdout=out, stderr=subprocess.STDOUT, env=base)
    try:
        text = ""
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            assert proc.poll() is None, log.read_text()
            try:
                r = httpx.get(f"http://127.0.0.1:{port}/metrics", timeout=5)
                # Both workers and the supervisor answered: every family is there.
                if r.status_code == 200 and 'worker="1"' in r.text and \
                        "clarion_webhook_attempts_total" in r.text:
                    text = r.text
                    break
            except httpx.TransportError:
                pass
            time.sleep(0.2)
        assert text, log.read_text()
    finally:
        proc.terminate()
        proc.wait(30)
    names = set()
    for line in text.splitlines():
        if line.startswith("# TYPE "):
            _, _, name, kind = line.split(" ", 3)
            names.add(name)
            if kind == "histogram":
                names |= {f"{name}_bucket", f"{name}_sum", f"{name}_count"}
        elif line and not line.startswith("#"):
            names.add(re.split(r"[{ ]", line, maxsplit=1)[0])
    return names


def test_alerts_and_dashboard_use_only_exposed_metrics(exposed_metrics: set[str]) -> None:
    exprs = _exprs()
    assert len(exprs) > 30
    used: set[str] = set()
    for where, expr in exprs:
        metrics = _selected_metrics(expr)
        assert metrics, f"{where}: no metric selector in {expr!r}"
        unknown = metrics - exposed_metrics - PROMETHEUS_OWN
        assert not unknown, f"{where} uses {sorted(unknown)}, which no Clarion process exposes"
        # Every clarion_ name anywhere in the expression, selector or not.
        for name in re.findall(r"\bclarion_[a-z0-9_]+", expr):
            assert name in exposed_metrics, f"{where}: {name}"
        used |= metrics
    # The families worth watching are all used somewhere.
    assert {"clarion_connections", "clarion_disconnects_total", "clarion_failures_total",
            "clarion_webhook_attempts_total", "clarion_webhook_worker_errors_total",
            "clarion_workers_running", "clarion_publish_to_deliver_seconds_bucket"} <= used


def test_dashboard_and_alerts_use_the_scrape_jobs() -> None:
    jobs = {c["job_name"] for c in
            yaml.safe_load((DEPLOY / "prometheus" / "scrape.yml").read_text())["scrape_configs"]}
    assert jobs == {"clarion-hub", "clarion-worker"}
    for where, expr in _exprs():
        for job in re.findall(r'job=~?"([^"]+)"', expr):
            assert set(job.split("|")) <= jobs, f"{where}: job {job}"


def test_dashboard_is_importable_json() -> None:
    dashboard = json.loads(DASHBOARD.read_text())
    assert dashboard["uid"] == "clarion-overview"
    ids = [p["id"] for p in dashboard["panels"]]
    assert len(ids) == len(set(ids))
    for panel in dashboard["panels"]:
        pos = panel["gridPos"]
        assert pos["x"] >= 0 and pos["x"] + pos["w"] <= 24, panel["title"]


def test_metrics_reference_documents_every_exposed_family(exposed_metrics: set[str]) -> None:
    """docs/reference/metrics.md names every family a running hub and worker expose."""
    doc = (ROOT / "docs" / "reference" / "metrics.md").read_text()
    families = {n for n in exposed_metrics if n.startswith("clarion_")
                and not n.endswith(("_bucket", "_sum", "_count", "_created"))}
    missing = sorted(n for n in families if f"`{n}`" not in doc)
    assert not missing, f"undocumented: {missing}"


# -- kernel settings and the docs ------------------------------------------------------------


def test_sysctl_settings_exist_on_this_kernel() -> None:
    """Every key of deploy/sysctl/90-clarion.conf is one this kernel has (a typo would be
    ignored by `sysctl --system` with only a warning), and no value lowers a limit below the
    kernel's default here."""
    conf = (DEPLOY / "sysctl" / "90-clarion.conf").read_text()
    settings = dict(line.split(" = ", 1) for line in conf.splitlines()
                    if line and not line.startswith("#"))
    assert "net.core.somaxconn" in settings
    for key, value in settings.items():
        path = Path("/proc/sys") / key.replace(".", "/")
        if not path.exists():
            # tcp_migrate_req came with Linux 5.14; anything else missing is a typo.
            assert key == "net.ipv4.tcp_migrate_req", key
            continue
        if key in ("net.core.somaxconn", "fs.nr_open"):
            assert int(value) >= 4096, key
    low, high = map(int, settings["net.ipv4.ip_local_port_range"].split())
    assert high - low + 1 > 60999 - 32768 + 1  # wider than the kernel's default range


DEPLOYMENT_DOCS = ROOT / "docs" / "deployment"
# Pages other engineers write; their absence is theirs to fix, not a broken link of ours.
OTHERS_PAGES = {"nginx.md", "tls.md"}


def _slug(heading: str) -> str:
    text = re.sub(r"[`*]", "", heading.strip().lower())
    text = re.sub(r"[^\w\- ]", "", text)
    return text.replace(" ", "-")


def test_deployment_docs_links_resolve() -> None:
    pages = [p for p in DEPLOYMENT_DOCS.glob("*.md") if p.name not in OTHERS_PAGES]
    pages.append(ROOT / "docs" / "reference" / "metrics.md")
    assert {p.name for p in pages} >= {"index.md", "systemd.md", "supervisor.md",
                                       "postgresql.md", "redis.md", "monitoring.md",
                                       "from-daphne.md", "metrics.md"}
    for page in pages:
        text = page.read_text()
        for target in re.findall(r"\]\(([^)\s]+)\)", text):
            if target.startswith(("http://", "https://")):
                continue
            path, _, anchor = target.partition("#")
            file = (page.parent / path).resolve() if path else page
            if file.name in OTHERS_PAGES and not file.exists():
                continue
            assert file.exists(), f"{page.name}: {target}"
            if anchor and file.suffix == ".md":
                headings = re.findall(r"^#+ (.+)$", file.read_text(), re.MULTILINE)
                assert anchor in {_slug(h) for h in headings}, f"{page.name}: {target}"


def test_monitoring_page_lists_every_alert() -> None:
    doc = (DEPLOYMENT_DOCS / "monitoring.md").read_text()
    for group in yaml.safe_load(ALERTS.read_text())["groups"]:
        for rule in group["rules"]:
            assert f"`{rule['alert']}`" in doc, rule["alert"]
    count = sum(len(g["rules"]) for g in yaml.safe_load(ALERTS.read_text())["groups"])
    assert f"{count} alert rules" in doc
