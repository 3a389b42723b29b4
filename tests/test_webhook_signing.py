"""Standard Webhooks signing (clarion.webhooks.signing) against the outside world: the reference
Python library ``standardwebhooks`` verifies what we sign and signs what we verify, ed25519
signatures are checked with ``cryptography`` directly, and published test vectors from the
standard-webhooks and Svix repositories are reproduced byte for byte."""

from __future__ import annotations

import base64
import hashlib
import hmac
import pickle
import time
from datetime import UTC, datetime

import pytest
import standardwebhooks
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey
from hypothesis import given, settings
from hypothesis import strategies as st

from clarion.errors import SignatureError, WebhookError
from clarion.webhooks.signing import (
    SigningKey,
    Verifier,
    generate_secret,
    sign,
    signature_headers,
    verify,
)

NOW = 1_700_000_000
BODY = b'{"type":"invoice.paid","data":{"id":"in_1","amount":4200}}'
MSG_ID = "msg_2KWPBgLlAfxdpx2AI54pPJ85f4W"

# Published vector, in both reference suites: standard-webhooks
# libraries/python/tests/test_webhooks.py::test_sign_function and svix-webhooks
# python/tests/test_webhooks.py::test_sign_function.
VECTOR_SECRET = "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw"
VECTOR_ID = "msg_p5jXN8AQM9LWM0D4loKWxJek"
VECTOR_TS = 1614265330
VECTOR_BODY = b'{"test": 2432232314}'
VECTOR_V1 = "v1,g0hM9SsE+OTPJTGt/tmIKtSyZlE3uFJELVlNIOLJ1OE="
# Published ed25519 vector: standard-webhooks libraries/go/webhook_asymmetric_test.go,
# TestAsymmetricWebhookSign (same id, timestamp and body; the key there is the 32-byte seed,
# without the whsk_ prefix, which the Go library also strips when present).
VECTOR_SEED_B64 = "VEVTVFNJR05JTkdLRVlET05PVFVTRVRISVNGT1JBTlk="
VECTOR_V1A = (
    "v1a,tQ9V2XOqn7jL/DQenEFpqIugdBVtiMmER5mhSkXBNwM0mkATuDe6KYYUuxqtaiHeYGb7KaaBRdM5WqyeFiL8Ag=="
)


def headers_now(
    keys: list[SigningKey | str], body: bytes = BODY, msg_id: str = MSG_ID
) -> dict[str, str]:
    return signature_headers(msg_id, int(time.time()), body, keys)


def failure(body: bytes | str, headers: object, secrets: object, **kwargs: object) -> str:
    """The message verify gives (it must refuse)."""
    with pytest.raises(SignatureError) as info:
        verify(body, headers, secrets, **kwargs)  # type: ignore[arg-type]
    return str(info.value)


def entries(header: str) -> dict[str, list[bytes]]:
    out: dict[str, list[bytes]] = {}
    for entry in header.split(" "):
        version, _, value = entry.partition(",")
        out.setdefault(version, []).append(base64.b64decode(value, validate=True))
    return out


# -- published vectors ----------------------------------------------------------------------------


def test_v1_published_vector_sign_and_verify() -> None:
    key = SigningKey.parse(VECTOR_SECRET)
    assert key.sign(VECTOR_ID, VECTOR_TS, VECTOR_BODY) == VECTOR_V1
    headers = {
        "webhook-id": VECTOR_ID,
        "webhook-timestamp": str(VECTOR_TS),
        "webhook-signature": VECTOR_V1,
    }
    assert verify(VECTOR_BODY, headers, VECTOR_SECRET, now=VECTOR_TS) == VECTOR_ID
    # the reference suites use the bare base64 form of the same secret on the receiving side
    assert verify(VECTOR_BODY, headers, VECTOR_SECRET.removeprefix("whsec_"), now=VECTOR_TS)
    # and the reference library agrees with the vector (its sign() takes a datetime and a str)
    ts = datetime.fromtimestamp(VECTOR_TS, tz=UTC)
    ref = standardwebhooks.Webhook(VECTOR_SECRET)
    assert ref.sign(VECTOR_ID, ts, VECTOR_BODY.decode()) == VECTOR_V1


