"""Console · Models: every version with its parent, round, metrics, status and the job that made it;
promote (hot swap in this process's model server) and roll back."""

from __future__ import annotations

import gradio as gr

from alt_engine import reports
from alt_engine.db import session_scope
from alt_engine.jobs import job_logs
from alt_engine.versions import promote, rollback

from . import ConsoleTab

COLUMNS = ["id", "name", "status", "parent", "round", "objective", "job", "metrics", "error"]


class ModelsTab(ConsoleTab):
    title = "Models"

    def table(self):
        return self.frame(reports.version_rows(self.db), COLUMNS)

    def _promote(self, version_id, request: gr.Request):
        self.auth.require_admin(request)
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
        return self.table(), f"Now serving **{row.name}**."

    def _rollback(self, request: gr.Request):
        self.auth.require_admin(request)
        try:
            if self.hub is not None:
                row = self.hub.rollback()
            else:
                with session_scope(self.db) as s:
                    row = rollback(s)
        except ValueError as e:
            raise self.error(e) from e
        return self.table(), f"Rolled back: now serving **{row.name}**."

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
        message = gr.Markdown(elem_id="console-models-message", latex_delimiters=[])
        job_log = gr.Textbox(label="The job that made it", lines=8, interactive=False, elem_id="console-model-job")
        prom.click(self._promote, [version], [table, message], api_name="admin_promote")
        back.click(self._rollback, None, [table, message], api_name="admin_rollback")
        refresh.click(self._refresh, None, [table], api_name="admin_models")
        table.select(self._select, None, [version, job_log], api_name="admin_model_select")
        self.table_out = table
        self.load_outputs = [table]

    def page_load(self):
        return {self.table_out: self.table()}
