"""Console · Start: the first-run page. It says what to do next from what the database holds (no prompts → start a
demo or import prompts; prompts → run a round; a round → watch it, read the Dashboard, promote, steer), and starts a
built-in demo task in one click: the task and its shipped prompt set (``alt prompts import --builtin NAME``)."""

from __future__ import annotations

import html

import gradio as gr
from sqlalchemy import func
from sqlmodel import select

from alt_engine.db import Job, JobStatus, ModelVersion, Prompt, Round, Task, session_scope
from alt_engine.prompts import import_builtin
from alt_engine.tasks import BUILTIN_TASKS, DEMOS

from .base import ConsoleTab


def first_run(db: str) -> bool:
    """No prompts anywhere yet: a new database (the page opens on Start for an admin)."""
    with session_scope(db) as s:
        return not s.exec(select(func.count()).select_from(Prompt)).one()


def next_step(db: str) -> str:
    """What an admin does next, from what the database holds (Markdown)."""
    with session_scope(db) as s:
        prompts = s.exec(select(func.count()).select_from(Prompt)).one()
        rounds = s.exec(select(func.count()).select_from(Round)).one()
        trained = s.exec(select(ModelVersion).where(ModelVersion.parent_id.is_not(None))).all()
        running = s.exec(select(Job).where(Job.status.in_(JobStatus.active()))).first()
    if not prompts:
        return ("**New database.** Start from a demo task below — its prompts ship with ALT Studio and its feedback "
                "is a rule that needs no network — or import your own prompts in **Data** (CSV / JSONL / parquet).")
    if running is not None:
        return (f"A {html.escape(running.kind)} job is {html.escape(str(running.status))}: watch it in **Rounds** "
                "(a round's stages) or **Jobs**.")
    if not rounds:
        return ("**Prompts are in. Next: Rounds → Run a round** — it samples the served model, labels the samples "
                "with the task's feedback, trains a new version, evaluates both and promotes by the rule you chose; "
                "the form shows an estimate before it starts.")
    if not any("exemplar_share" in (v.metrics or {}) or "eval" in (v.metrics or {}) for v in trained):
        return ("A round has been sampled. Run a whole round (**Rounds → Run a round**), or train in **Training** "
                "and evaluate the new version in **Models → Evaluate**: the **Dashboard** plots evaluated versions.")
    return ("**Evaluated versions exist.** The **Dashboard** shows the base and each new version with 95% CIs and "
            "the steer gap; promote one in **Models** (it shows the evaluation it decides on), then steer it in "
            "the **Playground**. Another **Run a round** goes on from the served version.")


class StartTab(ConsoleTab):
    title = "Start"

    def demos_markdown(self) -> str:
        rows = []
        with session_scope(self.db) as s:
            for name, demo in DEMOS.items():
                task = s.exec(select(Task).where(Task.name == name)).first()
                have = s.exec(select(func.count()).where(Prompt.task_id == task.id)).one() if task else 0
                shipped = sum(1 for line in demo.prompt_file.read_text().splitlines() if line.strip())
                state = f" — started: {have} prompts" if have else ""
                rows.append(f"- **{name}**: {html.escape(BUILTIN_TASKS[name]['description'])} {shipped} prompts; "
                            f"feedback `{demo.provider}`{state}")
        return "\n".join(rows)

    def _demo(self, name: str, request: gr.Request):
        self.auth.require_admin(request)
        if name not in DEMOS:
            raise self.error(ValueError(f"no demo task {name!r} (demo tasks: {', '.join(DEMOS)})"))
        try:
            report = import_builtin(self.db, name)
        except ValueError as e:
            raise self.error(e) from e
        names = self.task_names()
        return (f"Started the **{name}** demo: {html.escape(str(report))}. **Next: Run a round** (Rounds, opened "
                f"for you; its feedback is `{DEMOS[name].provider}`).",
                next_step(self.db), self.demos_markdown(), gr.update(choices=names, value=name))

    def _refresh(self, request: gr.Request):
        self.auth.require_admin(request)
        return next_step(self.db), self.demos_markdown()

    def build_ui(self) -> None:
        self.next = gr.Markdown(elem_id="console-start-next", latex_delimiters=[])
        gr.Markdown("**Start from a demo task** (one click: the task and its shipped prompt set)")
        self.demos = gr.Markdown(elem_id="console-start-demos", latex_delimiters=[])
        with gr.Row():
            self.demo_buttons = {name: gr.Button(f"Start the {name} demo", variant="primary",
                                                 elem_id=f"console-demo-{name}") for name in DEMOS}
        self.message = gr.Markdown(elem_id="console-start-message", latex_delimiters=[])
        self.load_outputs = [self.next, self.demos]
        self.on_select, self.select_outputs = self._refresh, [self.next, self.demos]

    def wire(self, console_tabs: gr.Tabs, round_task: gr.Dropdown) -> list:
        """A demo started: its task chosen in Rounds' round form, and the Rounds tab opened. The events (they
        create a task: ``build_console`` refreshes every task dropdown after them)."""
        return [self.click(button, self._starter(name), None,
                           [self.message, self.next, self.demos, round_task, console_tabs], self.message,
                           api_name=f"admin_start_demo_{name}") for name, button in self.demo_buttons.items()]

    def _starter(self, name: str):
        def start(request: gr.Request):
            return (*self._demo(name, request), gr.Tabs(selected="console-rounds"))

        return start

    def page_load(self):
        return {self.next: next_step(self.db), self.demos: self.demos_markdown()}
