"""Batched sampling: the backend interface, the transformers backend, and the sampling stage.

A backend turns token-id inputs into ``n`` samples each. The stage
(``sample_prompts``) builds conditioned inputs with ``conditioning.build_input``,
asks the backend for samples batch by batch and writes each batch of
generations to the database in one transaction.
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass
from typing import Protocol

import torch
from tqdm.auto import tqdm

from . import conditioning
from .db import Generation, Prompt, session_scope

Progress = Callable[[int, int], None]  # (done, total)
OnStep = Callable[[list[tuple[int, int]], list[int]], None]  # (rows as (input, sample), one new token per row)


@dataclass
class SamplingParams:
    """How to sample. ``temperature=0`` means greedy."""

    n: int = 4
    temperature: float = 1.0
    top_p: float = 0.9
    max_new_tokens: int = 160  # a small chat model's answers run long; the pool's truncation policy handles the rest
    seed: int = 0
    batch_size: int = 16  # sequences per forward pass

    def __post_init__(self):
        if self.n < 1 or self.max_new_tokens < 1 or self.batch_size < 1:
            raise ValueError("n, max_new_tokens and batch_size must be >= 1")
        if not 0 < self.top_p <= 1 or self.temperature < 0:
            raise ValueError("need 0 < top_p <= 1 and temperature >= 0")


@dataclass
class Sample:
    token_ids: list[int]  # generated ids, EOS and padding removed
    text: str
    truncated: bool  # stopped at max_new_tokens without EOS
    prompt_tokens: int
    seed: int


class Backend(Protocol):
    """Anything that can sample: ``generate(inputs, params) -> samples[i][j]`` (input i, sample j)."""

    name: str
    tokenizer: object

    def generate(self, inputs: Sequence[list[int]], params: SamplingParams,
                 progress: Progress | None = None) -> list[list[Sample]]: ...


def _stop_ids(model, tokenizer) -> set[int]:
    ids = model.generation_config.eos_token_id
    ids = set(ids if isinstance(ids, list) else [ids] if ids is not None else [])
    if tokenizer.eos_token_id is not None:
        ids.add(tokenizer.eos_token_id)
    return ids


class _StepStreamer:
    """Hands each decoding step's new tokens (one per row) to ``on_step(rows, tokens)`` (streaming)."""

    def __init__(self, on_step: OnStep, rows: list[tuple[int, int]]):
        self.on_step, self.rows, self.prompt_seen = on_step, rows, False

    def put(self, value) -> None:
        if not self.prompt_seen:  # generate's first call carries the prompts
            self.prompt_seen = True
            return
        self.on_step(self.rows, value.reshape(-1).tolist())

    def end(self) -> None:
        pass


class TransformersBackend:
    """``model.generate`` on left-padded batches with the KV cache; inputs sorted by length.

    ``on_step(rows, tokens)``, when given, is called after every decoding step with the chunk's (input,
    sample) pairs and the token each just produced (rows that already stopped get padding): streaming.
    """

    name = "transformers"

    def __init__(self, model, tokenizer):
        self.model, self.tokenizer = model, tokenizer
        self.stop_ids = _stop_ids(model, tokenizer)
        self.lock = threading.Lock()  # one generate at a time on the shared model

    @torch.inference_mode()
    def generate(self, inputs, params, progress=None, on_step: OnStep | None = None):
        jobs = [(i, j) for i in range(len(inputs)) for j in range(params.n)]
        jobs.sort(key=lambda ij: -len(inputs[ij[0]]))  # similar lengths together: less padding
        out: list[list[Sample | None]] = [[None] * params.n for _ in inputs]
        device = self.model.device
        pad = self.tokenizer.pad_token_id
        for b, start in enumerate(range(0, len(jobs), params.batch_size)):
            chunk = jobs[start:start + params.batch_size]
            width = max(len(inputs[i]) for i, _ in chunk)
            ids = torch.full((len(chunk), width), pad, dtype=torch.long)
            mask = torch.zeros((len(chunk), width), dtype=torch.long)
            for row, (i, _) in enumerate(chunk):  # left padding
                ids[row, width - len(inputs[i]):] = torch.tensor(inputs[i])
                mask[row, width - len(inputs[i]):] = 1
            seed = params.seed + b
            sampling = params.temperature > 0
            with self.lock:  # seeding inside the lock: concurrent callers (a server's requests) stay reproducible
                torch.manual_seed(seed)
                gen = self.model.generate(
                    input_ids=ids.to(device), attention_mask=mask.to(device), max_new_tokens=params.max_new_tokens,
                    do_sample=sampling, temperature=params.temperature if sampling else None,
                    top_p=params.top_p if sampling else None, top_k=None, pad_token_id=pad,
                    eos_token_id=sorted(self.stop_ids), use_cache=True,
                    streamer=_StepStreamer(on_step, chunk) if on_step else None,
                )[:, width:].tolist()
            for row, (i, j) in enumerate(chunk):
                tokens = gen[row]
                stop = next((k for k, t in enumerate(tokens) if t in self.stop_ids), None)
                kept = tokens if stop is None else tokens[:stop]
                out[i][j] = Sample(kept, self.tokenizer.decode(kept, skip_special_tokens=True), stop is None and
                                   len(tokens) >= params.max_new_tokens, len(inputs[i]), seed)
            if progress:
                progress(min(start + params.batch_size, len(jobs)), len(jobs))
        return out  # type: ignore[return-value]


