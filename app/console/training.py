"""Console · Training: train a new version from the chosen rounds with an objective (ALT, Quark, SteerLM, SFT,
CUT, Critique-and-Revise) and its hyperparameters. The form's fields and the objective's own options are parsed
by ``HfArgumentParser`` from the objective's config dataclass (``objectives.config_from_args``), as the CLI's
are; choosing an objective fills in its defaults. Training runs as a job in the worker."""

from __future__ import annotations

import html
import shlex

import gradio as gr

from alt_engine.db import ModelVersion, Round, Task, session_scope
from alt_engine.jobs import start_job
from alt_engine.plan import defaults as plan_defaults
from alt_engine.pool import POLICIES, TRUNCATION, PoolOptions

from .base import ConsoleTab
from .rounds import round_choices


def _form_args(objective: str, epochs, lr, beta, alpha, lora, max_steps, batch_size, options: str) -> list[str]:
    """The form as command-line options of ``objective``'s config (α/β only where it has them); the free
    ``options`` text last, so it wins."""
    from alt_engine.training.objectives import get

    fields = get(objective).config.__dataclass_fields__
    argv = ["--num_train_epochs", str(float(epochs)), "--learning_rate", str(float(lr)),
            "--lora", str(bool(lora)).lower(), "--per_device_train_batch_size", str(int(batch_size)),
            "--max_steps", str(int(max_steps if max_steps not in (None, "") else -1))]  # report_to: the CLI's too
    if "alpha" in fields and alpha not in (None, ""):
        argv += ["--alpha", str(float(alpha))]
    if "beta" in fields and beta not in (None, ""):
        argv += ["--beta", str(float(beta))]
    try:
        return argv + shlex.split(options or "")
    except ValueError as e:
        raise ValueError(f"options: {e}") from None


DEFAULT = "default"  # a dropdown left at this: the planner's choice (the task's or the objective's), as the CLI's


def _choice(value: str | None) -> str | None:
    return None if value in (None, "", DEFAULT) else value


def _pool_text(pool: PoolOptions) -> str:
    cap = f"at most {pool.max_per_prompt} per prompt" if pool.max_per_prompt else "no cap per prompt"
    return f"{pool.k_per_category} per category, {cap}, {pool.policy}, truncated: {pool.truncated}"


def options_help(objective: str) -> str:
    """The objective's summary and own options (name, default, help) as Markdown-safe text."""
    from alt_engine.training.objectives import get, own_options

    rows = [f"- `--{o['name']}` (default `{o['default']}`): {html.escape(o['help'])}" for o in own_options(objective)]
    return f"**{objective}** — {html.escape(get(objective).summary)}\n\n" + ("\n".join(rows) or "no options of its own")


