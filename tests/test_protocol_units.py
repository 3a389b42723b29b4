"""Unit tests of the sans-IO code: WebSocket framing, cursors, the client protocol's JSON,
tokens, SSE framing, configuration and channel rules. No sockets, no hub process.

Third-party cross-checks: ``wsproto`` (an independent RFC 6455 implementation) for the framing,
``cryptography`` for RSA/EC token keys, ``hypothesis`` for property tests.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import itertools
import json
import os
import struct
import time
from pathlib import Path
from typing import Any

import jwt
import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from hypothesis import given, settings
from hypothesis import strategies as st
from wsproto.frame_protocol import FrameProtocol, Opcode

from clarion.errors import ConfigError, Disconnect, FrameError, ReplyError, TokenError
from clarion.hub.channels import ChannelRules
from clarion.hub.config import Config, load_config, parse_duration
from clarion.protocol import client as proto
from clarion.protocol import cursor as cursors
from clarion.protocol import sse
from clarion.protocol import websocket as wsp
from clarion.protocol.tokens import (
    TokenKeys,
    looks_like_jwt,
    verify_connect_token,
    verify_subscribe_token,
)

# =============================================================================================
# WebSocket framing
# =============================================================================================

MASK = b"\x37\xfa\x21\x3d"


def masked(payload: bytes, mask: bytes = MASK) -> bytes:
    return bytes(b ^ mask[i % 4] for i, b in enumerate(payload))


def client_frame(opcode: int, payload: bytes = b"", *, fin: bool = True, rsv: int = 0,
                 mask: bytes | None = MASK) -> bytes:
    """A frame as a client sends it (masked unless mask is None)."""
    n = len(payload)
    first = (0x80 if fin else 0) | (rsv << 4) | opcode
    mask_bit = 0x80 if mask is not None else 0
    if n < 126:
        head = bytes((first, mask_bit | n))
    elif n < 65536:
        head = struct.pack("!BBH", first, mask_bit | 126, n)
    else:
        head = struct.pack("!BBQ", first, mask_bit | 127, n)
    if mask is None:
        return head + payload
    return head + mask + masked(payload, mask)


def read_all(data: bytes, max_size: int = 1 << 20) -> list[tuple[int, bytes]]:
    return wsp.FrameReader(max_size).feed(data)


def frame_error(data: bytes, max_size: int = 1 << 20) -> FrameError:
    reader = wsp.FrameReader(max_size)
    with pytest.raises(FrameError) as info:
        reader.feed(data)
    return info.value


@pytest.mark.parametrize("size", [0, 1, 125, 126, 127, 65535, 65536, 70000])
def test_reader_masked_frame_sizes(size: int) -> None:
    payload = os.urandom(size)
    frame = client_frame(wsp.BINARY, payload)
    expected_head = 2 if size < 126 else 4 if size < 65536 else 10
    assert len(frame) == expected_head + 4 + size
    assert read_all(frame) == [(wsp.BINARY, payload)]


def test_reader_text_and_several_frames_in_one_feed() -> None:
    data = (client_frame(wsp.TEXT, b'{"id":1}') + client_frame(wsp.TEXT, b"")
            + client_frame(wsp.PING, b"hb") + client_frame(wsp.BINARY, b"\x00\xff"))
    assert read_all(data) == [
        (wsp.TEXT, b'{"id":1}'), (wsp.TEXT, b""), (wsp.PING, b"hb"), (wsp.BINARY, b"\x00\xff")]


def test_reader_partial_frame_waits_for_the_rest() -> None:
    reader = wsp.FrameReader(1 << 20)
    frame = client_frame(wsp.TEXT, b"x" * 300)
    assert reader.feed(frame[:1]) == []
    assert reader.feed(frame[1:3]) == []  # 16-bit length not complete yet
    assert reader.feed(frame[3:100]) == []
    assert reader.feed(frame[100:]) == [(wsp.TEXT, b"x" * 300)]


def test_reader_fragmented_message_with_interleaved_ping() -> None:
    data = (client_frame(wsp.TEXT, b"Hel", fin=False)
            + client_frame(wsp.PING, b"p1")
            + client_frame(wsp.CONTINUATION, b"lo ", fin=False)
            + client_frame(wsp.PONG, b"")
            + client_frame(wsp.CONTINUATION, b"world", fin=True)
            + client_frame(wsp.BINARY, b"next"))
    # Control frames come out as soon as they are complete, before the message they split.
    assert read_all(data) == [
        (wsp.PING, b"p1"), (wsp.PONG, b""), (wsp.TEXT, b"Hello world"), (wsp.BINARY, b"next")]


def test_reader_fragmented_binary_then_another_fragmented_message() -> None:
    reader = wsp.FrameReader(1 << 20)
    first = (client_frame(wsp.BINARY, b"a", fin=False)
             + client_frame(wsp.CONTINUATION, b"b", fin=True))
    second = (client_frame(wsp.TEXT, b"c", fin=False)
              + client_frame(wsp.CONTINUATION, b"", fin=False)
              + client_frame(wsp.CONTINUATION, b"d", fin=True))
    assert reader.feed(first) == [(wsp.BINARY, b"ab")]
    assert reader.feed(second) == [(wsp.TEXT, b"cd")]


def test_reader_unmasked_frame_is_protocol_error() -> None:
    err = frame_error(client_frame(wsp.TEXT, b"hi", mask=None))
    assert err.close_code == wsp.CLOSE_PROTOCOL_ERROR == 1002


def test_reader_message_at_limit_passes_and_over_limit_is_1009() -> None:
    assert read_all(client_frame(wsp.TEXT, b"x" * 100), max_size=100) == [(wsp.TEXT, b"x" * 100)]
    err = frame_error(client_frame(wsp.TEXT, b"x" * 101), max_size=100)
    assert err.close_code == wsp.CLOSE_TOO_BIG == 1009


def test_reader_oversize_is_detected_from_the_header_alone() -> None:
    # A client announcing a 1 TiB frame is refused before it sends the payload.
    head = struct.pack("!BBQ", 0x80 | wsp.BINARY, 0x80 | 127, 1 << 40) + MASK
    err = frame_error(head, max_size=65536)
    assert err.close_code == 1009


def test_reader_oversize_via_fragments_is_1009() -> None:
    reader = wsp.FrameReader(100)
    assert reader.feed(client_frame(wsp.TEXT, b"x" * 60, fin=False)) == []
    assert reader.feed(client_frame(wsp.CONTINUATION, b"x" * 40, fin=False)) == []  # 100: ok
    with pytest.raises(FrameError) as info:
        reader.feed(client_frame(wsp.CONTINUATION, b"x", fin=True))
    assert info.value.close_code == 1009


def test_reader_fragments_up_to_the_limit_pass() -> None:
    data = (client_frame(wsp.TEXT, b"x" * 60, fin=False)
            + client_frame(wsp.CONTINUATION, b"y" * 40, fin=True))
    assert read_all(data, max_size=100) == [(wsp.TEXT, b"x" * 60 + b"y" * 40)]


def test_reader_control_frames_do_not_count_against_the_message_limit() -> None:
    data = client_frame(wsp.PING, b"p" * 125)
    assert read_all(data, max_size=10) == [(wsp.PING, b"p" * 125)]


@pytest.mark.parametrize("rsv", [1, 2, 4, 7])
def test_reader_reserved_bits_are_protocol_error(rsv: int) -> None:
    assert frame_error(client_frame(wsp.TEXT, b"hi", rsv=rsv)).close_code == 1002


@pytest.mark.parametrize("opcode", [0x3, 0x4, 0x5, 0x6, 0x7, 0xB, 0xC, 0xD, 0xE, 0xF])
def test_reader_unknown_opcodes_are_protocol_error(opcode: int) -> None:
    assert frame_error(client_frame(opcode, b"")).close_code == 1002


@pytest.mark.parametrize("opcode", [wsp.PING, wsp.PONG, wsp.CLOSE])
def test_reader_control_frame_over_125_bytes_is_protocol_error(opcode: int) -> None:
    assert read_all(client_frame(opcode, b"\x03\xe8" + b"r" * 123)) == [
        (opcode, b"\x03\xe8" + b"r" * 123)]
    assert frame_error(client_frame(opcode, b"\x03\xe8" + b"r" * 124)).close_code == 1002


def test_reader_fragmented_control_frame_is_protocol_error() -> None:
    assert frame_error(client_frame(wsp.PING, b"p", fin=False)).close_code == 1002


@pytest.mark.parametrize("fin", [True, False])
def test_reader_continuation_without_start_is_protocol_error(fin: bool) -> None:
    assert frame_error(client_frame(wsp.CONTINUATION, b"x", fin=fin)).close_code == 1002


def test_reader_new_message_inside_fragmented_one_is_protocol_error() -> None:
    data = client_frame(wsp.TEXT, b"a", fin=False) + client_frame(wsp.TEXT, b"b")
    assert frame_error(data).close_code == 1002


def test_reader_text_message_must_be_utf8() -> None:
    # RFC 6455 section 8.1: invalid UTF-8 in a text message fails the connection with 1007.
    for bad in (b"\xff", b"ok\xc3", b"\xed\xa0\x80"):  # stray byte, cut char, surrogate
        assert frame_error(client_frame(wsp.TEXT, bad)).close_code == wsp.CLOSE_INVALID_DATA
    data = (client_frame(wsp.TEXT, b"a\xc3", fin=False)
            + client_frame(wsp.CONTINUATION, b"\xff", fin=True))
    assert frame_error(data).close_code == 1007


def test_reader_utf8_split_across_fragments_is_fine() -> None:
    # Validity is a property of the whole message: a character may straddle two fragments.
    euro = "€".encode()
    data = (client_frame(wsp.TEXT, b"price " + euro[:1], fin=False)
            + client_frame(wsp.CONTINUATION, euro[1:2], fin=False)
            + client_frame(wsp.CONTINUATION, euro[2:] + b"5", fin=True))
    assert read_all(data) == [(wsp.TEXT, "price €5".encode())]
    # Binary messages carry any bytes.
    assert read_all(client_frame(wsp.BINARY, b"\xff\xc3")) == [(wsp.BINARY, b"\xff\xc3")]


def _conversation() -> tuple[bytes, list[tuple[int, bytes]]]:
    """Bytes of a varied client conversation and the messages they carry."""
    big = "ünïcødé €uro 频道 😀 ".encode() * 12  # valid UTF-8, 16-bit length
    data = (client_frame(wsp.TEXT, b'{"id":1,"connect":{}}')
            + client_frame(wsp.BINARY, b"", mask=b"\x00\x00\x00\x00")
            + client_frame(wsp.TEXT, b"frag-", fin=False)
            + client_frame(wsp.PING, b"ping!")
            + client_frame(wsp.CONTINUATION, big[:7], fin=False)  # splits a character
            + client_frame(wsp.CONTINUATION, big[7:], fin=False)
            + client_frame(wsp.CONTINUATION, b"-end", fin=True)
            + client_frame(wsp.BINARY, b"x" * 126)
            + client_frame(wsp.CLOSE, b"\x03\xe8bye"))
    messages = [
        (wsp.TEXT, b'{"id":1,"connect":{}}'),
        (wsp.BINARY, b""),
        (wsp.PING, b"ping!"),
        (wsp.TEXT, b"frag-" + big + b"-end"),
        (wsp.BINARY, b"x" * 126),
        (wsp.CLOSE, b"\x03\xe8bye"),
    ]
    return data, messages


def test_reader_split_at_every_byte_boundary() -> None:
    data, expected = _conversation()
    for cut in range(len(data) + 1):
        reader = wsp.FrameReader(1 << 20)
        assert reader.feed(data[:cut]) + reader.feed(data[cut:]) == expected, cut


def test_reader_fed_one_byte_at_a_time() -> None:
    data, expected = _conversation()
    reader = wsp.FrameReader(1 << 20)
    out: list[tuple[int, bytes]] = []
    for i in range(len(data)):
        out += reader.feed(data[i : i + 1])
    assert out == expected




@st.composite
def _text_fragments(draw: st.DrawFn) -> tuple[int, list[bytes]]:
    """A UTF-8 text message cut into fragments at any byte, even inside a character."""
    raw = draw(st.text(max_size=120)).encode()
    cuts = sorted(draw(st.lists(st.integers(0, len(raw)), max_size=3)))
    bounds = [0, *cuts, len(raw)]
    return wsp.TEXT, [raw[a:b] for a, b in itertools.pairwise(bounds)]


_data_frames = st.one_of(
    st.tuples(st.just(wsp.BINARY), st.lists(st.binary(max_size=300), min_size=1, max_size=4)),
    _text_fragments(),
)
_pings = st.binary(max_size=125).map(lambda p: (wsp.PING, [p]))


@settings(max_examples=150, deadline=None)
@given(
    messages=st.lists(st.one_of(_data_frames, _pings), min_size=1, max_size=6),
    masks=st.binary(min_size=4, max_size=4),
    cuts=st.lists(st.integers(min_value=0, max_value=5000), max_size=12),
)
def test_reader_any_chunking_gives_the_same_messages(
    messages: list[tuple[int, list[bytes]]], masks: bytes, cuts: list[int]
) -> None:
    data = b""
    expected = []
    for opcode, fragments in messages:
        if opcode == wsp.PING:
            data += client_frame(wsp.PING, fragments[0], mask=masks)
            expected.append((wsp.PING, fragments[0]))
            continue
        for i, frag in enumerate(fragments):
            data += client_frame(opcode if i == 0 else wsp.CONTINUATION, frag,
                                 fin=i == len(fragments) - 1, mask=masks)
        expected.append((opcode, b"".join(fragments)))
    points = sorted({c % (len(data) + 1) for c in cuts})
    reader = wsp.FrameReader(1 << 20)
    out = []
    prev = 0
    for p in [*points, len(data)]:
        out += reader.feed(data[prev:p])
        prev = p
    assert out == expected


@pytest.mark.parametrize(
    ("size", "head", "marker"),
    [(0, 2, 0), (1, 2, 1), (125, 2, 125), (126, 4, 126), (65535, 4, 126), (65536, 10, 127),
     (100000, 10, 127)],
)
def test_encode_frame_lengths(size: int, head: int, marker: int) -> None:
    payload = b"z" * size
    frame = wsp.encode_frame(wsp.TEXT, payload)
    assert len(frame) == head + size
    assert frame[0] == 0x80 | wsp.TEXT  # FIN, no RSV
    assert frame[1] == marker  # unmasked: server frames are never masked
    if head == 4:
        assert struct.unpack("!H", frame[2:4])[0] == size
    elif head == 10:
        assert struct.unpack("!Q", frame[2:10])[0] == size
    assert frame[head:] == payload
    assert wsp.text_frame(payload) == frame


def test_close_frame_and_parse_close() -> None:
    frame = wsp.close_frame(3501, "bad request")
    assert frame[0] == 0x80 | wsp.CLOSE
    payload = frame[2:]
    assert wsp.parse_close(payload) == (3501, "bad request")
    assert wsp.parse_close(b"") == (1005, "")


def test_close_frame_truncates_a_long_reason_to_a_valid_control_frame() -> None:
    frame = wsp.close_frame(1000, "r" * 500)
    assert frame[1] == 125
    assert len(frame) == 2 + 125


def test_close_frame_truncation_keeps_the_reason_valid_utf8() -> None:
    # RFC 6455 7.1.6: the close reason is UTF-8; a peer must fail the connection (1007) on
    # invalid UTF-8. Cutting a multi-byte character in half at byte 123 makes it invalid.
    for reason in ("é" * 100, "x" + "€" * 60, "😀" * 40):
        frame = wsp.close_frame(4000, reason)
        assert len(frame) <= 2 + 125
        text = frame[4:].decode("utf-8")  # must not raise
        assert reason.startswith(text)


def test_accept_key_rfc6455_example() -> None:
    assert wsp.accept_key("dGhlIHNhbXBsZSBub25jZQ==") == "s3pPLMBiTxaQ9kYGzzhZRbK+xOo="
    assert wsp.accept_key(" dGhlIHNhbXBsZSBub25jZQ== ") == "s3pPLMBiTxaQ9kYGzzhZRbK+xOo="


def test_valid_client_key() -> None:
    assert wsp.valid_client_key("dGhlIHNhbXBsZSBub25jZQ==")
    assert wsp.valid_client_key(base64.b64encode(os.urandom(16)).decode())
    assert not wsp.valid_client_key(base64.b64encode(os.urandom(15)).decode())
    assert not wsp.valid_client_key(base64.b64encode(os.urandom(17)).decode())
    assert not wsp.valid_client_key("not base64 at all!")
    assert not wsp.valid_client_key("")


# -- cross-check with wsproto, an independent implementation --------------------------------


def wsproto_client() -> FrameProtocol:
    return FrameProtocol(client=True, extensions=[])


def wsproto_receive(proto_: FrameProtocol, data: bytes) -> list[tuple[Opcode, Any]]:
    """Whole messages wsproto's client reads from server bytes (partial frames joined)."""
    proto_.receive_bytes(data)
    out: list[tuple[Opcode, Any]] = []
    pending: dict[str, Any] = {}
    for frame in proto_.received_frames():
        if frame.opcode in (Opcode.TEXT, Opcode.BINARY):
            pending = {"op": frame.opcode, "parts": [frame.payload]}
        elif frame.opcode is Opcode.CONTINUATION:
            pending["parts"].append(frame.payload)
        else:
            out.append((frame.opcode, frame.payload))
            continue
        if frame.message_finished:
            joiner = "" if pending["op"] is Opcode.TEXT else b""
            out.append((pending["op"], joiner.join(pending["parts"])))
            pending = {}
    return out


