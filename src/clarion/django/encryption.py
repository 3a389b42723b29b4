"""Secrets at rest: what Clarion stores encrypted, and with which keys.

Listener signing secrets (the current one and those kept through a rotation's grace period)
are stored as ``enc:v1:<Fernet token>``. A stolen database dump or backup then holds no secret
that can sign a webhook; the keys live in settings, outside the database.

Keys are ``CLARION["ENCRYPTION_KEYS"]`` (Fernet keys, the first encrypts, all decrypt) or, when
that is unset, derived with HKDF-SHA256 from ``SECRET_KEY`` (encrypts) and
``SECRET_KEY_FALLBACKS`` (decrypt only), so Django's own key rotation procedure rotates them too
and the key used is never the ``SECRET_KEY`` itself. A value without the prefix is a legacy plain
value (stored before encryption): it is read as it is, and ``clarion_reencrypt`` or the next save
encrypts it.
"""

from __future__ import annotations

import base64
import binascii
import json
import threading
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass
from functools import lru_cache
from typing import Any

from cryptography.fernet import Fernet, InvalidToken, MultiFernet
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.kdf.hkdf import HKDF
from django.conf import settings
from django.core.exceptions import ImproperlyConfigured
from django.db import connections, models, transaction

from clarion.errors import DecryptionError

PREFIX = "enc:v1:"
SETTING = "CLARION['ENCRYPTION_KEYS']"
# HKDF's salt and info bind the derived key to this one use: a key derived here is useless for
# anything else that derives from SECRET_KEY, and SECRET_KEY itself never reaches Fernet.
_SALT = b"clarion.django.encryption"
_INFO = b"clarion.encryption v1 fernet"
_CACHE = 4096  # decrypted tokens kept per key set: the worker reads the same secrets all day


def derive_key(secret: str | bytes) -> bytes:
    """The Fernet key (url-safe base64 of 32 bytes) that ``secret`` (a ``SECRET_KEY``) gives."""
    raw = secret.encode() if isinstance(secret, str) else secret
    hkdf = HKDF(algorithm=hashes.SHA256(), length=32, salt=_SALT, info=_INFO)
    return base64.urlsafe_b64encode(hkdf.derive(raw))


def check_fernet_key(key: str | bytes, where: str) -> bytes:
    """``key`` as bytes if it is a Fernet key; else ``ImproperlyConfigured`` naming ``where``
    (never the key itself: the message may end up in a log)."""
    raw = key.encode() if isinstance(key, str) else key
    try:
        Fernet(raw)
    except (ValueError, binascii.Error):
        raise ImproperlyConfigured(
            f"{where} is not a Fernet key (url-safe base64 of 32 bytes, 44 characters; "
            "make one with: python -c 'from cryptography.fernet import Fernet; "
            "print(Fernet.generate_key().decode())')") from None
    return raw


class Keyring:
    """Fernet keys, newest first. ``source`` and ``fix`` are for the message when no key
    decrypts a value: where the keys come from, and which setting brings an old one back."""

    def __init__(self, keys: tuple[bytes, ...], source: str, fix: str) -> None:
        fernets = [Fernet(k) for k in keys]
        self.keys = keys
        self.source = source
        self.fix = fix
        self._fernet = MultiFernet(fernets)
        self._primary = fernets[0]
        self._plain: dict[str, str] = {}
        self._lock = threading.Lock()

    def __repr__(self) -> str:  # never the keys
        return f"<Keyring {len(self.keys)} keys, {self.source}>"

    def encrypt(self, plain: str) -> str:
        return PREFIX + self._fernet.encrypt(plain.encode()).decode("ascii")

    def decrypt(self, stored: str) -> str:
        """The plain value of ``stored``; a legacy plain value is returned as it is."""
        if not is_encrypted(stored):
            if stored.startswith("enc:"):
                raise DecryptionError(f"a stored value has an unknown encryption version "
                                      f"({stored.split(':', 2)[1]!r}); this Clarion reads v1")
            return stored
        plain = self._plain.get(stored)
        if plain is None:
            try:
                plain = self._fernet.decrypt(stored[len(PREFIX):].encode("ascii")).decode()
            except (InvalidToken, UnicodeError):
                raise DecryptionError(
                    f"a value Clarion stored encrypted cannot be decrypted with any of the "
                    f"current keys ({self.source}): {self.fix}, then run the clarion_reencrypt "
                    f"management command (clarion_reencrypt --check lists the rows affected)"
                ) from None
            with self._lock:
                if len(self._plain) >= _CACHE:
                    self._plain.clear()
                self._plain[stored] = plain
        return plain

    def is_current(self, stored: str) -> bool:
        """Encrypted with the first key (nothing for ``clarion_reencrypt`` to do)."""
        if not is_encrypted(stored):
            return False
        try:
            self._primary.decrypt(stored[len(PREFIX):].encode("ascii"))
        except (InvalidToken, UnicodeError):
            return False
        return True


