"""``alt experiment``: R rounds from the same start, recorded as JSON and a self-contained HTML report.

Each objective gets its own database under the output folder, built the same way (task, prompt set,
base version), so every arm starts from the same model, prompts and seeds and differs only in how it
trains. Rounds go through ``rounds.run_round`` — the very code `alt round` runs — and the record keeps,
per round and version: shares and the exemplar share with 95% CIs, the steerability gap, the
label-learned diagnostic, mean reward, perplexity, dist-n, length, % truncated, the pool and the wall
time per stage. Round 0 is the untrained base, evaluated under the same conditioning format.
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
SERIES = ("exemplar_share", "mean_score", "steerability_gap", "perplexity", "dist1", "dist2", "dist3",
          "mean_words", "mean_length", "pct_truncated")


@dataclass
class ExperimentConfig:
    """What to run. ``round`` and ``train`` are RoundConfig / training-config keyword overrides."""

    task: str = "concise"
    provider: str | None = None  # default: the demo task's own provider
    prompts: str | None = None  # a prompt file; default: the demo task's shipped set
    rounds: int = 3
    objectives: list[str] = field(default_factory=lambda: ["alt"])
    out: str = "runs/experiment"
    round: dict = field(default_factory=dict)
    train: dict = field(default_factory=dict)
    objective_policy: bool = True  # each arm's pool policy is its objective's own (Quark accumulates), not round's


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


def _slim(metrics: dict) -> dict:
    """Metrics without the per-prompt arrays (kept in the databases)."""
    return {k: v for k, v in (metrics or {}).items() if k != "per_prompt"}


def run_experiment(cfg: ExperimentConfig, settings: Settings, log: Log = print) -> dict:
    """Run every objective's rounds; writes ``record.json`` and ``report.html`` under ``cfg.out``."""
    from .evaluation import EvalConfig
    from .rounds import RoundConfig, run_round
    from .sampling import SamplingParams

    out = Path(cfg.out)
    out.mkdir(parents=True, exist_ok=True)
    rc = dict(cfg.round)
    round_config = RoundConfig(sampling=SamplingParams(**rc.pop("sampling", {})), eval=EvalConfig(**rc.pop("eval", {})),
                               **rc)
    record: dict = {"config": dataclasses.asdict(cfg), "round_config": dataclasses.asdict(round_config),
                    "model": settings.model, "started": time.strftime("%Y-%m-%d %H:%M:%S"), "arms": {}}
    for objective in cfg.objectives:
        db = str(out / f"{objective}.db")
        for suffix in ("", "-wal", "-shm"):
            Path(db + suffix).unlink(missing_ok=True)
        arm_settings = dataclasses.replace(settings, db=db, models_dir=str(out / f"models-{objective}"))
        log(f"== {objective}: {cfg.rounds} round(s) on task {cfg.task!r} → {db}")
        task, provider = _prepare(db, arm_settings, cfg, log)
        train_config = _train_config(objective, dict(cfg.train))
        arm_round = round_config
        if cfg.objective_policy:
            from .training.objectives import get

            arm_round = dataclasses.replace(round_config, policy=get(objective).pool_policy)
        arm: dict = {"provider": provider, "train_config": train_config.to_dict(), "policy": arm_round.policy,
                     "rounds": []}
        record["arms"][objective] = arm
        t0 = time.perf_counter()
        for _ in range(cfg.rounds):
            report = run_round(db, arm_settings, task, provider, arm_round, train_config, log=log)
            if not arm["rounds"]:
                arm["rounds"].append({"round": 0, "version": "base", "metrics": _slim(report.parent_metrics)})
            arm["rounds"].append({
                "round": report.number, "version_id": report.version_id, "promoted": report.promoted,
                "decision": report.decision, "generations": report.generations, "pool_size": report.pool_size,
                "pool_truncated": report.pool_truncated, "pool_feedback": report.pool_feedback,
                "feedback": report.feedback, "wall_s": report.wall_s, "metrics": _slim(report.metrics)})
            provider = report.feedback.get("source") or provider  # resolved (e.g. auto thresholds) from now on
            arm["provider"] = provider
            _write(record, out)
        arm["wall_s"] = time.perf_counter() - t0
        _write(record, out)
    record["finished"] = time.strftime("%Y-%m-%d %H:%M:%S")
    _write(record, out)
    log(f"record: {out / 'record.json'}\nreport: {out / 'report.html'}")
    return record


def _write(record: dict, out: Path) -> None:
    (out / "record.json").write_text(json.dumps(record, indent=2, default=str))
    (out / "report.html").write_text(render_report(record))


# --------------------------------------------------------------------------- the HTML report


def _value(row: dict, name: str):
    m = row["metrics"]
    if name == "ll_gap" or name == "eos_gap":
        return (m.get("label_learned") or {}).get(name), (m.get("label_learned") or {}).get(f"{name}_ci")
    return m.get(name), m.get(f"{name}_ci")


def summary_rows(record: dict) -> list[dict]:
    """One row per objective and round: the figures the report's table shows."""
    rows = []
    for objective, arm in record["arms"].items():
        for r in arm["rounds"]:
            m = r["metrics"]
            row = {"objective": objective, "round": r["round"]}
            for name in ("exemplar_share", "mean_score", "steerability_gap", "ll_gap", "eos_gap"):
                v, ci = _value(r, name)
                row[name] = v
                row[f"{name}_ci"] = ci
            for name in ("perplexity", "dist1", "dist2", "dist3", "mean_words", "pct_truncated"):
                row[name] = m.get(name)
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
    stages = sorted({k for arm in record["arms"].values() for r in arm["rounds"] for k in (r.get("wall_s") or {})
                     if k != "total"})
    for stage in stages:
        xs, ys = [], []
        for objective, arm in record["arms"].items():
            for r in arm["rounds"]:
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
            ("mean_score", "mean reward"), ("steerability_gap", "steer gap"), ("ll_gap", "ll gap"),
            ("eos_gap", "EOS gap"), ("perplexity", "ppl"), ("dist2", "dist-2"), ("mean_words", "words"),
            ("pct_truncated", "% trunc"), ("wall_s", "wall s")]
    head = "".join(f"<th>{html.escape(label)}</th>" for _, label in cols)
    body = "".join("<tr>" + "".join(f"<td>{_cell(r.get(k), r.get(f'{k}_ci'))}</td>" for k, _ in cols) + "</tr>"
                   for r in rows)
    cfg = html.escape(json.dumps({k: record[k] for k in ("config", "model")}, indent=1))
    providers = ", ".join(f"{o}: {html.escape(a['provider'])}" for o, a in record["arms"].items())
    return f"""<!doctype html><html><head><meta charset="utf-8"><title>ALT Studio experiment</title>
<style>body{{font-family:system-ui,sans-serif;margin:24px;max-width:1200px}}table{{border-collapse:collapse}}
td,th{{border:1px solid #ccc;padding:4px 8px;text-align:right}}small{{color:#666}}pre{{background:#f6f6f6;padding:8px}}
</style></head><body>
<h1>ALT Studio experiment: task {html.escape(record['config']['task'])}</h1>
<p>Model {html.escape(str(record['model']))}; providers {providers}; started {record.get('started')},
finished {record.get('finished', '(running)')}. Every version is evaluated on the probe prompts under the
same conditioning format; round 0 is the untrained base. Intervals: 95% bootstrap over prompts.</p>
<table><tr>{head}</tr>{body}</table>
{charts}
<h2>Configuration</h2><pre>{cfg}</pre>
</body></html>"""
