"""The conditioning format: the one place that decides how feedback meets a prompt.

A ``Format`` says where the feedback segment goes (``placement``) and how it reads (``template``):

- ``prefix``  — ``[feedback + separator][prompt]``: raw text before the (chat-templated) prompt, as in the
  ALT paper, whose models were plain pretrained LMs;
- ``system``  — the feedback is the chat template's system message (merged in front of an existing one);
- ``user``    — the feedback opens the last user turn;
- ``tokens``  — one control token per feedback text before the prompt (Quark); ``tokens`` maps text → token;
- ``none``    — no feedback at all: the plain prompt (SFT, Critique-and-Revise's first answer).

``attributes`` rewrites a feedback text before the template (SteerLM: "Harmless and very helpful" →
"harmful:0,helpful:2"); a text it does not list is used as is.

A chat model follows feedback inside its template far better than before it (docs/design.md §1, "What we
measured"), so ``system`` is the default; a tokenizer without a chat template falls back to ``prefix``.

Every input is built by ``build_input`` and records where its feedback segment lies (``start:end`` in
token positions). The segment is tokenized on its own, so it is removed again by position
(``strip_conditioning``) — never by splitting strings, since a prompt may itself contain the template's
text. Training, sampling, serving, the playground, evaluation and export all build inputs here, and each
model version stores the ``Format`` it was trained with (``ModelVersion.conditioning``).
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field

from .vocab import Placement

SEPARATOR = "\n<|feedback_end|>\n"  # fixed text marker closing a ``prefix`` feedback segment
PLACEMENTS = tuple(p.value for p in Placement)  # prefix | system | user | tokens | none
_MARK = "\u27e6alt-feedback\u27e7"  # stands in for the feedback while the chat template renders

Messages = list[dict]
PromptLike = str | Messages


@dataclass
class Format:
    """Where the feedback goes and how it reads; saved with every model version."""

    placement: str = "system"  # Placement
    template: str = "Feedback: {feedback}"
    separator: str = SEPARATOR  # closes the segment for ``prefix``; "\n\n" after it for ``user``/``system``
    tokens: dict[str, str] = field(default_factory=dict)  # placement ``tokens``: feedback text → control token
    attributes: dict[str, str] = field(default_factory=dict)  # feedback text → what the model reads (SteerLM)

    def __post_init__(self):
        if self.placement not in PLACEMENTS:
            raise ValueError(f"unknown placement {self.placement!r} ({' | '.join(PLACEMENTS)})")
        if self.placement not in (Placement.TOKENS, Placement.NONE) and "{feedback}" not in self.template:
            raise ValueError(f"a conditioning template needs '{{feedback}}', got {self.template!r}")

    def text(self, feedback: str) -> str:
        """The feedback segment as the model reads it (separator excluded)."""
        if self.placement == Placement.TOKENS:
            return self.tokens.get(feedback, feedback)
        return self.template.replace("{feedback}", self.attributes.get(feedback, feedback))

    def for_tokenizer(self, tokenizer) -> Format:
        """The format as it applies to ``tokenizer``: in-template placements need a chat template."""
        if self.placement in (Placement.SYSTEM, Placement.USER) and not getattr(tokenizer, "chat_template", None):
            return Format("prefix", self.template, SEPARATOR, attributes=dict(self.attributes))
        return self

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict | None) -> Format:
        return cls(**data) if data else cls()

    def describe(self) -> str:
        if self.placement == Placement.TOKENS:
            return f"control tokens {self.tokens}"
        if self.placement == Placement.NONE:
            return "unconditioned"
        attributes = f", attributes {self.attributes}" if self.attributes else ""
        return f"{self.placement}: {self.template!r}{attributes}"


PAPER_FORMAT = Format("prefix", "{feedback}", SEPARATOR)  # the ALT paper's raw prefix


def parse_attributes(text: str, categories: list[str]) -> dict[str, str]:
    """A SteerLM mapping from ``category = attribute string`` lines (blank lines skipped), e.g.
    ``Harmless and very helpful = harmful:0,helpful:2``; a category that is not one of ``categories``, a line
    without ``=``, an empty string or a repeated category raises ``ValueError`` naming the line."""
    mapping: dict[str, str] = {}
    for number, line in enumerate((text or "").splitlines(), 1):
        if not line.strip():
            continue
        category, sep, value = line.partition("=")
        category, value = category.strip(), value.strip()
        if not sep or not category or not value:
            raise ValueError(f"attributes line {number}: write 'category = attribute string', got {line.strip()!r}")
        if category not in categories:
            raise ValueError(f"attributes line {number}: {category!r} is not one of the task's categories")
        if category in mapping:
            raise ValueError(f"attributes line {number}: {category!r} is mapped twice")
        mapping[category] = value
    return mapping


def attribute_lines(mapping: dict[str, str]) -> str:
    """``parse_attributes``' inverse: one ``category = attribute string`` line per entry."""
    return "\n".join(f"{c} = {a}" for c, a in (mapping or {}).items())