@pytest.mark.parametrize("size", [0, 1, 125, 126, 65535, 65536, 200000])
def test_wsproto_client_frames_parse_in_our_reader(size: int) -> None:
    client = wsproto_client()
    text = ("ab€" * (size // 5 + 1))[: max(size // 2, 0)]
    binary = os.urandom(size)
    data = bytes(client.send_data(text, fin=True)) + bytes(client.send_data(binary, fin=True))
    assert read_all(data) == [(wsp.TEXT, text.encode()), (wsp.BINARY, binary)]


def test_wsproto_fragmented_message_ping_and_close_parse_in_our_reader() -> None:
    client = wsproto_client()
    data = bytes(client.send_data("first ", fin=False))
    data += bytes(client.ping(b"are you there"))
    data += bytes(client.send_data("second ", fin=False))
    data += bytes(client.send_data("third", fin=True))
    data += bytes(client.close(1000, "done"))
    out = []
    reader = wsp.FrameReader(1 << 20)
    for i in range(0, len(data), 7):  # and split awkwardly
        out += reader.feed(data[i : i + 7])
    assert out[0] == (wsp.PING, b"are you there")
    assert out[1] == (wsp.TEXT, b"first second third")
    assert out[2][0] == wsp.CLOSE
    assert wsp.parse_close(out[2][1]) == (1000, "done")
    assert len(out) == 3


@pytest.mark.parametrize("size", [0, 1, 125, 126, 65535, 65536, 200000])
def test_our_frames_parse_in_wsproto_client(size: int) -> None:
    text = ("x€" * size)[:size]
    binary = os.urandom(size)
    data = (wsp.encode_frame(wsp.TEXT, text.encode()) + wsp.encode_frame(wsp.BINARY, binary)
            + wsp.encode_frame(wsp.PING, b"hb") + wsp.encode_frame(wsp.PONG, b""))
    assert wsproto_receive(wsproto_client(), data) == [
        (Opcode.TEXT, text), (Opcode.BINARY, binary), (Opcode.PING, b"hb"), (Opcode.PONG, b"")]


@pytest.mark.parametrize(("code", "reason"), [
    (1000, ""), (1009, "message too big"), (3501, "bad request"), (4000, "ünïcode réason")])
def test_our_close_frames_parse_in_wsproto_client(code: int, reason: str) -> None:
    [(opcode, (got_code, got_reason))] = wsproto_receive(
        wsproto_client(), wsp.close_frame(code, reason))
    assert opcode is Opcode.CLOSE
    assert int(got_code) == code
    assert got_reason == reason


def test_our_truncated_non_ascii_close_frame_parses_in_wsproto_client() -> None:
    reason = "é" * 100  # 200 bytes of UTF-8: must be cut to at most 123
    [(opcode, (code, got))] = wsproto_receive(wsproto_client(), wsp.close_frame(4000, reason))
    assert opcode is Opcode.CLOSE
    assert int(code) == 4000
    assert reason.startswith(got)
    assert len(got.encode()) <= 123


# =============================================================================================
# Cursors
# =============================================================================================


def test_cursor_format() -> None:
    assert cursors.encode({"news": (5, "ab12")}) == "5:ab12:news"
    assert cursors.encode({"a": (1, "e"), "b": (0, "")}) == "1:e:a|0::b"
    assert cursors.encode({}) == ""
    assert cursors.decode("") == {}


@pytest.mark.parametrize("channel", [
    "news", "chat:room", "a|b", "100%", "%41", "x:y|z%w", "ünïcødé", "频道:房间", "emoji😀",
    "dialog#1,2", "sp ace", "a/b?c=d&e", "::", "||", "%%",
])
def test_cursor_round_trip_awkward_channels(channel: str) -> None:
    positions = {channel: (42, "e1f2"), "plain": (0, "")}
    encoded = cursors.encode(positions)
    assert cursors.decode(encoded) == positions


@settings(max_examples=200, deadline=None)
@given(st.dictionaries(
    st.text(min_size=1, max_size=40),
    st.tuples(st.integers(min_value=0, max_value=2**63),
              st.text(alphabet="0123456789abcdefABCDEF-_", max_size=12)),
    max_size=8,
))
def test_cursor_round_trip_property(positions: dict[str, tuple[int, str]]) -> None:
    assert cursors.decode(cursors.encode(positions)) == positions


@pytest.mark.parametrize("bad", [
    "abc", "1", "1:e", ":e:ch", "x:e:ch", "-1:e:ch", "+1:e:ch", "1.5:e:ch", " 1:e:ch",
    "1:e:", "1:e:ch|", "|1:e:ch", "1:e:ch||2:e:d", "0x1:e:ch",
    "²:e:ch",  # a Unicode digit: str.isdigit() accepts it, int() does not
    "1²:e:ch",
])
def test_cursor_malformed_is_cursor_error(bad: str) -> None:
    with pytest.raises(cursors.CursorError):
        cursors.decode(bad)


def test_cursor_max_length() -> None:
    channel = "c" * (cursors.MAX_CURSOR_LENGTH - len("1:e:"))
    at_limit = cursors.encode({channel: (1, "e")})
    assert len(at_limit) == cursors.MAX_CURSOR_LENGTH
    assert cursors.decode(at_limit) == {channel: (1, "e")}
    with pytest.raises(cursors.CursorError):
        cursors.decode(at_limit + "c")
    with pytest.raises(cursors.CursorError):
        cursors.decode("|".join(["1:e:ch"] * 2000))


# =============================================================================================
# Client protocol JSON
# =============================================================================================


def test_decode_commands_batched_frame() -> None:
    frame = (b'{"id":1,"connect":{"token":"t","name":"js"}}\n'
             b'{"id":2,"subscribe":{"channel":"news","recover":true,"offset":5,"epoch":"e"}}\n'
             b'{"id":3,"publish":{"channel":"news","data":{"x": [1, 2.50]}}}')
    cmds = proto.decode_commands(frame)
    assert [c.id for c in cmds] == [1, 2, 3]
    assert [c.method() for c in cmds] == ["connect", "subscribe", "publish"]
    assert cmds[0].connect is not None and cmds[0].connect.token == "t"
    sub = cmds[1].subscribe
    assert sub is not None
    assert (sub.channel, sub.recover, sub.offset, sub.epoch) == ("news", True, 5, "e")
    pub = cmds[2].publish
    assert pub is not None
    assert bytes(pub.data) == b'{"x": [1, 2.50]}'  # raw, exactly as sent


def test_decode_commands_blank_lines_and_crlf() -> None:
    frame = b'\n{"id":1,"ping":{}}\r\n\n   \n{"id":2,"presence":{"channel":"x"}}\n\n'
    cmds = proto.decode_commands(frame)
    assert [(c.id, c.method()) for c in cmds] == [(1, "ping"), (2, "presence")]
    assert proto.decode_commands(b"") == []
    assert proto.decode_commands(b"\n\n") == []


def test_decode_commands_empty_object_is_a_pong() -> None:
    [cmd] = proto.decode_commands(b"{}")
    assert cmd.id == 0
    assert cmd.method() == ""


def test_decode_commands_ignores_unknown_fields() -> None:
    [cmd] = proto.decode_commands(b'{"id":4,"history":{"channel":"a","limit":-1},"x":1}')
    assert cmd.method() == "history"
    assert cmd.history is not None and cmd.history.limit == -1


@pytest.mark.parametrize("frame", [
    b"{", b"not json", b"[1,2]", b"null", b"1", b'"str"',
    b'{"id":"one"}', b'{"id":1,"subscribe":{}}', b'{"id":1,"subscribe":{"channel":5}}',
    b'{"id":1,"connect":{"token":1}}', b"\xff\xfe", b'{"id":1}\n{',
    b'{"id":1,"ping":{}}\n{"id":2,"subscribe":"news"}',
    # Not UTF-8, so not JSON (RFC 8259 section 8.1), wherever the bad bytes are:
    b'{"id":1,"subscribe":{"channel":"\xff"}}',
    b'{"id":1,"publish":{"channel":"a","data":"\xff"}}',
    b'{"id":1,"publish":{"channel":"a","data":{"\xc3":1}}}',
])
def test_decode_commands_malformed_is_bad_request_disconnect(frame: bytes) -> None:
    with pytest.raises(Disconnect) as info:
        proto.decode_commands(frame)
    assert info.value.code == 3501
    assert info.value.reconnect is False


def test_publication_json_passes_raw_data_through() -> None:
    data = b'{"b": 1.50, "a":[ ],"s":"\\u00e9"}'
    info = proto.client_info_json("cid", "u\"1", b'{"n":"Ann"}', b'{"r":1}')
    out = proto.publication_json(data, 7, info, {"k": "v\"\n", "ü": "ß"})
    assert data in out  # byte for byte
    parsed = json.loads(out)
    assert parsed == {
        "data": {"b": 1.5, "a": [], "s": "é"},
        "info": {"user": 'u"1', "client": "cid", "conn_info": {"n": "Ann"}, "chan_info": {"r": 1}},
        "offset": 7,
        "tags": {"k": 'v"\n', "ü": "ß"},
    }


def test_publication_json_leaves_zero_fields_out() -> None:
    assert json.loads(proto.publication_json(b"[1]", 0, None)) == {"data": [1]}
    assert json.loads(proto.publication_json(b"null", 0, None, {})) == {"data": None}


@pytest.mark.parametrize("channel", ["news", 'quo"te', "back\\slash", "ünï:频道", "new\nline"])
def test_push_frame_and_body_are_valid_json(channel: str) -> None:
    pub = proto.publication_json(b'{"x":1}', 3, None)
    chan = proto.encode_str(channel)
    frame = json.loads(proto.push_frame(chan, b"pub", pub))
    assert frame == {"push": {"channel": channel, "pub": {"data": {"x": 1}, "offset": 3}}}
    body = json.loads(proto.push_body(chan, b"pub", pub))
    assert body == {"channel": channel, "pub": {"data": {"x": 1}, "offset": 3}}
    join = proto.client_info_json("c", "u", None, None)
    assert json.loads(proto.push_frame(chan, b"join", b'{"info":' + join + b"}")) == {
        "push": {"channel": channel, "join": {"info": {"user": "u", "client": "c"}}}}


_json_values = st.recursive(
    st.none() | st.booleans() | st.integers(min_value=-(2**53), max_value=2**53)
    | st.floats(allow_nan=False, allow_infinity=False) | st.text(max_size=20),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=8), inner,
                                                                max_size=4),
    max_leaves=20,
)


