"""Unit tests of the sans-IO GRIP module (``clarion.protocol.grip``): pure functions only."""

from __future__ import annotations

import base64
import time

import jwt
import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from hypothesis import given
from hypothesis import strategies as st

from clarion.errors import GripError
from clarion.protocol.grip import filters, headers, instruct, items, mapping, routes, sig, wsevents


def parse(hdrs: list[tuple[str, str]], body: bytes = b"", code: int = 200) -> instruct.Instruct:
    return instruct.parse(code, "OK", hdrs, body)


# -- headers ----------------------------------------------------------------------------------

def test_parameter_lists_split_outside_quotes_only() -> None:
    items_ = headers.parse_list(['a; prev-id=3; filter=skip-self, b', 'c; k="x, y; z"'])
    assert items_ == [[("a", None), ("prev-id", "3"), ("filter", "skip-self")],
                      [("b", None)], [("c", None), ("k", "x, y; z")]]


def test_unterminated_quote_is_an_error() -> None:
    with pytest.raises(GripError, match="unterminated"):
        headers.parse_list(['a; k="oops'])


@given(st.dictionaries(st.from_regex(r"[a-z_]{1,8}", fullmatch=True),
                       st.text(alphabet=st.characters(min_codepoint=32, max_codepoint=126)),
                       max_size=5))
def test_set_meta_header_round_trips(meta: dict[str, str]) -> None:
    if not meta:
        return
    inst = parse([("Grip-Hold", "stream"), ("Grip-Channel", "c"),
                  ("Grip-Set-Meta", instruct.set_meta_header(meta))])
    assert inst.meta == meta


# -- instructions -----------------------------------------------------------------------------

def test_no_grip_headers_is_no_hold() -> None:
    inst = parse([("Content-Type", "text/plain")], b"hi")
    assert inst.hold is None and not inst.is_grip
    assert inst.response.body == b"hi"
    assert not instruct.is_instruct([("Content-Type", "text/plain")])
    assert instruct.is_instruct([("grip-hold", "stream")])


def test_header_form_in_full() -> None:
    inst = parse([
        ("Grip-Hold", "stream"),
        ("Grip-Channel", "a; prev-id=3; filter=skip-self; filter=build-id, b"),
        ("Grip-Channel", "c"),
        ("Grip-Keep-Alive", "event: keep-alive\\ndata:\\n\\n; format=cstring; timeout=20"),
        ("Grip-Set-Meta", 'user="ada", id_format="a:%(a)s"'),
        ("Grip-Link", "</next?x=1>; rel=next; timeout=30"),
        ("Grip-Link", "</gone>; rel=gone"),
        ("Grip-Status", "304 Not Modified"),
        ("Content-Type", "text/plain"), ("Content-Length", "2"), ("Connection", "keep-alive"),
    ], b"hi")
    assert inst.hold == "stream"
    assert [(c.name, c.prev_id, c.filters) for c in inst.channels] == [
        ("a", "3", ("skip-self", "build-id")), ("b", None, ()), ("c", None, ())]
    assert inst.keep_alive == instruct.KeepAlive(b"event: keep-alive\ndata:\n\n", 20, "idle")
    assert inst.meta == {"user": "ada", "id_format": "a:%(a)s"}
    assert inst.next_link == instruct.Link("/next?x=1", 30)
    assert inst.gone_link == "/gone"
    assert (inst.response.code, inst.response.reason) == (304, "Not Modified")
    # Grip-* and hop-by-hop headers never reach the client.
    assert inst.response.headers == [("Content-Type", "text/plain")]


def test_response_timeout_default_and_minimum() -> None:
    assert parse([("Grip-Hold", "response"), ("Grip-Channel", "c")]).timeout == 55
    assert parse([("Grip-Hold", "response"), ("Grip-Channel", "c"),
                  ("Grip-Timeout", "1")]).timeout == 5
    assert parse([("Grip-Hold", "response"), ("Grip-Channel", "c"),
                  ("Grip-Timeout", "120")]).timeout == 120


def test_keep_alive_formats() -> None:
    encoded = base64.b64encode(b"\x00ping").decode()
    ka = parse([("Grip-Hold", "stream"), ("Grip-Channel", "c"),
                ("Grip-Keep-Alive", f"{encoded}; format=base64; mode=interval; timeout=3")]
               ).keep_alive
    assert ka == instruct.KeepAlive(b"\x00ping", 3, "interval")
    raw = parse([("Grip-Hold", "stream"), ("Grip-Channel", "c"),
                 ("Grip-Keep-Alive", ":")]).keep_alive
    assert raw == instruct.KeepAlive(b":", 55, "idle")


