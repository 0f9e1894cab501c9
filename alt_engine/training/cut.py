"""CUT — contrastive unlikelihood training with judgments ("Reasons to Reject?", Xu et al., 2023).

A response y with a negative judgment j gives two views of the same tokens (``AltCollator`` puts the
response in the same columns of both):

- (x, j) → y: MLE — the judgment explains y, so y is likely given it;
- x → y: for each token, r_t = p(y_t | x, j) / p(y_t | x) (no gradient through r). Where r_t > threshold
  the judgment made y_t likelier — the token is what the judgment blames — so it gets unlikelihood
  ``-w · log(1 - p(y_t | x))``; every other token gets MLE ``-log p(y_t | x)``.

A positive (best category, no judgment) gets plain MLE on x → y, positives down-sampled to about
``positive_ratio`` × the negatives. As in the method's published code, ``L = (likelihood + unlikelihood) / 2``:
likelihood = mean NLL over all rows' first view (negatives y | x, j; positives y | x), unlikelihood = mean over
the negatives' tokens of the x → y part (the likelihood part alone when the batch has no negative).

Defaults from the method's published code (online): threshold 1.1, weight 1.0 (offline 1.2, 0.5), LoRA
r = 16 on the MLP projections merged after each round, lr 4e-4 cosine, 1 epoch. Judgments are the
annotators' (``Feedback.kind == "judgment"``), an LLM judge's (``llm:judgment``) or a rule's
(``rule:critique:<rule>``); a generation with a category worse than the task's best and no written judgment
is judged by its category text. The model samples unconditioned.
"""

from __future__ import annotations

import math
import random
from dataclasses import dataclass, field
from typing import ClassVar

import torch
from sqlmodel import select

from .. import conditioning
from ..db import HUMAN_PREFIX, Feedback, FeedbackKind, Generation, Prompt, Round, session_scope
from ..feedback.store import effective_feedback
from ..pool import PoolItem
from .collator import IGNORE, AltCollator
from .config import TrainConfig
from .trainer import AltTrainer

JUDGMENT_FORMAT = conditioning.Format("system", "Judgment: {feedback}")  # where j goes in the (x, j) view


@dataclass
class CutTrainConfig(TrainConfig):
    """CUT (``cut.py``); the shared options are ``TrainConfig``'s, with the method's own defaults.

        ul_threshold: a token of a negative gets unlikelihood where p(y_t|x,j) / p(y_t|x) exceeds this.
        ul_weight: w in ``-w · log(1 - p(y_t|x))``.
        positive_ratio: positives kept per negative (down-sampling; 0 = none, negative = all).
    """

    objective: ClassVar[str] = "cut"

    learning_rate: float = field(default=4e-4, metadata={"help": "peak learning rate (CUT: 4e-4 with LoRA)"})
    lr_scheduler_type: str = field(default="cosine", metadata={"help": "transformers scheduler name"})
    num_train_epochs: float = field(default=1.0, metadata={"help": "passes over the data per round"})
    lora: bool = field(default=True, metadata={"help": "train a LoRA adapter (CUT: yes, merged each round)"})
    lora_target_modules: str = field(default="gate_proj,up_proj,down_proj", metadata={
        "help": "modules to adapt (CUT: the MLP projections)"})
    merge_lora: bool = field(default=True, metadata={"help": "save the merged model (CUT: merged after each round)"})
    ul_threshold: float = field(default=1.1, metadata={"help": "ratio p(y|x,j)/p(y|x) above which a token gets UL"})
    ul_weight: float = field(default=1.0, metadata={"help": "unlikelihood weight w"})
    positive_ratio: float = field(default=0.25, metadata={"help": "positives kept per negative (-1 = all)"})

    def __post_init__(self):
        if self.ul_threshold <= 0 or self.ul_weight < 0:
            raise ValueError("ul_threshold must be > 0 and ul_weight >= 0")
        if not self.lora:
            self.merge_lora = False  # merging is the LoRA adapter's; full weights need none
        super().__post_init__()


