"""The app's own OpenAI-compatible endpoint and the shared ModelServer, driven by the real openai client.

A live uvicorn server on 127.0.0.1 serves tiny models: an untrained one (replies
are junk, so the judge must refuse them) and one trained here in a few seconds to
answer a label ("Good" / "Bad") to the judge's prompt, so valid labels flow end to end.
"""

from __future__ import annotations

import contextlib
import random
import socket
import threading
import time
from concurrent.futures import ThreadPoolExecutor

import httpx
import openai
import pytest
import torch
import uvicorn
from fastapi import FastAPI
from sqlmodel import select

from alt_engine.conditioning import build_input
from alt_engine.db import Feedback, Generation, JudgeCall, Prompt, Task, session_scope
from alt_engine.feedback import label_generations
from alt_engine.feedback.judge_prompts import categorical_messages
from alt_engine.feedback.llm import make_llm_provider
from alt_engine.sampling import TransformersBackend
from alt_engine.serving import ModelServer
from alt_engine.settings import Settings
from alt_engine.tasks import get_or_create_task
from alt_engine.tiny import tiny_model, tiny_tokenizer
from app.openai_api import add_openai_routes

KEY = "sk-test"
STEPS = 30
# a task without few-shot examples keeps the judge prompt short (~150 tiny-tokenizer tokens), so training is fast
TINY_TASK = dict(name="tiny", categories=["Good", "Bad"], description="Test task.", guidelines="Be fair.")
TINY = Task(**TINY_TASK)


def judge_case(i: int) -> tuple[str, str]:
    return f"Question {i}?", f"{'Nice fine answer' if i % 2 else 'Awful wrong answer'} number {i}"


