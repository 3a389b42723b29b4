"""Secrets at rest: listener signing secrets encrypted in the database (PostgreSQL and SQLite),
still signing deliveries that the ``standardwebhooks`` reference library verifies (a real
worker, a real receiver); SECRET_KEY and ENCRYPTION_KEYS rotation with ``clarion_reencrypt``;
the clear error when no key fits; the data migration from plain values; API keys and the
dashboard's show-once values never stored in the clear. The key derivation is tested alone."""

# ruff: noqa: E402  (Django is configured before the imports that need it)
from __future__ import annotations

import base64
import contextlib
import hashlib
import hmac
import io
import json
import re
import sqlite3
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

import django_env

django_env.configure()

from cryptography.fernet import Fernet
from django.conf import settings
from django.contrib.auth.models import User
from django.contrib.sessions.backends.db import SessionStore
from django.core.exceptions import ImproperlyConfigured
from django.core.management import call_command
from django.core.management.base import CommandError
from django.db import connections, transaction
from django.test import Client, override_settings
from django.urls import reverse

from clarion.django import encryption
from clarion.django.models import ApiKey, Delivery, Listener
from clarion.errors import ConfigError, DecryptionError
from webhook_apps.people.hooks import MyHook
from webhook_support import Receiver, clean_db, receiver, settle, webhook_databases

__all__ = ["clean_db", "receiver", "webhook_databases"]

LOOPBACK = ["127.0.0.0/8", "::1/128"]
FAST: dict[str, Any] = {"RETRY_SCHEDULE": [0.2], "RETRY_JITTER": 0}
DBS = pytest.mark.parametrize("db", ["default", "sqlite"])
OLD_KEY = settings.SECRET_KEY
NEW_KEY = "a-new-secret-key-after-rotation-0123456789-abcdefghijklmnopqrstuvwxyz"


@contextlib.contextmanager
def clarion(db: str = "default", keys: list[str] | None = None,
            **django: Any) -> Iterator[None]:
    """CLARION for ``db``, with ``ENCRYPTION_KEYS`` if given, and other Django settings."""
    conf: dict[str, Any] = {"WEBHOOKS": {"ALLOWED_NETWORKS": LOOPBACK, "DATABASE": db}}
    if keys is not None:
        conf["ENCRYPTION_KEYS"] = keys
    with override_settings(CLARION=conf, **django):
        yield


def listen(rec: Receiver, path: str, db: str) -> Listener:
    listener: Listener = MyHook().listener(url=rec.url(path)).save(using=db)
    return listener


def stored(db: str, pk: int) -> tuple[str, Any]:
    """The secret columns as the database holds them."""
    with connections[db].cursor() as cur:
        cur.execute("SELECT secret, previous_secrets FROM clarion_listener WHERE id = %s", [pk])
        secret, previous = cur.fetchone()
    return secret, json.loads(previous) if isinstance(previous, str) else previous


def deliver(rec: Receiver, path: str, db: str, name: str) -> None:
    """Send an event and settle; the request must arrive and verify."""
    before = len(rec.at(path))
    with transaction.atomic(using=db):
        MyHook().send(name=name, address="a", using=db)
    settle(database=db, **FAST)
    got = rec.at(path)
    assert len(got) == before + 1 and got[-1].verified is True, got
    rec.assert_all_verified()
    assert Delivery.objects.using(db).filter(status="succeeded").count() == len(got)


def reencrypt(db: str, *args: str) -> str:
    out = io.StringIO()
    call_command("clarion_reencrypt", *args, database=db, stdout=out)
    return out.getvalue()


# -- key derivation, no database ----------------------------------------------------------------

def _hkdf_sha256(ikm: bytes, salt: bytes, info: bytes) -> bytes:
    """RFC 5869 by hand, for one 32-byte block."""
    prk = hmac.new(salt, ikm, hashlib.sha256).digest()
    return hmac.new(prk, info + b"\x01", hashlib.sha256).digest()


