"""The Playground in headless Chromium against a real ``alt serve``: two feedback texts side by side on the
same prompt stream into both panels; the shown model input holds each feedback exactly where the version's
format puts it; an older version; regenerate; model text stays text; an admin sends the chat to the queue."""

from __future__ import annotations

import pytest
from conftest import XSS, LiveServer
from sqlmodel import select
from test_browser import _login, browser  # noqa: F401 - the shared browser fixture

from alt_engine import conditioning
from alt_engine.db import Generation, ModelVersion, Prompt, Round, init_db, session_scope
from alt_engine.modeling import load_tokenizer
from alt_engine.tasks import get_or_create_task
from alt_engine.tiny import save_tiny
from alt_engine.users import add_user

pytestmark = [pytest.mark.browser, pytest.mark.slow]

USER_FORMAT = conditioning.Format("user", "Feedback: {feedback}")
RECORD = """() => { window.__seen = {a: [], b: []};
  window.__rec = setInterval(() => { for (const k of ['a', 'b']) {
    const v = document.querySelector('#pg-out-' + k + ' textarea').value;
    const s = window.__seen[k]; if (!s.length || s[s.length - 1] !== v) s.push(v); } }, 15); }"""


@pytest.fixture(scope="module")
def pg_server(tmp_path_factory):
    """Two versions: v0-base (default format: feedback as the system message) and v1-alt (served; feedback
    opening the user turn); task ``default`` with an open round; admin/adminpass1."""
    work = tmp_path_factory.mktemp("pg")
    m0, m1 = save_tiny(work / "m0", seed=0), save_tiny(work / "m1", seed=1)
    db = str(work / "pg.db")
    init_db(db)
    with session_scope(db) as s:
        task = get_or_create_task(s, "default")
        v0 = ModelVersion(name="v0-base", path=m0, objective="base", status="ready")
        s.add(v0)
        s.flush()
        s.add(ModelVersion(name="v1-alt", path=m1, parent_id=v0.id, objective="alt", status="served",
                           conditioning=USER_FORMAT.to_dict()))
        s.add(Round(task_id=task.id, number=1, model_version_id=v0.id, status="labelling"))
    add_user(db, "admin", "adminpass1", "admin")
    add_user(db, "alice", "alicepass1")
    server = LiveServer(db, m0, work, env={"OMP_NUM_THREADS": "1"})
    server.models = {"v0-base": m0, "v1-alt": m1}
    yield server
    server.stop()


def _value(page, sel: str) -> str:
    return page.input_value(f"{sel} textarea")


def _choose(page, elem: str, value: str) -> None:
    """Pick or type a dropdown value (Gradio dropdowns take typed custom values on Enter)."""
    box = page.locator(f"#{elem} input")
    box.click()
    box.fill(value)
    box.press("Enter")
    page.wait_for_timeout(300)


def _wait_done(page) -> str:
    """Wait for the run started just now: its status says "generating…", then the figures of the finished run."""
    page.wait_for_function("document.querySelector('#pg-status').innerText.includes('generating')", timeout=30_000)
    page.wait_for_function("() => { const t = document.querySelector('#pg-status').innerText;"
                           " return t.includes('tokens/s') && !t.includes('generating'); }", timeout=90_000)
    return page.inner_text("#pg-status")


def open_tab(chromium, url: str, user: str, password: str, tab: str):
    """A new page signed in as ``user`` with ``tab`` open."""
    page = chromium.new_page(viewport={"width": 1400, "height": 1200})
    _login(page, url, user, password)
    page.wait_for_selector("#alt-whoami", timeout=30_000)
    if tab:
        page.get_by_role("tab", name=tab).click()
    return page


def _expected_input(model_dir: str, fmt: conditioning.Format, message: str, feedback: str) -> str:
    tok = load_tokenizer(model_dir)
    return tok.decode(conditioning.build_input(tok, [{"role": "user", "content": message}], feedback, fmt).input_ids)


