"""Crash safety: workers SIGKILLed again and again while events flow lose nothing; duplicates
carry the same webhook-id. Two workers share PostgreSQL (SKIP LOCKED) without losing or
repeating anything. An idle worker is woken by NOTIFY, and stops promptly on SIGTERM."""

# ruff: noqa: E402  (Django is configured before the imports that need it)
from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import threading
import time
from collections import defaultdict

import pytest

import django_env

django_env.configure()

from django.db import connections, transaction
from django.db.models import Min
from django.utils import timezone

from clarion.django.match import In, Startswith
from clarion.django.models import Attempt, Delivery, Event, Listener
from webhook_apps.people.hooks import MyHook
from webhook_support import (
    Receiver,
    clean_db,
    receiver,
    run_worker,
    spawn_worker,
    webhook_databases,
)

__all__ = ["clean_db", "receiver", "webhook_databases"]

FAST = {"TIMEOUT": 2, "LEASE": 3, "RETRY_SCHEDULE": [0.2, 0.5, 1, 1, 1, 1, 1, 1],
        "RETRY_JITTER": 0}


def make_listeners(rec: Receiver) -> dict[str, Listener]:
    made = {
        "/all": MyHook().listener(url=rec.url("/all")).save(),
        "/a": MyHook().listener(url=rec.url("/a")).match(name=Startswith("A")).save(),
        "/ny": MyHook().listener(url=rec.url("/ny")).match(address=In("NY", "LA")).save(),
    }
    for path, listener in made.items():
        rec.secrets[path] = [listener.secret]
    return made


def insert(transactions: range, per: int = 100) -> None:
    for t in transactions:
        with transaction.atomic():
            for i in range(per):
                n = t * per + i
                MyHook().send(name=f"{'AB'[n % 2]}{n}", address=("NY", "SF", "LA")[n % 3])


def expected_pairs(listeners: dict[str, Listener]) -> set[tuple[str, str]]:
    from clarion.django.match import matches_json

    pairs = set()
    for msg_id, data in Event.objects.filter(hook="myhook").values_list("msg_id", "data"):
        for path, listener in listeners.items():
            if matches_json(listener.match, data):
                pairs.add((msg_id, path))
    return pairs


