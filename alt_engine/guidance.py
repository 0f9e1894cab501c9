"""Feedback guidance: which feedback f⁻ a guided sample is pushed away from, and who may be guided.

At each decoding step the sampler draws from ``lp(x, f) + γ·(lp(x, f) − lp(x, f⁻))`` (``sampling.guided_logits``;
classifier-free guidance over the feedback, as Sanchez et al. 2023 did for prompts): the model already holds
p(y | x, f) for every f, so guidance amplifies whatever the label taught. γ = 0 is plain sampling.
``SamplingParams.guidance`` is γ and ``SamplingParams.negative`` names f⁻:

- ``worst``  — the worst feedback (the task's last category, or the worst-scored free text); a sample
  conditioned on the worst itself is pushed away from the best, so a steerability contrast is guided both ways;
- ``plain``  — the prompt without any feedback (the model's own default);
- any other text — that feedback text, placed exactly as a conditioning is.

Only a model that reads feedback can be guided: SFT, CUT and Critique-and-Revise versions sample the plain
prompt (format placement ``none``) and refuse it (``check_objective``, ``sampling.check_guidance``).
"""

from __future__ import annotations

from collections.abc import Sequence

from .vocab import ObjectiveName

# The CLI's defaults (`alt round`, `alt experiment`, `alt eval`) for objectives that read feedback; the engine's
# dataclasses default to 0 (off). Chosen by measurement on the default model (docs/guidance.md, "Measured": concise,
# 3 rounds, ALT − SFT +0.14 [+0.05, +0.23] in exemplar share, steer gap +0.73 [+0.63, +0.82] vs the base's +0.07).
ROUND_GUIDANCE = 1.0  # γ for round sampling under the exemplar
EVAL_GUIDANCE = 1.0  # γ for evaluation (and what the playground's slider starts at)
EXPLORE = 0.5  # share of each prompt's samples drawn under the worst feedback, unguided, from round 2 on
NEGATIVES = ("worst", "plain")  # the named choices; anything else is a feedback text
FEEDBACK_FREE = (ObjectiveName.SFT, ObjectiveName.CUT, ObjectiveName.CNR)  # objectives whose versions read no feedback


def negative_for(spec: str, feedback: str | None, contrast: Sequence[str]) -> str | None:
    """f⁻ for a sample conditioned on ``feedback``; ``contrast`` = [best, worst] (``evaluation.contrast_feedback``).

    None means the plain prompt."""
    if spec == "plain":
        return None
    if spec != "worst":
        return spec
    if not contrast:
        raise ValueError("negative 'worst': the task has no categories or scored feedback to take the worst from")
    best, worst = contrast[0], contrast[-1]
    return best if feedback == worst and best != worst else worst


def negatives(db: str, task, spec: str, conds: Sequence[str | None]) -> list[str | None]:
    """f⁻ per conditioning in ``conds`` (None where a prompt is unconditioned: it is not guided)."""
    contrast: list[str] = []
    if spec == "worst" and any(c is not None for c in conds):
        from .exemplars import contrast_feedback

        contrast = contrast_feedback(db, task)
    return [negative_for(spec, c, contrast) if c is not None else None for c in conds]


def check_objective(objective: str, guidance: float) -> None:
    """An objective that reads no feedback refuses guidance, saying why (before any job or round exists)."""
    if guidance and objective in FEEDBACK_FREE:
        raise ValueError(f"objective {objective!r} reads no feedback (its versions sample the plain prompt), so there "
                         "is nothing to guide: use --guidance 0 (feedback guidance is for alt, quark, steerlm)")


def resolve(objective: str, value: float | None, default: float) -> float:
    """γ for ``objective``: the value given (refused by a feedback-free objective), else the default where the
    objective reads feedback, else 0."""
    if value is None:
        return 0.0 if objective in FEEDBACK_FREE else default
    check_objective(objective, value)
    return value


def describe(guidance: float, negative: str) -> str:
    """One line for logs and reports."""
    return f"guidance γ={guidance:g} away from {negative!r}" if guidance else "no guidance"
