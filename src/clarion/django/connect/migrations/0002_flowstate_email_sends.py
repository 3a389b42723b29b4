"""The count and time of the confirmation emails of a paused flow (a cap and an interval)."""

from django.db import migrations, models


class Migration(migrations.Migration):

    dependencies = [
        ("clarion_connect", "0001_initial"),
    ]

    operations = [
        migrations.AddField(
            model_name="flowstate",
            name="email_sends",
            field=models.PositiveSmallIntegerField(default=0),
        ),
        migrations.AddField(
            model_name="flowstate",
            name="email_sent_at",
            field=models.DateTimeField(blank=True, null=True),
        ),
    ]
