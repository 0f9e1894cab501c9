"""A new user's whole path in the browser, every setting at its default and no CLI call: a fresh database (the
first admin comes from `alt serve`) → Start → the concise demo in one click → Run a round with the console's
defaults (estimate first, stages as it runs) → the Dashboard shows the base and the new version with CIs and the
steer gap → Models shows the evaluation, Promote → the Playground answers with the new version.

Headless Chromium against a real ``alt serve`` with a tiny model; the round runs in the real worker. The same
flow on the default model: scripts/browser_round_default_model.py. ``ALT_TEST_SHOTS=DIR`` keeps the screenshots.
"""

from __future__ import annotations

import os
import re
import time
from pathlib import Path

import pytest
from conftest import LiveServer
from sqlmodel import select
from test_browser import _login, browser  # noqa: F401 - the shared browser fixture

from alt_engine.db import ModelVersion, session_scope
from alt_engine.tiny import save_tiny

pytestmark = [pytest.mark.browser, pytest.mark.slow]
PASSWORD = "first-admin-pw1"


def run_the_round(url: str, chromium, shots: Path, round_timeout: float, log=print) -> dict:
    """The flow itself (also driven by the default-model script): returns what the Dashboard showed."""
    page = chromium.new_context(viewport={"width": 1400, "height": 1300}).new_page()
    page.set_default_timeout(120_000)
    t0 = time.monotonic()
    _login(page, url, "admin", PASSWORD)
    # a new database: the admin lands on Admin → Start, which says what to do
    page.wait_for_function("document.querySelector('#console-start-next') && "
                           "document.querySelector('#console-start-next').innerText.includes('New database')")
    page.screenshot(path=str(shots / "1-start.png"), full_page=True)
    page.click("#console-demo-concise")
    _wait_text(page, "#console-start-message", "Started the concise demo")
    # the Rounds tab opens with the demo's task chosen and an estimate before anything starts
    page.wait_for_function("document.querySelector('#console-round-task input').value === 'concise'")
    _wait_text(page, "#console-round-estimate", "Estimate:")
    estimate = page.inner_text("#console-round-estimate")
    assert "rule:concise:auto" in estimate and "160 new tokens" in estimate, estimate
    page.screenshot(path=str(shots / "2-round-form.png"), full_page=True)
    page.click("#console-round-start")
    _wait_text(page, "#console-round-message", "Queued round job", timeout=300_000)  # a busy 2-core machine
    states, deadline = set(), time.monotonic() + round_timeout
    while True:  # the stage bar, refreshed every 2 s
        status = page.get_attribute("#console-round-job", "data-status") if page.locator(
            "#console-round-job").count() else None
        running = page.locator('#console-round-progress .alt-stage[data-state="running"]')
        if running.count():
            states.add(running.first.get_attribute("data-stage"))
            if len(states) == 1:
                page.screenshot(path=str(shots / "3-round-running.png"), full_page=True)
        assert status not in ("failed", "cancelled"), page.inner_text("#console-round-progress")
        if status == "succeeded":
            break
        assert time.monotonic() < deadline, f"round not done in {round_timeout} s: {states}"
        page.wait_for_timeout(1000)
    log(f"round done after {time.monotonic() - t0:.0f} s; stages seen running: {sorted(states)}")
    assert states, "no stage was ever shown running"
    assert page.locator('#console-round-progress .alt-stage[data-state="done"]').count() == 7
    decision = page.inner_text("#console-round-progress")
    if "promoted" in decision and "not promoted" not in decision:  # the header follows, no reload needed
        _wait_text(page, "#alt-whoami", "v1-", timeout=30_000)
    page.screenshot(path=str(shots / "4-round-done.png"), full_page=True)

    # Dashboard: the base (round 0) and the new version, with intervals and the steer gap
    page.get_by_role("tab", name="Dashboard", exact=True).click()
    page.click("#dash-refresh")
    _wait_text(page, "#dash-evals", "v1-")
    # both rows in one reading (the table re-renders on each refresh, its rows a moment apart)
    evals = page.wait_for_function("() => { const t = document.querySelector('#dash-evals').innerText;"
                                   " return t.includes('v0-base') && t.includes('v1-') ? t : null; }").json_value()
    rows = [line for line in evals.splitlines() if "v0-base" in line or "v1-" in line]
    assert any("v0-base" in r for r in rows) and any("v1-" in r for r in rows), evals
    assert evals.count("[") >= 4, evals  # exemplar share and steer gap, each with its CI, for both versions
    page.screenshot(path=str(shots / "5-dashboard.png"), full_page=True)

    # Models: the evaluation the promotion decides on, then Promote; the header follows
    page.get_by_role("tab", name="Admin", exact=True).click()
    page.get_by_role("tab", name="Models", exact=True).click()
    page.click("#console-models-refresh")
    _wait_text(page, "#console-models-table", "v1-")
    new_id = re.search(r"(\d+)\s+(v1-\S+)", page.inner_text("#console-models-table"))
    version_id, name = new_id.group(1), new_id.group(2)
    page.locator("#console-version-id input").fill(version_id)
    page.locator("#console-version-id input").press("Enter")
    _wait_text(page, "#console-version-eval", "exemplar share")
    page.click("#console-promote")
    _wait_text(page, "#console-models-message", f"Now serving {name}")
    _wait_text(page, "#alt-whoami", name)
    page.screenshot(path=str(shots / "6-models.png"), full_page=True)

    # the Playground answers with the new version (a fresh page: the served version preselected)
    play = chromium.new_context(viewport={"width": 1400, "height": 1200}).new_page()
    play.set_default_timeout(120_000)
    _login(play, url, "admin", PASSWORD)
    play.wait_for_selector("#alt-whoami")
    play.get_by_role("tab", name="Playground", exact=True).click()
    play.wait_for_function(f"document.querySelector('#pg-version-a input').value === '{name}'")
    play.locator("#pg-side input").uncheck()
    play.fill("#pg-message textarea", "How do I boil an egg?")
    play.click("#pg-send")
    play.wait_for_function("() => { const t = document.querySelector('#pg-status').innerText;"
                           " return t.includes('tokens/s') && !t.includes('generating'); }")
    status = play.inner_text("#pg-status")
    assert f"A: {name}" in status, status
    assert play.input_value("#pg-out-a textarea").startswith("You: How do I boil an egg?")
    play.screenshot(path=str(shots / "7-playground.png"), full_page=True)
    total = time.monotonic() - t0
    page.context.close()
    play.context.close()
    return {"seconds": total, "estimate": estimate, "decision": decision, "dashboard": rows, "version": name}


