"""Clarion's Django app: ``INSTALLED_APPS += ["clarion.django"]``.

Importing this package does nothing: each part (``clarion.django.grip``, …) is imported on its
own, so a project pays only for what it uses and nothing runs before Django's settings are ready.
"""
