"""Console · Training: train a new version from the chosen rounds with its hyperparameters. The defaults are
``AltTrainConfig``'s and the data pool's (the ones that work); training runs as a job in the worker."""

from __future__ import annotations

import dataclasses

import gradio as gr

from alt_engine.db import Round, Task, session_scope
from alt_engine.jobs import start_job
from alt_engine.pool import POLICIES, TRUNCATION

from . import ConsoleTab
from .rounds import round_choices


def _defaults() -> dict:
    from alt_engine.training.config import AltTrainConfig

    return {f.name: f.default for f in dataclasses.fields(AltTrainConfig)
            if f.default is not dataclasses.MISSING}


class TrainingTab(ConsoleTab):
    title = "Training"

    def _train(self, round_ids, epochs, lr, beta, alpha, lora, max_steps, batch_size, k, policy, truncated,
               request: gr.Request):
        self.auth.require_admin(request)
        from alt_engine.conditioning import format_of
        from alt_engine.training.config import AltTrainConfig
        from alt_engine.training.run import check_items
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
            config = AltTrainConfig(epochs=float(epochs), learning_rate=float(lr),
                                    beta=None if beta in (None, "") else float(beta), alpha=float(alpha),
                                    lora=bool(lora), max_steps=int(max_steps if max_steps not in (None, "") else -1),
                                    batch_size=int(batch_size), report_to="none")
            pool_kw = dict(round_ids=ids, k_per_category=int(k), policy=policy, truncated=truncated, seed=config.seed)
            from alt_engine.pool import build_pool

            check_items(build_pool(self.db, task.id, **pool_kw))  # no feedback / one category: refused now
        except ValueError as e:
            raise self.error(e) from e
        params = dict(task_id=task.id, round_id=ids[-1], parent_version_id=served.id,
                      config=config.to_dict(), conditioning=format_of(None, task).to_dict(), **pool_kw,
                      settings=self.job_settings())
        job_id = start_job(self.db, "train", params)
        return (f"Queued training job {job_id} on {len(ids)} round(s) of **{task.name}** from {served.name}: "
                "the rounds are closed for annotation; watch it in **Jobs**.")

    def _rounds(self, request: gr.Request):
        self.auth.require_admin(request)
        return gr.update(choices=round_choices(self.db))

    def build_ui(self) -> None:
        d = _defaults()
        with gr.Row():
            rounds = gr.Dropdown(label="Train on round(s)", choices=[], multiselect=True,
                                 elem_id="console-train-rounds")
            refresh = gr.Button("Refresh rounds", size="sm")
        with gr.Row():
            epochs = gr.Number(label="Epochs", value=d["epochs"])
            lr = gr.Number(label="Learning rate", value=d["learning_rate"])
            beta = gr.Number(label="β (KL; empty = auto: 0 for instruct models)", value=None)
            alpha = gr.Number(label="α (entropy)", value=d["alpha"])
        with gr.Row():
            lora = gr.Checkbox(label="LoRA adapter", value=d["lora"])
            max_steps = gr.Number(label="Max steps (-1 = epochs)", value=d["max_steps"], precision=0,
                                  elem_id="console-train-max-steps")
            batch_size = gr.Number(label="Batch size", value=d["batch_size"], precision=0,
                                   elem_id="console-train-batch")
        with gr.Row():
            k = gr.Number(label="Samples per category per prompt", value=2, precision=0)
            policy = gr.Dropdown(label="Pool policy", choices=list(POLICIES), value="flush")
            truncated = gr.Dropdown(label="Truncated generations", choices=list(TRUNCATION), value=TRUNCATION[0])
        start = gr.Button("Start training", variant="primary", elem_id="console-train")
        message = gr.Markdown(elem_id="console-train-message", latex_delimiters=[])
        start.click(self._train, [rounds, epochs, lr, beta, alpha, lora, max_steps, batch_size, k, policy, truncated],
                    [message], api_name="admin_start_training")
        refresh.click(self._rounds, None, [rounds], api_name="admin_training_rounds")
        self.rounds_pick = rounds
        self.load_outputs = [rounds]

    def page_load(self):
        return {self.rounds_pick: gr.update(choices=round_choices(self.db))}