@pytest.mark.parametrize("layout", ["seed", "seed+public"])
def test_v1a_published_vector(layout: str) -> None:
    seed = base64.b64decode(VECTOR_SEED_B64)
    assert len(seed) == 32
    raw = seed
    if layout == "seed+public":  # what the Svix server writes
        raw += Ed25519PrivateKey.from_private_bytes(seed).public_key().public_bytes_raw()
    key = SigningKey.parse("whsk_" + base64.b64encode(raw).decode())
    assert key.kind == "ed25519"
    assert key.sign(VECTOR_ID, VECTOR_TS, VECTOR_BODY) == VECTOR_V1A
    headers = {
        "webhook-id": VECTOR_ID,
        "webhook-timestamp": str(VECTOR_TS),
        "webhook-signature": VECTOR_V1A,
    }
    for secret in (key.public(), str(key), "whsk_" + VECTOR_SEED_B64):
        assert verify(VECTOR_BODY, headers, secret, now=VECTOR_TS) == VECTOR_ID


def test_spec_example_header_parses_but_has_no_published_secret() -> None:
    # spec/standard-webhooks.md shows these headers but not the keys that made them, so they can
    # only be checked for shape: a 32-byte v1 HMAC and a 64-byte v1a ed25519 signature, and a
    # receiver holding other keys gets "no signature matched" (not a parse error).
    header = (
        "v1,K5oZfzN95Z9UVu1EsfQmfVNQhnkZ2pj9o9NDN/H/pI4= "
        "v1a,hnO3f9T8Ytu9HwrXslvumlUpqtNVqkhqw/enGzPCXe5BdqzCInXqYXFymVJaA7AZdpXwVLPo3mNl8EM+m7TBAg=="
    )
    decoded = entries(header)
    assert [len(s) for s in decoded["v1"]] == [32]
    assert [len(s) for s in decoded["v1a"]] == [64]
    headers = {
        "webhook-id": "msg_2KWPBgLlAfxdpx2AI54pPJ85f4W",
        "webhook-timestamp": "1674087231",
        "webhook-signature": header,
    }
    body = (
        b'{"type":"contact.created","timestamp":"2022-11-03T20:26:10.344522Z",'
        b'"data":{"id":"1f81eb52-5198-4599-803e-771906343485"}}'
    )
    keys = [generate_secret("hmac"), SigningKey.generate("ed25519").public()]
    message = failure(body, headers, keys, now=1674087231)
    assert message == ("no signature matched: 2 v1 or v1a signature(s) checked against 2 secret(s)")


# -- our signatures, the reference library's verify -----------------------------------------------


@pytest.mark.parametrize("prefixed", [True, False])
def test_reference_library_verifies_our_v1(prefixed: bool) -> None:
    key = SigningKey.generate()
    headers = headers_now([key])
    secret = str(key) if prefixed else str(key).removeprefix("whsec_")
    parsed = standardwebhooks.Webhook(secret).verify(BODY, headers)
    assert parsed["data"]["amount"] == 4200


def test_reference_library_verifies_either_key_during_rotation() -> None:
    old, new = SigningKey.generate(), SigningKey.generate()
    headers = headers_now([new, old])
    assert len(headers["webhook-signature"].split(" ")) == 2
    for key in (old, new):
        assert standardwebhooks.Webhook(str(key)).verify(BODY, headers)["type"] == "invoice.paid"
    # a key that signed nothing is refused by the reference library too
    with pytest.raises(standardwebhooks.WebhookVerificationError):
        standardwebhooks.Webhook(generate_secret()).verify(BODY, headers)


def test_reference_library_skips_our_v1a_entry_and_uses_v1() -> None:
    hmac_key, ed_key = SigningKey.generate("hmac"), SigningKey.generate("ed25519")
    headers = headers_now([ed_key, hmac_key])
    assert headers["webhook-signature"].startswith("v1a,")
    assert standardwebhooks.Webhook(str(hmac_key)).verify(BODY, headers)["type"]


def test_reference_library_verifies_header_names_in_any_case() -> None:
    key = SigningKey.generate()
    headers = {name.title(): value for name, value in headers_now([key]).items()}
    assert standardwebhooks.Webhook(str(key)).verify(BODY, headers)