class TrainingTab(ConsoleTab):
    title = "Training"

    def _train(self, round_ids, objective, epochs, lr, beta, alpha, lora, max_steps, batch_size, options, k, policy,
               truncated, max_per_prompt, request: gr.Request):
        self.auth.require_admin(request)
        from alt_engine.plan import plan_train
        from alt_engine.training.objectives import config_from_args, get

        ids = [int(r) for r in (round_ids or [])]
        if not ids:
            raise self.error(ValueError("choose the round(s) to train on (Rounds samples them)"))
        with session_scope(self.db) as s:
            rounds = [s.get(Round, i) for i in ids]
            tasks = {r.task_id for r in rounds if r is not None}
            if len(tasks) != 1:
                raise self.error(ValueError("choose rounds of one task"))
            task = s.get(Task, tasks.pop())
        try:
            obj = get(objective or "alt")
            config = config_from_args(obj.name, _form_args(obj.name, epochs, lr, beta, alpha, lora, max_steps,
                                                           batch_size, options))
            # the CLI's planner: the same pool as `alt train` for the same choices; no usable data: refused now
            spec = plan_train(self.db, task, config, round_ids=ids, k_per_category=k, policy=_choice(policy),
                              max_per_prompt=max_per_prompt, truncated=_choice(truncated))
            fmt = obj.task_format(task)
        except ValueError as e:
            raise self.error(e) from e
        job_id = start_job(self.db, spec.kind, {**spec.params(), "settings": self.job_settings()})
        with session_scope(self.db) as s:
            parent = s.get(ModelVersion, spec.parent_version_id)
        return (f"Queued **{obj.name}** training job {job_id} on {len(ids)} round(s) of **{task.name}** from "
                f"{parent.name} (conditioning: {fmt.describe()}; pool: {_pool_text(spec.pool)}): the rounds are "
                "closed for annotation; watch it in **Jobs**, then evaluate it in **Models** (the Dashboard plots "
                "evaluated versions).")

    def _objective(self, objective, request: gr.Request):
        """The chosen objective's defaults into the form, and its own options described."""
        self.auth.require_admin(request)
        from alt_engine.training.objectives import defaults, get

        try:
            obj = get(objective or "alt")
        except ValueError as e:
            raise self.error(e) from e
        c = defaults(obj.name)
        return {self.epochs: c["num_train_epochs"], self.lr: c["learning_rate"], self.lora: c["lora"],
                self.alpha: gr.update(value=c.get("alpha"), interactive="alpha" in c),
                self.beta: gr.update(value=None, interactive="beta" in c),
                self.help: options_help(obj.name)}

    def _rounds(self, request: gr.Request):
        self.auth.require_admin(request)
        return gr.update(choices=round_choices(self.db))

    def build_ui(self) -> None:
        from alt_engine.training.objectives import defaults, names

        d = defaults("alt")
        with gr.Row():
            rounds = gr.Dropdown(label="Train on round(s)", choices=[], multiselect=True,
                                 elem_id="console-train-rounds")
            refresh = gr.Button("Refresh rounds", size="sm")
            objective = gr.Dropdown(label="Objective", choices=names(), value="alt", elem_id="console-train-objective")
        with gr.Row():
            self.epochs = gr.Number(label="Epochs", value=d["num_train_epochs"])
            self.lr = gr.Number(label="Learning rate", value=d["learning_rate"])
            self.beta = gr.Number(label="β (KL; empty = auto: 0 for instruct models)", value=None)
            self.alpha = gr.Number(label="α (entropy)", value=d["alpha"])
        with gr.Row():
            self.lora = gr.Checkbox(label="LoRA adapter", value=d["lora"])
            max_steps = gr.Number(label="Max steps (-1 = epochs)", value=d["max_steps"], precision=0,
                                  elem_id="console-train-max-steps")
            batch_size = gr.Number(label="Batch size", value=d["per_device_train_batch_size"], precision=0,
                                   elem_id="console-train-batch")
        options = gr.Textbox(label="More options of the objective, as on the command line "
                                   "(e.g. --ul_threshold 1.2 --positive_ratio 0.5)", elem_id="console-train-options")
        self.help = gr.Markdown(options_help("alt"), elem_id="console-train-help", latex_delimiters=[])
        p = plan_defaults()
        with gr.Row():
            k = gr.Number(label="Samples per category per prompt", value=p.k_per_category, precision=0,
                          elem_id="console-train-k")
            max_per_prompt = gr.Number(label="Most examples per prompt (0 = no cap)", value=p.max_per_prompt,
                                       precision=0, elem_id="console-train-max-per-prompt")
            self.policy = gr.Dropdown(label="Pool policy (default: the objective's)", choices=[DEFAULT, *POLICIES],
                                      value=DEFAULT, elem_id="console-train-policy")
            truncated = gr.Dropdown(label="Truncated generations (default: the task's, e.g. worst for concise, "
                                          "else exclude)", choices=[DEFAULT, *TRUNCATION], value=DEFAULT,
                                    elem_id="console-train-truncated")
        start = gr.Button("Start training", variant="primary", elem_id="console-train")
        message = gr.Markdown(elem_id="console-train-message", latex_delimiters=[])
        self.form = [rounds, objective, self.epochs, self.lr, self.beta, self.alpha, self.lora, max_steps, batch_size,
                     options, k, self.policy, truncated, max_per_prompt]  # ``_train``'s inputs, in order
        self.click(start, self._train, self.form, [message], message, api_name="admin_start_training")
        objective.change(self._objective, [objective],
                         [self.epochs, self.lr, self.lora, self.alpha, self.beta, self.help],
                         api_name="admin_training_objective")
        refresh.click(self._rounds, None, [rounds], api_name="admin_training_rounds")
        self.rounds_pick = rounds
        self.on_select, self.select_outputs = self._rounds, [rounds]  # rounds sampled since the page loaded
        self.load_outputs = [rounds]

    def page_load(self):
        return {self.rounds_pick: gr.update(choices=round_choices(self.db))}
