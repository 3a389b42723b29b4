"""clarion.connect without Django: the safe fetcher, discovery, registration, the OAuth flows and
the actions, against real HTTP servers on 127.0.0.1.

The edge cases run against tests/connect_servers.py (tiny servers that misbehave on purpose);
the flows against the real authlib providers of tests/providers (pump.io-shaped OAuth 1.0a,
Mastodon-shaped and generic OAuth 2), the authorize step driven with plain httpx through the
providers' auto-approve switch. The address policy allows 127.0.0.0/8 and plain http only where
a test says so.
"""

from __future__ import annotations

import asyncio
import json
import threading
from collections.abc import Iterator
from pathlib import Path
from urllib.parse import parse_qs, urlsplit

import httpx
import pytest

from clarion.connect import (
    AsyncFetcher,
    ClientCredentials,
    Fetcher,
    OAuth1Flow,
    OAuth2Flow,
    Server,
    Tokens,
    adiscover,
    discover,
    parse_identifier,
    post_note,
    register,
    session,
    whoami,
)
from clarion.errors import (
    AuthorizationError,
    ClarionError,
    ConnectError,
    DiscoveryError,
    FetchError,
    OAuthTokenError,
    RegistrationError,
    RevokedError,
)
from clarion.webhooks.addresses import AddressPolicy
from connect_servers import (
    DocServer,
    answer,
    as_json,
    chunked,
    drip,
    gzip_answer,
    gzip_bomb,
    make_tls,
    redirect,
    running,
    slow,
)
from providers.mastodon import running_mastodon_provider
from providers.oauth2 import running_oauth2_provider
from providers.pump import running_pump_provider

LOOPBACK = ["127.0.0.0/8", "::1/128"]
XRD_NS = "http://docs.oasis-open.org/ns/xri/xrd-1.0"
CALLBACK = "http://site.example/connect/callback/"


def loopback_fetcher(**kwargs: object) -> Fetcher:
    options: dict[str, object] = {"allow_http": True, "timeout": 5.0}
    options.update(kwargs)
    return Fetcher(AddressPolicy(LOOPBACK), **options)  # type: ignore[arg-type]


def names(table: dict[str, list[str]], allowed: list[str] | None = None) -> AddressPolicy:
    """A policy whose resolver answers ``table`` (fake DNS: the names exist nowhere else)."""
    async def resolver(host: str, port: int) -> list[str]:
        return table[host]
    return AddressPolicy(LOOPBACK if allowed is None else allowed, resolver=resolver)


@pytest.fixture
def docs() -> Iterator[DocServer]:
    with running() as server:
        yield server


@pytest.fixture
def fetcher() -> Iterator[Fetcher]:
    f = loopback_fetcher()
    yield f
    f.close()


# -- errors ------------------------------------------------------------------------------------

def test_the_connect_errors_are_one_tree_with_a_reason() -> None:
    for cls in (FetchError, DiscoveryError, RegistrationError, AuthorizationError,
                OAuthTokenError, RevokedError):
        assert issubclass(cls, ConnectError) and issubclass(cls, ClarionError)
        assert cls("the reason").reason == "the reason"
    assert issubclass(RevokedError, OAuthTokenError)
    assert RevokedError("gone", client_revoked=True).client_revoked


# -- identifiers -------------------------------------------------------------------------------

@pytest.mark.parametrize(("typed", "expected"), [
    ("alice@pump.example", ("acct:alice@pump.example", "pump.example")),
    ("  Alice@Pump.Example ", ("acct:Alice@pump.example", "pump.example")),
    ("acct:alice@pump.example", ("acct:alice@pump.example", "pump.example")),
    ("@bob@mastodon.example", ("acct:bob@mastodon.example", "mastodon.example")),
    ("alice@127.0.0.1:8000", ("acct:alice@127.0.0.1:8000", "127.0.0.1:8000")),
    ("https://mastodon.example/@bob", ("https://mastodon.example/@bob", "mastodon.example")),
    ("http://127.0.0.1:9000/users/carol", ("http://127.0.0.1:9000/users/carol",
                                           "127.0.0.1:9000")),
])
def test_parse_identifier_accepts_the_forms_users_type(typed: str,
                                                       expected: tuple[str, str]) -> None:
    assert parse_identifier(typed) == expected


@pytest.mark.parametrize("typed", [
    "", "   ", "alice", "@bob", "alice@", "@pump.example", "acct:", "alice@host/path",
    "alice@host?x", "https://user:pw@host/alice", "https://host:99999/x", "a b@host",
])
def test_parse_identifier_refuses_what_is_no_account(typed: str) -> None:
    with pytest.raises(DiscoveryError) as info:
        parse_identifier(typed)
    assert "pw" not in info.value.reason


# -- the fetcher: addresses ----------------------------------------------------------------------

def test_get_json_reads_a_document(docs: DocServer, fetcher: Fetcher) -> None:
    docs.route("/doc", as_json({"hello": "world"}))
    assert fetcher.get_json(f"{docs.url}/doc") == {"hello": "world"}
    seen = docs.seen[-1]
    assert seen.headers["user-agent"].startswith("Clarion/")
    assert "json" in seen.headers["accept"]


def test_loopback_is_refused_unless_the_policy_allows_it(docs: DocServer) -> None:
    docs.route("/doc", as_json({}))
    with Fetcher(AddressPolicy(), allow_http=True) as strict, \
            pytest.raises(FetchError) as info:
        strict.get_json(f"{docs.url}/doc")
    assert "loopback" in info.value.reason and "127.0.0.1" in info.value.reason
    assert docs.seen == []  # refused before any connection


def test_plain_http_is_refused_unless_allowed(docs: DocServer) -> None:
    docs.route("/doc", as_json({}))
    with Fetcher(AddressPolicy(LOOPBACK)) as https_only, pytest.raises(FetchError) as info:
        https_only.get_json(f"{docs.url}/doc")
    assert "plain http" in info.value.reason
    with pytest.raises(FetchError, match="scheme 'ftp'"), loopback_fetcher() as f:
        f.get_json("ftp://127.0.0.1/doc")
    assert docs.seen == []


