"""Console · Training: train a new version from the chosen rounds with an objective (ALT, Quark, SteerLM, SFT,
CUT, Critique-and-Revise) and its hyperparameters. The form's fields and the objective's own options are parsed
by ``HfArgumentParser`` from the objective's config dataclass (``objectives.config_from_args``), as the CLI's
are; choosing an objective fills in its defaults. Training runs as a job in the worker."""

from __future__ import annotations

import html
import shlex

import gradio as gr

from alt_engine.db import Round, Task, session_scope
from alt_engine.jobs import start_job
from alt_engine.pool import POLICIES, TRUNCATION

from .base import ConsoleTab
from .rounds import round_choices


def _form_args(objective: str, epochs, lr, beta, alpha, lora, max_steps, batch_size, options: str) -> list[str]:
    """The form as command-line options of ``objective``'s config (α/β only where it has them); the free
    ``options`` text last, so it wins."""
    from alt_engine.training.objectives import get

    fields = get(objective).config.__dataclass_fields__
    argv = ["--num_train_epochs", str(float(epochs)), "--learning_rate", str(float(lr)),
            "--lora", str(bool(lora)).lower(), "--per_device_train_batch_size", str(int(batch_size)),
            "--max_steps", str(int(max_steps if max_steps not in (None, "") else -1)), "--report_to", "none"]
    if "alpha" in fields and alpha not in (None, ""):
        argv += ["--alpha", str(float(alpha))]
    if "beta" in fields and beta not in (None, ""):
        argv += ["--beta", str(float(beta))]
    try:
        return argv + shlex.split(options or "")
    except ValueError as e:
        raise ValueError(f"options: {e}") from None


def options_help(objective: str) -> str:
    """The objective's summary and own options (name, default, help) as Markdown-safe text."""
    from alt_engine.training.objectives import get, own_options

    rows = [f"- `--{o['name']}` (default `{o['default']}`): {html.escape(o['help'])}" for o in own_options(objective)]
    return f"**{objective}** — {html.escape(get(objective).summary)}\n\n" + ("\n".join(rows) or "no options of its own")


class TrainingTab(ConsoleTab):
    title = "Training"

    def _train(self, round_ids, objective, epochs, lr, beta, alpha, lora, max_steps, batch_size, options, k, policy,
               truncated, request: gr.Request):
        self.auth.require_admin(request)
        from alt_engine.training.objectives import config_from_args, get
        from alt_engine.versions import served_version

        ids = [int(r) for r in (round_ids or [])]
        if not ids:
            raise self.error(ValueError("choose the round(s) to train on"))
        with session_scope(self.db) as s:
            rounds = [s.get(Round, i) for i in ids]
            tasks = {r.task_id for r in rounds if r is not None}
            if len(tasks) != 1:
                raise self.error(ValueError("choose rounds of one task"))
            task = s.get(Task, tasks.pop())
            served = served_version(s)
        try:
            obj = get(objective or "alt")
            config = config_from_args(obj.name, _form_args(obj.name, epochs, lr, beta, alpha, lora, max_steps,
                                                           batch_size, options))
            pool_kw = dict(round_ids=ids, k_per_category=int(k), policy=policy or obj.pool_policy,
                           truncated=truncated, seed=config.seed)
            obj.check_items(obj.items(self.db, task, **pool_kw))  # no usable data for this objective: refused now
            fmt = obj.task_format(task)
        except ValueError as e:
            raise self.error(e) from e
        params = dict(task_id=task.id, round_id=ids[-1], parent_version_id=served.id, objective=obj.name,
                      config=config.to_dict(), conditioning=fmt.to_dict(), **pool_kw, settings=self.job_settings())
        job_id = start_job(self.db, "train", params)
        return (f"Queued **{obj.name}** training job {job_id} on {len(ids)} round(s) of **{task.name}** from "
                f"{served.name} (conditioning: {fmt.describe()}): the rounds are closed for annotation; watch it "
                "in **Jobs**.")

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
                self.policy: obj.pool_policy, self.help: options_help(obj.name)}

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
        with gr.Row():
            k = gr.Number(label="Samples per category per prompt", value=2, precision=0)
            self.policy = gr.Dropdown(label="Pool policy", choices=list(POLICIES), value="flush")
            truncated = gr.Dropdown(label="Truncated generations", choices=list(TRUNCATION), value=TRUNCATION[0],
                                    elem_id="console-train-truncated")
        start = gr.Button("Start training", variant="primary", elem_id="console-train")
        message = gr.Markdown(elem_id="console-train-message", latex_delimiters=[])
        start.click(self._train, [rounds, objective, self.epochs, self.lr, self.beta, self.alpha, self.lora, max_steps,
                                  batch_size, options, k, self.policy, truncated], [message],
                    api_name="admin_start_training")
        objective.change(self._objective, [objective],
                         [self.epochs, self.lr, self.lora, self.alpha, self.beta, self.policy, self.help],
                         api_name="admin_training_objective")
        refresh.click(self._rounds, None, [rounds], api_name="admin_training_rounds")
        self.rounds_pick = rounds
        self.on_select, self.select_outputs = self._rounds, [rounds]  # rounds sampled since the page loaded
        self.load_outputs = [rounds]

    def page_load(self):
        return {self.rounds_pick: gr.update(choices=round_choices(self.db))}
