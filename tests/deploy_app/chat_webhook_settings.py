"""The chat example's settings (tests/deploy_app/chat_settings.py) with webhooks allowed to
reach this machine, for the nginx stack's webhook worker.

A production site sends webhooks to other servers, which the worker's SSRF policy allows as
they stand; the test's receiver listens on 127.0.0.1, which the policy refuses unless the site
says it may (``CLARION["WEBHOOKS"]["ALLOWED_NETWORKS"]``), as a site whose receivers are on its
private network does.
"""

from __future__ import annotations

from deploy_app.chat_settings import *  # noqa: F403
from deploy_app.chat_settings import CLARION

CLARION = {**CLARION, "WEBHOOKS": {"ALLOWED_NETWORKS": ["127.0.0.0/8"]}}
