"""Console · Queue: which items annotators get next and why (the task's queue order and its scores), and a
button that queues the ``score`` job. Scores are for admins only: the Annotate tab and the JSON API never
show them."""

from __future__ import annotations

import gradio as gr

from alt_engine.jobs import start_job
from alt_engine.reports import explain_queue

from .base import ConsoleTab

COLUMNS = ["position", "generation", "prompt", "prompt_labels", "uncertainty", "guess", "disagreement", "why",
           "response"]


class QueueTab(ConsoleTab):
    title = "Queue"

    def table(self, task: str | None, limit: int = 20):
        if not task:
            return self.frame([], COLUMNS)
        try:
            rows = explain_queue(self.db, task, int(limit or 20))
        except ValueError as e:
            raise self.error(e) from e
        for r in rows:
            for k in ("uncertainty", "disagreement"):
                r[k] = "" if r[k] is None else round(r[k], 3)
        return self.frame(rows, COLUMNS)

    def _show(self, task, limit, request: gr.Request):
        self.auth.require_admin(request)
        return self.table(task, limit), self._summary(task)

    def _summary(self, task: str | None) -> str:
        from alt_engine.db import Task, select, session_scope

        with session_scope(self.db) as s:
            row = s.exec(select(Task).where(Task.name == task)).first() if task else None
        if row is None:
            return "Choose a task."
        return (f"Task **{row.name}** hands out items by **{row.queue_strategy}** (set it in **Tasks**). "
                "Uncertainty and disagreement are scored by a job after each sampling round; score again "
                "after new AI or human labels.")

    def _score(self, task, request: gr.Request):
        self.auth.require_admin(request)
        from alt_engine.db import Task, select, session_scope

        with session_scope(self.db) as s:
            row = s.exec(select(Task).where(Task.name == task)).first() if task else None
        if row is None:
            raise self.error(ValueError("choose a task"))
        job_id = start_job(self.db, "score", {"task_id": row.id, "uncertainty": True, "settings": self.job_settings()})
        return f"Queued scoring job {job_id} on the open rounds of **{row.name}**: watch it in **Jobs**."

    def build_ui(self) -> None:
        with gr.Row():
            task = gr.Dropdown(label="Task", choices=[], elem_id="console-queue-task")
            limit = gr.Number(label="Items shown", value=20, precision=0, minimum=1, maximum=500)
            show = gr.Button("Show the next items", size="sm", elem_id="console-queue-show")
            score = gr.Button("Score now", size="sm", elem_id="console-queue-score")
        summary = gr.Markdown(elem_id="console-queue-summary", latex_delimiters=[])
        table = gr.Dataframe(label="Next in the queue (as someone who has labelled none of them gets them)",
                             interactive=False, wrap=True, elem_id="console-queue-table")
        message = gr.Markdown(elem_id="console-queue-message", latex_delimiters=[])
        show.click(self._show, [task, limit], [table, summary], api_name="admin_queue_show")
        score.click(self._score, [task], [message], api_name="admin_queue_score")
        self.task_pickers = [task]
        self.pick = task
        self.load_outputs = []  # the task dropdown is filled as the tab opens (``open_pickers``)