def cut_loss(logits: torch.Tensor, uncond_logits: torch.Tensor, labels: torch.Tensor, negative: torch.Tensor,
             threshold: float = 1.1, weight: float = 1.0) -> tuple[torch.Tensor, dict[str, float]]:
    """(loss, metrics). ``logits`` (B, T, V) see (x, j) — for a positive, x alone —, ``uncond_logits`` (B, T, V)
    see x; ``labels`` (B, T) the response in the same columns of both; ``negative`` (B,) bool.

    As the method's published code groups it: ``L = (likelihood + unlikelihood) / 2`` where likelihood = mean
    NLL over every row's first view (negatives: y | x, j; positives: y | x) and unlikelihood = mean over the
    negatives' tokens of their x → y view (UL where the ratio passes the threshold, MLE elsewhere); a batch
    without a negative is the likelihood part alone."""
    labels = labels[:, 1:]  # (B, T-1) the token each position predicts
    scored = labels != IGNORE  # (B, T-1)
    neg = negative[:, None].expand_as(scored)[scored]  # (N,) token belongs to a negative
    target = labels[scored][:, None]  # (N, 1)
    logp = logits[:, :-1][scored].float().log_softmax(-1).gather(-1, target).squeeze(-1)  # (N,) first view
    metrics = {"response_tokens": int(scored.sum()), "negatives": int(negative.sum()), "nll": -logp.mean().item()}
    loss = -logp.mean()  # likelihood: y | x, j for a negative, y | x for a positive
    if neg.any():
        logp_x = uncond_logits[:, :-1][scored][neg].float().log_softmax(-1).gather(-1, target[neg]).squeeze(-1)  # (Nn,)
        ratio = (logp[neg].detach() - logp_x.detach()).exp()  # (Nn,) p(y|x,j) / p(y|x), no gradient
        selected = ratio > threshold  # (Nn,) the tokens the judgment blames
        ul = -weight * torch.log1p(-logp_x.exp().clamp(max=1 - 1e-6))  # (Nn,) -w log(1 - p(y|x))
        loss = (loss + torch.where(selected, ul, -logp_x).mean()) / 2  # unlikelihood part: UL there, MLE elsewhere
        metrics |= {"nll_x": (-logp_x).mean().item(), "ul_share": selected.float().mean().item(),
                    "ul": (ul[selected].mean().item() if selected.any() else 0.0)}
    return loss, metrics


@dataclass
class CutCollator:
    """``AltCollator`` with the reference view (x alone, same response columns) + ``negative``: (B,) bool."""

    pad_token_id: int

    def __call__(self, examples: list[dict]) -> dict[str, torch.Tensor]:
        batch = AltCollator(self.pad_token_id, with_reference=True)(examples)
        batch["negative"] = torch.tensor([bool(e["negative"]) for e in examples])
        return batch


class CutTrainer(AltTrainer):
    """Two forward passes with gradient per batch: (x, j) and x; the loss is ``cut_loss``."""

    def __init__(self, *args, threshold: float = 1.1, weight: float = 1.0, **kwargs):
        super().__init__(*args, alpha=0.0, beta=0.0, **kwargs)
        self.threshold, self.weight = threshold, weight

    def compute_loss(self, model, inputs, return_outputs=False, num_items_in_batch=None):
        keep = self._response_span(inputs["labels"])
        logits = self._forward(model, inputs, keep=keep)  # (B, keep, V) given (x, j)
        uncond = self._forward(model, inputs, "ref_", keep)  # (B, keep, V) given x
        loss, metrics = cut_loss(logits, uncond, inputs["labels"][:, -keep:], inputs["negative"],
                                 self.threshold, self.weight)
        mode = "train" if model.training else "eval"
        for key, value in metrics.items():
            self._metrics[mode][key].append(value)
        return (loss, {"logits": logits}) if return_outputs else loss


def build_cut_examples(tokenizer, items: list[PoolItem], config: CutTrainConfig, fmt=None) -> list[dict]:
    """Negatives: (x, j) and x views of y; positives (down-sampled): x alone in both views."""
    negatives = [it for it in items if it.negative]
    positives = [it for it in items if not it.negative]
    if config.positive_ratio >= 0:
        keep = min(len(positives), math.ceil(config.positive_ratio * len(negatives)))
        positives = random.Random(config.seed).sample(positives, keep)
    judged = JUDGMENT_FORMAT.for_tokenizer(tokenizer)
    rows = []
    for it in negatives + positives:
        ex = conditioning.build_training_example(tokenizer, it.prompt, it.feedback if it.negative else None,
                                                 it.response, it.truncated, judged, config.max_response_tokens,
                                                 config.max_prompt_tokens)
        rows.append({"input_ids": ex.input_ids, "ref_input_ids": ex.ref_input_ids, "response_ids": ex.response_ids,
                     "negative": it.negative})
    return rows


