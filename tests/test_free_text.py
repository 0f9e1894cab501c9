"""Free-text feedback (issue 20): the ``rule:free_text`` stand-in, ALT-LMU's pool and exemplars, the held-out
combination, SFT on score 3, and a tiny model that free text steers on two attributes independently."""

from __future__ import annotations

import random
from collections import Counter

import pytest

from alt_engine import conditioning
from alt_engine.db import Feedback, Generation, Prompt, Round, Task, init_db, session_scope
from alt_engine.evaluation import exemplar_feedback
from alt_engine.feedback import label_generations, make_provider
from alt_engine.feedback.base import FeedbackItem
from alt_engine.feedback.free_text import ATTRIBUTES, FreeTextRule, parse_levels
from alt_engine.pool import build_pool, pool_summary
from alt_engine.settings import Settings
from alt_engine.steering import eval_pairs, texts

SUBJECTS = ["apples", "rivers", "clocks", "stars", "horses", "candles", "bridges", "forests"]
FILLER = "well then so it is quite a thing you know and more of that kind here".split()
FREE = Task(name="free", categories=[])


def response(rng: random.Random, subject: str, words: int, on: bool, as_list: bool) -> str:
    """A response of about ``words`` words that names ``subject`` first (on) or never, as prose or a list."""
    body = [rng.choice(FILLER) for _ in range(max(words - 1, 1))]
    first = [subject] if on else []
    if as_list:
        lines = [" ".join(first + body[:3]) + "."] + [f"- {' '.join(body[i:i + 4])}" for i in range(3, len(body), 4)]
        return "\n".join(lines)
    return " ".join(first + body) + "."


def test_the_rules_sentences_parse_back_to_the_levels_they_describe():
    """Its own inverse over many samples: every attribute's level is read back from the sentence, in many
    phrasings, and the score is 3 exactly when every attribute is at its best level."""
    rule = make_provider("rule:free_text:length,subject,format", Settings(), FREE)
    assert rule.name == "rule:free_text:length,subject,format"
    rng = random.Random(0)
    items, levels = [], []
    for i in range(600):
        subject = rng.choice(SUBJECTS)
        words, truncated = rng.choice([(5, False), (60, False), (120, False), (30, True)])
        r = response(rng, subject, words, rng.random() < 0.5, rng.random() < 0.3)
        items.append(FeedbackItem(i, f"Tell me about {subject}.", r, truncated=truncated))
        levels.append(rule.measure(items[-1].prompt, r, truncated))
    results = rule(items, FREE)
    seen: dict[tuple, set[str]] = {}
    for want, r in zip(levels, results):
        assert r.ok and r.kind == "text" and r.category is None and 0 <= r.score <= 3
        assert parse_levels(r.text) == want, r.text
        assert (r.score == 3) == (want == rule.best())
        seen.setdefault(tuple(want.values()), set()).add(r.text)
    assert len(seen) == 3 * 2 * 2  # every combination occurred
    counts = Counter(tuple(lv.values()) for lv in levels)
    assert all(len(seen[k]) >= 15 for k, c in counts.items() if c >= 30)  # many phrasings per combination
    assert len({r.text for r in results}) > 300  # not one string per level
    assert all(lv["length"] == "long" for it, lv in zip(items, levels) if it.truncated)  # cut off = long
    # paraphrases never collide across levels: any phrase parses to its own level only
    for a in ATTRIBUTES.values():
        for level, phrases in a.phrases.items():
            for p in phrases:
                assert parse_levels(p.capitalize() + ".", (a.name,)) == {a.name: level}
    assert parse_levels("Nice answer.") == {}  # names nothing: nothing read


def test_bad_specs_are_refused_and_categories_get_the_same_information():
    for spec in ("rule:free_text", "rule:free_text:length", "rule:free_text:length,length", "rule:free_text:size,x"):
        with pytest.raises(ValueError, match="two or more distinct attributes"):
            make_provider(spec, Settings(), FREE)
    rule = make_provider("rule:free_text:length,subject", Settings(), FREE)
    cats = Task(name="c", categories=["Excellent", "Good", "Mediocre", "Bad"])
    rng = random.Random(1)
    items = [FeedbackItem(i, "Tell me about stars.", response(rng, "stars", w, on, False))
             for i, (w, on) in enumerate([(5, True), (5, False), (120, True), (120, False)])]
    got = [(r.category, r.score) for r in rule(items, cats)]
    assert got == [("Excellent", 3.0), ("Good", 2.0), ("Mediocre", 1.0), ("Bad", 0.0)]


