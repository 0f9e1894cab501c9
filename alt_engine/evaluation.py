"""Evaluating a model version on the task's held-out probe prompts (split ``probe``).

Every version — the untrained base included — is sampled under the *same* conditioning format (the
version's own, else the task's), so an effect is measured against the untrained model under that
format, never against 0 (an instruct model already reacts to a label in its system prompt).

Per version, with 95% bootstrap intervals over prompts (``stats``):

- **conditioned on the best feedback** f̂ (the exemplar category, or ``--condition TEXT``):
  ``category_share`` and ``exemplar_share`` by the chosen provider, ``mean_score`` where it gives scores,
  ``mean_words``; ``perplexity`` = exp(mean token NLL) of the responses (+ EOS unless truncated) under
  the reference model (the root of the version chain) on the *unconditioned* prompt; ``dist1/2/3``;
  ``mean_length`` (tokens); ``pct_truncated``;
- **steerability**: the same prompts conditioned on the worst feedback too (or the second ``--condition``
  text); per attribute (exemplar share, mean score, score-3 share, mean words, % truncated, and each attribute a
  provider measures — ``rule:free_text``'s ``attr:length`` words, ``attr:subject`` share …) the value under each
  and the gap best − worst with a paired CI; per-prompt values under both are kept (``per_prompt`` and
  ``per_prompt_contrast``) so gaps between separate evaluations of the same prompts pair up;
- **label-learned diagnostic** (no sampling): on a fixed held-out set of labelled probe responses, the
  summed log-likelihood of each response under its own label minus under the opposite label
  (``ll_gap``, nats per response), and the same for the EOS token alone (``eos_gap``) — docs/design.md §1:
  a per-token mean hides what a label does to the few tokens that decide length.

Evaluation generations are stored as ``Generation`` rows with ``round_id=None`` and
``sampling_params["purpose"] = "eval"``: auditable, never in annotation queues or the data pool.
"""

from __future__ import annotations

import math
import os
import warnings
from collections import defaultdict
from collections.abc import Sequence
from dataclasses import asdict, dataclass

import torch
from sqlmodel import select

from . import conditioning, guidance
from .db import Feedback, Generation, ModelVersion, ObjectiveName, Placement, Prompt, Round, Task, session_scope
from .exemplars import contrast_feedback, exemplar_feedback
from .feedback import FeedbackItem, Provider, store_results
from .feedback.base import count_words
from .prompts import task_prompts
from .sampling import SamplingParams, load_sampler, sample_prompts, takes_seed_index
from .settings import Settings
from .stats import Estimate, gap_ci, per_prompt_ci

METRICS = ("exemplar_share", "mean_score", "steerability_gap", "perplexity", "dist1", "dist2", "dist3",
           "mean_length", "mean_words", "pct_truncated")
LOWER_IS_BETTER = ("perplexity", "pct_truncated")
MIN_PROBE_PROMPTS, MIN_N = 30, 4  # resolves a 15-point change in a share (docs/design.md §1, "Evaluation size")
DEFAULT_MAX_NEW_TOKENS = 160  # = SamplingParams.max_new_tokens (no torch-free import of it here)


