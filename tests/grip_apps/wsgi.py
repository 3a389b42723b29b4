"""WSGI entry point: ``gunicorn grip_apps.wsgi:application`` (with tests/ on the path)."""

import os

from django.core.wsgi import get_wsgi_application

os.environ.setdefault("DJANGO_SETTINGS_MODULE", "grip_apps.settings")
application = get_wsgi_application()