def test_the_derived_key_is_hkdf_of_the_secret_key_and_not_the_key_itself() -> None:
    key = encryption.derive_key("some secret key")
    raw = base64.urlsafe_b64decode(key)
    assert raw == _hkdf_sha256(b"some secret key", b"clarion.django.encryption",
                               b"clarion.encryption v1 fernet")
    assert len(raw) == 32 and b"some secret key" not in raw
    Fernet(key)  # a valid Fernet key
    assert encryption.derive_key(b"some secret key") == key
    assert encryption.derive_key("some secret kez") != key


def test_secret_key_rotation_without_a_database() -> None:
    with override_settings(SECRET_KEY=OLD_KEY, SECRET_KEY_FALLBACKS=[]):
        token = encryption.encrypt("whsec_x")
    assert token.startswith("enc:v1:") and "whsec_x" not in token
    with override_settings(SECRET_KEY=NEW_KEY, SECRET_KEY_FALLBACKS=[OLD_KEY]):
        assert encryption.decrypt(token) == "whsec_x"
        assert not encryption.keyring().is_current(token)
        assert encryption.keyring().is_current(encryption.encrypt("whsec_x"))
    with override_settings(SECRET_KEY=NEW_KEY, SECRET_KEY_FALLBACKS=[]), \
            pytest.raises(DecryptionError) as err:
        encryption.decrypt(token)
    message = str(err.value)
    assert "SECRET_KEY_FALLBACKS" in message and "clarion_reencrypt" in message
    assert token[7:20] not in message and NEW_KEY not in message
    assert isinstance(err.value, ConfigError)


def test_explicit_keys_and_their_errors() -> None:
    k1, k2 = Fernet.generate_key().decode(), Fernet.generate_key().decode()
    with clarion(keys=[k1]):
        token = encryption.encrypt("whsec_y")
    assert Fernet(k1.encode()).decrypt(token[7:].encode()) == b"whsec_y"
    with clarion(keys=[k2, k1]):
        assert encryption.decrypt(token) == "whsec_y"
        fresh = encryption.encrypt("whsec_y")
    assert Fernet(k2.encode()).decrypt(fresh[7:].encode()) == b"whsec_y"
    with clarion(keys=[k2]), pytest.raises(DecryptionError, match=r"CLARION\['ENCRYPTION_KEYS'\]"):
        encryption.decrypt(token)
    # SECRET_KEY plays no part once the keys are explicit
    with clarion(keys=[k1], SECRET_KEY=NEW_KEY):
        assert encryption.decrypt(token) == "whsec_y"

    with clarion(keys=[k1, "not-a-key"]), pytest.raises(ImproperlyConfigured) as err:
        encryption.keyring()
    assert "CLARION['ENCRYPTION_KEYS'][1] is not a Fernet key" in str(err.value)
    for bad in (k1, [], [b"x" * 10], [42]):
        with clarion(keys=bad), pytest.raises(ImproperlyConfigured, match="ENCRYPTION_KEYS"):  # type: ignore[arg-type]
            encryption.keyring()
    with clarion(keys=["not-a-key"]):
        [error] = encryption.check_keys()
    assert error.id == "clarion.E001" and "not-a-key" not in error.msg
    with clarion(keys=[k1]):
        assert encryption.check_keys() == []


def test_plain_values_pass_and_unknown_versions_fail() -> None:
    assert encryption.decrypt("whsec_plain") == "whsec_plain"  # stored before encryption
    with pytest.raises(DecryptionError, match="unknown encryption version"):
        encryption.decrypt("enc:v9:abc")
    with pytest.raises(DecryptionError):
        encryption.decrypt("enc:v1:not-a-token")


def test_weak_secret_key_warning() -> None:
    with override_settings(SECRET_KEY="django-insecure-" + "x" * 60):
        [warning] = encryption.check_derived_key()
    assert warning.id == "clarion.W001"
    with clarion(keys=[Fernet.generate_key().decode()], SECRET_KEY="short"):
        assert encryption.check_derived_key() == []
    assert encryption.check_derived_key() == []  # the tests' own key is long enough


# -- in the database ------------------------------------------------------------------------

