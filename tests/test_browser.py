"""The real page in headless Chromium against a real ``alt serve``: sign-in, keyboard annotation, escaping."""

from __future__ import annotations

import os

import pytest
from conftest import XSS
from sqlmodel import select

from alt_engine.db import Feedback, session_scope

pytestmark = [pytest.mark.browser, pytest.mark.slow]

CHROMIUM = "/usr/bin/chromium"


@pytest.fixture(scope="module")
def browser():
    sync_api = pytest.importorskip("playwright.sync_api")
    if not os.path.exists(CHROMIUM):
        pytest.skip("Debian chromium not installed")
    with sync_api.sync_playwright() as p:
        b = p.chromium.launch(executable_path=CHROMIUM,
                              args=["--no-sandbox", "--disable-gpu", "--disable-background-networking"])
        yield b
        b.close()


def _login(page, url, name, password):
    page.goto(url + "/")
    assert page.url.endswith("/login")  # not signed in: sent to the sign-in page
    page.fill("#username", name)
    page.fill("#password", password)
    page.click("#login-button")


def _response(page) -> str:
    return page.input_value("#alt-response textarea")


def _press_and_wait(page, key: str) -> str:
    before = _response(page)
    page.keyboard.press(key)
    page.wait_for_function("prev => document.querySelector('#alt-response textarea').value !== prev", arg=before,
                           timeout=20_000)
    return _response(page)


def test_wrong_password_is_refused(live_server, browser):
    page = browser.new_page()
    _login(page, live_server.url, "alice", "not-her-password")
    assert "Wrong user name or password" in page.inner_text("#login-error")
    assert page.url.endswith("/login")
    assert not [c for c in page.context.cookies() if c["name"] == "alt_session"]
    page.goto(live_server.url + "/")
    assert page.url.endswith("/login")  # still not in
    page.close()


def test_annotate_with_keyboard_reload_and_escaping(live_server, browser):
    page = browser.new_page(viewport={"width": 1280, "height": 1000})
    _login(page, live_server.url, "alice", "alicepass1")
    page.wait_for_selector("#alt-response textarea", timeout=30_000)
    page.wait_for_function("document.querySelector('#alt-response textarea').value.length > 0", timeout=20_000)
    assert _response(page) == "Paris is the capital of France."
    assert "What is the capital of France?" in page.inner_text("#alt-prompt")
    assert page.locator("#alt-system textarea").input_value() == "Be brief."
    assert page.get_by_text("Admin", exact=True).count() == 0  # no admin tab for an annotator

    # item 1: free text, leave the box with Esc, then key 1 (Excellent) submits both
    page.fill("#alt-free-text textarea", "Correct and short.")
    page.keyboard.press("2")  # typing in a text box: a digit is text, not a shortcut
    assert page.input_value("#alt-free-text textarea") == "Correct and short.2"
    page.fill("#alt-free-text textarea", "Correct and short.")
    page.keyboard.press("Escape")
    second = _press_and_wait(page, "1")

    # item 2 carries an HTML/script payload in the prompt and the response: shown as text, nothing runs
    assert XSS in second
    assert XSS in page.inner_text("#alt-prompt")
    assert page.evaluate("window.__pwned") is None
    assert page.locator("#alt-prompt img, #alt-prompt script").count() == 0
    _press_and_wait(page, "4")  # Bad
    assert page.evaluate("window.__pwned") is None
    third = _response(page)
    fourth = _press_and_wait(page, "5")  # Horrible... oops: undo (U) brings the third item back
    assert _press_and_wait(page, "u") == third
    assert "Undone" in page.inner_text("#alt-status")
    # a double click on a category saves once and does not label the next item too
    page.dblclick("#alt-cat-2")  # Good
    page.wait_for_function("prev => document.querySelector('#alt-response textarea').value !== prev", arg=third,
                           timeout=20_000)
    page.wait_for_timeout(1500)
    assert _response(page) == fourth
    # two keys in quick succession: the second was meant for the same item and is ignored (nothing mislabelled)
    page.keyboard.press("3")
    page.keyboard.press("5")
    page.wait_for_function("prev => document.querySelector('#alt-response textarea').value !== prev", arg=fourth,
                           timeout=20_000)
    page.wait_for_timeout(1500)
    print("status after two quick keys:", page.inner_text("#alt-status"))
    assert _press_and_wait(page, "u") == fourth  # undo that one: the fourth item (with a suggestion) is back
    assert "done **3**" not in page.inner_text("#alt-progress")  # rendered, not raw markdown
    assert "done 3" in page.inner_text("#alt-progress")

    # reload: same session cookie, the same (fourth) item comes back under the same lease
    page.reload()
    page.wait_for_function("document.querySelector('#alt-response textarea') && "
                           "document.querySelector('#alt-response textarea').value.length > 0", timeout=30_000)
    assert _response(page) == fourth
    assert "done 3" in page.inner_text("#alt-progress")
    # the fourth item has an AI suggestion: shown with its source, key A accepts it
    assert page.input_value("#alt-suggestion textarea") == "Mediocre  — from llm:judge-x"
    page.screenshot(path=str(live_server.log.with_name("annotate.png")), full_page=True)
    _press_and_wait(page, "a")
    page.close()

    with session_scope(live_server.db) as s:
        rows = s.exec(select(Feedback).where(Feedback.source == "human:alice").order_by(Feedback.id)).all()
    gens = live_server.info["generations"]
    assert [(r.generation_id, r.kind, r.category) for r in rows] == [
        (gens[0], "category", "Excellent"), (gens[1], "category", "Bad"), (gens[2], "category", "Good"),
        (gens[3], "category", "Mediocre")]
    assert rows[0].text == "Correct and short." and rows[1].text is None
    assert "llm:judge-x" in rows[3].raw and all(r.user_id == rows[0].user_id for r in rows)


def test_admin_sees_admin_tab_and_agreement(live_server, browser):
    page = browser.new_page(viewport={"width": 1280, "height": 1000})
    _login(page, live_server.url, "admin", "adminpass1")
    page.wait_for_selector("#alt-whoami", timeout=30_000)
    page.get_by_role("tab", name="Admin").click()
    page.get_by_role("tab", name="Agreement").click()
    page.click("#admin-agreement")
    page.wait_for_selector("text=items with ≥ 2 human labels", timeout=20_000)
    assert "alice" in page.inner_text("body")
    page.close()
