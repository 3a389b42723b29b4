"""Property-based fuzzing (hypothesis) where a byte-mutating fuzzer cannot reach: tokens with
valid signatures and hostile claims, structured configuration values, listener filters, and JSON
nested as deep as the stack allows. Same property as tests/fuzz/: for any input, the documented
error class or a result, nothing else."""

from __future__ import annotations

import base64
import contextlib
import hashlib
import hmac
import json
import math
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from clarion.errors import ConfigError, Disconnect, GripError, TokenError, WebhookError
from clarion.hub import config
from clarion.protocol import client, tokens
from clarion.protocol.grip import filters, instruct, items, sig, wsevents
from clarion.webhooks import signing

FUZZ = settings(max_examples=150, deadline=None, suppress_health_check=list(HealthCheck),
                database=None)

json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats() | st.text(max_size=20),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=8), inner,
                                                                  max_size=4),
    max_leaves=20)

SECRET = "fuzz-secret-that-is-long-enough-for-hs256"
KEYS = tokens.TokenKeys(hmac_secret=SECRET)


def _hs256(claims: dict[str, Any], secret: str) -> str:
    """Signed as they are: PyJWT's encoder refuses some claim types a forged token can hold,
    and json.dumps writes NaN and Infinity, which PyJWT's decoder reads back."""
    def part(raw: bytes) -> bytes:
        return base64.urlsafe_b64encode(raw).rstrip(b"=")

    signing_input = part(b'{"alg":"HS256","typ":"JWT"}') + b"." + part(json.dumps(claims).encode())
    mac = hmac.new(secret.encode(), signing_input, hashlib.sha256).digest()
    return (signing_input + b"." + part(mac)).decode()


CLAIMS = ["sub", "exp", "expire_at", "info", "b64info", "channels", "channel", "aud", "iss"]


@FUZZ
@given(st.dictionaries(st.sampled_from(CLAIMS) | st.text(max_size=5), json_values, max_size=6))
def test_tokens_with_any_claims(claims: dict[str, Any]) -> None:
    token = _hs256(claims, SECRET)
    for verify in (tokens.verify_connect_token, tokens.verify_subscribe_token):
        try:
            result = verify(token, KEYS)
        except TokenError:
            continue
        if result.info is not None:  # the info goes into pushes as it is: it must be JSON
            json.loads(result.info, parse_constant=lambda c: pytest.fail(f"{c} in info"))


@FUZZ
@given(st.dictionaries(st.sampled_from(["iss", "exp"]) | st.text(max_size=5), json_values,
                       max_size=4))
def test_grip_sig_with_any_claims(claims: dict[str, Any]) -> None:
    with contextlib.suppress(GripError):
        sig.verify(_hs256(claims, "changeme"), b"changeme", iss="pushpin")


FIELDS = sorted(config.Config.__struct_fields__)


@FUZZ
@given(st.dictionaries(st.sampled_from(FIELDS), json_values, max_size=4),
       st.dictionaries(st.sampled_from([f"CLARION_{f.upper()}" for f in FIELDS]),
                       st.text(max_size=12), max_size=4))
def test_config_with_any_values(overrides: dict[str, Any], environ: dict[str, str]) -> None:
    try:
        cfg = config.load_config(environ=environ, overrides=overrides)
    except ConfigError:
        return
    for name in ("ping_interval", "history_ttl", "session_ttl"):
        assert math.isfinite(cfg.seconds(name))


@FUZZ
@given(st.dictionaries(st.text(max_size=10), json_values, max_size=3))
def test_config_namespaces_with_any_values(options: dict[str, Any]) -> None:
    with contextlib.suppress(ConfigError):
        config.load_config(environ={}, overrides={"namespaces": {"ns": options}})


# -- JSON nested as deep as the stack allows, and deeper ---------------------------------------

INSTRUCT = instruct.INSTRUCT_CONTENT_TYPE
depths = st.integers(min_value=1, max_value=20_000)


@settings(FUZZ, max_examples=40)
@given(depths, st.sampled_from([b"[", b'{"a":']))
def test_deep_json_everywhere(depth: int, opener: bytes) -> None:
    closer = b"]" if opener == b"[" else b"}"
    nested = opener * depth + b"1" + closer * depth
    with pytest.raises(Disconnect) if depth > 2000 else _maybe(Disconnect):
        client.decode_commands(b'{"id":1,"rpc":{"data":' + nested + b"}}")
    for parse in (lambda: items.parse_publish(b'{"items":[],"x":' + nested + b"}"),
                  lambda: wsevents.parse_control(b'{"type":"detach","x":' + nested + b"}"),
                  lambda: instruct.parse(200, "OK", [("Content-Type", INSTRUCT)],
                                         b'{"x":' + nested + b"}")):
        with _maybe(GripError):
            parse()


