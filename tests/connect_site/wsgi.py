"""WSGI entry of the connect test site (``DJANGO_SETTINGS_MODULE=connect_site.settings``)."""

import os

from django.core.wsgi import get_wsgi_application

os.environ.setdefault("DJANGO_SETTINGS_MODULE", "connect_site.settings")
application = get_wsgi_application()
