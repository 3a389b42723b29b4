"""The durian text's example model: a person, with a secret that must never leave the app."""

from django.db import models


class Person(models.Model):
    name = models.CharField("name", blank=False, max_length=200)
    address = models.CharField("address", max_length=200)
    secret = models.CharField("secret", max_length=200)
    owner = models.ForeignKey("auth.User", null=True, blank=True, on_delete=models.CASCADE)

    class Meta:
        app_label = "people"
