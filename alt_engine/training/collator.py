"""Batches for conditional SFT: left-padded inputs, right-padded responses, aligned reference view."""

from __future__ import annotations

from dataclasses import dataclass

import torch

IGNORE = -100  # label of every token that is not scored


@dataclass
class AltCollator:
    """Pads ``conditioning.TrainingExample`` dicts into one batch.

    Input, per example: ``input_ids`` (feedback + separator + prompt), ``ref_input_ids`` (prompt only),
    ``response_ids`` (response, + EOS unless truncated).

    Output (B = batch, T = P + R, P = longest conditioned input, R = longest response); each row is
    ``[pad..pad, input..., response..., pad..pad]`` so every response starts at column P:
        input_ids, attention_mask, position_ids, labels: (B, T) long; labels are -100 except on response tokens.
        With ``with_reference`` (beta > 0) also ref_input_ids, ref_attention_mask, ref_position_ids, ref_labels:
        (B, T), the prompt without feedback left-padded to the same P, so the response tokens sit in the same
        columns in both views and the token-level KL is taken position by position (ref_labels == labels).
    Position ids count real tokens only (cumsum of the attention mask - 1, clamped at 0).
    """

    pad_token_id: int
    with_reference: bool = False

    def __call__(self, examples: list[dict]) -> dict[str, torch.Tensor]:
        width_in = max(len(e["input_ids"]) for e in examples)  # P
        width_out = max(len(e["response_ids"]) for e in examples)  # R
        batch = self._view([e["input_ids"] for e in examples], examples, width_in, width_out)
        if self.with_reference:
            ref = self._view([e["ref_input_ids"] for e in examples], examples, width_in, width_out)
            batch |= {f"ref_{k}": v for k, v in ref.items()}
        return batch

    def _view(self, inputs: list[list[int]], examples: list[dict], width_in: int, width_out: int) -> dict:
        n, width = len(examples), width_in + width_out
        ids = torch.full((n, width), self.pad_token_id, dtype=torch.long)  # (B, T)
        mask = torch.zeros((n, width), dtype=torch.long)
        labels = torch.full((n, width), IGNORE, dtype=torch.long)
        for row, (inp, ex) in enumerate(zip(inputs, examples)):
            resp = ex["response_ids"]
            start = width_in - len(inp)  # left padding
            ids[row, start:width_in] = torch.tensor(inp, dtype=torch.long)
            ids[row, width_in:width_in + len(resp)] = torch.tensor(resp, dtype=torch.long)
            mask[row, start:width_in + len(resp)] = 1
            labels[row, width_in:width_in + len(resp)] = torch.tensor(resp, dtype=torch.long)
        position_ids = (mask.cumsum(-1) - 1).clamp(min=0)
        return {"input_ids": ids, "attention_mask": mask, "position_ids": position_ids, "labels": labels}
