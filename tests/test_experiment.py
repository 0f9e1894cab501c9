"""`alt experiment`: rounds from the same start, a JSON record and a self-contained HTML report."""

from __future__ import annotations

import json

import pytest

from app.cli import main

PROMPTS = [("Hello, how are you?", "train"), ("Write a short answer.", "train"), ("Be concise and helpful.", "train"),
           ("The quick brown fox?", "train"), ("Harmless and helpful?", "probe"), ("0123456789?", "probe")]


@pytest.mark.slow
def test_experiment_writes_record_and_report(tmp_path, tiny_model_dir, monkeypatch):
    monkeypatch.setenv("ALT_DEVICE", "cpu")
    prompts = tmp_path / "prompts.jsonl"
    prompts.write_text("".join(json.dumps({"prompt": p, "split": s}) + "\n" for p, s in PROMPTS))
    out = tmp_path / "exp"
    code = main(["experiment", "--task", "concise", "--prompts", str(prompts), "--rounds", "2", "--out", str(out),
                 "--model", tiny_model_dir, "--n", "3", "--max-new-tokens", "8", "--truncated", "last",
                 "--eval-n", "2", "--epochs", "1", "--batch_size", "4", "--report_to", "none",
                 "--promote", "always"])
    assert code == 0
    record = json.loads((out / "record.json").read_text())
    arm = record["arms"]["alt"]
    assert [r["round"] for r in arm["rounds"]] == [0, 1, 2]  # the base, then one point per round
    assert arm["provider"].startswith("rule:concise:") and arm["provider"] != "rule:concise:auto"  # resolved once
    for r in arm["rounds"]:
        m = r["metrics"]
        assert m["eval"]["format"]["placement"] == "system" and m["eval"]["provider"] == arm["provider"]
        assert 0 <= m["exemplar_share"] <= 1 and len(m["exemplar_share_ci"]) == 2
        assert "steer" in m and m["perplexity"] > 1
    assert set(arm["rounds"][1]["wall_s"]) >= {"sample", "feedback", "pool", "train", "evaluate", "total"}
    html = (out / "report.html").read_text()
    assert html.count("plotly.js v") <= 2 and "Plotly.newPlot" in html  # plotly inlined once: works offline
    assert "Exemplar share" in html and "Steerability" in html and "Label-learned" in html
    assert (out / "alt.db").exists()
