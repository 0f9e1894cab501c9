"""Feedback guidance at decoding: the guided distribution, γ = 0, seeds, and who refuses it."""

import math

import pytest
import torch
from sqlmodel import select
from test_sampling import eos_prone_backend

from alt_engine.conditioning import Format, build_input
from alt_engine.db import Generation, Prompt, session_scope
from alt_engine.modeling import load_model, load_tokenizer
from alt_engine.sampling import SamplingParams, TransformersBackend, guided_logits, next_tokens, sample_prompts
from alt_engine.tasks import get_or_create_task


@pytest.fixture(scope="module")
def backend(tiny_model_dir):
    return eos_prone_backend(tiny_model_dir, eos_bias=2.0)


def _pair(tok, prompt="Tell me about the sea", good="Excellent", bad="Horrible"):
    return build_input(tok, prompt, good).input_ids, build_input(tok, prompt, bad).input_ids


def test_guided_distribution_matches_hand_computation():
    cond = torch.tensor([[2.0, 1.0, 0.0]])  # l(x, f) on a 3-token vocabulary
    neg = torch.tensor([[0.0, 1.0, 2.0]])  # l(x, f⁻)
    # γ = 1: lp(f) + (lp(f) − lp(f⁻)) = 2·l(f) − l(f⁻) + a constant = [4, 1, −2] + c
    z = math.exp(4) + math.exp(1) + math.exp(-2)
    want = torch.tensor([math.exp(4) / z, math.exp(1) / z, math.exp(-2) / z])
    got = torch.softmax(guided_logits(cond, neg, 1.0), -1)[0]
    assert torch.allclose(got, want, atol=1e-6)
    # γ = 0: the conditioned distribution itself
    assert torch.allclose(torch.softmax(guided_logits(cond, neg, 0.0), -1), torch.softmax(cond, -1), atol=1e-6)
    # and what the sampler draws from it: uniforms on a fine grid invert the CDF in proportion to the probabilities
    n = 20000
    u = (torch.arange(n, dtype=torch.float64) + 0.5) / n
    params = SamplingParams(temperature=1.0, top_p=1.0)
    drawn = next_tokens(guided_logits(cond, neg, 1.0).expand(n, 3), params, u.float())
    freq = torch.bincount(drawn, minlength=3).double() / n
    assert torch.allclose(freq, want.double(), atol=2e-3)


def test_guided_tokens_equal_a_hand_decode_without_cache(tiny_model_dir):
    """Greedy guided decoding through the twin rows' KV caches = recomputing both full inputs every step."""
    model, tok = load_model(tiny_model_dir, "cpu"), load_tokenizer(tiny_model_dir)
    backend = TransformersBackend(model, tok)
    pos, neg = _pair(tok)
    gamma, steps = 1.5, 8
    got = backend.generate([pos], SamplingParams(n=1, temperature=0, max_new_tokens=steps, guidance=gamma),
                           negatives=[neg])[0][0].token_ids
    tokens: list[int] = []
    with torch.no_grad():
        for _ in range(steps):
            lc = model(input_ids=torch.tensor([pos + tokens])).logits[:, -1]
            ln = model(input_ids=torch.tensor([neg + tokens])).logits[:, -1]
            t = int(guided_logits(lc, ln, gamma).argmax(-1))
            if t in backend.stop_ids:
                break
            tokens.append(t)
    assert got == tokens and len(tokens) > 1
    with torch.no_grad():  # the two inputs do give the model different next-token distributions
        assert not torch.allclose(model(input_ids=torch.tensor([pos])).logits[:, -1],
                                  model(input_ids=torch.tensor([neg])).logits[:, -1])


def test_gamma_zero_draws_exactly_todays_samples(backend):
    tok = backend.tokenizer
    pairs = [_pair(tok, p) for p in ("Hi", "A much longer prompt here, ok?", "Yes")]
    inputs, negs = [p for p, _ in pairs], [n for _, n in pairs]
    params = SamplingParams(n=3, temperature=1.0, top_p=0.9, max_new_tokens=12, seed=5, batch_size=4)
    today = backend.generate(inputs, params)
    zero = backend.generate(inputs, SamplingParams(**{**params.__dict__, "guidance": 0.0}), negatives=negs)
    assert [[s.token_ids for s in per] for per in zero] == [[s.token_ids for s in per] for per in today]


