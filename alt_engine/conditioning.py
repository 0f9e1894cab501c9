"""The conditioning format: the one place that decides how feedback meets a prompt.

An input is ``[feedback tokens][separator tokens][prompt tokens]`` where the
prompt part is rendered with the tokenizer's chat template when it has one.
The feedback segment is tokenized on its own, so it can be removed again by
token position (``strip_conditioning``) — never by splitting strings, since a
prompt may itself contain the separator text. Training, sampling, the
playground, evaluation and export all build inputs here.
"""

from __future__ import annotations

from dataclasses import dataclass

SEPARATOR = "\n<|feedback_end|>\n"  # fixed text marker closing the feedback segment
DEFAULT_PREFIX_FORMAT = "{feedback}"

Messages = list[dict]
PromptLike = str | Messages


@dataclass
class ConditionedInput:
    """Token ids of one model input and how many leading ids are conditioning."""

    input_ids: list[int]
    n_condition: int  # leading ids that belong to the feedback segment (0 = unconditioned)

    @property
    def prompt_ids(self) -> list[int]:
        return strip_conditioning(self.input_ids, self.n_condition)


def as_messages(prompt: PromptLike) -> Messages:
    return [{"role": "user", "content": prompt}] if isinstance(prompt, str) else list(prompt)


def prompt_of(row) -> PromptLike:
    """The prompt of a ``db.Prompt`` row: its chat messages if it has them, else its text."""
    return row.messages if row.messages else row.text


def prompt_ids(tokenizer, prompt: PromptLike) -> list[int]:
    """The unconditioned prompt, ready for the response to follow."""
    if getattr(tokenizer, "chat_template", None):
        out = tokenizer.apply_chat_template(as_messages(prompt), add_generation_prompt=True, tokenize=True)
        return list(out["input_ids"] if hasattr(out, "keys") else out)
    text = prompt if isinstance(prompt, str) else "\n".join(m["content"] for m in prompt)
    return list(tokenizer(text, add_special_tokens=True)["input_ids"])


def feedback_ids(tokenizer, feedback: str, prefix_format: str = DEFAULT_PREFIX_FORMAT) -> list[int]:
    """The feedback segment, separator included."""
    return list(tokenizer(prefix_format.format(feedback=feedback) + SEPARATOR, add_special_tokens=False)["input_ids"])


def build_input(tokenizer, prompt: PromptLike, feedback: str | None = None,
                prefix_format: str = DEFAULT_PREFIX_FORMAT) -> ConditionedInput:
    """``feedback + separator + prompt`` as ids; ``feedback=None`` gives the plain prompt."""
    ids = prompt_ids(tokenizer, prompt)
    if feedback is None:
        return ConditionedInput(ids, 0)
    cond = feedback_ids(tokenizer, feedback, prefix_format)
    return ConditionedInput(cond + ids, len(cond))


def strip_conditioning(input_ids: list[int], n_condition: int) -> list[int]:
    """Remove the feedback segment by position."""
    return list(input_ids[n_condition:])


def decode_feedback(tokenizer, conditioned: ConditionedInput) -> str:
    """The feedback segment as text, separator excluded (for display and audit)."""
    text = tokenizer.decode(conditioned.input_ids[: conditioned.n_condition])
    return text[: -len(SEPARATOR)] if text.endswith(SEPARATOR) else text


@dataclass
class TrainingExample:
    """One conditional-SFT example: conditioned prompt, unconditioned prompt (reference), response."""

    input_ids: list[int]  # feedback + separator + prompt
    ref_input_ids: list[int]  # prompt only, for the reference model's KL term
    response_ids: list[int]  # response, + EOS unless the generation was truncated


def build_training_example(tokenizer, prompt: PromptLike, feedback: str | None, response: str,
                           truncated: bool = False, prefix_format: str = DEFAULT_PREFIX_FORMAT,
                           max_response_tokens: int | None = None) -> TrainingExample:
    cond = build_input(tokenizer, prompt, feedback, prefix_format)
    response_ids = list(tokenizer(response, add_special_tokens=False)["input_ids"])
    if max_response_tokens is not None and len(response_ids) >= max_response_tokens:
        response_ids, truncated = response_ids[:max_response_tokens], True
    if not truncated and tokenizer.eos_token_id is not None:
        response_ids.append(tokenizer.eos_token_id)
    return TrainingExample(cond.input_ids, cond.prompt_ids, response_ids)