@dataclass
class EvalConfig:
    """How a version is evaluated; versions compare fairly only under the same config."""

    n: int = MIN_N  # generations per probe prompt and conditioning
    max_new_tokens: int | None = None  # None: what the task's latest round sampled with
    temperature: float = 1.0
    top_p: float = 0.9
    seed: int = 0
    batch_size: int = 0  # 0: the sampler's measured choice
    limit: int | None = None  # at most this many probe prompts
    conditions: list[str] | None = None  # [main, contrast] feedback texts; None: best and worst category
    steer: bool = True  # also sample the contrast conditioning (steerability)
    diagnostic_size: int = 64  # held-out responses for the label-learned diagnostic (0 = skip)
    conditioned: bool = True  # False: the plain prompt (what a user of the untuned model gets)
    mask_control_tokens: bool = False  # Quark: no control token is ever sampled (SamplingParams')
    revision_passes: int = 0  # Critique-and-Revise versions: each answer revised this many times before scoring
    guidance: float = 0.0  # feedback guidance γ at decoding (``guidance.py``); 0 = plain sampling
    negative: str = "worst"  # f⁻ of guidance: worst | plain | a feedback text

    def key(self) -> dict:
        """What must match for two evaluations to be comparable (an option at its default is left out, so
        evaluations stored before it existed stay comparable)."""
        return {k: v for k, v in asdict(self).items()
                if k != "batch_size" and not (k in ("mask_control_tokens", "revision_passes", "guidance") and not v)
                and not (k == "negative" and not self.guidance)}


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
def response_logprobs(model, examples: Sequence[conditioning.TrainingExample], pad_id: int = 0,
                      batch_size: int = 16) -> list[list[float]]:
    """Per example, the log-probability of each response token (+ EOS where the example has it).

    Examples go longest first, ``batch_size`` at a time, left padded (positions from the mask), so every
    response ends at the last column: the LM head and the log-softmax over the vocabulary run only on the
    last (longest response + 1) positions (``logits_to_keep``), not on every prompt token. Threads as the
    sampler chooses them (``ALT_THREADS``, else ``modeling.choose_threads``: 1 on a loaded machine).
    """
    from .modeling import choose_threads
    from .sampling import using_threads

    out: list[list[float]] = [[] for _ in examples]
    order = sorted(range(len(examples)), key=lambda k: -len(examples[k].input_ids) - len(examples[k].response_ids))
    with using_threads(int(os.environ.get("ALT_THREADS", "0")) or choose_threads()):
        for s in range(0, len(order), batch_size):
            chunk = order[s:s + batch_size]
            seqs = [examples[k].input_ids + examples[k].response_ids for k in chunk]
            width = max(len(q) for q in seqs)
            keep = min(width, 1 + max(len(examples[k].response_ids) for k in chunk))  # columns scored
            ids = torch.full((len(chunk), width), pad_id, dtype=torch.long)  # left padded
            mask = torch.zeros((len(chunk), width), dtype=torch.long)
            for row, seq in enumerate(seqs):
                ids[row, width - len(seq):] = torch.tensor(seq)
                mask[row, width - len(seq):] = 1
            positions = (mask.cumsum(-1) - 1).clamp(min=0)
            logits = model(input_ids=ids.to(model.device), attention_mask=mask.to(model.device),
                           position_ids=positions.to(model.device), logits_to_keep=keep).logits[:, :-1].float()
            targets = ids[:, width - keep + 1:].unsqueeze(-1).to(logits.device)  # (B, keep-1, 1): what each predicts
            picked = (logits.gather(-1, targets).squeeze(-1) - torch.logsumexp(logits, -1)).cpu()  # (B, keep-1)
            for row, k in enumerate(chunk):
                n = len(examples[k].response_ids)  # its response: the last n targets
                out[k] = picked[row, keep - 1 - n:].tolist() if n else []
    return out


def response_nll(model, tokenizer, prompts: Sequence, responses: Sequence[str], truncated: Sequence[bool],
                 batch_size: int = 16) -> tuple[float, int]:
    """(summed NLL, token count) of each response (+ EOS unless truncated) after its unconditioned prompt."""
    examples = [conditioning.build_training_example(tokenizer, p, None, r, t)
                for p, r, t in zip(prompts, responses, truncated)]
    lps = response_logprobs(model, examples, _pad(tokenizer), batch_size)
    return -sum(sum(x) for x in lps), sum(len(x) for x in lps)


def _pad(tokenizer) -> int:
    return tokenizer.pad_token_id if tokenizer.pad_token_id is not None else 0


def root_version(session, version: ModelVersion) -> ModelVersion:
    """The base model at the root of a version chain (the reference model)."""
    while version.parent_id is not None:
        version = session.get(ModelVersion, version.parent_id)
    return version


