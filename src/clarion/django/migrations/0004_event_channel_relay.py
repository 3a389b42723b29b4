"""Events that are also realtime publications (issue 11): the channel, the idempotency key,
and the relay's progress (when it ended, attempts, the next try, the last error), and the
idempotency key of ``POST /api/event`` requests.

The columns are added with constant defaults (no table rewrite on PostgreSQL 11+, nor SQLite).
Publication rows are ``clarion_event`` rows, so the ``AFTER INSERT`` trigger of 0002 wakes the
workers listening on ``clarion_webhooks`` for them too; nothing else changes on PostgreSQL.
"""

from django.db import migrations, models


class Migration(migrations.Migration):

    dependencies = [
        ('clarion', '0003_encrypt_signing_secrets'),
    ]

    operations = [
        migrations.AddField(
            model_name='event',
            name='channel',
            field=models.CharField(blank=True, default='', help_text='Channel the payload is published to; empty: none.', max_length=255),
        ),
        migrations.AddField(
            model_name='event',
            name='publish_key',
            field=models.CharField(blank=True, default='', help_text='The hub drops a repeated publication with this key; empty: the webhook-id.', max_length=255, verbose_name='idempotency key'),
        ),
        migrations.AddField(
            model_name='event',
            name='relay_attempts',
            field=models.PositiveIntegerField(default=0, editable=False),
        ),
        migrations.AddField(
            model_name='event',
            name='relay_error',
            field=models.TextField(blank=True, default='', editable=False),
        ),
        migrations.AddField(
            model_name='event',
            name='relay_next_at',
            field=models.DateTimeField(blank=True, editable=False, null=True),
        ),
        migrations.AddField(
            model_name='event',
            name='relayed_at',
            field=models.DateTimeField(blank=True, help_text='When the publication ended: published, or refused by the hub (see error).', null=True, verbose_name='published at'),
        ),
        migrations.AddField(
            model_name='event',
            name='request_key',
            field=models.CharField(blank=True, default='', editable=False, max_length=255),
        ),
        migrations.AddIndex(
            model_name='event',
            index=models.Index(condition=models.Q(('request_key', ''), _negated=True), fields=['hook', 'request_key'], name='clarion_event_request_key'),
        ),
        migrations.AddIndex(
            model_name='event',
            index=models.Index(condition=models.Q(('relayed_at__isnull', True), models.Q(('channel', ''), _negated=True)), fields=['id'], name='clarion_event_unrelayed'),
        ),
    ]