# -- the reference library's signatures, our verify -----------------------------------------------


def reference_headers(
    secret: str, body: bytes, msg_id: str = MSG_ID, ts: int | None = None
) -> dict[str, str]:
    ts = int(time.time()) if ts is None else ts
    signature = standardwebhooks.Webhook(secret).sign(
        msg_id, datetime.fromtimestamp(ts, tz=UTC), body.decode()
    )
    return {"webhook-id": msg_id, "webhook-timestamp": str(ts), "webhook-signature": signature}


@pytest.mark.parametrize("prefixed", [True, False])
def test_we_verify_reference_library_signatures(prefixed: bool) -> None:
    secret = generate_secret()
    headers = reference_headers(secret, BODY)
    ours = secret if prefixed else secret.removeprefix("whsec_")
    assert verify(BODY, headers, ours) == MSG_ID
    assert verify(BODY.decode(), headers, ours) == MSG_ID  # str bodies are UTF-8 encoded
    assert Verifier(ours).verify(BODY, headers) == MSG_ID


def test_we_verify_reference_signatures_with_24_byte_svix_style_secret() -> None:
    secret = "whsec_" + base64.b64encode(bytes(range(24))).decode()  # Svix generates 24 bytes
    headers = reference_headers(secret, BODY)
    assert verify(BODY, headers, secret) == MSG_ID
    assert (
        SigningKey.parse(secret).sign(MSG_ID, int(headers["webhook-timestamp"]), BODY)
        == (headers["webhook-signature"])
    )


def test_reference_signature_in_a_rotation_header_verifies_with_either_secret() -> None:
    old, new = generate_secret(), generate_secret()
    ts = int(time.time())
    a = reference_headers(old, BODY, ts=ts)
    b = reference_headers(new, BODY, ts=ts)
    headers = {**a, "webhook-signature": f"{b['webhook-signature']} {a['webhook-signature']}"}
    assert verify(BODY, headers, [old]) == MSG_ID
    assert verify(BODY, headers, [new]) == MSG_ID
    assert verify(BODY, headers, [generate_secret(), new]) == MSG_ID
    assert "no signature matched" in failure(BODY, headers, [generate_secret()])


def test_headers_from_django_style_mapping_and_pairs() -> None:
    key = SigningKey.generate()
    headers = headers_now([key])
    titled = {name.title(): value for name, value in headers.items()}  # request.headers shape
    pairs = [(name.upper(), value) for name, value in headers.items()]
    pairs.append(("Content-Type", "application/json"))
    assert verify(BODY, titled, str(key)) == MSG_ID
    assert verify(BODY, pairs, str(key)) == MSG_ID
    # a signature list split over two header lines is still one list
    ts = int(headers["webhook-timestamp"])
    first, second = sign(MSG_ID, ts, BODY, [SigningKey.generate(), key]).split(" ")
    split = [
        ("webhook-id", MSG_ID),
        ("webhook-timestamp", headers["webhook-timestamp"]),
        ("webhook-signature", first),
        ("webhook-signature", second),
    ]
    assert verify(BODY, split, str(key)) == MSG_ID


def test_django_request_headers() -> None:
    from django.http.request import HttpHeaders

    key = SigningKey.generate()
    headers = headers_now([key])
    meta = {"HTTP_" + name.upper().replace("-", "_"): value for name, value in headers.items()}
    assert verify(BODY, HttpHeaders(meta), str(key)) == MSG_ID


# -- v1a: ed25519 ---------------------------------------------------------------------------------


def test_v1a_checked_by_cryptography_directly() -> None:
    key = SigningKey.generate("ed25519")
    ts = int(time.time())
    header = sign(MSG_ID, ts, BODY, [key])
    assert header.startswith("v1a,")
    (signature,) = entries(header)["v1a"]
    assert len(signature) == 64
    public = Ed25519PublicKey.from_public_bytes(
        base64.b64decode(key.public().removeprefix("whpk_"))
    )
    public.verify(signature, f"{MSG_ID}.{ts}.".encode() + BODY)  # raises if wrong
    with pytest.raises(InvalidSignature):
        public.verify(signature, f"{MSG_ID}.{ts}.".encode() + BODY + b" ")


