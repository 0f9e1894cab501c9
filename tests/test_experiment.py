"""`alt experiment`: rounds from the same start, a JSON record and a self-contained HTML report."""

from __future__ import annotations

import json

import pytest

from app.cli import main

PROMPTS = [("Hello, how are you?", "train"), ("Write a short answer.", "train"), ("Be concise and helpful.", "train"),
           ("The quick brown fox?", "train"), ("Harmless and helpful?", "probe"), ("0123456789?", "probe")]


def tiny_experiment(tmp_path, model: str, *args: str) -> tuple[int, object]:
    """``alt experiment`` on the tiny model and prompts with small settings; ``args`` add or override."""
    prompts = tmp_path / "prompts.jsonl"
    prompts.write_text("".join(json.dumps({"prompt": p, "split": s}) + "\n" for p, s in PROMPTS))
    out = tmp_path / "exp"
    code = main(["experiment", "--task", "concise", "--prompts", str(prompts), "--out", str(out), "--model", model,
                 "--n", "3", "--max-new-tokens", "8", "--truncated", "last", "--eval-n", "2", "--epochs", "1",
                 "--batch_size", "4", "--report_to", "none", "--promote", "always", *args])
    return code, out


@pytest.mark.slow
def test_experiment_writes_record_and_report(tmp_path, tiny_model_dir, monkeypatch):
    monkeypatch.setenv("ALT_DEVICE", "cpu")
    code, out = tiny_experiment(tmp_path, tiny_model_dir, "--rounds", "2")
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
        base = arm["rounds"][0]  # the untrained base, evaluated as this objective evaluates its versions
        # (Quark's control tokens exist only once trained: its base reads the feedback text, as ALT's does)
        assert base["metrics"]["eval"]["format"]["placement"] == placements["alt" if name == "quark" else name]
        assert base["metrics"]["eval"]["format"]["attributes"] == trained["metrics"]["eval"]["format"]["attributes"]
        assert ("evaluated_as" in base) == (name in ("steerlm", "sft", "cut", "cnr")), name
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
    assert record["arms"]["cnr"]["rounds"][0]["metrics"]["eval"]["revision_passes"] == 1  # the base revises too
    html = (out / "report.html").read_text()
    assert all(f"<td>{name}</td>" in html for name in names())


def _round(n: int, shares: dict[str, list[float]], version_id: int | None = None) -> dict:
    rnd = {"round": n, "metrics": {"exemplar_share": sum(map(sum, shares.values())) / sum(map(len, shares.values())),
                                   "per_prompt": {"exemplar_share": shares}}}
    return {**rnd, "version_id": version_id} if version_id else rnd


def test_comparisons_pair_rounds_with_the_base_and_arms_with_each_other():
    """The gains the report shows are paired over the same probe prompts (hand-checkable here)."""
    from alt_engine.experiment import comparisons, render_report, summary_rows

    low = {str(p): [0.0, 0.0] for p in range(20)}
    high = {str(p): [1.0, 1.0] for p in range(20)}
    half = {str(p): [1.0, 0.0] for p in range(20)}
    record = {"config": {"task": "concise"}, "model": "m", "arms": {
        "alt": {"provider": "rule:x", "rounds": [_round(0, low), _round(1, high)]},
        "sft": {"provider": "rule:x", "rounds": [_round(0, low), _round(1, half)]},
        "cnr": {"provider": "rule:x", "rounds": [_round(0, low)], "error": "RuntimeError: out of memory"}}}
    comp = comparisons(record)
    assert comp["vs_base"]["alt"]["1"]["exemplar_share"] == {"value": 1.0, "low": 1.0, "high": 1.0, "prompts": 20}
    assert comp["vs_base"]["sft"]["1"]["exemplar_share"]["value"] == 0.5
    assert comp["vs_base"]["cnr"] == {}  # it never finished a round: nothing to pair
    assert comp["head_to_head_round"] == 1
    assert list(comp["head_to_head"]["exemplar_share"]) == ["alt − sft"]
    d = comp["head_to_head"]["exemplar_share"]["alt − sft"]
    assert d["value"] == 0.5 and d["low"] == d["high"] == 0.5
    record["comparisons"] = comp
    sft_round = record["arms"]["sft"]["rounds"][1]["metrics"]
    sft_round.update(steerability_gap=0.01, steerability_gap_ci=[-0.05, 0.07], eval={"format": {"placement": "none"}})
    rows = {(r["objective"], r["round"]): r for r in summary_rows(record)}
    assert rows["sft", 1]["steerability_gap"] is None and rows["sft", 1]["exemplar_share_gain"] == 0.5
    html = render_report(record)
    assert "Head to head" in html and "alt − sft" in html and "cnr failed:" in html and "out of memory" in html


