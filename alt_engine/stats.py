"""Confidence intervals for evaluation: percentile bootstrap over prompts.

Generations of one prompt are not independent (same prompt, same difficulty), so every interval
resamples *prompts* with replacement and recomputes the statistic over all their generations.
A share is a ratio estimator (hits / generations over the resampled prompts); a mean of a
per-generation attribute likewise (sum / count); a gap compares two conditionings on the same
prompts, so the pair is resampled together (paired bootstrap).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass

import numpy as np

B = 2000  # bootstrap resamples


@dataclass
class Estimate:
    """A point estimate with its 95% bootstrap interval over prompts."""

    value: float
    low: float
    high: float
    prompts: int

    def to_dict(self) -> dict:
        return asdict(self)

    def excludes(self, x: float = 0.0) -> bool:
        return self.low > x or self.high < x

    def __str__(self) -> str:
        return f"{self.value:.3g} [{self.low:.3g}, {self.high:.3g}]"


def _resample_index(n: int, b: int, seed: int) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, n, size=(b, n))  # (b, n) prompt indices


def _interval(samples: np.ndarray, value: float, n: int, level: float = 0.95) -> Estimate:
    lo, hi = np.nanquantile(samples, [(1 - level) / 2, 1 - (1 - level) / 2])
    return Estimate(float(value), float(lo), float(hi), n)


def ratio_ci(sums: Sequence[float], counts: Sequence[float], b: int = B, seed: int = 0) -> Estimate:
    """sum(sums) / sum(counts) with a bootstrap over prompts (share: sums = hits, counts = generations)."""
    s, c = np.asarray(sums, float), np.asarray(counts, float)
    if len(s) == 0 or c.sum() == 0:
        return Estimate(float("nan"), float("nan"), float("nan"), 0)
    idx = _resample_index(len(s), b, seed)
    with np.errstate(invalid="ignore", divide="ignore"):
        boots = s[idx].sum(1) / c[idx].sum(1)  # (b,)
    return _interval(boots, s.sum() / c.sum(), len(s))


def per_prompt_ci(values: Mapping[object, Sequence[float]], b: int = B, seed: int = 0) -> Estimate:
    """The mean over all generations of per-generation ``values`` ({prompt: [value per generation]})."""
    keys = [k for k in values if len(values[k])]
    return ratio_ci([float(np.sum(values[k])) for k in keys], [len(values[k]) for k in keys], b, seed)


def gap_ci(a: Mapping[object, Sequence[float]], b_: Mapping[object, Sequence[float]], b: int = B,
           seed: int = 0) -> Estimate:
    """mean(a) − mean(b) over the prompts both have, prompts resampled in pairs."""
    keys = [k for k in a if len(a[k]) and k in b_ and len(b_[k])]
    if not keys:
        return Estimate(float("nan"), float("nan"), float("nan"), 0)
    sa, ca = np.array([np.sum(a[k]) for k in keys], float), np.array([len(a[k]) for k in keys], float)
    sb, cb = np.array([np.sum(b_[k]) for k in keys], float), np.array([len(b_[k]) for k in keys], float)
    idx = _resample_index(len(keys), b, seed)
    boots = sa[idx].sum(1) / ca[idx].sum(1) - sb[idx].sum(1) / cb[idx].sum(1)
    return _interval(boots, sa.sum() / ca.sum() - sb.sum() / cb.sum(), len(keys))