def test_the_dial_goes_to_the_vetted_address_and_the_name_stays_in_host(docs: DocServer) -> None:
    # pump.test exists only in this policy's resolver: reaching the server proves the socket
    # went to the address the policy returned, and the request still names the host.
    docs.route("/doc", as_json({"ok": True}))
    with Fetcher(names({"pump.test": ["127.0.0.1"]}), allow_http=True) as f:
        assert f.get_json(f"http://pump.test:{docs.port}/doc") == {"ok": True}
    assert docs.seen[-1].headers["host"] == f"pump.test:{docs.port}"


def test_a_name_that_resolves_to_a_forbidden_address_is_refused_at_dial_time(
        docs: DocServer) -> None:
    # The URL passes the static check (a name); its DNS answer (rebound to loopback) does not.
    docs.route("/doc", as_json({}))
    with Fetcher(names({"rebind.test": ["127.0.0.1"]}, allowed=[]), allow_http=True) as f, \
            pytest.raises(FetchError) as info:
        f.get_json(f"http://rebind.test:{docs.port}/doc")
    assert "forbidden" in info.value.reason and "127.0.0.1" in info.value.reason
    assert docs.seen == []


def test_forbidden_answers_of_a_name_are_dropped_and_an_allowed_one_is_dialled(
        docs: DocServer) -> None:
    docs.route("/doc", as_json({"ok": 1}))
    policy = names({"mixed.test": ["10.0.0.1", "127.0.0.1"]}, allowed=["127.0.0.1/32"])
    with Fetcher(policy, allow_http=True) as f:
        assert f.get_json(f"http://mixed.test:{docs.port}/doc") == {"ok": 1}


def test_a_client_for_authlib_is_pinned_too(docs: DocServer) -> None:
    docs.route("/doc", as_json({}))
    with Fetcher(AddressPolicy(), allow_http=True) as strict, strict.client() as client, \
            pytest.raises(FetchError, match="loopback"):
        client.get(f"{docs.url}/doc")
    with loopback_fetcher() as f, f.client() as client:
        assert client.get(f"{docs.url}/doc").status_code == 200
        with pytest.raises(FetchError, match="plain http"), Fetcher(
                AddressPolicy(LOOPBACK)).client() as https_only:
            https_only.get(f"{docs.url}/doc")


# -- the fetcher: TLS ------------------------------------------------------------------------

@pytest.fixture
def tls_docs(tmp_path: Path) -> Iterator[tuple[DocServer, Path]]:
    tls = make_tls(tmp_path, "pump.test")
    with running(tls.server_context) as server:
        yield server, tls.ca_file


def test_tls_verifies_the_name_while_dialling_the_vetted_address(
        tls_docs: tuple[DocServer, Path]) -> None:
    docs, ca_file = tls_docs
    docs.route("/doc", as_json({"tls": True}))
    policy = names({"pump.test": ["127.0.0.1"]})
    with Fetcher(policy, verify=str(ca_file)) as f:
        assert f.get_json(f"https://pump.test:{docs.port}/doc") == {"tls": True}


def test_a_certificate_nobody_trusts_is_a_fetch_error(tls_docs: tuple[DocServer, Path]) -> None:
    docs, _ = tls_docs
    docs.route("/doc", as_json({}))
    with Fetcher(names({"pump.test": ["127.0.0.1"]})) as f, pytest.raises(FetchError) as info:
        f.get_json(f"https://pump.test:{docs.port}/doc")
    assert "TLS" in info.value.reason


def test_a_redirect_from_https_to_plain_http_is_refused(tls_docs: tuple[DocServer, Path]) -> None:
    docs, ca_file = tls_docs
    docs.route("/doc", redirect(f"http://pump.test:{docs.port}/plain"))
    with Fetcher(names({"pump.test": ["127.0.0.1"]}), verify=str(ca_file),
                 allow_http=True) as f, pytest.raises(FetchError) as info:
        f.get_json(f"https://pump.test:{docs.port}/doc")
    assert "https to plain http" in info.value.reason


# -- the fetcher: size -------------------------------------------------------------------------

def test_a_body_of_exactly_max_bytes_is_read_one_more_is_refused(docs: DocServer) -> None:
    limit = 1000
    body = b'"' + b"x" * (limit - 2) + b'"'
    docs.route("/exact", answer(200, body))
    docs.route("/over", answer(200, body + b" "))
    with loopback_fetcher(max_bytes=limit) as f:
        assert len(f.get(f"{docs.url}/exact", accept="*/*").content) == limit
        with pytest.raises(FetchError) as info:
            f.get(f"{docs.url}/over", accept="*/*")
    assert "larger than the limit of 1,000 bytes" in info.value.reason


def test_the_size_cap_holds_while_streaming_without_content_length(docs: DocServer) -> None:
    docs.route("/huge", chunked(50_000_000))
    with loopback_fetcher(max_bytes=100_000) as f, pytest.raises(FetchError, match="larger"):
        f.get(f"{docs.url}/huge", accept="*/*")


def test_a_compressed_answer_is_capped_on_its_decoded_size(docs: DocServer) -> None:
    docs.route("/bomb", gzip_bomb(20_000_000))  # about 20 kB on the wire
    with loopback_fetcher(max_bytes=1_000_000) as f, pytest.raises(FetchError, match="larger"):
        f.get(f"{docs.url}/bomb", accept="*/*")


def test_a_session_client_caps_answers_too(docs: DocServer) -> None:
    docs.route("/huge", chunked(5_000_000))
    with loopback_fetcher(max_bytes=10_000) as f, f.client() as client, \
            pytest.raises(FetchError, match="larger"):
        client.get(f"{docs.url}/huge")


def test_a_compressed_answer_to_a_post_is_capped_on_its_decoded_size(docs: DocServer) -> None:
    # Registration posts; the transport decodes under the cap, not httpx after it.
    docs.route("/register", gzip_bomb(20_000_000))
    docs.route("/small", gzip_answer(b'{"client_id": "c1"}'))
    with loopback_fetcher(max_bytes=1_000_000) as f:
        assert f.post(f"{docs.url}/small", json={}).json() == {"client_id": "c1"}
        with pytest.raises(FetchError, match="larger than the limit of 1,000,000 bytes"):
            f.post(f"{docs.url}/register", json={"client_name": "x"})


