"""``alt experiment``: R rounds from the same start, recorded as JSON and a self-contained HTML report.

Each objective gets its own database under the output folder, built the same way (task, prompt set,
base version), so every arm starts from the same model, prompts and seeds and differs only in how it
trains. Rounds go through ``rounds.run_round`` — the very code `alt round` runs — and the record keeps,
per round and version: shares and the exemplar share with 95% CIs, the steerability gap, the
label-learned diagnostic, mean reward, perplexity, dist-n, length, % truncated, the pool and the wall
time per stage. Round 0 is the untrained base evaluated as the objective evaluates its versions: in the
same conditioning format (the plain prompt for SFT, CUT and CnR) and, for CnR, after the same revision passes.

An arm is an objective, or ``objective@task`` for an arm on another task over the same prompt set (its demo
provider; e.g. ``alt@concise_score``: ``rule:free_text``'s information as categories). On a free-text task
fed by ``rule:free_text`` every version is evaluated under the rule's fixed texts, and after the last round
the ALT arm's last version and the base are sampled under the other texts too: per-attribute steering gaps and
the held-out combination (``round.holdout``, kept out of the pool), see ``steering.py``.
"""

from __future__ import annotations

import dataclasses
import json
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from .db import init_db, session_scope
from .settings import Settings

Log = Callable[[str], None]
SERIES = ("exemplar_share", "mean_score", "score3_share", "steerability_gap", "perplexity", "dist1", "dist2", "dist3",
          "mean_words", "mean_length", "pct_truncated")


@dataclass
class ExperimentConfig:
    """What to run. ``round`` and ``train`` are RoundConfig / training-config keyword overrides."""

    task: str = "concise"
    provider: str | None = None  # default: the demo task's own provider
    prompts: str | None = None  # a prompt file; default: the demo task's shipped set
    rounds: int = 3
    objectives: list[str] = field(default_factory=lambda: ["alt"])  # arms: objective or objective@task
    out: str = "runs/experiment"
    round: dict = field(default_factory=dict)
    train: dict = field(default_factory=dict)
    objective_policy: bool = True  # each arm's pool policy is its objective's own (Quark accumulates), not round's
    parallel: int = 1  # arms run at once, each in its own process


def _prepare(db: str, settings: Settings, cfg: ExperimentConfig, log: Log):
    from .modeling import resolve_model
    from .prompts import import_prompts
    from .tasks import DEMOS, builtin_prompt_file, get_or_create_task
    from .versions import ensure_base_version

    init_db(db)
    with session_scope(db) as s:
        task = get_or_create_task(s, cfg.task)
    path = cfg.prompts or str(builtin_prompt_file(cfg.task))
    report = import_prompts(db, path, task=cfg.task)
    log(f"  prompts: {report}")
    with session_scope(db) as s:
        ensure_base_version(s, settings.model, resolve_model(settings.model, settings.cache_dir))
    provider = cfg.provider or (DEMOS[cfg.task].provider if cfg.task in DEMOS else None)
    if not provider:
        raise ValueError(f"task {cfg.task!r} is not a demo task: give --provider")
    return task, provider


def _train_config(objective: str, overrides: dict):
    from .training.config import AltTrainConfig

    if objective != "alt":
        try:
            from .training.objectives import make_config  # the objectives registry (issue 11)
        except ImportError:
            raise ValueError(f"objective {objective!r} is not available in this version (only 'alt')") from None
        return make_config(objective, **overrides)
    return AltTrainConfig(**overrides)


