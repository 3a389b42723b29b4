"""What an attempt's result means, and when to try again.

The rules are the Standard Webhooks recommendations, with Svix's numbers where the spec gives
none: 2xx is success; 3xx is a failure and is never followed; 410 Gone disables the listener;
429, 502, 504 and timeouts mean the receiver is overloaded, so the next attempt waits at least
``overload_delay``; ``Retry-After`` can push an attempt later than the schedule (never earlier),
up to ``retry_after_max``. Every delay gets ±``jitter`` so that retries after an outage spread
out instead of arriving together.
"""

from __future__ import annotations

import enum
import random
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from email.utils import parsedate_to_datetime

from clarion.errors import ConfigError
from clarion.webhooks.limits import MAX_RETRY_DELAY

# Svix's default (and at least the issue's): attempt 1 at once, then these waits.
DEFAULT_SCHEDULE: tuple[float, ...] = (5, 300, 1800, 7200, 18000, 36000, 36000)


class Outcome(enum.StrEnum):
    SUCCESS = "success"
    FAILURE = "failure"  # any other status, a 3xx, a connection error, a refused address
    OVERLOAD = "overload"  # 429, 502, 504, a timeout: wait longer
    GONE = "gone"  # 410: the receiver asks us to stop


OVERLOAD_STATUSES = frozenset({429, 502, 504})


def classify(status: int | None, *, timed_out: bool = False) -> Outcome:
    if timed_out:
        return Outcome.OVERLOAD
    if status is None:
        return Outcome.FAILURE
    if 200 <= status < 300:
        return Outcome.SUCCESS
    if status == 410:
        return Outcome.GONE
    if status in OVERLOAD_STATUSES:
        return Outcome.OVERLOAD
    return Outcome.FAILURE


def parse_retry_after(value: str | None, now: float) -> float | None:
    """Seconds to wait, from delta-seconds or an HTTP date; None when absent or unreadable."""
    if not value:
        return None
    value = value.strip()
    if value.isascii() and value.isdigit():  # str.isdigit() also admits "²", which float() refuses
        return float(value)
    try:
        when = parsedate_to_datetime(value)
    except (TypeError, ValueError, OverflowError):  # a year too large for datetime: Overflow
        return None
    if when.tzinfo is None:  # an HTTP date is GMT by definition
        return None
    return max(0.0, when.timestamp() - now)


@dataclass(frozen=True, slots=True)
class RetryPolicy:
    schedule: tuple[float, ...] = DEFAULT_SCHEDULE
    jitter: float = 0.2
    overload_delay: float = 60.0
    retry_after_max: float = 36000.0  # 10 h, Hook0's cap: a receiver cannot park us for days

    def __post_init__(self) -> None:
        if any(not isinstance(s, int | float) or not 0 <= s <= MAX_RETRY_DELAY
               for s in self.schedule):
            raise ConfigError("RETRY_SCHEDULE must be a list of numbers of seconds from 0 to "
                              f"{MAX_RETRY_DELAY:g}")
        if not 0 <= self.jitter < 1:
            raise ConfigError("RETRY_JITTER must be at least 0 and below 1")

    @classmethod
    def from_schedule(cls, schedule: Sequence[float] | None, base: RetryPolicy) -> RetryPolicy:
        if schedule is None:
            return base
        return cls(tuple(float(s) for s in schedule), base.jitter, base.overload_delay,
                   base.retry_after_max)

    @property
    def max_attempts(self) -> int:
        return len(self.schedule) + 1

    def delay(
        self,
        attempt: int,
        outcome: Outcome,
        retry_after: float | None = None,
        rand: Callable[[], float] = random.random,
    ) -> float | None:
        """Seconds until the attempt after ``attempt`` (1-based), or None when none is left."""
        if outcome in (Outcome.SUCCESS, Outcome.GONE) or attempt > len(self.schedule):
            return None
        base = self.schedule[attempt - 1]
        wait = base * (1 + self.jitter * (2 * rand() - 1))
        if outcome is Outcome.OVERLOAD:
            wait = max(wait, self.overload_delay)
        if retry_after is not None:
            wait = max(wait, min(retry_after, self.retry_after_max))
        return wait
