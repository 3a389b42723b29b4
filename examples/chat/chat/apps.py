from django.apps import AppConfig


class ChatConfig(AppConfig):  # type: ignore[misc]  # Django ships no types
    name = "chat"
    default_auto_field = "django.db.models.BigAutoField"