def test_guided_samples_do_not_depend_on_their_batch(backend):
    tok = backend.tokenizer
    pairs = [_pair(tok, p) for p in ("Hi", "A much longer prompt here, ok?", "Yes", "Tell me")]
    inputs, negs = [p for p, _ in pairs], [n for _, n in pairs]
    params = SamplingParams(n=3, temperature=1.0, top_p=0.9, max_new_tokens=12, seed=5, guidance=2.0)
    runs = [backend.generate(inputs, SamplingParams(**{**params.__dict__, "batch_size": b}), negatives=negs)
            for b in (1, 4, 16)]
    ids = [[[s.token_ids for s in per] for per in run] for run in runs]
    assert ids[0] == ids[1] == ids[2]
    assert len({len(t) for per in ids[0] for t in per}) > 1, "expected rows retiring early"
    alone = backend.generate([inputs[2]], SamplingParams(**{**params.__dict__, "seed": 7, "batch_size": 2}),
                             negatives=[negs[2]])
    assert [s.token_ids for s in alone[0]] == ids[0][2]  # a sample is the same whatever its batch
    plain = backend.generate(inputs, SamplingParams(**{**params.__dict__, "guidance": 0.0}))
    assert [[s.token_ids for s in per] for per in plain] != ids[0]
    # a batch mixing guided and unguided inputs: the unguided ones are plain samples
    mixed = backend.generate(inputs, params, negatives=[negs[0], None, negs[2], None])
    assert [s.token_ids for s in mixed[1]] == [s.token_ids for s in plain[1]]
    assert [s.token_ids for s in mixed[0]] == ids[0][0]


def _prompts(db, n=3):
    with session_scope(db) as s:
        task = get_or_create_task(s, "default")
        s.add_all([Prompt(task_id=task.id, text=f"Question {i}: tell me something") for i in range(n)])
    with session_scope(db) as s:
        return list(s.exec(select(Prompt).order_by(Prompt.id)))


def test_sample_prompts_stores_guidance_and_refuses_a_feedback_free_format(db, backend):
    prompts = _prompts(db)
    params = SamplingParams(n=2, max_new_tokens=6, seed=1, guidance=1.5, negative="worst")
    sample_prompts(db, backend, prompts, params, conditioning_text="Excellent", negative_text="Horrible",
                   show_progress=False)
    with session_scope(db) as s:
        gens = s.exec(select(Generation)).all()
    assert len(gens) == 6
    assert all(g.sampling_params["guidance"] == 1.5 and g.sampling_params["negative"] == "worst"
               and g.sampling_params["negative_feedback"] == "Horrible" for g in gens)
    with pytest.raises(ValueError, match="reads no feedback|reads none"):
        sample_prompts(db, backend, prompts, params, conditioning_text="Excellent", fmt=Format("none"),
                       show_progress=False)
    # γ = 0: the rows store today's parameters (no guidance keys)
    ids = sample_prompts(db, backend, prompts, SamplingParams(n=1, max_new_tokens=4), conditioning_text="Excellent",
                         show_progress=False)
    with session_scope(db) as s:
        g = s.get(Generation, ids[0])
    assert "guidance" not in g.sampling_params and "negative" not in g.sampling_params


def test_bad_guidance_values():
    with pytest.raises(ValueError, match="guidance"):
        SamplingParams(guidance=-1)
    with pytest.raises(ValueError, match="guidance"):
        SamplingParams(guidance=100)
    with pytest.raises(ValueError, match="guidance needs"):
        TransformersBackend.generate(object(), [[1]], SamplingParams(guidance=1.0))