def is_encrypted(stored: str) -> bool:
    return stored.startswith(PREFIX)


def keyring() -> Keyring:
    """The keys the settings give now (re-read at each call, so ``override_settings`` and a
    restart after a rotation take effect; the keyring for one set of keys is built once)."""
    conf = getattr(settings, "CLARION", {}) or {}
    explicit = conf.get("ENCRYPTION_KEYS") if isinstance(conf, Mapping) else None
    if explicit is not None:
        if isinstance(explicit, str | bytes) or not isinstance(explicit, list | tuple):
            raise ImproperlyConfigured(f"{SETTING} must be a list of Fernet keys")
        if not explicit:
            raise ImproperlyConfigured(f"{SETTING} is empty: list at least one Fernet key, or "
                                       "leave it unset to derive the key from SECRET_KEY")
        for i, key in enumerate(explicit):
            if not isinstance(key, str | bytes):
                raise ImproperlyConfigured(f"{SETTING}[{i}] must be a string (a Fernet key), "
                                           f"not {type(key).__name__}")
        return _explicit(tuple(explicit))
    fallbacks = tuple(getattr(settings, "SECRET_KEY_FALLBACKS", ()) or ())
    return _derived(settings.SECRET_KEY, fallbacks)


@lru_cache(maxsize=8)
def _explicit(keys: tuple[str | bytes, ...]) -> Keyring:
    return Keyring(tuple(check_fernet_key(k, f"{SETTING}[{i}]") for i, k in enumerate(keys)),
                   SETTING, f"list the key it was encrypted with in {SETTING}, after the "
                   "current one")


@lru_cache(maxsize=8)
def _derived(secret_key: str, fallbacks: tuple[str, ...]) -> Keyring:
    if not secret_key:
        raise ImproperlyConfigured(f"SECRET_KEY is empty: Clarion derives its encryption key "
                                   f"from it (or set {SETTING})")
    keys = tuple(dict.fromkeys(derive_key(k) for k in (secret_key, *fallbacks) if k))
    return Keyring(keys, f"derived from SECRET_KEY and SECRET_KEY_FALLBACKS, as {SETTING} is "
                   "unset", "put the SECRET_KEY it was encrypted with in SECRET_KEY_FALLBACKS")


def encrypt(plain: str) -> str:
    return keyring().encrypt(plain)


def decrypt(stored: str) -> str:
    return keyring().decrypt(stored)


# -- system checks --------------------------------------------------------------------------

def check_keys(app_configs: Any = None, **kwargs: Any) -> list[Any]:
    """An error when ``CLARION['ENCRYPTION_KEYS']`` is not a list of Fernet keys: nothing could
    be saved or delivered, so it must not wait for the first listener."""
    from django.core import checks

    try:
        keyring()
    except ImproperlyConfigured as exc:
        return [checks.Error(str(exc), id="clarion.E001")]
    return []


def check_derived_key(app_configs: Any = None, **kwargs: Any) -> list[Any]:
    """A deployment warning when the encryption key is derived from a weak ``SECRET_KEY`` (the
    rule of Django's own security.W009): the signing secrets are only as safe as it is."""
    from django.core import checks

    conf = getattr(settings, "CLARION", {}) or {}
    if isinstance(conf, Mapping) and conf.get("ENCRYPTION_KEYS") is not None:
        return []
    key = str(getattr(settings, "SECRET_KEY", "") or "")
    if len(key) >= 50 and len(set(key)) >= 5 and not key.startswith("django-insecure-"):
        return []
    return [checks.Warning(
        "Clarion encrypts webhook signing secrets with a key derived from SECRET_KEY, which is "
        "short or looks generated for development",
        hint=f"use a long random SECRET_KEY, or set {SETTING} to Fernet keys of its own",
        id="clarion.W001")]


