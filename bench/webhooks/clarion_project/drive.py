"""Drive the Clarion side: subscribe the receiver to ``bench.event``, then write events to the
outbox (``BenchHook().send`` inside ``transaction.atomic()``).

    CLARION_BENCH_DB=... python drive.py --setup URL [--preload N [--batch 1000]] \
        [--paced RATE SECONDS]

``--preload``: N events, ``--batch`` per transaction (no worker needs to run).
``--paced``: one event per transaction at RATE/s for SECONDS (``sent_at`` = time.time() just
before the send; the commit follows at once).  Prints one JSON line.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(1, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
os.environ.setdefault("DJANGO_SETTINGS_MODULE", "clarion_bench.settings")

import django
import pacing  # bench/webhooks/pacing.py

django.setup()

from clarion_bench.hooks import BenchHook  # noqa: E402
from django.db import transaction  # noqa: E402


def setup(url: str) -> dict[str, object]:
    listener = BenchHook().listener(url=url).save()
    return {"listener": listener.pk}


def preload(n: int, batch: int, first: int) -> dict[str, object]:
    hook = BenchHook()
    t = time.perf_counter()
    done = 0
    while done < n:
        k = min(batch, n - done)
        with transaction.atomic():
            for i in range(first + done, first + done + k):
                hook.send(sender=None, n=i, sent_at=time.time())
        done += k
    s = time.perf_counter() - t
    return {"sent": n, "batch": batch, "seconds": round(s, 3), "sends_per_s": round(n / s, 1)}


def paced(rate: float, seconds: float, first: int) -> dict[str, object]:
    def send(n: int) -> None:
        with transaction.atomic():
            hook.send(sender=None, n=n, sent_at=time.time())

    hook = BenchHook()
    return pacing.paced(rate, seconds, first, send)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--setup", metavar="URL")
    ap.add_argument("--preload", type=int, default=0)
    ap.add_argument("--batch", type=int, default=1000, help="events per transaction (preload)")
    ap.add_argument("--paced", nargs=2, type=float, metavar=("RATE", "SECONDS"))
    ap.add_argument("--first", type=int, default=0, help="first event's n")
    a = ap.parse_args()
    out: dict[str, object] = {}
    if a.setup:
        out["setup"] = setup(a.setup)
    if a.preload:
        out["preload"] = preload(a.preload, a.batch, a.first)
    if a.paced:
        out["paced"] = paced(a.paced[0], a.paced[1], a.first)
    print(json.dumps(out), flush=True)


if __name__ == "__main__":
    main()