@DBS
def test_the_database_holds_no_plain_secret(clean_db: None, receiver: Receiver, db: str) -> None:
    with clarion(db):
        listener = listen(receiver, "/r", db)
        first = listener.secret
        second = listener.rotate_secret()
    secret, previous = stored(db, listener.pk)
    assert secret.startswith("enc:v1:") and [p["secret"][:7] for p in previous] == ["enc:v1:"]
    row_text = secret + json.dumps(previous)
    for plain in (first, second):
        assert plain not in row_text and plain[6:] not in row_text
    assert "whsec_" not in row_text
    again = Listener.objects.using(db).get(pk=listener.pk)
    assert again.secret == second and again.signing_secrets() == [second, first]
    assert "enc:" not in repr(again) + str(again)
    # update() and values_list() go through the field as well
    Listener.objects.using(db).filter(pk=listener.pk).update(secret="whsec_" + "A" * 43)
    assert stored(db, listener.pk)[0].startswith("enc:v1:")
    assert Listener.objects.using(db).values_list("secret", flat=True).get() == "whsec_" + "A" * 43


@DBS
def test_deliveries_are_signed_and_verify_across_a_rotation(
        clean_db: None, receiver: Receiver, db: str) -> None:
    with clarion(db):
        listener = listen(receiver, "/r", db)
        old = listener.secret
        receiver.secrets["/r"] = [old]
        deliver(receiver, "/r", db, "one")
        new = listener.rotate_secret()
        # Both signatures are sent in the grace period: each secret alone verifies.
        for secret in (old, new):
            receiver.secrets["/r"] = [secret]
            deliver(receiver, "/r", db, f"with {secret[:10]}")
        assert len(receiver.at("/r")[-1].headers["webhook-signature"].split()) == 2


@DBS
def test_secret_key_rotation_then_reencrypt_then_drop_the_fallback(
        clean_db: None, receiver: Receiver, db: str) -> None:
    with clarion(db):
        listener = listen(receiver, "/r", db)
        old = listener.secret
        new = listener.rotate_secret()
    receiver.secrets["/r"] = [new, old]
    before = stored(db, listener.pk)

    # The new SECRET_KEY, the old one as a fallback: everything still reads and signs.
    with clarion(db, SECRET_KEY=NEW_KEY, SECRET_KEY_FALLBACKS=[OLD_KEY]):
        deliver(receiver, "/r", db, "after the rotation")
        out = reencrypt(db, "--check")
        assert "0 secrets already on the current key, 2 on an older key" in out
        assert stored(db, listener.pk) == before  # --check changes nothing
        out = reencrypt(db)
        assert "re-encrypted 2" in out and "0 undecryptable" in out
        assert reencrypt(db) .startswith(  # idempotent: nothing left to move
            "clarion_reencrypt: 2 secrets already on the current key, 0 on an older key")
    after = stored(db, listener.pk)
    assert after[0] != before[0] and after[1][0]["expires"] == before[1][0]["expires"]

    # The fallback removed: the values moved, so nothing is lost.
    with clarion(db, SECRET_KEY=NEW_KEY, SECRET_KEY_FALLBACKS=[]):
        assert reencrypt(db, "--check").startswith("clarion_reencrypt: 2 secrets already")
        assert Listener.objects.using(db).get().signing_secrets() == [new, old]
        deliver(receiver, "/r", db, "without the fallback")

    # The old key alone no longer decrypts them: the clear error, and --check fails.
    with clarion(db, SECRET_KEY=OLD_KEY, SECRET_KEY_FALLBACKS=[]):
        with pytest.raises(DecryptionError, match="SECRET_KEY_FALLBACKS"):
            Listener.objects.using(db).get()
        with pytest.raises(CommandError, match=f"ids {listener.pk}"):
            reencrypt(db, "--check")


