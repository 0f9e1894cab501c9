"""/v1/completions cannot hold every chat back (#23 item 4): a bound on prompts × n × tokens per request, chats
interleaved between its turns at the model, and a request whose client left stops.

A tiny model served by a real ``ModelServer``; the route in-process through TestClient.
"""

from __future__ import annotations

import threading
import time

import pytest
from fastapi import FastAPI
from fastapi.testclient import TestClient

from alt_engine.sampling import SamplingParams, TransformersBackend
from alt_engine.serving import Cancelled, ModelServer
from alt_engine.settings import Settings
from alt_engine.tiny import tiny_model, tiny_tokenizer
from app.openai_api import add_openai_routes


@pytest.fixture(scope="module")
def server():
    tok = tiny_tokenizer()
    s = ModelServer(TransformersBackend(tiny_model(tok, seed=0), tok), version_name="v0-tiny")
    yield s
    s.close()


def test_a_request_is_bounded_by_prompts_times_n_times_tokens(db, server):
    api = FastAPI()
    add_openai_routes(api, Settings(db=db, serve_api_key="k"), server)
    c = TestClient(api, headers={"Authorization": "Bearer k"})
    r = c.post("/v1/completions", json={"model": "v0-tiny", "prompt": [[5, 6, 7]] * 3000, "max_tokens": 16})
    assert r.status_code == 400 and "at most 16384" in r.json()["error"]["message"]  # 3,000 prompts were accepted
    r = c.post("/v1/completions", json={"model": "v0-tiny", "prompt": [[5, 6]] * 2, "n": 64, "max_tokens": 512})
    assert r.status_code == 400
    r = c.post("/v1/completions", json={"model": "v0-tiny", "prompt": [[5, 6]] * 2, "n": 2, "max_tokens": 3})
    assert r.status_code == 200 and len(r.json()["choices"]) == 4


def test_a_chat_runs_between_the_turns_of_a_large_completion(server):
    """Before: the chat queue admitted nothing while a completion ran; another user's chat waited all of it."""
    done: dict[str, float] = {}
    params = SamplingParams(n=16, temperature=1.0, max_new_tokens=48, seed=1, batch_size=16)

    def big():
        server.complete([[5 + i, 6, 7] for i in range(12)], params)
        done["completion"] = time.monotonic()

    worker = threading.Thread(target=big)
    worker.start()
    while not server._others_waiting:  # the completion holds the model
        time.sleep(0.001)
    server.chat("Hi", max_new_tokens=4)
    done["chat"] = time.monotonic()
    worker.join()
    assert done["chat"] < done["completion"]


def test_a_completion_whose_client_left_stops(server):
    cancel = threading.Event()
    params = SamplingParams(n=16, temperature=1.0, max_new_tokens=32, seed=1, batch_size=16)
    answered = server.answered
    backend = server._ensure_loaded()
    real, turns = backend.generate, []

    def generate(*args, **kwargs):  # the client leaves while the first turn runs (a timer raced a fast model)
        turns.append(1)
        cancel.set()
        return real(*args, **kwargs)

    backend.generate = generate
    try:
        with pytest.raises(Cancelled):
            server.complete([[5 + i, 6, 7] for i in range(40)], params, cancel=cancel)
    finally:
        backend.generate = real
    assert len(turns) == 1  # it stopped at the next turn, not after all 40 prompts
    assert server.answered == answered  # nothing more was reported done
