"""Tiny randomly initialised models built in-process (tests, demos, benchmarks' smoke runs).

A byte-level BPE tokenizer is trained on a small corpus in milliseconds, so
any script (non-Latin included) round-trips; the model is a 2-layer Llama.
"""

from __future__ import annotations

from pathlib import Path

import torch
from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
from transformers import LlamaConfig, LlamaForCausalLM, PreTrainedTokenizerFast

CHAT_TEMPLATE = (
    "{% for m in messages %}<|im_start|>{{ m['role'] }}\n{{ m['content'] }}<|im_end|>\n{% endfor %}"
    "{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
)
SPECIALS = ["<|endoftext|>", "<|im_start|>", "<|im_end|>", "<pad>"]
_CORPUS = [
    "Hello, how are you? I am fine, thank you.",
    "The quick brown fox jumps over the lazy dog.",
    "Write a short answer. Be concise and helpful.",
    "Harmless and very helpful. Harmless and helpful. Harmful.",
    "Excellent Good Mediocre Bad Horrible",
    "0123456789 + - * / = ? ! . , ; : ' \" ( ) [ ] { } < > | # _ ~ @ $ % ^ &",
]


def tiny_tokenizer(corpus: list[str] | None = None, vocab_size: int = 400,
                   chat: bool = True) -> PreTrainedTokenizerFast:
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=vocab_size, special_tokens=SPECIALS,
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet(), show_progress=False)
    tok.train_from_iterator((corpus or []) + _CORPUS, trainer)
    fast = PreTrainedTokenizerFast(tokenizer_object=tok, eos_token="<|im_end|>" if chat else "<|endoftext|>",
                                   bos_token=None, pad_token="<pad>", unk_token=None)
    if chat:
        fast.chat_template = CHAT_TEMPLATE
    fast.padding_side = "left"
    return fast


def tiny_model(tokenizer, hidden: int = 64, layers: int = 2, heads: int = 4, seed: int = 0) -> LlamaForCausalLM:
    torch.manual_seed(seed)
    config = LlamaConfig(vocab_size=len(tokenizer), hidden_size=hidden, intermediate_size=hidden * 2,
                         num_hidden_layers=layers, num_attention_heads=heads, num_key_value_heads=heads,
                         max_position_embeddings=1024, pad_token_id=tokenizer.pad_token_id,
                         eos_token_id=tokenizer.eos_token_id, bos_token_id=tokenizer.eos_token_id,
                         tie_word_embeddings=True)
    return LlamaForCausalLM(config).eval()


def save_tiny(path: str | Path, corpus: list[str] | None = None, **model_kw) -> str:
    """Build and save a tiny model + tokenizer to ``path``; returns the path."""
    tok = tiny_tokenizer(corpus)
    model = tiny_model(tok, **model_kw)
    model.save_pretrained(path)
    tok.save_pretrained(path)
    return str(path)
