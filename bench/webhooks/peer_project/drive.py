"""Drive the django-webhook peer: register the receiver, then save ``Order`` rows.

Each ``Order.objects.create`` runs django-webhook's ``post_save`` listener, which calls
``fire_webhook.delay(...)`` inside the signal (autocommit: the row is committed by then).

    DJWH_BENCH_DB=... DJWH_BENCH_BROKER=redis://... python drive.py --setup URL \
        [--preload N] [--paced RATE SECONDS] [--warmup]

Prints one JSON line with what it did and how long it took.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(1, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
os.environ.setdefault("DJANGO_SETTINGS_MODULE", "djwh_bench.settings")

import django
import pacing  # bench/webhooks/pacing.py

django.setup()

from django_webhook.models import Webhook, WebhookSecret, WebhookTopic  # noqa: E402
from orders.models import Order  # noqa: E402

TOPIC = "orders.Order/create"


def setup(url: str) -> dict[str, object]:
    # django-webhook's AppConfig.ready() creates the WebhookTopic rows, but only when its
    # tables already exist at start-up (not in the process that ran `migrate`), so make sure.
    for action in ("create", "update", "delete"):
        WebhookTopic.objects.get_or_create(name=f"orders.Order/{action}")
    Webhook.objects.all().delete()
    hook = Webhook.objects.create(url=url, active=True)
    hook.topics.set(WebhookTopic.objects.filter(name=TOPIC))
    WebhookSecret.objects.create(webhook=hook, token="bench-secret-0123456789")
    # This process' topic cache (1 minute TTL) is filled at the first save, after this.
    return {"webhook": hook.pk, "uuid": str(hook.uuid)}


def preload(n: int, first: int) -> dict[str, object]:
    t = time.perf_counter()
    for i in range(first, first + n):
        Order.objects.create(n=i, sent_at=time.time())
    s = time.perf_counter() - t
    return {"saved": n, "seconds": round(s, 3), "saves_per_s": round(n / s, 1)}


def paced(rate: float, seconds: float, first: int) -> dict[str, object]:
    def save(n: int) -> None:
        Order.objects.create(n=n, sent_at=time.time())

    result = pacing.paced(rate, seconds, first, save)
    result["saved"] = result.pop("sent")
    return result


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--setup", metavar="URL")
    ap.add_argument("--preload", type=int, default=0)
    ap.add_argument("--paced", nargs=2, type=float, metavar=("RATE", "SECONDS"))
    ap.add_argument("--first", type=int, default=0, help="first Order.n")
    a = ap.parse_args()
    out: dict[str, object] = {}
    if a.setup:
        out["setup"] = setup(a.setup)
    if a.preload:
        out["preload"] = preload(a.preload, a.first)
    if a.paced:
        out["paced"] = paced(a.paced[0], a.paced[1], a.first)
    print(json.dumps(out), flush=True)


if __name__ == "__main__":
    main()
