"""``AltTrainer``: transformers.Trainer with the ALT loss; everything else (accumulation, checkpoints,
resume, TensorBoard, PEFT, DeepSpeed) is the library's."""

from __future__ import annotations

from collections import defaultdict

import torch
from transformers import Trainer

from .loss import alt_loss


class AltTrainer(Trainer):
    """Trainer for conditional SFT with entropy bonus and optional KL to an unconditioned reference.

    ``ref_model``: a frozen reference, needed only when ``beta > 0``. For a PEFT model leave it None:
    the policy with its adapters disabled is the reference (no second copy in memory).
    """

    loss_is_scaled_for_ga = False  # alt_loss is a per-micro-batch mean: let Trainer divide by grad_accum

    def __init__(self, *args, alpha: float = 0.06, beta: float = 0.0, ref_model=None, **kwargs):
        super().__init__(*args, **kwargs)
        self.alpha, self.beta = alpha, beta
        self.ref_model = ref_model
        if beta > 0 and ref_model is None and not hasattr(self.model, "disable_adapter"):
            raise ValueError("beta > 0 needs a reference model (or a PEFT model whose base is the reference)")
        if ref_model is not None:
            ref_model.requires_grad_(False)
            self.ref_model = ref_model.to(self.args.device).eval()
        self._metrics: dict[str, dict[str, list[float]]] = {"train": defaultdict(list), "eval": defaultdict(list)}

    def _forward(self, model, inputs: dict, prefix: str = "") -> torch.Tensor:
        return model(input_ids=inputs[f"{prefix}input_ids"], attention_mask=inputs[f"{prefix}attention_mask"],
                     position_ids=inputs[f"{prefix}position_ids"], use_cache=False).logits  # (B, T, V)

    @torch.no_grad()
    def _ref_logits(self, model, inputs: dict) -> torch.Tensor:
        if self.ref_model is not None:
            return self._forward(self.ref_model, inputs, "ref_")
        peft_model = self.accelerator.unwrap_model(model)  # the policy's base, adapters off = the start model
        with peft_model.disable_adapter():
            return self._forward(peft_model, inputs, "ref_")

    def compute_loss(self, model, inputs, return_outputs=False, num_items_in_batch=None):
        logits = self._forward(model, inputs)
        ref_logits = self._ref_logits(model, inputs) if self.beta > 0 else None
        loss, metrics = alt_loss(logits, inputs["labels"], ref_logits, alpha=self.alpha, beta=self.beta)
        mode = "train" if model.training else "eval"
        for key, value in metrics.items():
            self._metrics[mode][key].append(value)
        return (loss, {"logits": logits}) if return_outputs else loss

    def log(self, logs: dict[str, float], start_time: float | None = None) -> None:
        """Add the loss terms averaged since the last log (TRL habit), then log as usual."""
        mode = "eval" if any(k.startswith("eval_") for k in logs) else "train"
        prefix = "eval_" if mode == "eval" else ""
        for key, values in self._metrics[mode].items():
            if values:
                logs[prefix + key] = sum(values) / len(values) if key != "response_tokens" else sum(values)
        self._metrics[mode].clear()
        super().log(logs, start_time)
