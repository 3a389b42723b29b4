"""``clarion.django.proxy`` (issue 14 §3-4): the Django views that answer the hub's proxies.

The views run in tests/proxy_site under a real gunicorn (threaded workers, SQLite), and are
called over real HTTP in the hub's request shapes: first by httpx, as the hub would send them
(every answer, refusal and failure), then by a real hub (``clarion serve`` with its proxy
endpoints pointed at the site) driven by the npm ``centrifuge`` SDK in headless Chromium: a
user signs in on the Django page and the SDK connects with no token, because the browser sends
the session cookie to the hub too (both on 127.0.0.1, and cookies ignore ports).

The system checks run in this process (tests/webhook_apps settings, django_env).
"""

from __future__ import annotations

import contextlib
import json
import os
import subprocess
import sys
import time
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest

import django_env
from conftest import TESTS_DIR, _stop, _wait_until, free_port, in_ci

django_env.configure()

from django.core import checks  # noqa: E402
from django.core.exceptions import ImproperlyConfigured  # noqa: E402
from django.test import Client as DjangoClient  # noqa: E402
from django.test import override_settings  # noqa: E402

# proxy_site.realtime: the site's registrations, for the tests that call the views in this
# process (the served site imports it from its AppConfig.ready()).
import proxy_site.realtime  # noqa: E402, F401
from clarion.django.proxy import permissions  # noqa: E402
from clarion.django.proxy._patterns import specificity  # noqa: E402
from clarion.django.proxy.checks import check_proxy  # noqa: E402
from clarion.django.proxy.publishing import describe_errors  # noqa: E402
from test_browser import browser  # noqa: E402, F401  (fixture)

SECRET = "proxy-site-shared-secret-for-the-tests-" + "y" * 8
SECRET_HEADER = "X-Clarion-Proxy-Secret"
TTL = 3600
SUB_TTL = 600
T = 15.0


# -- the site under gunicorn -----------------------------------------------------------------


@dataclass
class Site:
    process: subprocess.Popen[bytes]
    port: int
    log: Path
    db: Path

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def output(self) -> str:
        return self.log.read_text(errors="replace") if self.log.exists() else ""

    def signup(self, name: str | None = None) -> Account:
        name = name or f"u{uuid.uuid4().hex[:10]}"
        with httpx.Client(base_url=self.url, timeout=T) as client:
            r = client.post("/signup/", data={"username": name})
            assert r.status_code == 200, r.text
            return Account(name, str(r.json()["id"]), client.cookies["sessionid"])

    def post(self, path: str, data: dict[str, str], cookie: str | None = None) -> None:
        headers = {"Cookie": f"sessionid={cookie}"} if cookie else {}
        r = httpx.post(f"{self.url}{path}", data=data, headers=headers, timeout=T)
        assert r.status_code == 200, r.text

    def proxy(self, kind: str, body: Any, *, cookie: str | None = None,
              secret: str | None = SECRET, headers: dict[str, str] | None = None,
              local_address: str | None = None, method: str = "POST") -> httpx.Response:
        """A request shaped as the hub sends it: JSON body, forwarded Cookie, static secret."""
        sent = {"Content-Type": "application/json", **(headers or {})}
        if cookie is not None:
            sent["Cookie"] = f"sessionid={cookie}"
        if secret is not None:
            sent[SECRET_HEADER] = secret
        content = body if isinstance(body, bytes) else json.dumps(body).encode()
        transport = httpx.HTTPTransport(local_address=local_address)
        with httpx.Client(transport=transport, timeout=T) as client:
            return client.request(method, f"{self.url}/clarion/{kind}/", content=content,
                                  headers=sent)


@dataclass
class Account:
    name: str
    id: str
    session: str


def site_env(db: Path, hub_ws: str = "", ttl: int = TTL, sub_ttl: int = SUB_TTL
             ) -> dict[str, str]:
    return {
        **os.environ,
        "DJANGO_SETTINGS_MODULE": "proxy_site.settings",
        "PYTHONPATH": os.pathsep.join([str(TESTS_DIR), os.environ.get("PYTHONPATH", "")]),
        "PROXY_SITE_DB": str(db), "PROXY_SITE_SECRET": SECRET,
        "PROXY_SITE_NETWORKS": "127.0.0.1/32",
        "PROXY_SITE_CONNECT_TTL": str(ttl), "PROXY_SITE_SUBSCRIBE_TTL": str(sub_ttl),
        **({"PROXY_SITE_HUB": hub_ws} if hub_ws else {}),
    }