def test_merge_reads_missing_per_prompt_values_back_from_each_arms_database(tmp_path, capsys):
    """Records made before per-prompt values were kept merge with them from the arm's database."""
    from alt_engine.db import ModelVersion, init_db, session_scope

    low = {str(p): [0.0] for p in range(10)}
    high = {str(p): [1.0] for p in range(10)}
    for folder, objective, after in (("a", "alt", high), ("b", "sft", low)):
        (tmp_path / folder).mkdir()
        db = str(tmp_path / folder / f"{objective}.db")
        init_db(db)
        with session_scope(db) as s:
            base = ModelVersion(name="v0-base", path="m", metrics={"per_prompt": {"exemplar_share": low}})
            s.add(base)
            s.flush()
            s.add(ModelVersion(name="v1", path="m", parent_id=base.id, objective=objective,
                               metrics={"per_prompt": {"exemplar_share": after}}))
        rounds = [{"round": 0, "metrics": {"exemplar_share": 0.0}}, {"round": 1, "version_id": 2,
                                                                     "metrics": {"exemplar_share": after["0"][0]}}]
        (tmp_path / folder / "record.json").write_text(json.dumps({
            "config": {"task": "concise", "objectives": [objective]}, "model": "m",
            "arms": {objective: {"provider": "rule:x", "rounds": rounds}}}))
    out = tmp_path / "merged"
    assert main(["experiment", "--merge", str(tmp_path / "a"), "--merge", str(tmp_path / "b"), "--out", str(out)]) == 0
    record = json.loads((out / "record.json").read_text())
    assert list(record["arms"]) == record["config"]["objectives"] == ["alt", "sft"]
    assert record["comparisons"]["vs_base"]["alt"]["1"]["exemplar_share"]["value"] == 1.0
    assert record["comparisons"]["vs_base"]["sft"]["1"]["exemplar_share"]["value"] == 0.0
    assert record["comparisons"]["head_to_head"]["exemplar_share"]["alt − sft"]["value"] == 1.0
    assert "alt − sft" in (out / "report.html").read_text()
    # the same objective twice, or a folder that is no experiment: a clear error, nothing written
    assert main(["experiment", "--merge", str(tmp_path / "a"), "--merge", str(tmp_path / "a"),
                 "--out", str(tmp_path / "twice")]) != 0
    assert main(["experiment", "--merge", str(tmp_path), "--out", str(tmp_path / "none")]) != 0
    err = capsys.readouterr().err
    assert "alt already merged" in err and "no record.json" in err
    assert not (tmp_path / "twice").exists() and not (tmp_path / "none").exists()


@pytest.mark.slow
def test_experiment_runs_objectives_in_parallel_processes(tmp_path, tiny_model_dir, monkeypatch):
    """--parallel 2: each arm in its own process and log, one record with both arms and their comparisons."""
    monkeypatch.setenv("ALT_DEVICE", "cpu")
    code, out = tiny_experiment(tmp_path, tiny_model_dir, "--rounds", "1", "--objective", "sft", "--objective", "alt",
                                "--parallel", "2")
    assert code == 0
    record = json.loads((out / "record.json").read_text())
    assert list(record["arms"]) == ["sft", "alt"] and record["config"]["parallel"] == 2
    for name in ("sft", "alt"):
        assert [r["round"] for r in record["arms"][name]["rounds"]] == [0, 1]
        assert "round 1:" in (out / f"{name}.log").read_text() and (out / f"{name}.db").exists()
        assert "exemplar_share" in record["comparisons"]["vs_base"][name]["1"]
    # SFT reads no feedback: one plain-prompt pass, no steerability (ALT's best and worst feedback: two)
    assert "steerability_gap" not in record["arms"]["sft"]["rounds"][1]["metrics"]
    assert "steerability_gap" in record["arms"]["alt"]["rounds"][1]["metrics"]
    assert "sft − alt" in record["comparisons"]["head_to_head"]["exemplar_share"]