def test_v1a_key_layout_is_svix_seed_then_public() -> None:
    key = SigningKey.generate("ed25519")
    raw = base64.b64decode(str(key).removeprefix("whsk_"))
    assert len(raw) == 64
    derived = Ed25519PrivateKey.from_private_bytes(raw[:32]).public_key().public_bytes_raw()
    assert raw[32:] == derived
    assert base64.b64decode(key.public().removeprefix("whpk_")) == derived


def test_v1a_verified_with_whpk_and_whsk() -> None:
    key = SigningKey.generate("ed25519")
    headers = headers_now([key])
    assert verify(BODY, headers, key.public()) == MSG_ID
    assert verify(BODY, headers, str(key)) == MSG_ID
    assert verify(BODY, headers, key) == MSG_ID
    other = SigningKey.generate("ed25519")
    message = failure(BODY, headers, other.public())
    assert message == "no signature matched: 1 v1a signature(s) checked against 1 secret(s)"


def test_mixed_rotation_hmac_to_ed25519() -> None:
    old, new = SigningKey.generate("hmac"), SigningKey.generate("ed25519")
    headers = headers_now([new, old])
    assert verify(BODY, headers, [new.public()]) == MSG_ID
    assert verify(BODY, headers, [old.public()]) == MSG_ID  # hmac: public() is the whsec_
    assert Verifier([new.public(), str(old)]).verify(BODY, headers) == MSG_ID


def test_v1a_signature_made_with_cryptography_verifies() -> None:
    private = Ed25519PrivateKey.generate()
    ts = int(time.time())
    raw = private.sign(f"{MSG_ID}.{ts}.".encode() + BODY)
    headers = {
        "webhook-id": MSG_ID,
        "webhook-timestamp": str(ts),
        "webhook-signature": "v1a," + base64.b64encode(raw).decode(),
    }
    whpk = "whpk_" + base64.b64encode(private.public_key().public_bytes_raw()).decode()
    assert verify(BODY, headers, whpk) == MSG_ID


# -- verify failures ------------------------------------------------------------------------------


def good_headers(key: SigningKey, ts: int = NOW, body: bytes = BODY) -> dict[str, str]:
    return signature_headers(MSG_ID, ts, body, [key])


HMAC_KEY = SigningKey.generate()


@pytest.mark.parametrize("name", ["webhook-id", "webhook-timestamp", "webhook-signature"])
def test_missing_header(name: str) -> None:
    headers = good_headers(HMAC_KEY)
    del headers[name]
    assert failure(BODY, headers, str(HMAC_KEY), now=NOW) == f"missing {name} header"


@pytest.mark.parametrize("name", ["webhook-id", "webhook-timestamp", "webhook-signature"])
def test_empty_header(name: str) -> None:
    headers = {**good_headers(HMAC_KEY), name: "  "}
    assert failure(BODY, headers, str(HMAC_KEY), now=NOW) == f"{name} header is empty"


@pytest.mark.parametrize("value", ["12.5", "1e9", "-5", "+1700000000", "abc", "1_700_000_000"])
def test_timestamp_not_an_integer(value: str) -> None:
    headers = {**good_headers(HMAC_KEY), "webhook-timestamp": value}
    message = failure(BODY, headers, str(HMAC_KEY), now=NOW)
    assert message == f"webhook-timestamp is not an integer (Unix seconds): {value!r}"


def test_long_bad_timestamp_is_shortened_in_the_message() -> None:
    headers = {**good_headers(HMAC_KEY), "webhook-timestamp": "x" * 500}
    message = failure(BODY, headers, str(HMAC_KEY), now=NOW)
    assert len(message) < 120 and message.endswith("…'")