@settings(max_examples=150, deadline=None)
@given(value=_json_values, offset=st.integers(min_value=0, max_value=2**53),
       channel=st.text(min_size=1, max_size=30),
       tags=st.dictionaries(st.text(max_size=10), st.text(max_size=10), max_size=3))
def test_publication_push_round_trip_property(value: Any, offset: int, channel: str,
                                              tags: dict[str, str]) -> None:
    data = json.dumps(value, ensure_ascii=False).encode()
    pub = proto.publication_json(data, offset, None, tags)
    parsed = json.loads(proto.push_frame(proto.encode_str(channel), b"pub", pub))
    assert parsed["push"]["channel"] == channel
    assert parsed["push"]["pub"]["data"] == value
    assert parsed["push"]["pub"].get("offset", 0) == offset
    assert parsed["push"]["pub"].get("tags", {}) == tags


def test_replies_are_valid_json() -> None:
    assert json.loads(proto.reply(5, "subscribe", {"recoverable": True})) == {
        "id": 5, "subscribe": {"recoverable": True}}
    assert json.loads(proto.error_reply(6, 103, 'permission "denied"')) == {
        "id": 6, "error": {"code": 103, "message": 'permission "denied"'}}
    assert json.loads(proto.error_reply(7, 100, "internal", temporary=True)) == {
        "id": 7, "error": {"code": 100, "message": "internal", "temporary": True}}
    assert json.loads(proto.disconnect_body(3501, "bad request", False)) == {
        "disconnect": {"code": 3501, "reason": "bad request", "reconnect": False}}
    assert json.loads(proto.EMPTY_REPLY) == {}