@contextlib.contextmanager
def running_site(base: Path, *, hub_ws: str = "", workers: int = 1, threads: int = 8,
                 ttl: int = TTL, sub_ttl: int = SUB_TTL, access_log: bool = False,
                 worker_class: str = "gthread") -> Iterator[Site]:
    """tests/proxy_site migrated into a fresh SQLite file and served by gunicorn (threaded
    workers, or "sync": one request at a time per worker)."""
    base.mkdir(parents=True, exist_ok=True)
    db = base / "site.sqlite3"
    env = site_env(db, hub_ws, ttl, sub_ttl)
    migrate = subprocess.run([sys.executable, "-m", "django", "migrate", "--noinput"],
                             cwd=TESTS_DIR, env=env, capture_output=True, timeout=300)
    if migrate.returncode != 0:
        pytest.fail("proxy_site: migrate failed:\n"
                    + (migrate.stdout + migrate.stderr).decode(errors="replace"))
    port = free_port()
    log = base / f"gunicorn-{port}.log"
    with log.open("wb") as out:
        proc = subprocess.Popen(
            [sys.executable, "-m", "gunicorn", "--worker-class", worker_class,
             "--workers", str(workers), "--threads", str(threads), "--timeout", "120",
             "--graceful-timeout", "5", "--no-control-socket", "--bind", f"127.0.0.1:{port}",
             *(["--access-logfile", "-"] if access_log else []),
             "--chdir", str(TESTS_DIR), "proxy_site.wsgi:application"],
            stdout=out, stderr=subprocess.STDOUT, env=env, start_new_session=True)
    site = Site(proc, port, log, db)
    try:
        _wait_until(lambda: _answers(f"{site.url}/ping/"), proc, "gunicorn (proxy_site)",
                    site.output, 60)
        yield site
    finally:
        _stop(proc, group=True)


def _answers(url: str) -> bool:
    try:
        return httpx.get(url, timeout=1).status_code == 200
    except httpx.TransportError:
        return False


@pytest.fixture(scope="module")
def site(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Site]:
    with running_site(tmp_path_factory.mktemp("proxy-site")) as s:
        yield s


def hub_request(**fields: Any) -> dict[str, Any]:
    return {"client": str(uuid.uuid4()), "transport": "websocket", "protocol": "json",
            "encoding": "json", **fields}


def ok(response: httpx.Response) -> dict[str, Any]:
    assert response.status_code == 200, (response.status_code, response.text)
    assert response.headers["Content-Type"] == "application/json"
    assert response.headers["Cache-Control"] == "no-store"
    return response.json()  # type: ignore[no-any-return]


def near(value: int, expected: float) -> bool:
    """An expiry computed from "now" on the other side: within a generous minute (no timing
    assertion, only a unit check: seconds, not milliseconds)."""
    return abs(value - expected) < 60


# -- connect ---------------------------------------------------------------------------------


def test_connect_answers_the_session_user(site: Site) -> None:
    alice = site.signup()
    body = ok(site.proxy("connect", hub_request(channels=["chat:lobby", "vip:club",
                                                          "nowhere", "chat:lobby"]),
                         cookie=alice.session))
    result = body["result"]
    assert result["user"] == alice.id
    # {"username"} as the tickets give it, plus the CONNECT_INFO hook's keys.
    assert result["info"] == {"username": alice.name, "site": "proxy"}
    assert result["data"] == {"hello": alice.name}
    assert near(result["expire_at"], time.time() + TTL)
    # Only the asked-for channels the permission functions allow, once each.
    assert result["channels"] == ["chat:lobby"]
    assert "subs" not in result


def test_connect_channels_with_options_become_subs(site: Site) -> None:
    vip = site.signup(f"vip{uuid.uuid4().hex[:8]}")
    result = ok(site.proxy("connect", hub_request(channels=["vip:club", "chat:a"]),
                           cookie=vip.session))["result"]
    assert result["channels"] == ["chat:a"]
    assert result["subs"] == {"vip:club": {"info": {"vip": True},
                                           "data": {"welcome": "vip:club"}}}


def test_anonymous_connect_is_a_terminal_disconnect(site: Site) -> None:
    for cookie in (None, "not-a-session"):
        body = ok(site.proxy("connect", hub_request(), cookie=cookie))
        assert body == {"disconnect": {"code": 4501, "reason": "unauthorized"}}


def test_connect_hook_can_refuse(site: Site) -> None:
    banned = site.signup(f"banned{uuid.uuid4().hex[:6]}")
    assert ok(site.proxy("connect", hub_request(), cookie=banned.session)) == {
        "disconnect": {"code": 4503, "reason": "banned"}}


def test_logged_out_session_cannot_connect(site: Site) -> None:
    bob = site.signup()
    site.post("/logout/", {}, cookie=bob.session)
    body = ok(site.proxy("connect", hub_request(), cookie=bob.session))
    assert body["disconnect"]["code"] == 4501


# -- refresh ---------------------------------------------------------------------------------


def test_refresh_extends_an_active_user_and_ends_the_others(site: Site) -> None:
    carol = site.signup()
    result = ok(site.proxy("refresh", hub_request(user=carol.id)))["result"]
    assert near(result["expire_at"], time.time() + TTL)
    assert "expired" not in result
    # With the cookie forwarded, the session must still be hers.
    assert "expire_at" in ok(site.proxy("refresh", hub_request(user=carol.id),
                                        cookie=carol.session))["result"]
    dave = site.signup()
    assert ok(site.proxy("refresh", hub_request(user=carol.id), cookie=dave.session)) == {
        "result": {"expired": True}}
    site.post("/logout/", {}, cookie=carol.session)
    assert ok(site.proxy("refresh", hub_request(user=carol.id), cookie=carol.session)) == {
        "result": {"expired": True}}
    site.post("/deactivate/", {"username": dave.name})
    assert ok(site.proxy("refresh", hub_request(user=dave.id))) == {"result": {"expired": True}}
    for gone in ("999999999", "not-a-number", ""):
        assert ok(site.proxy("refresh", hub_request(user=gone))) == {
            "result": {"expired": True}}


