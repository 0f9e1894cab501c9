"""The conditioning format round-trips: feedback is removed by position, never by string splitting."""

import pytest

from alt_engine.conditioning import (
    SEPARATOR,
    build_input,
    build_training_example,
    decode_feedback,
    feedback_ids,
    prompt_ids,
    strip_conditioning,
)
from alt_engine.tiny import tiny_tokenizer

PROMPTS = [
    "Say hello.",
    f"A prompt that contains the separator {SEPARATOR} twice {SEPARATOR.strip()} in it",
    [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Hi" + SEPARATOR}],
]
FEEDBACK = ["Harmless and very helpful", "Безвредный и очень полезный", "非常有帮助，无害", "مفيد جدا", "👍 good"]


@pytest.fixture(scope="module", params=[True, False], ids=["chat", "plain"])
def tok(request):
    return tiny_tokenizer(chat=request.param)


@pytest.mark.parametrize("prompt", PROMPTS)
@pytest.mark.parametrize("feedback", FEEDBACK)
def test_round_trip(tok, prompt, feedback):
    cond = build_input(tok, prompt, feedback)
    plain = build_input(tok, prompt)
    assert plain.n_condition == 0
    assert cond.input_ids[cond.n_condition:] == plain.input_ids  # prompt part unchanged
    assert cond.prompt_ids == plain.input_ids == prompt_ids(tok, prompt)
    assert strip_conditioning(cond.input_ids, cond.n_condition) == plain.input_ids
    assert decode_feedback(tok, cond) == feedback
    assert cond.input_ids[: cond.n_condition] == feedback_ids(tok, feedback)


def test_chat_template_used_for_chat_tokenizers():
    tok = tiny_tokenizer(chat=True)
    text = tok.decode(build_input(tok, "Hi", "Good").input_ids)
    assert text.startswith("Good" + SEPARATOR)
    assert text.endswith("<|im_start|>user\nHi<|im_end|>\n<|im_start|>assistant\n")


def test_prefix_format():
    tok = tiny_tokenizer()
    cond = build_input(tok, "Hi", "Concise", prefix_format="Feedback: {feedback}")
    assert decode_feedback(tok, cond) == "Feedback: Concise"
    assert cond.prompt_ids == build_input(tok, "Hi").input_ids


def test_training_example_eos_unless_truncated():
    tok = tiny_tokenizer()
    ex = build_training_example(tok, "Hi", "Good", "Hello there")
    assert ex.response_ids[-1] == tok.eos_token_id
    assert ex.ref_input_ids == build_input(tok, "Hi").input_ids
    assert ex.input_ids[-len(ex.ref_input_ids):] == ex.ref_input_ids
    cut = build_training_example(tok, "Hi", "Good", "Hello there", truncated=True)
    assert cut.response_ids == ex.response_ids[:-1]
    capped = build_training_example(tok, "Hi", "Good", "Hello there, how are you", max_response_tokens=3)
    assert len(capped.response_ids) == 3 and tok.eos_token_id not in capped.response_ids