def test_a_compressed_answer_in_an_oauth_session_is_capped(docs: DocServer) -> None:
    docs.route("/api/v1/accounts/verify_credentials", gzip_bomb(20_000_000))
    server = Server(host=docs.host, base_url=docs.url, protocol="oauth2", kind="mastodon",
                    token_endpoint=f"{docs.url}/oauth/token")
    with loopback_fetcher(max_bytes=1_000_000) as f, \
            session(server, ClientCredentials("id", "secret"), Tokens("token"), f) as http, \
            pytest.raises(FetchError, match="larger"):
        whoami(server, http)


def test_an_encoding_the_transport_cannot_cap_is_refused(docs: DocServer) -> None:
    docs.route("/br", answer(200, b"\x0b\x02\x80{}\x03", headers={"Content-Encoding": "br"}))
    with loopback_fetcher() as f, f.client() as client, \
            pytest.raises(FetchError, match="compressed with 'br'"):
        client.get(f"{docs.url}/br")


# -- the fetcher: time -------------------------------------------------------------------------

def test_a_server_that_does_not_answer_in_time_is_a_fetch_error(docs: DocServer) -> None:
    docs.route("/slow", slow(3.0, as_json({})))
    with loopback_fetcher(timeout=0.5) as f, pytest.raises(FetchError) as info:
        f.get_json(f"{docs.url}/slow?token=SECRET")
    assert "no answer within 0.5 s" in info.value.reason
    assert "SECRET" not in info.value.reason and f"{docs.url}/slow" in info.value.reason


def test_a_body_that_drips_is_cut_by_the_total_timeout(docs: DocServer) -> None:
    # Each byte comes well within the read timeout; the whole would take 20 s.
    docs.route("/drip", drip(0.1, 200))
    with loopback_fetcher(timeout=1.0) as f, pytest.raises(FetchError, match="within 1 s"):
        f.get(f"{docs.url}/drip", accept="*/*")


def test_a_post_whose_answer_drips_is_cut_by_the_request_deadline(docs: DocServer) -> None:
    # Every byte within the read timeout; the whole answer would take 20 s.
    docs.route("/token", drip(0.1, 200))
    with loopback_fetcher(timeout=1.0) as f, pytest.raises(FetchError, match="within 1 s"):
        f.post(f"{docs.url}/token", data={"grant_type": "authorization_code"})


def test_a_session_call_whose_answer_drips_is_cut_by_the_request_deadline(
        docs: DocServer) -> None:
    docs.route("/api/v1/accounts/verify_credentials", drip(0.1, 200))
    server = Server(host=docs.host, base_url=docs.url, protocol="oauth2", kind="mastodon",
                    token_endpoint=f"{docs.url}/oauth/token")
    with loopback_fetcher(timeout=1.0) as f, \
            session(server, ClientCredentials("id", "secret"), Tokens("token"), f) as http, \
            pytest.raises(FetchError, match="within 1 s"):
        whoami(server, http)


def test_a_401_of_the_token_endpoint_on_refresh_is_the_clients_not_the_accounts(
        docs: DocServer) -> None:
    # The 401 hook is for the account's token on API calls; authlib's refresh request is
    # judged by its error: invalid_client is the client revoked, unauthorized_client is not.
    server = Server(host=docs.host, base_url=docs.url, protocol="oauth2", kind="mastodon",
                    token_endpoint=f"{docs.url}/oauth/token")
    expired = Tokens("old", refresh_token="r1", expires_at=1)
    docs.route("/oauth/token", answer(401, json.dumps({"error": "invalid_client"})))
    with loopback_fetcher() as f, \
            session(server, ClientCredentials("id", "secret"), expired, f) as http, \
            pytest.raises(RevokedError) as info:
        whoami(server, http)
    assert info.value.client_revoked
    docs.route("/oauth/token", answer(400, json.dumps({"error": "unauthorized_client"})))
    with loopback_fetcher() as f, \
            session(server, ClientCredentials("id", "secret"), expired, f) as http, \
            pytest.raises(OAuthTokenError, match="unauthorized_client"):
        whoami(server, http)


def test_a_hanging_resolver_is_given_up_on_without_waiting_for_its_thread() -> None:
    # getaddrinfo runs in an executor thread that asyncio.run waited for at shutdown: the
    # fetch must come back (a FetchError) while the lookup is still stuck.
    release, finished = threading.Event(), threading.Event()

    def stuck_lookup() -> list[str]:
        release.wait(60)
        finished.set()
        return ["127.0.0.1"]

    async def resolver(host: str, port: int) -> list[str]:
        return await asyncio.get_running_loop().run_in_executor(None, stuck_lookup)

    policy = AddressPolicy(LOOPBACK, resolver=resolver, dns_timeout=0.5)
    try:
        with Fetcher(policy, allow_http=True, timeout=5.0) as f, \
                pytest.raises(FetchError, match=r"no answer within 0\.5 s"):
            f.get("http://stuck.example/doc", accept="*/*")
        assert not finished.is_set()
    finally:
        release.set()


def test_a_closed_port_is_a_fetch_error(docs: DocServer) -> None:
    port = docs.port
    docs.server.shutdown()
    docs.server.server_close()
    with loopback_fetcher() as f, pytest.raises(FetchError, match="cannot connect"):
        f.get_json(f"http://127.0.0.1:{port}/doc")


# -- the fetcher: redirects and documents ------------------------------------------------------

def test_redirects_are_followed_up_to_the_limit(docs: DocServer) -> None:
    for i in range(4):
        docs.route(f"/r{i}", redirect(f"/r{i + 1}"))
    docs.route("/r4", as_json({"end": True}))
    with loopback_fetcher(max_redirects=3) as f:
        assert f.get_json(f"{docs.url}/r1") == {"end": True}  # r1 r2 r3 r4: 3 hops
        with pytest.raises(FetchError) as info:
            f.get_json(f"{docs.url}/r0")
    assert "more than 3 redirects" in info.value.reason