def _wait_text(page, sel: str, needle: str, timeout: int = 120_000) -> None:
    try:
        page.wait_for_function("([s, n]) => { const e = document.querySelector(s); "
                               "return e && e.innerText.includes(n); }", arg=[sel, needle], timeout=timeout)
    except Exception as e:  # say what the page showed instead
        shown = page.locator(sel).inner_text() if page.locator(sel).count() else "(no such element)"
        raise AssertionError(f"{sel} never showed {needle!r}; it shows: {shown[:600]!r}") from e


@pytest.fixture(scope="module")
def fresh_server(tmp_path_factory):
    """`alt serve` on a database that does not exist yet, with a tiny model: it makes the first admin itself."""
    work = tmp_path_factory.mktemp("fresh")
    model = save_tiny(work / "model")
    server = LiveServer(str(work / "fresh.db"), model, work,
                        env={"OMP_NUM_THREADS": "1", "ALT_ADMIN_PASSWORD": PASSWORD,
                             "ALT_MODELS_DIR": str(work / "models")}, start_timeout=240)
    server.work = work
    yield server
    server.stop()


def test_fresh_database_to_a_better_served_model_in_the_browser(fresh_server, browser):  # noqa: F811
    out = fresh_server.output()
    assert f"password:  {PASSWORD}" in out and out.rindex("#" * 20) > out.index("ALT Studio on http")
    shots = Path(os.environ.get("ALT_TEST_SHOTS") or fresh_server.work)
    shots.mkdir(parents=True, exist_ok=True)
    result = run_the_round(fresh_server.url, browser, shots, round_timeout=600)
    print(result)
    with session_scope(fresh_server.db) as s:
        served = s.exec(select(ModelVersion).where(ModelVersion.status == "served")).one()
    assert served.name == result["version"] and served.parent_id is not None