@pytest.mark.parametrize(("hdrs", "body", "code", "match"), [
    ([("Grip-Hold", "forever"), ("Grip-Channel", "c")], b"", 200, "Grip-Hold"),
    ([("Grip-Hold", "stream")], b"", 200, "at least one channel"),
    ([("Grip-Hold", "response"), ("Grip-Channel", "c"), ("Grip-Timeout", "soon")], b"", 200,
     "Grip-Timeout"),
    ([("Grip-Hold", "stream"), ("Grip-Channel", "c"), ("Grip-Keep-Alive", "x; format=hex")],
     b"", 200, "format"),
    ([("Grip-Hold", "stream"), ("Grip-Channel", "c"), ("Grip-Keep-Alive", "x\\q; format=cstring")],
     b"", 200, "escape"),
    ([("Grip-Hold", "stream"), ("Grip-Channel", "c"), ("Grip-Keep-Alive", "x; mode=never")],
     b"", 200, "mode"),
    ([("Grip-Hold", "stream"), ("Grip-Channel", "c; filter=nope")], b"", 200, "unknown filter"),
    ([("Grip-Hold", "stream"), ("Grip-Channel", "c" + "; filter=skip-self" * 6)], b"", 200,
     "too many filters"),
    ([("Grip-Link", "/no-brackets; rel=next")], b"", 200, "Grip-Link"),
    ([("Grip-Status", "abc")], b"", 200, "Grip-Status"),
    ([("Content-Type", "application/grip-instruct")], b"{", 200, "not JSON"),
    ([("Content-Type", "application/grip-instruct")], b'{"hold": {"mode": "x"}}', 200, "mode"),
    ([("Content-Type", "application/grip-instruct")], b"{}", 500, "status 200"),
])
def test_malformed_instructions_say_what(hdrs: list[tuple[str, str]], body: bytes, code: int,
                                         match: str) -> None:
    with pytest.raises(GripError, match=match):
        parse(hdrs, body, code)


def test_json_form_as_gripcontrol_creates_it() -> None:
    body = (b'{"hold": {"mode": "stream", "channels": [{"name": "c", "prev-id": "1",'
            b' "filters": ["skip-self"]}], "timeout": 30, "keep-alive": {"content": "ka",'
            b' "timeout": 10}, "meta": {"user": "u"}},'
            b' "response": {"code": 201, "headers": {"X-A": "1"}, "body": "start"}}')
    inst = parse([("Content-Type", "application/grip-instruct")], body)
    assert inst.hold == "stream" and inst.timeout == 30
    assert [(c.name, c.prev_id, c.filters) for c in inst.channels] == [("c", "1", ("skip-self",))]
    assert inst.keep_alive == instruct.KeepAlive(b"ka", 10, "idle")
    assert inst.meta == {"user": "u"}
    assert (inst.response.code, inst.response.headers, inst.response.body) == (
        201, [("X-A", "1")], b"start")


def test_json_form_defaults_to_response_mode_and_body_bin() -> None:
    body = b'{"hold": {"channels": [{"name": "c"}]}, "response": {"body-bin": "AAE="}}'
    inst = parse([("Content-Type", "application/grip-instruct; charset=utf-8")], body)
    assert inst.hold == "response" and inst.response.body == b"\x00\x01"


def test_hold_json_is_read_back() -> None:
    channels = [instruct.Channel("a", "5", ("build-id",))]
    body = instruct.hold_json("stream", channels, instruct.Response(200, "", [("A", "b")], b"x"),
                              timeout=9, keep_alive=instruct.KeepAlive(b"\n", 4), meta={"k": "v"})
    inst = parse([("Content-Type", instruct.INSTRUCT_CONTENT_TYPE)], body)
    assert inst.channels == channels and inst.timeout == 9 and inst.meta == {"k": "v"}
    assert inst.keep_alive == instruct.KeepAlive(b"\n", 4, "idle")


@given(st.binary(max_size=64))
def test_keep_alive_header_round_trips(data: bytes) -> None:
    if not data:
        return
    value = instruct.keep_alive_header(data, 7)
    inst = parse([("Grip-Hold", "stream"), ("Grip-Channel", "c"), ("Grip-Keep-Alive", value)])
    assert inst.keep_alive == instruct.KeepAlive(data, 7, "idle")


def test_channel_and_link_headers_read_back() -> None:
    chans = [instruct.Channel("a", "1", ("skip-self",)), instruct.Channel("b")]
    inst = parse([("Grip-Hold", "stream"), ("Grip-Channel", instruct.channel_header(chans)),
                  ("Grip-Link", instruct.link_header("/n?a=b", "next", 10))])
    assert inst.channels == chans and inst.next_link == instruct.Link("/n?a=b", 10)