@pytest.mark.slow
def test_a_failing_arm_under_parallel_leaves_the_others_and_names_it(tmp_path, tiny_model_dir, monkeypatch, capsys):
    """One arm cannot save its model (its models folder is a file): the other arm finishes and is recorded, the
    failed arm is named with its error in the record, the report and the exit status."""
    monkeypatch.setenv("ALT_DEVICE", "cpu")
    (tmp_path / "exp").mkdir()
    (tmp_path / "exp" / "models-sft").write_text("not a folder")
    code, out = tiny_experiment(tmp_path, tiny_model_dir, "--rounds", "1", "--objective", "sft", "--objective", "alt",
                                "--parallel", "2", "--eval-no-steer")
    assert code != 0
    assert "objective(s) failed: sft" in capsys.readouterr().err
    record = json.loads((out / "record.json").read_text())
    assert [r["round"] for r in record["arms"]["alt"]["rounds"]] == [0, 1] and "error" not in record["arms"]["alt"]
    assert "models-sft" in record["arms"]["sft"]["error"]
    assert "<b>sft failed:</b>" in (out / "report.html").read_text()


@pytest.mark.slow
def test_free_text_experiment_evaluates_text_steering_and_the_held_out_combination(tmp_path, tiny_model_dir,
                                                                                  monkeypatch):
    """ALT on rule:free_text (concise_text): every version under the rule's fixed texts, then per-attribute gaps and
    the held-out combination, each for the last version and the base; the held-out levels never enter a pool."""
    from sqlmodel import select

    from alt_engine.db import Task, session_scope
    from alt_engine.feedback.free_text import holds, parse_combination
    from alt_engine.pool import build_pool

    monkeypatch.setenv("ALT_DEVICE", "cpu")
    prompts = tmp_path / "prompts.jsonl"
    prompts.write_text("".join(json.dumps({"prompt": p, "split": s}) + "\n" for p, s in PROMPTS))
    out = tmp_path / "exp"
    code = main(["experiment", "--task", "concise_text", "--prompts", str(prompts), "--out", str(out), "--model",
                 tiny_model_dir, "--n", "3", "--max-new-tokens", "8", "--eval-n", "2", "--epochs", "1",
                 "--batch_size", "4", "--report_to", "none", "--promote", "always", "--rounds", "1",
                 "--holdout", "length=short,subject=off"])
    assert code == 0
    arm = json.loads((out / "record.json").read_text())["arms"]["alt"]
    assert arm["provider"] == "rule:free_text:length,subject" and arm["task"] == "concise_text"
    texts = arm["steering"]["texts"]
    for r in arm["rounds"]:  # base and round 1: best vs long, the same fixed texts
        ev = r["metrics"]["eval"]
        assert (ev["conditioning"], ev["contrast"]) == (texts["best"], texts["flip:length"])
        assert "score3_share" in r["metrics"]["per_prompt"] and "attr:subject" in r["metrics"]["per_prompt_contrast"]
    st = arm["steering"]
    assert set(st["attributes"]) == {"length", "subject"} and set(st["holdout"]["attributes"]) == {"length", "subject"}
    for row in [*st["attributes"].values(), *st["holdout"]["attributes"].values()]:
        assert {"gap", "base_gap", "vs_base"} <= set(row) and row["gap"]["prompts"] == 2
    assert st["holdout"]["attributes"]["length"]["texts"] == [texts["complement"], texts["holdout"]]  # towards long
    assert "Steering by text" in (out / "report.html").read_text()
    combo, db = parse_combination("length=short,subject=off"), str(out / "alt.db")
    with session_scope(db) as s:
        from sqlmodel import select

        from alt_engine.db import Task

        task = s.exec(select(Task).where(Task.name == "concise_text")).one()
    pool = build_pool(db, task.id, k_per_category=100, truncated="last", holdout="length=short,subject=off")
    assert pool and not any(holds(combo, it.prompt, it.response, it.truncated) for it in pool)
