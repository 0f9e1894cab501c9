"""Console · Models: every version with its parent, round, metrics, status and the job that made it (a link:
**Open its job** shows that job in the Jobs tab); promote (hot swap in this process's model server) and roll
back, the page header following at once."""

from __future__ import annotations

import html

import gradio as gr
from sqlmodel import select

from alt_engine import reports
from alt_engine.db import ModelVersion, Task, session_scope
from alt_engine.jobs import job_logs, start_job
from alt_engine.versions import promote, rollback

from .base import ConsoleTab, header_markdown

COLUMNS = ["id", "name", "status", "parent", "round", "objective", "job", "metrics", "error"]
# short columns keep their headers on one line; the long text columns take the rest (wrapped)
COLUMN_WIDTHS = ["4em", "9em", "6em", "9em", "5em", "7em", "4em", "auto", "14em"]


def _ci(metrics: dict, key: str, signed: bool = False) -> str | None:
    v, ci = metrics.get(key), metrics.get(f"{key}_ci")
    if v is None:
        return None
    f = "{:+.3f}" if signed else "{:.3f}"
    return f.format(v) + (f" [{f.format(ci[0])}, {f.format(ci[1])}]" if ci and None not in ci else "")


def evaluation_markdown(db: str, version_id) -> str:
    """The evaluation a promotion decides on: the version's exemplar share and steer gap with 95% CIs beside its
    parent's, or a warning that there is none."""
    with session_scope(db) as s:
        v = s.get(ModelVersion, int(version_id)) if version_id else None
        parent = s.get(ModelVersion, v.parent_id) if v is not None and v.parent_id else None
    if v is None:
        return "Give a version id (or click a version) to see its evaluation."
    m, pm = v.metrics or {}, (parent.metrics or {}) if parent else {}
    if not m.get("eval"):
        return (f"⚠ **{v.name} has no evaluation**: promoting it rests on no measurement. Evaluate it first "
                "(**Evaluate** above: probe prompts under the best and the worst feedback, beside its parent).")
    ev = m["eval"]
    rows = [f"**{v.name}** evaluated on {ev.get('probe_prompts')} probe prompts × {ev.get('n')} "
            f"(provider `{ev.get('provider')}`, conditioned on {html.escape(repr(ev.get('conditioning')))}):"]
    for key, label, signed in (("exemplar_share", "exemplar share", False), ("mean_score", "mean reward", False),
                               ("steerability_gap", "steer gap (best − worst feedback)", True),
                               ("mean_words", "mean words", False), ("pct_truncated", "% truncated", False)):
        mine = _ci(m, key, signed)
        if mine is None:
            continue
        theirs = _ci(pm, key, signed) if parent else None
        rows.append(f"- {label}: **{mine}**" + (f" · parent {parent.name}: {theirs}" if theirs else ""))
    if parent is not None and not pm.get("eval"):
        rows.append(f"- its parent {parent.name} has no evaluation to compare with")
    return "\n".join(rows)


