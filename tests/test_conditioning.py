"""The conditioning format round-trips in every placement; feedback is removed by position, not string splitting."""

import pytest

from alt_engine.conditioning import (
    PAPER_FORMAT,
    SEPARATOR,
    Format,
    build_input,
    build_training_example,
    decode_feedback,
    feedback_ids,
    format_of,
    prompt_ids,
    strip_conditioning,
)
from alt_engine.tiny import tiny_tokenizer

PROMPTS = [
    "Say hello.",
    f"A prompt that contains the separator {SEPARATOR} twice {SEPARATOR.strip()} and Feedback: Good in it",
    [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Hi" + SEPARATOR}],
    [{"role": "user", "content": "First question"}, {"role": "assistant", "content": "An answer."},
     {"role": "user", "content": "A follow-up"}],
]
FEEDBACK = ["Harmless and very helpful", "Безвредный и очень полезный", "非常有帮助，无害", "مفيد جدا", "👍 good"]
FORMATS = {"paper": PAPER_FORMAT, "prefix": Format("prefix"), "system": Format("system"), "user": Format("user")}


@pytest.fixture(scope="module", params=[True, False], ids=["chat", "plain"])
def tok(request):
    return tiny_tokenizer(chat=request.param)


@pytest.mark.parametrize("fmt", FORMATS.values(), ids=FORMATS.keys())
@pytest.mark.parametrize("prompt", PROMPTS, ids=range(len(PROMPTS)))
@pytest.mark.parametrize("feedback", FEEDBACK)
def test_round_trip_every_placement(tok, fmt, prompt, feedback):
    cond = build_input(tok, prompt, feedback, fmt)
    plain = build_input(tok, prompt, None, fmt)
    assert plain.n_condition == 0 and plain.input_ids == prompt_ids(tok, prompt)
    segment = cond.input_ids[cond.start:cond.end]
    assert segment == feedback_ids(tok, feedback, fmt)  # the segment is the feedback's own tokenization
    assert decode_feedback(tok, cond) == fmt.for_tokenizer(tok).text(feedback)  # round-trips to the text
    assert strip_conditioning(cond.input_ids, cond.start, cond.end) == cond.prompt_ids
    assert feedback not in tok.decode(cond.prompt_ids)  # stripped by position, whatever the prompt contains
    if fmt.for_tokenizer(tok).placement == "prefix":  # a leading segment: the rest is the plain prompt
        assert cond.start == 0 and cond.prompt_ids == plain.input_ids
    else:  # inside the template: the prompt's own text is still all there, after the feedback
        text = tok.decode(cond.input_ids)
        last_user = prompt if isinstance(prompt, str) else [m for m in prompt if m["role"] == "user"][-1]["content"]
        assert text.index(fmt.text(feedback)) < text.rindex(last_user)


def test_in_template_placements_put_feedback_where_they_say():
    tok = tiny_tokenizer(chat=True)
    system = tok.decode(build_input(tok, "Hi", "Concise", Format("system")).input_ids)
    assert system == "<|im_start|>system\nFeedback: Concise<|im_end|>\n<|im_start|>user\nHi<|im_end|>\n" \
                     "<|im_start|>assistant\n"
    chat = [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Hi"}]
    merged = tok.decode(build_input(tok, chat, "Concise", Format("system")).input_ids)
    assert merged.startswith("<|im_start|>system\nFeedback: Concise\n\nBe brief.<|im_end|>")
    user = tok.decode(build_input(tok, PROMPTS[3], "Concise", Format("user")).input_ids)
    assert "<|im_start|>user\nFirst question<|im_end|>" in user  # earlier turns untouched
    assert "<|im_start|>user\nFeedback: Concise\n\nA follow-up<|im_end|>" in user  # the last user turn opens with it
    paper = tok.decode(build_input(tok, "Hi", "Concise", PAPER_FORMAT).input_ids)
    assert paper.startswith("Concise" + SEPARATOR + "<|im_start|>user\nHi")


def test_plain_tokenizer_falls_back_to_prefix():
    tok = tiny_tokenizer(chat=False)
    assert Format("system").for_tokenizer(tok).placement == "prefix"
    assert tok.decode(build_input(tok, "Hi", "Good", Format("system")).input_ids).startswith(
        "Feedback: Good" + SEPARATOR)


def test_control_tokens():
    tok = tiny_tokenizer(chat=True)
    tok.add_special_tokens({"additional_special_tokens": ["<|q0|>", "<|q1|>"]})
    fmt = Format("tokens", tokens={"Excellent": "<|q0|>", "Horrible": "<|q1|>"})
    cond = build_input(tok, "Hi", "Horrible", fmt)
    assert cond.input_ids[:1] == [tok.convert_tokens_to_ids("<|q1|>")] and cond.end == 1
    assert cond.prompt_ids == prompt_ids(tok, "Hi")
    with pytest.raises(ValueError, match="not in the tokenizer"):
        build_input(tok, "Hi", "Unknown", fmt)


def test_format_validation_and_storage():
    with pytest.raises(ValueError, match="placement"):
        Format("middle")
    with pytest.raises(ValueError, match="feedback"):
        Format("system", template="no slot")
    fmt = Format("user", "Rated: {feedback}")
    assert Format.from_dict(fmt.to_dict()) == fmt

    class Row:
        conditioning: dict = {}

    version, task = Row(), Row()
    task.conditioning = fmt.to_dict()
    assert format_of(version, task) == fmt  # a base version uses the task's format
    version.conditioning = PAPER_FORMAT.to_dict()
    assert format_of(version, task) == PAPER_FORMAT  # a trained version keeps its own
    assert format_of(None, None) == Format()


@pytest.mark.parametrize("fmt", FORMATS.values(), ids=FORMATS.keys())
def test_training_example_eos_unless_truncated(fmt):
    tok = tiny_tokenizer()
    ex = build_training_example(tok, "Hi", "Good", "Hello there", fmt=fmt)
    assert ex.response_ids[-1] == tok.eos_token_id
    assert ex.ref_input_ids == build_input(tok, "Hi").input_ids  # the reference sees the plain prompt
    assert ex.input_ids == build_input(tok, "Hi", "Good", fmt).input_ids
    cut = build_training_example(tok, "Hi", "Good", "Hello there", truncated=True, fmt=fmt)
    assert cut.response_ids == ex.response_ids[:-1]
    capped = build_training_example(tok, "Hi", "Good", "Hello there, how are you", fmt=fmt, max_response_tokens=3)
    assert len(capped.response_ids) == 3 and tok.eos_token_id not in capped.response_ids


def test_long_prompt_keeps_the_whole_feedback_segment():
    tok = tiny_tokenizer()
    long = "word " * 300
    ex = build_training_example(tok, long, "Harmless and very helpful", "ok", fmt=Format("system"),
                                max_prompt_tokens=20)
    cond = build_input(tok, long, "Harmless and very helpful", Format("system"))
    assert ex.input_ids[:cond.end] == cond.input_ids[:cond.end] and len(ex.input_ids) == cond.end + 20
    assert len(ex.ref_input_ids) == 20