# =============================================================================================
# SSE framing
# =============================================================================================


def test_sse_event_framing() -> None:
    assert sse.event(b'{"a":1}') == b'data: {"a":1}\n\n'
    assert sse.event(b"{}", id="3:e:news", name="pub") == (
        b'id: 3:e:news\nevent: pub\ndata: {}\n\n')
    assert sse.retry(2500) == b"retry: 2500\n\n"
    assert sse.KEEPALIVE.startswith(b":") and sse.KEEPALIVE.endswith(b"\n\n")


def test_sse_event_carries_a_unicode_cursor_id() -> None:
    cur = cursors.encode({"频道|x": (1, "e")})
    ev = sse.event(b"{}", id=cur)
    assert b"\n" not in cur.encode()
    assert ev.split(b"\n")[0] == b"id: " + cur.encode()


# =============================================================================================
# Tokens
# =============================================================================================

HMAC = "a-long-enough-hmac-secret-for-hs256-tokens-0123456789"


def _pem_public(private_key: Any) -> str:
    return private_key.public_key().public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo).decode()


@pytest.fixture(scope="module")
def rsa_key() -> rsa.RSAPrivateKey:
    return rsa.generate_private_key(public_exponent=65537, key_size=2048)


@pytest.fixture(scope="module")
def ec_key() -> ec.EllipticCurvePrivateKey:
    return ec.generate_private_key(ec.SECP256R1())