@pytest.mark.parametrize("location", [
    "http://10.0.0.1/admin", "http://169.254.169.254/latest/meta-data/",
    "http://127.0.0.2:{port}/doc", "http://[::1]:{port}/doc", "ftp://127.0.0.1/doc",
    "http://0x7f.1/doc",
])
def test_a_redirect_to_a_forbidden_place_is_refused(docs: DocServer, location: str) -> None:
    # Only 127.0.0.1 itself is allowed: the server's address, and nothing next to it.
    docs.route("/doc", redirect(location.format(port=docs.port)))
    with Fetcher(AddressPolicy(["127.0.0.1/32"]), allow_http=True) as f, \
            pytest.raises(FetchError) as info:
        f.get_json(f"{docs.url}/doc")
    assert "redirects to a forbidden place" in info.value.reason
    assert len(docs.seen) == 1


def test_a_redirect_to_loopback_is_refused_when_loopback_is_not_allowed() -> None:
    # The server listens on 127.0.0.2 and only that address is allowed: 127.0.0.1 (where
    # Redis, the hub and the site itself listen) is not, whatever port.
    with running(address="127.0.0.2") as docs:
        docs.route("/doc", redirect("http://127.0.0.1:6379/"))
        docs.route("/name", redirect("http://localhost:6379/"))
        with Fetcher(AddressPolicy(["127.0.0.2/32"]), allow_http=True) as f:
            for path in ("/doc", "/name"):
                with pytest.raises(FetchError) as info:
                    f.get_json(f"{docs.url}{path}")
                assert "redirects to a forbidden place" in info.value.reason
                assert "loopback" in info.value.reason
        assert docs.paths() == ["/doc", "/name"]


def test_malformed_documents_are_fetch_errors_that_say_where(docs: DocServer,
                                                             fetcher: Fetcher) -> None:
    docs.route("/garbage", answer(200, b"<html>not json</html>", "text/html"))
    docs.route("/array", as_json([1, 2]))
    docs.route("/error", answer(500, b"oops", "text/plain"))
    with pytest.raises(FetchError) as info:
        fetcher.get_json(f"{docs.url}/garbage?secret=1")
    assert "not valid JSON" in info.value.reason and f"{docs.url}/garbage" in info.value.reason
    assert "secret" not in info.value.reason
    with pytest.raises(FetchError, match="not an object"):
        fetcher.get_json(f"{docs.url}/array")
    with pytest.raises(FetchError, match="answered 500"):
        fetcher.get_json(f"{docs.url}/error")


def test_the_async_fetcher_has_the_same_limits(docs: DocServer) -> None:
    docs.route("/doc", as_json({"a": 1}))
    docs.route("/huge", chunked(5_000_000))
    docs.route("/slow", slow(3.0, as_json({})))
    docs.route("/away", redirect("http://10.1.2.3/"))

    async def run() -> None:
        async with AsyncFetcher(AddressPolicy(LOOPBACK), allow_http=True, timeout=0.5,
                                max_bytes=10_000) as f:
            assert await f.get_json(f"{docs.url}/doc") == {"a": 1}
            with pytest.raises(FetchError, match="larger"):
                await f.get(f"{docs.url}/huge", accept="*/*")
            with pytest.raises(FetchError, match=r"within 0\.5 s"):
                await f.get_json(f"{docs.url}/slow")
            with pytest.raises(FetchError, match="forbidden place"):
                await f.get_json(f"{docs.url}/away")
        async with AsyncFetcher(AddressPolicy(), allow_http=True) as strict:
            with pytest.raises(FetchError, match="loopback"):
                await strict.get_json(f"{docs.url}/doc")

    asyncio.run(run())


def test_the_sync_fetcher_works_inside_a_running_event_loop(docs: DocServer) -> None:
    # A sync view called from async code: the policy's resolver (a coroutine) cannot use the
    # running loop, so it gets its own thread.
    docs.route("/doc", as_json({"ok": True}))

    async def run() -> None:
        with Fetcher(names({"pump.test": ["127.0.0.1"]}), allow_http=True) as f:
            assert f.get_json(f"http://pump.test:{docs.port}/doc") == {"ok": True}

    asyncio.run(run())


# -- discovery with purpose-built servers -------------------------------------------------------

def pump_links(base: str) -> list[dict[str, str]]:
    return [
        {"rel": "lrdd", "type": "application/json",
         "template": f"{base}/.well-known/webfinger?resource={{uri}}"},
        {"rel": "registration_endpoint", "href": f"{base}/api/client/register"},
        *({"rel": f"http://apinamespace.org/oauth/{name}", "href": f"{base}/oauth/{name}"}
          for name in ("request_token", "authorize", "access_token")),
    ]


def xrd(links: list[dict[str, str]]) -> str:
    body = "".join("<Link " + " ".join(f'{k}="{v}"' for k, v in link.items()) + " />"
                   for link in links)
    return f"<?xml version='1.0' encoding='UTF-8'?><XRD xmlns='{XRD_NS}'>{body}</XRD>"


BILLION_LAUGHS = """<?xml version="1.0"?>
<!DOCTYPE lolz [<!ENTITY lol "lol"><!ENTITY lol2 "&lol;&lol;&lol;&lol;&lol;&lol;&lol;&lol;">
<!ENTITY lol3 "&lol2;&lol2;&lol2;&lol2;&lol2;&lol2;&lol2;&lol2;&lol2;&lol2;">]>
<XRD xmlns="http://docs.oasis-open.org/ns/xri/xrd-1.0"><Link rel="x" href="&lol3;" /></XRD>"""


def profile_jrd(base: str, nick: str = "alice") -> dict[str, object]:
    return {"links": [{"rel": "http://webfinger.net/rel/profile-page", "type": "text/html",
                       "href": f"{base}/{nick}"}]}


