"""The webhook dashboard in headless Chromium (Debian's /usr/bin/chromium through Python
playwright) against the test project under gunicorn: durian's two-step create flow with a
filter, the secret shown once, deliveries after a real worker ran, resend, rotate, disable and
enable, API keys, and owners kept apart."""

from __future__ import annotations

import os
import re
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import pytest

import django_env
from conftest import in_ci

django_env.configure()

from clarion.django.hooks import hooks  # noqa: E402
from clarion.django.models import ApiKey, Listener  # noqa: E402
from test_webhooks_api import server, user  # noqa: E402
from webhook_support import Receiver, clean_db, receiver, run_worker, webhook_databases  # noqa: E402

__all__ = ["clean_db", "receiver", "server", "webhook_databases"]

pytestmark = pytest.mark.browser

CHROMIUM = os.environ.get("CLARION_CHROMIUM", "/usr/bin/chromium")
CHROMIUM_ARGS = ["--no-sandbox", "--disable-gpu", "--no-first-run",
                 "--disable-background-networking", "--disable-component-update",
                 "--disable-sync"]


def _unavailable(reason: str) -> None:
    if in_ci():
        pytest.fail(f"{reason}; CI must run scripts/install-test-deps")
    pytest.skip(reason)


def worker() -> None:
    """``run_worker`` on a thread of its own: playwright's sync API keeps an event loop on
    this one, and the worker starts its own."""
    with ThreadPoolExecutor(1) as pool:
        pool.submit(run_worker).result()


@pytest.fixture(scope="module")
def browser() -> Iterator[Any]:
    # Playwright's sync API runs its loop in this thread between calls, so Django would take
    # every ORM call here for one made inside a coroutine; none is (the loop is parked).
    unsafe = os.environ.get("DJANGO_ALLOW_ASYNC_UNSAFE")
    os.environ["DJANGO_ALLOW_ASYNC_UNSAFE"] = "true"
    try:
        yield from _browser()
    finally:
        if unsafe is None:
            del os.environ["DJANGO_ALLOW_ASYNC_UNSAFE"]
        else:
            os.environ["DJANGO_ALLOW_ASYNC_UNSAFE"] = unsafe


def _browser() -> Iterator[Any]:
    try:
        from playwright.sync_api import sync_playwright
    except ImportError:
        _unavailable("python playwright is not installed")
    if not Path(CHROMIUM).exists():
        _unavailable(f"{CHROMIUM} is missing (run scripts/install-test-deps)")
    with sync_playwright() as pw:
        b = pw.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
        try:
            yield b
        finally:
            b.close()


def signed_in(browser: Any, server: str, name: str) -> Any:
    """A page in a fresh browser context, signed in as ``name`` (password ``pw-<name>``)."""
    context = browser.new_context(base_url=server)
    page = context.new_page()
    page.on("pageerror", lambda e: print(f"[pageerror] {e}"))
    page.goto("/webhooks/")
    assert "/webhooks/login/" in page.url  # the dashboard needs a sign-in
    page.fill("input[name=username]", name)
    page.fill("input[name=password]", f"pw-{name}")
    page.click("button[type=submit]")
    page.wait_for_url(re.compile(r"/webhooks/$"))
    return page


