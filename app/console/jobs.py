"""Console · Jobs: live progress (stage, step, loss, ETA), logs, cancel, retry. A job whose process died
reads as failed here as everywhere (``jobs.list_jobs`` refreshes first)."""

from __future__ import annotations

import html

import gradio as gr

from alt_engine.jobs import cancel_job, job_logs, list_jobs, retry_job
from alt_engine.vocab import JobStatus

from .base import ConsoleTab

COLUMNS = ["id", "kind", "status", "stage", "progress", "step", "loss", "eta", "round", "version", "retry_of",
           "created", "finished", "message"]
# fixed widths for the short columns, the message takes what is left and wraps: the table fits the page
COLUMN_WIDTHS = ["3.5em", "5.5em", "6.5em", "9em", "5.5em", "4em", "5em", "4.5em", "4.5em", "5em", "5em", "10.5em",
                 "6em", "auto"]


def _eta(s: float | None) -> str:
    if s is None:
        return ""
    return f"{s / 60:.0f} min" if s >= 90 else f"{s:.0f} s"


def progress_html(jobs) -> str:
    """A progress bar per queued or running job (all text escaped)."""
    active = [j for j in jobs if j.status in JobStatus.active()]
    if not active:
        return '<div id="console-no-active-jobs">No job running.</div>'
    parts = []
    for j in active:
        pct = round(100 * j.progress)
        bits = [f"step {j.step}" if j.step is not None else "", f"loss {j.loss:.4f}" if j.loss is not None else "",
                f"ETA {_eta(j.eta_s)}" if j.eta_s is not None else ""]
        detail = " · ".join(b for b in bits if b)
        parts.append(
            f'<div class="alt-job" data-job="{j.id}" data-status="{html.escape(j.status)}" data-progress="{pct}">'
            f"<b>job {j.id} · {html.escape(j.kind)}</b> — {html.escape(j.status)} · {html.escape(j.stage or '')} "
            f'<progress value="{pct}" max="100" style="width: 40%"></progress> <span class="alt-pct">{pct}%</span> '
            f"{html.escape(detail)}</div>")
    return "\n".join(parts)


class JobsTab(ConsoleTab):
    title = "Jobs"
    timer: gr.Timer | None = None  # the page's 2-second clock, set by build_console before build_ui

    def views(self):
        jobs = list_jobs(self.db, 50)
        rows = [dict(id=j.id, kind=j.kind, status=j.status, stage=j.stage, progress=f"{100 * j.progress:.0f}%",
                     step=j.step if j.step is not None else "", loss=f"{j.loss:.4f}" if j.loss is not None else "",
                     eta=_eta(j.eta_s), round=j.round_id or "", version=j.version_id or "", retry_of=j.retry_of or "",
                     message=((j.error or j.message or "").splitlines() or [""])[0][:200],
                     created=j.created.replace("T", " ")[:19], finished=j.finished[11:19]) for j in jobs]
        return progress_html(jobs), self.frame(rows, COLUMNS)

    def _refresh(self, request: gr.Request):
        self.auth.require_admin(request)
        return self.views()

    def _logs(self, job_id, request: gr.Request):
        self.auth.require_admin(request)
        if not job_id:
            raise self.error(ValueError("give a job id"))
        try:
            return job_logs(self.db, int(job_id)), ""
        except ValueError as e:
            raise self.error(e) from e

    def _cancel(self, job_id, request: gr.Request):
        self.auth.require_admin(request)
        try:
            job = cancel_job(self.db, int(job_id or 0))
        except ValueError as e:
            raise self.error(e) from e
        said = "cancelled" if job.status == JobStatus.CANCELLED else "cancel requested"
        return (*self.views(), f"Job {job.id}: {said}.")

    def _retry(self, job_id, request: gr.Request):
        self.auth.require_admin(request)
        try:
            new = retry_job(self.db, int(job_id or 0))
        except ValueError as e:
            raise self.error(e) from e
        return (*self.views(), f"Queued job {new} (retry of {job_id}).")

    def _select(self, evt: gr.SelectData, request: gr.Request):
        self.auth.require_admin(request)
        row = evt.row_value if evt is not None else None
        return int(row[0]) if row else None

    def build_ui(self) -> None:
        bars = gr.HTML(elem_id="console-job-progress")
        table = gr.Dataframe(label="Jobs (newest first, refreshed every 2 s)", interactive=False, wrap=True,
                             column_widths=COLUMN_WIDTHS, elem_id="console-jobs-table")
        with gr.Row():
            job_id = gr.Number(label="Job id (or click a row)", precision=0, value=None, elem_id="console-job-id")
            logs = gr.Button("Logs", size="sm", elem_id="console-job-logs")
            cancel = gr.Button("Cancel", size="sm", variant="stop", elem_id="console-job-cancel")
            retry = gr.Button("Retry", size="sm", elem_id="console-job-retry")
        message = gr.Markdown(elem_id="console-job-message", latex_delimiters=[])
        log = gr.Textbox(label="Log", lines=14, max_lines=30, interactive=False, elem_id="console-job-log")
        if self.timer is None:  # build_console passes the page's clock (outside the tabs); else one of its own
            self.timer = gr.Timer(2, active=False)  # switched on for admins by page_load
        self.timer.tick(self._refresh, None, [bars, table], api_name="admin_jobs_tick", show_progress="hidden")
        self.click(logs, self._logs, [job_id], [log, message], message, api_name="admin_job_logs")
        self.click(cancel, self._cancel, [job_id], [bars, table, message], message, api_name="admin_job_cancel")
        self.click(retry, self._retry, [job_id], [bars, table, message], message, api_name="admin_job_retry")
        table.select(self._select, None, [job_id], api_name="admin_job_select")
        self.bars, self.table_out, self.job_id, self.log = bars, table, job_id, log
        self.load_outputs = [bars, table, self.timer]

    def page_load(self):
        bars, table = self.views()
        return {self.bars: bars, self.table_out: table, self.timer: gr.Timer(active=True)}
