"""``rule:free_text:<attributes>``: an offline stand-in for annotators who write sentences (not a judge).

It measures a response on two or more attributes and writes what a person might: one short sentence naming
each attribute's level, in one of many paraphrases (drawn per generation, so a model cannot key on one string),
with a score 0–3. The rows are the same free-text rows (``kind="text"``, ``text``, ``score``) a person or
``llm:free_text`` writes, with the rule's spec as their provenance. On a task *with* categories it writes the
same information as a category instead (score 3 → the best category … score 0 → the worst): "the same rule's
information as categories of one attribute", for comparisons.

Attributes (chosen from what SmolLM2-135M-Instruct writes on the concise prompts: answers of 3–140 words,
79 % cut off at 160 tokens; a third open with filler instead of the question's subject; 1 in 6 are lists):

- ``length``  — short (≤ 40 words) / medium (≤ 90) / long (more, or cut off): 2 / 1 / 0 points;
- ``subject`` — the first sentence names the prompt's subject (on) or not (off): 1 / 0 points;
- ``format``  — prose / a bulleted or numbered list: 1 / 0 points.

Score = the points scaled to 0–3 (3 = every attribute at its best level). ``parse_levels`` is the writer's
inverse: it reads the levels back from any sentence the rule wrote (tests check it over many samples), and
the experiment's held-out combination and the per-attribute evaluation use ``measure``.
"""

from __future__ import annotations

import random
import re
from collections.abc import Callable
from dataclasses import dataclass

from ..conditioning import PromptLike
from ..db import Task
from .base import FeedbackItem, FeedbackResult, count_words

SHORT_WORDS, LONG_WORDS = 40, 90
_WORD = re.compile(r"[A-Za-z]+")
_LIST_LINE = re.compile(r"(?m)^\s*(?:[-*•]|\d+[.)])\s+\S")
_STOP = set("""a an the is are was were be been do does did i my me you your how what why which who whom when where
can could should would will to of in on for and or but with at by from it its that this these those as if so not
any there their them they we our us up out about into than then make get have has had some much many very just
tell explain difference between better best good way ways first there's i'm don't can't""".split())


def prompt_subject_words(prompt: PromptLike) -> list[str]:
    """The prompt's content words (its last user turn), lower case: what "naming the subject" looks for."""
    text = prompt if isinstance(prompt, str) else next(
        (m["content"] for m in reversed(prompt) if m.get("role") == "user"), "")
    return [w for w in (x.lower() for x in _WORD.findall(text or "")) if len(w) > 2 and w not in _STOP]


def first_sentence(response: str) -> str:
    return re.split(r"(?<=[.!?])\s+|\n", response.strip(), maxsplit=1)[0]


def names_subject(prompt: PromptLike, response: str) -> bool:
    """Whether the response's first sentence names one of the prompt's content words (a 5-letter stem match, so
    "procrastinating" finds "procrastination")."""
    first = first_sentence(response).lower()
    return any(re.search(rf"\b{re.escape(w[:5])}", first) for w in prompt_subject_words(prompt))


@dataclass(frozen=True)
class Attribute:
    """One measurable attribute: its levels best first, the points each is worth, and the phrases that name it."""

    name: str
    levels: tuple[str, ...]
    points: tuple[int, ...]
    phrases: dict[str, tuple[str, ...]]
    level: Callable[[PromptLike, str, bool], str]  # (prompt, response, truncated) → level
    value: Callable[[PromptLike, str, bool], float]  # the measurement the evaluation averages (words, a share)
    high: str  # the level whose responses measure highest (a steering gap is oriented towards it)


def _length_level(prompt: PromptLike, response: str, truncated: bool) -> str:
    words = count_words(response)
    return "long" if truncated or words > LONG_WORDS else "short" if words <= SHORT_WORDS else "medium"


ATTRIBUTES: dict[str, Attribute] = {a.name: a for a in (
    Attribute("length", ("short", "medium", "long"), (2, 1, 0), {
        "short": ("short and to the point", "brief and direct", "answered in a few words", "nicely compact",
                  "kept short", "a crisp, short reply", "says it in one or two sentences"),
        "medium": ("a medium-length answer", "a little longer than it needs to be", "could be trimmed a bit",
                   "moderate length", "somewhat wordy", "a few sentences too many"),
        "long": ("far too long", "rambles on", "very long-winded", "goes on and on", "much too wordy",
                 "a wall of text", "runs to great length"),
    }, _length_level, lambda p, r, t: float(count_words(r)), "long"),
    Attribute("subject", ("on", "off"), (1, 0), {
        "on": ("opens on the question's subject", "names the topic right away", "starts with what was asked",
               "addresses the subject from the first sentence", "gets straight to the topic",
               "its first sentence names the subject"),
        "off": ("opens off topic", "starts with filler instead of the subject", "never names the subject up front",
                "wanders before reaching the topic", "its first sentence misses the subject",
                "begins with a vague preamble"),
    }, lambda p, r, t: "on" if names_subject(p, r) else "off", lambda p, r, t: float(names_subject(p, r)), "on"),
    Attribute("format", ("prose", "list"), (1, 0), {
        "prose": ("written as plain prose", "in flowing sentences", "no bullet points", "reads as running text",
                  "prose rather than items", "in full sentences"),
        "list": ("set out as a bulleted list", "laid out as a list", "broken into numbered steps",
                 "in bullet-point form", "split into list items", "given point by point"),
    }, lambda p, r, t: "list" if _LIST_LINE.search(r) else "prose",
        lambda p, r, t: float(bool(_LIST_LINE.search(r))), "list"),
)}