class ModelsTab(ConsoleTab):
    title = "Models"

    def table(self):
        return self.frame(reports.version_rows(self.db), COLUMNS)

    def _evaluation(self, version_id, request: gr.Request):
        self.auth.require_admin(request)
        return evaluation_markdown(self.db, version_id)

    def _evaluate(self, version_id, task, provider, request: gr.Request):
        """Queue an evaluation of the version (``alt eval``): the Dashboard plots it once done."""
        self.auth.require_admin(request)
        from alt_engine.plan import plan_eval

        if not version_id:
            raise self.error(ValueError("give a version id (or click a version) to evaluate"))
        with session_scope(self.db) as s:
            t = s.exec(select(Task).where(Task.name == (task or ""))).first()
            v = s.get(ModelVersion, int(version_id))
        if t is None:
            raise self.error(ValueError("choose the task whose probe prompts evaluate it"))
        if v is None:
            raise self.error(ValueError(f"no model version {version_id}"))
        try:
            spec = plan_eval(self.db, t, version_id=v.id, provider=(provider or "").strip() or None)
            if not spec.provider:
                raise ValueError(f"give a provider to judge the answers (e.g. rule:concise:auto): task {t.name!r} "
                                 "has none of its own")
        except ValueError as e:
            raise self.error(e) from e
        job_id = start_job(self.db, spec.kind, {**spec.params(), "settings": self.job_settings()})
        return f"Queued evaluation job {job_id} of **{v.name}** on **{t.name}** (judged by `{spec.provider}`)."

    def _promote(self, version_id, request: gr.Request):
        user = self.auth.require_admin(request)
        if not version_id:
            raise self.error(ValueError("give a version id"))
        try:
            if self.hub is not None:  # load, mark served, swap: requests in flight finish on the old model
                row = self.hub.promote(int(version_id))
            else:
                with session_scope(self.db) as s:
                    row = promote(s, int(version_id))
        except ValueError as e:
            raise self.error(e) from e
        return (self.table(), f"Now serving **{row.name}**.\n\n{evaluation_markdown(self.db, row.id)}",
                header_markdown(self.db, user))

    def _rollback(self, request: gr.Request):
        user = self.auth.require_admin(request)
        try:
            if self.hub is not None:
                row = self.hub.rollback()
            else:
                with session_scope(self.db) as s:
                    row = rollback(s)
        except ValueError as e:
            raise self.error(e) from e
        return self.table(), f"Rolled back: now serving **{row.name}**.", header_markdown(self.db, user)

    def job_of(self, version_id) -> int:
        """The job that made a version (refused when none did: the base model, a version made elsewhere)."""
        rows = {r["id"]: r for r in reports.version_rows(self.db)}
        row = rows.get(int(version_id or 0))
        if row is None:
            raise self.error(ValueError(f"no model version {version_id}"))
        if row["job"] in ("", None):
            raise self.error(ValueError(f"no job made {row['name']} (a base model or one registered by hand)"))
        return int(row["job"])

    def _open_job(self, version_id, request: gr.Request):
        """The link to the job that made the version: the Jobs tab, showing that job and its log."""
        self.auth.require_admin(request)
        job = self.job_of(version_id)
        return gr.Tabs(selected="console-jobs"), job, job_logs(self.db, job)

    def _refresh(self, request: gr.Request):
        self.auth.require_admin(request)
        return self.table()

    def _select(self, evt: gr.SelectData, request: gr.Request):
        """Clicking a version shows the job that made it."""
        self.auth.require_admin(request)
        row = evt.row_value if evt is not None else None
        if not row:
            return None, ""
        job = row[COLUMNS.index("job")]
        return (int(row[0]), job_logs(self.db, int(job)) if job not in ("", None) else "no job made this version",
                evaluation_markdown(self.db, int(row[0])))

    def build_ui(self) -> None:
        table = gr.Dataframe(label="Model versions (click one to see its evaluation and the job that made it)",
                             interactive=False, wrap=True, elem_id="console-models-table",
                             column_widths=COLUMN_WIDTHS)
        with gr.Row():
            version = gr.Number(label="Version id", precision=0, value=None, elem_id="console-version-id")
            prom = gr.Button("Promote", variant="primary", elem_id="console-promote")
            back = gr.Button("Roll back", elem_id="console-rollback")
            refresh = gr.Button("Refresh", size="sm", elem_id="console-models-refresh")
            self.open_job = gr.Button("Open its job", size="sm", elem_id="console-model-open-job")
        with gr.Row():
            task = gr.Dropdown(label="Evaluate on the probe prompts of task", choices=[], elem_id="console-eval-task")
            provider = gr.Textbox(label="Judged by (empty: the task's own provider)", elem_id="console-eval-provider")
            evaluate = gr.Button("Evaluate", elem_id="console-evaluate")
        self.message = gr.Markdown(elem_id="console-models-message", latex_delimiters=[])
        evaluation = gr.Markdown(elem_id="console-version-eval", latex_delimiters=[])
        job_log = gr.Textbox(label="The job that made it", lines=8, interactive=False, elem_id="console-model-job")
        refresh.click(self._refresh, None, [table], api_name="admin_models")
        table.select(self._select, None, [version, job_log, evaluation], api_name="admin_model_select")
        version.change(self._evaluation, [version], [evaluation], api_name="admin_model_evaluation",
                       show_progress="hidden")
        self.click(evaluate, self._evaluate, [version, task, provider], [self.message], self.message,
                   api_name="admin_evaluate")
        self.table_out, self.version, self.buttons, self.eval_task = table, version, (prom, back), task
        self.task_pickers = [task]
        self.load_outputs = [table]  # the task dropdown is filled as the tab opens (``open_pickers``)

    def wire(self, header: gr.Markdown, console_tabs: gr.Tabs, jobs) -> None:
        """Events that reach outside this tab: the page header (promote, roll back) and the Jobs tab (the link)."""
        prom, back = self.buttons
        self.click(prom, self._promote, [self.version], [self.table_out, self.message, header], self.message,
                   api_name="admin_promote")
        self.click(back, self._rollback, None, [self.table_out, self.message, header], self.message,
                   api_name="admin_rollback")
        self.open_job.click(self._open_job, [self.version], [console_tabs, jobs.job_id, jobs.log],
                            api_name="admin_model_job")

    def page_load(self):
        return {self.table_out: self.table()}