# -- subscribe and sub_refresh ---------------------------------------------------------------


def test_subscribe_asks_the_permission_function(site: Site) -> None:
    erin = site.signup()
    result = ok(site.proxy("subscribe", hub_request(user=erin.id, channel="chat:lobby")))
    assert near(result["result"].pop("expire_at"), time.time() + SUB_TTL)
    assert result == {"result": {}}
    denied = {"error": {"code": 103, "message": "permission denied"}}
    # A function that says no; a channel no pattern matches; a user who is not there.
    assert ok(site.proxy("subscribe", hub_request(user=erin.id, channel="vip:club"))) == denied
    assert ok(site.proxy("subscribe", hub_request(user=erin.id, channel="other"))) == denied
    assert ok(site.proxy("subscribe", hub_request(user="0", channel="chat:lobby"))) == denied
    # Anonymous connections are not allowed by this site's settings.
    assert ok(site.proxy("subscribe", hub_request(channel="chat:lobby"))) == denied
    # A pattern from CLARION["PROXY"]["PERMISSIONS"] (a dotted path).
    assert "result" in ok(site.proxy("subscribe", hub_request(user=erin.id, channel="news:1")))


def test_subscribe_result_and_custom_answers_pass_through(site: Site) -> None:
    vip = site.signup(f"vip{uuid.uuid4().hex[:8]}")
    result = ok(site.proxy("subscribe", hub_request(user=vip.id, channel="vip:x")))["result"]
    assert result["info"] == {"vip": True} and result["data"] == {"welcome": "vip:x"}
    assert ok(site.proxy("subscribe", hub_request(user=vip.id, channel="custom:1"))) == {
        "error": {"code": 1403, "message": "members only"}}
    assert ok(site.proxy("subscribe", hub_request(user=vip.id, channel="kick:1"))) == {
        "disconnect": {"code": 4509, "reason": "kicked"}}


def test_sub_refresh_lasts_while_allowed(site: Site) -> None:
    frank = site.signup()
    result = ok(site.proxy("sub_refresh", hub_request(user=frank.id, channel="chat:lobby")))
    assert near(result["result"]["expire_at"], time.time() + SUB_TTL)
    for channel in ("vip:club", "nowhere", "custom:1", "kick:1"):
        assert ok(site.proxy("sub_refresh", hub_request(user=frank.id, channel=channel))) == {
            "result": {"expired": True}}, channel
    site.post("/logout/", {}, cookie=frank.session)
    assert ok(site.proxy("sub_refresh", hub_request(user=frank.id, channel="chat:lobby"),
                         cookie=frank.session)) == {"result": {"expired": True}}


# -- publish ---------------------------------------------------------------------------------


def test_publish_validates_with_a_form_and_rewrites(site: Site) -> None:
    gina = site.signup()
    sent = {"text": "  hello  ", "urgent": True, "extra": "dropped"}
    assert ok(site.proxy("publish", hub_request(user=gina.id, channel="chat:lobby",
                                                data=sent))) == {
        "result": {"data": {"text": "hello", "urgent": True}}}
    body = ok(site.proxy("publish", hub_request(user=gina.id, channel="chat:lobby",
                                                data={"text": "x" * 201})))
    assert body["error"]["code"] == 400
    assert body["error"]["message"].startswith("invalid data: text: Ensure this value has at "
                                               "most 200 characters")
    body = ok(site.proxy("publish", hub_request(user=gina.id, channel="chat:lobby",
                                                data={})))
    assert body == {"error": {"code": 400,
                              "message": "invalid data: text: This field is required."}}
    body = ok(site.proxy("publish", hub_request(user=gina.id, channel="chat:lobby",
                                                data=["not", "an", "object"])))
    assert body == {"error": {"code": 400,
                              "message": "invalid data: expected a JSON object, not an array"}}
    # Binary mode: the form cannot read bytes.
    body = ok(site.proxy("publish", hub_request(user=gina.id, channel="chat:lobby",
                                                b64data="aGk=")))
    assert body["error"]["message"].endswith("not binary data")


