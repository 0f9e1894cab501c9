"""Rule and reward feedback providers: category mapping, quantiles, provenance in the database."""

from __future__ import annotations

import sys
import textwrap

import pytest
import torch
from sqlmodel import select
from transformers import LlamaConfig, LlamaForSequenceClassification

from alt_engine.db import Feedback, Generation, Prompt, Round, Task, init_db, session_scope
from alt_engine.feedback import FeedbackItem, label_generations, make_provider
from alt_engine.feedback.reward import ClassifierScorer, RewardProvider, quantile_bins
from alt_engine.feedback.rule import quantile_thresholds
from alt_engine.feedback.scorers import non_offensive
from alt_engine.settings import Settings
from alt_engine.tiny import tiny_tokenizer

CATS = ["Excellent", "Good", "Mediocre", "Bad", "Horrible"]
TASK = Task(name="t", categories=CATS)


def items(responses, prompt_ids=None):
    prompt_ids = prompt_ids or [1] * len(responses)
    return [FeedbackItem(generation_id=i + 1, prompt=f"prompt {p}", response=r, prompt_id=p)
            for i, (r, p) in enumerate(zip(responses, prompt_ids))]


def words(n):
    return " ".join(["word"] * n)


def test_concise_rule_maps_length_buckets_to_ordered_categories():
    provider = make_provider("rule:concise", Settings(), TASK)
    assert provider.name == "rule:concise:10,20,30,40"  # the resolved default thresholds: provenance keeps them
    out = provider(items([words(3), words(10), words(11), words(25), words(39), words(200)]), TASK)
    assert [r.category for r in out] == ["Excellent", "Excellent", "Good", "Mediocre", "Bad", "Horrible"]
    assert out[0].raw == "words=3"


def test_length_rule_reverses_and_custom_thresholds():
    task = Task(name="t3", categories=["long", "medium", "short"])
    provider = make_provider("rule:length:2,5", Settings(), task)
    assert provider.name == "rule:length:2,5"
    out = provider(items(["a b", "a b c d", "a b c d e f g"]), task)
    assert [r.category for r in out] == ["short", "medium", "long"]
    with pytest.raises(ValueError, match="increasing"):
        make_provider("rule:concise:5,2", Settings(), task)


def test_banned_words_and_keyword_rules_match_whole_words():
    banned = make_provider("rule:banned_words:idiot,shut up", Settings(), TASK)
    assert banned.name == "rule:banned_words:idiot,shut up"
    out = banned(items(["You IDIOT.", "an idiotic plan", "please shut up now", "fine"]), TASK)
    assert [r.category for r in out] == ["Horrible", "Excellent", "Horrible", "Excellent"]
    keyword = make_provider("rule:keyword:thanks", Settings(), TASK)
    assert keyword.name == "rule:keyword:thanks"
    assert [r.category for r in keyword(items(["Thanks!", "no"]), TASK)] == ["Excellent", "Horrible"]


@pytest.mark.parametrize("spec, message", [("rule:nope", "unknown rule"), ("bogus:x", "unknown feedback provider"),
                                           ("llm:chatty", "unknown llm mode"), ("reward:", "needs a model path"),
                                           ("reward:no_such_module_xyz:f", "not found"), ("rule:keyword", "needs")])
def test_bad_specs_raise_clear_errors(spec, message):
    with pytest.raises(ValueError, match=message):
        make_provider(spec, Settings(), TASK)


def test_quantile_bins_remainder_goes_to_worst_bin():
    # 7 scores, 3 bins: 2 best, 2 middle, 2 + remainder 1 worst
    assert quantile_bins([7, 6, 5, 4, 3, 2, 1], 3) == [0, 0, 1, 1, 2, 2, 2]
    assert quantile_bins([1, 9, 5, 3], 2) == [1, 0, 0, 1]
    assert quantile_bins([0.2, 0.9], 5) == [4, 0]  # fewer scores than bins: spread from best to worst
    assert quantile_bins([0.5, 0.2, 0.9], 5) == [2, 4, 0]
    assert quantile_bins([0.5], 5) == [4]