def make_backend(name: str, model_path: str, device: str = "auto", *, settings=None, served_name: str | None = None,
                 **kw) -> Backend:
    """The sampling backend called ``name`` for the model at ``model_path``.

    ``openai`` samples on the server ``settings.sampling_base_url`` from the model it serves as ``served_name``
    (default ``settings.sampling_model``); ``model_path`` then only gives the tokenizer that builds the inputs.
    """
    from .modeling import load_model, load_tokenizer

    if name == "vllm":
        from .vllm_backend import VLLMBackend

        return VLLMBackend(model_path, **kw)
    if name == "openai":
        from .openai_backend import OpenAIBackend

        if settings is None:
            raise ValueError("the openai backend needs settings (sampling_base_url, sampling_model)")
        return OpenAIBackend(load_tokenizer(model_path), settings.sampling_base_url,
                             served_name or settings.sampling_model, api_key=settings.sampling_api_key,
                             timeout=settings.sampling_timeout, concurrency=settings.sampling_concurrency,
                             max_retries=settings.llm_max_retries, **kw)
    if name != "transformers":
        raise ValueError(f"unknown backend {name!r} (transformers | vllm | openai)")

    return TransformersBackend(load_model(model_path, device), load_tokenizer(model_path))


def sample_prompts(db: str, backend: Backend, prompts: Sequence[Prompt], params: SamplingParams, *,
                   conditioning_text: str | None | Sequence[str | None] = None, fmt: conditioning.Format | None = None,
                   round_id: int | None = None, model_version_id: int | None = None,
                   progress: Progress | None = None, show_progress: bool = True) -> list[int]:
    """Sample ``params.n`` generations per prompt and store them; returns the new generation ids.

    ``conditioning_text`` is one feedback text for every prompt, one per prompt, or None.
    Each batch of prompts is written in one transaction, so an interrupted run keeps whole batches.
    """
    if isinstance(conditioning_text, str) or conditioning_text is None:
        conditioning_text = [conditioning_text] * len(prompts)
    per_batch = max(1, params.batch_size // params.n) * 4  # prompts per database write
    bar = tqdm(total=len(prompts) * params.n, desc="sampling", unit="seq", disable=not show_progress)
    ids: list[int] = []
    meta = {k: v for k, v in asdict(params).items() if k != "batch_size"} | {"backend": backend.name}
    for start in range(0, len(prompts), per_batch):
        chunk = prompts[start:start + per_batch]
        conds = conditioning_text[start:start + per_batch]
        inputs = [conditioning.build_input(backend.tokenizer, conditioning.prompt_of(p), c, fmt)
                  for p, c in zip(chunk, conds)]
        chunk_params = SamplingParams(**{**asdict(params), "seed": params.seed + start})
        samples = backend.generate([x.input_ids for x in inputs], chunk_params)
        rows = [Generation(prompt_id=p.id, round_id=round_id, model_version_id=model_version_id, conditioning=c,
                           response=s.text, prompt_tokens=len(x.prompt_ids), response_tokens=len(s.token_ids),
                           truncated=s.truncated, sampling_params=meta, seed=s.seed)
                for p, c, x, ss in zip(chunk, conds, inputs, samples) for s in ss]
        with session_scope(db) as session:
            session.add_all(rows)
            session.flush()
            ids.extend(r.id for r in rows)
        bar.update(len(rows))
        if progress:
            progress(len(ids), len(prompts) * params.n)
    bar.close()
    return ids


def load_sampler(settings, version, backend: str | None = None) -> Backend:
    """The sampling backend for a ``ModelVersion`` under ``settings`` (an OpenAI-compatible server samples
    from the name the version is served under there)."""
    from .modeling import resolve_model
    from .openai_backend import sampling_model_name

    return make_backend(backend or settings.backend, resolve_model(version.path, settings.cache_dir), settings.device,
                        settings=settings, served_name=sampling_model_name(settings, version))