def test_publish_with_a_serializer_like_object(site: Site) -> None:
    hal = site.signup()
    assert ok(site.proxy("publish", hub_request(user=hal.id, channel="notes:1",
                                                data={"body": "b", "tags": ["t"]}))) == {
        "result": {"data": {"body": "b", "tags": ["t"], "author": hal.name}}}
    body = ok(site.proxy("publish", hub_request(user=hal.id, channel="notes:1",
                                                data={"body": "", "tags": 3})))
    assert body == {"error": {"code": 400, "message": "invalid data: body: A non-empty string "
                                                      "is required.; tags: Expected a list."}}
    denied = {"error": {"code": 103, "message": "permission denied"}}
    assert ok(site.proxy("publish", hub_request(user=hal.id, channel="notes:readonly",
                                                data={"body": "b"}))) == denied
    assert ok(site.proxy("publish", hub_request(user=hal.id, channel="unknown:1",
                                                data={"body": "b"}))) == denied
    # A form from settings (not rewriting): valid data is published as sent.
    assert ok(site.proxy("publish", hub_request(user=hal.id, channel="news:1",
                                                data={"headline": " h "}))) == {"result": {}}


# -- rpc -------------------------------------------------------------------------------------


def test_rpc_dispatches_to_registered_functions(site: Site) -> None:
    ian = site.signup()
    assert ok(site.proxy("rpc", hub_request(user=ian.id, method="whoami",
                                            data={"n": 1}))) == {
        "result": {"data": {"user": ian.name, "id": ian.id, "echo": {"n": 1},
                            "transport": "websocket"}}}
    assert ok(site.proxy("rpc", hub_request(user=ian.id, method="fail"))) == {
        "error": {"code": 1422, "message": "cannot do that"}}
    not_found = {"error": {"code": 104, "message": "method not found"}}
    assert ok(site.proxy("rpc", hub_request(user=ian.id, method="nope"))) == not_found
    assert ok(site.proxy("rpc", hub_request(user=ian.id))) == not_found  # unnamed
    # From CLARION["PROXY"]["RPC"].
    assert "time" in ok(site.proxy("rpc", hub_request(user=ian.id,
                                                      method="settings.time")))["result"]["data"]
    assert ok(site.proxy("rpc", hub_request(user=ian.id, method="public.ping"))) == {
        "result": {"data": "pong"}}


# -- failures in the project's code: logged, internal error, never the cookie ----------------


@pytest.mark.parametrize(("kind", "fields", "logged"), [
    ("subscribe", {"channel": "boom:1"}, "is broken"),
    ("rpc", {"method": "boom"}, "is broken"),
    ("rpc", {"method": "unencodable"}, "is not JSON serializable"),
])
def test_an_exception_is_an_internal_error_logged_with_traceback(
        site: Site, kind: str, fields: dict[str, str], logged: str) -> None:
    jo = site.signup()
    before = len(site.output())
    r = site.proxy(kind, hub_request(user=jo.id, **fields), cookie=jo.session)
    assert r.status_code == 500
    assert r.json() == {"error": {"code": 100, "message": "internal server error",
                                  "temporary": True}}
    assert "broken" not in r.text

    def in_log() -> bool:
        return logged in site.output()[before:]
    _wait_until(in_log, site.process, "the traceback in gunicorn's log", site.output, T)
    log = site.output()[before:]
    assert f"{kind} proxy failed" in log and "Traceback" in log
    assert jo.session not in site.output()


# -- the caller must be the hub --------------------------------------------------------------


def test_only_the_hub_may_call(site: Site) -> None:
    kim = site.signup()
    request = hub_request(user=kim.id, method="whoami")
    for secret in (None, "wrong", SECRET + "x", ""):
        r = site.proxy("rpc", request, secret=secret)
        assert r.status_code == 403, secret
        assert r.json() == {"detail": f"missing or wrong {SECRET_HEADER} header"}
    # The right secret from an address outside ALLOWED_NETWORKS (127.0.0.1/32).
    r = site.proxy("rpc", request, local_address="127.0.0.2")
    assert r.status_code == 403
    assert r.json() == {"detail": "this address may not call the proxy views"}
    # A forwarded-for header does not change who is calling.
    r = site.proxy("rpc", request, local_address="127.0.0.2",
                   headers={"X-Forwarded-For": "127.0.0.1", "X-Real-IP": "127.0.0.1"})
    assert r.status_code == 403
    # Refusals are logged, naming the header but never its value.
    assert f"the {SECRET_HEADER} header is wrong" in site.output()
    assert SECRET not in site.output()


def test_bad_requests_are_400_naming_the_problem(site: Site) -> None:
    cases: list[tuple[str, bytes, str]] = [
        ("connect", b"", "the request has no body; expected a JSON object"),
        ("connect", b"{not json", "the body is not JSON: "),
        ("connect", b"[1, 2]", "not a connect proxy request: Expected `object`, got `array`"),
        ("subscribe", json.dumps(hub_request(user="1")).encode(),
         "not a subscribe proxy request: Object missing required field `channel`"),
        ("subscribe", json.dumps(hub_request(user="1", channel=5)).encode(),
         "not a subscribe proxy request: Expected `str`, got `int` - at `$.channel`"),
        ("publish", json.dumps(hub_request(user="1", channel="")).encode(),
         "`channel` must not be empty"),
        ("rpc", json.dumps(hub_request(user="1", method="whoami", b64data="%%%")).encode(),
         "`b64data` is not base64"),
        ("connect", json.dumps(hub_request(channels="chat:a")).encode(),
         "Expected `array`, got `str` - at `$.channels`"),
    ]
    for kind, body, message in cases:
        r = site.proxy(kind, body)
        assert r.status_code == 400, (kind, body, r.text)
        assert message in r.json()["detail"], (r.json(), message)
    # Fields the views do not use are ignored (a newer hub may send more).
    assert ok(site.proxy("refresh", hub_request(user="0", future_field={"x": 1})))