def test_discovery_of_a_pump_server_from_host_meta_xrd(docs: DocServer,
                                                       fetcher: Fetcher) -> None:
    docs.route("/.well-known/webfinger", as_json(profile_jrd(docs.url), 200,
                                                  "application/jrd+json"))
    docs.route("/.well-known/host-meta", answer(200, xrd(pump_links(docs.url)),
                                                "application/xrd+xml"))
    server, resource = discover(f"alice@{docs.host}", fetcher)
    assert resource == f"acct:alice@{docs.host}"
    assert server == Server(
        host=docs.host, base_url=docs.url, protocol="oauth1", kind="pump",
        request_token_url=f"{docs.url}/oauth/request_token",
        authorize_url=f"{docs.url}/oauth/authorize",
        access_token_url=f"{docs.url}/oauth/access_token",
        registration_endpoint=f"{docs.url}/api/client/register",
        profile_url=f"{docs.url}/alice")
    # http was tried only because https failed (allow_http): the WebFinger query is encoded
    webfinger = next(s for s in docs.seen if s.path.startswith("/.well-known/webfinger"))
    assert parse_qs(urlsplit(webfinger.path).query)["resource"] == [f"acct:alice@{docs.host}"]


def test_billion_laughs_in_host_meta_is_refused_and_the_json_host_meta_used(
        docs: DocServer, fetcher: Fetcher) -> None:
    docs.route("/.well-known/webfinger", as_json(profile_jrd(docs.url)))
    docs.route("/.well-known/host-meta", answer(200, BILLION_LAUGHS, "application/xrd+xml"))
    docs.route("/.well-known/host-meta.json", as_json({"links": pump_links(docs.url)}))
    server, _ = discover(f"alice@{docs.host}", fetcher)
    assert server.kind == "pump"


def test_a_hostile_xrd_alone_leaves_a_clear_discovery_error(docs: DocServer,
                                                             fetcher: Fetcher) -> None:
    docs.route("/.well-known/webfinger", as_json(profile_jrd(docs.url)))
    docs.route("/.well-known/host-meta", answer(200, BILLION_LAUGHS, "application/xrd+xml"))
    with pytest.raises(DiscoveryError) as info:
        discover(f"alice@{docs.host}", fetcher)
    assert "publishes no OAuth endpoints" in info.value.reason
    assert "forbidden XML feature" in info.value.reason


def test_an_external_entity_in_host_meta_is_never_resolved(docs: DocServer,
                                                                   fetcher: Fetcher) -> None:
    xxe = ("<?xml version='1.0'?><!DOCTYPE XRD [<!ENTITY x SYSTEM 'file:///etc/passwd'>]>"
           f"<XRD xmlns='{XRD_NS}'><Link rel='lrdd' template='&x;' /></XRD>")
    docs.route("/.well-known/webfinger", as_json(profile_jrd(docs.url)))
    docs.route("/.well-known/host-meta", answer(200, xxe, "application/xrd+xml"))
    with pytest.raises(DiscoveryError) as info:
        discover(f"alice@{docs.host}", fetcher)
    assert "forbidden XML feature" in info.value.reason and "root:" not in info.value.reason


def test_webfinger_404_is_an_unknown_account(docs: DocServer, fetcher: Fetcher) -> None:
    docs.route("/.well-known/host-meta", answer(200, xrd(pump_links(docs.url)),
                                                "application/xrd+xml"))
    with pytest.raises(DiscoveryError) as info:
        discover(f"nobody@{docs.host}", fetcher)
    assert f"does not know the account nobody@{docs.host}" in info.value.reason


def test_broken_webfinger_falls_back_to_the_lrdd_template(docs: DocServer,
                                                          fetcher: Fetcher) -> None:
    links = [*pump_links(docs.url)[1:],
             {"rel": "lrdd", "type": "application/xrd+xml",
              "template": f"{docs.url}/api/lrdd?resource={{uri}}"}]
    docs.route("/.well-known/webfinger", answer(500, b"boom", "text/plain"))
    docs.route("/.well-known/host-meta", answer(200, xrd(links), "application/xrd+xml"))
    docs.route("/api/lrdd", answer(200, xrd([
        {"rel": "http://webfinger.net/rel/profile-page", "href": f"{docs.url}/alice"}]),
        "application/xrd+xml"))
    server, _ = discover(f"alice@{docs.host}", fetcher)
    assert server.profile_url == f"{docs.url}/alice"
    assert "/api/lrdd" in docs.paths()


def test_at_most_two_lrdd_templates_are_fetched_and_the_error_stays_short(
        docs: DocServer, fetcher: Fetcher) -> None:
    # A host-meta with 500 lrdd templates, each answering 500: two are tried, not 500.
    links = [{"rel": "lrdd", "type": "application/xrd+xml",
              "template": f"{docs.url}/lrdd{i}?resource={{uri}}"} for i in range(500)]
    docs.route("/.well-known/webfinger", answer(500, b"boom", "text/plain"))
    docs.route("/.well-known/host-meta", answer(200, xrd(links), "application/xrd+xml"))
    for i in range(500):
        docs.route(f"/lrdd{i}", answer(500, b"boom", "text/plain"))
    with pytest.raises(DiscoveryError) as info:
        discover(f"alice@{docs.host}", fetcher)
    assert [p for p in docs.paths() if p.startswith("/lrdd")] == ["/lrdd0", "/lrdd1"]
    assert "only the first 2 templates" in info.value.reason
    assert len(info.value.reason) < 4000


@pytest.mark.parametrize("endpoint", ["javascript:alert(1)", "ftp://127.0.0.1/authorize"])
def test_a_discovered_endpoint_with_a_forbidden_scheme_is_a_discovery_error(
        docs: DocServer, fetcher: Fetcher, endpoint: str) -> None:
    # Users are sent to the authorization endpoint: a javascript: one was a bare 400 from
    # Django's redirect, and (with ALLOW_HTTP off) an http: one was followed.
    docs.route("/.well-known/webfinger", as_json(profile_jrd(docs.url)))
    docs.route("/.well-known/oauth-authorization-server",
               as_json(oauth2_metadata(docs.url, authorization_endpoint=endpoint)))
    with pytest.raises(DiscoveryError, match="unusable authorization_endpoint"):
        discover(f"alice@{docs.host}", fetcher)