def eval_max_new_tokens(db: str, task: Task, cfg: EvalConfig) -> int:
    """The config's, else what the task's latest round sampled with (so evaluation sees what training saw)."""
    if cfg.max_new_tokens:
        return cfg.max_new_tokens
    with session_scope(db) as s:
        gen = s.exec(select(Generation).join(Round).where(Round.task_id == task.id)
                     .order_by(Generation.id.desc()).limit(1)).first()
    return int((gen.sampling_params or {}).get("max_new_tokens", DEFAULT_MAX_NEW_TOKENS)) if gen else \
        DEFAULT_MAX_NEW_TOKENS


def reference_model(path: str, settings: Settings):
    """The reference (the version chain's root) for perplexity: loaded once per process, shared with samplers."""
    from .modeling import cached_model, cached_tokenizer, resolve_model

    resolved = resolve_model(path, settings.cache_dir)
    return cached_model(resolved, settings.device), cached_tokenizer(resolved)


def _label(provider: Provider, task: Task, db: str, gens: list[Generation], prompts: dict) -> list:
    items = [FeedbackItem(g.id, conditioning.prompt_of(prompts[g.prompt_id]), g.response, g.prompt_id, g.truncated)
             for g in gens]
    results = provider(items, task)
    store_results(db, provider.name, items, results, list(task.categories) or None)
    return results


def _attributes(task: Task, gens: list[Generation], results: list | None, provider: Provider | None = None,
                prompts: dict | None = None) -> dict[str, dict[int, list[float]]]:
    """Per attribute, {prompt id: [value per generation]} — what the bootstrap resamples."""
    attrs: dict[str, dict[int, list[float]]] = defaultdict(lambda: defaultdict(list))
    measure = getattr(provider, "values", None)  # a provider that measures attributes (rule:free_text)
    for i, g in enumerate(gens):
        if measure is not None and prompts is not None:
            for name, value in measure(conditioning.prompt_of(prompts[g.prompt_id]), g.response, g.truncated).items():
                attrs[f"attr:{name}"][g.prompt_id].append(value)
        attrs["mean_words"][g.prompt_id].append(count_words(g.response))
        attrs["mean_length"][g.prompt_id].append(g.response_tokens)
        attrs["pct_truncated"][g.prompt_id].append(100.0 * g.truncated)
        r = results[i] if results is not None else None
        if r is not None and r.ok and r.category in task.categories:
            for c in task.categories:
                attrs[f"share:{c}"][g.prompt_id].append(float(r.category == c))
            if task.exemplar_category:
                attrs["exemplar_share"][g.prompt_id].append(float(r.category == task.exemplar_category))
        if r is not None and r.ok and r.score is not None:
            attrs["mean_score"][g.prompt_id].append(float(r.score))
            attrs["score3_share"][g.prompt_id].append(float(r.score >= 3))  # free text's best (0–3 scores)
    return {k: dict(v) for k, v in attrs.items()}


def _estimate(values: dict[int, list[float]], seed: int) -> Estimate:
    return per_prompt_ci(values, seed=seed)


def label_logprobs(model, tokenizer, fmt: conditioning.Format, rows: Sequence[tuple],
                   batch_size: int = 16) -> list[list[float]]:
    """Per (prompt, response, truncated, feedback) row, log p of each response token (+ EOS) given that feedback
    in ``fmt``: the label-learned diagnostic's scoring, also the annotation queue's uncertainty (queue_order)."""
    examples = [conditioning.build_training_example(tokenizer, p, f, r, t, fmt) for p, r, t, f in rows]
    return response_logprobs(model, examples, _pad(tokenizer), batch_size)


