"""Real third-party OAuth providers for Clarion's connect tests (issue 13 §5).

Three servers, each a Flask app built on authlib's *server* side, served by werkzeug on
127.0.0.1 on a free port in a daemon thread (threaded, so a browser and a client can talk to it
at once). Their state is in memory and lives as long as the server.

Start one with its context manager (each yields a ``base.Provider``)::

    from providers.oauth2 import running_oauth2_provider
    from providers.pump import running_pump_provider
    from providers.mastodon import running_mastodon_provider

    with running_pump_provider() as pump:
        pump.url              # "http://127.0.0.1:<port>"
        pump.host             # "127.0.0.1:<port>" (the host part of accounts)
        pump.acct("alice")    # "alice@127.0.0.1:<port>": what a user types to connect
        pump.knobs            # switches (below), read on every request
        pump.state            # the in-memory store: clients, tokens, notes/activities
        pump.paths_seen()     # every request path served, in order

(``tests/`` is on sys.path under pytest, so import ``providers.…``.) Clarion must be configured
to allow 127.0.0.0/8 and plain http explicitly (AddressPolicy and ``allow_http=True``).

Providers
---------
``oauth2`` (providers/oauth2.py) — a generic OAuth 2 server:
  - discovery: ``/.well-known/webfinger`` (JRD: subject, aliases, links
    ``http://webfinger.net/rel/profile-page`` and ``http://openid.net/specs/connect/1.0/issuer``
    whose href is the issuer; ``rel=`` filters links) and RFC 8414 metadata at
    ``/.well-known/oauth-authorization-server`` (issuer = ``url`` without a trailing slash).
  - RFC 7591 registration at ``POST /oauth/register`` (JSON; 201). ``grant_types`` defaults to
    ``["authorization_code"]`` as RFC 7591 says: ask for ``refresh_token`` too to get refresh
    tokens. ``token_endpoint_auth_method`` basic (default), post or none.
  - ``/oauth/authorize``: authorization code with PKCE required, S256 only (a request without a
    challenge, or "plain", is sent back with error=invalid_request). A bad client_id or
    redirect_uri shows an error page (never redirects). Codes live 10 minutes, work once.
  - ``/oauth/token``: code and refresh_token grants; refresh tokens rotate (each works once).
  - ``/oauth/revoke`` (RFC 7009).
  - ``/userinfo`` (scope ``profile``): sub, preferred_username, name, profile; with scope
    ``email`` also ``email`` and, if the user has one, ``email_verified``.
  - ``POST /api/notes`` (scope ``notes``; JSON or form ``text``) → 201 ``{id, url, text, ...}``;
    ``GET /api/notes/<id>``.
  - scopes_supported: profile, email, notes.

``pump`` (providers/pump.py) — pump.io-shaped OAuth 1.0a (HMAC-SHA1), see its docstring:
  host-meta (XRD; JRD if Accept has application/json), host-meta.json, ``/api/lrdd``,
  WebFinger (user links only, ``{"links": [...]}`` as pump.io), ``POST /api/client/register``
  (``type=client_associate``, ``application_type``, ``application_name``, ``redirect_uris``
  space-separated; form or JSON → ``client_id``, ``client_secret``, ``expires_at: 0``),
  ``/oauth/request_token``, ``/oauth/authorize``, ``/oauth/access_token``, ``/api/whoami``
  (302 to ``/api/user/<nick>/profile``, which needs its own signature), ``POST
  /api/user/<nick>/feed`` (an activity; only the token's user; answers the activity with ids),
  ``GET /api/user/<nick>/feed``. Request tokens live 10 minutes; a used one is gone. Note that
  authlib's httpx OAuth1Client drops a JSON body unless made with ``force_include_body=True``.

``mastodon`` (providers/mastodon.py) — Mastodon 4.3-shaped OAuth 2, see its docstring:
  ``POST /api/v1/apps``, ``/oauth/authorize`` (PKCE optional, S256), ``/oauth/token`` (no
  expiry, no refresh token), ``/oauth/revoke``, ``/api/v1/accounts/verify_credentials``,
  ``POST /api/v1/statuses``, WebFinger, host-meta, nodeinfo, ``/api/v1/instance``,
  ``/.well-known/oauth-authorization-server`` with ``app_registration_endpoint``. No email.

Users (the same on every provider; ``base.default_users()``; pass ``users=`` to change)
---------------------------------------------------------------------------------------
=========  =================  ==================  ===================
username   password           email               email_verified
=========  =================  ==================  ===================
alice      alice-password     alice@example.org   True
bob        bob-password       bob@example.org     False
carol      carol-password     (none)              (no claim)
=========  =================  ==================  ===================

Pages a browser drives
----------------------
``/login`` — form ``#login-form`` with ``#username``, ``#password``, button ``#login`` (a wrong
password shows ``#login-error``). The authorize endpoint sends a logged-out user there and back.
The consent page: ``#who`` (the logged-in user), ``#client-name``, ``#scope`` and buttons
``#approve`` / ``#deny``. Approve redirects to the client's callback with ``code`` and ``state``
(OAuth 2) or ``oauth_token`` and ``oauth_verifier`` (pump); Deny with ``error=access_denied``
(and ``state`` for OAuth 2). Each provider's session cookie has its own name, because a browser
shares cookies between ports of 127.0.0.1.

Knobs (``provider.knobs``, a ``base.Knobs``; flip them on a running provider)
-----------------------------------------------------------------------------
- ``auto_approve = "alice"`` — the test switch for non-browser tests: the authorize endpoint
  approves at once as that user (no login, no consent page). ``auto_deny = True`` denies at once.
- ``refuse_registration = True`` — registration answers 403 (RFC 7591 ``access_denied``;
  pump.io's and Mastodon's ``{"error": ...}``).
- ``token_endpoint = "down"`` (503 with an nginx HTML page), ``"garbage"`` (200 text/html that
  is not a token), ``"reset"`` (connection closed without an answer); ``"ok"`` again to heal.
  Applies to /oauth/token (OAuth 2) and /oauth/request_token + /oauth/access_token (pump).
- ``delay = 2.0`` — every request waits that long first (a slow provider).
- ``access_token_ttl = 30`` — OAuth 2 access tokens issued from now on live that long. Below
  authlib's client leeway (60 s) the client refreshes before its next request, no waiting.
- ``no_oauth_endpoints = True`` — discovery finds the user but no OAuth endpoints.

Revocation (``provider.state``): ``revoke_tokens(username=None)`` — the tokens stop working
(401 on use; OAuth 2 refresh answers invalid_grant); ``revoke_client(client_id=None)`` — the
client is gone (token endpoint: invalid_client 401; its tokens stop working; pump: the
request-token endpoint answers invalid_client). OAuth 2 stores also have ``expire_tokens()``.
Unknown users get a WebFinger 404; an unknown host is a port nothing listens on.
"""