def in_an_hour() -> int:
    return int(time.time()) + 3600


def test_hs256_connect_token() -> None:
    exp = in_an_hour()
    token = jwt.encode({"sub": "42", "exp": exp, "info": {"name": "Ann", "é": 1}}, HMAC,
                       algorithm="HS256")
    claims = verify_connect_token(token, TokenKeys(hmac_secret=HMAC))
    assert claims.user == "42"
    assert claims.expire_at == exp
    assert claims.info is not None and json.loads(claims.info) == {"name": "Ann", "é": 1}
    assert claims.channels == ()


def test_connect_token_anonymous_without_exp() -> None:
    token = jwt.encode({"sub": ""}, HMAC, algorithm="HS256")
    claims = verify_connect_token(token, TokenKeys(hmac_secret=HMAC))
    assert (claims.user, claims.expire_at, claims.info) == ("", 0, None)


def test_rs256_connect_token(rsa_key: rsa.RSAPrivateKey) -> None:
    token = jwt.encode({"sub": "u1", "exp": in_an_hour()}, rsa_key, algorithm="RS256")
    claims = verify_connect_token(token, TokenKeys(rsa_public_key=_pem_public(rsa_key)))
    assert claims.user == "u1"


def test_es256_connect_token(ec_key: ec.EllipticCurvePrivateKey) -> None:
    token = jwt.encode({"sub": "u2", "exp": in_an_hour()}, ec_key, algorithm="ES256")
    claims = verify_connect_token(token, TokenKeys(ecdsa_public_key=_pem_public(ec_key)))
    assert claims.user == "u2"


def test_all_keys_configured_each_alg_uses_its_own(
    rsa_key: rsa.RSAPrivateKey, ec_key: ec.EllipticCurvePrivateKey
) -> None:
    keys = TokenKeys(hmac_secret=HMAC, rsa_public_key=_pem_public(rsa_key),
                     ecdsa_public_key=_pem_public(ec_key))
    for key, alg in ((HMAC, "HS256"), (rsa_key, "RS256"), (ec_key, "ES256")):
        token = jwt.encode({"sub": alg}, key, algorithm=alg)
        assert verify_connect_token(token, keys).user == alg


def test_b64info_claim() -> None:
    raw = b'{"avatar":"x.png","n":1}'
    token = jwt.encode({"sub": "1", "b64info": base64.b64encode(raw).decode()}, HMAC,
                       algorithm="HS256")
    assert verify_connect_token(token, TokenKeys(hmac_secret=HMAC)).info == raw


