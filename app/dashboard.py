"""The Dashboard tab (admins; annotators read-only when ``ALT_DASHBOARD_FOR_ANNOTATORS=1``): per-round alignment.

Plotly charts with one point per round and version (``alt_engine.reports.round_metrics``): category shares on the
probe prompts with their intervals, exemplar share, steerability gap, mean reward, perplexity, dist-1/2/3, length
and % truncated; annotation throughput per annotator and round; human-vs-AI agreement per round; the versions
with their lineage. The engine runs the queries; this module only lays them out. Every handler checks the role.
"""

from __future__ import annotations

import gradio as gr
import pandas as pd
import plotly.graph_objects as go
from plotly.subplots import make_subplots

from alt_engine import playground as pg
from alt_engine import reports
from alt_engine.settings import Settings

from .auth import Auth

PANELS = [("exemplar_share", "exemplar share"), ("steerability_gap", "steerability gap (best − worst)"),
          ("mean_score", "mean reward"), ("perplexity", "perplexity (reference model)"),
          ("mean_words", "mean length (words)"), ("pct_truncated", "% truncated")]
EMPTY = ("No evaluated versions for this task yet. Run a round (**Admin → Rounds → Run a round**, or `alt round`), "
         "or evaluate a version (**Admin → Models → Evaluate**, or `alt eval`): each evaluated version becomes a "
         "point here.")
EVAL_COLUMNS = ["round", "version", "status", "provider", "exemplar share [95% CI]", "steer gap [95% CI]",
                "mean reward [95% CI]", "mean words", "% truncated"]


def _ci_text(row: dict, key: str, signed: bool = False) -> str:
    v, low, high = row.get(key), row.get(f"{key}_low"), row.get(f"{key}_high")
    if v is None:
        return ""
    f = "{:+.3f}" if signed else "{:.3f}"
    return f.format(v) + (f" [{f.format(low)}, {f.format(high)}]" if low is not None and high is not None else "")


def evaluations_frame(rows: list[dict]) -> pd.DataFrame:
    """One line per evaluated version (base = round 0): the figures the plots show, with their intervals."""
    return pd.DataFrame([{
        "round": r["round"], "version": r["version"], "status": r["status"], "provider": r.get("provider") or "",
        "exemplar share [95% CI]": _ci_text(r, "exemplar_share"),
        "steer gap [95% CI]": _ci_text(r, "steerability_gap", signed=True),
        "mean reward [95% CI]": _ci_text(r, "mean_score"),
        "mean words": f"{r['mean_words']:.1f}" if r.get("mean_words") is not None else "",
        "% truncated": f"{r['pct_truncated']:.0f}" if r.get("pct_truncated") is not None else ""}
        for r in rows], columns=EVAL_COLUMNS)


def _label(row: dict) -> str:
    return f"round {row['round']} · {row['version']}"


def _errors(rows: list[dict], key: str) -> dict | None:
    if all(r.get(f"{key}_low") is None for r in rows):
        return None
    return dict(type="data", symmetric=False,
                array=[(r[f"{key}_high"] - r[key]) if r.get(f"{key}_high") is not None and r[key] is not None
                       else 0 for r in rows],
                arrayminus=[(r[key] - r[f"{key}_low"]) if r.get(f"{key}_low") is not None and r[key] is not None
                            else 0 for r in rows])


