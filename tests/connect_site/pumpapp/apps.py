from django.apps import AppConfig


class PumpAppConfig(AppConfig):
    name = "connect_site.pumpapp"
    label = "pumpapp"
    default_auto_field = "django.db.models.BigAutoField"
