"""One attempt: sign the body, send it over a transport, and judge the answer.

The signature's timestamp is the attempt's own (every retry is signed anew, as the spec wants,
so a receiver's tolerance window applies to the attempt, not to the event). Errors never leave
``attempt``: whatever happens becomes an :class:`AttemptResult` with an outcome and a reason,
including a defect of the job itself (a header HTTP cannot carry, a row that could not be read),
so a delivery that cannot succeed follows its retry schedule instead of failing every claim.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from functools import lru_cache

from clarion.errors import AddressRejected, ConfigError, WebhookError
from clarion.webhooks.addresses import AddressPolicy
from clarion.webhooks.limits import check_header
from clarion.webhooks.retry import Outcome, RetryPolicy, classify, parse_retry_after
from clarion.webhooks.signing import SigningKey, signature_headers
from clarion.webhooks.store import AttemptResult, Job
from clarion.webhooks.transport import Request, Transport

DEFAULT_TIMEOUT = 15.0

log = logging.getLogger("clarion.webhooks")


@lru_cache(maxsize=4096)
def _key(secret: str) -> SigningKey:
    return SigningKey.parse(secret)


class Sender:
    def __init__(
        self,
        transport: Transport,
        policy: AddressPolicy,
        retry: RetryPolicy | None = None,
        *,
        timeout: float = DEFAULT_TIMEOUT,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.transport = transport
        self.policy = policy
        self.retry = retry or RetryPolicy()
        self.timeout = timeout
        self.clock = clock

    async def attempt(self, job: Job) -> AttemptResult:
        started = self.clock()
        t0 = time.perf_counter()
        timeout = job.timeout or self.timeout
        status: int | None = None
        headers: list[tuple[str, str]] = []
        body = b""
        error = ""
        retry_after: float | None = None
        try:
            if job.problem:
                raise WebhookError(job.problem)
            for name, value in job.headers:
                check_header(name, value)  # stored before the bound existed, or by hand
            target = self.policy.parse_url(job.url)
            signed = signature_headers(
                job.message_id, int(started), job.body, [_key(s) for s in job.secrets]
            )
            request_headers = [("Content-Type", "application/json"), *signed.items()]
            request_headers.extend(job.headers)
            request = Request(target, request_headers, job.body, timeout)
            response = await self.transport.send(request)
        except TimeoutError:
            outcome = Outcome.OVERLOAD
            error = f"timed out after {timeout:g} s"
        except AddressRejected as exc:
            outcome = Outcome.FAILURE
            error = str(exc)
        except (WebhookError, OSError) as exc:
            outcome = Outcome.FAILURE
            error = str(exc) or type(exc).__name__
        except Exception as exc:  # one delivery's defect stays with it
            log.exception("delivery %d attempt %d failed unexpectedly", job.delivery_id,
                          job.attempt)
            outcome = Outcome.FAILURE
            error = f"internal error: {type(exc).__name__}: {exc}"[:2000]
        else:
            status = response.status
            headers = response.headers
            body = response.body
            outcome = classify(status)
            if 300 <= status < 400:
                error = f"redirect to {response.header('location') or '?'} not followed"
            if outcome is not Outcome.SUCCESS:
                retry_after = parse_retry_after(response.header("retry-after"), started)
        duration_ms = round((time.perf_counter() - t0) * 1000)
        try:
            policy = RetryPolicy.from_schedule(job.schedule, self.retry)
        except ConfigError:
            policy = self.retry  # a broken override must not stall the delivery
        next_in = None if job.manual else policy.delay(job.attempt, outcome, retry_after)
        return AttemptResult(job, started, duration_ms, outcome, status, headers, body, error,
                             next_in)