@dataclass
class ConditionedInput:
    """Token ids of one model input and where its feedback segment lies (``start == end``: unconditioned)."""

    input_ids: list[int]
    start: int = 0
    end: int = 0

    @property
    def n_condition(self) -> int:
        return self.end - self.start

    @property
    def prompt_ids(self) -> list[int]:
        """The input with the feedback segment removed by position."""
        return strip_conditioning(self.input_ids, self.start, self.end)


def as_messages(prompt: PromptLike) -> Messages:
    return [{"role": "user", "content": prompt}] if isinstance(prompt, str) else [dict(m) for m in prompt]


def prompt_of(row) -> PromptLike:
    """The prompt of a ``db.Prompt`` row: its chat messages if it has them, else its text."""
    return row.messages if row.messages else row.text


def prompt_text(prompt: PromptLike) -> str:
    """A prompt as plain text (a chat as ``role: content`` lines), for scorers, judges and exports."""
    if isinstance(prompt, str):
        return prompt
    return "\n".join(f"{m['role']}: {m['content']}" for m in prompt)


def _ids(tokenizer, text: str, special: bool = False) -> list[int]:
    return list(tokenizer(text, add_special_tokens=special)["input_ids"]) if text else []


def prompt_ids(tokenizer, prompt: PromptLike) -> list[int]:
    """The unconditioned prompt, ready for the response to follow."""
    if getattr(tokenizer, "chat_template", None):
        out = tokenizer.apply_chat_template(as_messages(prompt), add_generation_prompt=True, tokenize=True)
        return list(out["input_ids"] if hasattr(out, "keys") else out)
    text = prompt if isinstance(prompt, str) else "\n".join(m["content"] for m in prompt)
    return _ids(tokenizer, text, special=True)


def feedback_ids(tokenizer, feedback: str, fmt: Format | None = None) -> list[int]:
    """The feedback segment's ids (the separator included for ``prefix``)."""
    fmt = (fmt or Format()).for_tokenizer(tokenizer)
    if fmt.placement == Placement.NONE:
        return []
    if fmt.placement == Placement.TOKENS:
        token = fmt.text(feedback)
        token_id = tokenizer.convert_tokens_to_ids(token)
        if token_id is None or token_id == tokenizer.unk_token_id or tokenizer.convert_ids_to_tokens(token_id) != token:
            raise ValueError(f"control token {token!r} for feedback {feedback!r} is not in the tokenizer")
        return [token_id]
    if fmt.placement == Placement.PREFIX:
        return _ids(tokenizer, fmt.text(feedback) + fmt.separator)
    return _ids(tokenizer, fmt.text(feedback))


def control_token_ids(tokenizer, fmt: Format | None) -> list[int]:
    """The ids of ``fmt``'s control tokens (placement ``tokens``; none for other placements)."""
    if fmt is None or fmt.placement != Placement.TOKENS:
        return []
    return sorted({feedback_ids(tokenizer, text, fmt)[0] for text in fmt.tokens})


def _in_template(tokenizer, prompt: PromptLike, feedback: str, fmt: Format) -> ConditionedInput:
    """Render the chat with a marker where the feedback goes, then tokenize around it in three parts."""
    messages = as_messages(prompt)
    sep = "\n\n"
    if fmt.placement == Placement.SYSTEM:
        if messages and messages[0]["role"] == "system":
            messages[0]["content"] = _MARK + sep + messages[0]["content"]
        else:
            messages.insert(0, {"role": "system", "content": _MARK})
    else:
        last_user = max((i for i, m in enumerate(messages) if m["role"] == "user"), default=None)
        if last_user is None:
            raise ValueError("placement 'user' needs a prompt with a user turn")
        messages[last_user]["content"] = _MARK + sep + messages[last_user]["content"]
    text = tokenizer.apply_chat_template(messages, add_generation_prompt=True, tokenize=False)
    if text.count(_MARK) != 1:
        raise ValueError("the chat template dropped or repeated the feedback segment")
    before, after = text.split(_MARK)
    head, segment = _ids(tokenizer, before), feedback_ids(tokenizer, feedback, fmt)
    return ConditionedInput(head + segment + _ids(tokenizer, after), len(head), len(head) + len(segment))


