"""The LLM judge through the real openai client against a scripted OpenAI-compatible server.

Each generation's text carries its scenario marker (see tests/openai_stub_server.py).
"""

from __future__ import annotations

import pytest
from openai_stub_server import StubServer
from sqlmodel import select

from alt_engine.db import Feedback, Generation, JudgeCall, Prompt, session_scope
from alt_engine.feedback import label_generations, make_provider
from alt_engine.feedback.llm import (
    ParseError,
    exemplar_pool,
    make_llm_provider,
    normalise,
    parse_free_text,
    parse_label,
)
from alt_engine.settings import Settings
from alt_engine.tasks import BUILTIN_TASKS, get_or_create_task

CATS = ["Excellent", "Good", "Mediocre", "Bad", "Horrible"]


@pytest.fixture
def stub():
    with StubServer(model="stub-judge") as server:
        yield server


def settings_for(db, stub, **kw) -> Settings:
    base = dict(db=db, llm_base_url=stub.base_url, llm_model="stub-judge", llm_timeout=10.0, llm_max_retries=2,
                llm_concurrency=4)
    return Settings(**{**base, **kw})


def make_round(db, responses, task_name="default"):
    """A task, one prompt and one generation per response; returns (task, generation ids)."""
    with session_scope(db) as s:
        task = get_or_create_task(s, task_name)
        prompt = Prompt(task_id=task.id, text="Say something useful.")
        s.add(prompt)
        s.flush()
        gens = [Generation(prompt_id=prompt.id, response=r) for r in responses]
        s.add_all(gens)
        s.flush()
        return task, [g.id for g in gens]


def feedback_rows(db) -> dict[int, Feedback]:
    with session_scope(db) as s:
        return {f.generation_id: f for f in s.exec(select(Feedback))}


def judge(db, settings, task, gen_ids, mode="categorical"):
    provider = make_llm_provider(mode, settings, task, show_progress=False)
    report = label_generations(db, provider, task, gen_ids, show_progress=False)
    return provider, report


# ----------------------------------------------------------------------------- parsing


@pytest.mark.parametrize("reply,label", [
    ("Good", "Good"), ("good", "Good"), ("  Good.\n", "Good"), ('"Excellent"', "Excellent"), ("**Bad**", "Bad"),
    ("Label: Mediocre", "Mediocre"), ("label - horrible!", "Horrible"), ("Category: 'Good'.", "Good"),
])
def test_parse_label_accepts_decorated_labels(reply, label):
    assert parse_label(reply, CATS) == label


@pytest.mark.parametrize("reply", ["Superb", "Good, but wordy", "Good\nBad", "I think it is Good", "", "Goodish"])
def test_parse_label_refuses_anything_else(reply):
    with pytest.raises(ParseError):
        parse_label(reply, CATS)


def test_normalise_is_case_space_and_quote_insensitive():
    assert normalise('  "Harmless  and VERY helpful."  ') == "harmless and very helpful"


def test_parse_free_text_is_strict():
    assert parse_free_text("Analysis: fine.\nFeedback: Clear and correct, a bit long.\nScore: 2") == (
        "fine.", "Clear and correct, a bit long.", 2)
    assert parse_free_text("**Analysis:** ok\n**Feedback:** Accurate but terse.\n**Score:** 3/3")[2] == 3
    bad = ["Feedback: good\nScore: 2",  # no analysis
           "Analysis: x\nFeedback: one two three four five six seven eight nine ten eleven\nScore: 1",  # > 10 words
           "Analysis: x\nFeedback: Good. But long.\nScore: 1",  # two sentences
           "Analysis: x\nFeedback: Good answer.\nScore: 4",  # out of range
           "Analysis: x\nFeedback: Good answer.\nScore: 2\nExtra: y",  # trailing part
           "Analysis: x\nScore: 2\nFeedback: Good answer."]  # wrong order
    for reply in bad:
        with pytest.raises(ParseError):
            parse_free_text(reply)


# ----------------------------------------------------------------------------- categorical


def test_valid_labels_are_stored_with_provenance(db, stub):
    task, gens = make_round(db, ["[[label:Good]]", '[[label:Label: "excellent."]]', "[[label:**Bad**]]"])
    provider, report = judge(db, settings_for(db, stub), task, gens)
    assert provider.name == "llm:stub-judge"
    assert report.stored == 3 and not report.skipped
    rows = feedback_rows(db)
    assert [rows[g].category for g in gens] == ["Good", "Excellent", "Bad"]
    assert {r.source for r in rows.values()} == {"llm:stub-judge"}
    assert rows[gens[1]].raw == 'Label: "excellent."'  # the raw reply is kept for audit
    with session_scope(db) as s:
        calls = list(s.exec(select(JudgeCall)))
    assert len(calls) == 3 and all(c.ok and c.reply and c.request for c in calls)
    assert stub.chat_calls == 3
    sent = stub.requests[0]
    assert sent["temperature"] == 0 and sent["model"] == "stub-judge"
    assert "Excellent" in sent["messages"][0]["content"]  # the allowed labels are in the prompt