class FreeData:
    """A free-text task in a database, with one round whose generations the rule labels."""

    def __init__(self, db: str, n_prompts: int = 6, n: int = 8, seed: int = 0):
        self.db = db
        init_db(db)
        rng = random.Random(seed)
        with session_scope(db) as s:
            task = Task(name="free", categories=[])
            s.add(task)
            s.flush()
            rnd = Round(task_id=task.id, number=1)
            s.add(rnd)
            s.flush()
            self.task_id, self.round_id, gens = task.id, rnd.id, []
            for i in range(n_prompts):
                subject = SUBJECTS[i % len(SUBJECTS)]
                p = Prompt(task_id=task.id, text=f"Tell me about {subject}.")
                s.add(p)
                s.flush()
                for j in range(n):
                    words = [5, 60, 120, 5][j % 4]
                    g = Generation(prompt_id=p.id, round_id=rnd.id, truncated=False,
                                   response=response(rng, subject, words, j % 3 != 0, False))
                    s.add(g)
                    gens.append(g)
            s.flush()
            self.gen_ids = [g.id for g in gens]
            s.expunge(task)
            self.task = task


def test_lmu_pool_is_balanced_over_scores_and_exemplars_are_score_3_texts_of_rounds(tmp_path):
    data = FreeData(str(tmp_path / "lmu.db"))
    rule = FreeTextRule(("length", "subject"))
    report = label_generations(data.db, rule, data.task, data.gen_ids, show_progress=False)
    assert report.stored == len(data.gen_ids) and report.source == "rule:free_text:length,subject"
    with session_scope(data.db) as s:
        rows = s.exec(Feedback.__table__.select()).all()
        assert {(r.kind, r.source) for r in rows} == {("text", "rule:free_text:length,subject")}
        scores = Counter(r.score for r in rows)
        assert set(scores) == {0.0, 1.0, 2.0, 3.0}  # every score occurs, unevenly
        score3 = {r.text for r in rows if r.score == 3}
        # an evaluation sample (no round) scored 3 is never an exemplar; nor is an empty or unparsable text
        p = s.exec(Prompt.__table__.select()).first()
        ev = Generation(prompt_id=p.id, round_id=None, response="stars.", sampling_params={"purpose": "eval"})
        s.add(ev)
        s.flush()
        s.add(Feedback(generation_id=ev.id, source=rule.name, kind="text", text="EVAL ONLY", score=3.0))
        s.add(Feedback(generation_id=data.gen_ids[0], source="llm:judge", kind="text", text="   ", score=3.0))

    pool = build_pool(data.db, data.task_id, k_per_category=2)
    first_prompt = min(it.prompt_id for it in pool)
    per_prompt = Counter(it.prompt_id for it in pool)
    # k × 4 scores per prompt (the first prompt lost a generation: its newest feedback is an empty text)
    assert per_prompt == {p: 7 if p == first_prompt else 8 for p in per_prompt}
    assert data.gen_ids[0] not in {it.generation_id for it in pool}
    for prompt_id in per_prompt:  # each prompt has scores {3: 3, 2: 3, 1: 1, 0: 1}: the draw takes ≤ 2 of each first
        draw = [it.score for it in pool if it.prompt_id == prompt_id]
        assert Counter(draw[:6]) == {3.0: 2, 2.0: 2, 1.0: 1, 0.0: 1}
    assert set(pool_summary(pool)["per_feedback"]) == {"score 0", "score 1", "score 2", "score 3"}  # not 47 texts

    exemplars = exemplar_feedback(data.db, data.task)
    assert exemplars and set(exemplars) <= score3 and "EVAL ONLY" not in exemplars
    assert all(parse_levels(t) == {"length": "short", "subject": "on"} for t in exemplars)
    assert len(set(exemplars)) > 3  # several paraphrases to draw from
    # the console's read-only view and the playground's presets show that pool
    from alt_engine.playground import feedback_choices
    from alt_engine.reports import exemplar_rows

    assert [r["exemplar"] for r in exemplar_rows(data.db, "free")] == exemplars
    assert feedback_choices(data.db, "free") == [*exemplars[:8], "none"]


def test_the_held_out_combination_stays_out_of_the_pool_and_sft_takes_score_3(tmp_path):
    from alt_engine.rounds import RoundConfig
    from alt_engine.training.objectives import get

    data = FreeData(str(tmp_path / "hold.db"))
    rule = FreeTextRule(("length", "subject"))
    label_generations(data.db, rule, data.task, data.gen_ids, show_progress=False)
    everything = build_pool(data.db, data.task_id, k_per_category=100)
    held = [it for it in everything if parse_levels(it.feedback) == {"length": "short", "subject": "off"}]
    assert held
    kept = build_pool(data.db, data.task_id, k_per_category=100, holdout="length=short,subject=off")
    assert len(kept) == len(everything) - len(held)
    assert not any(parse_levels(it.feedback) == {"length": "short", "subject": "off"} for it in kept)
    with pytest.raises(ValueError, match="bad attribute level"):
        RoundConfig(holdout="length=tiny")
    sft = get("sft").items(data.db, data.task, k_per_category=2)
    assert sft and all(it.score == 3 for it in sft)


