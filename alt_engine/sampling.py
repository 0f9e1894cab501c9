"""The sampling stage: conditioned inputs through a backend, each batch of generations stored in one transaction.

``sample_prompts`` builds conditioned inputs with ``conditioning.build_input``, asks the backend for samples
batch by batch and writes each batch of generations to the database in one transaction. The backends live in
their own modules (``backend_types``: the interface; ``transformers_backend``, ``vllm_backend``,
``openai_backend``; ``backend_factory``: by name); their names are re-exported here, where callers import them
(patch ``transformers_backend.KV_TOKEN_BUDGET`` and the like where they are looked up, not here).
"""

from __future__ import annotations

import inspect
from collections.abc import Sequence
from dataclasses import asdict, replace

from tqdm.auto import tqdm

from . import conditioning
from .backend_factory import cached_backend, load_sampler, make_backend
from .backend_types import MAX_GUIDANCE, Backend, OnStep, Progress, Sample, SamplingParams, Throughput, report
from .db import Generation, Placement, Prompt, session_scope
from .transformers_backend import TransformersBackend, guided_logits, next_tokens, sequence_seed, using_threads

__all__ = ["MAX_GUIDANCE", "Backend", "OnStep", "Progress", "Sample", "SamplingParams", "Throughput",
           "TransformersBackend", "cached_backend", "check_guidance", "guided_logits", "load_sampler", "make_backend",
           "next_tokens", "report", "sample_prompts", "sequence_seed", "takes_seed_index", "using_threads",
           "with_masks"]


def with_masks(params: SamplingParams, tokenizer, fmt: conditioning.Format | None) -> SamplingParams:
    """``params`` with ``mask_control_tokens`` resolved: the format's control tokens added to ``suppress_tokens``."""
    if not params.mask_control_tokens:
        return params
    ids = conditioning.control_token_ids(tokenizer, fmt)
    return replace(params, suppress_tokens=sorted(set(params.suppress_tokens) | set(ids)))


