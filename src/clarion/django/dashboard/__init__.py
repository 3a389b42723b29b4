"""The webhook dashboard: server-rendered pages (Django templates, one small stylesheet, no
JavaScript build) for people to manage their listeners, watch deliveries and make API keys.

Everyone signs in; staff see every listener, other users only their own (another user's
listener is a 404). Every change is a POST carrying Django's CSRF token.
"""