def test_b64info_invalid_base64_is_rejected() -> None:
    token = jwt.encode({"sub": "1", "b64info": "!!not base64!!"}, HMAC, algorithm="HS256")
    with pytest.raises(TokenError):
        verify_connect_token(token, TokenKeys(hmac_secret=HMAC))


def test_channels_claim() -> None:
    token = jwt.encode({"sub": "1", "channels": ["news", "chat:lobby"]}, HMAC, algorithm="HS256")
    claims = verify_connect_token(token, TokenKeys(hmac_secret=HMAC))
    assert claims.channels == ("news", "chat:lobby")


@pytest.mark.parametrize("claims", [
    {"sub": 42}, {"sub": "1", "channels": "news"}, {"sub": "1", "channels": [1, 2]},
    {"sub": "1", "exp": "tomorrow"},
])
def test_bad_claim_types_are_rejected(claims: dict[str, Any]) -> None:
    token = jwt.encode(claims, HMAC, algorithm="HS256")
    with pytest.raises(TokenError):
        verify_connect_token(token, TokenKeys(hmac_secret=HMAC))


def test_expired_token_says_expired() -> None:
    token = jwt.encode({"sub": "1", "exp": int(time.time()) - 60}, HMAC, algorithm="HS256")
    with pytest.raises(TokenError) as info:
        verify_connect_token(token, TokenKeys(hmac_secret=HMAC))
    assert info.value.expired is True


def test_wrong_hmac_key(rsa_key: rsa.RSAPrivateKey) -> None:
    token = jwt.encode({"sub": "1", "exp": in_an_hour()}, HMAC + "-other", algorithm="HS256")
    with pytest.raises(TokenError) as info:
        verify_connect_token(token, TokenKeys(hmac_secret=HMAC))
    assert info.value.expired is False


def test_wrong_rsa_key(rsa_key: rsa.RSAPrivateKey) -> None:
    other = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    token = jwt.encode({"sub": "1"}, other, algorithm="RS256")
    with pytest.raises(TokenError):
        verify_connect_token(token, TokenKeys(rsa_public_key=_pem_public(rsa_key)))


def test_alg_without_configured_key_is_rejected(rsa_key: rsa.RSAPrivateKey) -> None:
    rs_token = jwt.encode({"sub": "1"}, rsa_key, algorithm="RS256")
    with pytest.raises(TokenError):
        verify_connect_token(rs_token, TokenKeys(hmac_secret=HMAC))
    hs_token = jwt.encode({"sub": "1"}, HMAC, algorithm="HS256")
    with pytest.raises(TokenError):
        verify_connect_token(hs_token, TokenKeys(rsa_public_key=_pem_public(rsa_key)))


def test_algorithm_confusion_public_key_as_hmac_secret(rsa_key: rsa.RSAPrivateKey) -> None:
    # The classic attack: sign HS256 with the server's *public* RSA key as the secret.
    public_pem = _pem_public(rsa_key)
    def b64(raw: bytes) -> bytes:
        return base64.urlsafe_b64encode(raw).rstrip(b"=")

    def hand_signed(secret: str) -> str:
        # Built by hand: PyJWT itself refuses to sign with a PEM key as an HMAC secret.
        signing_input = b64(b'{"alg":"HS256","typ":"JWT"}') + b"." + b64(b'{"sub":"admin"}')
        sig = hmac.new(secret.encode(), signing_input, hashlib.sha256).digest()
        return (signing_input + b"." + b64(sig)).decode()

    # The hand-made token is well formed: signed with the real secret, it passes.
    assert verify_connect_token(hand_signed(HMAC), TokenKeys(hmac_secret=HMAC)).user == "admin"
    forged = hand_signed(public_pem)
    with pytest.raises(TokenError):
        verify_connect_token(forged, TokenKeys(rsa_public_key=public_pem))


def test_alg_none_is_rejected() -> None:
    token = jwt.encode({"sub": "admin"}, None, algorithm="none")
    with pytest.raises(TokenError):
        verify_connect_token(token, TokenKeys(hmac_secret=HMAC))


def test_no_keys_configured_and_malformed_tokens() -> None:
    token = jwt.encode({"sub": "1"}, HMAC, algorithm="HS256")
    with pytest.raises(TokenError):
        verify_connect_token(token, TokenKeys())
    for bad in ("", "abc", "a.b.c", "x" * 50 + ".y.z"):
        with pytest.raises(TokenError):
            verify_connect_token(bad, TokenKeys(hmac_secret=HMAC))


def test_audience_check() -> None:
    keys = TokenKeys(hmac_secret=HMAC, audience="clarion")
    ok = jwt.encode({"sub": "1", "aud": "clarion"}, HMAC, algorithm="HS256")
    ok_list = jwt.encode({"sub": "1", "aud": ["other", "clarion"]}, HMAC, algorithm="HS256")
    wrong = jwt.encode({"sub": "1", "aud": "other"}, HMAC, algorithm="HS256")
    missing = jwt.encode({"sub": "1"}, HMAC, algorithm="HS256")
    assert verify_connect_token(ok, keys).user == "1"
    assert verify_connect_token(ok_list, keys).user == "1"
    for token in (wrong, missing):
        with pytest.raises(TokenError):
            verify_connect_token(token, keys)
    # Without a configured audience an aud claim is not checked.
    assert verify_connect_token(wrong, TokenKeys(hmac_secret=HMAC)).user == "1"


def test_issuer_check() -> None:
    keys = TokenKeys(hmac_secret=HMAC, issuer="https://app.example")
    ok = jwt.encode({"sub": "1", "iss": "https://app.example"}, HMAC, algorithm="HS256")
    wrong = jwt.encode({"sub": "1", "iss": "https://evil.example"}, HMAC, algorithm="HS256")
    missing = jwt.encode({"sub": "1"}, HMAC, algorithm="HS256")
    assert verify_connect_token(ok, keys).user == "1"
    for token in (wrong, missing):
        with pytest.raises(TokenError):
            verify_connect_token(token, keys)
    assert verify_connect_token(wrong, TokenKeys(hmac_secret=HMAC)).user == "1"


def test_subscription_token_claims(ec_key: ec.EllipticCurvePrivateKey) -> None:
    exp = in_an_hour()
    token = jwt.encode({"sub": "42", "channel": "private:room", "exp": exp,
                        "info": {"role": "mod"}}, HMAC, algorithm="HS256")
    claims = verify_subscribe_token(token, TokenKeys(hmac_secret=HMAC))
    assert (claims.user, claims.channel, claims.expire_at) == ("42", "private:room", exp)
    assert claims.info is not None and json.loads(claims.info) == {"role": "mod"}
    es = jwt.encode({"sub": "", "channel": "c", "expire_at": exp + 5}, ec_key, algorithm="ES256")
    es_claims = verify_subscribe_token(es, TokenKeys(ecdsa_public_key=_pem_public(ec_key)))
    assert (es_claims.user, es_claims.channel, es_claims.expire_at) == ("", "c", exp + 5)