def test_methods_other_than_post(site: Site) -> None:
    r = site.proxy("connect", b"", method="GET")
    assert r.status_code == 405 and r.headers["Allow"] == "POST"
    assert r.json() == {"detail": "method GET not allowed; the hub POSTs"}


def test_oversized_body_is_413(site: Site) -> None:
    # Django's DATA_UPLOAD_MAX_MEMORY_SIZE (2.5 MB by default) bounds the body.
    big = json.dumps(hub_request(user="1", channel="chat:a", data="x" * 3_000_000)).encode()
    r = site.proxy("publish", big)
    assert r.status_code == 413


# -- pure parts and system checks (in this process) ------------------------------------------


def test_most_specific_pattern_wins() -> None:
    assert specificity("chat:lobby") > specificity("chat:*") > specificity("*")
    assert specificity("chat:[ab]?") == 5
    def glob(call: Any) -> bool:
        return True

    def exact(call: Any) -> bool:
        return True

    def other(call: Any) -> bool:
        return True

    table = permissions._table
    try:
        permissions.register("spec:*", glob)
        permissions.register("spec:exact", exact)
        permissions.register("*:exact", other)  # as specific as spec:*, registered later
        assert table.find("spec:exact") is exact
        assert table.find("spec:other") is glob
        assert table.find("x:exact") is other
        assert table.find("nothing") is None
        with pytest.raises(ValueError, match="registered already"):
            permissions.register("spec:*", glob)
    finally:
        for pattern in ("spec:*", "spec:exact", "*:exact"):
            permissions.unregister(pattern)


def test_describe_errors_flattens_forms_and_serializers() -> None:
    assert describe_errors({"a": ["x", "y"], "non_field_errors": ["z"],
                            "nested": {"b": ["w"]}}) == "a: x; a: y; z; nested.b: w"
    assert describe_errors({}) == "rejected"


ROOT_WITH_PROXY = "proxy_site.urls"


@pytest.mark.parametrize(("proxy", "ids"), [
    ({"BOGUS": 1}, ["clarion.E401"]),
    ({"SECRET": ""}, ["clarion.E402"]),
    ({"SECRET_HEADER": "Bad Header"}, ["clarion.E402"]),
    ({"ALLOWED_NETWORKS": "10.0.0.0/8"}, ["clarion.E403"]),
    ({"ALLOWED_NETWORKS": ["10.0.0.0/8", "nope"]}, ["clarion.E403"]),
    ({"CONNECT_TTL": 0}, ["clarion.E404"]),
    ({"SUBSCRIBE_TTL": True}, ["clarion.E404"]),
    ({"ALLOW_ANONYMOUS": "yes"}, ["clarion.E404"]),
    ({"CONNECT_INFO": "nodots"}, ["clarion.E405"]),
    ({"SECRET": SECRET, "CONNECT_INFO": "proxy_site.realtime.missing"}, ["clarion.E405"]),
    ({"SECRET": SECRET, "RPC": {"x": "os.sep"}}, ["clarion.E405"]),
    ({"SECRET": SECRET, "PERMISSIONS": {"a:*": "no.such.module"}}, ["clarion.E405"]),
    ({}, ["clarion.E406"]),
    ({"SECRET": "short"}, ["clarion.W401"]),
    ({"SECRET": SECRET, "PERMISSIONS": {"a:*": "proxy_site.realtime.anyone_logged_in"}}, []),
    ({"ALLOWED_NETWORKS": ["127.0.0.1", "::1/128"]}, []),
])
def test_system_checks(proxy: dict[str, Any], ids: list[str]) -> None:
    with override_settings(CLARION={"PROXY": proxy}, ROOT_URLCONF=ROOT_WITH_PROXY):
        found = check_proxy()
    assert [m.id for m in found] == ids, [str(m) for m in found]
    assert all(isinstance(m, checks.Warning if i.startswith("clarion.W") else checks.Error)
               for m, i in zip(found, ids, strict=True))


def test_no_guard_is_an_error_only_when_the_views_are_mounted() -> None:
    with override_settings(CLARION={}, ROOT_URLCONF="webhook_apps.urls"):
        assert check_proxy() == []


# -- end to end: a hub asking the site, the SDK in Chromium ----------------------------------

KINDS = ("connect", "refresh", "subscribe", "publish", "sub_refresh", "rpc")


