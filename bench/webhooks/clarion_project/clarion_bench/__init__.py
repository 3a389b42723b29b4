"""Clarion side of the webhook delivery benchmark: a minimal Django project with
``clarion.django`` (PostgreSQL outbox + ``manage.py clarion_worker``)."""
