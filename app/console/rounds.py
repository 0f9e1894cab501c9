"""Console · Rounds: start a sampling round, run an AI provider on a round's unlabelled generations, close a
round; per round, how many items people labelled, AI labelled, are unlabelled and flagged. The sampling backend
rounds use — in process, or an OpenAI-compatible server such as ``vllm serve`` (base URL + model name) — is set
here too (stored in the database: every app process, the worker and the CLI use it)."""

from __future__ import annotations

import html

import gradio as gr
import httpx
from sqlmodel import select

from alt_engine import reports
from alt_engine.db import Job, JobKind, JobStatus, ModelVersion, Round, Task, VersionStatus, session_scope
from alt_engine.jobs import refresh, start_job
from alt_engine.plan import PROMOTE, defaults, plan_round, plan_sample
from alt_engine.settings import BACKENDS, save_settings, stored_settings

from .base import ConsoleTab, header_markdown, refusable

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
                if v.status in (VersionStatus.SERVED, VersionStatus.READY)]


STAGE_NAMES = {"sample": "sample", "feedback": "feedback", "evaluate_parent": "evaluate parent", "pool": "pool",
               "train": "train", "evaluate": "evaluate", "promote": "promote"}


def round_progress_html(job: Job | None, rounds_db: str) -> str:
    """The newest round job, stage by stage: one segment per stage of ``rounds.STAGES`` (done, running with its
    share, to come), then the decision once it finished. All text escaped."""
    from alt_engine.rounds import STAGES

    if job is None:
        return '<div id="console-round-none">No round run from here yet.</div>'
    n = len(STAGES)
    at = STAGES.index(job.stage) if job.stage in STAGES else (n if job.status == JobStatus.SUCCEEDED else -1)
    within = max(0.0, min(1.0, (job.progress or 0) * n - at)) if 0 <= at < n else 0.0
    cells = []
    for i, stage in enumerate(STAGES):
        done = i < at or job.status == JobStatus.SUCCEEDED
        share = 100 if done else round(100 * within) if i == at else 0
        state = "done" if done else ("failed" if i == at and job.status in (JobStatus.FAILED, JobStatus.CANCELLED) else
                                     "running" if i == at else "todo")
        cells.append(f'<div class="alt-stage" data-stage="{stage}" data-state="{state}" style="flex: 1">'
                     f'<div style="font-size: 0.85em">{"✓ " if done else ""}{STAGE_NAMES[stage]}</div>'
                     f'<progress value="{share}" max="100" style="width: 100%"></progress></div>')
    head = f"<b>round job {job.id}</b> — {html.escape(str(job.status))}"
    if job.status == JobStatus.RUNNING and job.stage:
        head += f" · {html.escape(STAGE_NAMES.get(job.stage, job.stage))}"
    tail = ""
    if job.status == JobStatus.SUCCEEDED and job.result:
        tail = f"<div>{html.escape(str(job.result.get('decision', '')))}</div>"
    elif job.status in (JobStatus.FAILED, JobStatus.CANCELLED):
        tail = f'<div class="alt-refusal">{html.escape((job.error or job.message or "").splitlines()[0][:500])}</div>'
    return (f'<div id="console-round-job" data-job="{job.id}" data-status="{html.escape(str(job.status))}">{head}'
            f'<div style="display: flex; gap: 4px">{"".join(cells)}</div>{tail}</div>')


