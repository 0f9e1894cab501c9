"""Console · Rounds: start a sampling round, run an AI provider on a round's unlabelled generations, close a
round; per round, how many items people labelled, AI labelled, are unlabelled and flagged."""

from __future__ import annotations

import gradio as gr
from sqlmodel import select

from alt_engine import reports
from alt_engine.db import ModelVersion, Round, Task, session_scope
from alt_engine.jobs import job_settings, start_job

from . import ConsoleTab

COLUMNS = ["task", "round", "status", "model", "prompts", "generations", "human", "ai", "unlabelled", "flagged",
           "truncated"]
CONDITIONS = ["auto (exemplar if trained)", "exemplar", "none"]


def round_choices(db: str) -> list[tuple[str, int]]:
    """(label, round id) for every round, newest first."""
    with session_scope(db) as s:
        rows = s.exec(select(Round, Task.name).join(Task).order_by(Round.id.desc())).all()
        return [(f"{name} · round {r.number} ({r.status})", r.id) for r, name in rows]


def version_choices(db: str) -> list[tuple[str, int]]:
    with session_scope(db) as s:
        return [(f"{v.name} ({v.status})", v.id) for v in s.exec(select(ModelVersion).order_by(ModelVersion.id.desc()))
                if v.status in ("served", "ready")]


class RoundsTab(ConsoleTab):
    title = "Rounds"

    def table(self):
        return self.frame(reports.round_rows(self.db), COLUMNS)

    def budget(self) -> str:
        s = self.settings
        lim = lambda n: "unlimited" if not n else str(n)  # noqa: E731
        return (f"LLM judge budget per run: {lim(s.llm_max_requests)} requests, {lim(s.llm_max_tokens)} tokens "
                f"(ALT_LLM_MAX_REQUESTS / ALT_LLM_MAX_TOKENS); rules and reward models cost nothing.")

    def _task_id(self, name: str) -> int:
        with session_scope(self.db) as s:
            task = s.exec(select(Task).where(Task.name == name)).first()
        if task is None:
            raise self.error(ValueError("choose a task"))
        return task.id

    def _sample(self, task, version_id, limit, n, temperature, top_p, max_tokens, condition, condition_text,
                request: gr.Request):
        self.auth.require_admin(request)
        from alt_engine.sampling import SamplingParams

        sampling = dict(n=int(n or 4), temperature=float(temperature), top_p=float(top_p),
                        max_new_tokens=int(max_tokens or 64))
        try:
            SamplingParams(**sampling)
        except ValueError as e:
            raise self.error(e) from e
        cond = (condition_text or "").strip() or ("auto" if (condition or "").startswith("auto") else condition)
        params = dict(task_id=self._task_id(task), version_id=int(version_id) if version_id else None,
                      limit=int(limit) if limit else None, sampling=sampling, condition=cond,
                      settings=job_settings(self.settings))
        job_id = start_job(self.db, "sample", params)
        return self.table(), f"Queued sampling job {job_id}: watch it in **Jobs**.", gr.update(
            choices=round_choices(self.db))

    def _feedback(self, round_id, provider, request: gr.Request):
        self.auth.require_admin(request)
        if not round_id:
            raise self.error(ValueError("choose a round"))
        if not (provider or "").strip():
            raise self.error(ValueError("give a provider, e.g. rule:concise:auto"))
        job_id = start_job(self.db, "feedback", dict(round_id=int(round_id), provider=provider.strip(),
                                                     settings=job_settings(self.settings)))
        return self.table(), f"Queued feedback job {job_id} on the round's unlabelled generations."

    def _close(self, round_id, request: gr.Request):
        self.auth.require_admin(request)
        if not round_id:
            raise self.error(ValueError("choose a round"))
        try:
            rnd = reports.close_round(self.db, int(round_id))
        except ValueError as e:
            raise self.error(e) from e
        return self.table(), f"Closed round {rnd.number}.", gr.update(choices=round_choices(self.db))

    def _refresh(self, request: gr.Request):
        self.auth.require_admin(request)
        return self.table(), gr.update(choices=round_choices(self.db)), gr.update(choices=version_choices(self.db))

    def build_ui(self) -> None:
        table = gr.Dataframe(label="Rounds (items per state)", interactive=False, elem_id="console-rounds-table")
        refresh = gr.Button("Refresh", size="sm", elem_id="console-rounds-refresh")
        gr.Markdown("**Start a sampling round**")
        with gr.Row():
            task = gr.Dropdown(label="Task", choices=[], elem_id="console-sample-task")
            version = gr.Dropdown(label="Model version (empty: the served one)", choices=[],
                                  elem_id="console-sample-version")
            limit = gr.Number(label="Prompts (empty: all)", precision=0, value=None, elem_id="console-sample-limit")
            n = gr.Number(label="Samples per prompt (n)", precision=0, value=4, elem_id="console-sample-n")
        with gr.Row():
            temperature = gr.Number(label="Temperature", value=1.0)
            top_p = gr.Number(label="top_p", value=0.9)
            max_tokens = gr.Number(label="Max new tokens", precision=0, value=64, elem_id="console-sample-max-tokens")
            condition = gr.Dropdown(label="Conditioning", choices=CONDITIONS, value=CONDITIONS[0])
            condition_text = gr.Textbox(label="… or this feedback text")
        sample = gr.Button("Start sampling", variant="primary", elem_id="console-sample")
        gr.Markdown("**AI feedback on a round's unlabelled generations** · **Close a round**")
        with gr.Row():
            rnd = gr.Dropdown(label="Round", choices=[], elem_id="console-round-pick")
            provider = gr.Textbox(label="Provider (rule:… | reward:… | llm:categorical | llm:free_text)",
                                  value="rule:concise:auto", elem_id="console-provider")
            run = gr.Button("Run provider", elem_id="console-run-provider")
            close = gr.Button("Close round", variant="stop", elem_id="console-close-round")
        gr.Markdown(self.budget())
        message = gr.Markdown(elem_id="console-rounds-message", latex_delimiters=[])

        sample.click(self._sample, [task, version, limit, n, temperature, top_p, max_tokens, condition,
                                    condition_text], [table, message, rnd], api_name="admin_start_sampling")
        run.click(self._feedback, [rnd, provider], [table, message], api_name="admin_run_provider")
        close.click(self._close, [rnd], [table, message, rnd], api_name="admin_close_round")
        refresh.click(self._refresh, None, [table, rnd, version], api_name="admin_rounds")
        self.table_out, self.task_pick, self.round_pick, self.version_pick = table, task, rnd, version
        self.load_outputs = [table, task, rnd, version]

    def page_load(self):
        names = self.task_names()
        rounds = round_choices(self.db)
        return {self.table_out: self.table(),
                self.task_pick: gr.update(choices=names, value=names[0] if names else None),
                self.round_pick: gr.update(choices=rounds, value=rounds[0][1] if rounds else None),
                self.version_pick: gr.update(choices=version_choices(self.db), value=None)}