def run_arm(objective: str, cfg: ExperimentConfig, settings: Settings, log: Log = print,
            update: Callable[[dict], None] = lambda arm: None) -> dict:
    """One arm's rounds in its own database under ``cfg.out``; ``update(arm)`` after every round.

    ``objective``: an objective's name, or ``objective@task`` (that task, over the same prompts, with its demo
    provider)."""
    from .rounds import run_round

    name, (objective, _, arm_task) = objective, objective.partition("@")
    if arm_task and arm_task != cfg.task:
        cfg = dataclasses.replace(cfg, task=arm_task, provider=None,
                                  prompts=cfg.prompts or str(_builtin_prompts(cfg.task)))
    out = Path(cfg.out)
    db = str(out / f"{name}.db")
    for suffix in ("", "-wal", "-shm"):
        Path(db + suffix).unlink(missing_ok=True)
    arm_settings = dataclasses.replace(settings, db=db, models_dir=str(out / f"models-{name}"))
    log(f"== {name}: {cfg.rounds} round(s) on task {cfg.task!r} → {db}")
    task, provider = _prepare(db, arm_settings, cfg, log)
    train_config = _train_config(objective, dict(cfg.train))
    arm_round = round_config(cfg)
    if cfg.objective_policy:
        from .training.objectives import get

        arm_round = dataclasses.replace(arm_round, policy=get(objective).pool_policy)
    from .guidance import FEEDBACK_FREE

    if objective in FEEDBACK_FREE and (arm_round.sampling.guidance or arm_round.eval.guidance):
        log(f"  {objective} reads no feedback: sampled and evaluated without guidance")
        arm_round = dataclasses.replace(arm_round, sampling=dataclasses.replace(arm_round.sampling, guidance=0.0),
                                        eval=dataclasses.replace(arm_round.eval, guidance=0.0))
    rule = _free_text_rule(provider, arm_settings, task, db)
    if rule is not None:  # every version under the rule's fixed texts: best vs its first attribute flipped
        from .steering import eval_pairs

        arm_round = dataclasses.replace(arm_round, eval=dataclasses.replace(
            arm_round.eval, conditions=eval_pairs(rule, arm_round.holdout)[0]))
    arm: dict = {"provider": provider, "task": cfg.task, "objective": objective,
                 "train_config": train_config.to_dict(), "policy": arm_round.policy, "rounds": []}
    t0 = time.perf_counter()
    for _ in range(cfg.rounds):
        report = run_round(db, arm_settings, task, provider, arm_round, train_config, log=log)
        if not arm["rounds"]:
            arm["rounds"].append({"round": 0, "version": "base", "metrics": report.parent_metrics})
        arm["rounds"].append({
            "round": report.number, "version_id": report.version_id, "promoted": report.promoted,
            "decision": report.decision, "generations": report.generations, "pool_size": report.pool_size,
            "pool_truncated": report.pool_truncated, "pool_feedback": report.pool_feedback,
            "feedback": report.feedback, "wall_s": report.wall_s, "metrics": report.metrics})
        provider = report.feedback.get("source") or provider  # resolved (e.g. auto thresholds) from now on
        arm["provider"] = provider
        arm["wall_s"] = time.perf_counter() - t0
        update(arm)
    # last, so that the rounds' label diagnostics all draw on the base's first evaluation
    if base := base_as_objective(objective, db, arm_settings, task, provider, arm_round.eval, log):
        arm["rounds"][0].update(metrics=base, evaluated_as=objective)
        update(arm)
    if rule is not None and arm["rounds"][-1].get("version_id"):
        arm["steering"] = steer_by_text(db, arm_settings, task, rule, arm, arm_round, log)
        update(arm)
    return arm


def _builtin_prompts(task: str):
    from .tasks import builtin_prompt_file

    return builtin_prompt_file(task)


def _free_text_rule(provider: str, settings: Settings, task, db: str):
    """The ``rule:free_text`` provider of a free-text task (no categories), else None."""
    from .feedback import make_provider
    from .feedback.free_text import FreeTextRule

    if task.categories or not provider.startswith("rule:free_text"):
        return None
    rule = make_provider(provider, settings, task, db)
    return rule if isinstance(rule, FreeTextRule) else None