@pytest.fixture(scope="module", autouse=True)
def one_torch_thread():
    """Tiny matrices: one thread is many times faster than two when other work shares the cores."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="module")
def tokenizer():
    return tiny_tokenizer()


@pytest.fixture(scope="module")
def label_model(tokenizer):
    """A tiny model trained (plain AdamW, 30 steps of 4) to answer the judge prompt with a label and EOS."""
    model = tiny_model(tokenizer, seed=0).train()
    data = []
    for i in range(16):
        prompt, response = judge_case(i)
        ids = build_input(tokenizer, categorical_messages(TINY, prompt, response)).input_ids
        label = tokenizer("Good" if i % 2 else "Bad", add_special_tokens=False)["input_ids"]
        data.append((ids, label + [tokenizer.eos_token_id]))
    opt = torch.optim.AdamW(model.parameters(), lr=3e-3)
    for step in range(STEPS):
        batch = random.Random(step).sample(data, 4)
        width = max(len(a) + len(b) for a, b in batch)
        ids = torch.full((4, width), tokenizer.pad_token_id)
        mask, labels = torch.zeros((4, width), dtype=torch.long), torch.full((4, width), -100)
        for row, (a, b) in enumerate(batch):
            ids[row, :len(a) + len(b)] = torch.tensor(a + b)
            mask[row, :len(a) + len(b)] = 1
            labels[row, len(a):len(a) + len(b)] = torch.tensor(b)
        model(input_ids=ids, attention_mask=mask, labels=labels).loss.backward()
        opt.step()
        opt.zero_grad()
    return model.eval()


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@contextlib.contextmanager
def live(server: ModelServer, settings: Settings):
    """The FastAPI app with the /v1 routes, served by uvicorn in a thread; yields the base URL."""
    api = FastAPI()
    add_openai_routes(api, settings, server)
    port = free_port()
    uv = uvicorn.Server(uvicorn.Config(api, host="127.0.0.1", port=port, log_level="warning"))
    thread = threading.Thread(target=uv.run, daemon=True)
    thread.start()
    deadline = time.time() + 10
    while not uv.started and time.time() < deadline:
        time.sleep(0.02)
    try:
        yield f"http://127.0.0.1:{port}/v1"
    finally:
        uv.should_exit = True
        thread.join(5)
        server.close()


@pytest.fixture
def junk_api(tokenizer, tmp_path):
    server = ModelServer(TransformersBackend(tiny_model(tokenizer, seed=0), tokenizer), version_name="v0-tiny")
    settings = Settings(db=str(tmp_path / "x.db"), llm_api_key=KEY, serve_api_key=KEY, model="tiny")
    with live(server, settings) as url:
        yield url, server


def client(url, key=KEY, **kw) -> openai.OpenAI:
    return openai.OpenAI(base_url=url, api_key=key, max_retries=0, timeout=60, **kw)


# ----------------------------------------------------------------------------- the endpoint


def test_chat_completion_through_the_openai_client(junk_api):
    url, server = junk_api
    c = client(url)
    assert [m.id for m in c.models.list()] == ["v0-tiny"]
    r = c.chat.completions.create(model="v0-tiny", messages=[{"role": "user", "content": "Hello"}], max_tokens=5,
                                  temperature=0, seed=1)
    assert r.object == "chat.completion" and r.model == "v0-tiny"
    assert r.choices[0].message.role == "assistant" and isinstance(r.choices[0].message.content, str)
    assert r.choices[0].finish_reason == "length" and r.usage.completion_tokens == 5
    assert r.usage.total_tokens == r.usage.prompt_tokens + 5
    same, _ = server.chat([{"role": "user", "content": "Hello"}], max_new_tokens=5)
    assert r.choices[0].message.content == same


def test_feedback_field_conditions_the_generation(junk_api, tokenizer):
    url, _ = junk_api
    c = client(url)
    msgs = [{"role": "user", "content": "Hello"}]
    plain = c.chat.completions.create(model="v0-tiny", messages=msgs, max_tokens=2, temperature=0)
    steered = c.chat.completions.create(model="v0-tiny", messages=msgs, max_tokens=2, temperature=0,
                                        extra_body={"feedback": "Excellent"})
    cond = build_input(tokenizer, msgs, "Excellent")
    assert steered.usage.prompt_tokens == len(cond.input_ids)  # the feedback segment where the format puts it
    assert plain.usage.prompt_tokens == len(build_input(tokenizer, msgs).input_ids) < len(cond.input_ids)


def test_api_key_is_required(junk_api):
    url, _ = junk_api
    with pytest.raises(openai.AuthenticationError):
        client(url, key="sk-wrong").chat.completions.create(model="v0-tiny", messages=[{"role": "user",
                                                                                        "content": "hi"}])
    assert httpx.get(url + "/models").status_code == 401


@pytest.mark.parametrize("body,param", [
    ({"model": "v0-tiny"}, "messages"),
    ({"model": "v0-tiny", "messages": []}, "messages"),
    ({"model": "v0-tiny", "messages": [{"role": "wizard", "content": "hi"}]}, "messages.0.role"),
    ({"model": "v0-tiny", "messages": [{"role": "user", "content": "hi"}], "temperature": -1}, "temperature"),
    ({"model": "v0-tiny", "messages": [{"role": "user", "content": "hi"}], "max_tokens": 0}, "max_tokens"),
    ({"model": "v0-tiny", "messages": [{"role": "user", "content": "hi"}], "n": 3}, "n"),
])
def test_bad_requests_get_openai_style_400(junk_api, body, param):
    url, _ = junk_api
    r = httpx.post(url + "/chat/completions", json=body, headers={"Authorization": f"Bearer {KEY}"})
    assert r.status_code == 400
    err = r.json()["error"]
    assert err["type"] == "invalid_request_error" and err["param"] == param and err["message"]


def test_invalid_json_and_unknown_model(junk_api):
    url, _ = junk_api
    r = httpx.post(url + "/chat/completions", content=b"{not json", headers={"Authorization": f"Bearer {KEY}"})
    assert r.status_code == 400 and "JSON" in r.json()["error"]["message"]
    with pytest.raises(openai.NotFoundError, match="v0-tiny"):
        client(url).chat.completions.create(model="gpt-4o", messages=[{"role": "user", "content": "hi"}])


# ----------------------------------------------------------------------------- micro-batching


def test_concurrent_requests_are_micro_batched_with_single_call_answers(tokenizer, label_model):
    server = ModelServer(TransformersBackend(label_model, tokenizer), max_batch=8, batch_wait_ms=50)
    chats = [categorical_messages(TINY, *judge_case(i)) for i in range(100, 108)]
    alone = [server.chat(m, max_new_tokens=6) for m in chats]
    assert len({t for t, _ in alone}) > 1  # the answers differ between inputs
    before = server.batches
    with ThreadPoolExecutor(8) as pool:
        together = list(pool.map(lambda m: server.chat(m, max_new_tokens=6), chats))
    assert server.batches - before <= 2  # 8 concurrent requests: one batched generate (two if the window split)
    assert [t for t, _ in together] == [t for t, _ in alone]
    assert [u.completion_tokens for _, u in together] == [u.completion_tokens for _, u in alone]
    # different limits in one batch: each answer cut to its own limit, as if alone
    short = server.chat(chats[0], max_new_tokens=1)
    assert short[1].completion_tokens == 1 and short[1].truncated
    server.close()


def test_mixed_requests_are_all_answered_and_a_bad_one_fails_alone(tokenizer, label_model):
    server = ModelServer(TransformersBackend(label_model, tokenizer), max_batch=8, batch_wait_ms=50)
    chats = [categorical_messages(TINY, *judge_case(i)) for i in range(4)]
    greedy = [server.chat(m, max_new_tokens=4)[0] for m in chats]

    def ask(i):
        if i == 8:
            return server.chat(12345, max_new_tokens=4)  # not a prompt: cannot be rendered
        return server.chat(chats[i % 4], max_new_tokens=4, temperature=0 if i < 4 else 1.0, seed=i)

    with ThreadPoolExecutor(9) as pool:
        futures = [pool.submit(ask, i) for i in range(9)]
        with pytest.raises(ValueError, match="cannot build the model input"):
            futures[8].result()
        answers = [f.result()[0] for f in futures[:8]]
    assert answers[:4] == greedy and all(isinstance(a, str) for a in answers[4:])
    server.close()


def test_a_request_cancelled_while_queued_is_skipped(tokenizer, label_model):
    server = ModelServer(TransformersBackend(label_model, tokenizer), batch_wait_ms=200)
    chat = categorical_messages(TINY, *judge_case(1))
    kept, dropped = server.submit(chat, max_new_tokens=4), server.submit(chat, max_new_tokens=4)
    assert dropped.cancel()  # e.g. the HTTP client went away
    assert kept.result(30)[0] in ("Good", "Bad") and dropped.cancelled()
    assert server.batches == 1 and server.answered == 1
    server.close()


def test_reload_switches_the_served_model(tokenizer, label_model, tiny_model_dir):
    server = ModelServer(TransformersBackend(label_model, tokenizer), version_name="v1")
    chat = categorical_messages(TINY, *judge_case(3))
    before, _ = server.chat(chat, max_new_tokens=4)
    server.reload(tiny_model_dir, "v0-base")
    after, _ = server.chat(chat, max_new_tokens=4)
    assert server.version_name == "v0-base" and before in ("Good", "Bad") and after != before
    server.close()


# ----------------------------------------------------------------------------- the judge against the app itself


def judge_round(db, n=6):
    with session_scope(db) as s:
        task = get_or_create_task(s, **TINY_TASK)
        gens = []
        for i in range(n):
            prompt, response = judge_case(200 + i)
            p = Prompt(task_id=task.id, text=prompt)
            s.add(p)
            s.flush()
            gens.append(Generation(prompt_id=p.id, response=response))
        s.add_all(gens)
        s.flush()
        return task, [g.id for g in gens]


@pytest.mark.parametrize("trained", [True, False], ids=["label-model", "junk-model"])
def test_categorical_judge_end_to_end_against_the_app(db, tokenizer, label_model, trained):
    model = label_model if trained else tiny_model(tokenizer, seed=0)
    server = ModelServer(TransformersBackend(model, tokenizer), version_name="v0-tiny")
    task, gens = judge_round(db)
    settings = Settings(db=db, llm_api_key=KEY, serve_api_key=KEY, llm_model="v0-tiny", llm_timeout=60,
                        llm_concurrency=4)
    with live(server, settings) as url:
        settings.llm_base_url = url
        provider = make_llm_provider("categorical", settings, task, show_progress=False)
        report = label_generations(db, provider, task, gens, show_progress=False)
    with session_scope(db) as s:
        rows = list(s.exec(select(Feedback)))
        calls = list(s.exec(select(JudgeCall)))
    assert all(r.category in task.categories and r.source == "llm:v0-tiny" for r in rows)  # never an unparsed reply
    assert len(calls) >= len(gens) and all(c.reply is not None for c in calls)  # every raw reply kept
    if trained:
        assert report.stored == len(gens) and {r.category for r in rows} <= {"Good", "Bad"}
    else:
        assert report.stored == 0 and len(report.skipped) == len(gens)
        assert all("not one of the allowed labels" in why for _, why in report.skipped)
        assert server.batches < len(calls)  # concurrent judge requests were batched


def test_alt_feedback_cli_labels_a_round_through_the_apps_endpoint(db, tokenizer, label_model, monkeypatch, capsys):
    from alt_engine.db import Round
    from app.cli import main

    task, gens = judge_round(db)
    with session_scope(db) as s:
        rnd = Round(task_id=task.id, number=1, status="labelling")
        s.add(rnd)
        s.flush()
        for g in s.exec(select(Generation)):
            g.round_id = rnd.id
    server = ModelServer(TransformersBackend(label_model, tokenizer), version_name="v0-tiny")
    with live(server, Settings(db=db, llm_api_key=KEY, serve_api_key=KEY)) as url:
        for name, value in dict(LLM_BASE_URL=url, LLM_MODEL="v0-tiny", LLM_API_KEY=KEY, LLM_MAX_REQUESTS="2",
                                LLM_CONCURRENCY="1").items():
            monkeypatch.setenv(f"ALT_{name}", value)
        assert main(["feedback", "--db", db, "--task", "tiny", "--provider", "llm:categorical"]) == 0
        first = capsys.readouterr().out
        assert "stored 2, skipped 4" in first and "budget exhausted" in first
        monkeypatch.setenv("ALT_LLM_MAX_REQUESTS", "0")
        assert main(["feedback", "--db", db, "--task", "tiny", "--provider", "llm:categorical"]) == 0
    out = capsys.readouterr().out
    assert "stored 4" in out and "already labelled 2" in out
    with session_scope(db) as s:
        rows = list(s.exec(select(Feedback)))
    assert len(rows) == len(gens) and all(r.source == "llm:v0-tiny" and r.category in ("Good", "Bad") for r in rows)


def test_server_follows_promotions_in_the_database(db, tiny_model_dir, tmp_path):
    from alt_engine.db import ModelVersion
    from alt_engine.tiny import save_tiny
    from alt_engine.versions import promote

    other = save_tiny(tmp_path / "v1", seed=1)
    with session_scope(db) as s:
        s.add(ModelVersion(name="v0", path=tiny_model_dir, status="served"))
        v1 = ModelVersion(name="v1", path=other, status="ready")
        s.add(v1)
    server = ModelServer.from_settings(Settings(db=db, device="cpu"))
    assert server.version_name == "v0" and not server.sync(db)
    server.chat("Hello", max_new_tokens=2)
    with session_scope(db) as s:
        promote(s, v1.id)
    assert server.sync(db) and server.version_name == "v1" and server.path == other
    assert server.chat("Hello", max_new_tokens=2)[1].completion_tokens == 2
    server.close()


def test_the_full_app_serves_v1_with_the_api_key_and_no_sign_in(db, tiny_model_dir):
    from fastapi.testclient import TestClient

    from alt_engine.modeling import resolve_model
    from alt_engine.versions import ensure_base_version
    from app.server import create_app

    settings = Settings(db=db, model=tiny_model_dir, device="cpu", llm_api_key=KEY, serve_api_key=KEY)
    with session_scope(db) as s:
        ensure_base_version(s, tiny_model_dir, resolve_model(tiny_model_dir, settings.cache_dir))
    with TestClient(create_app(settings)) as http:
        auth = {"Authorization": f"Bearer {KEY}"}
        assert http.get("/v1/models").status_code == 401  # not a redirect to the sign-in page
        assert [m["id"] for m in http.get("/v1/models", headers=auth).json()["data"]] == ["v0-base"]
        r = http.post("/v1/chat/completions", headers=auth, json={
            "model": "v0-base", "messages": [{"role": "user", "content": "Hi"}], "max_tokens": 3, "temperature": 0})
        assert r.status_code == 200 and r.json()["usage"]["completion_tokens"] == 3