def test_a_jrd_without_links_is_no_error(docs: DocServer, fetcher: Fetcher) -> None:
    docs.route("/.well-known/webfinger", as_json({"subject": f"acct:alice@{docs.host}"}))
    docs.route("/.well-known/host-meta.json", as_json({"links": pump_links(docs.url)}))
    server, _ = discover(f"alice@{docs.host}", fetcher)
    assert server.kind == "pump" and server.profile_url == ""


def oauth2_metadata(base: str, **extra: object) -> dict[str, object]:
    return {"issuer": base, "authorization_endpoint": f"{base}/authorize",
            "token_endpoint": f"{base}/token", "scopes_supported": ["read", "write"],
            "code_challenge_methods_supported": ["S256"], **extra}


def test_rfc_8414_metadata_makes_an_oauth2_server(docs: DocServer, fetcher: Fetcher) -> None:
    docs.route("/.well-known/webfinger", as_json(profile_jrd(docs.url)))
    docs.route("/.well-known/oauth-authorization-server", as_json(oauth2_metadata(
        docs.url, registration_endpoint=f"{docs.url}/register",
        revocation_endpoint=f"{docs.url}/revoke")))
    server, _ = discover(f"alice@{docs.host}", fetcher)
    assert (server.protocol, server.kind) == ("oauth2", "oauth2")
    assert server.token_endpoint == f"{docs.url}/token"
    assert server.registration_endpoint == f"{docs.url}/register"
    assert server.scopes_supported == ("read", "write")
    assert server.code_challenge_methods == ("S256",)


def test_mastodon_4_3_metadata_is_recognised_by_its_app_registration_endpoint(
        docs: DocServer, fetcher: Fetcher) -> None:
    docs.route("/.well-known/webfinger", as_json(profile_jrd(docs.url)))
    docs.route("/.well-known/oauth-authorization-server", as_json(oauth2_metadata(
        docs.url, app_registration_endpoint=f"{docs.url}/api/v1/apps")))
    server, _ = discover(f"@alice@{docs.host}", fetcher)
    assert server.kind == "mastodon" and server.registration_endpoint.endswith("/api/v1/apps")


def test_openid_discovery_when_there_is_no_rfc_8414(docs: DocServer, fetcher: Fetcher) -> None:
    docs.route("/.well-known/webfinger", as_json(profile_jrd(docs.url)))
    docs.route("/.well-known/openid-configuration", as_json(oauth2_metadata(
        docs.url, userinfo_endpoint=f"{docs.url}/userinfo")))
    server, _ = discover(f"alice@{docs.host}", fetcher)
    assert server.kind == "oauth2" and server.userinfo_endpoint == f"{docs.url}/userinfo"


def test_an_old_mastodon_is_found_by_its_instance_api(docs: DocServer, fetcher: Fetcher) -> None:
    docs.route("/.well-known/webfinger", as_json(profile_jrd(docs.url)))
    docs.route("/api/v1/instance", as_json({"uri": docs.host, "version": "4.1.0"}))
    server, _ = discover(f"alice@{docs.host}", fetcher)
    assert server.kind == "mastodon"
    assert server.token_endpoint == f"{docs.url}/oauth/token"
    assert server.registration_endpoint == f"{docs.url}/api/v1/apps"


def test_a_server_without_oauth_endpoints_is_a_discovery_error(docs: DocServer,
                                                                fetcher: Fetcher) -> None:
    docs.route("/.well-known/webfinger", as_json(profile_jrd(docs.url)))
    docs.route("/.well-known/oauth-authorization-server", answer(200, b"<html>", "text/html"))
    with pytest.raises(DiscoveryError) as info:
        discover(f"alice@{docs.host}", fetcher)
    assert "publishes no OAuth endpoints" in info.value.reason
    assert "not valid JSON" in info.value.reason


def test_an_unreachable_host_is_a_discovery_error(docs: DocServer, fetcher: Fetcher) -> None:
    port = docs.port
    docs.server.shutdown()
    docs.server.server_close()
    with pytest.raises(DiscoveryError) as info:
        discover(f"alice@127.0.0.1:{port}", fetcher)
    assert f"cannot discover 127.0.0.1:{port}" in info.value.reason


def test_discovery_of_a_forbidden_host_says_the_policy_refused_it() -> None:
    with Fetcher(AddressPolicy()) as strict, pytest.raises(DiscoveryError) as info:
        discover("alice@10.0.0.7", strict)
    assert "address policy" in info.value.reason and "private" in info.value.reason


def test_adiscover_is_the_same_discovery(docs: DocServer) -> None:
    docs.route("/.well-known/webfinger", as_json(profile_jrd(docs.url)))
    docs.route("/.well-known/host-meta.json", as_json({"links": pump_links(docs.url)}))

    async def run() -> tuple[Server, str]:
        async with AsyncFetcher(AddressPolicy(LOOPBACK), allow_http=True) as f:
            return await adiscover(f"alice@{docs.host}", f)

    server, resource = asyncio.run(run())
    with loopback_fetcher() as f:
        assert (server, resource) == discover(f"alice@{docs.host}", f)


# -- registration with purpose-built servers --------------------------------------------------

def pump_server(docs: DocServer) -> Server:
    return Server(host=docs.host, base_url=docs.url, protocol="oauth1", kind="pump",
                  request_token_url=f"{docs.url}/oauth/request_token",
                  authorize_url=f"{docs.url}/oauth/authorize",
                  access_token_url=f"{docs.url}/oauth/access_token",
                  registration_endpoint=f"{docs.url}/api/client/register")


def test_pump_registration_sends_client_associate(docs: DocServer, fetcher: Fetcher) -> None:
    docs.route("/api/client/register", as_json(
        {"client_id": "cid", "client_secret": "csecret", "expires_at": 0}))
    creds = register(pump_server(docs), fetcher, client_name="Site",
                     redirect_uris=[CALLBACK, "http://site.example/other/"])
    assert creds == ClientCredentials("cid", "csecret", None)
    assert "csecret" not in repr(creds)
    form = parse_qs(docs.seen[-1].body.decode())
    assert form == {"type": ["client_associate"], "application_type": ["web"],
                    "application_name": ["Site"],
                    "redirect_uris": [f"{CALLBACK} http://site.example/other/"]}