def test_expose_headers_whitelists() -> None:
    inst = parse([("Grip-Hold", "stream"), ("Grip-Channel", "c"),
                  ("Grip-Expose-Headers", "X-Keep"), ("X-Keep", "1"), ("X-Drop", "2")])
    assert inst.response.headers == [("X-Keep", "1")]


# -- publish items ----------------------------------------------------------------------------

def test_both_item_shapes_normalise_alike() -> None:
    a, b = items.parse_publish(
        b'{"items": [{"channel": "c", "id": "2", "prev-id": "1", "meta": {"sender": "u"},'
        b' "formats": {"http-stream": {"content": "x"}}},'
        b' {"channel": "c", "http-stream": {"content": "x"},'
        b' "ws-message": {"content-bin": "AA=="}}]}')
    assert a.formats is not None and a.formats.http_stream is not None
    assert (a.id, a.prev_id, a.meta) == ("2", "1", {"sender": "u"})
    assert b.formats is not None and b.formats.ws_message is not None
    assert b.formats.ws_message.content_bytes == b"\x00" and b.formats.ws_message.is_binary


@pytest.mark.parametrize(("body", "match"), [
    (b"nope", "not JSON"),
    (b'{"items": 1}', "items"),
    (b'{"items": [{"http-stream": {"content": "x"}}]}', "channel"),
    (b'{"items": [{"channel": "", "http-stream": {"content": "x"}}]}', "empty"),
    (b'{"items": [{"channel": "c"}]}', "no formats"),
    (b'{"items": [{"channel": "c", "http-stream": {"content-bin": "%%"}}]}', "base64"),
    (b'{"items": [{"channel": "c", "http-stream": {"action": "explode"}}]}', "action"),
])
def test_bad_publish_bodies(body: bytes, match: str) -> None:
    with pytest.raises(GripError, match=match) as err:
        items.parse_publish(body)
    assert str(err.value).startswith("Invalid format")


def test_item_encoding_round_trips() -> None:
    (item,) = items.parse_publish(
        b'{"items": [{"channel": "c", "no-seq": true, "http-response": {"code": 201,'
        b' "headers": [["A", "b"]], "body": "x", "content-filters": ["build-id"]}}]}')
    again = items.decode_item(items.encode_item(item))
    assert again == item
    assert again.formats is not None and again.formats.http_response is not None
    assert again.formats.http_response.header_pairs() == [("A", "b")]


def test_export_is_pubcontrols_shape() -> None:
    out = items.export("c", {"http-stream": {"content": "x"}}, id="2", prev_id="1",
                       meta={"m": "v"})
    assert out == {"channel": "c", "id": "2", "prev-id": "1", "meta": {"m": "v"},
                   "http-stream": {"content": "x"}}


# -- websocket-events -------------------------------------------------------------------------

def test_events_use_hex_lengths() -> None:
    data = wsevents.encode([wsevents.Event("OPEN"), wsevents.Event("TEXT", b"hello world")])
    assert data == b"OPEN\r\nTEXT b\r\nhello world\r\n"


@given(st.lists(st.tuples(st.sampled_from(["TEXT", "BINARY", "PING", "PONG", "CLOSE"]),
                          st.binary(max_size=300) | st.none()), max_size=8))
def test_events_round_trip(evs: list[tuple[str, bytes | None]]) -> None:
    events = [wsevents.Event(t, c) for t, c in evs]
    assert wsevents.decode(wsevents.encode(events)) == events


@pytest.mark.parametrize(("data", "match"), [
    (b"OPEN", "unterminated"),
    (b"JUMP\r\n", "unknown event"),
    (b"TEXT zz\r\nab\r\n", "hex"),
    (b"TEXT 5\r\nab\r\n", "truncated"),
    (b"TEXT 2\r\nabXY", "CRLF"),
])
def test_bad_events(data: bytes, match: str) -> None:
    with pytest.raises(GripError, match=match):
        wsevents.decode(data)


def test_close_content_and_extension() -> None:
    assert wsevents.parse_close(wsevents.close_content(4001, "bye")) == (4001, "bye")
    assert wsevents.parse_close(b"") == (None, "")
    assert wsevents.grip_extension("grip") == "m:"
    assert wsevents.grip_extension('grip; message-prefix=""') == ""
    assert wsevents.grip_extension("permessage-deflate") is None


