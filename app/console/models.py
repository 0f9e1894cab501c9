"""Console · Models: every version with its parent, round, metrics, status and the job that made it (a link:
**Open its job** shows that job in the Jobs tab); promote (hot swap in this process's model server) and roll
back, the page header following at once."""

from __future__ import annotations

import gradio as gr

from alt_engine import reports
from alt_engine.db import session_scope
from alt_engine.jobs import job_logs
from alt_engine.versions import promote, rollback

from .base import ConsoleTab, header_markdown

COLUMNS = ["id", "name", "status", "parent", "round", "objective", "job", "metrics", "error"]


class ModelsTab(ConsoleTab):
    title = "Models"

    def table(self):
        return self.frame(reports.version_rows(self.db), COLUMNS)

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
        return self.table(), f"Now serving **{row.name}**.", header_markdown(self.db, user)

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
        return int(row[0]), (job_logs(self.db, int(job)) if job not in ("", None) else "no job made this version")

    def build_ui(self) -> None:
        table = gr.Dataframe(label="Model versions (click one to see the job that made it)", interactive=False,
                             wrap=True, elem_id="console-models-table")
        with gr.Row():
            version = gr.Number(label="Version id", precision=0, value=None, elem_id="console-version-id")
            prom = gr.Button("Promote", variant="primary", elem_id="console-promote")
            back = gr.Button("Roll back", elem_id="console-rollback")
            refresh = gr.Button("Refresh", size="sm", elem_id="console-models-refresh")
            self.open_job = gr.Button("Open its job", size="sm", elem_id="console-model-open-job")
        self.message = gr.Markdown(elem_id="console-models-message", latex_delimiters=[])
        job_log = gr.Textbox(label="The job that made it", lines=8, interactive=False, elem_id="console-model-job")
        refresh.click(self._refresh, None, [table], api_name="admin_models")
        table.select(self._select, None, [version, job_log], api_name="admin_model_select")
        self.table_out, self.version, self.buttons = table, version, (prom, back)
        self.load_outputs = [table]

    def wire(self, header: gr.Markdown, console_tabs: gr.Tabs, jobs) -> None:
        """Events that reach outside this tab: the page header (promote, roll back) and the Jobs tab (the link)."""
        prom, back = self.buttons
        prom.click(self._promote, [self.version], [self.table_out, self.message, header], api_name="admin_promote")
        back.click(self._rollback, None, [self.table_out, self.message, header], api_name="admin_rollback")
        self.open_job.click(self._open_job, [self.version], [console_tabs, jobs.job_id, jobs.log],
                            api_name="admin_model_job")

    def page_load(self):
        return {self.table_out: self.table()}
