"""The whole loop from the browser, no CLI call: an admin creates a task, uploads prompts (a bad file first),
samples a round; an annotator labels by keyboard; the admin runs a rule on the rest, trains, watches the job reach
100%, promotes (the header follows without a reload), the round reads closed, and the next round is drawn from the
new version conditioned on the exemplar. Headless Chromium against a real ``alt serve`` with a tiny model; the
jobs run in the real worker."""

from __future__ import annotations

import json
import re
import time

import pytest
from conftest import LiveServer
from sqlmodel import select
from test_browser import _login, browser  # noqa: F401 - the shared browser fixture

from alt_engine.db import Feedback, Generation, Job, ModelVersion, Prompt, Round, init_db, session_scope
from alt_engine.tiny import save_tiny
from alt_engine.users import add_user

pytestmark = [pytest.mark.browser, pytest.mark.slow]

CATEGORIES = ["Very concise", "Concise", "Wordy", "Very wordy"]


@pytest.fixture(scope="module")
def loop_server(tmp_path_factory):
    """An empty database (users only) and a tiny model: everything else is made in the browser."""
    work = tmp_path_factory.mktemp("loop")
    model = save_tiny(work / "model")
    db = str(work / "loop.db")
    init_db(db)
    add_user(db, "admin", "adminpass1", "admin")
    add_user(db, "alice", "alicepass1")
    server = LiveServer(db, model, work, env={"OMP_NUM_THREADS": "1"}, start_timeout=240)
    server.work = work
    yield server
    server.stop()


def _page(chromium, url, user, password, **context):
    page = chromium.new_context(viewport={"width": 1400, "height": 1300}, **context).new_page()
    page.set_default_timeout(90_000)  # a busy 2-core machine: clicks and waits may take long
    _login(page, url, user, password)
    page.wait_for_function("document.querySelector('#alt-whoami') && "
                           "document.querySelector('#alt-whoami').innerText.includes('Signed in')", timeout=120_000)
    return page


def _tab(page, name: str) -> None:
    page.get_by_role("tab", name=name, exact=True).click()


def _choose(page, elem: str, value: str) -> None:
    """Pick a dropdown option by its label."""
    box = page.locator(f"#{elem} input")
    box.click()
    box.fill(value)
    page.get_by_role("option", name=value, exact=False).first.click()
    page.wait_for_timeout(200)


def _fill(page, elem: str, value: str) -> None:
    page.locator(f"#{elem}").locator("textarea, input").first.fill(value)


def _text(page, sel: str) -> str:
    return page.inner_text(sel)


def _wait_text(page, sel: str, needle: str, timeout: int = 120_000) -> None:
    page.wait_for_function("([s, n]) => { const e = document.querySelector(s); return e && e.innerText.includes(n); }",
                           arg=[sel, needle], timeout=timeout)


def _wait_job(page, kind: str, timeout: float = 240, job_id: int | None = None) -> list[str]:
    """Jobs tab (refreshed every 2 s): the newest ``kind`` job succeeded at 100% (a failed one fails the test at
    once); its row's cells."""
    deadline = time.monotonic() + timeout
    while True:
        # the table's text, a cell a line (empty cells give none): the header, then rows id, kind, status, ...
        cells = [c.strip() for c in page.inner_text("#console-jobs-table").splitlines() if c.strip()]
        body = cells[cells.index("message") + 1:] if "message" in cells else []
        hits = [i for i, c in enumerate(body) if c == kind and (job_id is None or body[i - 1] == str(job_id))]
        if hits:
            i = hits[0]  # newest first
            row = body[i - 1:i + 6]
            assert body[i + 1] not in ("failed", "cancelled"), row
            if body[i + 1] == "succeeded":
                assert "100%" in row, row
                return row
        assert time.monotonic() < deadline, f"no {kind} job succeeded in {timeout} s: {body}"
        page.wait_for_timeout(1000)