class RoundsTab(ConsoleTab):
    title = "Rounds"

    # ---- a whole round (``alt round``): sample → feedback → train → evaluate → promote

    def _round_task(self, name: str) -> Task:
        with session_scope(self.db) as s:
            task = s.exec(select(Task).where(Task.name == name)).first()
        if task is None:
            raise self.error(ValueError("choose a task (Start offers the demo tasks with their prompts)"))
        return task

    def _plan_round(self, task, provider, promote, n, limit, max_tokens):
        from alt_engine.training.objectives import make_config

        config = make_config("alt")
        try:
            return plan_round(self.db, self._round_task(task), config, provider=provider, settings=self.settings,
                              n=n, limit=None if limit in (None, "") else int(limit), max_new_tokens=max_tokens,
                              promote=promote), config
        except ValueError as e:
            raise self.error(e) from e

    def _estimate(self, task, provider, promote, n, limit, max_tokens, request: gr.Request):
        """What the round will do and about how long it takes, before it starts."""
        self.auth.require_admin(request)
        if not task:
            return "Choose a task to see what a round does and how long it takes."
        from alt_engine.estimate import estimate_round

        spec, config = self._plan_round(task, provider, promote, n, limit, max_tokens)
        r = spec.round
        est = estimate_round(self.db, self._round_task(task), r, config.num_train_epochs)
        cap = f"≤ {r.max_per_prompt} per prompt" if r.max_per_prompt else "no cap per prompt"
        return (f"A round samples {r.limit or 'all'} prompts × {r.sampling.n} at {r.sampling.max_new_tokens} new "
                f"tokens from the served model, labels them with `{spec.provider}`, trains ALT "
                f"({config.num_train_epochs:g} epochs; pool {cap}, truncated: {r.truncated}), evaluates on the probe "
                f"prompts (n = {r.eval.n}, best and worst feedback) and promotes {r.promote.replace('_', ' ')}. "
                f"Estimate: {est.describe()}.")

    def _start_round(self, task, provider, promote, n, limit, max_tokens, request: gr.Request):
        self.auth.require_admin(request)
        spec, _ = self._plan_round(task, provider, promote, n, limit, max_tokens)
        job_id = start_job(self.db, spec.kind, {**spec.params(), "settings": self.job_settings()})
        return (f"Queued round job {job_id} on **{task}** with feedback from `{spec.provider}`: its stages show "
                "below (and in **Jobs**); the Dashboard plots the base and the new version when it is done.")

    def _round_progress_html(self) -> str:
        refresh(self.db)
        with session_scope(self.db) as s:
            job = s.exec(select(Job).where(Job.kind == JobKind.ROUND).order_by(Job.id.desc())).first()
        return round_progress_html(job, self.db)

    def _round_tick(self, request: gr.Request):
        """The latest round's stages, and the page header: a round that promotes its version changes what is
        served, and the header says so without a reload."""
        user = self.auth.require_admin(request)
        return self._round_progress_html(), header_markdown(self.db, user)

    def table(self):
        return self.frame(reports.round_rows(self.db), COLUMNS)

    def budget(self) -> str:
        s = self.settings
        lim = lambda n: "unlimited" if not n else str(n)  # noqa: E731
        return (f"LLM judge budget per run: {lim(s.llm_max_requests)} requests, {lim(s.llm_max_tokens)} tokens "
                f"(ALT_LLM_MAX_REQUESTS / ALT_LLM_MAX_TOKENS); rules and reward models cost nothing.")

    def _sample(self, task, version_id, limit, n, temperature, top_p, max_tokens, condition, condition_text,
                request: gr.Request):
        self.auth.require_admin(request)
        cond = (condition_text or "").strip() or ("auto" if (condition or "").startswith("auto") else condition)
        task_row = self._round_task(task)
        try:
            spec = plan_sample(task_row, version_id=int(version_id) if version_id else None, limit=limit, n=n,
                               temperature=temperature, top_p=top_p, max_new_tokens=max_tokens, condition=cond)
        except ValueError as e:
            raise self.error(e) from e
        job_id = start_job(self.db, spec.kind, {**spec.params(), "settings": self.job_settings()})
        return self.table(), f"Queued sampling job {job_id}: watch it in **Jobs**.", gr.update(
            choices=round_choices(self.db))

    def _feedback(self, round_id, provider, request: gr.Request):
        self.auth.require_admin(request)
        if not round_id:
            raise self.error(ValueError("choose a round"))
        if not (provider or "").strip():
            raise self.error(ValueError("give a provider, e.g. rule:concise:auto"))
        from alt_engine.plan import FeedbackSpec

        spec = FeedbackSpec(int(round_id), provider.strip())
        job_id = start_job(self.db, spec.kind, {**spec.params(), "settings": self.job_settings()})
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
        d = defaults()
        gr.Markdown("**Run a round** — sample → feedback → train → evaluate → promote, as `alt round` (the "
                    "defaults are the CLI's)")
        with gr.Row():
            r_task = gr.Dropdown(label="Task", choices=[], elem_id="console-round-task")
            r_provider = gr.Textbox(label="Feedback provider (empty: the task's own, e.g. rule:concise:auto for "
                                          "concise)", elem_id="console-round-provider")
            r_promote = gr.Dropdown(label="Promote the new version", choices=list(PROMOTE), value=d.promote,
                                    elem_id="console-round-promote",
                                    info="unless_worse: unless its CI is below the parent's; if_better: only when "
                                         "above")
        with gr.Row():
            r_n = gr.Number(label="Samples per prompt (n)", precision=0, value=d.n, elem_id="console-round-n")
            r_limit = gr.Number(label="Prompts per round (0: all)", precision=0, value=d.limit,
                                elem_id="console-round-limit")
            r_tokens = gr.Number(label="Max new tokens", precision=0, value=d.max_new_tokens,
                                 elem_id="console-round-max-tokens")
        r_estimate = gr.Markdown(elem_id="console-round-estimate", latex_delimiters=[])
        r_start = gr.Button("Start round", variant="primary", elem_id="console-round-start")
        r_message = gr.Markdown(elem_id="console-round-message", latex_delimiters=[])
        r_progress = gr.HTML(elem_id="console-round-progress")
        round_form = [r_task, r_provider, r_promote, r_n, r_limit, r_tokens]
        estimate = refusable(self._estimate, [r_estimate], r_estimate)
        # one at a time and the newest last: the queue runs 8 events at once, and an estimate for the task the page
        # loaded with could otherwise land after (and over) the one for the demo just started
        one_by_one = dict(concurrency_id="round_estimate", concurrency_limit=1, trigger_mode="always_last",
                          show_progress="hidden")
        r_task.change(estimate, round_form, [r_estimate], api_name="admin_round_estimate", **one_by_one)
        for part in (r_promote, r_provider, r_n, r_limit, r_tokens):
            (part.change if part is r_promote else part.blur)(estimate, round_form, [r_estimate],
                                                               api_visibility="private", **one_by_one)
        self.click(r_start, self._start_round, round_form, [r_message], r_message,  # the bar: the Jobs clock's
                   api_name="admin_start_round")
        self.round_task, self.round_progress, self.round_form = r_task, r_progress, round_form

        table = gr.Dataframe(label="Rounds (items per state)", interactive=False, elem_id="console-rounds-table")
        refresh = gr.Button("Refresh", size="sm", elem_id="console-rounds-refresh")
        gr.Markdown("**Or one stage at a time: start a sampling round**")
        with gr.Row():
            task = gr.Dropdown(label="Task", choices=[], elem_id="console-sample-task")
            version = gr.Dropdown(label="Model version (empty: the served one)", choices=[],
                                  elem_id="console-sample-version")
            limit = gr.Number(label="Prompts (empty: all)", precision=0, value=None, elem_id="console-sample-limit")
            n = gr.Number(label="Samples per prompt (n)", precision=0, value=d.n, elem_id="console-sample-n")
        with gr.Row():
            temperature = gr.Number(label="Temperature", value=d.temperature)
            top_p = gr.Number(label="top_p", value=d.top_p)
            max_tokens = gr.Number(label="Max new tokens", precision=0, value=d.max_new_tokens,
                                   elem_id="console-sample-max-tokens")
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

        self.click(sample, self._sample, [task, version, limit, n, temperature, top_p, max_tokens, condition,
                                          condition_text], [table, message, rnd], message,
                   api_name="admin_start_sampling")
        self.click(run, self._feedback, [rnd, provider], [table, message], message, api_name="admin_run_provider")
        self.click(close, self._close, [rnd], [table, message, rnd], message, api_name="admin_close_round")
        show_exemplars.click(self._exemplars, [task], [exemplars], api_name="admin_exemplar_pool")
        refresh.click(self._refresh, None, [table, rnd, version], api_name="admin_rounds")
        save.click(self._save_sampling, [backend, base_url, model, concurrency], [summary],
                   api_name="admin_save_sampling")
        check.click(self._check_sampling, [base_url, model, check_key], [summary], api_name="admin_check_sampling")
        self.table_out, self.task_pick, self.round_pick, self.version_pick = table, task, rnd, version
        self.sampling_out = (summary, backend, base_url, model, concurrency)
        self.task_pickers = [task, r_task]
        self.load_outputs = [table, rnd, version, r_progress, *self.sampling_out]
        # the task dropdowns are filled when the tab opens (``open_pickers``, by a click or by a demo), never at
        # page load: a value sent to a tab that is not mounted yet came back as the page load's when it mounted, so
        # a demo's round form showed 'concise' but estimated and started the page load's task

    def page_load(self):
        rounds = round_choices(self.db)
        return {self.table_out: self.table(),
                self.round_pick: gr.update(choices=rounds, value=rounds[0][1] if rounds else None),
                self.version_pick: gr.update(choices=version_choices(self.db), value=None),
                self.round_progress: self._round_progress_html(), **self.sampling_load()}

    def sampling_load(self) -> dict:
        s = self.settings.with_stored()
        summary, backend, base_url, model, concurrency = self.sampling_out
        return {summary: self.sampling_summary(), backend: gr.update(value=s.backend),
                base_url: gr.update(value=s.sampling_base_url), model: gr.update(value=s.sampling_model),
                concurrency: gr.update(value=s.sampling_concurrency)}
