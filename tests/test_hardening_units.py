"""Unit tests of the bounds on tenant values (``clarion.webhooks.limits``) and of the failure
containment in the delivery worker and its supervisor (our own loop code, driven by a scripted
store and sender: no database or network is involved in what these check)."""

from __future__ import annotations

import asyncio
import logging
import math
from collections.abc import Sequence
from typing import Any

import pytest

from clarion.errors import LimitError
from clarion.webhooks import limits
from clarion.webhooks.retry import Outcome, RetryPolicy, parse_retry_after
from clarion.webhooks.sender import Sender
from clarion.webhooks.store import AttemptResult, Job
from clarion.webhooks.worker import WORKER_ERRORS, Worker, WorkerConfig

# -- limits -----------------------------------------------------------------------------------


@pytest.mark.parametrize("value", ["text", "a b", "a\tb", "!~", "x" * limits.MAX_HEADER_VALUE,
                                   ""])
def test_header_values_http_can_carry(value: str) -> None:
    limits.check_header("X-Tenant", value)


@pytest.mark.parametrize("value", ["a\r\nInjected: 1", "a\nb", "a\x00b", "a\x01b", "a\x7fb",
                                   " lead", "trail ", "\u2603", "caf\xe9",
                                   "x" * (limits.MAX_HEADER_VALUE + 1), 5, None])
def test_header_values_http_cannot_carry(value: Any) -> None:
    with pytest.raises(LimitError):
        limits.check_header("X-Tenant", value)


@pytest.mark.parametrize("name", ["", "X Space", "X:Colon", "Ünï", "X\r\n", "a" * 257,
                                  "Content-Length", "host", "Webhook-Signature", "TE",
                                  "Transfer-Encoding", "Upgrade"])
def test_header_names_refused(name: str) -> None:
    with pytest.raises(LimitError):
        limits.check_header(name, "v")


def test_headers_count_and_case_duplicates() -> None:
    limits.check_headers({f"X-{i}": "v" for i in range(limits.MAX_HEADERS)})
    with pytest.raises(LimitError, match="at most"):
        limits.check_headers({f"X-{i}": "v" for i in range(limits.MAX_HEADERS + 1)})
    with pytest.raises(LimitError, match="twice"):
        limits.check_headers({"X-A": "1", "x-a": "2"})


@pytest.mark.parametrize("schedule", [[], [0], [5, 300, limits.MAX_RETRY_DELAY],
                                      [1.5] * limits.MAX_SCHEDULE_ENTRIES])
def test_schedules_in_range(schedule: list[float]) -> None:
    assert limits.check_schedule(schedule) == schedule


@pytest.mark.parametrize("schedule", [[1e300], [math.inf], [math.nan], [-1], ["5"], [True],
                                      "5,10", {"a": 1}, [1] * (limits.MAX_SCHEDULE_ENTRIES + 1),
                                      [limits.MAX_RETRY_DELAY + 1]])
def test_schedules_out_of_range(schedule: Any) -> None:
    with pytest.raises(LimitError):
        limits.check_schedule(schedule)


def test_timeouts_and_rate_limits_at_their_edges() -> None:
    assert limits.check_timeout(limits.MIN_TIMEOUT) == limits.MIN_TIMEOUT
    assert limits.check_timeout(limits.MAX_TIMEOUT) == limits.MAX_TIMEOUT
    assert limits.check_rate_limit(limits.MAX_RATE_LIMIT) == limits.MAX_RATE_LIMIT
    for bad in (0, 0.05, limits.MAX_TIMEOUT + 0.1, math.inf, math.nan, True, "1"):
        with pytest.raises(LimitError):
            limits.check_timeout(bad)
    for bad in (0, -1, 1.5, limits.MAX_RATE_LIMIT + 1, True):
        with pytest.raises(LimitError):
            limits.check_rate_limit(bad)


