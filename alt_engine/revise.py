"""Critique-and-Revise at inference: the model critiques its answer and revises it, ``passes`` times.

Each pass feeds the latest answer back in the layout the ``cnr`` objective trained on
(``conditioning.revision_input``) and parses "Critique: … / Revision: …" from the reply; a reply without
a revision ends the loop (the answer stays as it was). The playground and the API call ``revise`` with
the backend they already hold, or ``revise_version`` with a model version id.
"""

from __future__ import annotations

from dataclasses import dataclass

from .conditioning import REQUEST, PromptLike, parse_revision, revision_input
from .sampling import SamplingParams

MAX_PASSES = 5  # the paper's win rate rose with up to 5 passes (the playground's and the API's limit)
MAX_PASSES_LIMIT = 20  # what the engine accepts


@dataclass
class RevisionStep:
    """One pass: the answer it started from, the critique, the revised answer (None: no revision parsed)."""

    answer: str
    critique: str | None
    revision: str | None


def revise(backend, prompt: PromptLike, response: str, passes: int = 1, params: SamplingParams | None = None,
           request: str = REQUEST) -> list[RevisionStep]:
    """Revise ``response`` to ``prompt`` up to ``passes`` times with ``backend`` (any ``sampling.Backend``);
    greedy by default. The final answer is the last step's revision (or ``response`` if there is none)."""
    return revise_many(backend, [prompt], [response], passes, params, request)[0]


def revise_many(backend, prompts: list[PromptLike], responses: list[str], passes: int = 1,
                params: SamplingParams | None = None, request: str = REQUEST) -> list[list[RevisionStep]]:
    """``revise`` for many answers at once: each pass is one batched ``generate`` over the answers still being
    revised (an answer whose reply has no revision stops there)."""
    if not 1 <= passes <= MAX_PASSES_LIMIT:
        raise ValueError(f"passes must be between 1 and {MAX_PASSES_LIMIT}")
    params = SamplingParams(**{**(params or SamplingParams(temperature=0.0, max_new_tokens=256)).__dict__, "n": 1})
    steps: list[list[RevisionStep]] = [[] for _ in responses]
    answers, live = list(responses), list(range(len(responses)))
    for _ in range(passes):
        if not live:
            break
        ids = [revision_input(backend.tokenizer, prompts[i], answers[i], request) for i in live]
        texts = [row[0].text for row in backend.generate(ids, params)]
        still = []
        for i, text in zip(live, texts):
            critique, revision = parse_revision(text)
            steps[i].append(RevisionStep(answers[i], critique, revision))
            if revision:
                answers[i] = revision
                still.append(i)
        live = still
    return steps


def final_answer(steps: list[RevisionStep], response: str) -> str:
    revised = [s.revision for s in steps if s.revision]
    return revised[-1] if revised else response


def revise_version(settings, version, prompt: PromptLike, response: str, passes: int = 1,
                   params: SamplingParams | None = None) -> list[RevisionStep]:
    """``revise`` with ``version`` (a ``db.ModelVersion``) loaded under ``settings``."""
    from .sampling import load_sampler

    return revise(load_sampler(settings, version), prompt, response, passes, params)