_JOINERS = (", and ", "; ", ", ", " — ", "; also ")
_OPENERS = ("", "", "", "Overall: ", "My take: ", "In my view: ")


@dataclass
class FreeTextRule:
    """Writes one paraphrased sentence per response naming each attribute's level, with a score 0–3."""

    attributes: tuple[str, ...]
    chunk_size: int = 256

    def __post_init__(self):
        unknown = [a for a in self.attributes if a not in ATTRIBUTES]
        if unknown or len(set(self.attributes)) < 2:
            raise ValueError(f"rule:free_text needs two or more distinct attributes of {', '.join(ATTRIBUTES)}, "
                             f"e.g. rule:free_text:length,subject; got {','.join(self.attributes) or 'none'}")
        self.name = "rule:free_text:" + ",".join(self.attributes)

    def measure(self, prompt: PromptLike, response: str, truncated: bool = False) -> dict[str, str]:
        """attribute → level."""
        return {a: ATTRIBUTES[a].level(prompt, response, truncated) for a in self.attributes}

    def values(self, prompt: PromptLike, response: str, truncated: bool = False) -> dict[str, float]:
        """attribute → the measurement an evaluation averages (words for length, a 0/1 share otherwise)."""
        return {a: ATTRIBUTES[a].value(prompt, response, truncated) for a in self.attributes}

    def score(self, levels: dict[str, str]) -> int:
        """0–3: the attributes' points scaled (3 only when every attribute is at its best level)."""
        got = sum(ATTRIBUTES[a].points[ATTRIBUTES[a].levels.index(levels[a])] for a in self.attributes)
        most = sum(ATTRIBUTES[a].points[0] for a in self.attributes)
        return round(3 * got / most)

    def describe(self, levels: dict[str, str], rng: random.Random | None = None) -> str:
        """A sentence naming each level (``rng``: which paraphrases, order and joiners; None: the first of each,
        a fixed text for evaluation)."""
        parts = [ATTRIBUTES[a].phrases[levels[a]] for a in self.attributes]
        if rng is None:
            chosen, joiners, opener = [p[0] for p in parts], [", "] * len(parts), ""
        else:
            chosen = [rng.choice(p) for p in parts]
            rng.shuffle(chosen)
            joiners, opener = [rng.choice(_JOINERS) for _ in parts], rng.choice(_OPENERS)
        text = chosen[0] + "".join(j + c for j, c in zip(joiners, chosen[1:]))
        return opener + text[0].upper() + text[1:] + "."

    def best(self) -> dict[str, str]:
        return {a: ATTRIBUTES[a].levels[0] for a in self.attributes}

    def __call__(self, items: list[FeedbackItem], task: Task) -> list[FeedbackResult]:
        out = []
        for item in items:
            levels = self.measure(item.prompt, item.response, item.truncated)
            score = self.score(levels)
            raw = ";".join(f"{a}={v}" for a, v in levels.items()) + f";words={count_words(item.response)}"
            if task.categories:  # the same information as one ordinal attribute: score 3 → best category
                k = len(task.categories)
                out.append(FeedbackResult(category=task.categories[round((3 - score) * (k - 1) / 3)],
                                          score=float(score), raw=raw))
            else:
                text = self.describe(levels, random.Random(f"free_text:{item.generation_id}"))
                out.append(FeedbackResult(kind="text", text=text, score=float(score), raw=raw))
        return out


def parse_levels(text: str, attributes: tuple[str, ...] | None = None) -> dict[str, str]:
    """The levels a sentence of the rule names (attribute → level); an attribute it names ambiguously or not at
    all is left out."""
    lower = (text or "").lower()
    found: dict[str, str] = {}
    for a in attributes or tuple(ATTRIBUTES):
        hits = {level for level, phrases in ATTRIBUTES[a].phrases.items()
                if any(re.search(rf"(?<!\w){re.escape(p)}(?!\w)", lower) for p in phrases)}
        if len(hits) == 1:
            found[a] = hits.pop()
    return found


def parse_combination(spec: str) -> dict[str, str]:
    """``"length=short,subject=off"`` → {attribute: level}; a bad attribute or level raises ValueError."""
    combo = {}
    for part in (spec or "").split(","):
        a, _, level = part.strip().partition("=")
        if a not in ATTRIBUTES or level not in ATTRIBUTES[a].levels:
            raise ValueError(f"bad attribute level {part!r}: use attribute=level with "
                             + "; ".join(f"{n}: {'|'.join(x.levels)}" for n, x in ATTRIBUTES.items()))
        combo[a] = level
    return combo


def holds(combo: dict[str, str], prompt: PromptLike, response: str, truncated: bool) -> bool:
    """Whether a response measures to every level of ``combo`` (the experiment's held-out combination)."""
    return all(ATTRIBUTES[a].level(prompt, response, truncated) == level for a, level in combo.items())


def make_free_text(arg: str) -> FreeTextRule:
    return FreeTextRule(tuple(a.strip() for a in (arg or "").split(",") if a.strip()))