def test_reward_quantiles_per_prompt_vs_whole_pool():
    # prompt 1 scores far higher than prompt 2: per prompt each gets its own best, over the pool it does not
    scores = {"a": 10.0, "b": 11.0, "c": 12.0, "d": 0.0, "e": 1.0, "f": 2.0}
    task = Task(name="t3", categories=["best", "mid", "worst"])
    batch = items(list("abcdef"), [1, 1, 1, 2, 2, 2])

    def scorer(prompts, responses):
        assert prompts[0] == "prompt 1"
        return [scores[r] for r in responses]

    per_prompt = RewardProvider("reward:test", scorer, per_prompt=True)(batch, task)
    assert [r.category for r in per_prompt] == ["worst", "mid", "best", "worst", "mid", "best"]
    pool = RewardProvider("reward:test", scorer, per_prompt=False)(batch, task)
    assert [r.category for r in pool] == ["mid", "best", "best", "worst", "worst", "mid"]
    assert [r.score for r in pool] == [scores[c] for c in "abcdef"]


def test_reward_callable_spec_and_label_generations_store_provenance(tmp_path, monkeypatch):
    (tmp_path / "my_scores.py").write_text(textwrap.dedent("""
        def by_length(prompts, responses):
            return [float(len(r)) for r in responses]
    """))
    monkeypatch.syspath_prepend(str(tmp_path))
    sys.modules.pop("my_scores", None)
    db = str(tmp_path / "a.db")
    init_db(db)
    with session_scope(db) as s:
        task = Task(name="t", categories=["long", "short"])
        s.add(task)
        s.flush()
        prompts = [Prompt(task_id=task.id, text="same text") for _ in range(2)]  # repeated text, distinct prompts
        s.add_all(prompts)
        s.flush()
        gens = [Generation(prompt_id=p.id, response="x" * n) for p in prompts for n in (1, 5)]
        s.add_all(gens)
        s.flush()
        ids = [g.id for g in gens]
    provider = make_provider("reward:my_scores:by_length", Settings(), task)
    assert provider.name == "reward:my_scores:by_length"
    report = label_generations(db, provider, task, ids, show_progress=False)
    assert (report.stored, report.skipped, report.already) == (4, [], 0)
    with session_scope(db) as s:
        rows = {f.generation_id: f for f in s.exec(select(Feedback))}
    assert [rows[i].category for i in ids] == ["short", "long", "short", "long"]  # quantiles per prompt id
    assert [rows[i].score for i in ids] == [1.0, 5.0, 1.0, 5.0]
    assert {f.source for f in rows.values()} == {"reward:my_scores:by_length"}
    again = label_generations(db, provider, task, ids, show_progress=False)
    assert (again.stored, again.already) == (0, 4)


def test_reward_from_tiny_sequence_classifier(tmp_path):
    tok = tiny_tokenizer()
    torch.manual_seed(0)
    config = LlamaConfig(vocab_size=len(tok), hidden_size=32, intermediate_size=64, num_hidden_layers=1,
                         num_attention_heads=2, num_key_value_heads=2, num_labels=1, pad_token_id=tok.pad_token_id)
    LlamaForSequenceClassification(config).save_pretrained(tmp_path / "rm")
    tok.save_pretrained(tmp_path / "rm")
    provider = make_provider(f"reward:{tmp_path / 'rm'}", Settings(device="cpu"), TASK)
    responses = ["Hello there.", "The quick brown fox.", "Be concise.", "Harmful!", "0123", "Good Bad", "?"]
    out = provider(items(responses), TASK)
    expected = ClassifierScorer(str(tmp_path / "rm"), batch_size=1)(["prompt 1"] * 7, responses)  # unbatched
    assert [r.score for r in out] == pytest.approx(expected, abs=1e-4)
    assert len(set(expected)) == 7
    best = max(range(7), key=lambda i: expected[i])
    worst = min(range(7), key=lambda i: expected[i])
    assert out[best].category == "Excellent" and out[worst].category == "Horrible"
    # 7 scores, 5 bins: one per bin, the two lowest in the worst bin
    assert sorted(CATS.index(r.category) for r in out) == [0, 1, 2, 3, 4, 4, 4]


