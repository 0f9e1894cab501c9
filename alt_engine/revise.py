"""Critique-and-Revise at inference: the model critiques its answer and revises it, ``passes`` times.

Each pass feeds the latest answer back in the layout the ``cnr`` objective trained on
(``training.cnr.revision_input``) and parses "Critique: … / Revision: …" from the reply; a reply without
a revision ends the loop (the answer stays as it was). The playground and the API call ``revise`` with
the backend they already hold, or ``revise_version`` with a model version id.
"""

from __future__ import annotations

from dataclasses import dataclass

from .conditioning import PromptLike
from .sampling import SamplingParams
from .training.cnr import REQUEST, parse_revision, revision_input

MAX_PASSES = 5  # the paper's win rate rose with up to 5 passes


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
    if not 1 <= passes <= 20:
        raise ValueError("passes must be between 1 and 20")
    params = params or SamplingParams(n=1, temperature=0.0, max_new_tokens=256)
    steps: list[RevisionStep] = []
    answer = response
    for _ in range(passes):
        ids = revision_input(backend.tokenizer, prompt, answer, request)
        text = backend.generate([ids], SamplingParams(**{**params.__dict__, "n": 1}))[0][0].text
        critique, revision = parse_revision(text)
        steps.append(RevisionStep(answer, critique, revision))
        if not revision:
            break
        answer = revision
    return steps


def final_answer(steps: list[RevisionStep], response: str) -> str:
    revised = [s.revision for s in steps if s.revision]
    return revised[-1] if revised else response


def revise_version(settings, version, prompt: PromptLike, response: str, passes: int = 1,
                   params: SamplingParams | None = None) -> list[RevisionStep]:
    """``revise`` with ``version`` (a ``db.ModelVersion``) loaded under ``settings``."""
    from .sampling import load_sampler

    return revise(load_sampler(settings, version), prompt, response, passes, params)