def test_rfc_7591_registration_sends_json_metadata(docs: DocServer, fetcher: Fetcher) -> None:
    docs.route("/register", as_json({
        "client_id": "c7591", "client_secret": "s", "client_secret_expires_at": 2000000000,
        "registration_access_token": "rat", "registration_client_uri": f"{docs.url}/register/c"},
        201))
    server = Server(host=docs.host, base_url=docs.url, protocol="oauth2", kind="oauth2",
                    registration_endpoint=f"{docs.url}/register")
    creds = register(server, fetcher, client_name="Site", redirect_uris=[CALLBACK],
                     scopes=("profile", "email"), website="https://site.example")
    assert creds.expires_at == 2000000000 and creds.registration_access_token == "rat"
    assert json.loads(docs.seen[-1].body) == {
        "client_name": "Site", "redirect_uris": [CALLBACK],
        "grant_types": ["authorization_code", "refresh_token"], "response_types": ["code"],
        "token_endpoint_auth_method": "client_secret_basic", "scope": "profile email",
        "client_uri": "https://site.example"}


@pytest.mark.parametrize(("status", "body", "content_type", "expected"), [
    (400, b'{"error": "invalid_redirect_uri", "error_description": "no http"}',
     "application/json", "refused the client registration (400"),
    (403, b"forbidden here", "text/plain", "forbidden here"),
    (200, b"<html>welcome</html>", "text/html", "not JSON"),
    (200, b'{"client_secret": "s"}', "application/json", "no client_id"),
    (200, b'{"client_id": "c"}', "application/json", "no client_secret"),
    (200, b'{"client_id": "c", "client_secret": "s", "expires_at": "soon"}',
     "application/json", "is not a time"),
    (302, b"", "text/plain", "refused"),
])
def test_registration_refusals_and_garbage_are_registration_errors(
        docs: DocServer, fetcher: Fetcher, status: int, body: bytes, content_type: str,
        expected: str) -> None:
    docs.route("/api/client/register", answer(status, body, content_type,
                                              {"Location": "/elsewhere"}))
    with pytest.raises(RegistrationError) as info:
        register(pump_server(docs), fetcher, client_name="Site", redirect_uris=[CALLBACK])
    assert expected in info.value.reason


# -- the real providers: the whole way --------------------------------------------------------

def approve(authorize_url: str) -> dict[str, str]:
    """The user approves (the provider's auto-approve switch): the callback's query."""
    response = httpx.get(authorize_url, follow_redirects=False, timeout=10)
    assert response.status_code in (302, 303), response.text[:500]
    location = response.headers["location"]
    assert location.startswith(CALLBACK), location
    return {k: v[0] for k, v in parse_qs(urlsplit(location).query).items()}


def test_pump_provider_discovery_registration_oauth1_whoami_and_post_note() -> None:
    with running_pump_provider() as pump, loopback_fetcher() as fetcher:
        pump.knobs.auto_approve = "alice"
        server, resource = discover(pump.acct("alice"), fetcher)
        assert (server.kind, server.protocol) == ("pump", "oauth1")
        assert server.request_token_url == f"{pump.url}/oauth/request_token"
        assert resource == f"acct:alice@{pump.host}"

        creds = register(server, fetcher, client_name="Clarion test", redirect_uris=[CALLBACK])
        assert creds.client_id and creds.client_secret and creds.expires_at is None

        flow = OAuth1Flow(server, creds, fetcher)
        url, request_token, request_secret = flow.start(CALLBACK)
        assert url.startswith(server.authorize_url) and request_token in url
        callback = approve(url)
        assert callback["oauth_token"] == request_token  # pump.io's parameter names
        tokens = flow.finish(request_token, request_secret, callback["oauth_verifier"])
        assert tokens.access_token and tokens.token_secret

        with pytest.raises(AuthorizationError):  # a used request token is gone
            flow.finish(request_token, request_secret, callback["oauth_verifier"])

        with session(server, creds, tokens, fetcher) as client:
            me = whoami(server, client)
            assert me.handle == f"alice@{pump.host}" and me.id
            note = post_note(server, client, "Hello from Clarion")
            assert note

        pump.state.revoke_tokens("alice")
        with session(server, creds, tokens, fetcher) as client, pytest.raises(RevokedError):
            whoami(server, client)
        pump.stop()
        with session(server, creds, tokens, fetcher) as client, \
                pytest.raises(FetchError, match="cannot connect"):
            post_note(server, client, "to a server that is gone")


def test_pump_provider_wrong_verifier_and_revoked_client() -> None:
    with running_pump_provider() as pump, loopback_fetcher() as fetcher:
        pump.knobs.auto_approve = "alice"
        server, _ = discover(pump.acct("alice"), fetcher)
        creds = register(server, fetcher, client_name="Clarion test", redirect_uris=[CALLBACK])
        flow = OAuth1Flow(server, creds, fetcher)
        url, token, secret = flow.start(CALLBACK)
        approve(url)
        with pytest.raises(AuthorizationError):
            flow.finish(token, secret, "not-the-verifier")
        with pytest.raises(AuthorizationError):
            flow.finish(token, secret, "")
        pump.state.revoke_client(creds.client_id)
        with pytest.raises(RevokedError) as info:
            flow.start(CALLBACK)
        assert info.value.client_revoked