def hub_config(site: Site, *, retries: int = 1) -> str:
    """The hub's proxies pointed at the site's views, with the shared secret as a static
    header and the browser's Cookie forwarded (docs/topics/django-proxy.md shows the same)."""
    endpoints = "\n".join(f'proxy_{kind}_endpoint = "{site.url}/clarion/{kind}/"'
                          for kind in KINDS)
    return f"""
{endpoints}
proxy_http_headers = ["Cookie"]
proxy_retries = {retries}

[proxy_static_http_headers]
"{SECRET_HEADER}" = "{SECRET}"

[namespaces.chat]
proxy_subscribe = true
proxy_publish = true
proxy_sub_refresh = true

[namespaces.vip]
proxy_subscribe = true
"""


def open_site(chromium: Any, site: Site) -> tuple[Any, Any]:
    context = chromium.new_context()
    page = context.new_page()
    page.on("console", lambda m: print(f"[console.{m.type}] {m.text}"))
    page.on("pageerror", lambda e: print(f"[pageerror] {e}"))
    page.goto(f"{site.url}/")
    return context, page


def sign_in(page: Any, site: Site, name: str) -> None:
    """Sign up on the Django page: the browser keeps the session cookie."""
    page.evaluate("""async (name) => {
        const body = new URLSearchParams({username: name});
        const r = await fetch('/signup/', {method: 'POST', body: body});
        if (!r.ok) throw new Error('signup: ' + r.status);
    }""", name)
    page.reload()
    assert page.inner_text("#who") == name


def wait_for(page: Any, predicate_js: str, timeout: float = 15_000) -> list[dict[str, Any]]:
    try:
        page.wait_for_function(f"(window.events || []).some(e => {predicate_js})",
                               timeout=timeout)
    except Exception as exc:
        raise AssertionError(f"timed out waiting for {predicate_js}; events: "
                             f"{json.dumps(page.evaluate('window.events'), indent=1)}") from exc
    return page.evaluate("window.events")  # type: ignore[no-any-return]


def first(events: list[dict[str, Any]], **match: Any) -> dict[str, Any]:
    return next(e for e in events if all(e.get(k) == v for k, v in match.items()))


def hub_publish(hub: Any, channel: str, data: Any) -> None:
    r = hub.api("publish", {"channel": channel, "data": data})
    assert r.status_code == 200 and "error" not in r.json(), r.text


@pytest.mark.browser
def test_browser_connects_by_session_cookie(browser: Any, site: Site,  # noqa: F811
                                            hub_factory: Any) -> None:
    hub = hub_factory(hub_config(site))
    name = f"u{uuid.uuid4().hex[:8]}"
    context, page = open_site(browser, site)
    try:
        sign_in(page, site, name)
        page.evaluate("(url) => window.start(url)", hub.ws_url)
        events = wait_for(page, "e.type === 'connected'")
        assert first(events, type="connected")["data"] == {"hello": name}

        # A permitted channel, a refused one.
        page.evaluate("window.join('chat:lobby')")
        page.evaluate("window.join('vip:club')")
        wait_for(page, "e.type === 'subscribed' && e.channel === 'chat:lobby'")
        events = wait_for(page, "e.type === 'unsubscribed' && e.channel === 'vip:club'")
        assert first(events, type="unsubscribed", channel="vip:club")["code"] == 103

        # A publication through the form, rewritten (stripped, defaults filled in).
        page.evaluate("window.centrifuge.publish('chat:lobby', {text: '  hi  '})")
        events = wait_for(page, "e.type === 'pub' && e.channel === 'chat:lobby'")
        assert first(events, type="pub")["data"] == {"text": "hi", "urgent": False}
        page.evaluate("window.centrifuge.publish('chat:lobby', {}).catch(e => "
                      "window.events.push({type: 'pub_error', code: e.code, "
                      "message: e.message}))")
        events = wait_for(page, "e.type === 'pub_error'")
        assert first(events, type="pub_error") == {
            "type": "pub_error", "code": 400,
            "message": "invalid data: text: This field is required."}

        # RPC: a registered function, and a name nobody registered.
        page.evaluate("window.call('whoami', {n: 1})")
        page.evaluate("window.call('nope', null)")
        events = wait_for(page, "e.type === 'rpc'")
        result = first(events, type="rpc")["data"]
        assert result["user"] == name and result["echo"] == {"n": 1}
        events = wait_for(page, "e.type === 'rpc_error'")
        assert first(events, type="rpc_error")["code"] == 104

        # What the hub publishes reaches the subscription.
        hub_publish(hub, "chat:lobby", {"text": "from the server"})
        wait_for(page, "e.type === 'pub' && e.data.text === 'from the server'")
    finally:
        context.close()


@pytest.mark.browser
def test_browser_anonymous_user_is_refused(browser: Any, site: Site,  # noqa: F811
                                           hub_factory: Any) -> None:
    hub = hub_factory(hub_config(site))
    context, page = open_site(browser, site)
    try:
        page.evaluate("(url) => window.start(url)", hub.ws_url)
        events = wait_for(page, "e.type === 'disconnected'")
        assert first(events, type="disconnected") == {
            "type": "disconnected", "code": 4501, "reason": "unauthorized"}
        # Terminal: the SDK does not try again.
        assert page.evaluate("window.centrifuge.state") == "disconnected"
        assert not any(e["type"] == "connected" for e in page.evaluate("window.events"))
    finally:
        context.close()


