"""An experiment's record compared and shown: paired differences over the probe prompts (``comparisons``) and
the self-contained HTML report (``render_report``, ``summary_rows``)."""

from __future__ import annotations

import json

from .vocab import Placement

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
            reads_feedback = ((m.get("eval") or {}).get("format") or {}).get("placement") != Placement.NONE
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
