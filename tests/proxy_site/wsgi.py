"""``gunicorn proxy_site.wsgi:application`` (with tests/ on the path)."""

import os

from django.core.wsgi import get_wsgi_application

os.environ.setdefault("DJANGO_SETTINGS_MODULE", "proxy_site.settings")
application = get_wsgi_application()