@pytest.mark.browser
def test_backend_down_refuses_new_connections_and_the_hub_keeps_serving(
        browser: Any, hub_factory: Any, tmp_path: Path) -> None:  # noqa: F811
    with running_site(tmp_path / "site") as own:
        hub = hub_factory(hub_config(own, retries=0))
        first_context, first_page = open_site(browser, own)
        second_context, second_page = open_site(browser, own)
        try:
            sign_in(first_page, own, f"a{uuid.uuid4().hex[:8]}")
            sign_in(second_page, own, f"b{uuid.uuid4().hex[:8]}")
            first_page.evaluate("(url) => window.start(url)", hub.ws_url)
            wait_for(first_page, "e.type === 'connected'")
            first_page.evaluate("window.join('chat:room')")
            wait_for(first_page, "e.type === 'subscribed'")

            _stop(own.process, group=True)  # the Django backend goes away

            # A new connection gets the hub's internal error (100, temporary): the SDK
            # reports it and keeps trying, with its backoff.
            second_page.evaluate("(url) => window.start(url)", hub.ws_url)
            events = wait_for(second_page, "e.type === 'error'")
            assert first(events, type="error")["code"] == 100
            assert second_page.evaluate("window.centrifuge.state") == "connecting"
            assert not any(e["type"] == "connected" for e in events)

            # The client connected before keeps being served.
            hub_publish(hub, "chat:room", {"text": "still here"})
            wait_for(first_page, "e.type === 'pub' && e.data.text === 'still here'")
            # What needs the backend fails for it alone, with the same temporary error.
            first_page.evaluate("window.call('whoami', null)")
            events = wait_for(first_page, "e.type === 'rpc_error'")
            assert first(events, type="rpc_error")["code"] == 100
            assert first_page.evaluate("window.centrifuge.state") == "connected"
        finally:
            first_context.close()
            second_context.close()


@pytest.mark.browser
def test_connection_lasts_while_the_session_does(
        browser: Any, hub_factory: Any, tmp_path: Path) -> None:  # noqa: F811
    """Short expiries: the hub asks refresh and sub_refresh, the views extend while the user is
    signed in; after the user signs out in Django, the next refresh ends the connection and the
    SDK's reconnect is refused for good. Served by gunicorn's sync workers."""
    with running_site(tmp_path / "site", ttl=2, sub_ttl=2, access_log=True,
                      worker_class="sync", workers=2) as own:
        hub = hub_factory(hub_config(own))
        context, page = open_site(browser, own)
        try:
            sign_in(page, own, f"r{uuid.uuid4().hex[:8]}")
            page.evaluate("(url) => window.start(url)", hub.ws_url)
            wait_for(page, "e.type === 'connected'")
            page.evaluate("window.join('chat:room')")
            wait_for(page, "e.type === 'subscribed'")

            def refreshed(kind: str, times: int) -> Callable[[], bool]:
                return lambda: own.output().count(f"POST /clarion/{kind}/ ") >= times
            _wait_until(refreshed("refresh", 2), own.process, "two refreshes", own.output, T)
            _wait_until(refreshed("sub_refresh", 2), own.process, "two sub_refreshes",
                        own.output, T)
            events = page.evaluate("window.events")
            assert not any(e["type"] in ("disconnected", "unsubscribed") for e in events)
            assert page.evaluate("window.centrifuge.state") == "connected"

            page.evaluate("fetch('/logout/', {method: 'POST'})")
            events = wait_for(page, "e.type === 'disconnected'")
            assert first(events, type="disconnected") == {
                "type": "disconnected", "code": 4501, "reason": "unauthorized"}
            # It went through an expiry (the connection's or the subscription's) first.
            assert any(e["type"] == "connecting" and e["code"] in (3005, 3006)
                       for e in events), events
        finally:
            context.close()


