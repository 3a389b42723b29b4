"""ASGI entry point: ``uvicorn grip_apps.asgi:application`` (with tests/ on the path)."""

import os

from django.core.asgi import get_asgi_application

os.environ.setdefault("DJANGO_SETTINGS_MODULE", "grip_apps.settings")
application = get_asgi_application()
