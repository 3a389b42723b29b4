"""The seed's ``app.models.PumpModel``: what its example view reads and writes."""

from django.db import models


class PumpModel(models.Model):
    webfinger = models.CharField(max_length=320, unique=True)
    key = models.CharField(max_length=1000, blank=True, default="")
    secret = models.CharField(max_length=1000, blank=True, default="")
    expirey = models.BigIntegerField(null=True, blank=True)
    token = models.CharField(max_length=1000, blank=True, default="")
    token_secret = models.CharField(max_length=1000, blank=True, default="")

    class Meta:
        app_label = "pumpapp"

    @property
    def oauth_credentials(self):
        return bool(self.key and self.secret)