def steer_by_text(db: str, settings: Settings, task, rule, arm: dict, round_cfg, log: Log = print) -> dict | None:
    """The last version and the base under the rule's other texts (``steering.py``); None for a version that
    reads no feedback (SFT)."""
    from sqlmodel import select

    from .conditioning import format_of
    from .db import ModelVersion
    from .evaluation import evaluate_version
    from .steering import evaluate_texts, gaps, summary_lines

    with session_scope(db) as s:
        last = s.get(ModelVersion, arm["rounds"][-1]["version_id"])
        base = s.exec(select(ModelVersion).where(ModelVersion.parent_id.is_(None)).order_by(ModelVersion.id)).first()
        if format_of(last, task).placement == "none":
            return None
        last_id, base_id = last.id, base.id

    def evaluate(version_id: int):
        return lambda conds: evaluate_version(db, settings, version_id, task, rule,
                                              dataclasses.replace(round_cfg.eval, conditions=conds), log=log)

    log(f"  steering by text: version {last_id} and the base under {rule.name}'s texts")
    mine = evaluate_texts(evaluate(last_id), rule, round_cfg.holdout, done=arm["rounds"][-1]["metrics"])
    untrained = evaluate_texts(evaluate(base_id), rule, round_cfg.holdout, done=arm["rounds"][0]["metrics"])
    result = gaps(rule, mine, untrained, round_cfg.holdout)
    for line in summary_lines(result):
        log(line)
    return result


def base_as_objective(objective: str, db: str, settings: Settings, task, provider: str, eval_config,
                      log: Log = print) -> dict | None:
    """The untrained base evaluated as ``objective`` uses a model: in its conditioning format (the plain prompt
    for SFT, CUT and CnR, the attribute string for SteerLM) and, for CnR, after the same revision passes.

    Round 0 is then the same procedure without the training, so "round − base" is the training's effect. None
    when that is how a round evaluates the base anyway (ALT; Quark, whose control tokens the base does not
    have yet: the feedback text as written).
    """
    from sqlmodel import select

    from .conditioning import format_of
    from .db import ModelVersion
    from .evaluation import evaluate_version
    from .feedback import make_provider
    from .training.objectives import get

    fmt = get(objective).task_format(task)
    revise = objective == "cnr" and eval_config.revision_passes > 0
    with session_scope(db) as s:
        base = s.exec(select(ModelVersion).where(ModelVersion.parent_id.is_(None)).order_by(ModelVersion.id)).first()
    if fmt.placement == "tokens":  # Quark's control tokens exist only once trained: the base reads the text
        fmt = format_of(base, task)
    if fmt.to_dict() == format_of(base, task).to_dict() and not revise:
        return None
    log(f"  base as {objective} evaluates: format {fmt.placement}{', revised' if revise else ''}")
    return evaluate_version(db, settings, base.id, task, make_provider(provider, settings, task, db), eval_config,
                            fmt=fmt, revise=revise, log=log)


def round_config(cfg: ExperimentConfig):
    """The experiment's RoundConfig (its ``round`` overrides over the defaults)."""
    from .evaluation import EvalConfig
    from .rounds import RoundConfig
    from .sampling import SamplingParams

    rc = dict(cfg.round)
    return RoundConfig(sampling=SamplingParams(**rc.pop("sampling", {})), eval=EvalConfig(**rc.pop("eval", {})),
                       **rc)


def run_experiment(cfg: ExperimentConfig, settings: Settings, log: Log = print) -> dict:
    """Run every objective's rounds; writes ``record.json`` and ``report.html`` under ``cfg.out``.

    With ``cfg.parallel`` > 1 the arms run that many at a time, each in its own process with its share of
    the threads (on 2 cores two 1-thread arms sample 1.6× as fast in all as one 2-thread arm after another);
    an arm's log then goes to ``OBJECTIVE.log`` next to its database.
    """
    out = Path(cfg.out)
    out.mkdir(parents=True, exist_ok=True)
    record: dict = {"config": dataclasses.asdict(cfg), "round_config": dataclasses.asdict(round_config(cfg)),
                    "model": settings.model, "started": time.strftime("%Y-%m-%d %H:%M:%S"), "arms": {}}
    if cfg.parallel > 1 and len(cfg.objectives) > 1:
        failed = _run_parallel(cfg, settings, record, log)
    else:
        failed = []
        for objective in cfg.objectives:
            def update(arm: dict, objective: str = objective) -> None:
                record["arms"][objective] = arm
                _write(record, out)

            run_arm(objective, cfg, settings, log, update)
    record["finished"] = time.strftime("%Y-%m-%d %H:%M:%S")
    _write(record, out)
    log(f"record: {out / 'record.json'}\nreport: {out / 'report.html'}")
    if failed:
        raise RuntimeError(f"objective(s) failed: {', '.join(failed)} (see their logs under {out})")
    return record


