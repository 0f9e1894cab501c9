"""Sampling on any OpenAI-compatible completions server (``vllm serve`` first).

Same interface as ``TransformersBackend``: the conditioned inputs built by
``conditioning.build_input`` go to ``POST /v1/completions`` as token ids (a
``prompt`` that is a list of ints, which vLLM accepts), one request per input
asking for ``n`` samples with ``seed``, ``temperature``, ``top_p`` and
``max_tokens``. ``finish_reason == "length"`` marks a truncated sample. The real
``openai`` client retries 429/5xx/timeouts with backoff (``max_retries``), and
at most ``concurrency`` requests are in flight, as in the LLM judge.
``sample_prompts`` writes each batch in one transaction, whatever the backend.
Feedback guidance goes as the studio's extra fields ``guidance`` and ``negative_prompt``; the studio's own
``/v1/completions`` guides and echoes ``guidance``; a server that does not (vLLM) is a clear error.

vLLM spreads one model over GPUs and nodes itself (``--tensor-parallel-size``,
``--pipeline-parallel-size``, Ray); the studio only needs its URL. A trained
LoRA version reaches a running server through ``publish_version`` (vLLM's
runtime adapter loading, ``POST /v1/load_lora_adapter``, allowed when the server
runs with ``VLLM_ALLOW_RUNTIME_LORA_UPDATING=True`` and ``--enable-lora``);
otherwise it says which path to serve under which name.
"""

from __future__ import annotations

import logging
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import httpx
import openai

from .backend_types import Sample, SamplingParams
from .vocab import ObjectiveName

log = logging.getLogger(__name__)
FATAL_ERRORS = (openai.AuthenticationError, openai.PermissionDeniedError, openai.NotFoundError,
                openai.BadRequestError)


class GuidanceUnsupported(RuntimeError):
    """The server answered a guided request without guiding (e.g. vLLM ignores unknown fields)."""


class OpenAIBackend:
    """Samples from ``model`` on the server at ``base_url``; the tokenizer builds the inputs locally."""

    name = "openai"

    def __init__(self, tokenizer, base_url: str, model: str, *, api_key: str = "sk-local", timeout: float = 600.0,
                 max_retries: int = 3, concurrency: int = 8, client: openai.OpenAI | None = None):
        if not base_url or not model:
            raise ValueError("the openai backend needs a base URL and a model name "
                             "(ALT_SAMPLING_BASE_URL, ALT_SAMPLING_MODEL or --sampling-base-url/--sampling-model)")
        self.tokenizer, self.base_url, self.model = tokenizer, base_url, model
        self.concurrency = max(1, concurrency)
        self.client = client or openai.OpenAI(base_url=base_url, api_key=api_key or "none", timeout=timeout,
                                              max_retries=max_retries)
        self.retries = 0  # HTTP retries the client made (monitoring)

    def _sample(self, ids: list[int], params: SamplingParams, seed: int,
                negative: list[int] | None = None) -> list[Sample]:
        """``params.n`` samples of one input: one request (guided: with the input under f⁻ as ``negative_prompt``)."""
        greedy = params.temperature == 0
        extra: dict = {"return_token_ids": True}  # vLLM (and the studio's own /v1) send the sampled ids back
        if negative is not None:
            extra |= {"guidance": params.guidance, "negative_prompt": list(negative)}
        raw = self.client.completions.with_raw_response.create(
            model=self.model, prompt=list(ids), n=params.n, seed=seed, temperature=params.temperature,
            top_p=1.0 if greedy else params.top_p, max_tokens=params.max_new_tokens,
            **({"logit_bias": {str(t): -100 for t in params.suppress_tokens}} if params.suppress_tokens else {}),
            extra_body=extra)
        self.retries += raw.retries_taken
        completion = raw.parse()
        if negative is not None and (completion.model_extra or {}).get("guidance") != params.guidance:
            raise GuidanceUnsupported(
                f"the sampling server at {self.base_url} ignored feedback guidance (no 'guidance' in its reply): "
                "a vLLM server does not guide. Sample with --guidance 0, the transformers backend, or a studio "
                "server (`alt serve`: its /v1/completions takes guidance and negative_prompt)")
        choices = sorted(completion.choices, key=lambda c: c.index)
        if len(choices) != params.n:
            raise RuntimeError(f"{self.base_url} returned {len(choices)} choices, asked for n={params.n}")
        out = []
        for c in choices:
            token_ids = getattr(c, "token_ids", None) or (c.model_extra or {}).get("token_ids")
            if token_ids is None:  # a server that does not return ids: count them with the same tokenizer
                token_ids = self.tokenizer(c.text, add_special_tokens=False)["input_ids"]
            stop = set(filter(None, [self.tokenizer.eos_token_id]))
            token_ids = [t for t in token_ids if t not in stop]
            out.append(Sample(list(token_ids), c.text, c.finish_reason == "length", len(ids), seed))
        return out

    def generate(self, inputs, params: SamplingParams, progress=None,
                 negatives: list[list[int] | None] | None = None) -> list[list[Sample]]:
        """Input i is sampled with seed ``params.seed + i``: reproducible on a server that honours seeds.

        ``negatives`` (with ``params.guidance`` > 0): per input, its ids under f⁻ — sent as the studio's
        ``guidance`` / ``negative_prompt`` fields; a server that does not echo ``guidance`` fails the batch."""
        results: list[list[Sample] | None] = [None] * len(inputs)
        negs = list(negatives) if params.guidance and negatives is not None else [None] * len(inputs)
        done = 0
        with ThreadPoolExecutor(max_workers=self.concurrency) as pool:
            futures = {pool.submit(self._sample, list(x), params, params.seed + i, negs[i]): i
                       for i, x in enumerate(inputs)}
            try:
                for fut in futures:  # in order; a failure (after the client's retries) fails the batch
                    results[futures[fut]] = fut.result()
                    done += params.n
                    if progress:
                        progress(done, len(inputs) * params.n)
            except GuidanceUnsupported:
                pool.shutdown(wait=True, cancel_futures=True)
                raise
            except FATAL_ERRORS as e:
                pool.shutdown(wait=True, cancel_futures=True)
                raise RuntimeError(f"the sampling server at {self.base_url} refused the request "
                                   f"({type(e).__name__}): {e}. Check ALT_SAMPLING_BASE_URL and "
                                   f"ALT_SAMPLING_MODEL ({self.model!r}).") from e
        return results  # type: ignore[return-value]