def sample_prompts(db: str, backend: Backend, prompts: Sequence[Prompt], params: SamplingParams, *,
                   conditioning_text: str | None | Sequence[str | None] = None, fmt: conditioning.Format | None = None,
                   round_id: int | None = None, model_version_id: int | None = None,
                   progress: Progress | None = None, show_progress: bool = True,
                   seed_index: Sequence[int] | None = None,
                   negative_text: str | None | Sequence[str | None] = None) -> list[int]:
    """Sample ``params.n`` generations per prompt and store them; returns the new generation ids.

    ``conditioning_text`` is one feedback text for every prompt, one per prompt, or None.
    ``seed_index``: per prompt, the position whose random streams it draws from (default: its own); only for
    a backend that ``takes_seed_index``.
    ``negative_text``: with ``params.guidance`` > 0, f⁻ for each conditioned prompt (one text for all, one per
    prompt; None = the plain prompt), resolved from ``params.negative`` by the caller (``guidance.negatives``);
    stored in each generation's ``sampling_params`` as ``negative_feedback``. Unconditioned prompts are not guided.
    Each batch of prompts is written in one transaction, so an interrupted run keeps whole batches.
    """
    if isinstance(conditioning_text, str) or conditioning_text is None:
        conditioning_text = [conditioning_text] * len(prompts)
    if isinstance(negative_text, str) or negative_text is None:
        negative_text = [negative_text] * len(prompts)
    guided = bool(params.guidance) and any(c is not None for c in conditioning_text)
    if guided:
        check_guidance(backend, fmt, params)
    params = with_masks(params, backend.tokenizer, fmt)
    rows_per_pass = params.batch_size or getattr(backend, "auto_batch_size", lambda: 16)()
    per_batch = max(1, rows_per_pass // params.n) * 4  # prompts per generate call and database write
    total = len(prompts) * params.n
    bar = tqdm(total=total, desc="sampling", unit="seq", disable=not show_progress)
    ids: list[int] = []
    meta = {k: v for k, v in asdict(params).items()  # masks, guidance only when set (older rows have no such keys)
            if k != "batch_size" and (v or k not in ("suppress_tokens", "mask_control_tokens", "guidance"))}
    if not params.guidance:
        meta.pop("negative")
    meta["backend"] = backend.name
    if getattr(backend, "dtype", None) is not None:
        meta["dtype"] = str(backend.dtype).removeprefix("torch.")
    meter, tokens_before = Throughput(), 0

    def chunk_progress(done: int, _total: int, info: dict | None = None) -> None:  # one call → the whole run
        meter.tokens = tokens_before + (info or {}).get("tokens", 0)
        info = meter.info(len(ids) + done, total)
        bar.set_postfix_str(f"{info['tokens_per_s']:.0f} tokens/s", refresh=False)
        bar.update(len(ids) + done - bar.n)
        report(progress, len(ids) + done, total, info)

    for start in range(0, len(prompts), per_batch):
        chunk = prompts[start:start + per_batch]
        conds = conditioning_text[start:start + per_batch]
        inputs = [conditioning.build_input(backend.tokenizer, conditioning.prompt_of(p), c, fmt)
                  for p, c in zip(chunk, conds)]
        negs = negative_text[start:start + per_batch]
        extra = {}
        if guided:  # f⁻ built by the same function, in the same format: only the feedback segment differs
            extra["negatives"] = [
                conditioning.build_input(backend.tokenizer, conditioning.prompt_of(p), n, fmt).input_ids
                if c is not None else None for p, c, n in zip(chunk, conds, negs)]
        if seed_index is None:
            chunk_params = SamplingParams(**{**asdict(params), "seed": params.seed + start})
            samples = backend.generate([x.input_ids for x in inputs], chunk_params, chunk_progress, **extra)
        else:
            samples = backend.generate([x.input_ids for x in inputs], params, chunk_progress,
                                       index=seed_index[start:start + per_batch], **extra)
        rows = [Generation(prompt_id=p.id, round_id=round_id, model_version_id=model_version_id, conditioning=c,
                           response=s.text, prompt_tokens=len(x.prompt_ids), response_tokens=len(s.token_ids),
                           truncated=s.truncated, seed=s.seed,
                           sampling_params={**meta, "negative_feedback": n} if guided and c is not None else
                           {k: v for k, v in meta.items() if k not in ("guidance", "negative")})
                for p, c, n, x, ss in zip(chunk, conds, negs, inputs, samples) for s in ss]
        with session_scope(db) as session:
            session.add_all(rows)
            session.flush()
            ids.extend(r.id for r in rows)
        tokens_before += sum(len(s.token_ids) for ss in samples for s in ss)
        meter.tokens = tokens_before
        bar.update(len(ids) - bar.n)
        report(progress, len(ids), total, meter.info(len(ids), total))
    bar.close()
    return ids


def check_guidance(backend, fmt: conditioning.Format | None, params: SamplingParams) -> None:
    """Refuse feedback guidance where it cannot work, with the reason: a model that reads no feedback (SFT, CUT,
    Critique-and-Revise versions: format ``none``) or a backend whose ``generate`` takes no negative inputs."""
    if not params.guidance:
        return
    if fmt is not None and fmt.placement == Placement.NONE:
        raise ValueError("feedback guidance needs a model that reads feedback; this version's objective reads none "
                         "(sft, cut, cnr sample the plain prompt): use --guidance 0")
    try:
        takes = "negatives" in inspect.signature(backend.generate).parameters
    except (TypeError, ValueError):
        takes = False
    if not takes or getattr(backend, "supports_guidance", True) is False:
        raise ValueError(f"the {getattr(backend, 'name', 'sampling')} backend does not support feedback guidance "
                         "(it needs the logits of two inputs per step): use --guidance 0 or the transformers backend")


def takes_seed_index(backend) -> bool:
    """Whether ``backend.generate`` takes ``index`` (inputs sharing random streams)."""
    try:
        return "index" in inspect.signature(backend.generate).parameters
    except (TypeError, ValueError):
        return False