def _arm_process(objective: str, cfg: ExperimentConfig, settings: Settings) -> dict:
    """One arm in a worker process: log and per-round progress to files next to its database."""
    from .modeling import set_threads

    set_threads(settings.threads)
    out = Path(cfg.out)
    with (out / f"{objective}.log").open("w") as f:
        def log(line: str) -> None:
            f.write(line + "\n")
            f.flush()

        def update(arm: dict) -> None:
            (out / f"{objective}.json").write_text(json.dumps(arm, default=str))

        return run_arm(objective, cfg, settings, log, update)


def _run_parallel(cfg: ExperimentConfig, settings: Settings, record: dict, log: Log) -> list[str]:
    """The arms ``cfg.parallel`` at a time (spawned processes: torch and fork do not mix); the failed ones."""
    import multiprocessing as mp
    import os
    import traceback
    from concurrent.futures import ProcessPoolExecutor, as_completed

    out = Path(cfg.out)
    threads = max(1, (settings.threads or os.cpu_count() or 1) // cfg.parallel)
    arm_settings = dataclasses.replace(settings, threads=threads)
    arms, failed = {}, []
    with ProcessPoolExecutor(min(cfg.parallel, len(cfg.objectives)), mp_context=mp.get_context("spawn")) as pool:
        futures = {pool.submit(_arm_process, o, cfg, arm_settings): o for o in cfg.objectives}
        for o in cfg.objectives:
            log(f"== {o}: {cfg.rounds} round(s), {threads} thread(s), log {out / f'{o}.log'}")
        for future in as_completed(futures):
            o = futures[future]
            try:
                arms[o] = future.result()
                log(f"== {o}: done in {arms[o]['wall_s']:.0f} s")
            except Exception as exc:  # the others go on; what the arm reached is kept
                progress = out / f"{o}.json"
                arms[o] = json.loads(progress.read_text()) if progress.exists() else {"rounds": []}
                arms[o]["error"] = "".join(traceback.format_exception_only(exc)).strip()
                failed.append(o)
                log(f"== {o}: failed: {arms[o]['error']}")
            record["arms"] = {k: arms[k] for k in cfg.objectives if k in arms}
            _write(record, out)
    return failed


def _write(record: dict, out: Path) -> None:
    record["comparisons"] = comparisons(record)
    (out / "record.json").write_text(json.dumps(record, indent=2, default=str))
    (out / "report.html").write_text(render_report(record))


# --------------------------------------------------------------------------- comparisons and merging

# metrics with per-prompt values: paired bootstrap
PAIRED = ("exemplar_share", "mean_score", "score3_share", "mean_words")


def comparisons(record: dict) -> dict:
    """Paired differences over the probe prompts (every arm probes the same prompts with the same seeds).

    ``vs_base``: each round − the untrained base under the same format, per arm. ``head_to_head``: at the
    last round every arm reached, each arm − each later arm. Values with 95% bootstrap CIs.
    """
    from .evaluation import compare

    def diff(a: dict, b: dict, metric: str) -> dict | None:
        est = compare(a, b, metric)  # per-prompt values are keyed by prompt id as a string (JSON keys)
        return est.to_dict() if est and est.prompts else None

    vs_base: dict = {}
    for objective, arm in record["arms"].items():
        rounds = arm.get("rounds") or []
        if rounds:
            vs_base[objective] = {str(r["round"]): {m: d for m in PAIRED
                                                    if (d := diff(r["metrics"], rounds[0]["metrics"], m))}
                                  for r in rounds[1:]}
    finished = {o: a["rounds"] for o, a in record["arms"].items() if len(a.get("rounds") or []) > 1}
    last = min((len(r) - 1 for r in finished.values()), default=0)
    head: dict = {}
    names = list(finished)
    for i, a in enumerate(names):
        for b in names[i + 1:]:
            for m in PAIRED:
                if d := diff(finished[a][last]["metrics"], finished[b][last]["metrics"], m):
                    head.setdefault(m, {})[f"{a} − {b}"] = d
    return {"vs_base": vs_base, "head_to_head": head, "head_to_head_round": last}


def merge_records(folders: list[str], out: str) -> dict:
    """One record and report from several experiment folders (e.g. arms run on several machines), writing
    ``record.json`` and ``report.html`` under ``out``. Per-prompt values a record lacks (made before they
    were kept) are read back from the arm's database, where every evaluated version stores them."""
    from sqlmodel import select

    from .db import ModelVersion

    merged: dict | None = None
    for folder in folders:
        path = Path(folder) / "record.json"
        if not path.exists():
            raise ValueError(f"{folder}: no record.json (not an `alt experiment` folder)")
        record = json.loads(path.read_text())
        for objective, arm in record["arms"].items():
            db = Path(folder) / f"{objective}.db"
            missing = [r for r in arm.get("rounds") or [] if "per_prompt" not in r["metrics"]]
            if missing and db.exists():
                with session_scope(str(db)) as s:
                    versions = {v.id: v for v in s.exec(select(ModelVersion))}
                first = next((r for r in arm["rounds"] if r.get("version_id")), None)
                base = versions.get(first["version_id"]).parent_id if first else None
                for r in missing:
                    v = versions.get(r.get("version_id") or base)
                    if v is not None and (v.metrics or {}).get("per_prompt"):
                        r["metrics"]["per_prompt"] = v.metrics["per_prompt"]
        if merged is None:
            merged = {**record, "arms": {}, "merged_from": []}
        clash = set(record["arms"]) & set(merged["arms"])
        if clash:
            raise ValueError(f"{folder}: objective(s) {', '.join(sorted(clash))} already merged from another folder")
        merged["arms"].update(record["arms"])
        merged["merged_from"].append({"folder": str(folder), "config": record["config"],
                                      "started": record.get("started"), "finished": record.get("finished")})
    if merged is None:
        raise ValueError("nothing to merge: give at least one folder")
    merged["config"] = {**merged["config"], "objectives": list(merged["arms"])}
    Path(out).mkdir(parents=True, exist_ok=True)
    _write(merged, Path(out))
    return merged


# --------------------------------------------------------------------------- the HTML report


def _value(row: dict, name: str):
    m = row["metrics"]
    if name == "ll_gap" or name == "eos_gap":
        return (m.get("label_learned") or {}).get(name), (m.get("label_learned") or {}).get(f"{name}_ci")
    return m.get(name), m.get(f"{name}_ci")


def summary_rows(record: dict) -> list[dict]:
    """One row per objective and round: the figures the report's table shows."""
    rows = []
    vs_base = (record.get("comparisons") or {}).get("vs_base") or {}
    for objective, arm in record["arms"].items():
        for r in arm.get("rounds") or []:
            m = r["metrics"]
            row = {"objective": objective, "round": r["round"]}
            # a model that reads no feedback has no steerability or label to learn (older records have a gap)
            reads_feedback = ((m.get("eval") or {}).get("format") or {}).get("placement") != "none"
            for name in ("exemplar_share", "mean_score", "score3_share", "steerability_gap", "ll_gap", "eos_gap"):
                v, ci = _value(r, name)
                if name not in ("exemplar_share", "mean_score", "score3_share") and not reads_feedback:
                    v = ci = None
                row[name] = v
                row[f"{name}_ci"] = ci
            for name in ("perplexity", "dist1", "dist2", "dist3", "mean_words", "pct_truncated"):
                row[name] = m.get(name)
            for name in ("exemplar_share", "mean_score", "score3_share"):
                d = (vs_base.get(objective) or {}).get(str(r["round"]), {}).get(name)
                row[f"{name}_gain"] = d["value"] if d else None
                row[f"{name}_gain_ci"] = [d["low"], d["high"]] if d else None
            row["wall_s"] = (r.get("wall_s") or {}).get("total")
            rows.append(row)
    return rows


def render_report(record: dict) -> str:
    """A self-contained HTML page (plotly.js inlined once) with the per-round charts and a table."""
    import plotly.graph_objects as go
    from plotly.subplots import make_subplots

    rows = summary_rows(record)
    figs = []

    def line_chart(names: list[tuple[str, str]], title: str, yaxis: str):
        fig = go.Figure()
        for objective in record["arms"]:
            mine = [r for r in rows if r["objective"] == objective]
            for name, label in names:
                pts = [(r["round"], r[name], r.get(f"{name}_ci")) for r in mine if r.get(name) is not None]
                if not pts:
                    continue
                err = dict(type="data", symmetric=False,
                           array=[(ci[1] - v) if ci and None not in ci else 0 for _, v, ci in pts],
                           arrayminus=[(v - ci[0]) if ci and None not in ci else 0 for _, v, ci in pts])
                fig.add_trace(go.Scatter(x=[p[0] for p in pts], y=[p[1] for p in pts], error_y=err,
                                         mode="lines+markers", name=f"{objective}: {label}"))
        fig.update_layout(title=title, xaxis_title="round (0 = untrained base, same format)", yaxis_title=yaxis,
                          height=380, margin=dict(l=50, r=20, t=50, b=40))
        fig.update_xaxes(dtick=1)
        return fig if fig.data else None

    figs.append(line_chart([("exemplar_share", "exemplar share")], "Exemplar share on the probe prompts "
                           "(conditioned on the best feedback), 95% CI", "share"))
    figs.append(line_chart([("mean_score", "mean reward")], "Mean reward conditioned on the best feedback, 95% CI",
                           "reward"))
    figs.append(line_chart([("steerability_gap", "gap")], "Steerability: best − worst feedback, 95% CI", "gap"))
    figs.append(line_chart([("ll_gap", "log-likelihood gap"), ("eos_gap", "EOS log-prob gap")],
                           "Label-learned diagnostic: own − opposite label on held-out responses", "nats"))
    small = make_subplots(rows=2, cols=3, subplot_titles=("perplexity (reference)", "dist-1", "dist-2", "dist-3",
                                                          "mean words", "% truncated"))
    for i, name in enumerate(("perplexity", "dist1", "dist2", "dist3", "mean_words", "pct_truncated")):
        for objective in record["arms"]:
            pts = [(r["round"], r[name]) for r in rows if r["objective"] == objective and r.get(name) is not None]
            small.add_trace(go.Scatter(x=[p[0] for p in pts], y=[p[1] for p in pts], mode="lines+markers",
                                       name=objective, showlegend=i == 0, legendgroup=objective),
                            row=i // 3 + 1, col=i % 3 + 1)
    small.update_layout(title="Fluency, diversity, length", height=520, margin=dict(l=40, r=20, t=70, b=30))
    figs.append(small)
    wall = go.Figure()
    stages = sorted({k for arm in record["arms"].values() for r in arm.get("rounds") or []
                     for k in (r.get("wall_s") or {}) if k != "total"})
    for stage in stages:
        xs, ys = [], []
        for objective, arm in record["arms"].items():
            for r in arm.get("rounds") or []:
                if r.get("wall_s"):
                    xs.append(f"{objective} r{r['round']}")
                    ys.append(r["wall_s"].get(stage, 0.0))
        wall.add_trace(go.Bar(x=xs, y=ys, name=stage))
    wall.update_layout(barmode="stack", title="Wall time per stage (s)", height=380)
    figs.append(wall)

    parts, first = [], True
    for fig in figs:
        if fig is None:
            continue
        parts.append(fig.to_html(full_html=False, include_plotlyjs=first))
        first = False
    return _page(record, rows, "\n".join(parts))


def _cell(v, ci=None) -> str:
    if v is None:
        return "–"
    text = f"{v:.3f}" if isinstance(v, float) else str(v)
    if ci and None not in ci:
        text += f" <small>[{ci[0]:.3f}, {ci[1]:.3f}]</small>"
    return text


def _page(record: dict, rows: list[dict], charts: str) -> str:
    import html

    cols = [("objective", "objective"), ("round", "round"), ("exemplar_share", "exemplar share"),
            ("exemplar_share_gain", "− base"), ("mean_score", "mean reward"), ("mean_score_gain", "− base"),
            ("score3_share", "score-3 share"), ("score3_share_gain", "− base"),
            ("steerability_gap", "steer gap"), ("ll_gap", "ll gap"),
            ("eos_gap", "EOS gap"), ("perplexity", "ppl"), ("dist2", "dist-2"), ("mean_words", "words"),
            ("pct_truncated", "% trunc"), ("wall_s", "wall s")]
    head = "".join(f"<th>{html.escape(label)}</th>" for _, label in cols)
    body = "".join("<tr>" + "".join(f"<td>{_cell(r.get(k), r.get(f'{k}_ci'))}</td>" for k, _ in cols) + "</tr>"
                   for r in rows)
    comp = record.get("comparisons") or {}
    h2h = ""
    for metric, pairs in (comp.get("head_to_head") or {}).items():
        h2h += (f"<tr><th colspan=2>{html.escape(metric)} at round {comp.get('head_to_head_round')}</th></tr>"
                + "".join(f"<tr><td>{html.escape(pair)}</td><td>{_cell(d['value'], [d['low'], d['high']])}</td></tr>"
                          for pair, d in pairs.items()))
    if h2h:
        h2h = ("<h2>Head to head</h2><p>Paired over the probe prompts: a CI that excludes 0 is a difference "
               f"beyond chance.</p><table>{h2h}</table>")
    steering = ""
    for o, a in record["arms"].items():
        st = a.get("steering") or {}
        rows_ = [(f"{attr} (one attribute differs)", r) for attr, r in (st.get("attributes") or {}).items()]
        rows_ += [(f"held-out {(st.get('holdout') or {}).get('combination')}: {attr}", r)
                  for attr, r in ((st.get("holdout") or {}).get("attributes") or {}).items()]
        steering += "".join(
            f"<tr><td>{html.escape(o)}</td><td>{html.escape(label)}</td><td>{html.escape(' vs '.join(r['texts']))}"
            f"</td>" + "".join(f"<td>{_cell(d['value'], [d['low'], d['high']]) if d else '–'}</td>"
                               for d in (r.get("gap"), r.get("base_gap"), r.get("vs_base"))) + "</tr>"
            for label, r in rows_)
    if steering:
        h2h += ("<h2>Steering by text</h2><p>Gap between two feedback texts on each attribute (towards the level "
                "the first text names), last version and untrained base under the same texts and format.</p><table>"
                "<tr><th>arm</th><th>attribute</th><th>texts</th><th>gap</th><th>base gap</th><th>− base</th></tr>"
                f"{steering}</table>")
    errors = "".join(f"<p><b>{html.escape(o)} failed:</b> {html.escape(a['error'])}</p>"
                     for o, a in record["arms"].items() if a.get("error"))
    cfg = html.escape(json.dumps({k: record[k] for k in ("config", "model")}, indent=1))
    providers = ", ".join(f"{o}: {html.escape(a.get('provider') or '?')}" for o, a in record["arms"].items())
    return f"""<!doctype html><html><head><meta charset="utf-8"><title>ALT Studio experiment</title>
<style>body{{font-family:system-ui,sans-serif;margin:24px;max-width:1200px}}table{{border-collapse:collapse}}
td,th{{border:1px solid #ccc;padding:4px 8px;text-align:right}}small{{color:#666}}pre{{background:#f6f6f6;padding:8px}}
</style></head><body>
<h1>ALT Studio experiment: task {html.escape(record['config']['task'])}</h1>
<p>Model {html.escape(str(record['model']))}; providers {providers}; started {record.get('started')},
finished {record.get('finished', '(running)')}. Every version is evaluated on the probe prompts under the
same conditioning format; round 0 is the untrained base. Intervals: 95% bootstrap over prompts.</p>
{errors}<table><tr>{head}</tr>{body}</table>
<p>− base: the round minus the untrained base under the same format, paired over the probe prompts.</p>
{h2h}
{charts}
<h2>Configuration</h2><pre>{cfg}</pre>
</body></html>"""