def test_too_old_and_too_new_default_tolerance() -> None:
    old = good_headers(HMAC_KEY, ts=NOW - 301)
    assert failure(BODY, old, str(HMAC_KEY), now=NOW) == (
        "webhook-timestamp is 301 s old, beyond the 300 s tolerance"
    )
    new = good_headers(HMAC_KEY, ts=NOW + 3600)
    assert failure(BODY, new, str(HMAC_KEY), now=NOW) == (
        "webhook-timestamp is 3600 s in the future, beyond the 300 s tolerance"
    )
    assert verify(BODY, good_headers(HMAC_KEY, ts=NOW - 300), str(HMAC_KEY), now=NOW)
    assert verify(BODY, good_headers(HMAC_KEY, ts=NOW + 300), str(HMAC_KEY), now=NOW)


@pytest.mark.parametrize("tolerance", [0, 1, 30, 86_400])
def test_custom_tolerance_boundaries(tolerance: int) -> None:
    secret = str(HMAC_KEY)
    verifier = Verifier(secret, tolerance=tolerance)
    for ts in (NOW - tolerance, NOW + tolerance):
        headers = good_headers(HMAC_KEY, ts=ts)
        assert verify(BODY, headers, secret, tolerance=tolerance, now=NOW) == MSG_ID
        assert verifier.verify(BODY, headers, now=NOW) == MSG_ID
    too_old = good_headers(HMAC_KEY, ts=NOW - tolerance - 1)
    too_new = good_headers(HMAC_KEY, ts=NOW + tolerance + 1)
    assert failure(BODY, too_old, secret, tolerance=tolerance, now=NOW) == (
        f"webhook-timestamp is {tolerance + 1} s old, beyond the {tolerance} s tolerance"
    )
    assert failure(BODY, too_new, secret, tolerance=tolerance, now=NOW) == (
        f"webhook-timestamp is {tolerance + 1} s in the future, beyond the {tolerance} s tolerance"
    )
    with pytest.raises(SignatureError, match="s old"):
        verifier.verify(BODY, too_old, now=NOW)


def test_fractional_now_counts_whole_seconds() -> None:
    # as in the reference libraries: the clock is floored before the comparison
    headers = good_headers(HMAC_KEY, ts=NOW - 300)
    assert verify(BODY, headers, str(HMAC_KEY), now=NOW + 0.999) == MSG_ID
    assert "301 s old" in failure(BODY, headers, str(HMAC_KEY), now=NOW + 1.0)


def test_tampered_body_id_and_timestamp() -> None:
    headers = good_headers(HMAC_KEY)
    expected = "no signature matched: 1 v1 signature(s) checked against 1 secret(s)"
    assert failure(BODY + b" ", headers, str(HMAC_KEY), now=NOW) == expected
    assert failure(BODY.replace(b"4200", b"4201"), headers, str(HMAC_KEY), now=NOW) == expected
    assert failure(BODY, {**headers, "webhook-id": "msg_other"}, str(HMAC_KEY), now=NOW) == expected
    moved = {**headers, "webhook-timestamp": str(NOW + 1)}
    assert failure(BODY, moved, str(HMAC_KEY), now=NOW) == expected


def test_wrong_secret() -> None:
    headers = good_headers(HMAC_KEY)
    others = [generate_secret(), generate_secret()]
    assert failure(BODY, headers, others, now=NOW) == (
        "no signature matched: 1 v1 signature(s) checked against 2 secret(s)"
    )


def test_only_unknown_versions() -> None:
    headers = {
        **good_headers(HMAC_KEY),
        "webhook-signature": "v2,Ceo5qEr07ixe2NLpvHk3FH9bwy/WavXrAFQ/9tdO6mc= v0,abc nocomma",
    }
    assert failure(BODY, headers, str(HMAC_KEY), now=NOW) == (
        "webhook-signature has no v1 signature to check with the secrets given "
        "(versions present: 'v2', 'v0', 'nocomma')"
    )


def test_v1a_only_header_and_hmac_secret_says_which_versions() -> None:
    ed = SigningKey.generate("ed25519")
    headers = good_headers(ed)
    assert failure(BODY, headers, str(HMAC_KEY), now=NOW) == (
        "webhook-signature has no v1 signature to check with the secrets given "
        "(versions present: 'v1a')"
    )
    assert "has no v1a signature" in failure(BODY, good_headers(HMAC_KEY), ed.public(), now=NOW)


