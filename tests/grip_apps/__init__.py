"""A small Django project used as a GRIP origin by tests/test_grip_django.py and
tests/test_grip_eventstream.py, served by gunicorn (see the ``grip_origin_factory`` fixture).

Environment (read by ``settings``):

* ``GRIP_IMPL``: ``django_grip`` (the real django-grip middleware and functions, gripcontrol
  formats) or ``clarion`` (``clarion.django.grip``); only the chosen one is imported.
* ``GRIP_CONTROL_URI``, ``GRIP_KEY``: the proxy's publish (control) URI and the Grip-Sig key
  (default ``changeme``), as ``GRIP_PROXIES``.
* ``GRIP_APPS_EVENTSTREAM=1`` with ``GRIP_APPS_DB=<sqlite file>``: also install
  django-eventstream (GRIP mode, DjangoModelStorage) under ``/events/``.
"""
