"""Connecting users' accounts on servers the site does not know in advance.

Django-free: discovery (WebFinger, host-meta, RFC 8414, OpenID), dynamic client registration
(pump.io, Mastodon, RFC 7591), the OAuth 1.0a and OAuth 2 (PKCE) flows on authlib, and the
actions a connected account allows (``whoami``, ``post_note``). Every request goes through
:class:`~clarion.connect.fetch.Fetcher`: the webhook engine's address policy on the address
actually dialled, with size, time and redirect limits. ``clarion.django.connect`` keeps the
state, the models and the views. See docs/topics/connect-discovery.md.
"""

from clarion.connect.actions import Profile, post_note, whoami
from clarion.connect.discovery import Server, adiscover, discover, parse_identifier
from clarion.connect.fetch import AsyncFetcher, Fetcher
from clarion.connect.oauth import OAuth1Flow, OAuth2Flow, Tokens, session
from clarion.connect.registration import ClientCredentials, register

__all__ = [
    "AsyncFetcher",
    "ClientCredentials",
    "Fetcher",
    "OAuth1Flow",
    "OAuth2Flow",
    "Profile",
    "Server",
    "Tokens",
    "adiscover",
    "discover",
    "parse_identifier",
    "post_note",
    "register",
    "session",
    "whoami",
]
