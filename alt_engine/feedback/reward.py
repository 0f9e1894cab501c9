"""Reward providers: a scalar score per response, cut into K quantiles mapped to the task's ordered categories.

The scorer is either a transformers sequence-classification model (any path or
hub id; prompt and response go in as a text pair) or a Python callable
``f(prompts, responses) -> list[float]`` named ``module:function``. Scores are
ranked per prompt (ALT) or over the whole batch given (Quark, ``per_prompt=False``):
the highest ``n // K`` scores get the best category, the next ``n // K`` the
second, ...; the remainder (``n % K`` lowest) goes to the worst bin. With fewer
scores than categories (say 2 samples, 5 categories) the ranks are spread from
the best bin to the worst instead, so the samples of a prompt still contrast; a
lone score goes to the worst bin (the remainder rule).
"""

from __future__ import annotations

import importlib
from collections import defaultdict
from collections.abc import Callable, Sequence
from dataclasses import dataclass

from ..db import Task
from .base import FeedbackItem, FeedbackResult

Scorer = Callable[[list, list[str]], list[float]]


def quantile_bins(scores: Sequence[float], k: int) -> list[int]:
    """Bin per score, 0 = best (highest scores) .. k-1 = worst; ties keep input order."""
    n = len(scores)
    order = sorted(range(n), key=lambda i: -scores[i])  # stable: earlier item wins a tie
    size = n // k
    bins = [0] * n
    for rank, i in enumerate(order):
        if size:
            bins[i] = min(rank // size, k - 1)
        else:  # fewer scores than bins: best → best bin, worst → worst bin, the rest spread between
            bins[i] = k - 1 if n == 1 else round(rank * (k - 1) / (n - 1))
    return bins


def _prompt_text(prompt) -> str:
    if isinstance(prompt, str):
        return prompt
    return "\n".join(f"{m['role']}: {m['content']}" for m in prompt)


class ClassifierScorer:
    """A sequence-classification model as a scorer: the logit of ``label`` (default: the last one)."""

    def __init__(self, path: str, device: str = "cpu", batch_size: int = 16, label: int = -1):
        from transformers import AutoModelForSequenceClassification, AutoTokenizer

        self.tokenizer = AutoTokenizer.from_pretrained(path)
        if self.tokenizer.pad_token is None:
            self.tokenizer.pad_token = self.tokenizer.eos_token
        self.model = AutoModelForSequenceClassification.from_pretrained(path).to(device).eval()
        if self.model.config.pad_token_id is None:
            self.model.config.pad_token_id = self.tokenizer.pad_token_id
        self.batch_size, self.label = batch_size, label

    def __call__(self, prompts: list, responses: list[str]) -> list[float]:
        import torch

        scores: list[float] = []
        with torch.inference_mode():
            for s in range(0, len(responses), self.batch_size):
                enc = self.tokenizer([_prompt_text(p) for p in prompts[s:s + self.batch_size]],
                                     responses[s:s + self.batch_size], padding=True, truncation=True,
                                     max_length=512, return_tensors="pt").to(self.model.device)
                logits = self.model(**enc).logits  # (batch, num_labels)
                scores.extend(logits[:, self.label].float().tolist())
        return scores


def load_callable(ref: str) -> Scorer:
    """``package.module:function`` → the function."""
    module, _, name = ref.partition(":")
    try:
        fn = getattr(importlib.import_module(module), name)
    except (ImportError, AttributeError) as e:
        raise ValueError(f"reward scorer {ref!r} not found ({e})") from e
    if not callable(fn):
        raise ValueError(f"reward scorer {ref!r} is not callable")
    return fn


@dataclass
class RewardProvider:
    """Scores → quantile categories; the score is stored with the category."""

    name: str
    scorer: Scorer
    per_prompt: bool = True  # ALT: quantiles per prompt; False = over the whole batch (Quark)
    chunk_size: int | None = None  # needs every item of a round at once (quantiles)

    def __call__(self, items: list[FeedbackItem], task: Task) -> list[FeedbackResult]:
        cats = list(task.categories)
        if len(cats) < 2:
            raise ValueError(f"{self.name} needs a task with at least two categories; {task.name!r} has {len(cats)}")
        if not items:
            return []
        scores = [float(x) for x in self.scorer([it.prompt for it in items], [it.response for it in items])]
        if len(scores) != len(items):
            raise ValueError(f"{self.name} returned {len(scores)} scores for {len(items)} responses")
        groups: dict[object, list[int]] = defaultdict(list)
        for i, it in enumerate(items):
            groups[it.prompt_id if self.per_prompt else None].append(i)
        results: list[FeedbackResult] = [None] * len(items)  # type: ignore[list-item]
        for idx in groups.values():
            for i, b in zip(idx, quantile_bins([scores[i] for i in idx], len(cats))):
                results[i] = FeedbackResult(category=cats[b], score=scores[i], raw=f"score={scores[i]:.6g}")
        return results


def make_reward(ref: str, device: str = "cpu", per_prompt: bool = True) -> RewardProvider:
    """``module:function`` (a Python scorer) or a model path / hub id (a sequence classifier)."""
    if not ref:
        raise ValueError("reward provider needs a model path or module:function, e.g. reward:my_pkg.scores:score")
    module, sep, fn = ref.partition(":")
    if sep and fn.isidentifier() and not ref.startswith(("/", ".")):
        return RewardProvider(f"reward:{ref}", load_callable(ref), per_prompt)
    return RewardProvider(f"reward:{ref}", ClassifierScorer(ref, device), per_prompt)