def test_control_messages() -> None:
    ctl = wsevents.parse_control(b'{"type": "subscribe", "channel": "c", "filters": ["skip-self"]}')
    assert (ctl.type, ctl.channel, ctl.filters) == ("subscribe", "c", ["skip-self"])
    with pytest.raises(GripError, match="unknown type"):
        wsevents.parse_control(b'{"type": "teleport"}')
    with pytest.raises(GripError, match="needs a channel"):
        wsevents.parse_control(b'{"type": "subscribe"}')
    assert wsevents.control_message("detach") == b'c:{"type":"detach"}'


# -- filters ----------------------------------------------------------------------------------

def test_message_filters() -> None:
    sub = {"user": "ada"}
    assert filters.apply(["skip-self"], b"x", sub, {"sender": "ada"}, {}) is None
    assert filters.apply(["skip-self"], b"x", sub, {"sender": "bob"}, {}) == b"x"
    assert filters.apply(["skip-users"], b"x", sub, {"skip_users": "bob, ada"}, {}) is None
    assert filters.apply(["require-sub"], b"x", sub, {"require_sub": "other"}, {"c": None}) is None
    assert filters.apply(["require-sub"], b"x", sub, {"require_sub": "c"}, {"c": None}) == b"x"


def test_content_filters() -> None:
    out = filters.apply(["build-id"], b"id: %I\n", {"id_format": "a:%(a)s,b:%(b)s"}, {},
                        {"a": "1", "b": "7"})
    assert out == b"id: a:1,b:7\n"
    hexed = filters.apply(["build-id"], b"%I", {"id_format": "%(a)s", "id_encoding": "hex"}, {},
                          {"a": "1"})
    assert hexed == b"31"
    assert filters.apply(["var-subst"], b"hi %(user)s 100%%", {"user": "ada"}, {}, {}) == \
        b"hi ada 100%"
    with pytest.raises(GripError, match="no such variable"):
        filters.apply(["var-subst"], b"%(nope)s", {}, {}, {})
    with pytest.raises(GripError, match="id_format"):
        filters.apply(["build-id"], b"%I", {}, {}, {"a": "1"})


# -- routes -----------------------------------------------------------------------------------

def test_routes_match_most_specific() -> None:
    table = routes.parse_routes(
        "# comment\n"
        "* 127.0.0.1:8001,over_http\n"
        "* ,path_beg=/api 127.0.0.1:8002\n".replace("* ,", "*,")
        + "example.com,prefix=p-,sig_iss=me,sig_key=base64:a2V5 10.0.0.1:80 10.0.0.2:81,host=x\n"
        "*,proto=ws,path_beg=/ws 127.0.0.1:8003\n")
    assert table.match("other:80", "/", False).targets[0].port == 8001  # type: ignore[union-attr]
    assert table.match("other", "/api/x", False).targets[0].port == 8002  # type: ignore[union-attr]
    ex = table.match("EXAMPLE.com:443", "/api", False)
    assert ex is not None and ex.prefix == "p-" and [t.port for t in ex.targets] == [80, 81]
    assert ex.targets[1].host_header == "x"
    assert table.match("a", "/ws", True).targets[0].port == 8003  # type: ignore[union-attr]
    assert table.match("a", "/ws", False).targets[0].port == 8001  # type: ignore[union-attr]
    assert table.routes[0].targets[0].over_http


def test_path_rewrites() -> None:
    table = routes.parse_routes("*,path_beg=/old,replace_beg=/new 1.2.3.4:80\n"
                                "h,path_rem=4 1.2.3.4:80\n")
    assert table.routes[0].rewrite_path("/old/x") == "/new/x"
    assert table.routes[1].rewrite_path("/pfx/x") == "/x"


@pytest.mark.parametrize(("text", "match"), [
    ("*\n", "routes:1: a route needs"),
    ("* localhost\n", "host:port"),
    ("* localhost:99999\n", "host:port"),
    ("* 1.2.3.4:80,bogus\n", "unknown target option"),
    ("*,bogus 1.2.3.4:80\n", "unknown option"),
    ("*,proto=ftp 1.2.3.4:80\n", "proto"),
    ("\n\n* test\n", "routes:3"),
    ("*,replace_beg=/x 1.2.3.4:80\n", "path_beg"),
])
def test_bad_routes_name_the_line(text: str, match: str) -> None:
    with pytest.raises(GripError, match=match):
        routes.parse_routes(text)


def test_ignored_pushpin_options_warn() -> None:
    table = routes.parse_routes("*,debug,aco 1.2.3.4:80,one_event\n")
    assert len(table.warnings) == 3


# -- mapping ----------------------------------------------------------------------------------

