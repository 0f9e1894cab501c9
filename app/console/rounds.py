"""Console · Rounds: start a sampling round, run an AI provider on a round's unlabelled generations, close a
round; per round, how many items people labelled, AI labelled, are unlabelled and flagged. The sampling backend
rounds use — in process, or an OpenAI-compatible server such as ``vllm serve`` (base URL + model name) — is set
here too (stored in the database: every app process, the worker and the CLI use it)."""

from __future__ import annotations

import gradio as gr
import httpx
from sqlmodel import select

from alt_engine import reports
from alt_engine.db import ModelVersion, Round, Task, session_scope
from alt_engine.jobs import start_job
from alt_engine.settings import BACKENDS, save_settings, stored_settings

from .base import ConsoleTab

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
                      settings=self.job_settings())
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
                                                     settings=self.job_settings()))
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

    def _exemplars(self, task, request: gr.Request):
        self.auth.require_admin(request)
        if not task:
            raise self.error(ValueError("choose a task"))
        try:
            return self.frame(reports.exemplar_rows(self.db, task), ["exemplar", "kind"])
        except ValueError as e:
            raise self.error(e) from None

    # ---- the sampling backend (settings.STORED, in the database)

    def sampling_summary(self) -> str:
        s = self.settings.with_stored()
        stored = stored_settings(self.db)
        where = (f"the server **{s.sampling_base_url or '(no URL set)'}**, base model served as "
                 f"**{s.sampling_model or '(no name set)'}**" if s.backend == "openai" else "this machine")
        origin = "set here" if "backend" in stored else "from the environment (ALT_BACKEND)"
        return f"Rounds sample with **{s.backend}** ({origin}) on {where}."

    def _save_sampling(self, backend, base_url, model, concurrency, request: gr.Request):
        user = self.auth.require_admin(request)
        if backend == "openai" and not ((base_url or "").strip() and (model or "").strip()):
            raise self.error(ValueError("an OpenAI-compatible server needs its base URL and the base model's name"))
        try:
            save_settings(self.db, user.name, backend=backend, sampling_base_url=base_url, sampling_model=model,
                          sampling_concurrency=int(concurrency) if concurrency else None)
        except ValueError as e:
            raise self.error(e) from e
        return self.sampling_summary()

    def _check_sampling(self, base_url, model, request: gr.Request, key: str | None = None):
        """Ask the server for its models (``GET {base}/models``): reachable, and does it serve this name?

        The configured key (ALT_SAMPLING_API_KEY) goes to the configured URL only; any other URL gets the key
        typed here, or none — a typed URL must not collect the stored secret."""
        self.auth.require_admin(request)
        from alt_engine.openai_backend import list_server_models

        base = (base_url or "").strip()
        if not base:
            raise self.error(ValueError("give the server's base URL, e.g. http://gpu-box:8000/v1"))
        configured = self.settings.with_stored().sampling_base_url.strip().rstrip("/")
        key = (key or "").strip() or (self.settings.sampling_api_key if base.rstrip("/") == configured else "")
        try:
            names = list_server_models(base, key, timeout=10)
        except httpx.HTTPStatusError as e:
            return (f"**{base}** answers HTTP {e.response.status_code} to `GET /models`"
                    + (": check the API key (ALT_SAMPLING_API_KEY)." if e.response.status_code in (401, 403) else "."))
        except Exception as e:
            return f"Cannot reach **{base}**: {type(e).__name__}: {e}"
        found = (model or "").strip() in names
        return (f"**{base}** answers; it serves {', '.join(f'`{n}`' for n in names) or 'no model'}"
                + ("" if found or not model else f" — not `{model.strip()}`: check the name."))

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
        with gr.Accordion("Exemplar pool (what round ≥ 2 samples are conditioned on; read-only)", open=False):
            show_exemplars = gr.Button("Show the exemplar pool of the task above", size="sm",
                                       elem_id="console-exemplars-show")
            exemplars = gr.Dataframe(interactive=False, elem_id="console-exemplars")
        with gr.Accordion("Sampling backend (where rounds sample)", open=False):
            summary = gr.Markdown(elem_id="console-sampling-summary", latex_delimiters=[])
            with gr.Row():
                backend = gr.Dropdown(label="Backend", choices=list(BACKENDS), value=self.settings.backend,
                                      elem_id="console-sampling-backend")
                base_url = gr.Textbox(label="Server base URL (openai: any OpenAI-compatible completions server, "
                                            "e.g. vllm serve)", placeholder="http://gpu-box:8000/v1",
                                      elem_id="console-sampling-url")
                model = gr.Textbox(label="Model name the server serves the base model under",
                                   elem_id="console-sampling-model")
                concurrency = gr.Number(label="Parallel requests", precision=0, value=None)
                check_key = gr.Textbox(label="API key to test a new URL with (the configured key goes to the "
                                             "saved URL only)", type="password", elem_id="console-sampling-key")
            with gr.Row():
                save = gr.Button("Save", variant="primary", elem_id="console-sampling-save")
                check = gr.Button("Test the server", elem_id="console-sampling-check")
            gr.Markdown("Trained versions are asked for under their own names (a LoRA adapter is loaded into the "
                        "server when it allows runtime loading; else the round's log says which path to serve). "
                        "The API key comes from the environment (ALT_SAMPLING_API_KEY).")

        sample.click(self._sample, [task, version, limit, n, temperature, top_p, max_tokens, condition,
                                    condition_text], [table, message, rnd], api_name="admin_start_sampling")
        run.click(self._feedback, [rnd, provider], [table, message], api_name="admin_run_provider")
        show_exemplars.click(self._exemplars, [task], [exemplars], api_name="admin_exemplar_pool")
        close.click(self._close, [rnd], [table, message, rnd], api_name="admin_close_round")
        refresh.click(self._refresh, None, [table, rnd, version], api_name="admin_rounds")
        save.click(self._save_sampling, [backend, base_url, model, concurrency], [summary],
                   api_name="admin_save_sampling")
        check.click(self._check_sampling, [base_url, model, check_key], [summary], api_name="admin_check_sampling")
        self.table_out, self.task_pick, self.round_pick, self.version_pick = table, task, rnd, version
        self.sampling_out = (summary, backend, base_url, model, concurrency)
        self.task_pickers = [task]
        self.load_outputs = [table, task, rnd, version, *self.sampling_out]

    def page_load(self):
        names = self.task_names()
        rounds = round_choices(self.db)
        return {self.table_out: self.table(),
                self.task_pick: gr.update(choices=names, value=names[0] if names else None),
                self.round_pick: gr.update(choices=rounds, value=rounds[0][1] if rounds else None),
                self.version_pick: gr.update(choices=version_choices(self.db), value=None),
                **self.sampling_load()}

    def sampling_load(self) -> dict:
        s = self.settings.with_stored()
        summary, backend, base_url, model, concurrency = self.sampling_out
        return {summary: self.sampling_summary(), backend: gr.update(value=s.backend),
                base_url: gr.update(value=s.sampling_base_url), model: gr.update(value=s.sampling_model),
                concurrency: gr.update(value=s.sampling_concurrency)}