def test_steering_texts_differ_in_one_attribute_and_the_holdout_in_both():
    rule = FreeTextRule(("length", "subject"))
    named = texts(rule, "length=short,subject=off")
    assert named["best"] == {"length": "short", "subject": "on"}
    assert named["flip:length"] == {"length": "long", "subject": "on"}
    assert named["flip:subject"] == {"length": "short", "subject": "off"}
    assert named["complement"] == {"length": "long", "subject": "on"}
    # best vs long (the rounds' own evaluation), then the held-out text: its complement is "long" already
    assert eval_pairs(rule, "length=short,subject=off") == [
        [rule.describe(named["best"]), rule.describe(named["flip:length"])], [rule.describe(named["holdout"])]]
    assert all(parse_levels(t) == named[k] for k, t in {k: rule.describe(v) for k, v in named.items()}.items())


# --------------------------------------------------------------------------- a tiny model learns both attributes

PROMPTS = [f"Tell me about apples ({i})." for i in range(8)]
COMBOS = [{"length": a, "format": b} for a in ("short", "long") for b in ("prose", "list")]


def tiny_response(levels: dict) -> tuple[str, bool]:
    """short: 3 words and EOS; long: 20 words, cut off (no EOS, as the default model's long answers are); prose or
    a list of two-word items."""
    words = (["well"] + FILLER[:2]) if levels["length"] == "short" else (FILLER + FILLER)[:20]
    text = " ".join(words) if levels["format"] == "prose" else \
        "\n".join("- " + " ".join(words[i:i + 2]) for i in range(0, len(words), 2))
    return text, levels["length"] == "long"


@pytest.mark.slow
def test_tiny_model_free_text_steers_length_and_format_independently(tmp_path):
    """Trained on the rule's paraphrased sentences, conditioned on fresh paraphrases: the length a text names
    moves the length whatever format it names, and the format moves the format whatever length it names."""
    from alt_engine.modeling import load_model, load_tokenizer
    from alt_engine.pool import PoolItem
    from alt_engine.sampling import SamplingParams, TransformersBackend
    from alt_engine.tiny import tiny_model, tiny_tokenizer
    from alt_engine.training.config import AltTrainConfig
    from alt_engine.training.run import train

    rule, items = FreeTextRule(("length", "format")), []
    for prompt_id, prompt in enumerate(PROMPTS):
        for levels in COMBOS:
            for _ in range(2):
                text, truncated = tiny_response(levels)
                assert rule.measure(prompt, text, truncated) == levels
                n = len(items)  # the feedback: one of the rule's paraphrases, as a round stores it
                feedback = rule([FeedbackItem(n, prompt, text, truncated=truncated)], FREE)[0].text
                items.append(PoolItem(n, n, prompt_id, prompt, feedback, text, truncated))
    assert len({it.feedback for it in items}) > 40
    tokenizer = tiny_tokenizer(PROMPTS + FILLER + [it.feedback for it in items], vocab_size=1000)
    base, out = str(tmp_path / "base"), str(tmp_path / "out")
    tiny_model(tokenizer).save_pretrained(base)
    tokenizer.save_pretrained(base)
    fmt = conditioning.Format("system")

    def shares(path: str) -> dict[str, dict[str, float]]:
        """Per combination named, the share of samples measuring "short" and the share measuring "list"."""
        tok = load_tokenizer(path)
        backend = TransformersBackend(load_model(path, device="cpu"), tok)
        out_ = {}
        for levels in COMBOS:  # a fresh paraphrase per prompt, not the training strings
            texts_ = [rule.describe(levels, random.Random(f"probe:{i}")) for i in range(len(PROMPTS))]
            inputs = [conditioning.build_input(tok, p, t, fmt).input_ids for p, t in zip(PROMPTS, texts_)]
            samples = backend.generate(inputs, SamplingParams(n=2, temperature=1.0, top_p=0.9, max_new_tokens=16,
                                                              seed=1))
            got = [rule.measure(p, s.text, s.truncated) for p, row in zip(PROMPTS, samples) for s in row]
            out_["+".join(levels.values())] = {"short": sum(g["length"] == "short" for g in got) / len(got),
                                               "list": sum(g["format"] == "list" for g in got) / len(got)}
        return out_

    def gaps(s: dict) -> list[float]:
        """The length gap at each format and the format gap at each length."""
        return [s[f"short+{f}"]["short"] - s[f"long+{f}"]["short"] for f in ("prose", "list")] + \
            [s[f"{n}+list"]["list"] - s[f"{n}+prose"]["list"] for n in ("short", "long")]

    before = gaps(shares(base))
    assert max(abs(g) for g in before) < 0.3, before  # untrained: the text makes no difference
    train(base, items, AltTrainConfig(alpha=0.0, learning_rate=1e-2, epochs=20, batch_size=8, save_steps=100000,
                                      report_to="none", logging_steps=20), out, fmt)
    after = gaps(shares(out))
    assert min(after) >= 0.4, after  # each attribute follows its text, at either level of the other