@pytest.mark.slow  # two tiny rounds through the CLI, ~15 s
def test_round_and_eval_options_reach_the_sampler_and_are_stored(tmp_path, tiny_model_dir, monkeypatch, capsys):
    """`alt round --guidance --explore`, `alt eval --guidance`: stored on every generation and evaluation; a
    feedback-free objective refuses guidance before any round exists."""
    from test_round_cli import TRAIN, cli  # noqa: F401 - the CLI fixture's body

    from alt_engine.db import ModelVersion, Round

    run, db = cli.__wrapped__(tmp_path, tiny_model_dir, monkeypatch)
    assert run("round", "--objective", "sft", "--provider", "rule:concise:2,4,6,8", "--guidance", "1", *TRAIN) == 1
    assert "reads no feedback" in capsys.readouterr().err
    with session_scope(db) as s:
        assert s.exec(select(Round)).first() is None
    assert run("round", "--provider", "rule:concise:2,4,6,8", "--n", "4", "--max-new-tokens", "6", "--rounds", "2",
               "--promote", "always", "--eval-max-new-tokens", "6", "--guidance", "2", "--negative", "plain",
               "--eval-guidance", "1.5", "--explore", "0.5", *TRAIN) == 0
    with session_scope(db) as s:
        second = s.exec(select(Round).where(Round.number == 2)).one()
        gens = s.exec(select(Generation).where(Generation.round_id == second.id)).all()
        evals = s.exec(select(Generation).where(Generation.round_id.is_(None))).all()
        v2 = s.exec(select(ModelVersion).order_by(ModelVersion.id.desc())).first()
    exemplar = [g for g in gens if g.conditioning == "Excellent"]
    explored = [g for g in gens if g.conditioning == "Horrible"]
    assert len(exemplar) == len(explored) == len(gens) // 2 > 0  # half of each prompt's 4 samples explore
    assert all(g.sampling_params["guidance"] == 2.0 and g.sampling_params["negative_feedback"] is None
               for g in exemplar)  # guided away from the plain prompt
    assert all("guidance" not in g.sampling_params for g in explored)  # exploration is unguided
    assert evals and all(g.sampling_params["guidance"] == 1.5 for g in evals if g.conditioning)
    assert v2.metrics["eval"]["guidance"] == 1.5 and v2.metrics["eval"]["negative_feedback"] == ["Horrible",
                                                                                                    "Excellent"]
    capsys.readouterr()
    assert run("eval", "--provider", "rule:concise:2,4,6,8", "--guidance", "3", "--negative", "Okay",
               "--max-new-tokens", "6", "--no-steer") == 0
    with session_scope(db) as s:
        v2 = s.get(ModelVersion, v2.id)
    assert v2.metrics["eval"]["guidance"] == 3.0 and v2.metrics["eval"]["negative"] == "Okay"
    assert "guidance γ=3" in capsys.readouterr().out


# ----------------------------------------------------------------------------- /v1 and the openai backend


@pytest.fixture
def v1(backend, tmp_path):
    """The app's /v1 routes on 127.0.0.1 serving ``backend``; yields (base URL, ModelServer)."""
    from test_openai_api import live

    from alt_engine.serving import ModelServer
    from alt_engine.settings import Settings

    server = ModelServer(backend, version_name="v0-tiny")
    with live(server, Settings(db=str(tmp_path / "x.db"), serve_api_key="sk-test")) as url:
        yield url, server


def test_v1_guidance_fields_reach_the_sampler(v1, backend):
    import openai

    url, _ = v1
    c = openai.OpenAI(base_url=url, api_key="sk-test", max_retries=0, timeout=60)
    msgs = [{"role": "user", "content": "Tell me about the sea"}]
    tok = backend.tokenizer
    pos, neg = build_input(tok, msgs, "Excellent").input_ids, build_input(tok, msgs, "Horrible").input_ids
    params = SamplingParams(n=1, temperature=1.0, top_p=0.9, max_new_tokens=10, seed=11, guidance=2.0)
    want = backend.generate([pos], params, negatives=[neg])[0][0].text
    plain = backend.generate([pos], SamplingParams(**{**params.__dict__, "guidance": 0.0}))[0][0].text
    assert want != plain
    for stream in (False, True):
        r = c.chat.completions.create(model="v0-tiny", messages=msgs, max_tokens=10, temperature=1.0, top_p=0.9,
                                      seed=11, stream=stream, extra_body={"feedback": "Excellent", "guidance": 2.0,
                                                                          "negative_feedback": "Horrible"})
        text = "".join(ch.choices[0].delta.content or "" for ch in r if ch.choices) if stream else \
            r.choices[0].message.content
        assert text == want
    with pytest.raises(openai.BadRequestError, match="give feedback"):
        c.chat.completions.create(model="v0-tiny", messages=msgs, max_tokens=2, extra_body={"guidance": 1.0})
    with pytest.raises(openai.BadRequestError, match="guidance"):
        c.chat.completions.create(model="v0-tiny", messages=msgs, max_tokens=2,
                                  extra_body={"feedback": "Excellent", "guidance": 50})