def test_off_label_replies_are_reasked_then_never_stored(db, stub):
    task, gens = make_round(db, ["[[reply:Superb]]", "[[reply:Good, but wordy]]", "[[bad-then:1:Mediocre]]"])
    provider, report = judge(db, settings_for(db, stub), task, gens)
    rows = feedback_rows(db)
    assert set(rows) == {gens[2]} and rows[gens[2]].category == "Mediocre"  # fixed by the re-ask
    reasons = dict(report.skipped)
    assert "not one of the allowed labels" in reasons[gens[0]] and "after 3 tries" in reasons[gens[0]]
    assert stub.chat_calls == 3 + 3 + 2  # two re-asks each for the off-label ones, one for the third
    assert provider.stats.reasks == 5
    reask = next(r for r in stub.requests if len(r["messages"]) > 10 and "Superb" in str(r["messages"][-1]))
    assert "is not one of the allowed labels" in reask["messages"][-1]["content"]
    with session_scope(db) as s:
        audit = [c for c in s.exec(select(JudgeCall)) if c.generation_id == gens[0]]
    assert [c.reply for c in audit] == ["Superb"] * 3 and not any(c.ok for c in audit)


def test_client_retries_429_500_and_timeouts(db, stub):
    task, gens = make_round(db, ["[[429:2:Good]]", "[[500:1:Bad]]", "[[slow:1:Mediocre]]"])
    provider, report = judge(db, settings_for(db, stub, llm_timeout=1.5, llm_max_retries=2), task, gens)
    assert report.stored == 3
    assert [feedback_rows(db)[g].category for g in gens] == ["Good", "Bad", "Mediocre"]
    assert stub.chat_calls == 3 + 2 + 1 + 1  # every retry really reached the server
    assert provider.stats.http_retries == 4 and provider.stats.requests == 7


def test_retries_run_out_gives_a_reason_and_is_not_cached(db, stub):
    task, gens = make_round(db, ["[[500:10:Good]]", "[[label:Good]]"])
    settings = settings_for(db, stub, llm_max_retries=1)
    _, report = judge(db, settings, task, gens)
    assert report.stored == 1 and "request failed" in dict(report.skipped)[gens[0]]
    assert stub.chat_calls == 3
    with pytest.raises(RuntimeError, match="all 1 requests failed"):  # a rerun asks the failed one again ...
        judge(db, settings, task, gens)
    assert stub.chat_calls == 5  # (... and only that one): every request of this run failed, so it is an error


def test_a_run_where_every_request_failed_is_an_error(db, stub):
    task, gens = make_round(db, ["[[500:10:Good]] a", "[[500:10:Good]] b"])
    with pytest.raises(RuntimeError, match="all 2 requests failed.*500"):
        judge(db, settings_for(db, stub, llm_max_retries=0), task, gens)
    with session_scope(db) as s:  # the failures are on record
        assert len(list(s.exec(select(JudgeCall)))) == 2 and not list(s.exec(select(Feedback)))


def test_unreachable_endpoint_exits_non_zero_with_the_reason(db, capsys):
    import socket

    from alt_engine.db import Round
    from app.cli import main

    with socket.socket() as sock:  # a port nobody listens on
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    task, gens = make_round(db, [f"answer {i}" for i in range(3)])
    with session_scope(db) as s:
        rnd = Round(task_id=task.id, number=1, status="feedback")
        s.add(rnd)
        s.flush()
        for g in s.exec(select(Generation)):
            g.round_id = rnd.id
    env = {"ALT_LLM_BASE_URL": f"http://127.0.0.1:{port}/v1", "ALT_LLM_MAX_RETRIES": "0", "ALT_LLM_TIMEOUT": "5"}
    with pytest.MonkeyPatch.context() as mp:
        for k, v in env.items():
            mp.setenv(k, v)
        code = main(["feedback", "--db", db, "--task", task.name, "--provider", "llm:categorical"])
    err = capsys.readouterr().err
    assert code != 0 and "all 3 requests failed" in err and "APIConnectionError" in err, err


