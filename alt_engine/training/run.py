"""Train a model on pool items (``train``) and record it as a model version (``train_model_version``).

``train`` builds examples with the conditioning format, a ``datasets.Dataset``, the collator and
``AltTrainer``; the output directory then holds the model (or LoRA adapter) with its tokenizer, the
resolved config (``alt_config.json``), the feedback ids it was trained on (``feedback_ids.json``),
``metrics.json`` and TensorBoard logs (``tensorboard/``). With a ``deepspeed`` config it runs under the
DeepSpeed or accelerate launcher on ``num_procs`` ranks per machine instead (see ``launch``).
"""

from __future__ import annotations

import json
import os
import shutil
from collections.abc import Callable
from pathlib import Path

import torch
from transformers import AutoModelForCausalLM, TrainerCallback, set_seed
from transformers.integrations import TensorBoardCallback
from transformers.trainer_callback import PrinterCallback
from transformers.trainer_utils import get_last_checkpoint

from .. import conditioning
from ..modeling import fastest_dtype, load_model, load_tokenizer
from ..pool import PoolItem
from .config import TrainConfig
from .examples import build_examples, check_items  # noqa: F401  (re-exported: scripts and tests)

Progress = Callable[[float, dict], None]  # (fraction done, latest logs)
CONFIG_FILE, FEEDBACK_FILE, METRICS_FILE = "alt_config.json", "feedback_ids.json", "metrics.json"


class _ProgressCallback(TrainerCallback):
    def __init__(self, progress: Progress):
        self.progress = progress

    def on_log(self, args, state, control, logs=None, **kwargs):
        if state.is_world_process_zero:
            self.progress(state.global_step / max(state.max_steps, 1), {**(logs or {}), "step": state.global_step})


def grow_embeddings(model, tokenizer, seed: int = 0) -> int:
    """Resize ``model``'s vocabulary to ``tokenizer``'s; each new embedding row is drawn from N(mean, std) of
    the existing rows, per dimension (Quark). Returns how many rows were added."""
    emb = model.get_input_embeddings().weight
    old, new = emb.shape[0], len(tokenizer)
    if new <= old:
        return 0
    with torch.no_grad():
        mean, std = emb.mean(0), emb.std(0)  # (H,), over the existing rows
        model.resize_token_embeddings(new, mean_resizing=False)
        gen = torch.Generator().manual_seed(seed)
        rows = mean + std * torch.randn(new - old, emb.shape[1], generator=gen)  # (new - old, H)
        model.get_input_embeddings().weight[old:] = rows.to(emb.dtype)
        out = model.get_output_embeddings()
        if out is not None and out.weight.data_ptr() != model.get_input_embeddings().weight.data_ptr():
            out.weight[old:] = rows.to(out.weight.dtype)
    return new - old


def _load_policy(model_path: str, config: TrainConfig, tokenizer=None):
    if (Path(model_path) / "adapter_config.json").exists():  # parent version is a LoRA adapter
        from peft import AutoPeftModelForCausalLM

        model = AutoPeftModelForCausalLM.from_pretrained(model_path, is_trainable=config.lora)
        return model if config.lora else model.merge_and_unload().requires_grad_(True)  # full fine-tuning
    model = AutoModelForCausalLM.from_pretrained(model_path)
    if tokenizer is not None:
        grow_embeddings(model, tokenizer, config.seed)
    if not config.lora:
        return model
    from peft import LoraConfig, get_peft_model

    return get_peft_model(model, LoraConfig(r=config.lora_r, lora_alpha=config.lora_alpha, task_type="CAUSAL_LM",
                                            lora_dropout=config.lora_dropout, target_modules=config.target_modules))


def _in_launched_run() -> bool:
    """True on a rank started by a distributed launcher (DeepSpeed, torchrun)."""
    return "LOCAL_RANK" in os.environ


def _cpu_ranks_state() -> dict | None:
    """accelerate finds no backend for DeepSpeed ranks without a GPU: set one up on gloo ourselves.

    Returns the TrainingArguments ``accelerator_config`` that makes the Trainer use it.
    """
    from accelerate import PartialState

    if torch.cuda.is_available() or not _in_launched_run():
        return None
    os.environ["ACCELERATE_USE_DEEPSPEED"] = "true"
    try:
        PartialState(backend="gloo")
    finally:
        del os.environ["ACCELERATE_USE_DEEPSPEED"]
    return {"use_configured_state": True}