def metrics_figure(rows: list[dict], categories: list[str]) -> go.Figure:
    """Category shares (one line per category) on top, then one small chart per metric; x = round."""
    fig = make_subplots(rows=4, cols=2, specs=[[{"colspan": 2}, None], [{}, {}], [{}, {}], [{}, {}]],
                        subplot_titles=["category share on the probe prompts (95% CI)"] + [t for _, t in PANELS],
                        vertical_spacing=0.08)
    x = [r["round"] for r in rows]
    text = [_label(r) for r in rows]
    for c in categories:
        key = f"share:{c}"
        if any(r.get(key) is not None for r in rows):
            fig.add_trace(go.Scatter(x=x, y=[r.get(key) for r in rows], name=c, mode="lines+markers", text=text,
                                     error_y=_errors(rows, key), meta=key), row=1, col=1)
    for i, (key, title) in enumerate(PANELS):
        fig.add_trace(go.Scatter(x=x, y=[r.get(key) for r in rows], name=title, mode="lines+markers", text=text,
                                 error_y=_errors(rows, key), meta=key, showlegend=False),
                      row=2 + i // 2, col=1 + i % 2)
    fig.update_xaxes(title_text="round", dtick=1)
    fig.update_layout(height=1000, margin=dict(t=40, l=40, r=20, b=40), legend=dict(orientation="h", y=1.04))
    return fig


def diversity_figure(rows: list[dict]) -> go.Figure:
    fig = go.Figure()
    for n in (1, 2, 3):
        fig.add_trace(go.Scatter(x=[r["round"] for r in rows], y=[r.get(f"dist{n}") for r in rows],
                                 name=f"dist-{n}", mode="lines+markers", meta=f"dist{n}"))
    fig.update_layout(title="distinct n-grams", height=300, xaxis=dict(title="round", dtick=1))
    return fig


def throughput_figure(rows: list[dict]) -> go.Figure:
    fig = go.Figure()
    for name in sorted({r["annotator"] for r in rows}):
        mine = [r for r in rows if r["annotator"] == name]
        fig.add_trace(go.Bar(x=[r["round"] for r in mine], y=[r["labels"] for r in mine], name=name))
    fig.update_layout(title="labels per annotator and round", barmode="stack", height=300,
                      xaxis=dict(title="round", dtick=1))
    return fig


class DashboardTab:
    def __init__(self, settings: Settings, auth: Auth):
        self.settings, self.db, self.auth = settings, settings.db, auth

    def allowed(self, user) -> bool:
        return bool(user) and (user.is_admin or bool(self.settings.dashboard_for_annotators))

    def _check(self, request: gr.Request):
        user = self.auth.require_user(request)
        if not self.allowed(user):
            raise gr.Error("The dashboard is for admins (an admin can open it to annotators: "
                           "ALT_DASHBOARD_FOR_ANNOTATORS=1).", title="Forbidden")
        return user

    def _refresh(self, task, request: gr.Request):
        self._check(request)
        if not task:
            return {self.note: "No task yet: start a demo (**Admin → Start**) or import prompts (**Admin → Data**).",
                    self.evals: pd.DataFrame(columns=EVAL_COLUMNS), self.plot: None, self.diversity: None,
                    self.throughput_plot: None,
                    self.agreement: pd.DataFrame(), self.versions: pd.DataFrame(reports.version_rows(self.db))}
        try:
            rows = reports.round_metrics(self.db, task)
            labels = reports.throughput(self.db, task)
            agree = reports.agreement_by_round(self.db, task)
        except ValueError as e:
            raise gr.Error(str(e)) from e
        categories = pg.feedback_choices(self.db, task)[:-1]
        note = (f"**{task}**: {len(rows)} evaluated versions over {len({r['round'] for r in rows})} rounds."
                if rows else EMPTY)
        if not labels:
            note += "  \nNo human labels yet: annotators label in the Annotate tab once a round is sampled."
        return {self.note: note, self.evals: evaluations_frame(rows),
                self.plot: metrics_figure(rows, categories) if rows else None,
                self.diversity: diversity_figure(rows) if rows else None,
                self.throughput_plot: throughput_figure(labels) if labels else None,
                self.agreement: pd.DataFrame(agree, columns=["round", "ai_source", "items", "agreement", "kappa"]),
                self.versions: pd.DataFrame(reports.version_rows(self.db))}

    def build_ui(self) -> None:
        with gr.Row():
            self.task = gr.Dropdown(label="Task", choices=[], elem_id="dash-task")
            refresh = gr.Button("Refresh", size="sm", elem_id="dash-refresh")
        self.note = gr.Markdown(elem_id="dash-note", latex_delimiters=[])
        self.evals = gr.Dataframe(label="Evaluated versions (probe prompts; 95% CIs over prompts)", interactive=False,
                                  elem_id="dash-evals")
        self.plot = gr.Plot(label="Alignment per round", elem_id="dash-plot")
        with gr.Row():
            self.diversity = gr.Plot(label="Diversity", elem_id="dash-diversity")
            self.throughput_plot = gr.Plot(label="Annotation throughput", elem_id="dash-throughput")
        self.agreement = gr.Dataframe(label="Human vs AI labels per round (human side: the majority label)",
                                      interactive=False, elem_id="dash-agreement")
        self.versions = gr.Dataframe(label="Model versions and their lineage", interactive=False,
                                     elem_id="dash-versions")
        outputs = [self.note, self.evals, self.plot, self.diversity, self.throughput_plot, self.agreement,
                   self.versions]
        self.outputs = outputs
        refresh.click(self._refresh, self.task, outputs, api_name="dashboard_refresh")
        self.task.change(self._refresh, self.task, outputs, api_visibility="private")
        self.load_outputs = [self.task]

    def _open(self, task, request: gr.Request):
        """The tab opened: the task list as it is now (a demo started since the page loaded adds one), kept on the
        chosen task if it has rounds, else on the newest round's, and the figures refreshed."""
        self._check(request)
        tasks = pg.task_names(self.db)
        latest = reports.latest_task(self.db)
        if task not in tasks or (latest and task != latest and not reports.round_rows(self.db, task)):
            task = latest or (tasks[0] if tasks else None)
        return {self.task: gr.update(choices=tasks, value=task), **self._refresh(task, request)}

    def wire_open(self, tab: gr.Tab) -> None:
        tab.select(self._open, self.task, [self.task, *self.outputs], api_visibility="private",
                   show_progress="hidden")

    def page_load(self, user) -> tuple:
        if not self.allowed(user):
            return (gr.update(choices=[]),)
        tasks = pg.task_names(self.db)
        return (gr.update(choices=tasks, value=reports.latest_task(self.db) or (tasks[0] if tasks else None)),)
