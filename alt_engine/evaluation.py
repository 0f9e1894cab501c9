"""Evaluating a model version on the task's held-out probe prompts (split ``probe``).

A trained version is sampled conditioned on the exemplar feedback f̂ (the best
category; for free-text tasks the best-scored feedback text); the base version,
which never saw the conditioning format, is sampled unconditioned — the
baseline users would get. Metrics (stored in ``ModelVersion.metrics``, earlier
keys kept, and returned):

- ``category_share`` {category: share} and ``exemplar_share`` by the chosen
  provider, ``mean_score`` where it gives scores;
- ``perplexity`` = exp(mean token NLL) of the responses (+ EOS unless truncated)
  under the reference model — the root of the version chain, or ``reference`` —
  on the *unconditioned* prompt;
- ``dist1/2/3`` = unique n-grams / words over each prompt's generations,
  averaged over prompts (Quark's definition); ``mean_length`` (tokens);
  ``pct_truncated``.

Evaluation generations are stored as ``Generation`` rows with ``round_id=None``,
``model_version_id`` = the version and ``sampling_params["purpose"] = "eval"``:
they are auditable but never enter annotation queues or the data pool (both
work per round). The provider's feedback on them is stored like any other.
"""

from __future__ import annotations

import math
from collections import Counter, defaultdict
from collections.abc import Sequence
from dataclasses import asdict, dataclass

import torch
from sqlmodel import select

from . import conditioning
from .db import Generation, ModelVersion, Task, session_scope
from .feedback import FeedbackItem, Provider, store_results
from .modeling import load_model, load_tokenizer, resolve_model
from .openai_backend import sampling_model_name
from .prompts import task_prompts
from .sampling import SamplingParams, make_backend, sample_prompts
from .settings import Settings

METRICS = ("exemplar_share", "mean_score", "perplexity", "dist1", "dist2", "dist3", "mean_length", "pct_truncated")
LOWER_IS_BETTER = ("perplexity", "pct_truncated")


@dataclass
class EvalConfig:
    """How a version is evaluated; versions compare fairly only under the same config."""

    n: int = 1  # generations per probe prompt
    max_new_tokens: int = 48
    temperature: float = 1.0
    top_p: float = 0.9
    seed: int = 0
    batch_size: int = 16
    limit: int | None = None  # at most this many probe prompts


def distinct_n(texts_per_prompt: Sequence[Sequence[str]], n: int) -> float:
    """Mean over prompts of unique n-grams / words in that prompt's generations (words = whitespace split)."""
    values = []
    for texts in texts_per_prompt:
        grams, words = set(), 0
        for text in texts:
            tokens = text.split()
            words += len(tokens)
            grams.update(tuple(tokens[i:i + n]) for i in range(len(tokens) - n + 1))
        if words:
            values.append(len(grams) / words)
    return sum(values) / len(values) if values else 0.0


@torch.inference_mode()
def response_nll(model, tokenizer, prompts: Sequence, responses: Sequence[str], truncated: Sequence[bool],
                 batch_size: int = 8) -> tuple[float, int]:
    """(summed NLL, token count) of each response (+ EOS unless truncated) after its unconditioned prompt."""
    examples = [conditioning.build_training_example(tokenizer, p, None, r, t)
                for p, r, t in zip(prompts, responses, truncated)]
    total, count = 0.0, 0
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else 0
    for s in range(0, len(examples), batch_size):
        chunk = examples[s:s + batch_size]
        width = max(len(e.input_ids) + len(e.response_ids) for e in chunk)
        ids = torch.full((len(chunk), width), pad, dtype=torch.long)  # right padded
        labels = torch.full((len(chunk), width), -100, dtype=torch.long)
        mask = torch.zeros((len(chunk), width), dtype=torch.long)
        for row, e in enumerate(chunk):
            seq, start = e.input_ids + e.response_ids, len(e.input_ids)
            ids[row, :len(seq)] = torch.tensor(seq)
            mask[row, :len(seq)] = 1
            labels[row, start:len(seq)] = torch.tensor(e.response_ids)  # only response tokens scored
        logits = model(input_ids=ids.to(model.device), attention_mask=mask.to(model.device)).logits.float()
        nll = torch.nn.functional.cross_entropy(logits[:, :-1].reshape(-1, logits.size(-1)),  # (B*(T-1), V)
                                                labels[:, 1:].reshape(-1).to(model.device),
                                                ignore_index=-100, reduction="sum")
        total += nll.item()
        count += int((labels[:, 1:] != -100).sum())
    return total, count


def root_version(session, version: ModelVersion) -> ModelVersion:
    """The base model at the root of a version chain (the reference model)."""
    while version.parent_id is not None:
        version = session.get(ModelVersion, version.parent_id)
    return version