class _maybe:
    """Either no exception or the documented one."""

    def __init__(self, allowed: type[BaseException]) -> None:
        self.allowed = allowed

    def __enter__(self) -> None:
        return None

    def __exit__(self, kind: type[BaseException] | None, *_: object) -> bool:
        return kind is None or issubclass(kind, self.allowed)


# -- GRIP filters and webhook verification, structured -----------------------------------------

latin1 = st.text(alphabet=st.characters(max_codepoint=255), max_size=12)


@FUZZ
@given(st.lists(st.sampled_from(sorted(instruct.FILTERS)), max_size=5), st.binary(max_size=60),
       st.dictionaries(st.sampled_from(["user", "id_format", "id_encoding", "a"]), latin1),
       st.dictionaries(st.sampled_from(["sender", "skip_users", "require_sub"]), st.text()),
       st.dictionaries(st.text(max_size=5), st.none() | st.text(max_size=5), max_size=3))
def test_grip_filters(names: list[str], content: bytes, sub_meta: dict[str, str],
                      pub_meta: dict[str, str], last_ids: dict[str, str | None]) -> None:
    with _maybe(GripError):
        filters.apply(names, content, sub_meta, pub_meta, last_ids)


HMAC = "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw"


@FUZZ
@given(st.lists(st.tuples(st.sampled_from(["webhook-id", "webhook-timestamp",
                                           "webhook-signature", "Webhook-Id", "x"]), latin1),
                max_size=6),
       st.binary(max_size=40) | st.text(max_size=40),
       st.lists(st.text(max_size=50), min_size=1, max_size=3),
       st.floats(min_value=0, max_value=1e12) | st.just(math.inf))
def test_webhook_verify(headers: list[tuple[str, str]], body: bytes | str, secrets: list[str],
                        tolerance: float) -> None:
    for keys in ([HMAC], secrets):
        with _maybe(WebhookError):
            signing.verify(body, headers, keys, tolerance=tolerance, now=1_700_000_000)


# -- listener filters (clarion.django.match) ---------------------------------------------------

def _spec(children: st.SearchStrategy[dict[str, Any]]) -> st.SearchStrategy[dict[str, Any]]:
    name = st.text(max_size=4)
    return st.one_of(
        st.builds(lambda a: {"op": "not", "arg": a}, children),
        st.builds(lambda a: {"op": "and", "args": a}, st.lists(children, max_size=3)),
        st.builds(lambda a: {"op": "or", "args": a}, st.lists(children, max_size=3)),
        st.builds(lambda m: {"op": "fields", "match": m},
                  st.dictionaries(name, children, max_size=3)))


leaf_specs = st.one_of(
    st.just({"op": "any"}),
    st.builds(lambda v: {"op": "is", "value": v}, json_values),
    st.builds(lambda op, v: {"op": op, "value": v},
              st.sampled_from(["startswith", "endswith", "contains"]), st.text(max_size=5)),
    st.builds(lambda op, v: {"op": op, "value": v}, st.sampled_from(["gt", "gte", "lt", "lte"]),
              st.integers() | st.floats() | st.text(max_size=5)),
    st.builds(lambda v: {"op": "in", "values": v}, st.lists(json_values, max_size=3)),
    st.builds(lambda v: {"op": "exists", "value": v}, st.booleans()),
    st.builds(lambda v: {"op": "like", "value": v}, st.sampled_from(["^a", "b$", "[0-9]+", "x|y"])))
well_formed = st.recursive(leaf_specs, _spec, max_leaves=8)


@FUZZ
@given(st.dictionaries(st.text(max_size=4), well_formed, max_size=3),
       st.dictionaries(st.text(max_size=4), json_values, max_size=4))
def test_match_well_formed_filters_evaluate(stored: dict[str, Any], data: dict[str, Any]) -> None:
    from clarion.django import match

    conditions = match.filter_from_json(stored)
    assert match.filter_to_json(conditions) == match.filter_to_json(
        match.filter_from_json(match.filter_to_json(conditions)))
    assert isinstance(match.matches(conditions, data), bool)


@FUZZ
@given(json_values | st.dictionaries(
    st.sampled_from(["op", "value", "values", "arg", "args", "match"]),
    json_values | st.sampled_from(["any", "is", "in", "not", "and", "fields", "like", "gt"]),
    max_size=3))
def test_match_any_json_filter(spec: Any) -> None:
    from clarion.django import match

    with contextlib.suppress(ValueError):
        match.from_json(spec)