def finish(timeout: float = 240, db: str = "default", **conf: object) -> None:
    """Workers with --exit-when-idle until nothing is pending (waiting out leases)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        proc = spawn_worker("--exit-when-idle", **{**FAST, "DATABASE": db, **conf})
        out, _ = proc.communicate(timeout=timeout)
        assert proc.returncode == 0, out.decode(errors="replace")[-3000:]
        if Event.objects.using(db).filter(dispatched_at__isnull=True).exists():
            continue
        first = (Delivery.objects.using(db).filter(status="pending", listener__active=True)
                 .aggregate(at=Min("next_attempt_at"))["at"])
        if first is None:
            return
        time.sleep(max(0.0, (first - timezone.now()).total_seconds()) + 0.1)
    raise AssertionError("deliveries still pending")


def check_received(rec: Receiver, expected: set[tuple[str, str]]) -> int:
    """Every pair arrived, nothing else did, duplicates are the same message; returns the
    number of duplicates."""
    rec.assert_all_verified()
    assert all(r.verified for r in rec.requests)
    by_body: dict[tuple[str, bytes], set[str]] = defaultdict(set)
    counts: dict[tuple[str, str], int] = defaultdict(int)
    for r in rec.requests:
        by_body[(r.path, r.body)].add(r.headers["webhook-id"])
        counts[(r.headers["webhook-id"], r.path)] += 1
    assert all(len(ids) == 1 for ids in by_body.values()), "one event under two webhook-ids"
    missing = expected - set(counts)
    assert not missing, (f"{len(missing)} of {len(expected)} deliveries lost, "
                         f"e.g. {sorted(missing)[:3]}")
    extra = set(counts) - expected
    assert not extra, f"{len(extra)} unexpected deliveries, e.g. {sorted(extra)[:3]}"
    payloads = dict(Event.objects.values_list("msg_id", "payload"))
    for r in rec.requests[:: max(1, len(rec.requests) // 500)]:
        assert r.body == payloads[r.headers["webhook-id"]].encode()
    return sum(c - 1 for c in counts.values())


def kill(proc: subprocess.Popen[bytes]) -> None:
    with contextlib.suppress(ProcessLookupError):
        os.killpg(proc.pid, signal.SIGKILL)
    proc.wait(timeout=30)
    if proc.stdout:
        proc.stdout.close()


@pytest.mark.timeout(600)
def test_sigkilled_workers_lose_nothing(clean_db: None, receiver: Receiver) -> None:
    listeners = make_listeners(receiver)
    insert(range(30))
    inserted = threading.Event()
    errors: list[BaseException] = []

    def more() -> None:
        try:
            insert(range(30, 100))
        except BaseException as exc:  # noqa: BLE001  # reported by the test below
            errors.append(exc)
        finally:
            connections.close_all()
            inserted.set()

    thread = threading.Thread(target=more)
    thread.start()
    kills = 0
    delays = [0.5, 2.5, 1.0, 2.0, 0.7, 1.5, 3.0, 1.2]
    try:
        while kills < len(delays) or not inserted.is_set():
            proc = spawn_worker(**FAST)
            time.sleep(delays[kills % len(delays)])
            kill(proc)
            kills += 1
    finally:
        thread.join()
    assert not errors, errors
    assert Event.objects.count() == 10_000
    received_before_final = len(receiver.requests)
    time.sleep(FAST["LEASE"] + 0.5)  # leases taken by the killed workers run out
    finish()

    expected = expected_pairs(listeners)
    assert len(expected) == 10_000 + 5_000 + 6_667
    duplicates = check_received(receiver, expected)
    statuses = set(Delivery.objects.values_list("status", flat=True).distinct())
    assert statuses == {"succeeded"}, statuses
    assert Delivery.objects.count() == len(expected)
    print(f"\n{kills} SIGKILLs; {received_before_final} requests before the final worker, "
          f"{len(receiver.requests)} in all for {len(expected)} deliveries: "
          f"{duplicates} duplicates")


@pytest.mark.timeout(600)
def test_two_workers_share_postgresql(clean_db: None, receiver: Receiver) -> None:
    listeners = make_listeners(receiver)
    insert(range(30))
    # The default lease (TIMEOUT + 10 s) and a generous timeout: nothing expires or times
    # out, so any repeat would be two workers claiming the same delivery.
    # Modest concurrency: the receiver is one Python process on a shared machine, and an
    # overloaded receiver turns into timeouts and 60 s overload waits, not a test of sharing.
    conf = {**FAST, "TIMEOUT": 30, "LEASE": 40, "MAX_CONNECTIONS_PER_HOST": 16}
    procs = [spawn_worker("--exit-when-idle", "-v", "1", "--concurrency", "50", **conf)
             for _ in range(2)]
    outputs = []
    for proc in procs:
        out, _ = proc.communicate(timeout=300)
        assert proc.returncode == 0, out.decode(errors="replace")[-3000:]
        outputs.append(out.decode().strip().splitlines()[-1])
    finish(TIMEOUT=30, LEASE=40)
    expected = expected_pairs(listeners)
    duplicates = check_received(receiver, expected)
    outcomes = sorted(set(Attempt.objects.values_list("outcome", flat=True)))
    print(f"\n{outputs}; {duplicates} duplicates; attempt outcomes {outcomes}")
    # SKIP LOCKED hands every delivery to one worker: a request arrives twice only when an
    # attempt failed or timed out (a loaded receiver can take longer than TIMEOUT to answer,
    # after having received the request) and was retried; never two workers at once.
    retried = Attempt.objects.exclude(outcome="success").count()
    assert duplicates <= retried, (duplicates, retried)
    assert set(Delivery.objects.values_list("status", flat=True)) == {"succeeded"}


@pytest.mark.timeout(600)
def test_sigkilled_sqlite_worker_loses_nothing(clean_db: None, receiver: Receiver) -> None:
    from django.test import override_settings

    conf = {"ALLOWED_NETWORKS": ["127.0.0.0/8"], "DATABASE": "sqlite"}
    with override_settings(CLARION={"WEBHOOKS": conf}):
        listener = MyHook().listener(url=receiver.url("/all")).save()
        receiver.secrets["/all"] = [listener.secret]
        for t in range(20):
            with transaction.atomic(using="sqlite"):
                for i in range(100):
                    MyHook().send(name=f"n{t * 100 + i}", address="x")
    for delay in (0.8, 1.2, 0.6, 1.5, 1.0):
        proc = spawn_worker(**{**FAST, "DATABASE": "sqlite"})
        time.sleep(delay)
        kill(proc)
    time.sleep(FAST["LEASE"] + 0.5)
    finish(db="sqlite")
    ids = set(Event.objects.using("sqlite").values_list("msg_id", flat=True))
    assert len(ids) == 2000
    got = {r.headers["webhook-id"] for r in receiver.requests}
    assert got == ids
    receiver.assert_all_verified()
    outcomes = list(Attempt.objects.using("sqlite").values_list("outcome", "error"))
    assert set(Delivery.objects.using("sqlite").values_list("status", flat=True)) == {
        "succeeded"}, [o for o in outcomes if o[0] != "success"][:5]
    print(f"\nsqlite: {len(receiver.requests) - len(ids)} duplicates; "
          f"{sum(o[0] != 'success' for o in outcomes)} failed attempts")


@pytest.mark.timeout(120)
def test_idle_worker_is_woken_by_notify_and_stops_on_sigterm(clean_db: None,
                                                              receiver: Receiver) -> None:
    listener = MyHook().listener(url=receiver.url("/n")).save()
    receiver.secrets["/n"] = [listener.secret]
    proc = spawn_worker(**FAST)
    try:
        with transaction.atomic():
            MyHook().send(name="first", address="x")
        receiver.wait_for(1, "/n", timeout=60)  # the worker is up
        time.sleep(1.5)  # and idle, blocked in LISTEN (its safety-net poll is 30 s)
        sent = time.monotonic()
        with transaction.atomic():
            MyHook().send(name="second", address="x")
        got = receiver.wait_for(2, "/n", timeout=10)
        latency = time.monotonic() - sent
        assert got[1].json["data"]["name"] == "second"
        print(f"\nwoken by NOTIFY: delivered {latency:.3f} s after commit")
        assert proc.poll() is None
        proc.send_signal(signal.SIGTERM)
        out, _ = proc.communicate(timeout=30)
        assert proc.returncode == 0, out.decode(errors="replace")
        assert "Traceback" not in out.decode(errors="replace")
    finally:
        if proc.poll() is None:
            kill(proc)
    receiver.assert_all_verified()
    assert run_worker() == 0