def list_server_models(base_url: str, api_key: str = "", timeout: float = 10.0) -> list[str]:
    """The model names an OpenAI-compatible server serves (``GET {base_url}/models``); raises when it cannot
    be reached or refuses (the console's "Test the server")."""
    headers = {"Authorization": f"Bearer {api_key}"} if api_key else {}
    r = httpx.get(f"{base_url.rstrip('/')}/models", headers=headers, timeout=timeout)
    r.raise_for_status()
    return [m.get("id", "") for m in r.json().get("data", [])]


def sampling_model_name(settings, version) -> str:
    """The name to ask the server for: the configured name for a base version, else the version's own name
    (the name ``publish_version`` loads the adapter under, or tells the admin to serve it under)."""
    if version.objective == ObjectiveName.BASE:
        return settings.sampling_model or version.name
    return version.name


@dataclass
class Published:
    loaded: bool  # the server loaded the adapter: sampling can use ``name`` right away
    name: str
    message: str  # what happened, or what the admin must do


def publish_version(settings, version) -> Published:
    """Make a trained version reachable on the sampling server under its name.

    A LoRA adapter is loaded at run time (vLLM ``POST /v1/load_lora_adapter``) when the server allows it;
    a full model, or a server that refuses, gets a message naming the path to serve.
    """
    path, name = str(version.path), version.name
    is_lora = (Path(path) / "adapter_config.json").exists()
    root = settings.sampling_base_url.rstrip("/")
    if not is_lora:
        return Published(False, name, f"version {name} is a full model: serve it for sampling, e.g. "
                                      f"`vllm serve {path} --served-model-name {name}`, and set ALT_SAMPLING_BASE_URL")
    manual = (f"serve the LoRA adapter {path} as {name!r}: `vllm serve BASE_MODEL --enable-lora "
              f"--lora-modules {name}={path}` (or start the server with VLLM_ALLOW_RUNTIME_LORA_UPDATING=True "
              "so the studio loads new versions by itself)")
    if not root:
        return Published(False, name, "no sampling server configured (ALT_SAMPLING_BASE_URL); to sample on one, "
                                      + manual)
    headers = {"Authorization": f"Bearer {settings.sampling_api_key}"} if settings.sampling_api_key else {}
    try:
        r = httpx.post(f"{root}/load_lora_adapter", json={"lora_name": name, "lora_path": path}, headers=headers,
                       timeout=settings.sampling_timeout)
    except httpx.HTTPError as e:
        return Published(False, name, f"could not reach {root} ({type(e).__name__}: {e}); " + manual)
    if r.status_code == 200 or "already been loaded" in r.text:
        return Published(True, name, f"LoRA adapter {name} loaded on {root}")
    return Published(False, name, f"{root} did not load the adapter (HTTP {r.status_code}: {r.text[:200]}); "
                                  + manual)