def test_llm_specs_build_the_judge():
    categorical = make_provider("llm:categorical", Settings(llm_model="judge-x"), TASK)
    assert categorical.name == "llm:judge-x"  # provenance, no request made yet
    assert make_provider("llm:free_text", Settings(llm_model="judge-y"), TASK).name == "llm:judge-y"


def test_quantile_thresholds_by_hand():
    # 8 counts, 4 categories: cut i = the smallest count with >= i/4 of the counts at or below it
    assert quantile_thresholds([8, 1, 7, 2, 6, 3, 5, 4], 4) == (2, 4, 6)
    assert quantile_thresholds([5, 5, 5, 5, 9], 4) == (5,)  # ties collapse: strictly increasing
    assert quantile_thresholds([1, 9, 9, 9], 3) == (1,)  # a cut at the maximum separates nothing: moved below it
    assert quantile_thresholds([1, 2, 9, 9, 9, 9], 3) == (2,)
    with pytest.raises(ValueError, match="all have 7 words"):
        quantile_thresholds([7, 7, 7], 4)
    with pytest.raises(ValueError, match="got none"):
        quantile_thresholds([], 4)


def _task_with_rounds(db, rounds: dict[int, list[int]]) -> tuple[Task, dict[int, list[int]]]:
    """A 4-category task whose round r has one generation per word count in rounds[r]."""
    init_db(db)
    with session_scope(db) as s:
        task = Task(name="c", categories=["A", "B", "C", "D"])
        s.add(task)
        s.flush()
        prompt = Prompt(task_id=task.id, text="q")
        s.add(prompt)
        s.flush()
        ids = {}
        for number, counts in rounds.items():
            rnd = Round(task_id=task.id, number=number)
            s.add(rnd)
            s.flush()
            gens = [Generation(prompt_id=prompt.id, round_id=rnd.id, response=words(n)) for n in counts]
            s.add_all(gens)
            s.flush()
            ids[number] = [g.id for g in gens]
        s.expunge(task)
    return task, ids


def test_concise_auto_takes_round_one_quantiles_from_the_database(tmp_path):
    db = str(tmp_path / "a.db")
    task, ids = _task_with_rounds(db, {1: [10, 20, 30, 40, 50, 60, 70, 80], 2: [5, 35, 65, 500]})
    provider = make_provider("rule:concise:auto", Settings(db=db), task)
    assert provider.name == "rule:concise:20,40,60"  # round 1 only, resolved before any call
    report = label_generations(db, provider, task, ids[2], show_progress=False)
    assert report.source == "rule:concise:20,40,60"
    with session_scope(db) as s:
        fb = {f.generation_id: f for f in s.exec(select(Feedback))}
    assert [fb[i].category for i in ids[2]] == ["A", "B", "D", "D"]
    assert {f.source for f in fb.values()} == {"rule:concise:20,40,60"}
    longer = make_provider("rule:length:auto", Settings(), task, db=db)  # the db argument wins over settings
    assert longer.name == "rule:length:20,40,60" and longer.bucket(5, 4) == 3


def test_concise_auto_without_round_one_resolves_from_the_items_it_labels(tmp_path):
    db = str(tmp_path / "a.db")
    task, ids = _task_with_rounds(db, {2: [1, 2, 3, 4, 5, 6, 7, 8]})  # no round 1
    provider = make_provider("rule:concise:auto", Settings(db=db), task)
    assert provider.name == "rule:concise:auto" and provider.chunk_size is None  # one call sees every item
    report = label_generations(db, provider, task, ids[2], show_progress=False)
    assert report.stored == 8 and report.source == provider.name == "rule:concise:2,4,6"
    with session_scope(db) as s:
        assert {f.source for f in s.exec(select(Feedback))} == {"rule:concise:2,4,6"}  # never stored as ":auto"


