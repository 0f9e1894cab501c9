"""Critique-and-Revise at inference in the API (``revision_passes``) and the playground (the revision passes
slider), on a tiny model trained with the ``cnr`` objective to turn a lowercase answer UPPERCASE."""

from __future__ import annotations

import random
import types

import openai
import pytest
from test_learning import PHRASES, PROMPTS, style
from test_openai_api import KEY, client, live

from alt_engine.modeling import load_model, load_tokenizer
from alt_engine.pool import PoolItem
from alt_engine.revise import final_answer
from alt_engine.sampling import TransformersBackend
from alt_engine.serving import ModelServer
from alt_engine.settings import Settings
from alt_engine.tiny import tiny_model, tiny_tokenizer
from alt_engine.training.objectives import make_config
from alt_engine.training.run import train

pytestmark = pytest.mark.slow  # trains a tiny model (~5 s)


@pytest.fixture(scope="module")
def cnr_model(tmp_path_factory) -> str:
    tokenizer = tiny_tokenizer(PHRASES + [p.upper() for p in PHRASES] + PROMPTS +
                               ["Critique: It is in lowercase.\nRevision:", "Critique your answer, then revise it."])
    work = tmp_path_factory.mktemp("cnr")
    tiny_model(tokenizer).save_pretrained(work / "base")
    tokenizer.save_pretrained(work / "base")
    rng, items = random.Random(2), []
    for prompt_id, prompt in enumerate(PROMPTS):
        for phrase in rng.sample(PHRASES, 2):
            items.append(PoolItem(len(items), len(items), prompt_id, prompt, "It is in lowercase.", phrase, False,
                                  revision=phrase.upper()))
    config = make_config("cnr", learning_rate=1e-2, epochs=10, batch_size=8, save_steps=100000, report_to="none")
    train(str(work / "base"), items, config, str(work / "cnr"))
    return str(work / "cnr")


def server_for(path: str) -> ModelServer:
    return ModelServer(TransformersBackend(load_model(path, device="cpu"), load_tokenizer(path)), version_name="v1-cnr")


def test_revision_passes_in_the_api(cnr_model, tmp_path):
    server = server_for(cnr_model)
    msgs = [{"role": "user", "content": PROMPTS[0]}]
    steps = server.revise(msgs, PHRASES[0], 2, max_new_tokens=48)  # the engine call the API makes
    assert steps[0].answer == PHRASES[0] and steps[0].critique and style(steps[0].revision) == "upper"  # fixed
    settings = Settings(db=str(tmp_path / "x.db"), serve_api_key=KEY, model="tiny")
    with live(server, settings) as url:
        c = client(url)
        first = c.chat.completions.create(model="v1-cnr", messages=msgs, max_tokens=24, temperature=0, seed=1)
        r = c.chat.completions.create(model="v1-cnr", messages=msgs, max_tokens=24, temperature=0, seed=1,
                                      extra_body={"revision_passes": 2})
        revisions = r.model_extra["revisions"]
        # exactly the passes the engine makes on that answer (greedy: deterministic), each one reported
        expected = server.revise(msgs, first.choices[0].message.content, 2, max_new_tokens=48, seed=1)
        assert revisions == [{"answer": st.answer, "critique": st.critique, "revision": st.revision}
                             for st in expected]
        assert revisions[0]["answer"] == first.choices[0].message.content
        assert all(set(step) == {"answer", "critique", "revision"} for step in revisions)
        last = [step["revision"] for step in revisions if step["revision"]]
        assert r.choices[0].message.content == (last[-1] if last else first.choices[0].message.content)
        assert "revisions" not in first.model_extra
        for bad in (6, -1):
            with pytest.raises(openai.BadRequestError, match="revision_passes"):
                c.chat.completions.create(model="v1-cnr", messages=msgs, max_tokens=4,
                                          extra_body={"revision_passes": bad})
        with pytest.raises(openai.BadRequestError, match="revision_passes needs stream: false"):
            c.chat.completions.create(model="v1-cnr", messages=msgs, max_tokens=4, stream=True,
                                      extra_body={"revision_passes": 1})


def test_revision_passes_in_the_playground(cnr_model, db):
    import gradio as gr

    from alt_engine.users import add_user
    from app.auth import Auth
    from app.playground import PlaygroundTab

    add_user(db, "alice", "alicepass1")
    server = server_for(cnr_model)
    hub = types.SimpleNamespace(served=server, for_version=lambda name: server)

    class Tab(PlaygroundTab):  # the tab on a hub serving the CnR model
        hub = property(lambda self: hub)

    tab = Tab(Settings(db=db), Auth(Settings(db=db)))

    with gr.Blocks():
        tab.build_ui()
    state = {"a": [], "b": [], "turn": 0}
    alice = types.SimpleNamespace(username="alice")
    *_, last = tab._send(PROMPTS[1], state, False, "v1-cnr", "none", "v1-cnr", "none", 0, 1, 24, 0, False, 2,
                         request=alice)
    answer = last[tab.state]["a"][-1]["content"]
    shown = last[tab.revisions["a"]]
    assert shown["visible"] is True and shown["value"].startswith("Pass 1\nCritique: ")
    steps = server.revise([{"role": "user", "content": PROMPTS[1]}], tab_first := server.chat(
        [{"role": "user", "content": PROMPTS[1]}], None, 24, 0.0, 1.0, 0)[0], 2, 48)
    assert answer == final_answer(steps, tab_first) and "revision pass" in last[tab.status]
    *_, plain = tab._send(PROMPTS[1], {"a": [], "b": [], "turn": 0}, False, "v1-cnr", "none", "v1-cnr", "none", 0, 1,
                          24, 0, False, 0, request=alice)
    assert plain[tab.revisions["a"]]["visible"] is False and plain[tab.state]["a"][-1]["content"] == tab_first
    server.close()
