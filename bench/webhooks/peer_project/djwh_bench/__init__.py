"""The django-webhook peer: a minimal Django project (``orders.Order`` saves fire webhooks).

Importing the package makes the Celery app the current one, as Celery's Django guide does, so
``django_webhook.tasks`` (``@current_app.task``) registers its task on it.
"""

from .celery import app as celery_app

__all__ = ["celery_app"]