def test_a_huge_reply_is_cut_and_the_cut_recorded(db, stub):
    huge = "Good " + "blah " * 100_000  # ~0.5 MB, re-asked twice
    task, gens = make_round(db, [f"[[reply:{huge}]]"])
    _, report = judge(db, settings_for(db, stub), task, gens)
    assert report.stored == 0 and stub.chat_calls == 3
    assert all(r.get("max_tokens") == 64 for r in stub.requests)  # asked short at source too
    with session_scope(db) as s:
        calls = list(s.exec(select(JudgeCall)))
    assert len(calls) == 3
    assert all(len(c.reply) <= 4000 and "reply truncated: 500005 characters" in c.error for c in calls)
    replies = sum(len(c.reply) for c in calls) + sum(len(m["content"]) for c in calls for m in c.request
                                                     if m["role"] == "assistant")
    assert replies <= 6 * 4000 + 100  # was 3 × 0.5 MB of replies plus the same again inside the re-ask requests


def test_budget_stops_the_run_cleanly(db, stub, caplog):
    task, gens = make_round(db, [f"[[label:Good]] {i}" for i in range(6)])
    provider, report = judge(db, settings_for(db, stub, llm_max_requests=3, llm_concurrency=1), task, gens)
    assert stub.chat_calls == 3 and report.stored == 3
    assert len(report.skipped) == 3 and all("budget exhausted" in r for _, r in report.skipped)
    assert provider.stats.budget_exhausted and "BUDGET EXHAUSTED" in provider.stats.message
    assert "BUDGET EXHAUSTED" in caplog.text
    assert len(feedback_rows(db)) == 3  # what was judged is kept


def test_token_budget_counts_usage(db, stub):
    task, gens = make_round(db, [f"[[label:Bad]] {i}" for i in range(5)])  # the stub reports 55 tokens a call
    provider, report = judge(db, settings_for(db, stub, llm_max_tokens=100, llm_concurrency=1), task, gens)
    assert stub.chat_calls == 2 and report.stored == 2 and provider.stats.tokens == 110


def test_rerun_is_served_from_the_cache_with_zero_http_calls(db, stub):
    task, gens = make_round(db, ["[[label:Good]]", "[[reply:Superb]]", "[[label:Horrible]]"])
    settings = settings_for(db, stub)
    judge(db, settings, task, gens)
    calls = stub.chat_calls
    with session_scope(db) as s:  # forget the stored labels, keep the judge's cache
        for f in s.exec(select(Feedback)):
            s.delete(f)
    provider, report = judge(db, settings, task, gens)
    assert stub.chat_calls == calls  # zero HTTP calls
    assert provider.stats.cache_hits == 3 and report.stored == 2
    assert sorted(f.category for f in feedback_rows(db).values()) == ["Good", "Horrible"]
    _, more = make_round(db, ["[[label:Good]] new text"])  # a new generation is a new key
    judge(db, settings, task, more)
    assert stub.chat_calls == calls + 1


def test_unknown_model_or_endpoint_aborts_with_a_clear_error(db, stub):
    task, gens = make_round(db, ["[[label:Good]]"] * 3)
    settings = settings_for(db, stub, llm_base_url=stub.base_url + "/wrong")
    provider = make_provider("llm:categorical", settings, task)
    with pytest.raises(RuntimeError, match="ALT_LLM_BASE_URL"):
        label_generations(db, provider, task, gens, show_progress=False)
    assert feedback_rows(db) == {}


def test_builtin_tasks_get_few_shot_examples(db, stub):
    for name in ("dialogue", "toxicity", "summarization"):
        task, gens = make_round(db, [f"[[label:{BUILTIN_TASKS[name]['categories'][0]}]]"], task_name=name)
        judge(db, settings_for(db, stub), task, gens)
        messages = stub.requests[-1]["messages"]
        shots = [m for m in messages[1:-1] if m["role"] == "assistant"]
        assert len(shots) >= 3 and all(m["content"] in task.categories for m in shots), name


# ----------------------------------------------------------------------------- free text


def test_free_text_feedback_is_parsed_strictly(db, stub):
    task, gens = make_round(db, [
        "[[freetext:3:Clear and correct, slightly long.]]",
        "[[reply:Feedback: good]]",  # malformed every time
        "[[freetext:1:This feedback sentence is far too long to be accepted by the judge parser]]",
        "[[bad-then:1:Analysis: fine\\nFeedback: Helpful but misses one step.\\nScore: 2]]",
    ])
    provider, report = judge(db, settings_for(db, stub), task, gens, mode="free_text")
    rows = feedback_rows(db)
    assert set(rows) == {gens[0], gens[3]}
    first = rows[gens[0]]
    assert (first.kind, first.text, first.score) == ("text", "Clear and correct, slightly long.", 3.0)
    assert rows[gens[3]].text == "Helpful but misses one step." and rows[gens[3]].score == 2.0
    assert rows[gens[0]].raw.startswith("Analysis:")
    reasons = dict(report.skipped)
    assert "three labelled lines" in reasons[gens[1]] and "words" in reasons[gens[2]]
    assert stub.chat_calls == 1 + 3 + 3 + 2
    assert "Feedback:" in stub.requests[0]["messages"][0]["content"]


