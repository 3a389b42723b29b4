"""Every crash the fuzzers (tests/test_fuzz.py, tests/test_fuzz_properties.py) found, as the
exact input that found it. The property is always the same: the parser returns or raises the
error class it documents, never anything else."""

from __future__ import annotations

import base64
import hashlib
import hmac
from pathlib import Path

import httpx
import jwt
import pytest

from clarion.errors import ConfigError, Disconnect, GripError, TokenError
from clarion.hub import config
from clarion.protocol import client, tokens
from clarion.protocol.grip import filters, instruct, items, sig, wsevents
from clarion.webhooks import retry
from conftest import API_KEY, HubFactory

DEEP = 100_000  # far deeper than the interpreter's stack: msgspec and json raise RecursionError


def deep(prefix: bytes = b"", suffix: bytes = b"") -> bytes:
    return prefix + b"[" * DEEP + b"]" * DEEP + suffix


# -- hub configuration -------------------------------------------------------------------------

def _load(tmp_path: Path, toml: bytes) -> config.Config:
    path = tmp_path / "clarion.toml"
    path.write_bytes(toml)
    return config.load_config(path, environ={})


def test_config_file_that_is_not_utf8(tmp_path: Path) -> None:
    # atheris, fuzz_config: tomllib's UnicodeDecodeError escaped load_config.
    with pytest.raises(ConfigError, match="UTF-8"):
        _load(tmp_path, b'allowed_origins = ["http:\xdf//a"]\n')


def test_config_file_nested_too_deeply(tmp_path: Path) -> None:
    # tomllib recurses per nesting level: RecursionError escaped load_config.
    with pytest.raises(ConfigError, match="nested too deeply"):
        _load(tmp_path, b"a = " + b"[" * 5000 + b"]" * 5000)


def test_config_channel_regex_nested_too_deeply(tmp_path: Path) -> None:
    # re.compile recurses per group; msgspec passes RecursionError from __post_init__ through.
    with pytest.raises(ConfigError, match="channel_regex"):
        _load(tmp_path, b'channel_regex = "' + b"(" * 1200 + b")" * 1200 + b'"')


@pytest.mark.parametrize("value", [b"nan", b"inf", b'"' + b"9" * 400 + b's"'])
def test_config_durations_must_be_finite(tmp_path: Path, value: bytes) -> None:
    # A NaN ping_interval passed every check (all comparisons with NaN are false).
    with pytest.raises(ConfigError, match="finite"):
        _load(tmp_path, b"ping_interval = " + value)


# -- client protocol and GRIP: JSON nested deeper than the stack -------------------------------

def test_client_frame_nested_too_deeply() -> None:
    # msgspec raises RecursionError, which decode_commands let escape (the hub's read callback).
    with pytest.raises(Disconnect) as caught:
        client.decode_commands(deep(b'{"id":1,"publish":{"channel":"c","data":', b"}}"))
    assert caught.value.code == 3501


def test_grip_publish_nested_too_deeply() -> None:
    with pytest.raises(GripError, match="nested too deeply"):
        items.parse_publish(deep(b'{"items":[{"channel":"c","http-response":{"body-patch":',
                                 b"}}]}"))


def test_grip_instruct_nested_too_deeply() -> None:
    with pytest.raises(GripError, match="nested too deeply"):
        instruct.parse(200, "OK", [("Content-Type", "application/grip-instruct")],
                       deep(b'{"x":', b"}"))


def test_grip_control_message_nested_too_deeply() -> None:
    with pytest.raises(GripError, match="nested too deeply"):
        wsevents.parse_control(deep(b'{"type":"detach","x":', b"}"))


def test_grip_var_subst_name_not_utf8() -> None:
    # Published content is bytes: "%(\xff)s" made name.decode() raise UnicodeDecodeError.
    with pytest.raises(GripError, match="no such variable"):
        filters.apply(["var-subst"], b"%(\xff)s", {"user": "a"}, {}, {})


def test_grip_sig_base64_key_not_ascii() -> None:
    # atheris, fuzz_grip_sig: b64decode's "only ASCII characters" ValueError is no binascii.Error.
    with pytest.raises(GripError, match="not valid base64"):
        sig.decode_key("base64:-----BEGIN PRIVATE KEY-----\nMC4CA\xaf\xbe\xc2\xf5\xd2\xd2\xd2\xda")


