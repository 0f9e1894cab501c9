"""The ``openai`` sampling backend end to end against a real OpenAI-compatible server on 127.0.0.1.

The server is the app's own ``/v1`` (``/v1/completions`` with ``n``, ``seed``, ``max_tokens`` and
``finish_reason``, token-id prompts) serving the same EOS-prone tiny model as the transformers backend,
so the two backends can be compared generation by generation. A ``vllm serve`` test runs where a GPU is.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import threading
import time

import httpx
import openai
import pytest
import torch
import uvicorn
from conftest import free_port
from fastapi import FastAPI
from sqlmodel import select
from test_sampling import add_prompts, eos_prone_backend

from alt_engine.db import Generation, ModelVersion, init_db, session_scope
from alt_engine.openai_backend import OpenAIBackend, publish_version, sampling_model_name
from alt_engine.sampling import SamplingParams, make_backend, sample_prompts
from alt_engine.serving import ModelServer
from alt_engine.settings import Settings
from app.openai_api import add_openai_routes

KEY = "sk-test"


@pytest.fixture(scope="module")
def transformers_backend(tiny_model_dir):
    return eos_prone_backend(tiny_model_dir)


@pytest.fixture
def api(transformers_backend, tmp_path):
    """The app's /v1 routes on 127.0.0.1 serving the same model as ``transformers_backend``; (url, app)."""
    server = ModelServer(transformers_backend, version_name="v0-tiny")
    app = FastAPI()
    loaded: list[dict] = []

    @app.post("/v1/load_lora_adapter")  # vLLM's runtime adapter loading, as a stand-in for this test only
    async def load_lora(body: dict):
        loaded.append(body)
        return "Success: LoRA adapter loaded"

    app.state.loaded = loaded
    add_openai_routes(app, Settings(db=str(tmp_path / "x.db"), llm_api_key=KEY, serve_api_key=KEY), server)
    port = free_port()
    uv = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=port, log_level="warning"))
    thread = threading.Thread(target=uv.run, daemon=True)
    thread.start()
    deadline = time.time() + 10
    while not uv.started and time.time() < deadline:
        time.sleep(0.02)
    yield f"http://127.0.0.1:{port}/v1", app, server
    uv.should_exit = True
    thread.join(5)


def stored(db) -> list[Generation]:
    with session_scope(db) as s:
        return list(s.exec(select(Generation).order_by(Generation.prompt_id, Generation.id)))


def test_completions_endpoint_honours_n_seed_and_finish_reason(api):
    url, _, _ = api
    c = openai.OpenAI(base_url=url, api_key=KEY, max_retries=0)
    r = c.completions.create(model="v0-tiny", prompt=[5, 6, 7, 8], n=3, seed=11, max_tokens=6, temperature=1.0,
                             extra_body={"return_token_ids": True})
    assert r.object == "text_completion" and len(r.choices) == 3 and [ch.index for ch in r.choices] == [0, 1, 2]
    for ch in r.choices:
        token_ids = ch.model_extra["token_ids"]
        assert ch.finish_reason == ("length" if len(token_ids) == 6 else "stop")
    again = c.completions.create(model="v0-tiny", prompt=[5, 6, 7, 8], n=3, seed=11, max_tokens=6)
    assert [ch.text for ch in again.choices] == [ch.text for ch in r.choices]  # same seed, same samples
    two = c.completions.create(model="v0-tiny", prompt=[[5, 6], [7, 8, 9]], n=2, max_tokens=3, temperature=0)
    assert [ch.index for ch in two.choices] == [0, 1, 2, 3] and two.usage.prompt_tokens == 5
    with pytest.raises(openai.BadRequestError, match="token ids"):
        c.completions.create(model="v0-tiny", prompt=[10**9], max_tokens=2)
    with pytest.raises(openai.NotFoundError):
        c.completions.create(model="nope", prompt=[5], max_tokens=2)
    with pytest.raises(openai.AuthenticationError):
        openai.OpenAI(base_url=url, api_key="wrong", max_retries=0).completions.create(model="v0-tiny", prompt=[5])


def test_suppressed_tokens_never_come_back_from_the_server(api, transformers_backend):
    url, _, _ = api
    backend = OpenAIBackend(transformers_backend.tokenizer, url, "v0-tiny", api_key=KEY)
    params = SamplingParams(n=4, temperature=1.0, top_p=1.0, max_new_tokens=6, seed=1)
    free = backend.generate([[5, 6, 7, 8]], params)[0]
    banned = sorted({t for s in free for t in s.token_ids})  # what the model writes unhindered
    assert banned
    masked = backend.generate([[5, 6, 7, 8]], SamplingParams(**{**params.__dict__, "suppress_tokens": banned}))[0]
    assert [s.token_ids for s in masked] != [s.token_ids for s in free]  # sent as logit_bias -100, honoured:
    assert not {t for s in masked for t in s.token_ids} & set(banned)  # none of the banned tokens
    c = openai.OpenAI(base_url=url, api_key=KEY, max_retries=0)
    with pytest.raises(openai.BadRequestError, match="logit_bias"):
        c.completions.create(model="v0-tiny", prompt=[5, 6], max_tokens=2, logit_bias={"5": 3})
    with pytest.raises(openai.BadRequestError, match="logit_bias"):
        c.completions.create(model="v0-tiny", prompt=[5, 6], max_tokens=2, logit_bias={str(10**6): -100})


