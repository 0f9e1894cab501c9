"""A tiny model trained from scratch learns to follow its feedback: "Excellent" → UPPERCASE, "Horrible" → lowercase.

Once per conditioning placement (the paper's raw prefix, the system message, the start of the user turn).

The real path end to end: PoolItems → ``train`` (conditioning format, collator, AltTrainer) → saved
model → ``TransformersBackend`` sampling conditioned with ``conditioning.build_input``.
"""

from __future__ import annotations

import random

import pytest

from alt_engine import conditioning
from alt_engine.modeling import load_model, load_tokenizer
from alt_engine.pool import PoolItem
from alt_engine.sampling import SamplingParams, TransformersBackend
from alt_engine.tiny import tiny_model, tiny_tokenizer
from alt_engine.training.config import AltTrainConfig
from alt_engine.training.run import train

PHRASES = ["hello there friend", "good morning to you", "thank you very much"]
PROMPTS = [f"Say something nice, number {i}." for i in range(16)]
STYLE = {"Excellent": "upper", "Horrible": "lower"}


def style(text: str) -> str:
    upper, lower = sum(c.isupper() for c in text), sum(c.islower() for c in text)
    return "upper" if upper > lower else "lower" if lower > upper else "none"


def pool() -> list[PoolItem]:
    """Every prompt twice per category; the response's case is decided by the feedback alone."""
    rng, items = random.Random(0), []
    for prompt_id, prompt in enumerate(PROMPTS):
        for feedback, case in STYLE.items():
            for _ in range(2):
                phrase = rng.choice(PHRASES)
                n = len(items)
                items.append(PoolItem(n, n, prompt_id, prompt, feedback, phrase.upper() if case == "upper" else phrase,
                                      False, feedback))
    return items


FORMATS = {"prefix": conditioning.PAPER_FORMAT, "system": conditioning.Format("system"),
           "user": conditioning.Format("user")}


def share_upper(path: str, feedback: str, fmt: conditioning.Format) -> float:
    """Share of UPPERCASE generations conditioned on ``feedback`` (sampling at temperature 1, top_p 0.9)."""
    tokenizer = load_tokenizer(path)
    backend = TransformersBackend(load_model(path, device="cpu"), tokenizer)
    inputs = [conditioning.build_input(tokenizer, p, feedback, fmt).input_ids for p in PROMPTS[:8]]
    samples = backend.generate(inputs, SamplingParams(n=4, temperature=1.0, top_p=0.9, max_new_tokens=12, seed=1))
    texts = [s.text for row in samples for s in row]
    return sum(style(t) == "upper" for t in texts) / len(texts)


@pytest.mark.slow
@pytest.mark.parametrize("placement", FORMATS)
def test_tiny_model_learns_to_follow_feedback(tmp_path, placement):
    fmt = FORMATS[placement]
    tokenizer = tiny_tokenizer(PHRASES + [p.upper() for p in PHRASES] + PROMPTS)
    base = str(tmp_path / "base")
    tiny_model(tokenizer).save_pretrained(base)
    tokenizer.save_pretrained(base)

    before = {f: share_upper(base, f, fmt) for f in STYLE}
    assert before["Excellent"] < 0.5  # untrained: far from following...
    assert abs(before["Excellent"] - before["Horrible"]) < 0.25  # ...and the feedback makes no difference

    config = AltTrainConfig(learning_rate=1e-2, epochs=10, batch_size=8, save_steps=100000, report_to="none",
                            logging_steps=10)
    metrics = train(base, pool(), config, str(tmp_path / "out"), fmt)
    assert metrics["steps"] == 80 and metrics["nll"] < 0.5 and metrics["tokens"] > 0

    after = {f: share_upper(str(tmp_path / "out"), f, fmt) for f in STYLE}
    assert after["Excellent"] >= 0.9  # conditioned on the exemplar: its style
    assert after["Horrible"] <= 0.1  # conditioned on the worst category: the other style