def test_filter_size_nesting_and_count() -> None:
    nested: Any = {"op": "is", "value": 1}
    for _ in range(limits.MAX_FILTER_DEPTH // 2 - 1):
        nested = {"op": "not", "arg": nested}
    limits.check_filter_json({"f": nested})
    deep: Any = 1
    for _ in range(100_000):  # deeper than the interpreter's recursion limit
        deep = [deep]
    with pytest.raises(LimitError, match="nested"):
        limits.check_filter_json({"f": deep})
    with pytest.raises(LimitError, match="conditions"):
        limits.check_filter_json({"f": {"op": "in", "values": list(range(500))}})
    with pytest.raises(LimitError, match="bytes"):
        limits.check_filter_json({"f": {"op": "is", "value": "x" * limits.MAX_FILTER_BYTES}})


def test_delays_are_clamped_for_the_store() -> None:
    assert limits.clamp_delay(1e300) == limits.MAX_RETRY_DELAY
    assert limits.clamp_delay(math.inf) == limits.MAX_RETRY_DELAY
    assert limits.clamp_delay(math.nan) == 0.0
    assert limits.clamp_delay(-5) == 0.0
    assert limits.clamp_delay(12.5) == 12.5


def test_retry_policy_refuses_schedules_out_of_range() -> None:
    with pytest.raises(Exception, match="RETRY_SCHEDULE"):
        RetryPolicy((1e300,))


def test_retry_after_with_non_ascii_digits_is_unreadable_not_a_crash() -> None:
    assert parse_retry_after("\u00b2", 0.0) is None  # "²".isdigit() is True; float() refuses it
    assert parse_retry_after("9" * 400, 0.0) == math.inf


# -- the worker's failure containment ------------------------------------------------------------


def _job(n: int = 1, **kw: Any) -> Job:
    return Job(delivery_id=n, listener_id=1, attempt=1, message_id="msg_1", hook="h",
               url="http://127.0.0.1:9/", body=b"{}", secrets=("whsec_" + "A" * 32,), **kw)


class ScriptedStore:
    """A store whose calls fail as scripted, then work; it records what reaches it."""

    def __init__(self, jobs: list[Job], fail_dispatch: int = 0, fail_record: int = 0) -> None:
        self.jobs = jobs
        self.fail_dispatch = fail_dispatch
        self.fail_record = fail_record
        self.recorded: list[AttemptResult] = []

    def dispatch(self, limit: int) -> int:
        if self.fail_dispatch:
            self.fail_dispatch -= 1
            raise RuntimeError("database is locked")
        return 0

    def claim(self, limit: int, lease: float) -> list[Job]:
        jobs, self.jobs = self.jobs[:limit], self.jobs[limit:]
        return jobs

    def record(self, results: Sequence[AttemptResult], disable_after: float) -> None:
        if self.fail_record:
            self.fail_record -= 1
            raise RuntimeError("disk I/O error")
        self.recorded.extend(results)

    def next_due(self) -> float | None:
        return 0.0 if self.jobs else None

    def wait(self, timeout: float) -> bool:
        return False

    def wake(self) -> None:
        return None

    def cleanup(self, retention: float) -> int:
        return 0

    def close(self) -> None:
        return None


class NoTransport:
    async def send(self, request: Any) -> Any:
        raise OSError("connection refused")

    async def aclose(self) -> None:
        return None


def _sender() -> Sender:
    from clarion.webhooks.addresses import AddressPolicy

    return Sender(NoTransport(), AddressPolicy(["127.0.0.0/8"]),  # type: ignore[arg-type]
                  RetryPolicy((1.0,)))


async def test_worker_outlives_failing_store_calls_and_loses_no_result() -> None:
    before = WORKER_ERRORS.labels("RuntimeError")._value.get()
    store = ScriptedStore([_job(1), _job(2)], fail_dispatch=2, fail_record=1)
    worker = Worker(store, _sender(), WorkerConfig(exit_when_idle=True, shutdown_timeout=5))
    await asyncio.wait_for(worker.run(), 30)
    assert sorted(r.job.delivery_id for r in store.recorded) == [1, 2]
    assert WORKER_ERRORS.labels("RuntimeError")._value.get() - before == 3


async def test_a_job_that_cannot_be_attempted_is_a_failed_attempt() -> None:
    store = ScriptedStore([_job(1, problem="the secret cannot be decrypted"),
                           _job(2, headers=(("X-Bad", "a\r\nb"),))])
    worker = Worker(store, _sender(), WorkerConfig(exit_when_idle=True))
    await asyncio.wait_for(worker.run(), 30)
    by_id = {r.job.delivery_id: r for r in store.recorded}
    assert by_id[1].outcome is Outcome.FAILURE and "decrypted" in by_id[1].error
    assert by_id[2].outcome is Outcome.FAILURE and "X-Bad" in by_id[2].error
    assert by_id[1].next_attempt_in is not None  # the schedule goes on: not claimed forever


async def test_the_supervisor_restarts_a_failed_worker() -> None:
    import django_env

    django_env.configure()  # the module imports the store, and with it the models
    from clarion.django.worker import Supervisor

    builds: list[int] = []
    failures: list[BaseException] = []
    store = ScriptedStore([])

    def build() -> Worker:
        builds.append(1)
        if len(builds) == 1:
            raise RuntimeError("could not open the database")
        return Worker(store, _sender(), WorkerConfig(idle_wait=0.05))

    supervisor = Supervisor(build, on_failure=failures.append)
    task = asyncio.create_task(supervisor.run())
    for _ in range(400):
        if len(builds) >= 2 and supervisor.worker is not None:
            break
        await asyncio.sleep(0.01)
    supervisor.stop()
    await asyncio.wait_for(task, 30)
    assert len(builds) == 2 and supervisor.restarts == 1
    assert [str(f) for f in failures] == ["could not open the database"]


# -- the hub's failure containment ---------------------------------------------------------------


class _Records(logging.Handler):
    def __init__(self) -> None:
        super().__init__()
        self.records: list[logging.LogRecord] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.records.append(record)


async def test_the_hub_logs_and_counts_a_failed_task_and_goes_on() -> None:
    import socket

    import httpx

    from clarion.hub.app import Hub
    from clarion.hub.config import load_config

    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))  # the port is read back from the bound socket
    sock.listen()
    hub = Hub(load_config(None, environ={}))
    seen = _Records()  # the hub's logger does not propagate: listen on it directly
    logging.getLogger("clarion").addHandler(seen)
    await hub.start(sock)
    try:
        async def broken() -> None:
            raise RuntimeError("a part failed")

        hub.spawn(broken())
        await asyncio.sleep(0.05)
        async with httpx.AsyncClient(base_url=hub.address) as client:
            health = await client.get("/health")
            metrics = (await client.get("/metrics")).text
        assert health.status_code == 200
        assert 'clarion_failures_total{part="task"} 1.0' in metrics
        failed = [r for r in seen.records if "task failed" in r.getMessage()]
        assert failed and failed[0].exc_info is not None  # logged with its traceback
        assert str(failed[0].exc_info[1]) == "a part failed"
    finally:
        logging.getLogger("clarion").removeHandler(seen)
        await hub.shutdown()