def train(model_path: str, items: list[PoolItem], config: TrainConfig, output_dir: str,
          fmt: conditioning.Format | None = None, progress: Progress | None = None) -> dict:
    """Fine-tune ``model_path`` on ``items`` into ``output_dir`` with ``config``'s objective; returns the metrics.

    The objective (``objectives.get(config.objective)``) supplies the conditioning format, the examples,
    the collator and the trainer; everything else (launchers, checkpoints, saving) is shared.
    """
    from .objectives import get

    objective = get(config.objective)
    objective.check_items(items)
    if config.distributed and not _in_launched_run():  # a launcher starts the ranks (DeepSpeed: even one)
        from .launch import launch

        return launch(model_path, items, config, output_dir, fmt, progress)
    out = Path(output_dir)
    set_seed(config.seed)
    tokenizer = load_tokenizer(model_path)
    config = config.resolved(chat_model=bool(getattr(tokenizer, "chat_template", None)))
    fmt = objective.format(tokenizer, items, config, (fmt or conditioning.Format()).for_tokenizer(tokenizer))
    dataset = _dataset(objective.build_examples(tokenizer, items, config, fmt))
    model = _load_policy(model_path, config, tokenizer)
    args = config.for_trainer(
        output_dir=str(out), include_num_input_tokens_seen="non_padding", **_precision(config, model),
        dataloader_pin_memory=torch.cuda.is_available(),
        accelerator_config=_cpu_ranks_state() if config.deepspeed else None)
    trainer = objective.trainer(model=model, args=args, train_dataset=dataset, processing_class=tokenizer,
                                data_collator=objective.collator(tokenizer, config),
                                callbacks=[_ProgressCallback(progress)] if progress else None,
                                **objective.trainer_kwargs(config, lambda: _load_reference(model_path, tokenizer)))
    trainer.remove_callback(PrinterCallback)  # progress goes to the job row and the CLI, not raw dicts on stdout
    for cb in trainer.callback_handler.callbacks:
        if isinstance(cb, TensorBoardCallback):
            cb.logging_dir = str(out / "tensorboard")
    checkpoint = get_last_checkpoint(str(out)) if config.resume and out.is_dir() else None
    result = trainer.train(resume_from_checkpoint=checkpoint)
    metrics = _metrics(trainer, result, config, resumed_from=checkpoint) | {"conditioning": fmt.to_dict(),
                                                                            "bf16": bool(args.bf16)}
    _save(trainer, config, items, out, model_path, fmt, metrics)
    return metrics


def _precision(config: TrainConfig, model) -> dict:
    """``bf16`` (and ``use_cpu``, which transformers wants for bf16 on a CPU) when ``bf16_auto`` finds it faster.

    Measured on the default model, 2 AMX cores, batch 8 × ~200 tokens: 17.8 vs 28.1 CPU-seconds a step, the loss
    curve the same to ±0.04 over 5 steps. Tiny test models (width < 256) stay in float32.
    """
    if not config.bf16_auto or config.bf16 or config.fp16 or config.distributed:
        return {}
    if torch.cuda.is_available():
        return {"bf16": True} if torch.cuda.is_bf16_supported() else {}
    if fastest_dtype("cpu", hidden=int(getattr(model.config, "hidden_size", 0) or 0)) == torch.bfloat16:
        return {"bf16": True, "use_cpu": True}
    return {}


def _load_reference(model_path: str, tokenizer):
    """The frozen start model, its vocabulary grown like the policy's (new control tokens)."""
    ref = load_model(model_path, device="cpu")
    grow_embeddings(ref, tokenizer)
    return ref


def _dataset(rows: list[dict]):
    from datasets import Dataset

    return Dataset.from_list(rows)


def _metrics(trainer, result, config: TrainConfig, resumed_from: str | None) -> dict:
    runtime = result.metrics.get("train_runtime", 0.0)
    tokens = int(trainer.state.num_input_tokens_seen)
    last = next((h for h in reversed(trainer.state.log_history) if "nll" in h), {})
    return {"train_loss": result.training_loss, "runtime_s": runtime, "steps": trainer.state.global_step,
            "tokens": tokens, "tokens_per_s": tokens / runtime if runtime else 0.0,
            "examples": len(trainer.train_dataset), "epochs": trainer.state.epoch,
            **{k: last[k] for k in ("nll", "entropy", "kl") if k in last},
            "resumed_from": resumed_from, "config": config.to_dict()}  # + "conditioning" (train)


def _save(trainer, config: TrainConfig, items: list[PoolItem], out: Path, model_path: str,
          fmt: conditioning.Format, metrics: dict) -> None:
    """Model/adapter + tokenizer + exact config + data ids + metrics; checkpoints removed once done."""
    if config.lora and config.merge_lora:
        if trainer.is_world_process_zero():
            trainer.accelerator.unwrap_model(trainer.model).merge_and_unload().save_pretrained(out)
            trainer.processing_class.save_pretrained(out)
    else:
        trainer.save_model(str(out))  # every rank calls it (DeepSpeed); rank 0 writes
    if not trainer.is_world_process_zero():
        return
    (out / CONFIG_FILE).write_text(json.dumps({**config.full_dict(), "objective": config.objective,
                                                "base_model": model_path,
                                                "conditioning": fmt.to_dict()}, indent=2))
    (out / FEEDBACK_FILE).write_text(json.dumps([item.feedback_id for item in items]))
    (out / METRICS_FILE).write_text(json.dumps(metrics, indent=2, default=str))
    for checkpoint in out.glob("checkpoint-*"):
        shutil.rmtree(checkpoint, ignore_errors=True)
