"""Critique-and-Revise: SFT from (prompt, response) to a critique and a revised response.

Records are annotators' ``Feedback.kind == "critique"`` rows (critique + revision) on a generation. The
layout (``revision_input`` / ``revision_target``), shared with inference (``alt_engine.revise``):

    input:  the chat [user: prompt, assistant: response, user: REQUEST] (rendered by the chat template;
            a model without one reads the three parts on their own lines), ready for the reply
    target: "Critique: {critique}\\nRevision: {revision}" + EOS

The loss is plain NLL on the target (no feedback conditioning: the version samples unconditioned; its
revision pass is ``revise.revise``, repeated up to ``passes`` times).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import ClassVar

from sqlmodel import select

from .. import conditioning
from ..conditioning import REQUEST, revision_input, revision_target  # the CnR layout, shared with revise.py
from ..db import Feedback, FeedbackKind, Generation, Prompt, Round, session_scope
from ..pool import PoolItem
from .collator import AltCollator
from .config import TrainConfig


@dataclass
class CnRTrainConfig(TrainConfig):
    """Critique-and-Revise (``cnr.py``): ``TrainConfig``'s options.

        revision_request: the user turn that asks for a critique and a revision.
    """

    objective: ClassVar[str] = "cnr"

    revision_request: str = field(default=REQUEST, metadata={"help": "the turn asking for critique + revision"})


def build_cnr_examples(tokenizer, items: list[PoolItem], config: CnRTrainConfig, fmt=None) -> list[dict]:
    rows = []
    for it in items:
        inp = revision_input(tokenizer, it.prompt, it.response, config.revision_request)[-config.max_prompt_tokens:]
        target = list(tokenizer(revision_target(it.feedback, it.revision), add_special_tokens=False)["input_ids"])
        target = target[:config.max_response_tokens]
        if len(target) < config.max_response_tokens and tokenizer.eos_token_id is not None:
            target.append(tokenizer.eos_token_id)
        rows.append({"input_ids": inp, "ref_input_ids": inp, "response_ids": target})
    return rows


def critique_items(db: str, task, round_ids: list[int] | None = None, policy: str = "flush", **_) -> list[PoolItem]:
    """Every generation's critique + revision records (both parts written)."""
    with session_scope(db) as s:
        if round_ids is None:
            rounds = list(s.exec(select(Round.id).where(Round.task_id == task.id).order_by(Round.number)))
            round_ids = rounds[-1:] if policy == "flush" else rounds
        rows = s.exec(select(Feedback, Generation, Prompt).join(Generation, Feedback.generation_id == Generation.id)
                      .join(Prompt, Generation.prompt_id == Prompt.id).where(
            Prompt.task_id == task.id, Generation.round_id.in_(round_ids), Feedback.kind == FeedbackKind.CRITIQUE,
            Feedback.critique.is_not(None), Feedback.revision.is_not(None)).order_by(Feedback.id)).all()
        return [PoolItem(g.id, f.id, p.id, conditioning.prompt_of(p), f.critique, g.response, g.truncated,
                         revision=f.revision) for f, g, p in rows if f.critique.strip() and f.revision.strip()]


def check_critiques(items: list[PoolItem]) -> None:
    if not items or any(it.revision is None for it in items):
        raise ValueError("Critique-and-Revise needs critique + revision records (the annotation screen's "
                         "'Critique & revision' fields)")


def _objective():
    from .objective import Objective

    return Objective(
        "cnr", CnRTrainConfig, "SFT to critique + revision; iterative revision at inference (Critique-and-Revise)",
        collator=lambda tokenizer, config: AltCollator(tokenizer.pad_token_id),
        trainer_kwargs=lambda config, load_reference: {"alpha": 0.0, "beta": 0.0},
        build_examples=build_cnr_examples, format=lambda tokenizer, items, config, fmt: conditioning.Format("none"),
        task_format=lambda task: conditioning.Format("none"), items=critique_items, check_items=check_critiques)


OBJECTIVE = _objective()
