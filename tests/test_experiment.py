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


@pytest.mark.slow
def test_experiment_runs_every_objective_on_rule_judgments_and_critiques(tmp_path, tiny_model_dir, monkeypatch):
    """One round of each objective from the same start, CUT and CnR on the judgments and critique + revision
    records ``rule:critique:concise:auto`` writes offline (the others train on its categories)."""
    from alt_engine.training.objectives import make_config, names

    monkeypatch.setenv("ALT_DEVICE", "cpu")
    prompts = tmp_path / "prompts.jsonl"
    prompts.write_text("".join(json.dumps({"prompt": p, "split": s}) + "\n" for p, s in PROMPTS))
    out = tmp_path / "exp"
    objectives = [a for name in names() for a in ("--objective", name)]
    code = main(["experiment", "--task", "concise", "--prompts", str(prompts), "--rounds", "1", "--out", str(out),
                 "--provider", "rule:critique:concise:auto", *objectives, "--model", tiny_model_dir, "--n", "4",
                 "--max-new-tokens", "8", "--truncated", "last", "--eval-n", "2", "--eval-no-steer", "--epochs", "1",
                 "--batch_size", "4", "--report_to", "none", "--promote", "always", "--mask-control-tokens",
                 "--eval-revision-passes", "1"])
    assert code == 0
    record = json.loads((out / "record.json").read_text())
    assert list(record["arms"]) == names() == ["alt", "quark", "steerlm", "sft", "cut", "cnr"]
    placements = {"alt": "system", "quark": "tokens", "steerlm": "system", "sft": "none", "cut": "none", "cnr": "none"}
    for name, arm in record["arms"].items():
        assert [r["round"] for r in arm["rounds"]] == [0, 1], name
        assert arm["provider"].startswith("rule:critique:concise:") and not arm["provider"].endswith("auto")
        assert arm["policy"] == ("accumulate" if name == "quark" else "flush")  # each objective's own pool
        config = make_config(name, **arm["train_config"])  # the options given, over each objective's defaults
        assert config.num_train_epochs == 1 and config.per_device_train_batch_size == 4
        trained = arm["rounds"][1]
        assert trained["pool_size"] > 0 and trained["version_id"] is not None, name
        assert trained["metrics"]["eval"]["format"]["placement"] == placements[name], name
        assert 0 <= trained["metrics"]["exemplar_share"] <= 1
    assert record["arms"]["quark"]["rounds"][1]["metrics"]["eval"]["mask_control_tokens"] is True
    assert make_config("cut", **record["arms"]["cut"]["train_config"]).lora  # CUT's own defaults, unless given
    from sqlmodel import select

    from alt_engine.db import Generation, session_scope

    cnr = record["arms"]["cnr"]["rounds"][1]
    with session_scope(str(out / "cnr.db")) as s:  # CnR's version is scored on its revised answers
        evals = [g.sampling_params for g in s.exec(select(Generation).where(
            Generation.model_version_id == cnr["version_id"]))]
    assert evals and all("first_answer" in sp and sp["revision_passes"] <= 1 for sp in evals)
    assert cnr["metrics"]["eval"]["revision_passes"] == 1
    html = (out / "report.html").read_text()
    assert all(f"<td>{name}</td>" in html for name in names())