def test_side_by_side_streaming_versions_and_regenerate(pg_server, browser):  # noqa: F811
    page = open_tab(browser, pg_server.url, "admin", "adminpass1", "Playground")
    page.wait_for_function("document.querySelector('#pg-version-a input') && "
                           "document.querySelector('#pg-version-a input').value === 'v1-alt'", timeout=30_000)
    _choose(page, "pg-feedback-a", "Excellent")
    _choose(page, "pg-feedback-b", "Horrible")
    page.locator("#pg-show-input input").check()
    page.locator("#pg-max-tokens input").fill("200")
    page.locator("#pg-temperature input[type=number]").fill("1")

    message = "What is 2+2?"
    page.fill("#pg-message textarea", message)
    page.evaluate(RECORD)
    page.click("#pg-send")
    status = _wait_done(page)
    page.evaluate("clearInterval(window.__rec)")
    seen = page.evaluate("window.__seen")
    a, b = _value(page, "#pg-out-a"), _value(page, "#pg-out-b")
    assert a.startswith(f"You: {message}\n\nModel: ") and b.startswith(f"You: {message}\n\nModel: ")
    assert a != b  # different feedback, different reply
    for k in "ab":  # tokens streamed in: the panel grew through several partial replies
        partial = [v for v in seen[k] if v.startswith("You:")]
        assert len(partial) >= 3, (k, len(partial))  # two partial replies at least, then the whole one (a loaded
        # machine decodes in bursts between the page's 15 ms polls: 3 values seen at load 6)
        assert all(len(x) <= len(y) for x, y in zip(partial, partial[1:]))
    print("status:", status)

    # the exact model input: v1-alt's format puts the feedback at the start of the user turn
    shown_a, shown_b = _value(page, "#pg-input-a"), _value(page, "#pg-input-b")
    assert shown_a == _expected_input(pg_server.models["v1-alt"], USER_FORMAT, message, "Excellent")
    assert shown_b == _expected_input(pg_server.models["v1-alt"], USER_FORMAT, message, "Horrible")
    assert f"<|im_start|>user\nFeedback: Excellent\n\n{message}" in shown_a
    assert "user: 'Feedback: {feedback}'" in _value(page, "#pg-input-info-a")

    # an older version on A (its format: feedback as the system message); regenerate
    _choose(page, "pg-version-a", "v0-base")
    page.click("#pg-regenerate")
    status = _wait_done(page)
    assert "A: v0-base / Excellent" in status and "B: v1-alt / Horrible" in status
    shown_a = _value(page, "#pg-input-a")
    assert shown_a == _expected_input(pg_server.models["v0-base"], conditioning.Format(), message, "Excellent")
    assert shown_a.startswith("<|im_start|>system\nFeedback: Excellent<|im_end|>")
    new_a, new_b = _value(page, "#pg-out-a"), _value(page, "#pg-out-b")
    # regenerated: B with a new seed gives a new reply; A runs another model on another input (asserted above) —
    # a random tiny model may still emit the same bytes for both, so its text is not compared
    assert new_b != b and new_a.startswith("You: ")
    assert new_a.count("Model:") == 1  # the old reply was replaced, not appended

    # a second turn carries the conversation; model and user text are shown as text
    page.fill("#pg-message textarea", f"Now repeat: {XSS}")
    page.click("#pg-send")
    _wait_done(page)
    assert XSS in _value(page, "#pg-out-a") and _value(page, "#pg-out-a").count("You:") == 2
    assert page.evaluate("window.__pwned") is None
    assert page.locator("#pg-panel-a img, #pg-panel-a script").count() == 0

    # admins send the conversation to the annotation queue: a prompt and both replies in the open round
    page.click("#pg-to-queue")
    page.wait_for_function("document.querySelector('#pg-queue-msg').innerText.includes('annotation queue')",
                           timeout=20_000)
    page.screenshot(path=str(pg_server.log.with_name("playground.png")), full_page=True)
    page.close()
    with session_scope(pg_server.db) as s:
        prompt = s.exec(select(Prompt).where(Prompt.source == "playground:admin")).one()
        assert prompt.messages[-1]["content"] == f"Now repeat: {XSS}" and len(prompt.messages) == 3
        gens = s.exec(select(Generation).where(Generation.prompt_id == prompt.id)).all()
        assert sorted(g.conditioning for g in gens) == ["Excellent", "Horrible"]


def test_annotator_uses_the_playground_but_cannot_send_to_the_queue(pg_server, browser):  # noqa: F811
    page = open_tab(browser, pg_server.url, "alice", "alicepass1", "Playground")
    page.wait_for_function("document.querySelector('#pg-version-a input').value === 'v1-alt'", timeout=30_000)
    page.locator("#pg-side input").uncheck()
    page.fill("#pg-message textarea", "Hello")
    page.click("#pg-send")
    _wait_done(page)
    assert _value(page, "#pg-out-a").startswith("You: Hello")
    assert not page.locator("#pg-to-queue").is_visible()
    page.close()