@pytest.mark.parametrize("claims", [
    {"sub": "1"}, {"sub": "1", "channel": ""}, {"sub": "1", "channel": 5},
    {"sub": 1, "channel": "c"},
])
def test_subscription_token_needs_sub_and_channel(claims: dict[str, Any]) -> None:
    token = jwt.encode(claims, HMAC, algorithm="HS256")
    with pytest.raises(TokenError):
        verify_subscribe_token(token, TokenKeys(hmac_secret=HMAC))


def test_expired_subscription_token() -> None:
    token = jwt.encode({"sub": "1", "channel": "c", "exp": int(time.time()) - 5}, HMAC,
                       algorithm="HS256")
    with pytest.raises(TokenError) as info:
        verify_subscribe_token(token, TokenKeys(hmac_secret=HMAC))
    assert info.value.expired is True


def test_looks_like_jwt() -> None:
    assert looks_like_jwt(jwt.encode({"sub": "1"}, HMAC, algorithm="HS256"))
    assert not looks_like_jwt("tkt_abcdef")
    assert not looks_like_jwt("ses_abc.def")


# =============================================================================================
# Configuration
# =============================================================================================


def write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "clarion.toml"
    path.write_text(text)
    return path


def test_load_config_from_toml(tmp_path: Path) -> None:
    path = write(tmp_path, """
port = 9100
api_key = "file-key"
token_hmac_secret = "file-secret"
presence = true
history_size = 50
history_ttl = "300s"
presence_ttl = "5m"
allowed_origins = ["https://a.example"]

[namespaces.chat]
history_size = 10
history_ttl = "1h"
allow_recovery = true
allow_subscribe_for_client = true
""")
    cfg = load_config(path, environ={})
    assert cfg.port == 9100
    assert cfg.api_key == "file-key"
    assert cfg.token_hmac_secret == "file-secret"
    assert cfg.presence is True
    assert cfg.history_size == 50
    assert cfg.history_ttl == 300.0
    assert cfg.seconds("presence_ttl") == 300.0
    assert cfg.allowed_origins == ["https://a.example"]
    chat = cfg.namespaces["chat"]
    assert chat.history_ttl == 3600.0
    assert chat.allow_recovery and chat.allow_subscribe_for_client
    assert chat.history_enabled


def test_defaults_without_a_file() -> None:
    cfg = load_config(None, environ={})
    assert cfg.port == 8000
    assert cfg.host == "127.0.0.1"
    assert cfg.broker == "memory"
    assert cfg.namespaces == {}
    assert cfg.seconds("ping_interval") == 25.0


def test_environment_overrides_the_file(tmp_path: Path) -> None:
    path = write(tmp_path, 'port = 9100\napi_key = "file-key"\ntoken_hmac_secret = "file"\n')
    cfg = load_config(path, environ={
        "CLARION_API_KEY": "env-key",
        "CLARION_TOKEN_HMAC_SECRET": "env-secret",
        "CLARION_PORT": "9200",
        "CLARION_PRESENCE_TTL": "2m",
        "CLARION_ALLOW_ANONYMOUS_CONNECT_WITHOUT_TOKEN": "true",
        "CLARION_ALLOWED_ORIGINS": "https://a.example,https://b.example",
        "UNRELATED": "x",
    })
    assert cfg.api_key == "env-key"
    assert cfg.token_hmac_secret == "env-secret"
    assert cfg.port == 9200
    assert cfg.seconds("presence_ttl") == 120.0
    assert cfg.allow_anonymous_connect_without_token is True
    assert cfg.allowed_origins == ["https://a.example", "https://b.example"]


def test_overrides_beat_the_environment(tmp_path: Path) -> None:
    path = write(tmp_path, "port = 9100\n")
    cfg = load_config(path, environ={"CLARION_PORT": "9200"},
                      overrides={"port": 9300, "host": None})
    assert cfg.port == 9300
    assert cfg.host == "127.0.0.1"  # None overrides are ignored


