"""Learned scorers shipped in PyPI packages, for the reward path (``reward:alt_engine.feedback.scorers:<name>``).

A scorer is ``f(prompts, responses) -> list[float]``, higher = better; ``RewardProvider`` cuts
the scores into the task's ordered categories (quantiles per prompt, ALT). Each needs no
network and no model download: its weights come with the package.

- ``non_offensive``: ``alt-profanity-check`` (a linear SVM over character/word n-grams, trained on
  ~200k labelled offensive/clean texts, calibrated to a probability ``p`` that the text is
  offensive). Score = log-odds of *not* offensive, ``log((1 - p) / p)`` with ``p`` clipped to
  [1e-4, 1 - 1e-4], so scores lie in about [-9.2, +9.2].

  Why log-odds and not ``1 - p``: per-prompt quantiles only use the order, which any monotone
  transform keeps, but the mean reward of an evaluation does not. ``p`` is squashed against 0 for
  most of what a chat model writes (0.003 for a calm sentence, 0.03–0.1 for one with "hell" or
  "hate" in it, ~1 for an insult), so a mean of ``1 - p`` only counts outright insults; on the
  log-odds scale those milder steps (5.8 → 3.6 → 2.2) move the mean too, which is what a round
  that makes the model calmer changes first. The clip bounds how far one insult (``p`` reaches
  exactly 1.0) can pull a mean, keeping bootstrap intervals sane.
  Only the response is judged: the prompt is often rude on purpose and is the same for every
  sample of it.
"""

from __future__ import annotations

import math

P_CLIP = 1e-4


def _offensive_prob(texts: list[str]) -> list[float]:
    from profanity_check import predict_prob  # lazy: pulls scikit-learn and unpickles the model (~2 s)

    return [float(p) for p in predict_prob([t or "" for t in texts])] if texts else []


def log_odds(p: float, clip: float = P_CLIP) -> float:
    """log((1 - p) / p) with ``p`` clipped to [clip, 1 - clip]: + for clean, - for offensive."""
    p = min(max(p, clip), 1 - clip)
    return math.log((1 - p) / p)


def non_offensive(prompts: list, responses: list[str]) -> list[float]:
    """Log-odds that each response is not offensive (alt-profanity-check); higher = better."""
    return [log_odds(p) for p in _offensive_prob(list(responses))]
