from django.apps import AppConfig


class ProxySiteConfig(AppConfig):
    name = "proxy_site"

    def ready(self) -> None:
        # The decorators in realtime.py register when it is imported.
        from . import realtime  # noqa: F401
