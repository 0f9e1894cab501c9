"""The ALT loss: L = NLL(y|f,x) + beta * KL(p_ref(.|x) || p(.|f,x)) - alpha * H(p(.|f,x)).

Every term is a mean over the response tokens of the batch (labels != -100, after the usual shift by
one: the logits at position t predict the token at t+1). KL and entropy are token-level over the full
vocabulary. Only scored positions are selected before any softmax, so whatever the model puts at
padding, prompt or feedback positions cannot reach the loss.
"""

from __future__ import annotations

import torch

from .collator import IGNORE


def alt_loss(logits: torch.Tensor, labels: torch.Tensor, ref_logits: torch.Tensor | None = None,
             alpha: float = 0.06, beta: float = 0.0) -> tuple[torch.Tensor, dict[str, float]]:
    """(loss, metrics); ``ref_logits`` (same columns as ``logits``, see AltCollator) is needed when beta > 0."""
    labels = labels[:, 1:]  # (B, T-1) the token each position predicts
    scored = labels != IGNORE  # (B, T-1) response tokens only
    n = scored.sum().clamp(min=1)  # () response tokens in the batch
    logp = logits[:, :-1][scored].float().log_softmax(-1)  # (N, V) policy, conditioned on feedback
    nll = -logp.gather(-1, labels[scored][:, None]).squeeze(-1).sum() / n  # ()
    entropy = -(logp.exp() * logp).sum(-1).sum() / n  # () mean H over response tokens
    loss = nll - alpha * entropy
    metrics = {"nll": nll.item(), "entropy": entropy.item(), "response_tokens": int(scored.sum())}
    if beta > 0:
        if ref_logits is None:
            raise ValueError("beta > 0 needs ref_logits")
        ref_logp = ref_logits[:, :-1][scored].float().log_softmax(-1)  # (N, V) reference, prompt without feedback
        kl = (ref_logp.exp() * (ref_logp - logp)).sum(-1).sum() / n  # () KL(p_ref || p), mean over tokens
        loss = loss + beta * kl
        metrics["kl"] = kl.item()
    return loss, metrics
