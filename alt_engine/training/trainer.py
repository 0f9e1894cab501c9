"""``AltTrainer``: transformers.Trainer with the ALT loss; everything else (accumulation, checkpoints,
resume, TensorBoard, PEFT, DeepSpeed) is the library's."""

from __future__ import annotations

from collections import defaultdict

import torch
from transformers import Trainer

from .collator import IGNORE
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

    def _forward(self, model, inputs: dict, prefix: str = "", keep: int = 0) -> torch.Tensor:
        """Logits of the last ``keep`` positions (0 = all): (B, keep, V)."""
        return model(input_ids=inputs[f"{prefix}input_ids"], attention_mask=inputs[f"{prefix}attention_mask"],
                     position_ids=inputs[f"{prefix}position_ids"], use_cache=False, logits_to_keep=keep).logits

    @staticmethod
    def _response_span(labels: torch.Tensor) -> int:
        """Columns from the one predicting the first response token to the end (AltCollator puts every
        response in the same columns), so the LM head projects no prompt or feedback position."""
        scored = (labels != IGNORE).any(0).nonzero()
        return labels.shape[1] - int(scored[0]) + 1 if len(scored) else 1

    @torch.no_grad()
    def _ref_logits(self, model, inputs: dict, keep: int) -> torch.Tensor:
        if self.ref_model is not None:
            return self._forward(self.ref_model, inputs, "ref_", keep)
        peft_model = self.accelerator.unwrap_model(model)  # the policy's base, adapters off = the start model
        with peft_model.disable_adapter():
            return self._forward(peft_model, inputs, "ref_", keep)

    def compute_loss(self, model, inputs, return_outputs=False, num_items_in_batch=None):
        keep = self._response_span(inputs["labels"])
        logits = self._forward(model, inputs, keep=keep)  # (B, keep, V)
        ref_logits = self._ref_logits(model, inputs, keep) if self.beta > 0 else None
        loss, metrics = alt_loss(logits, inputs["labels"][:, -keep:], ref_logits, alpha=self.alpha, beta=self.beta)
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