def test_environment_is_read_from_os_environ(tmp_path: Path,
                                             monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("CLARION_API_KEY", "from-os")
    assert load_config(write(tmp_path, 'api_key = "f"\n')).api_key == "from-os"


@pytest.mark.parametrize(("value", "seconds"), [
    ("300s", 300.0), ("5m", 300.0), ("1h", 3600.0), ("2d", 172800.0), ("250ms", 0.25),
    ("1.5s", 1.5), ("30", 30.0), (" 5m ", 300.0), (30, 30.0), (0.5, 0.5), (0, 0.0),
])
def test_parse_duration(value: float | str, seconds: float) -> None:
    assert parse_duration(value, "x") == seconds


@pytest.mark.parametrize("value", ["5 minutes", "m", "", "-5s", "5w", "1e3s", -1])
def test_parse_duration_rejects(value: float | str) -> None:
    with pytest.raises(ValueError, match="x"):
        parse_duration(value, "x")


def test_bad_duration_in_file_is_config_error(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="presence_ttl"):
        load_config(write(tmp_path, 'presence_ttl = "soon"\n'), environ={})


def test_unknown_option_is_named(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="histroy_size"):
        load_config(write(tmp_path, "histroy_size = 10\n"), environ={})


def test_unknown_namespace_option_is_named(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="allow_subscibe_for_client"):
        load_config(write(tmp_path, "[namespaces.chat]\nallow_subscibe_for_client = true\n"),
                    environ={})


@pytest.mark.parametrize("text", [
    "history_size = 10\n",
    'history_ttl = "5m"\n',
    "[namespaces.chat]\nhistory_size = 10\n",
])
def test_history_size_and_ttl_go_together(tmp_path: Path, text: str) -> None:
    with pytest.raises(ConfigError, match="history_size and history_ttl"):
        load_config(write(tmp_path, text), environ={})


@pytest.mark.parametrize("text", [
    "allow_recovery = true\n",
    "force_recovery = true\n",
    "[namespaces.chat]\nallow_recovery = true\n",
])
def test_recovery_needs_history(tmp_path: Path, text: str) -> None:
    with pytest.raises(ConfigError, match="recovery"):
        load_config(write(tmp_path, text), environ={})


@pytest.mark.parametrize(("text", "env", "word"), [
    ("", {"CLARION_PORT": "abc"}, "port"),
    ("", {"CLARION_PORT": "0"}, "port"),
    ("port = 70000\n", {}, "port"),
    ('log_format = "xml"\n', {}, "log_format"),
    ("client_max_message_size = 0\n", {}, "client_max_message_size"),
    ('[namespaces."bad name!"]\n', {}, "bad name!"),
    ('[namespaces.x]\nchannel_regex = "("\n', {}, "channel_regex"),
    ("history_size = -1\nhistory_ttl = 5\n", {}, "history_size"),
])
def test_invalid_values_are_config_errors(tmp_path: Path, text: str, env: dict[str, str],
                                          word: str) -> None:
    with pytest.raises(ConfigError, match=word):
        load_config(write(tmp_path, text), environ=env)


def test_missing_or_broken_file_is_config_error(tmp_path: Path) -> None:
    with pytest.raises(ConfigError):
        load_config(tmp_path / "nope.toml", environ={})
    with pytest.raises(ConfigError):
        load_config(write(tmp_path, "port = = 1\n"), environ={})


# =============================================================================================
# Channel rules
# =============================================================================================


def rules(**top: Any) -> ChannelRules:
    namespaces = {
        "chat": {"allow_subscribe_for_client": True, "allow_publish_for_subscriber": True,
                 "allow_history_for_subscriber": True, "allow_presence_for_client": True,
                 "history_size": 10, "history_ttl": "5m"},
        "open": {"allow_subscribe_for_client": True, "allow_subscribe_for_anonymous": True,
                 "allow_publish_for_client": True, "allow_publish_for_anonymous": True,
                 "allow_history_for_client": True, "allow_history_for_anonymous": True,
                 "allow_presence_for_client": True, "allow_presence_for_anonymous": True},
        "dm": {"allow_user_limited_channels": True},
        "locked": {},
        "rx": {"allow_subscribe_for_client": True, "channel_regex": r"[a-z]+\d*"},
    }
    cfg = load_config(None, environ={}, overrides={"namespaces": namespaces, **top})
    return ChannelRules(cfg)


def reply_code(fn: Any, *args: Any) -> int:
    with pytest.raises(ReplyError) as info:
        fn(*args)
    return info.value.code


def test_namespace_resolution() -> None:
    r = rules(presence=True)
    assert isinstance(r.options("news"), Config)  # no namespace: the top-level options
    assert r.options("news").presence is True
    chat = r.options("chat:room-1")
    assert chat.allow_subscribe_for_client and chat.history_enabled
    assert r.options("chat:") is chat
    assert r.options("chat:a:b") is chat  # only the first ':' separates the namespace
    assert r.options("dm:x#1,2").allow_user_limited_channels


def test_unknown_namespace_is_102() -> None:
    r = rules()
    assert reply_code(r.options, "nope:room") == 102
    assert reply_code(r.options, ":room") == 102
    assert reply_code(r.check_subscribe, "nope:room", "u", False) == 102


def test_channel_regex() -> None:
    r = rules()
    assert r.options("rx:abc12").allow_subscribe_for_client
    assert reply_code(r.options, "rx:ABC") == 102
    assert reply_code(r.options, "rx:abc-1") == 102  # fullmatch, not a prefix


@pytest.mark.parametrize("channel", ["", "x" * 256, "bad\nchannel", "tab\there", "nul\x00"])
def test_invalid_channel_names_are_bad_request(channel: str) -> None:
    assert reply_code(rules().options, channel) == 107


def test_channel_length_limit() -> None:
    assert rules().options("x" * 255) is not None


def test_limited_users() -> None:
    assert ChannelRules.limited_users("dm:talk#1,2") == frozenset({"1", "2"})
    assert ChannelRules.limited_users("dm:talk#42") == frozenset({"42"})
    assert ChannelRules.limited_users("dm:a#b#3,,4") == frozenset({"3", "4"})
    assert ChannelRules.limited_users("dm:talk#") == frozenset()
    assert ChannelRules.limited_users("news") is None


def test_user_limited_channels() -> None:
    r = rules()
    assert r.check_subscribe("dm:talk#1,2", "1", False).allow_user_limited_channels
    assert r.check_subscribe("dm:talk#1,2", "2", False)
    assert reply_code(r.check_subscribe, "dm:talk#1,2", "3", False) == 103
    assert reply_code(r.check_subscribe, "dm:talk#1,2", "", False) == 103
    assert reply_code(r.check_subscribe, "dm:talk#", "", False) == 103
    # A subscription token grants access whatever the user list says.
    assert r.check_subscribe("dm:talk#1,2", "3", True)
    # Where user-limited channels are off, '#' is an ordinary character.
    assert reply_code(r.check_subscribe, "locked:talk#1", "1", False) == 103
    assert r.check_subscribe("chat:talk#1", "9", False)


def test_subscribe_permissions_anonymous_vs_users() -> None:
    r = rules()
    assert r.check_subscribe("chat:room", "u1", False)
    assert reply_code(r.check_subscribe, "chat:room", "", False) == 103
    assert r.check_subscribe("open:room", "", False)
    assert r.check_subscribe("open:room", "u1", False)
    assert reply_code(r.check_subscribe, "locked:room", "u1", False) == 103
    assert reply_code(r.check_subscribe, "locked:room", "", False) == 103
    assert r.check_subscribe("locked:room", "", True)  # with a subscription token
    assert reply_code(r.check_subscribe, "news", "u1", False) == 103  # top level: all off


@pytest.mark.parametrize("action", ["publish", "history", "presence"])
def test_action_permissions(action: str) -> None:
    r = rules()
    check = ChannelRules.check_action
    opened = r.options("open:room")
    check(opened, action, "u1", False)
    check(opened, action, "", False)
    locked = r.options("locked:room")
    for user, subscribed in (("u1", True), ("u1", False), ("", True), ("", False)):
        assert reply_code(check, locked, action, user, subscribed) == 103


def test_action_for_subscriber_needs_subscription() -> None:
    chat = rules().options("chat:room")
    check = ChannelRules.check_action
    check(chat, "publish", "u1", True)
    assert reply_code(check, chat, "publish", "u1", False) == 103
    assert reply_code(check, chat, "publish", "", True) == 103  # anonymous not allowed
    check(chat, "history", "u1", True)
    assert reply_code(check, chat, "history", "u1", False) == 103
    check(chat, "presence", "u1", False)  # allow_presence_for_client: no subscription needed
    assert reply_code(check, chat, "presence", "", False) == 103


def test_action_for_anonymous_alone_is_not_enough() -> None:
    cfg = load_config(None, environ={}, overrides={"namespaces": {
        "anon": {"allow_publish_for_anonymous": True},
        "anonsub": {"allow_publish_for_anonymous": True, "allow_publish_for_subscriber": True},
    }})
    r = ChannelRules(cfg)
    check = ChannelRules.check_action
    assert reply_code(check, r.options("anon:x"), "publish", "", True) == 103
    assert reply_code(check, r.options("anon:x"), "publish", "u", True) == 103
    check(r.options("anonsub:x"), "publish", "", True)
    assert reply_code(check, r.options("anonsub:x"), "publish", "", False) == 103
