from django.db import models


class Order(models.Model):
    """Each save fires django-webhook's post_save listener -> ``fire_webhook.delay``; its
    payload is ``model_to_dict`` of the row, so ``sent_at`` reaches the receiver as
    ``object.sent_at``."""

    n = models.IntegerField()
    sent_at = models.FloatField()