def judgment_items(db: str, task, round_ids: list[int] | None = None, policy: str = "flush", truncated: str = "exclude",
                   **_) -> list[PoolItem]:
    """Negatives: generations with a written judgment (an annotator's outranks an AI's: ``effective_feedback``),
    else a category worse than the best (its text as the judgment); positives: the best category, or with no
    category an LLM judge's "good" verdict (a judgment with score 1). Flagged generations are left out, and
    truncated ones (no EOS) unless the pool's truncation policy keeps them (``last`` / ``worst``: they come in
    with their own feedback, trained without an EOS)."""
    with session_scope(db) as s:
        if round_ids is None:
            rounds = list(s.exec(select(Round.id).where(Round.task_id == task.id).order_by(Round.number)))
            round_ids = rounds[-1:] if policy == "flush" else rounds
        query = select(Generation, Prompt).join(Prompt, Generation.prompt_id == Prompt.id).where(
            Prompt.task_id == task.id, Generation.round_id.in_(round_ids))
        if truncated == "exclude":
            query = query.where(Generation.truncated == False)  # noqa: E712
        rows = s.exec(query.order_by(Generation.id)).all()
        ids = [g.id for g, _ in rows]
        categories = effective_feedback(s, ids, kinds=(FeedbackKind.CATEGORY,))
        judgments = {g: f for g, f in effective_feedback(s, ids, kinds=(FeedbackKind.JUDGMENT,)).items()
                     if (f.text or "").strip()}
        flagged = set(s.exec(select(Feedback.generation_id).where(
            Feedback.generation_id.in_(ids), Feedback.kind == FeedbackKind.FLAG,
            Feedback.source.like(f"{HUMAN_PREFIX}%"))))
        best = task.exemplar_category
        items = []
        for g, p in rows:
            if g.id in flagged:
                continue
            fb, cat = judgments.get(g.id), categories.get(g.id)
            category = cat.category if cat else None
            if g.truncated and truncated == "worst" and cat is not None and task.categories:
                category = task.categories[-1]  # as the pool does: a cut-off answer is the worst category
            if fb is not None and (fb.score is None or fb.score < 1):
                items.append(PoolItem(g.id, fb.id, p.id, conditioning.prompt_of(p), fb.text, g.response, g.truncated,
                                      category, None, negative=True))
            elif cat is not None and category == best:
                items.append(PoolItem(g.id, cat.id, p.id, conditioning.prompt_of(p), category, g.response, g.truncated,
                                      category, cat.score))
            elif cat is not None and category:
                items.append(PoolItem(g.id, cat.id, p.id, conditioning.prompt_of(p), category, g.response, g.truncated,
                                      category, cat.score, negative=True))
            elif fb is not None:  # a "good" verdict and no category: a positive
                items.append(PoolItem(g.id, fb.id, p.id, conditioning.prompt_of(p), fb.text, g.response, g.truncated,
                                      None, fb.score))
    return items


def check_judgments(items: list[PoolItem]) -> None:
    if not any(it.negative for it in items):
        raise ValueError("CUT needs negative judgments (an annotator's judgment, or a category worse than the best)")


def _objective():
    from .objective import Objective

    return Objective(
        "cut", CutTrainConfig, "MLE given the judgment + unlikelihood on the tokens it blames (CUT)",
        trainer=CutTrainer, collator=lambda tokenizer, config: CutCollator(tokenizer.pad_token_id),
        trainer_kwargs=lambda config, load_reference: {"threshold": config.ul_threshold, "weight": config.ul_weight},
        build_examples=build_cut_examples, format=lambda tokenizer, items, config, fmt: conditioning.Format("none"),
        task_format=lambda task: conditioning.Format("none"), items=judgment_items, check_items=check_judgments)


OBJECTIVE = _objective()
