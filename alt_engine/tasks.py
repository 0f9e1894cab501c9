"""Built-in feedback schemas (tasks) and helpers to create them.

Categories are ordered best → worst; the first is the exemplar the model is
conditioned on when sampling from round 2 on. ``DEMOS`` are the offline
demonstration tasks: each ships a prompt set (``alt_engine/data/<task>.jsonl``,
imported with ``alt prompts import --builtin <task>``) and names the provider
whose signal a user can watch move on the default model with no network.
"""

from __future__ import annotations

from dataclasses import dataclass
from importlib import resources
from pathlib import Path

from sqlmodel import Session, select

from .db import Task

BUILTIN_TASKS: dict[str, dict] = {
    "default": dict(
        description="General assistant responses.",
        categories=["Excellent", "Good", "Mediocre", "Bad", "Horrible"],
        guidelines="Judge how well the response answers the prompt: correct, helpful, clear and concise.",
    ),
    "dialogue": dict(
        description="Helpful and harmless dialogue (Anthropic HH setting).",
        categories=["Harmless and very helpful", "Harmless and helpful", "Harmless and not helpful", "Harmful"],
        guidelines="First decide whether the reply is harmful. If not, decide how helpful it is to the user.",
    ),
    "toxicity": dict(
        description="Non-toxic continuations (RealToxicityPrompts setting).",
        categories=["Lowest Toxicity", "Low-Moderate Toxicity", "Moderate Toxicity", "High-Moderate Toxicity",
                    "Maximum Toxicity"],
        guidelines="Rate how toxic (rude, disrespectful, hateful) the continuation is.",
    ),
    "summarization": dict(
        description="Reddit TL;DR summarisation.",
        categories=["Excellent", "Good", "Mediocre", "Bad", "Horrible"],
        guidelines="Rate how accurate, complete and concise the summary is.",
    ),
    "concise": dict(
        description="Concise answers: the fewer words an answer needs, the better (demo task, rule:concise:auto).",
        categories=["Very concise", "Concise", "Wordy", "Very wordy"],
        guidelines="Rate how concise the response is: does it answer in as few words as the question needs, "
                   "or does it pad, repeat and ramble?",
    ),
    "concise_text": dict(
        description="The concise prompts with free-text feedback (ALT-LMU): sentences naming an answer's length and "
                    "whether it opens on the subject, scored 0-3 (demo task, rule:free_text:length,subject).",
        categories=[],
        guidelines="In one short sentence, say how long the answer is and whether its first sentence names what was "
                   "asked; score it 0-3 (3: short and on the subject).",
    ),
    "concise_score": dict(
        description="The concise prompts with rule:free_text's information as categories of one attribute (its "
                    "score 3 → Excellent … 0 → Bad), the categorical side of the free-text comparison.",
        categories=["Excellent", "Good", "Mediocre", "Bad"],
        guidelines="Excellent: short and opens on the question's subject; Bad: long and opens off topic.",
    ),
    "offensiveness": dict(
        description="Calm, non-offensive replies to heated prompts (demo task, "
                    "reward:alt_engine.feedback.scorers:non_offensive).",
        categories=["Lowest Toxicity", "Low-Moderate Toxicity", "Moderate Toxicity", "High-Moderate Toxicity",
                    "Maximum Toxicity"],
        guidelines="Rate how offensive (rude, insulting, profane, disrespectful) the response is, whatever the "
                   "prompt provoked.",
    ),
}


@dataclass(frozen=True)
class Demo:
    """A built-in demonstration task: its provider spec and its shipped prompt set."""

    provider: str
    prompts: str  # file name under alt_engine/data/
    truncated: str = "exclude"  # the pool's truncation policy that suits the provider (see pool.py)

    @property
    def prompt_file(self) -> Path:
        return Path(str(resources.files("alt_engine") / "data" / self.prompts))


DEMOS: dict[str, Demo] = {
    # a length rule: an answer cut off at max tokens is the wordiest there is, so it stays in the pool as the
    # worst category (measured: with "exclude", 90 of 128 round-1 samples at 160 tokens left the pool)
    "concise": Demo("rule:concise:auto", "concise.jsonl", truncated="worst"),
    "offensiveness": Demo("reward:alt_engine.feedback.scorers:non_offensive", "offensiveness.jsonl"),
    # free text has no worst text to file a cut-off answer under: the rule names it "long" and the pool takes it
    # only where complete answers cannot fill the quota (79 % of round 1 is cut off at 160 tokens)
    "concise_text": Demo("rule:free_text:length,subject", "concise.jsonl", truncated="last"),
    "concise_score": Demo("rule:free_text:length,subject", "concise.jsonl", truncated="last"),
}


def builtin_prompt_file(name: str) -> Path:
    """The shipped prompt set of demo task ``name``; ValueError naming the demos otherwise."""
    if name not in DEMOS:
        raise ValueError(f"no built-in prompt set {name!r}: built-in sets are {', '.join(DEMOS)}")
    return DEMOS[name].prompt_file


def get_or_create_task(session: Session, name: str, **fields) -> Task:
    """The task called ``name``; created from ``fields`` or the built-in definition if new."""
    task = session.exec(select(Task).where(Task.name == name)).first()
    if task is not None:
        return task
    spec = {**BUILTIN_TASKS.get(name, {}), **fields}
    if not spec.get("categories") and name not in BUILTIN_TASKS:  # a built-in free-text task has none
        known = ", ".join(BUILTIN_TASKS)
        raise ValueError(f"unknown task {name!r}: give its categories or use a built-in one ({known})")
    task = Task(name=name, **spec)
    session.add(task)
    session.flush()
    return task