def label_diagnostic(model, tokenizer, fmt: conditioning.Format, examples: list[tuple], batch_size: int = 16) -> dict:
    """``examples``: (prompt, response, truncated, own label, opposite label). Mean gaps own − opposite, with CIs.

    ``ll_gap``: summed log-likelihood of the response (+ EOS); ``eos_gap``: log p(EOS) at the end of a
    finished response. Both > 0 once the model has learned what its labels mean.
    """
    own = [(p, r, t, f) for p, r, t, f, _ in examples]
    swap = [(p, r, t, f) for p, r, t, _, f in examples]
    lps = label_logprobs(model, tokenizer, fmt, own + swap, batch_size)  # one pass: similar lengths batch
    lp_own, lp_swap = lps[:len(own)], lps[len(own):]
    ll = {i: [sum(a) - sum(b)] for i, (a, b) in enumerate(zip(lp_own, lp_swap))}
    eos = {i: [a[-1] - b[-1]] for i, (a, b, ex) in enumerate(zip(lp_own, lp_swap, examples)) if not ex[2] and a}
    ll_ci, eos_ci = per_prompt_ci(ll), per_prompt_ci(eos)
    return {"ll_gap": ll_ci.value, "ll_gap_ci": [ll_ci.low, ll_ci.high],
            "eos_gap": eos_ci.value if eos else None, "eos_gap_ci": [eos_ci.low, eos_ci.high] if eos else None,
            "responses": len(examples)}


