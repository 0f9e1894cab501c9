"""Steering by text: per-attribute gaps between feedback texts that differ in one attribute, and a held-out
combination of attribute levels (``rule:free_text``'s attributes, ``feedback/free_text.py``).

The texts are the rule's fixed descriptions (its first paraphrase of each level), so every version and the
untrained base are sampled under the very same texts:

- ``best``: every attribute at its best level (the exemplar: score 3);
- ``flip:<attr>``: ``best`` with that one attribute at its worst level — ``best`` vs ``flip:<attr>`` differ in
  that attribute only, so their gap on it is what the text steers;
- ``holdout`` and ``complement``: the held-out combination (kept out of the pool by the experiment) and the
  same attributes at their opposite levels — both attributes must move between them.

A gap is oriented towards the attribute's ``high`` level (more words for length, a higher on-subject share):
> 0 means the model went where the text said. Each gap is reported with its 95% paired bootstrap CI over the
probe prompts, for the version, for the untrained base under the same format and texts, and version − base.
"""

from __future__ import annotations

from collections.abc import Callable

from .feedback.free_text import ATTRIBUTES, FreeTextRule, parse_combination
from .stats import gap_ci


def texts(rule: FreeTextRule, holdout: str | None = None) -> dict[str, dict[str, str]]:
    """name → levels (``best``, ``flip:<attr>`` for each attribute, and ``holdout`` / ``complement``)."""
    best = rule.best()
    out = {"best": best}
    for a in rule.attributes:
        out[f"flip:{a}"] = {**best, a: ATTRIBUTES[a].levels[-1]}
    if holdout:
        combo = parse_combination(holdout)
        out["holdout"] = {**best, **combo}
        out["complement"] = {**best, **{a: ATTRIBUTES[a].levels[-1] if lv == ATTRIBUTES[a].levels[0]
                                        else ATTRIBUTES[a].levels[0] for a, lv in combo.items()}}
    return out


def eval_pairs(rule: FreeTextRule, holdout: str | None = None) -> list[list[str]]:
    """The conditioning pairs to sample (each an ``EvalConfig.conditions``): [best, flip:first] — the rounds'
    own evaluation — then the other texts two at a time (each distinct text once)."""
    named = texts(rule, holdout)
    described = {k: rule.describe(v) for k, v in named.items()}
    first = [described["best"], described[f"flip:{rule.attributes[0]}"]]
    rest = list(dict.fromkeys(t for t in described.values() if t not in first))
    return [first] + [rest[i:i + 2] for i in range(0, len(rest), 2)]


def _by_text(evaluations: list[dict]) -> dict[str, dict]:
    """conditioning text → its per-prompt values, over evaluations (each a metrics dict with a main and a
    contrast conditioning)."""
    out: dict[str, dict] = {}
    for m in evaluations:
        ev = m.get("eval") or {}
        if ev.get("conditioning"):
            out.setdefault(ev["conditioning"], m.get("per_prompt") or {})
        if ev.get("contrast"):
            out.setdefault(ev["contrast"], m.get("per_prompt_contrast") or {})
    return out


def _gap(values: dict[str, dict], x: str, y: str, attr: str) -> dict[str, list[float]] | None:
    """Per prompt, mean under ``x`` − mean under ``y`` of ``attr:<attr>`` (None when either is missing)."""
    a, b = (values.get(x) or {}).get(f"attr:{attr}"), (values.get(y) or {}).get(f"attr:{attr}")
    if not a or not b:
        return None
    return {p: [sum(a[p]) / len(a[p]) - sum(b[p]) / len(b[p])] for p in a if p in b and a[p] and b[p]}


def gaps(rule: FreeTextRule, version_evals: list[dict], base_evals: list[dict], holdout: str | None = None) -> dict:
    """Per attribute the gap best vs flip:<attr>, and for the held-out combination each of its attributes' gap
    holdout vs complement: version, base and version − base, with CIs (see the module docstring)."""
    named = texts(rule, holdout)
    described = {k: rule.describe(v) for k, v in named.items()}
    mine, base = _by_text(version_evals), _by_text(base_evals)

    def one(x: str, y: str, attr: str) -> dict | None:
        hi = ATTRIBUTES[attr].high
        if named[x][attr] != hi:  # orient towards the high level
            x, y = y, x
        g, g0 = _gap(mine, described[x], described[y], attr), _gap(base, described[x], described[y], attr)
        if g is None:
            return None
        row = {"texts": [described[x], described[y]], "gap": gap_ci(g, {p: [0.0] for p in g}).to_dict()}
        if g0:
            row["base_gap"] = gap_ci(g0, {p: [0.0] for p in g0}).to_dict()
            row["vs_base"] = gap_ci(g, g0).to_dict()
        return row

    out: dict = {"texts": described, "attributes": {}}
    for a in rule.attributes:
        if r := one("best", f"flip:{a}", a):
            out["attributes"][a] = r
    if holdout:
        out["holdout"] = {"combination": holdout, "attributes": {}}
        for a in parse_combination(holdout):
            if r := one("holdout", "complement", a):
                out["holdout"]["attributes"][a] = r
    return out


def evaluate_texts(evaluate: Callable[[list[str]], dict], rule: FreeTextRule, holdout: str | None = None,
                   done: dict | None = None) -> list[dict]:
    """Every pair of ``eval_pairs`` through ``evaluate(conditions) → metrics``; ``done``: the metrics of the
    first pair when the rounds' own evaluation already sampled it."""
    pairs = eval_pairs(rule, holdout)
    return ([done] if done else [evaluate(pairs[0])]) + [evaluate(p) for p in pairs[1:]]


def summary_lines(result: dict) -> list[str]:
    """One line per gap, for logs and the CLI."""
    def fmt(d: dict | None) -> str:
        return f"{d['value']:+.3f} [{d['low']:+.3f}, {d['high']:+.3f}]" if d else "–"

    lines = []
    for a, r in (result.get("attributes") or {}).items():
        lines.append(f"  {a:8s} gap {fmt(r['gap'])}  base {fmt(r.get('base_gap'))}  − base {fmt(r.get('vs_base'))}")
    for a, r in ((result.get("holdout") or {}).get("attributes") or {}).items():
        lines.append(f"  held-out {result['holdout']['combination']}: {a} gap {fmt(r['gap'])}  base "
                     f"{fmt(r.get('base_gap'))}  − base {fmt(r.get('vs_base'))}")
    return lines
