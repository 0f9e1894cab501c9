"""The Dashboard after two real rounds on a tiny model: the page's plot holds one point per round (read from
the plotly figure in the DOM), and an annotator does not see the tab."""

from __future__ import annotations

import json

import pytest
from conftest import LiveServer
from test_browser import browser  # noqa: F401 - the shared browser fixture
from test_browser_playground import open_tab

from alt_engine import reports
from alt_engine.users import add_user
from app.cli import main

pytestmark = [pytest.mark.browser, pytest.mark.slow]

PROMPTS = [("Hello, how are you?", "train"), ("Write a short answer.", "train"), ("Be concise and helpful.", "train"),
           ("The quick brown fox?", "train"), ("Harmless and helpful?", "probe"), ("0123456789?", "probe")]


@pytest.fixture(scope="module")
def two_rounds(tmp_path_factory, tiny_model_dir):
    work = tmp_path_factory.mktemp("dash")
    db = str(work / "dash.db")
    prompts = work / "prompts.jsonl"
    prompts.write_text("".join(json.dumps({"prompt": p, "split": s}) + "\n" for p, s in PROMPTS))
    mp = pytest.MonkeyPatch()
    mp.setenv("ALT_MODELS_DIR", str(work / "models"))
    mp.setenv("ALT_DEVICE", "cpu")
    base = ["--db", db, "--model", tiny_model_dir]
    assert main(["init", *base]) == 0
    assert main(["prompts", "import", str(prompts), *base]) == 0
    assert main(["round", "--provider", "rule:concise:2,4,6,8", "--n", "3", "--max-new-tokens", "10", "--rounds", "2",
                 "--promote", "always", "--eval-max-new-tokens", "8", "--epochs", "1", "--batch_size", "4",
                 "--report_to", "none", "--truncated", "last", *base]) == 0
    mp.undo()
    add_user(db, "admin", "adminpass1", "admin")
    add_user(db, "alice", "alicepass1")
    server = LiveServer(db, tiny_model_dir, work)
    yield server
    server.stop()


def test_dashboard_plots_one_point_per_round(two_rounds, browser):  # noqa: F811
    rows = reports.round_metrics(two_rounds.db, "default")
    assert [r["round"] for r in rows] == [0, 1, 2]  # the base version (round 0), then one version per round
    page = open_tab(browser, two_rounds.url, "admin", "adminpass1", "Dashboard")
    page.wait_for_function("document.querySelector('#dash-plot .js-plotly-plot') && "
                           "document.querySelector('#dash-plot .js-plotly-plot').data", timeout=60_000)
    traces = page.evaluate("Array.from(document.querySelector('#dash-plot .js-plotly-plot').data)"
                           ".map(t => ({meta: t.meta, x: Array.from(t.x), y: Array.from(t.y)}))")
    by_meta = {t["meta"]: t for t in traces}
    for key in ("exemplar_share", "perplexity", "mean_words", "pct_truncated"):
        assert by_meta[key]["x"] == [0, 1, 2], key
        assert by_meta[key]["y"] == pytest.approx([r[key] for r in rows]), key
    assert any(k.startswith("share:") for k in by_meta)  # category shares per round
    assert "3 evaluated versions over 3 rounds" in page.inner_text("#dash-note")
    assert "v2-alt" in page.inner_text("#dash-versions") or "v2" in page.inner_text("#dash-versions")
    page.screenshot(path=str(two_rounds.log.with_name("dashboard.png")), full_page=True)
    page.close()

    page = open_tab(browser, two_rounds.url, "alice", "alicepass1", "")
    assert page.get_by_role("tab", name="Dashboard").count() == 0  # admins only unless opened to annotators
    page.close()