def test_openai_backend_guides_on_the_studio_server_and_refuses_one_that_ignores_it(v1, backend, tmp_path):
    import threading
    import time

    import uvicorn
    from conftest import free_port
    from fastapi import FastAPI

    from alt_engine.openai_backend import GuidanceUnsupported, OpenAIBackend

    url, _ = v1
    tok = backend.tokenizer
    pairs = [_pair(tok, p) for p in ("Hi", "Tell me")]
    params = SamplingParams(n=2, temperature=1.0, max_new_tokens=8, seed=3, guidance=1.5)
    remote = OpenAIBackend(tok, url, "v0-tiny", api_key="sk-test")
    got = remote.generate([p for p, _ in pairs], params, negatives=[n for _, n in pairs])
    local = backend.generate([p for p, _ in pairs], params, negatives=[n for _, n in pairs])
    assert [[s.token_ids for s in per] for per in got] == [[s.token_ids for s in per] for per in local]

    app = FastAPI()  # answers like vLLM: unknown fields ignored, no "guidance" in the reply

    @app.post("/v1/completions")
    async def completions(body: dict):
        return {"id": "x", "object": "text_completion", "created": 0, "model": body["model"],
                "choices": [{"index": j, "text": "hi", "finish_reason": "stop", "logprobs": None}
                            for j in range(body.get("n", 1))]}

    port = free_port()
    uv = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=port, log_level="warning"))
    threading.Thread(target=uv.run, daemon=True).start()
    while not uv.started:
        time.sleep(0.02)
    try:
        other = OpenAIBackend(tok, f"http://127.0.0.1:{port}/v1", "m", max_retries=0)
        assert other.generate([pairs[0][0]], SamplingParams(n=1, max_new_tokens=4))[0][0].text == "hi"
        with pytest.raises(GuidanceUnsupported, match="ignored feedback guidance"):
            other.generate([pairs[0][0]], params, negatives=[pairs[0][1]])
    finally:
        uv.should_exit = True


def test_playground_steering_sliders_reach_the_sampler(db, backend):
    """Panel A guided (γ 2 away from "Horrible"), panel B plain: each reply is what the server gives for those
    parameters; the default negative choice is the task's worst category."""
    import types

    import gradio as gr

    from alt_engine import playground as pg
    from alt_engine.db import ModelVersion
    from alt_engine.serving import ModelServer
    from alt_engine.settings import Settings
    from alt_engine.users import add_user
    from app.auth import Auth
    from app.playground import PlaygroundTab

    add_user(db, "alice", "alicepass1")
    with session_scope(db) as s:
        get_or_create_task(s, "default")
        s.add(ModelVersion(name="v0-base", path="tiny", status="served"))
    assert pg.negative_choices(db, "default") == (["Horrible", "Bad", "Mediocre", "Good", "Excellent", "none"],
                                                  "Horrible")
    server = ModelServer(backend, version_name="v0-base")

    class Tab(PlaygroundTab):
        hub = property(lambda self: types.SimpleNamespace(served=server, for_version=lambda name: server))

    tab = Tab(Settings(db=db), Auth(Settings(db=db)))
    with gr.Blocks():
        tab.build_ui()
    state = {"a": [], "b": [], "turn": 0}
    *_, last = tab._send("Tell me about the sea", state, True, "v0-base", "Excellent", "v0-base", "Excellent",
                         1.0, 0.9, 10, 4, False, 0, 2.0, "Horrible", 0.0, "Horrible",
                         request=types.SimpleNamespace(username="alice"))
    chat = [{"role": "user", "content": "Tell me about the sea"}]
    guided, _ = server.chat(chat, "Excellent", 10, 1.0, 0.9, 4, guidance=2.0, negative="Horrible")
    plain, _ = server.chat(chat, "Excellent", 10, 1.0, 0.9, 4)
    assert guided != plain
    assert last[tab.state]["a"][-1]["content"] == guided and last[tab.state]["b"][-1]["content"] == plain
    assert "γ 2 away from Horrible" in last[tab.status]
    server.close()


def test_model_server_refuses_guidance_for_a_version_that_reads_no_feedback(backend):
    from alt_engine.serving import ModelServer

    chat = [{"role": "user", "content": "Hi"}]
    server = ModelServer(backend, version_name="v1-sft", fmt=Format("none"))
    try:
        with pytest.raises(ValueError, match="reads no feedback"):
            server.chat(chat, "Excellent", 4, guidance=1.0)
        with pytest.raises(ValueError, match="give a feedback"):
            server.chat(chat, None, 4, guidance=1.0)
        assert server.chat(chat, "Excellent", 4)[1].prompt_tokens > 0  # γ = 0 still answers
    finally:
        server.close()
