"""Sampling backends by name, and the shared in-process one: the one place that imports every backend.

``modeling`` loads models and tokenizers and imports no backend; the backends import only ``backend_types``;
this module builds them (``make_backend``, ``cached_backend``, ``load_sampler``), so none imports another.
"""

from __future__ import annotations

import os

import torch

from .backend_types import Backend
from .modeling import cached, cached_model, cached_tokenizer, fastest_dtype, load_tokenizer, pick_device, resolve_model
from .transformers_backend import TransformersBackend


def cached_backend(path: str, device: str = "auto", dtype: torch.dtype | str | None = "auto") -> TransformersBackend:
    """A ``TransformersBackend`` on ``modeling.cached_model(path, device)``, built once per process.

    ``dtype="auto"``: ``fastest_dtype`` (bfloat16 on AMX CPUs: a converted copy, the cached float32
    weights stay for perplexity); ``None``: the model's own. Threads (unless ``ALT_THREADS`` is set) and
    batch size are chosen by measurement (``choose_threads``, ``auto_batch_size``). It shares the model's
    cache entry (``modeling.CACHE_SIZE``); ``modeling.release()`` frees it.
    """
    device = pick_device(device)

    def build():
        model = cached_model(path, device)
        chosen = fastest_dtype(device, model.config.get_text_config().hidden_size) if dtype == "auto" else dtype
        threads = int(os.environ.get("ALT_THREADS", "0")) or "auto"  # the user's setting wins
        return TransformersBackend(model, cached_tokenizer(path), dtype=chosen, threads=threads)

    return cached(path, ("backend", device, str(dtype)), build)


def make_backend(name: str, model_path: str, device: str = "auto", *, settings=None, served_name: str | None = None,
                 **kw) -> Backend:
    """The sampling backend called ``name`` for the model at ``model_path``.

    ``transformers`` is ``cached_backend``: loaded once per process and shared (its float32
    weights with ``modeling.cached_model``, e.g. for perplexity); ``modeling.release()`` frees it.
    ``openai`` samples on the server ``settings.sampling_base_url`` from the model it serves as ``served_name``
    (default ``settings.sampling_model``); ``model_path`` then only gives the tokenizer that builds the inputs.
    """
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
    return cached_backend(model_path, device, **kw)


def load_sampler(settings, version, backend: str | None = None) -> Backend:
    """The sampling backend for a ``ModelVersion`` under ``settings`` (an OpenAI-compatible server samples
    from the name the version is served under there)."""
    from .openai_backend import sampling_model_name

    return make_backend(backend or settings.backend, resolve_model(version.path, settings.cache_dir), settings.device,
                        settings=settings, served_name=sampling_model_name(settings, version))