def test_non_offensive_scorer_ranks_insults_below_calm_text():
    calm, rude = "Thank you, have a lovely day.", "Shut up, you stupid idiot."
    scores = non_offensive(["p", "p"], [calm, rude])
    assert scores[0] > 0 > scores[1] and all(abs(x) <= 9.3 for x in scores)  # log-odds, clipped
    provider = make_provider("reward:alt_engine.feedback.scorers:non_offensive", Settings(), TASK)
    assert provider.name == "reward:alt_engine.feedback.scorers:non_offensive"
    out = provider(items([rude, calm]), TASK)
    assert [r.category for r in out] == ["Horrible", "Excellent"]


def test_critique_rule_writes_judgments_and_revisions_offline(tmp_path):
    from alt_engine.feedback.rule import shorten
    from alt_engine.training.cnr import critique_items
    from alt_engine.training.cut import judgment_items

    assert shorten("One two three. Four five six seven. Eight.", 5) == "One two three."
    assert shorten("One two three four five six seven.", 4) == "One two three four."
    db = str(tmp_path / "c.db")
    task, ids = _task_with_rounds(db, {1: [10, 20, 30, 40, 50, 60, 70, 80]})
    with session_scope(db) as s:  # the long answers are sentences, so the revision keeps whole ones
        for g in s.exec(select(Generation)):
            n = len(g.response.split())
            g.response = "Short answer here. " + words(n - 3) + "." if n > 20 else g.response
    provider = make_provider("rule:critique:concise:auto", Settings(db=db), task)
    assert provider.name == "rule:critique:concise:20,40,60"  # the inner rule's resolution is the provenance
    report = label_generations(db, provider, task, ids[1], show_progress=False)
    assert report.stored == 8 and report.source == provider.name
    with session_scope(db) as s:
        rows = list(s.exec(select(Feedback).order_by(Feedback.id)))
    by_kind = {k: {f.generation_id: f for f in rows if f.kind == k} for k in ("category", "judgment", "critique")}
    assert [by_kind["category"][i].category for i in ids[1]] == ["A", "A", "B", "B", "C", "C", "D", "D"]
    worse = ids[1][2:]  # below the best: a judgment and a critique + revision each; the best get none
    assert set(by_kind["judgment"]) == set(by_kind["critique"]) == set(worse)
    assert by_kind["judgment"][worse[0]].text == "Too long (30 words): keep to the point in at most 20 words."
    assert all(by_kind["judgment"][i].score == 0 for i in worse)
    assert all(by_kind["critique"][i].revision == "Short answer here." for i in worse)
    assert {f.source for f in rows} == {"rule:critique:concise:20,40,60"}
    # CUT: negatives with the rule's judgment, positives = the best category; CnR: the critique records
    cut = {it.generation_id: it for it in judgment_items(db, task, round_ids=None)}
    assert {i for i, it in cut.items() if it.negative} == set(worse)
    assert cut[worse[0]].feedback.startswith("Too long") and not cut[ids[1][0]].negative
    cnr = critique_items(db, task)
    assert sorted(it.generation_id for it in cnr) == sorted(worse) and cnr[0].revision == "Short answer here."
    # a person's judgment outranks the rule's
    with session_scope(db) as s:
        s.add(Feedback(generation_id=worse[0], source="human:ann", kind="judgment", text="Rambles."))
    assert {it.generation_id: it for it in judgment_items(db, task)}[worse[0]].feedback == "Rambles."


def test_critique_rule_on_word_lists():
    banned = make_provider("rule:critique:banned_words:idiot", Settings(), TASK)
    (bad, good) = banned(items(["You are an idiot , really.", "Fine."]), TASK)
    assert bad.category == "Horrible" and good.category == "Excellent" and not good.extra
    judgment, critique = bad.extra
    assert judgment.kind == "judgment" and judgment.text == "It uses the word 'idiot'."
    assert critique.kind == "critique" and critique.revision == "You are an, really."
    keyword = make_provider("rule:critique:keyword:thanks", Settings(), TASK)
    (missing,) = keyword(items(["no"]), TASK)
    assert [x.kind for x in missing.extra] == ["judgment"]  # nothing a rule can mend: no revision
    with pytest.raises(ValueError, match="wraps another rule"):
        make_provider("rule:critique:critique:concise", Settings(), TASK)