@DBS
def test_explicit_encryption_keys_rotate_too(clean_db: None, receiver: Receiver,
                                             db: str) -> None:
    k1, k2 = Fernet.generate_key().decode(), Fernet.generate_key().decode()
    with clarion(db, keys=[k1]):
        listener = listen(receiver, "/r", db)
        receiver.secrets["/r"] = [listener.secret]
        deliver(receiver, "/r", db, "k1")
    token = stored(db, listener.pk)[0]
    assert Fernet(k1.encode()).decrypt(token[7:].encode()).decode() == listener.secret
    with clarion(db, keys=[k2, k1]):
        deliver(receiver, "/r", db, "k2 first")
        assert "re-encrypted 1" in reencrypt(db)
    token = stored(db, listener.pk)[0]
    assert Fernet(k2.encode()).decrypt(token[7:].encode()).decode() == listener.secret
    with clarion(db, keys=[k2]):
        deliver(receiver, "/r", db, "k2 alone")
    with clarion(db, keys=[k1]), pytest.raises(DecryptionError) as err:
        Listener.objects.using(db).get()
    assert "CLARION['ENCRYPTION_KEYS']" in str(err.value) and k1 not in str(err.value)


@DBS
def test_reencrypt_encrypts_plain_values(clean_db: None, receiver: Receiver, db: str) -> None:
    with clarion(db):
        listener = listen(receiver, "/r", db)
    plain = listener.secret
    with connections[db].cursor() as cur:  # as an older Clarion (or a restored dump) left it
        cur.execute("UPDATE clarion_listener SET secret = %s", [plain])
    assert Listener.objects.using(db).get().secret == plain
    receiver.secrets["/r"] = [plain]
    with clarion(db):
        deliver(receiver, "/r", db, "plain")
        out = reencrypt(db, "--check")
        assert "1 stored plain (would re-encrypt 1)" in out
        assert stored(db, listener.pk)[0] == plain
        assert "re-encrypted 1" in reencrypt(db)
    assert stored(db, listener.pk)[0].startswith("enc:v1:")
    assert Listener.objects.using(db).get().secret == plain


@DBS
def test_the_migration_encrypts_plain_values_and_back(clean_db: None, db: str) -> None:
    plain, older = "whsec_" + "B" * 43, "whsk_" + "C" * 88
    try:
        call_command("migrate", "clarion", "0002", database=db, verbosity=0)
        user = User.objects.db_manager(db).create_user("mig")
        with connections[db].cursor() as cur:  # the table as 0002 left it
            cur.execute(
                "INSERT INTO clarion_listener (hook, url, \"match\", secret, previous_secrets, "
                "owner_id, description, headers, active, disabled_reason, fifo, created_at, "
                "updated_at) VALUES ('myhook', 'http://127.0.0.1/', '{}', %s, %s, %s, '', '{}', "
                "true, '', false, CURRENT_TIMESTAMP, CURRENT_TIMESTAMP)",
                [plain, json.dumps([{"secret": older, "expires": 4e9}]), user.pk])
    finally:
        call_command("migrate", "clarion", database=db, verbosity=0)
    secret, previous = stored(db, Listener.objects.using(db).get().pk)
    assert secret.startswith("enc:v1:") and previous[0]["secret"].startswith("enc:v1:")
    assert previous[0]["expires"] == 4e9
    assert Listener.objects.using(db).get().signing_secrets() == [plain, older]
    try:
        call_command("migrate", "clarion", "0002", database=db, verbosity=0)
        pk = Listener.objects.using(db).values_list("pk", flat=True).get()
        assert stored(db, pk) == (plain, [{"secret": older, "expires": 4e9}])
    finally:
        call_command("migrate", "clarion", database=db, verbosity=0)
    assert stored(db, pk)[0].startswith("enc:v1:")


# -- API keys and the show-once values ------------------------------------------------------

def _session_values(session_key: str) -> dict[str, Any]:
    return SessionStore(session_key=session_key).load()  # type: ignore[no-any-return]