# ----------------------------------------------------------------------------- judgments (CUT)


def test_judgment_mode_writes_judgments_cut_trains_on(db, stub):
    from alt_engine.feedback.llm import parse_judgment
    from alt_engine.training.cut import judgment_items

    assert parse_judgment("**Judgment:** It says six legs.\nVerdict: Bad.") == ("It says six legs.", "bad")
    for bad in ("Verdict: bad", "Judgment: x\nVerdict: maybe", "Judgment: " + "w " * 61 + "\nVerdict: bad"):
        with pytest.raises(ParseError):
            parse_judgment(bad)
    task, gens = make_round(db, [
        "[[reply:Judgment: It claims spiders have six legs; they have eight.\\nVerdict: bad]]",
        "[[reply:Judgment: Correct and direct.\\nVerdict: good]]",
        "[[reply:It is wrong.]]",  # malformed every time
        "[[bad-then:1:Judgment: The second sentence rambles about trees.\\nVerdict: bad]]",
    ])
    with session_scope(db) as s:  # a round, so CUT finds the generations
        from alt_engine.db import Round

        rnd = Round(task_id=task.id, number=1)
        s.add(rnd)
        s.flush()
        for g in s.exec(select(Generation).where(Generation.id.in_(gens))):
            g.round_id = rnd.id
    provider, report = judge(db, settings_for(db, stub), task, gens, mode="judgment")
    assert provider.name == "llm:stub-judge" and provider.kind == "judgment"
    rows = feedback_rows(db)
    assert set(rows) == {gens[0], gens[1], gens[3]}
    first = rows[gens[0]]  # the judgment field, as an annotator's judgment
    assert (first.kind, first.text, first.score) == ("judgment", "It claims spiders have six legs; they have eight.", 0)
    assert rows[gens[1]].score == 1.0 and rows[gens[3]].text == "The second sentence rambles about trees."
    assert "two labelled lines" in dict(report.skipped)[gens[2]]
    assert stub.chat_calls == 1 + 1 + 3 + 2  # re-asked as the other modes are
    system = stub.requests[0]["messages"][0]["content"]
    assert "Judgment:" in system and "Verdict:" in system and stub.requests[0]["temperature"] == 0
    assert "spiders have six legs; they have eight" in str(stub.requests[0]["messages"])  # few-shot example
    items = {it.generation_id: it for it in judgment_items(db, task)}
    assert items[gens[0]].negative and items[gens[0]].feedback.startswith("It claims spiders")
    assert not items[gens[1]].negative and gens[2] not in items  # a "good" verdict: a positive; none: left out
    again, _ = judge(db, settings_for(db, stub), task, [gens[0]], mode="judgment")
    assert again.stats.requests == 0  # already judged by this source and kind: nothing asked


def test_exemplar_pool_returns_best_scored_texts_of_the_task(db):
    task, gens = make_round(db, ["a", "b", "c", "d", "e"])
    other, other_gens = make_round(db, ["x"], task_name="dialogue")
    with session_scope(db) as s:
        for gid, text, score in [(gens[0], "Okay but vague.", 1), (gens[1], "Clear, correct and concise.", 3),
                                 (gens[2], "Accurate, a bit long.", 2), (gens[3], "Clear, correct and concise.", 3),
                                 (gens[4], "Wrong.", 0), (other_gens[0], "Other task, perfect.", 3)]:
            s.add(Feedback(generation_id=gid, source="llm:x", kind="text", text=text, score=score))
        s.add(Feedback(generation_id=gens[4], source="rule:x", kind="category", category="Good", score=5))
    assert exemplar_pool(db, task.id, top=2) == ["Clear, correct and concise.", "Accurate, a bit long."]
    assert exemplar_pool(db, task.id, top=10, min_score=2) == ["Clear, correct and concise.", "Accurate, a bit long."]
    assert exemplar_pool(db, other.id) == ["Other task, perfect."]


def test_identical_generations_are_asked_once(db, stub):
    task, gens = make_round(db, ["[[label:Good]] same"] * 3 + ["[[label:Bad]]"])
    _, report = judge(db, settings_for(db, stub), task, gens)
    assert stub.chat_calls == 2 and report.stored == 4
    assert [feedback_rows(db)[g].category for g in gens] == ["Good", "Good", "Good", "Bad"]


def test_a_malformed_server_response_is_a_reason_not_a_crash(db, stub):
    task, gens = make_round(db, ["[[label:Good]]"])
    stub.completion = lambda body, reply: {"id": "x", "object": "chat.completion", "created": 0, "model": "m",
                                           "choices": []}  # no choices at all
    with pytest.raises(RuntimeError, match="request failed|requests failed"):  # the only request failed
        judge(db, settings_for(db, stub), task, gens)