@pytest.mark.parametrize("temperature", [0.0, 0.9])
def test_same_prompts_same_counts_flags_and_parameters_as_transformers(api, transformers_backend, tmp_path,
                                                                       temperature):
    url, _, _ = api
    params = SamplingParams(n=3, temperature=temperature, top_p=0.9, max_new_tokens=10, seed=5, batch_size=6)
    runs = {}
    for name in ("transformers", "openai", "openai-again"):
        db = str(tmp_path / f"{name}.db")
        init_db(db)
        backend = transformers_backend if name == "transformers" else OpenAIBackend(
            transformers_backend.tokenizer, url, "v0-tiny", api_key=KEY, concurrency=3)
        ids = sample_prompts(db, backend, add_prompts(db, 6), params, conditioning_text="Excellent",
                             show_progress=False)
        assert len(ids) == 18
        runs[name] = stored(db)
    ref, srv = runs["transformers"], runs["openai"]
    assert [g.prompt_id for g in srv] == [g.prompt_id for g in ref]  # n per prompt, same prompts
    assert [g.prompt_tokens for g in srv] == [g.prompt_tokens for g in ref]
    assert all(g.conditioning == "Excellent" for g in srv)
    drop = lambda p: {k: v for k, v in p.items() if k not in ("backend", "dtype")}  # noqa: E731 (backend details)
    assert all(drop(g.sampling_params) == drop(r.sampling_params) for g, r in zip(srv, ref))
    assert {g.sampling_params["backend"] for g in srv} == {"openai"}
    for g in srv:  # the flag comes from finish_reason == "length"
        assert g.truncated == (g.response_tokens == 10)
    if temperature == 0:  # greedy: the very same generations, truncation flags included
        assert [(g.response, g.truncated) for g in srv] == [(g.response, g.truncated) for g in ref]
    else:
        assert {g.truncated for g in srv} == {True, False}  # both stops and truncations went through
        # seeded: a rerun gives the same samples, although requests run concurrently
        assert [g.response for g in runs["openai-again"]] == [g.response for g in srv]
        assert [g.seed for g in srv] == [g.seed for g in runs["openai-again"]]


def test_make_backend_and_model_names(api, tiny_model_dir, tmp_path):
    url, _, _ = api
    settings = Settings(db=str(tmp_path / "s.db"), sampling_base_url=url, sampling_model="v0-tiny",
                        sampling_api_key=KEY)
    backend = make_backend("openai", tiny_model_dir, settings=settings)
    assert backend.name == "openai" and backend.model == "v0-tiny"
    base = ModelVersion(name="v0-base", path=tiny_model_dir, objective="base")
    trained = ModelVersion(name="r1-alt", path=tiny_model_dir, objective="alt")
    assert sampling_model_name(settings, base) == "v0-tiny" and sampling_model_name(settings, trained) == "r1-alt"
    with pytest.raises(ValueError, match="base URL and a model name"):
        make_backend("openai", tiny_model_dir, settings=Settings(db=settings.db))
    with pytest.raises(RuntimeError, match="refused the request"):  # a model the server does not serve
        OpenAIBackend(backend.tokenizer, url, "r9-unknown", api_key=KEY).generate([[5, 6]], SamplingParams(n=1))


def test_new_lora_version_reaches_the_server_or_the_admin_is_told(api, tmp_path):
    url, app, _ = api
    adapter = tmp_path / "r1-alt"
    adapter.mkdir()
    (adapter / "adapter_config.json").write_text("{}")
    lora = ModelVersion(name="r1-alt", path=str(adapter), objective="alt")
    done = publish_version(Settings(sampling_base_url=url, sampling_api_key=KEY), lora)
    assert done.loaded and app.state.loaded == [{"lora_name": "r1-alt", "lora_path": str(adapter)}]
    refused = publish_version(Settings(sampling_base_url=url + "/nothing-here"), lora)  # 404: no runtime loading
    assert not refused.loaded and f"--lora-modules r1-alt={adapter}" in refused.message
    full = publish_version(Settings(sampling_base_url=url), ModelVersion(name="r2", path="/m/r2", objective="alt"))
    assert not full.loaded and "vllm serve /m/r2 --served-model-name r2" in full.message
    unset = publish_version(Settings(), lora)
    assert not unset.loaded and "ALT_SAMPLING_BASE_URL" in unset.message


@pytest.mark.skipif(not torch.cuda.is_available(), reason="vllm serve needs a CUDA GPU; this machine has none")
def test_vllm_serve_matches_transformers(tmp_path, tiny_model_dir):
    pytest.importorskip("vllm", reason="vLLM not installed (pip install -r requirements-gpu.txt)")
    port = 8765
    proc = subprocess.Popen([sys.executable, "-m", "vllm.entrypoints.openai.api_server", "--model", tiny_model_dir,
                             "--served-model-name", "tiny", "--port", str(port), "--gpu-memory-utilization", "0.3"],
                            env={**os.environ, "VLLM_ALLOW_RUNTIME_LORA_UPDATING": "True"})
    try:
        deadline = time.time() + 300
        while time.time() < deadline:
            try:
                if httpx.get(f"http://127.0.0.1:{port}/v1/models", timeout=2).status_code == 200:
                    break
            except httpx.HTTPError:
                time.sleep(2)
        from alt_engine.modeling import load_tokenizer

        db = str(tmp_path / "v.db")
        init_db(db)
        backend = OpenAIBackend(load_tokenizer(tiny_model_dir), f"http://127.0.0.1:{port}/v1", "tiny")
        ids = sample_prompts(db, backend, add_prompts(db, 4), SamplingParams(n=3, max_new_tokens=8),
                             show_progress=False)
        assert len(ids) == 12 and all(g.truncated == (g.response_tokens == 8) for g in stored(db))
    finally:
        proc.terminate()
        proc.wait(30)
        shutil.rmtree(tmp_path, ignore_errors=True)