def test_oauth2_provider_discovery_registration_pkce_refresh_and_userinfo() -> None:
    with running_oauth2_provider() as provider, loopback_fetcher() as fetcher:
        provider.knobs.auto_approve = "alice"
        server, _ = discover(provider.acct("alice"), fetcher)
        assert (server.kind, server.protocol) == ("oauth2", "oauth2")
        assert "S256" in server.code_challenge_methods and server.userinfo_endpoint
        creds = register(server, fetcher, client_name="Clarion test",
                         redirect_uris=[CALLBACK], scopes=("profile", "email", "notes"))
        assert creds.registration_access_token or creds.client_secret

        flow = OAuth2Flow(server, creds, fetcher)
        url, state, verifier = flow.start(CALLBACK, "profile email")
        query = parse_qs(urlsplit(url).query)
        assert query["code_challenge_method"] == ["S256"] and query["state"] == [state]
        assert verifier not in url
        callback = approve(url)
        assert callback["state"] == state
        with pytest.raises(OAuthTokenError):  # PKCE: the code needs its verifier
            flow.finish(callback["code"], "x" * 64, CALLBACK)
        url, state, verifier = flow.start(CALLBACK, "profile email")
        callback = approve(url)
        tokens = flow.finish(callback["code"], verifier, CALLBACK)
        assert tokens.access_token and tokens.refresh_token and tokens.expires_at
        assert "access_token='***'" in repr(tokens)

        refreshed = flow.refresh(tokens.refresh_token)
        assert refreshed.access_token != tokens.access_token
        with pytest.raises(RevokedError):  # refresh tokens rotate: the old one is spent
            flow.refresh(tokens.refresh_token)

        with session(server, creds, refreshed, fetcher) as client:
            me = whoami(server, client)
        assert me.handle == f"alice@{provider.host}"
        assert me.email == "alice@example.org" and me.email_verified
        with session(server, creds, refreshed, fetcher) as client, \
                pytest.raises(ConnectError, match="no standard way"):
            post_note(server, client, "hello")


def test_oauth2_session_refreshes_an_expired_token_and_reports_it() -> None:
    with running_oauth2_provider() as provider, loopback_fetcher() as fetcher:
        provider.knobs.auto_approve = "alice"
        server, _ = discover(provider.acct("alice"), fetcher)
        creds = register(server, fetcher, client_name="Clarion test",
                         redirect_uris=[CALLBACK], scopes=("profile",))
        flow = OAuth2Flow(server, creds, fetcher)
        url, _, verifier = flow.start(CALLBACK, "profile")
        tokens = flow.finish(approve(url)["code"], verifier, CALLBACK)
        # An access token that expired already: the session refreshes before the request.
        expired = Tokens(tokens.access_token, refresh_token=tokens.refresh_token,
                         expires_at=1, scope=tokens.scope)
        seen: list[Tokens] = []
        with session(server, creds, expired, fetcher, on_refresh=seen.append) as client:
            assert whoami(server, client).handle == f"alice@{provider.host}"
        assert len(seen) == 1 and seen[0].access_token != tokens.access_token
        assert seen[0].refresh_token and seen[0].refresh_token != tokens.refresh_token

        provider.state.revoke_tokens("alice")
        with session(server, creds, seen[0], fetcher) as client, pytest.raises(RevokedError):
            whoami(server, client)
        stale = Tokens(seen[0].access_token, refresh_token=seen[0].refresh_token, expires_at=1)
        with session(server, creds, stale, fetcher) as client, pytest.raises(RevokedError):
            whoami(server, client)  # the refresh itself is refused (invalid_grant)
        no_refresh = Tokens(seen[0].access_token, expires_at=1)
        with session(server, creds, no_refresh, fetcher) as client, \
                pytest.raises(RevokedError, match="cannot be refreshed"):
            whoami(server, client)


def test_oauth2_provider_errors_become_connect_errors() -> None:
    with running_oauth2_provider() as provider, loopback_fetcher(timeout=5.0) as fetcher:
        provider.knobs.auto_approve = "alice"
        server, _ = discover(provider.acct("alice"), fetcher)
        provider.knobs.refuse_registration = True
        with pytest.raises(RegistrationError, match="refused"):
            register(server, fetcher, client_name="x", redirect_uris=[CALLBACK])
        provider.knobs.refuse_registration = False
        creds = register(server, fetcher, client_name="x", redirect_uris=[CALLBACK],
                         scopes=("profile",))
        flow = OAuth2Flow(server, creds, fetcher)
        for mode in ("down", "garbage", "reset"):
            url, _, verifier = flow.start(CALLBACK, "profile")
            code = approve(url)["code"]
            provider.knobs.token_endpoint = mode
            with pytest.raises(OAuthTokenError) as info:
                flow.finish(code, verifier, CALLBACK)
            assert not isinstance(info.value, RevokedError), mode
            provider.knobs.token_endpoint = "ok"
        provider.knobs.auto_approve = None
        provider.knobs.auto_deny = True
        url, state, _ = flow.start(CALLBACK, "profile")
        denied = approve(url)
        assert denied["error"] == "access_denied" and denied["state"] == state

        provider.state.revoke_client(creds.client_id)
        with pytest.raises(RevokedError) as revoked:
            flow.refresh("whatever")
        assert revoked.value.client_revoked
        with pytest.raises(DiscoveryError, match="does not know"):
            discover(provider.acct("nobody"), fetcher)
        provider.knobs.no_oauth_endpoints = True
        with pytest.raises(DiscoveryError, match="no OAuth endpoints"):
            discover(provider.acct("alice"), fetcher)


def test_mastodon_provider_apps_pkce_verify_credentials_and_statuses() -> None:
    with running_mastodon_provider() as mastodon, loopback_fetcher() as fetcher:
        mastodon.knobs.auto_approve = "alice"
        server, _ = discover(f"@alice@{mastodon.host}", fetcher)
        assert (server.kind, server.protocol) == ("mastodon", "oauth2")
        assert server.registration_endpoint == f"{mastodon.url}/api/v1/apps"
        creds = register(server, fetcher, client_name="Clarion test", redirect_uris=[CALLBACK],
                         scopes=("read", "write"), website="https://site.example")
        flow = OAuth2Flow(server, creds, fetcher)
        url, _, verifier = flow.start(CALLBACK, "read write")
        tokens = flow.finish(approve(url)["code"], verifier, CALLBACK)
        assert tokens.access_token and tokens.expires_at is None  # Mastodon's never expire
        with session(server, creds, tokens, fetcher) as client:
            me = whoami(server, client)
            assert me.handle == f"alice@{mastodon.host}" and me.id
            posted = post_note(server, client, "Hello, fediverse")
        assert posted
        mastodon.state.revoke_tokens("alice")
        with session(server, creds, tokens, fetcher) as client, pytest.raises(RevokedError):
            post_note(server, client, "again")
        mastodon.stop()
        with session(server, creds, tokens, fetcher) as client, \
                pytest.raises(FetchError, match="cannot connect"):
            whoami(server, client)