def test_api_keys_are_stored_as_hashes_only(clean_db: None) -> None:
    owner = User.objects.create_user("keys", password="pw")
    row, raw = ApiKey.issue(owner, "ci")
    secret_part = raw.split("_", 2)[2]
    with connections["default"].cursor() as cur:
        cur.execute("SELECT * FROM clarion_api_key WHERE id = %s", [row.pk])
        columns = " ".join(map(str, cur.fetchone()))
    assert raw not in columns and secret_part not in columns
    assert row.key_hash == hashlib.sha256(raw.encode()).hexdigest() and row.key_hash in columns
    assert len(base64.urlsafe_b64decode(secret_part + "=")) == 32  # a 256-bit token
    assert ApiKey.authenticate(raw) == row
    assert ApiKey.authenticate(raw[:-1] + ("A" if raw[-1] != "A" else "B")) is None

    # The dashboard keeps the new key in the session until it is shown: encrypted there.
    client = Client()
    client.force_login(owner)
    made = client.post(reverse("clarion:api-keys"), {"name": "dashboard"})
    assert made.status_code == 302
    kept = _session_values(client.session.session_key)["clarion_new_api_key"]
    assert kept.startswith("enc:v1:")
    new = ApiKey.objects.get(name="dashboard")
    page = client.get(reverse("clarion:api-keys")).content.decode()
    [shown] = re.findall(r"<pre><code>(ck_[^<]+)</code></pre>", page)
    assert ApiKey.authenticate(shown) == new and shown not in kept
    assert shown not in client.get(reverse("clarion:api-keys")).content.decode()  # once


def test_the_dashboard_and_api_show_the_secret_once(clean_db: None) -> None:
    owner = User.objects.create_user("dash", password="pw", is_staff=True, is_superuser=True)
    _, raw = ApiKey.issue(owner, "api")
    api = Client(headers={"Authorization": f"Bearer {raw}"})
    with clarion():
        made = api.post("/webhooks/api/subscriptions", json.dumps(
            {"hook": "myhook", "url": "http://127.0.0.1:9/hook"}),
            content_type="application/json")
        assert made.status_code == 201, made.content
        secret = made.json()["secret"]
        assert secret.startswith("whsec_")
        listed = api.get("/webhooks/api/subscriptions").content.decode()
        assert secret not in listed and "enc:" not in listed

        client = Client()
        client.force_login(owner)
        pk = made.json()["id"]
        assert client.post(reverse("clarion:rotate-secret", args=[pk])).status_code == 302
        kept = _session_values(client.session.session_key)["clarion_new_secret"]
        assert kept["secret"].startswith("enc:v1:")
        rotated = Listener.objects.get(pk=pk).secret
        page = client.get(reverse("clarion:listener", args=[pk])).content.decode()
        assert rotated in page and "enc:" not in page and secret not in page
        page = client.get(reverse("clarion:listener", args=[pk])).content.decode()
        assert rotated not in page and "enc:" not in page  # once

        admin = client.get(reverse("admin:clarion_listener_change", args=[pk]))
        assert admin.status_code == 200
        text = admin.content.decode()
        assert rotated not in text and secret not in text and "enc:" not in text


# -- the built-in configuration -------------------------------------------------------------

def test_clarion_manage_reencrypt_on_the_builtin_configuration(tmp_path: Path) -> None:
    db = tmp_path / "hooks.sqlite3"

    def clarion_cli(*args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run([sys.executable, "-c", "import sys; from clarion.cli import main; "
                               "sys.exit(main())", *args], cwd=tmp_path, capture_output=True,
                              text=True, timeout=120, check=False)

    made = clarion_cli("manage", "--db", str(db), "shell", "-c",
                       "from clarion.django.models import Listener;"
                       "l = Listener.objects.create(hook='h', url='http://127.0.0.1/', "
                       "secret='whsec_' + 'D' * 43); l.rotate_secret()")
    assert made.returncode == 0, made.stderr
    with sqlite3.connect(db) as conn:
        [(secret,)] = conn.execute("SELECT secret FROM clarion_listener").fetchall()
    assert secret.startswith("enc:v1:")
    checked = clarion_cli("manage", "--db", str(db), "clarion_reencrypt", "--check")
    assert checked.returncode == 0, checked.stderr
    assert "2 secrets already on the current key" in checked.stdout
    ran = clarion_cli("manage", "--db", str(db), "clarion_reencrypt")
    assert ran.returncode == 0 and "re-encrypted 0" in ran.stdout, ran.stderr