@pytest.mark.parametrize(
    "bad",
    [
        "v1,not*base64!",
        "v1,",
        "v1,QUJD",  # valid base64 but 3 bytes, not an HMAC-SHA256
        "v1,g0hM9SsE+OTPJTGt/tmIKtSyZlE3uFJELVlNIOLJ1OE=extra",
    ],
)
def test_malformed_signature_values(bad: str) -> None:
    headers = {**good_headers(HMAC_KEY), "webhook-signature": bad}
    assert failure(BODY, headers, str(HMAC_KEY), now=NOW) == (
        "no signature matched: 1 v1 signature(s) checked against 1 secret(s); "
        "1 of them not valid base64 of the right length"
    )


def test_malformed_entry_does_not_hide_a_good_one() -> None:
    good = good_headers(HMAC_KEY)
    headers = {**good, "webhook-signature": "v1,%%% v2,x  " + good["webhook-signature"]}
    assert verify(BODY, headers, str(HMAC_KEY), now=NOW) == MSG_ID


def test_unpadded_signature_is_accepted() -> None:
    good = good_headers(HMAC_KEY)
    headers = {**good, "webhook-signature": good["webhook-signature"].rstrip("=")}
    assert verify(BODY, headers, str(HMAC_KEY), now=NOW) == MSG_ID


def test_conflicting_duplicate_headers() -> None:
    good = good_headers(HMAC_KEY)
    pairs = [*good.items(), ("Webhook-Id", "msg_other")]
    assert failure(BODY, pairs, str(HMAC_KEY), now=NOW) == (
        "webhook-id header appears 2 times with different values"
    )
    same = [*good.items(), ("Webhook-Id", MSG_ID)]
    assert verify(BODY, same, str(HMAC_KEY), now=NOW) == MSG_ID


def test_signature_errors_are_webhook_errors() -> None:
    assert issubclass(SignatureError, WebhookError)


# -- secret configuration errors (WebhookError, never echoing the secret) -------------------------


def config_error(call: object, secret: str) -> str:
    with pytest.raises(WebhookError) as info:
        call(secret)  # type: ignore[operator]
    assert not isinstance(info.value, SignatureError)
    message = str(info.value)
    body = secret.split("_", 1)[-1]
    if len(body) >= 6:
        assert body not in message
    return message


def test_public_key_cannot_sign() -> None:
    whpk = SigningKey.generate("ed25519").public()
    message = config_error(SigningKey.parse, whpk)
    assert message.startswith("a public key cannot sign")
    with pytest.raises(WebhookError, match="public key cannot sign"):
        sign(MSG_ID, NOW, BODY, [whpk])


@pytest.mark.parametrize(
    ("secret", "expected"),
    [
        ("sk_live_abcdefghijklmnop", "must start with whsec_ (HMAC) or whsk_ (ed25519)"),
        ("MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw", "has neither prefix"),
        ("whsec_", "whsec_ secret is empty"),
        ("whsec_not-base64-at-all!", "whsec_ secret is not valid base64"),
        ("whsk_not-base64-at-all!", "whsk_ secret is not valid base64"),
        ("whsk_" + base64.b64encode(b"x" * 31).decode(), "not 31"),
        ("whsk_" + base64.b64encode(b"x" * 48).decode(), "32 bytes (ed25519 seed) or 64 bytes"),
        ("whsk_" + base64.b64encode(b"x" * 64).decode(), "not the public key of its seed"),
    ],
)
def test_bad_signing_secrets(secret: str, expected: str) -> None:
    assert expected in config_error(SigningKey.parse, secret)


@pytest.mark.parametrize(
    ("secret", "expected"),
    [
        ("whpk_" + base64.b64encode(b"x" * 31).decode(), "whpk_ key must decode to 32 bytes"),
        ("whpk_%%%%", "whpk_ secret is not valid base64"),
        ("not base64 !!", "must be whsec_…, whpk_…, whsk_… or bare base64"),
        ("whsec_@@@@", "whsec_ secret is not valid base64"),
    ],
)
def test_bad_verification_secrets(secret: str, expected: str) -> None:
    headers = good_headers(HMAC_KEY)
    assert expected in config_error(lambda s: verify(BODY, headers, s, now=NOW), secret)
    assert expected in config_error(Verifier, secret)


