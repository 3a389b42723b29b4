"""examples/chat's own settings, with /whoami added to its URLs (tests/deploy_app/chat_urls.py).

The example is configured by its environment (CHAT_*) as in production; this module only lets
the nginx test ask Django what it saw of a request that came through nginx.
"""

from __future__ import annotations

import os

from chatsite.settings import *  # noqa: F403

ROOT_URLCONF = "deploy_app.chat_urls"

# Django calls the hub's API at the site's public https address, whose certificate here is the
# test's own. A server trusts a real one (Let's Encrypt) through certifi's bundle, which
# clarion.client's httpx uses: it ignores SSL_CERT_FILE (trust_env=False, so that proxy
# variables do not apply) and takes no CA option. So in this test process only, the test's CA
# stands in for certifi's bundle.
_test_ca = os.environ.get("DEPLOY_TEST_CA_FILE", "")
if _test_ca:
    import certifi

    def _where(ca: str = _test_ca) -> str:
        return ca

    certifi.where = _where