@pytest.mark.parametrize(("data", "stream", "ws"), [
    (b'"hello\\n"', "hello\n", "hello\n"),
    (b'{"a": 1}', '{"a":1}\n', '{"a":1}'),
    (b"42", "42\n", "42"),
])
def test_native_to_grip(data: bytes, stream: str, ws: str) -> None:
    item = mapping.item_from_native("c", data)
    assert item.formats is not None
    assert item.formats.http_stream is not None and item.formats.http_stream.content == stream
    assert item.formats.ws_message is not None and item.formats.ws_message.content == ws


@pytest.mark.parametrize(("body", "native"), [
    (b'{"channel": "c", "http-stream": {"content": "{\\"a\\": 1}\\n"}}', b'{"a":1}'),
    (b'{"channel": "c", "http-stream": {"content": "plain text\\n"}}', b'"plain text\\n"'),
    (b'{"channel": "c", "ws-message": {"content": "ws"}, "http-stream": {"content": "s"}}',
     b'"ws"'),
    (b'{"channel": "c", "http-response": {"body-bin": "/w=="}}', b'{"content-bin":"/w=="}'),
    (b'{"channel": "c", "http-stream": {"action": "close"}}', None),
])
def test_grip_to_native(body: bytes, native: bytes | None) -> None:
    (item,) = items.parse_publish(b'{"items": [' + body + b"]}")
    assert mapping.native_data(item) == native


# -- Grip-Sig ---------------------------------------------------------------------------------

@pytest.mark.filterwarnings("ignore::jwt.warnings.InsecureKeyLengthWarning")
def test_signature_claims_are_exactly_iss_and_exp() -> None:
    # Pushpin's default key is short; PyJWT warns about it, rightly, but it is what is used.
    token = sig.sign("pushpin", b"changeme", now=1000.0)
    claims = jwt.decode(token, "changeme", algorithms=["HS256"],
                        options={"verify_exp": False})
    assert claims == {"iss": "pushpin", "exp": 4600}
    assert jwt.get_unverified_header(token)["alg"] == "HS256"


def test_verify_requires_exp_and_checks_iss() -> None:
    good = sig.sign("pushpin", b"k" * 32)
    assert sig.verify(good, b"k" * 32, "pushpin")["iss"] == "pushpin"
    with pytest.raises(GripError, match="issuer"):
        sig.verify(good, b"k" * 32, "other")
    no_exp = jwt.encode({"iss": "pushpin"}, "k" * 32, algorithm="HS256")
    with pytest.raises(GripError, match="exp"):
        sig.verify(no_exp, b"k" * 32)
    expired = sig.sign("pushpin", b"k" * 32, now=time.time() - 7200)
    with pytest.raises(GripError, match="expired"):
        sig.verify(expired, b"k" * 32)
    with pytest.raises(GripError):
        sig.verify(good, b"wrong" * 8)


@pytest.mark.parametrize("kind", ["ec", "rsa"])
def test_pem_keys_pick_their_algorithm(kind: str) -> None:
    private = (ec.generate_private_key(ec.SECP256R1()) if kind == "ec"
               else rsa.generate_private_key(public_exponent=65537, key_size=2048))
    for fmt in (serialization.PrivateFormat.PKCS8, serialization.PrivateFormat.TraditionalOpenSSL):
        pem = private.private_bytes(serialization.Encoding.PEM, fmt,
                                    serialization.NoEncryption())
        token = sig.sign("iss", pem)
        assert jwt.get_unverified_header(token)["alg"] == ("ES256" if kind == "ec" else "RS256")
        public = private.public_key().public_bytes(
            serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo)
        assert sig.verify(token, public, "iss")["iss"] == "iss"


def test_key_forms(tmp_path: object) -> None:
    assert sig.decode_key("changeme") == b"changeme"
    assert sig.decode_key("base64:" + base64.b64encode(b"\x00k").decode()) == b"\x00k"
    assert sig.decode_key("file:/k", lambda p: b"6b6579\n") == b"key"
    assert sig.decode_key("file:/k", lambda p: b"-----BEGIN X-----") == b"-----BEGIN X-----"
    with pytest.raises(GripError, match="base64"):
        sig.decode_key("base64:%%%")
    with pytest.raises(GripError, match="neither"):
        sig.decode_key("file:/k", lambda p: b"not hex")


def test_signer_reuses_its_token_for_a_while() -> None:
    signer = sig.Signer("pushpin", b"changeme")
    first = signer.token(now=1000.0)
    assert signer.token(now=1030.0) == first
    assert signer.token(now=1100.0) != first