def exemplar_feedback(db: str, task: Task) -> list[str]:
    """f̂: the exemplar category, or for a task without categories the best-scored free-text feedback."""
    if task.exemplar_category:
        return [task.exemplar_category]
    from .feedback.llm import exemplar_pool

    return exemplar_pool(db, task.id)


def evaluate_version(db: str, settings: Settings, version_id: int, task: Task, provider: Provider | None = None,
                     config: EvalConfig | None = None, reference: str | None = None,
                     conditioned: bool | None = None, show_progress: bool = False) -> dict:
    """Sample the probe prompts with ``version_id``, score them and store the metrics on the version."""
    cfg = config or EvalConfig()
    with session_scope(db) as s:
        version = s.get(ModelVersion, version_id)
        if version is None:
            raise ValueError(f"no model version {version_id}")
        prompts = task_prompts(s, task, "probe", cfg.limit)
        ref_path = reference or root_version(s, version).path
    conditioned = version.objective != "base" if conditioned is None else conditioned
    feedback = None
    if conditioned:
        texts = exemplar_feedback(db, task)
        if not texts:
            raise ValueError(f"task {task.name!r} has no exemplar feedback to condition on")
        feedback = texts[0]

    params = SamplingParams(n=cfg.n, temperature=cfg.temperature, top_p=cfg.top_p, max_new_tokens=cfg.max_new_tokens,
                            seed=cfg.seed, batch_size=cfg.batch_size)
    backend = make_backend(settings.backend, resolve_model(version.path, settings.cache_dir), settings.device,
                           settings=settings, served_name=sampling_model_name(settings, version))
    gen_ids = sample_prompts(db, backend, prompts, params, conditioning_text=feedback,
                             prefix_format=task.prefix_format, model_version_id=version.id,
                             show_progress=show_progress)
    del backend
    with session_scope(db) as s:
        gens = list(s.exec(select(Generation).where(Generation.id.in_(gen_ids)).order_by(Generation.id)))
        for g in gens:
            g.sampling_params = {**g.sampling_params, "purpose": "eval"}
    by_id = {p.id: p for p in prompts}
    metrics: dict = {}

    if provider is not None:
        items = [FeedbackItem(g.id, conditioning.prompt_of(by_id[g.prompt_id]), g.response, g.prompt_id, g.truncated)
                 for g in gens]
        results = provider(items, task)
        store_results(db, provider.name, items, results, list(task.categories) or None)
        labels = Counter(r.category for r in results if r.ok and r.category in task.categories)
        scores = [r.score for r in results if r.ok and r.score is not None]
        n_labelled = sum(labels.values())
        metrics["category_share"] = {c: labels[c] / n_labelled for c in task.categories} if n_labelled else {}
        if n_labelled and task.exemplar_category:
            metrics["exemplar_share"] = labels[task.exemplar_category] / n_labelled
        if scores:
            metrics["mean_score"] = sum(scores) / len(scores)
        metrics["labelled"] = n_labelled

    ref_model = load_model(resolve_model(ref_path, settings.cache_dir), settings.device)
    ref_tok = load_tokenizer(resolve_model(ref_path, settings.cache_dir))
    nll, tokens = response_nll(ref_model, ref_tok, [conditioning.prompt_of(by_id[g.prompt_id]) for g in gens],
                               [g.response for g in gens], [g.truncated for g in gens])
    del ref_model
    texts: dict[int, list[str]] = defaultdict(list)
    for g in gens:
        texts[g.prompt_id].append(g.response)
    metrics |= {
        "perplexity": math.exp(nll / tokens) if tokens else float("nan"),
        **{f"dist{n}": distinct_n(list(texts.values()), n) for n in (1, 2, 3)},
        "mean_length": sum(g.response_tokens for g in gens) / len(gens),
        "pct_truncated": 100.0 * sum(g.truncated for g in gens) / len(gens),
        "eval": {**asdict(cfg), "provider": provider.name if provider else None, "conditioning": feedback,
                 "reference": ref_path, "probe_prompts": len(prompts), "generations": len(gens)},
    }
    if not math.isfinite(metrics["perplexity"]):
        metrics["perplexity"] = None  # JSON has no NaN
    with session_scope(db) as s:
        row = s.get(ModelVersion, version_id)
        row.metrics = {**(row.metrics or {}), **metrics}
    return metrics


def is_better(new: dict, old: dict, metric: str) -> bool:
    """Whether ``new`` beats ``old`` on ``metric`` (lower is better for perplexity and truncation)."""
    a, b = new.get(metric), old.get(metric)
    if a is None:
        return False
    if b is None:
        return True
    return a < b if metric in LOWER_IS_BETTER else a > b