def test_anonymous_connections_when_allowed(caplog: pytest.LogCaptureFixture) -> None:
    """ALLOW_ANONYMOUS, in this process with Django's test client (no database: an anonymous
    caller has no session to load)."""
    client = DjangoClient()  # REMOTE_ADDR 127.0.0.1

    def post(kind: str, body: dict[str, Any]) -> dict[str, Any]:
        r = client.post(f"/clarion/{kind}/", body, content_type="application/json")
        assert r.status_code == 200, r.content
        return r.json()  # type: ignore[no-any-return]

    conf = {"ALLOWED_NETWORKS": ["127.0.0.1"], "ALLOW_ANONYMOUS": True}
    with override_settings(CLARION={"PROXY": conf}, ROOT_URLCONF=ROOT_WITH_PROXY):
        assert post("connect", hub_request()) == {"result": {"user": ""}}
        denied = {"error": {"code": 103, "message": "permission denied"}}
        assert post("subscribe", hub_request(channel="public:x")) == {"result": {}}
        assert post("subscribe", hub_request(channel="chat:x")) == denied  # needs a login
        assert post("rpc", hub_request(method="public.ping")) == {"result": {"data": "pong"}}
        assert post("rpc", hub_request(method="whoami")) == denied  # login_required
        assert post("refresh", hub_request())["result"]["expire_at"] > time.time()
        assert post("sub_refresh", hub_request(channel="public:x"))["result"][
            "expire_at"] > time.time()

    # A hook that does not import: the operator's mistake, seen (500, logged, and Django's
    # got_request_exception sent, which the test client turns back into the exception).
    broken = {**conf, "CONNECT_INFO": "proxy_site.realtime.no_such_hook"}
    with override_settings(CLARION={"PROXY": broken}, ROOT_URLCONF=ROOT_WITH_PROXY), \
            caplog.at_level("ERROR", logger="clarion.django.proxy"):
        with pytest.raises(ImproperlyConfigured, match="no_such_hook"):
            client.post("/clarion/connect/", hub_request(), content_type="application/json")
        quiet = DjangoClient(raise_request_exception=False)
        r = quiet.post("/clarion/connect/", hub_request(), content_type="application/json")
    assert r.status_code == 500
    assert r.json()["error"]["code"] == 100
    assert "cannot import 'proxy_site.realtime.no_such_hook'" in caplog.text


# -- the fallback transports: the cookie goes with them only on the page's own origin --------

@pytest.mark.browser
def test_fallback_transports_connect_by_cookie_on_the_same_origin(
        browser: Any, site: Site, hub_factory: Any, tmp_path: Path) -> None:  # noqa: F811
    """centrifuge-js's HTTP-streaming and SSE transports send cookies to their own origin only
    (fetch with credentials "same-origin", EventSource without withCredentials), unlike a
    WebSocket, which any same-site port gets them. On another port the connect proxy sees no
    session: 4501. Behind the shipped nginx site, page and hub share an origin and both
    transports connect as the signed-in user."""
    from deploy_app.nginx import (
        Nginx,
        SitePorts,
        make_certificate,
        nginx_available,
    )

    hub = hub_factory(hub_config(site), env={
        "CLARION_ALLOWED_ORIGINS": "http://127.0.0.1:*,https://127.0.0.1:*"})
    transports = {
        "http_stream": "/connection/http_stream",
        "sse": "/connection/sse",
    }

    # Another port: no cookie reaches the hub.
    context, page = open_site(browser, site)
    try:
        sign_in(page, site, f"p{uuid.uuid4().hex[:8]}")
        page.evaluate("([url, emu]) => window.start([{transport: 'http_stream', "
                      "endpoint: url}], {emulationEndpoint: emu})",
                      [f"{hub.url}/connection/http_stream", f"{hub.url}/emulation"])
        events = wait_for(page, "e.type === 'disconnected'")
        assert first(events, type="disconnected")["code"] == 4501
    finally:
        context.close()

    ok_, why = nginx_available()
    if not ok_:
        if in_ci():
            pytest.fail(f"{why}; CI must run scripts/install-test-deps")
        pytest.skip(why)
    ports = SitePorts(https=free_port(), http=free_port(), hub=hub.port, grip=free_port(),
                      app=site.port)
    nginx = Nginx(tmp_path / "nginx", ports, make_certificate(tmp_path / "cert"))
    nginx.start()
    try:
        # Through nginx the proxy views are as reachable as any page: the address check
        # passes (REMOTE_ADDR is nginx's 127.0.0.1), the secret does not.
        r = httpx.post(f"{nginx.url}/clarion/rpc/", verify=False, timeout=T,
                       json=hub_request(user="1", method="whoami"))
        assert r.status_code == 403, r.text

        for transport, path in transports.items():
            name = f"{transport[:2]}{uuid.uuid4().hex[:8]}"
            context = browser.new_context(ignore_https_errors=True)
            page = context.new_page()
            page.on("console", lambda m: print(f"[console.{m.type}] {m.text}"))
            try:
                page.goto(f"{nginx.url}/")
                sign_in(page, site, name)
                page.evaluate("([kind, path]) => window.start([{transport: kind, "
                              "endpoint: path}])", [transport, path])
                events = wait_for(page, "e.type === 'connected'")
                connected = first(events, type="connected")
                assert connected["transport"] == transport
                assert connected["data"] == {"hello": name}
                page.evaluate("window.join('chat:lobby')")
                page.evaluate("window.join('vip:club')")
                wait_for(page, "e.type === 'subscribed' && e.channel === 'chat:lobby'")
                events = wait_for(page, "e.type === 'unsubscribed' && e.channel === 'vip:club'")
                assert first(events, type="unsubscribed", channel="vip:club")["code"] == 103
                page.evaluate("window.call('whoami', null)")
                events = wait_for(page, "e.type === 'rpc'")
                # The proxy request names the transport as Centrifugo does (and
                # docs/reference/proxy-protocol.md): bidirectional SSE is "sse".
                assert first(events, type="rpc")["data"]["transport"] == transport
            finally:
                context.close()
    finally:
        nginx.stop()