def test_create_deliver_resend_rotate(server: str, clean_db: None, receiver: Receiver,
                                      browser: Any) -> None:
    user("dana")
    page = signed_in(browser, server, "dana")
    assert "No listeners yet" in page.content()

    # Step 1: pick the event type; step 2: one filter row per field it provides.
    page.click("text=New listener >> nth=0")
    page.select_option("select[name=type]", "myhook")
    page.click("button:has-text('Next')")
    page.wait_for_url(re.compile(r"/webhooks/create/\?type=myhook"))
    rows = page.locator("tr.filter")
    assert [rows.nth(i).get_attribute("data-field") for i in range(rows.count())] == [
        "address", "name"]
    # A bad URL is refused with the address policy's reason, and nothing is saved.
    page.fill("input[name=url]", "http://10.0.0.1/hook")
    page.click("button:has-text('Create listener')")
    assert page.locator(".errorlist").count() >= 1
    assert Listener.objects.count() == 0
    page.fill("input[name=url]", receiver.url("/dash"))
    page.fill("input[name=description]", "people called J")
    name_row = page.locator("tr.filter[data-field=name]")
    name_row.locator("select").select_option("startswith")
    name_row.locator("input[type=text]").fill("J")
    page.click("button:has-text('Create listener')")
    page.wait_for_url(re.compile(r"/webhooks/listeners/\d+/$"))

    listener = Listener.objects.get()
    assert listener.match == {"name": {"op": "startswith", "value": "J"}}
    assert listener.owner.username == "dana" and listener.description == "people called J"
    secret = page.locator("#secret code").inner_text().strip()
    assert secret == listener.secret and secret.startswith("whsec_")
    page.reload()
    assert page.locator("#secret").count() == 0  # shown once
    assert listener.secret not in page.content()

    receiver.secrets["/dash"] = [secret]
    myhook = hooks.get_hook("myhook")
    myhook.send(None, name="Joe", address="Oslo")
    myhook.send(None, name="Bob", address="Oslo")
    worker()
    receiver.wait_for(1, "/dash")
    page.reload()
    deliveries = page.locator("tbody.delivery")
    assert deliveries.count() == 1
    assert deliveries.locator("td.status").inner_text().startswith("succeeded")
    attempt = deliveries.locator("tr.attempt")
    assert attempt.count() == 1
    assert attempt.locator(".code").inner_text() == "200"
    assert "ms" in attempt.locator(".duration").inner_text()
    assert attempt.locator("pre.excerpt").inner_text() == "ok"

    # Resend: a second, manual attempt.
    deliveries.locator("button[name=resend]").click()
    assert "will be sent again" in page.locator(".messages").inner_text()
    worker()
    receiver.wait_for(2, "/dash")
    page.reload()
    attempts = page.locator("tbody.delivery tr.attempt")
    assert attempts.count() == 2
    assert "attempt 2 (manual)" in attempts.all_inner_texts()[0]  # newest first
    receiver.assert_all_verified()

    # Rotate: a new secret, shown once.
    page.click("button[name=rotate]")
    rotated = page.locator("#secret code").inner_text().strip()
    assert rotated != secret and rotated == Listener.objects.get().secret
    page.reload()
    assert page.locator("#secret").count() == 0

    # Disable, enable; recover (nothing failed).
    page.click("button[name=disable]")
    assert "disabled" in page.locator("#status").inner_text()
    assert Listener.objects.get().active is False
    page.click("button[name=enable]")
    assert "active" in page.locator("#status").inner_text()
    page.fill("input[name=since]", "2000-01-01T00:00")
    page.click("button[name=recover]")
    assert "reaches back at most" in page.locator(".messages").inner_text()

    page.goto("/webhooks/")
    assert page.locator("#listeners tbody tr").count() == 1
    assert receiver.url("/dash") in page.locator("#listeners").inner_text()
    page.context.close()


def test_owners_are_kept_apart(server: str, clean_db: None, receiver: Receiver,
                               browser: Any) -> None:
    dana, _ = user("dana")
    user("erin")
    user("root", staff=True)
    theirs = hooks.get_hook("myhook").listener(url=receiver.url("/d")).save(owner=dana)

    erin = signed_in(browser, server, "erin")
    assert "No listeners yet" in erin.content()
    response = erin.goto(f"/webhooks/listeners/{theirs.pk}/")
    assert response.status == 404
    # A forged POST with erin's own CSRF token still finds nothing to change.
    erin.goto("/webhooks/")
    token = next(c["value"] for c in erin.context.cookies() if c["name"] == "csrftoken")
    r = erin.request.post(f"/webhooks/listeners/{theirs.pk}/disable/",
                          headers={"X-CSRFToken": token, "Referer": f"{server}/webhooks/"})
    assert r.status == 404
    assert Listener.objects.get().active is True
    erin.context.close()

    root = signed_in(browser, server, "root")
    assert receiver.url("/d") in root.locator("#listeners").inner_text()
    assert root.goto(f"/webhooks/listeners/{theirs.pk}/").status == 200
    root.context.close()


