"""Listener signing secrets encrypted at rest (``clarion.django.encryption``).

The secret column widens to 500 characters (an encrypted ed25519 key is about 210), then the
plain values already stored are encrypted with the current key. Backwards, they are decrypted
again (with every configured key) before the column narrows.
"""

from django.db import migrations

import clarion.django.encryption


def encrypt_plain(apps, schema_editor):
    from clarion.django.encryption import is_encrypted, keyring, rewrite_secrets, stored_secrets

    keys = keyring()
    using = schema_editor.connection.alias

    def encrypt(value):
        return value if not value or is_encrypted(value) else keys.encrypt(value)

    for rows in stored_secrets(using):
        for row in rows:
            if not all(not v or is_encrypted(v) for v in row.values()):
                rewrite_secrets(using, row, encrypt)


def decrypt_all(apps, schema_editor):
    from clarion.django.encryption import is_encrypted, keyring, rewrite_secrets, stored_secrets

    keys = keyring()
    using = schema_editor.connection.alias
    for rows in stored_secrets(using):
        for row in rows:
            if any(is_encrypted(v) for v in row.values()):
                rewrite_secrets(using, row, keys.decrypt)


class Migration(migrations.Migration):

    dependencies = [
        ("clarion", "0002_postgresql_match_notify"),
    ]

    operations = [
        migrations.AlterField(
            model_name="listener",
            name="secret",
            field=clarion.django.encryption.EncryptedSecretField(
                max_length=500, verbose_name="signing secret"),
        ),
        migrations.AlterField(
            model_name="listener",
            name="previous_secrets",
            field=clarion.django.encryption.EncryptedSecretsField(
                blank=True, default=list, editable=False),
        ),
        migrations.RunPython(encrypt_plain, decrypt_all, elidable=False),
    ]