# -- model fields ---------------------------------------------------------------------------
# The ORM path encrypts in get_db_prep_save (saves, update(), bulk_create) and decrypts in
# from_db_value, so model instances always hold the plain secret. Lookups are left alone:
# Fernet tokens are randomised, so filtering on a secret could never match anyway.

class EncryptedSecretField(models.CharField):  # type: ignore[misc]
    """A string stored as ``enc:v1:…``; ``max_length`` bounds the stored (encrypted) form."""

    def from_db_value(self, value: Any, expression: Any, connection: Any) -> Any:
        return decrypt(value) if isinstance(value, str) else value

    def get_db_prep_save(self, value: Any, connection: Any) -> Any:
        value = super().get_db_prep_save(value, connection)
        if isinstance(value, str) and value and not is_encrypted(value):
            return encrypt(value)
        return value


class EncryptedSecretsField(models.JSONField):  # type: ignore[misc]
    """A JSON list of ``{"secret": …, "expires": …}`` whose ``secret`` values are encrypted
    (the expiry stays readable: the PostgreSQL store reads the list in SQL)."""

    def from_db_value(self, value: Any, expression: Any, connection: Any) -> Any:
        return map_secrets(super().from_db_value(value, expression, connection), decrypt)

    def get_db_prep_save(self, value: Any, connection: Any) -> Any:
        return super().get_db_prep_save(map_secrets(value, _encrypt_plain), connection)


def _encrypt_plain(value: str) -> str:
    return value if not value or is_encrypted(value) else encrypt(value)


def map_secrets(entries: Any, func: Callable[[str], str]) -> Any:
    """A copy of a ``previous_secrets`` list with ``func`` applied to each ``secret``."""
    if not isinstance(entries, list):
        return entries
    return [{**e, "secret": func(e["secret"])}
            if isinstance(e, dict) and isinstance(e.get("secret"), str) else e
            for e in entries]


# -- the stored values, read and written raw ------------------------------------------------
# The data migration and clarion_reencrypt must see the column as stored (a value no key
# decrypts is something to report, not an exception in the middle of a scan), so they bypass
# the fields above.

LISTENER_TABLE = "clarion_listener"


@dataclass
class StoredSecrets:
    id: int
    secret: str
    previous: list[Any]

    def values(self) -> Iterator[str]:
        yield self.secret
        for entry in self.previous:
            if isinstance(entry, dict) and isinstance(entry.get("secret"), str):
                yield entry["secret"]


def stored_secrets(using: str, batch: int = 500) -> Iterator[list[StoredSecrets]]:
    """Every listener's secrets as stored, in batches of ``batch`` rows, by id."""
    last = 0
    while rows := _select(using, "id > %s ORDER BY id LIMIT %s", [last, batch]):
        yield rows
        last = rows[-1].id


def stored_secret(using: str, pk: int) -> StoredSecrets | None:
    rows = _select(using, "id = %s", [pk])
    return rows[0] if rows else None


def _select(using: str, where: str, params: list[Any]) -> list[StoredSecrets]:
    conn = connections[using]
    table = conn.ops.quote_name(LISTENER_TABLE)
    with conn.cursor() as cur:
        cur.execute(f"SELECT id, secret, previous_secrets FROM {table} WHERE {where}", params)
        return [StoredSecrets(pk, secret, _json_list(previous))
                for pk, secret, previous in cur.fetchall()]


def _json_list(value: Any) -> list[Any]:
    if isinstance(value, bytes | str):
        value = json.loads(value)
    return value if isinstance(value, list) else []


def rewrite_secrets(using: str, row: StoredSecrets, func: Callable[[str], str]) -> bool:
    """Store ``func`` of each of ``row``'s secrets. False (nothing written) when the listener
    changed since it was read: a concurrent rotation's new secret must not be overwritten."""
    conn = connections[using]
    secret = func(row.secret)
    previous = map_secrets(row.previous, func)
    table = conn.ops.quote_name(LISTENER_TABLE)
    with transaction.atomic(using=using), conn.cursor() as cur:
        cur.execute(f"UPDATE {table} SET secret = %s, previous_secrets = %s "
                    "WHERE id = %s AND secret = %s",
                    [secret, models.JSONField().get_db_prep_save(previous, conn), row.id,
                     row.secret])
        return bool(cur.rowcount)