def build_input(tokenizer, prompt: PromptLike, feedback: str | None = None,
                fmt: Format | None = None) -> ConditionedInput:
    """The model input for ``prompt`` conditioned on ``feedback`` (None: the plain prompt) under ``fmt``."""
    fmt = (fmt or Format()).for_tokenizer(tokenizer)
    if feedback is None or fmt.placement == Placement.NONE:
        return ConditionedInput(prompt_ids(tokenizer, prompt))
    if fmt.placement in (Placement.SYSTEM, Placement.USER):
        return _in_template(tokenizer, prompt, feedback, fmt)
    segment = feedback_ids(tokenizer, feedback, fmt)
    return ConditionedInput(segment + prompt_ids(tokenizer, prompt), 0, len(segment))


def strip_conditioning(input_ids: list[int], start: int, end: int | None = None) -> list[int]:
    """Remove the feedback segment ``start:end`` by position (``end=None``: a leading segment of ``start`` ids)."""
    if end is None:
        start, end = 0, start
    return list(input_ids[:start]) + list(input_ids[end:])


def decode_feedback(tokenizer, conditioned: ConditionedInput) -> str:
    """The feedback segment as text, a trailing prefix separator excluded (for display and audit)."""
    text = tokenizer.decode(conditioned.input_ids[conditioned.start:conditioned.end])
    return text[: -len(SEPARATOR)] if text.endswith(SEPARATOR) else text


def format_of(version=None, task=None) -> Format:
    """The format to use: the version's own (what it was trained with), else the task's, else the default."""
    stored = getattr(version, "conditioning", None) or getattr(task, "conditioning", None)
    return Format.from_dict(stored)


@dataclass
class TrainingExample:
    """One conditional-SFT example: conditioned prompt, unconditioned prompt (reference), response."""

    input_ids: list[int]  # the prompt with the feedback segment where the format puts it
    ref_input_ids: list[int]  # the plain prompt, for the reference model's KL term
    response_ids: list[int]  # response, + EOS unless the generation was truncated


def build_training_example(tokenizer, prompt: PromptLike, feedback: str | None, response: str,
                           truncated: bool = False, fmt: Format | None = None,
                           max_response_tokens: int | None = None,
                           max_prompt_tokens: int | None = None) -> TrainingExample:
    """A long prompt loses its oldest tokens after the feedback segment; the segment stays whole."""
    cond = build_input(tokenizer, prompt, feedback, fmt)
    ref = prompt_ids(tokenizer, prompt)
    ids = cond.input_ids
    if max_prompt_tokens is not None:
        ids = ids[:cond.end] + ids[cond.end:][-max_prompt_tokens:]
        ref = ref[-max_prompt_tokens:]
    response_ids = _ids(tokenizer, response)
    if max_response_tokens is not None and len(response_ids) >= max_response_tokens:
        response_ids, truncated = response_ids[:max_response_tokens], True
    if not truncated and tokenizer.eos_token_id is not None:
        response_ids.append(tokenizer.eos_token_id)
    return TrainingExample(ids, ref, response_ids)


# --------------------------------------------------------------------------- Critique-and-Revise layout
# What the ``cnr`` objective trains on and what ``revise`` feeds back at inference: the conversation, the answer as
# the assistant's turn, then a user turn asking for a critique and a revision; the target is "Critique: … /
# Revision: …". Here, beside the feedback format, so inference never imports a trainer module.

REQUEST = "Critique your answer, then revise it."
CRITIQUE, REVISION = "Critique:", "Revision:"


def revision_input(tokenizer, prompt: PromptLike, response: str, request: str = REQUEST) -> list[int]:
    """The model input asking to critique and revise ``response`` to ``prompt``."""
    messages = as_messages(prompt) + [{"role": "assistant", "content": response},
                                      {"role": "user", "content": request}]
    return prompt_ids(tokenizer, messages)


def revision_target(critique: str, revision: str) -> str:
    return f"{CRITIQUE} {critique.strip()}\n{REVISION} {revision.strip()}"


def parse_revision(text: str) -> tuple[str | None, str | None]:
    """(critique, revision) from a generated target; None where a part is missing."""
    head, sep, revision = text.partition(REVISION)
    critique = head.split(CRITIQUE, 1)[1].strip() if CRITIQUE in head else (head.strip() or None)
    return critique, (revision.strip() if sep else None)