def _run_job(page, button: str, message: str, kind: str) -> int:
    """Click ``button``, read the queued job's id from ``message`` ("… sampling job 4 …"), watch it succeed in
    the Jobs tab; its id."""
    word = {"sample": "sampling", "train": "training"}.get(kind, kind)
    page.click(button)
    _wait_text(page, message, f"{word} job")
    job_id = int(re.search(rf"{word} job (\d+)", _text(page, message)).group(1))
    _tab(page, "Jobs")
    _wait_job(page, kind, job_id=job_id)
    return job_id


def test_whole_loop_in_the_browser(loop_server, browser):  # noqa: F811
    try:
        _loop(loop_server, browser)
    except Exception:  # what each page showed, next to the server's log (best effort: the failure is the news)
        for i, page in enumerate(p for ctx in browser.contexts for p in ctx.pages):
            try:
                page.screenshot(path=str(loop_server.log.with_name(f"failed-{i}.png")), full_page=True,
                                timeout=10_000)
            except Exception as e:  # noqa: BLE001
                print(f"no screenshot of page {i}: {e}")
        raise


def _loop(srv, browser):  # noqa: F811
    db = srv.db
    admin = _page(browser, srv.url, "admin", "adminpass1")
    assert "v0-base" in _text(admin, "#alt-whoami")
    _tab(admin, "Admin")

    # --- Tasks: a new task with four ordered categories, exemplar the best one, critique & judgment off
    _tab(admin, "Tasks")
    _fill(admin, "console-task-name", "loop")
    _fill(admin, "console-task-categories", "\n".join(CATEGORIES))
    _fill(admin, "console-task-exemplar", "Very concise")
    admin.locator("#console-task-critique input").uncheck()
    admin.locator("#console-task-judgment input").uncheck()
    admin.click("#console-task-save")
    _wait_text(admin, "#console-task-message", "Saved task")

    # --- Data: a bad file names its line and imports nothing; then a good one
    bad, good = srv.work / "bad.jsonl", srv.work / "good.jsonl"
    bad.write_text('{"prompt": "one"}\n{"prompt": "two"}\n{"prompt": \n')
    good.write_text("".join(json.dumps({"prompt": f"Say hello number {i}.", "split": "train"}) + "\n"
                            for i in range(3)))
    _tab(admin, "Data")
    _choose(admin, "console-upload-task", "loop")
    admin.set_input_files("#console-upload-file input[type=file]", str(bad))
    admin.wait_for_timeout(500)
    admin.click("#console-upload")
    admin.wait_for_function("document.querySelector('#console-upload-error textarea') && "
                            "document.querySelector('#console-upload-error textarea').value.includes('line 3')",
                            timeout=30_000)
    assert "Nothing imported" in admin.input_value("#console-upload-error textarea")
    with session_scope(db) as s:
        assert not s.exec(select(Prompt)).all()
    admin.locator("#console-upload-file button[aria-label='Clear']").click()  # the bad file off, then the good one
    admin.set_input_files("#console-upload-file input[type=file]", str(good))
    admin.wait_for_timeout(500)
    admin.click("#console-upload")
    _wait_text(admin, "#console-upload-message", "good.jsonl")
    with session_scope(db) as s:
        assert len(s.exec(select(Prompt)).all()) == 3

    # --- Rounds: sample 3 prompts × 2 from the served base model
    _tab(admin, "Rounds")
    _choose(admin, "console-sample-task", "loop")
    _fill(admin, "console-sample-n", "2")
    _fill(admin, "console-sample-max-tokens", "8")
    _run_job(admin, "#console-sample", "#console-rounds-message", "sample")

    # --- the annotator (in Tokyo) labels two items by keyboard
    alice = _page(browser, srv.url, "alice", "alicepass1", timezone_id="Asia/Tokyo")
    _choose(alice, "alt-task", "loop")
    item = "document.querySelector('#alt-meta') && document.querySelector('#alt-meta').innerText.includes('Item #')"
    alice.wait_for_function(item, timeout=60_000)
    assert "Asia/Tokyo" in _text(alice, "#alt-meta")  # the lease time in the browser's time zone
    assert not alice.locator("#alt-cnr").is_visible()  # the task turned critique & judgment off
    # typed feedback survives a reload, then goes with the label
    alice.fill("#alt-free-text textarea", "Short, but says nothing.")
    alice.reload()
    alice.wait_for_function(item, timeout=60_000)
    alice.wait_for_function("document.querySelector('#alt-free-text textarea').value === 'Short, but says nothing.'",
                            timeout=10_000)
    alice.keyboard.press("Escape")
    for key in ("1", "3"):
        before = re.search(r"Item #(\d+)", _text(alice, "#alt-meta")).group(0)
        alice.keyboard.press(key)
        alice.wait_for_function("prev => { const m = /Item #\\d+/.exec(document.querySelector('#alt-meta').innerText);"
                                " return m && m[0] !== prev; }", arg=before, timeout=60_000)
    _wait_text(alice, "#alt-progress", "done 2")
    with session_scope(db) as s:
        human = s.exec(select(Feedback).where(Feedback.source == "human:alice")).all()
    assert sorted(f.category for f in human) == ["Very concise", "Wordy"]
    assert [f.text for f in human if f.category == "Very concise"] == ["Short, but says nothing."]

    # --- the admin runs a rule provider on the rest
    _tab(admin, "Rounds")
    admin.click("#console-rounds-refresh")
    admin.wait_for_timeout(1000)
    _choose(admin, "console-round-pick", "loop · round 1")
    _fill(admin, "console-provider", "rule:concise:auto")
    _run_job(admin, "#console-run-provider", "#console-rounds-message", "feedback")

    # --- Training: from round 1, a few steps; watch the bar and the table reach 100%
    _tab(admin, "Training")
    _choose(admin, "console-train-rounds", "loop · round 1")
    admin.keyboard.press("Escape")
    _fill(admin, "console-train-max-steps", "2")
    _fill(admin, "console-train-batch", "4")
    _choose(admin, "console-train-truncated", "last")  # 8-token samples of a random model: all truncated
    _run_job(admin, "#console-train", "#console-train-message", "train")  # succeeded at 100%
    with session_scope(db) as s:
        new = s.exec(select(ModelVersion).where(ModelVersion.objective != "base")).one()
        new_id, new_name = new.id, new.name
    assert new.status == "ready"

    # --- Models: promote; the header follows without a reload
    _tab(admin, "Models")
    admin.click("#console-models-refresh")
    _fill(admin, "console-version-id", str(new_id))
    admin.click("#console-model-open-job")  # the link to the job that made it: the Jobs tab shows that job
    admin.wait_for_function("document.querySelector('#console-job-log textarea') && "
                            "document.querySelector('#console-job-log textarea').value.includes('stage: training')",
                            timeout=20_000)
    with session_scope(db) as s:
        train_job = s.exec(select(Job).where(Job.kind == "train")).one()
    assert admin.input_value("#console-job-id input") == str(train_job.id) and train_job.version_id == new_id
    _tab(admin, "Models")
    admin.click("#console-promote")
    _wait_text(admin, "#console-models-message", "Now serving")
    _wait_text(admin, "#alt-whoami", new_name, timeout=20_000)

    # --- Rounds: round 1 reads closed; the next round is drawn from the new version, conditioned on the exemplar
    _tab(admin, "Rounds")
    admin.click("#console-rounds-refresh")
    _wait_text(admin, "#console-rounds-table", "closed", timeout=20_000)
    _run_job(admin, "#console-sample", "#console-rounds-message", "sample")
    admin.screenshot(path=str(srv.log.with_name("loop.png")), full_page=True)
    with session_scope(db) as s:
        rounds = s.exec(select(Round).order_by(Round.number)).all()
        assert [r.status for r in rounds] == ["closed", "labelling"]
        assert rounds[1].model_version_id == new_id
        gens = s.exec(select(Generation).where(Generation.round_id == rounds[1].id)).all()
        assert len(gens) == 6 and {g.conditioning for g in gens} == {"Very concise"}
        assert {g.model_version_id for g in gens} == {new_id}

    # a deactivated annotator's next action lands on the sign-in page, which says why
    from alt_engine.users import set_active

    set_active(db, "alice", False)
    alice.click("#alt-refresh")
    alice.wait_for_url("**/login**", timeout=20_000)
    assert "deactivated" in _text(alice, "#login-error")
    alice.close()
    admin.close()