def test_no_secrets_or_keys() -> None:
    with pytest.raises(WebhookError, match="no verification secret"):
        verify(BODY, good_headers(HMAC_KEY), [], now=NOW)
    with pytest.raises(WebhookError, match="no signing key"):
        sign(MSG_ID, NOW, BODY, [])


@pytest.mark.parametrize("tolerance", [-1, float("nan")])
def test_bad_tolerance(tolerance: float) -> None:
    with pytest.raises(WebhookError, match="tolerance must be >= 0"):
        Verifier(str(HMAC_KEY), tolerance=tolerance)


# -- sign() input rules ---------------------------------------------------------------------------


@pytest.mark.parametrize("msg_id", ["msg.1", "msg 1", "msg\r\nX-Evil: 1", "", "msg\t1", "msg_é"])
def test_sign_rejects_ids_that_break_the_format(msg_id: str) -> None:
    with pytest.raises(WebhookError, match="webhook id must be non-empty visible ASCII"):
        HMAC_KEY.sign(msg_id, NOW, BODY)
    with pytest.raises(WebhookError):
        signature_headers(msg_id, NOW, BODY, [HMAC_KEY])


@pytest.mark.parametrize("timestamp", [1.5, float(NOW), "1700000000", True, -1, None])
def test_sign_rejects_non_int_timestamps(timestamp: object) -> None:
    with pytest.raises(WebhookError, match="timestamp must be a non-negative int"):
        HMAC_KEY.sign(MSG_ID, timestamp, BODY)  # type: ignore[arg-type]


def test_sign_joins_one_entry_per_key_in_order() -> None:
    a, b, c = SigningKey.generate(), SigningKey.generate("ed25519"), SigningKey.generate()
    header = sign(MSG_ID, NOW, BODY, [a, str(b), c])
    parts = header.split(" ")
    assert parts == [
        a.sign(MSG_ID, NOW, BODY),
        b.sign(MSG_ID, NOW, BODY),
        c.sign(MSG_ID, NOW, BODY),
    ]
    assert [p.split(",")[0] for p in parts] == ["v1", "v1a", "v1"]
    assert signature_headers(MSG_ID, NOW, BODY, [a, b, c]) == {
        "webhook-id": MSG_ID,
        "webhook-timestamp": str(NOW),
        "webhook-signature": header,
    }


def test_hmac_entry_is_plain_hmac_sha256() -> None:
    raw = base64.b64decode(str(HMAC_KEY).removeprefix("whsec_"))
    expected = hmac.new(raw, f"{MSG_ID}.{NOW}.".encode() + BODY, hashlib.sha256).digest()
    assert HMAC_KEY.sign(MSG_ID, NOW, BODY) == "v1," + base64.b64encode(expected).decode()


# -- keys: generation, serialization, repr --------------------------------------------------------


def test_generate_lengths_and_prefixes() -> None:
    hmac_secret = generate_secret()
    assert hmac_secret.startswith("whsec_")
    assert len(base64.b64decode(hmac_secret.removeprefix("whsec_"))) == 32
    ed_secret = generate_secret("ed25519")
    assert ed_secret.startswith("whsk_")
    assert len(base64.b64decode(ed_secret.removeprefix("whsk_"))) == 64
    public = SigningKey.parse(ed_secret).public()
    assert public.startswith("whpk_")
    assert len(base64.b64decode(public.removeprefix("whpk_"))) == 32
    assert generate_secret() != generate_secret()


@pytest.mark.parametrize("kind", ["hmac", "ed25519"])
def test_parse_str_round_trip(kind: str) -> None:
    key = SigningKey.generate(kind)  # type: ignore[arg-type]
    again = SigningKey.parse(str(key))
    assert again == key and hash(again) == hash(key)
    assert str(again) == str(key)
    assert again.kind == kind
    assert SigningKey.parse(f"  {key}\n") == key  # pasted from an env file
    assert pickle.loads(pickle.dumps(key)) == key
    assert SigningKey.generate(kind) != key  # type: ignore[arg-type]


