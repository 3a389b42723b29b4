"""``webhook_apps.settings`` plus ``CLARION['HUB']`` from ``CLARION_TEST_HUB`` (JSON), for a
``manage.py clarion_worker`` subprocess that relays durable publications to a test hub."""

import json
import os

from webhook_apps.settings import *  # noqa: F403
from webhook_apps.settings import CLARION

CLARION = {**CLARION, "HUB": json.loads(os.environ["CLARION_TEST_HUB"])}
