"""examples/chat's own settings, with /whoami added to its URLs (tests/deploy_app/chat_urls.py).

The example is configured by its environment (CHAT_*) as in production; this module only lets
the nginx test ask Django what it saw of a request that came through nginx.
"""

from __future__ import annotations

from chatsite.settings import *  # noqa: F403

ROOT_URLCONF = "deploy_app.chat_urls"
