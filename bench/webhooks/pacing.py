"""Call a function at a steady rate: the light-load half of both sides' drivers."""

from __future__ import annotations

import time
from collections.abc import Callable


def paced(rate: float, seconds: float, first: int, send: Callable[[int], None]) -> dict[str, float]:
    """``send(n)`` for n = first, first+1, … at ``rate`` per second for ``seconds``; reports
    the achieved rate and how late the worst call started."""
    count = int(rate * seconds)
    start = time.perf_counter()
    late = 0.0
    for k in range(count):
        wait = start + k / rate - time.perf_counter()
        if wait > 0:
            time.sleep(wait)
        else:
            late = max(late, -wait)
        send(first + k)
    took = time.perf_counter() - start
    return {"sent": count, "seconds": round(took, 3), "rate": round(count / took, 1),
            "max_late_ms": round(late * 1000, 1)}
