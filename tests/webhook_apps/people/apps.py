from django.apps import AppConfig


class PeopleConfig(AppConfig):
    name = "webhook_apps.people"
    label = "people"

    def ready(self) -> None:
        from webhook_apps.people import hooks  # noqa: F401  # registers PersonHook