# -- tokens: valid signatures, hostile claims --------------------------------------------------

SECRET = "fuzz-secret-that-is-long-enough-for-hs256"
KEYS = tokens.TokenKeys(hmac_secret=SECRET)


def _signed(payload: bytes) -> str:
    """An HS256 token over payload bytes as they are (PyJWT would not write NaN or Infinity)."""
    def part(raw: bytes) -> bytes:
        return base64.urlsafe_b64encode(raw).rstrip(b"=")

    signing_input = part(b'{"alg":"HS256","typ":"JWT"}') + b"." + part(payload)
    mac = hmac.new(SECRET.encode(), signing_input, hashlib.sha256).digest()
    return (signing_input + b"." + part(mac)).decode()


@pytest.mark.parametrize("payload", [
    b'{"sub":"u","b64info":5}',  # TypeError from b64decode
    b'{"sub":"u","b64info":"' + base64.b64encode(deep()) + b'"}',  # RecursionError
    b'{"sub":"u","b64info":"' + base64.b64encode(b"NaN") + b'"}',  # not JSON, was accepted
    b'{"sub":"u","info":NaN}',  # written into pushes as NaN: not JSON
    b'{"sub":"u","expire_at":Infinity}',  # OverflowError from int()
    b'{"sub":"u","expire_at":NaN}',  # ValueError from int()
], ids=["b64info-int", "b64info-deep", "b64info-nan", "info-nan", "expire-inf", "expire-nan"])
def test_connect_token_claims(payload: bytes) -> None:
    with pytest.raises(TokenError):
        tokens.verify_connect_token(_signed(payload), KEYS)


def test_good_info_still_passes() -> None:
    token = jwt.encode({"sub": "u", "info": {"a": [1, 2.5]}}, SECRET, algorithm="HS256")
    assert tokens.verify_connect_token(token, KEYS).info == b'{"a":[1,2.5]}'


# -- webhooks ----------------------------------------------------------------------------------

def test_retry_after_date_with_a_huge_year() -> None:
    # atheris, fuzz_webhook_retry_after: datetime() raised OverflowError on the year.
    value = ", 21 Oct 7:00\x1d333333333333333333333333333333333333333333333333333333333333333335"
    assert retry.parse_retry_after(value, 1_700_000_000.0) is None


# -- the hub's server API on a real socket -----------------------------------------------------

@pytest.mark.parametrize("method,body", [
    ("publish", deep(b'{"channel":"c","data":', b"}")),
    ("publish", deep(b'{"channel":1,"data":', b"}")),  # the shape fails first, then re-read
    ("batch", deep(b'{"commands":[{"publish":', b"}]}")),
], ids=["publish", "publish-invalid", "batch"])
def test_server_api_body_nested_too_deeply(hub_factory: HubFactory, method: str,
                                           body: bytes) -> None:
    hub = hub_factory("api_max_body_size = 1000000\n")
    r = httpx.post(f"{hub.url}/api/{method}", content=body, timeout=10, trust_env=False,
                   headers={"X-API-Key": API_KEY, "Content-Type": "application/json"})
    assert r.status_code in (200, 400), r.text
    if r.status_code == 200:  # batch: the command's own error, as Centrifugo answers
        assert r.json()["replies"][0]["error"]["code"] == 107
    assert "Traceback" not in hub.output()


# -- listener filters ------------------------------------------------------------------------


def _nested_not(depth: int) -> dict[str, object]:
    spec: dict[str, object] = {"op": "any"}
    for _ in range(depth):
        spec = {"op": "not", "arg": spec}
    return spec


@pytest.mark.parametrize("spec", [
    {"op": "fields", "match": [1]},  # AttributeError: 'list' object has no attribute 'items'
    {"op": []},  # TypeError: unhashable type: 'list'
    _nested_not(5000),  # RecursionError
], ids=["fields-match-list", "op-unhashable", "nested-5000"])
def test_match_from_json_raises_value_error(spec: dict[str, object]) -> None:
    from clarion.django import match

    with pytest.raises(ValueError):
        match.from_json(spec)