def test_whsk_seed_only_round_trips_to_svix_layout() -> None:
    seed = bytes(range(1, 33))
    key = SigningKey.parse("whsk_" + base64.b64encode(seed).decode())
    raw = base64.b64decode(str(key).removeprefix("whsk_"))
    assert raw[:32] == seed and len(raw) == 64
    assert SigningKey.parse(str(key)) == key


def test_any_hmac_length_parses() -> None:
    for size in (1, 16, 24, 64, 100):
        secret = "whsec_" + base64.b64encode(b"k" * size).decode()
        assert str(SigningKey.parse(secret)) == secret
    # unpadded base64 is read as the reference library reads it
    assert SigningKey.parse("whsec_" + base64.b64encode(b"k" * 25).decode().rstrip("="))


def test_hmac_public_is_the_shared_secret() -> None:
    assert HMAC_KEY.public() == str(HMAC_KEY)


@pytest.mark.parametrize("kind", ["hmac", "ed25519"])
def test_repr_hides_the_secret(kind: str) -> None:
    key = SigningKey.generate(kind)  # type: ignore[arg-type]
    text = repr(key)
    payload = str(key).split("_", 1)[1]
    assert payload not in text
    assert base64.b64decode(payload)[:32].hex() not in text
    assert kind in text
    verifier = Verifier(str(key))
    assert payload not in repr(verifier)


def test_keys_are_immutable() -> None:
    with pytest.raises(AttributeError):
        HMAC_KEY.kind = "ed25519"  # type: ignore[misc]
    with pytest.raises(AttributeError):
        HMAC_KEY._secret = b"x"  # type: ignore[misc]
    with pytest.raises(AttributeError):
        HMAC_KEY.extra = 1  # type: ignore[attr-defined]


# -- properties -----------------------------------------------------------------------------------

ids = st.text(
    alphabet=st.characters(min_codepoint=0x21, max_codepoint=0x7E, exclude_characters="."),
    min_size=1,
    max_size=64,
)
timestamps = st.integers(min_value=0, max_value=2**40)
ED_KEY = SigningKey.generate("ed25519")
HMAC_KEYS = [SigningKey.generate(), SigningKey.parse("whsec_" + base64.b64encode(b"z").decode())]


@settings(max_examples=150, deadline=None)
@given(body=st.binary(max_size=2048), msg_id=ids, ts=timestamps, tolerance=st.integers(0, 10**6))
def test_round_trip_property(body: bytes, msg_id: str, ts: int, tolerance: int) -> None:
    keys: list[SigningKey] = [ED_KEY, *HMAC_KEYS]
    headers = signature_headers(msg_id, ts, body, keys)
    now = ts + tolerance
    for key in keys:
        assert verify(body, headers, key.public(), tolerance=tolerance, now=now) == msg_id
        assert verify(body, headers, str(key), tolerance=tolerance, now=now) == msg_id
    # the single-entry signatures are independent of the others in the header
    for key in keys:
        single = signature_headers(msg_id, ts, body, [key])
        assert single["webhook-signature"] in headers["webhook-signature"].split(" ")
    # and flipping one body byte breaks every one of them
    if body:
        tampered = bytes([body[0] ^ 1]) + body[1:]
        with pytest.raises(SignatureError, match="no signature matched"):
            verify(tampered, headers, [k.public() for k in keys], tolerance=tolerance, now=now)


@settings(max_examples=60, deadline=None)
@given(body=st.binary(max_size=512).filter(lambda b: _utf8(b)), msg_id=ids)
def test_reference_library_agrees_property(body: bytes, msg_id: str) -> None:
    # the reference library decodes bodies as UTF-8, so only such bodies are comparable
    key = HMAC_KEYS[0]
    headers = signature_headers(msg_id, int(time.time()), body, [key])
    standardwebhooks.Webhook(str(key)).verify(body, headers, json_parse=False)
    ts = datetime.fromtimestamp(int(headers["webhook-timestamp"]), tz=UTC)
    assert (
        standardwebhooks.Webhook(str(key)).sign(msg_id, ts, body.decode())
        == (headers["webhook-signature"])
    )


def _utf8(data: bytes) -> bool:
    try:
        data.decode("utf-8")
    except UnicodeDecodeError:
        return False
    return True