def _diagnostic_set(db: str, task: Task, root_id: int, provider_name: str, size: int) -> list[tuple]:
    """Held-out labelled probe responses of the root version (fixed across rounds), with opposite labels."""
    cats = list(task.categories)
    if len(cats) < 2 or size <= 0:
        return []
    with session_scope(db) as s:
        rows = s.exec(select(Generation, Feedback).join(Feedback, Feedback.generation_id == Generation.id).where(
            Generation.model_version_id == root_id, Generation.round_id.is_(None),
            Feedback.source == provider_name, Feedback.category.in_(cats)).order_by(Generation.id)).all()
        prompts = {p.id: p for p in task_prompts(s, task, "probe", None)}
    out = []
    for g, f in rows:
        rank = cats.index(f.category)
        other = len(cats) - 1 - rank
        if other != rank and g.prompt_id in prompts:
            out.append((conditioning.prompt_of(prompts[g.prompt_id]), g.response, g.truncated, f.category,
                        cats[other]))
    step = max(1, len(out) // size)
    return out[::step][:size]  # spread over prompts, deterministic


def _revise_answers(backend, gens: list[Generation], prompts: dict, passes: int, max_new: int, log) -> None:
    """Critique-and-Revise at evaluation: each answer replaced by its revision after ``passes`` greedy passes
    (the first answer and the passes made kept in ``sampling_params``); the caller's session stores it."""
    from .revise import final_answer, revise_many

    if log:
        log(f"  revise {len(gens)} answers, up to {passes} pass(es)")
    params = SamplingParams(n=1, temperature=0.0, max_new_tokens=2 * max_new)  # critique + revision
    steps = revise_many(backend, [conditioning.prompt_of(prompts[g.prompt_id]) for g in gens],
                        [g.response for g in gens], passes, params)
    for g, st in zip(gens, steps):
        final = final_answer(st, g.response)
        g.sampling_params = {**g.sampling_params, "first_answer": g.response,
                             "revision_passes": sum(1 for x in st if x.revision)}
        g.response = final


def _sample_conditionings(db: str, backend, version: ModelVersion, prompts: list[Prompt], params: SamplingParams,
                          conds: list[str | None], fmt: conditioning.Format, show_progress: bool,
                          log, negs: list[str | None]) -> list[list[int]]:
    """The probe prompts sampled under each conditioning; generation ids per conditioning.

    A backend that ``takes_seed_index`` samples all conditionings in one pass (fuller batches, one drain at
    the end instead of one per conditioning), prompt i drawing from the same random streams under each
    (paired samples, as separate passes with the same seed give).
    """
    if log:
        for c, n in zip(conds, negs):
            log(f"  evaluate {version.name}: {len(prompts)} probe prompts × {params.n} conditioned on {c!r}"
                + (f", guidance γ={params.guidance:g} away from {n!r}" if params.guidance and c is not None else ""))
    if len(conds) < 2 or not takes_seed_index(backend):
        return [sample_prompts(db, backend, prompts, params, conditioning_text=c, fmt=fmt, model_version_id=version.id,
                               show_progress=show_progress, negative_text=n) for c, n in zip(conds, negs)]
    ids = sample_prompts(db, backend, list(prompts) * len(conds), params,
                         conditioning_text=[c for c in conds for _ in prompts], fmt=fmt, model_version_id=version.id,
                         show_progress=show_progress, seed_index=list(range(len(prompts))) * len(conds),
                         negative_text=[n for n in negs for _ in prompts])
    per = len(prompts) * params.n  # ids come prompt by prompt, n each
    return [ids[k * per:(k + 1) * per] for k in range(len(conds))]


def evaluate_version(db: str, settings: Settings, version_id: int, task: Task, provider: Provider | None = None,
                     config: EvalConfig | None = None, reference: str | None = None,
                     conditioned: bool | None = None, show_progress: bool = False, backend=None,
                     log=None, fmt: conditioning.Format | None = None, revise: bool | None = None) -> dict:
    """Sample the probe prompts with ``version_id`` under the best (and worst) feedback, score, store metrics.

    ``backend``: an already loaded sampler for this version's weights (a round reuses its own). ``fmt``:
    another conditioning format than the version's own; ``revise``: apply ``config.revision_passes`` (default:
    for a Critique-and-Revise version) — together, the untrained base as another objective would use it.
    """
    cfg = config or EvalConfig()
    if conditioned is not None:
        cfg = EvalConfig(**{**asdict(cfg), "conditioned": conditioned})
    with session_scope(db) as s:
        version = s.get(ModelVersion, version_id)
        if version is None:
            raise ValueError(f"no model version {version_id}")
        prompts = task_prompts(s, task, "probe", cfg.limit)
        root = root_version(s, version)
        ref_path = reference or root.path
    fmt = fmt or conditioning.format_of(version, task)
    revise = version.objective == ObjectiveName.CNR if revise is None else revise
    notes: list[str] = []
    if len(prompts) < MIN_PROBE_PROMPTS or cfg.n < MIN_N:
        notes.append(f"{len(prompts)} probe prompts × n={cfg.n}: too few to resolve a 15-point change in a share "
                     f"(use ≥ {MIN_PROBE_PROMPTS} prompts × n ≥ {MIN_N}); intervals will be wide")
        warnings.warn(notes[-1], stacklevel=2)
    conds: list[str | None] = [None]
    if cfg.conditioned:
        conds = list(cfg.conditions or contrast_feedback(db, task))
        if not conds or not conds[0]:
            raise ValueError(f"task {task.name!r} has no exemplar feedback to condition on")
        if not cfg.steer or fmt.placement == Placement.NONE:  # a model that reads no feedback has no steerability:
            conds = conds[:1]  # a second pass would sample the very same plain prompts again
    max_new = eval_max_new_tokens(db, task, cfg)
    params = SamplingParams(n=cfg.n, temperature=cfg.temperature, top_p=cfg.top_p, max_new_tokens=max_new,
                            seed=cfg.seed, batch_size=cfg.batch_size, mask_control_tokens=cfg.mask_control_tokens,
                            guidance=cfg.guidance, negative=cfg.negative)
    backend = backend or load_sampler(settings, version)
    negs = guidance.negatives(db, task, cfg.negative, conds[:2]) if cfg.guidance else [None] * len(conds[:2])
    by_id = {p.id: p for p in prompts}
    per_cond: list[tuple[list[Generation], dict]] = []
    for gen_ids in _sample_conditionings(db, backend, version, prompts, params, conds[:2], fmt, show_progress, log,
                                         negs):
        with session_scope(db) as s:
            gens = list(s.exec(select(Generation).where(Generation.id.in_(gen_ids)).order_by(Generation.id)))
            for g in gens:
                g.sampling_params = {**g.sampling_params, "purpose": "eval"}
            if cfg.revision_passes and revise:
                _revise_answers(backend, gens, by_id, cfg.revision_passes, max_new, log)
        results = _label(provider, task, db, gens, by_id) if provider is not None else None
        per_cond.append((gens, _attributes(task, gens, results, provider, by_id)))

    gens, attrs = per_cond[0]
    metrics: dict = {"warnings": notes}
    est = {k: _estimate(v, cfg.seed) for k, v in attrs.items()}
    if provider is not None:
        shares = {c: est[f"share:{c}"] for c in task.categories if f"share:{c}" in est}
        metrics["labelled"] = sum(len(v) for v in attrs.get("exemplar_share", attrs.get("mean_score", {})).values())
        metrics["category_share"] = {c: e.value for c, e in shares.items()}
        metrics["category_share_ci"] = {c: [e.low, e.high] for c, e in shares.items()}
    for name in ("exemplar_share", "mean_score", "score3_share", "mean_words", "mean_length", "pct_truncated",
                 *sorted(k for k in est if k.startswith("attr:"))):
        if name in est:
            metrics[name] = est[name].value
            metrics[f"{name}_ci"] = [est[name].low, est[name].high]
    texts: dict[int, list[str]] = defaultdict(list)
    for g in gens:
        texts[g.prompt_id].append(g.response)
    metrics |= {f"dist{n}": distinct_n(list(texts.values()), n) for n in (1, 2, 3)}

    if len(per_cond) == 2:  # steerability: best − worst on the same prompts
        other = per_cond[1][1]
        steer = {"feedback": conds[:2]}
        for name in ("exemplar_share", "mean_score", "score3_share", "mean_words", "pct_truncated",
                     *sorted(k for k in attrs if k.startswith("attr:"))):
            if name in attrs and name in other:
                gap = gap_ci(attrs[name], other[name], seed=cfg.seed)
                steer[name] = {"best": est[name].value, "worst": _estimate(other[name], cfg.seed).value,
                               "gap": gap.value, "gap_ci": [gap.low, gap.high]}
        metrics["steer"] = steer
        # scored feedback (reward): categories are quantiles within each prompt's samples, so the reward itself
        primary = "mean_score" if "mean_score" in steer else "exemplar_share" if "exemplar_share" in steer else None
        if primary:
            metrics["steerability_gap"] = steer[primary]["gap"]
            metrics["steerability_gap_ci"] = steer[primary]["gap_ci"]
            metrics["steerability_attribute"] = primary

    ref_model, ref_tok = reference_model(ref_path, settings)  # fp32, loaded once (the sampler may run bf16)
    nll, tokens = response_nll(ref_model, ref_tok, [conditioning.prompt_of(by_id[g.prompt_id]) for g in gens],
                               [g.response for g in gens], [g.truncated for g in gens])
    metrics["perplexity"] = math.exp(nll / tokens) if tokens else None

    if provider is not None and cfg.conditioned and settings.backend == "transformers":
        examples = _diagnostic_set(db, task, root.id, provider.name, cfg.diagnostic_size)
        if examples:
            model, tok = reference_model(version.path, settings)  # the version's own fp32 weights, cached
            metrics["label_learned"] = label_diagnostic(model, tok, fmt.for_tokenizer(tok), examples)
    kept = ("exemplar_share", "mean_score", "score3_share", "mean_words")
    metrics["per_prompt"] = {k: {str(p): v for p, v in attrs[k].items()}
                             for k in attrs if k in kept or k.startswith("attr:")}
    if len(per_cond) == 2:
        metrics["per_prompt_contrast"] = {k: {str(p): v for p, v in per_cond[1][1][k].items()}
                                          for k in per_cond[1][1] if k in kept or k.startswith("attr:")}
    metrics["eval"] = {**cfg.key(), "max_new_tokens": max_new, "provider": provider.name if provider else None,
                       "conditioning": conds[0], "contrast": conds[1] if len(conds) > 1 else None,
                       **({"negative_feedback": negs} if cfg.guidance else {}),
                       "format": fmt.to_dict(), "reference": ref_path, "probe_prompts": len(prompts),
                       "generations": len(gens)}
    metrics = _json_safe(metrics)
    with session_scope(db) as s:
        row = s.get(ModelVersion, version_id)
        row.metrics = {**(row.metrics or {}), **metrics}
    return metrics


def _json_safe(x):
    """JSON has no NaN: None instead."""
    if isinstance(x, float):
        return x if math.isfinite(x) else None
    if isinstance(x, dict):
        return {k: _json_safe(v) for k, v in x.items()}
    if isinstance(x, list | tuple):
        return [_json_safe(v) for v in x]
    return x


def compare(new: dict, old: dict, metric: str, seed: int = 0) -> Estimate | None:
    """new − old on ``metric`` with a paired bootstrap CI over the probe prompts both evaluated (None: no data)."""
    a, b = (new.get("per_prompt") or {}).get(metric), (old.get("per_prompt") or {}).get(metric)
    if a and b:
        return gap_ci(a, b, seed=seed)
    return None


def is_better(new: dict, old: dict, metric: str) -> bool:
    """Whether ``new`` beats ``old`` on ``metric`` beyond chance: the 95% CI of the difference excludes 0.

    Metrics with per-prompt values (shares, scores, words) use a paired bootstrap over prompts; the gap
    metric uses its own interval (the new lower bound above the old upper bound); others (perplexity,
    dist-n) compare point estimates, lower being better for perplexity and truncation.
    """
    diff = compare(new, old, metric)
    if diff is not None:
        return diff.low > 0
    a, b = new.get(metric), old.get(metric)
    if a is None:
        return False
    if b is None:
        return True
    if f"{metric}_ci" in new and f"{metric}_ci" in old and metric not in LOWER_IS_BETTER:
        return new[f"{metric}_ci"][0] > old[f"{metric}_ci"][1]
    return a < b if metric in LOWER_IS_BETTER else a > b


def is_worse(new: dict, old: dict, metric: str) -> bool:
    """Whether ``new`` is worse than ``old`` beyond chance (the mirror of ``is_better``)."""
    diff = compare(new, old, metric)
    if diff is not None:
        return diff.high < 0
    return is_better(old, new, metric)


def summarize(metrics: dict) -> str:
    """One line per measure, with intervals, for the CLI."""
    def ci(name):
        v, c = metrics.get(name), metrics.get(f"{name}_ci")
        if v is None:
            return None
        return f"{v:.3f} [{c[0]:.3f}, {c[1]:.3f}]" if c and None not in c else f"{v:.3f}"

    lines = []
    for name in ("exemplar_share", "mean_score", "score3_share", "mean_words", "steerability_gap",
                 *sorted(k for k in metrics if k.startswith("attr:") and not k.endswith("_ci"))):
        if ci(name):
            lines.append(f"  {name:18s} {ci(name)}")
    if metrics.get("steer"):
        for name, d in metrics["steer"].items():
            if isinstance(d, dict):
                lines.append(f"  steer {name:12s} best {d['best']:.3f}  worst {d['worst']:.3f}  gap {d['gap']:+.3f} "
                             f"[{d['gap_ci'][0]:+.3f}, {d['gap_ci'][1]:+.3f}]")
    if metrics.get("label_learned"):
        d = metrics["label_learned"]
        eos = f"  eos_gap {d['eos_gap']:+.3f}" if d.get("eos_gap") is not None else ""
        lines.append(f"  label-learned      ll_gap {d['ll_gap']:+.3f} nats/response{eos} ({d['responses']} responses)")
    for name in ("perplexity", "dist1", "dist2", "dist3", "mean_length", "pct_truncated"):
        if metrics.get(name) is not None:
            lines.append(f"  {name:18s} {metrics[name]:.3f}")
    lines += [f"  warning: {w}" for w in metrics.get("warnings", [])]
    return "\n".join(lines)


__all__ = ["EvalConfig", "METRICS", "LOWER_IS_BETTER", "compare", "contrast_feedback", "distinct_n",
           "evaluate_version", "exemplar_feedback", "is_better", "is_worse", "label_diagnostic", "label_logprobs",
           "response_logprobs", "response_nll", "root_version", "summarize"]