def test_api_keys_page(server: str, clean_db: None, browser: Any) -> None:
    user("dana")
    page = signed_in(browser, server, "dana")
    page.click("nav >> text=API keys")
    page.fill("input[name=name]", "ci")
    page.click("button[name=create]")
    raw = page.locator("#new-key code").inner_text().strip()
    key = ApiKey.objects.get(name="ci")  # user() made one too
    assert ApiKey.authenticate(raw) == key
    page.reload()
    assert page.locator("#new-key").count() == 0 and raw not in page.content()
    # The key works against the API, until it is revoked here.
    api = page.context.request
    assert api.get("/webhooks/api/subscriptions", headers={
        "Authorization": f"Bearer {raw}", "Cookie": ""}).status == 200
    page.locator("#keys tr", has_text="ci").locator("button[name=revoke]").click()
    assert ApiKey.objects.get(name="ci").revoked is True
    assert "revoked" in page.locator("#keys tr", has_text="ci").inner_text()
    assert api.get("/webhooks/api/subscriptions", headers={
        "Authorization": f"Bearer {raw}", "Cookie": ""}).status == 401
    page.context.close()


def test_admin_pages(server: str, clean_db: None, receiver: Receiver) -> None:
    """The Django admin lists listeners without their secrets, shows deliveries with their
    attempts inline, and its actions work (no browser needed: plain HTTP with a session)."""
    import httpx

    root, _ = user("root", staff=True)
    listener = hooks.get_hook("myhook").listener(url=receiver.url("/adm")).save(owner=root)
    hooks.get_hook("myhook").send(None, name="Joe")
    worker()
    receiver.wait_for(1, "/adm")
    with httpx.Client(base_url=server, timeout=30) as http:
        http.get("/admin/login/")
        r = http.post("/admin/login/?next=/admin/", data={
            "username": "root", "password": "pw-root",
            "csrfmiddlewaretoken": http.cookies["csrftoken"]})
        assert r.status_code == 302, r.text
        for path in ["/admin/clarion/listener/", f"/admin/clarion/listener/{listener.pk}/change/",
                     "/admin/clarion/event/", "/admin/clarion/delivery/",
                     "/admin/clarion/apikey/"]:
            page = http.get(path)
            assert page.status_code == 200, path
            assert listener.secret not in page.text, path
        delivery = listener.deliveries.get()
        page = http.get(f"/admin/clarion/delivery/{delivery.pk}/change/")
        assert page.status_code == 200 and "attempt" in page.text.lower()
        r = http.post("/admin/clarion/listener/", data={
            "action": "rotate_secrets", "_selected_action": [listener.pk],
            "csrfmiddlewaretoken": http.cookies["csrftoken"]})
        assert r.status_code == 302
        assert Listener.objects.get().secret != listener.secret
        r = http.post("/admin/clarion/listener/", data={
            "action": "disable_listeners", "_selected_action": [listener.pk],
            "csrfmiddlewaretoken": http.cookies["csrftoken"]})
        assert r.status_code == 302 and Listener.objects.get().active is False
        r = http.post("/admin/clarion/delivery/", data={
            "action": "resend", "_selected_action": [delivery.pk],
            "csrfmiddlewaretoken": http.cookies["csrftoken"]})
        assert r.status_code == 302
        delivery.refresh_from_db()
        assert delivery.status == "pending" and delivery.manual is True
