"""Streaming: the model server hands out a reply as it is generated; ``/v1/chat/completions`` streams it to the
real ``openai`` client as server-sent events; ``model`` may name any version (loaded on demand)."""

from __future__ import annotations

import time

import openai
import pytest

from alt_engine.db import ModelVersion, session_scope
from alt_engine.sampling import TransformersBackend
from alt_engine.serving import ModelServer
from alt_engine.settings import Settings
from alt_engine.tiny import save_tiny, tiny_model, tiny_tokenizer
from tests.test_openai_api import live, one_torch_thread  # noqa: F401 - one torch thread for tiny models (autouse)

KEY = "sk-test"


@pytest.fixture(scope="module")
def server():
    tok = tiny_tokenizer()
    s = ModelServer(TransformersBackend(tiny_model(tok, seed=0), tok), version_name="v0-tiny", batch_wait_ms=20)
    yield s
    s.close()


def test_stream_pieces_join_to_the_reply_and_alone_equals_batched(server):
    chat = [{"role": "user", "content": "Hello there"}]
    whole, usage = server.chat(chat, feedback="Excellent", max_new_tokens=24)
    events = list(server.stream(chat, feedback="Excellent", max_new_tokens=24))
    pieces = [p for p, u in events if u is None]
    assert len(pieces) > 3 and "".join(pieces) == whole  # many pieces, the same text
    assert events[-1][1].completion_tokens == usage.completion_tokens
    # a streamed request batched with others (different limits) streams its own reply only
    from concurrent.futures import ThreadPoolExecutor

    with ThreadPoolExecutor(3) as pool:
        other = [pool.submit(server.chat, [{"role": "user", "content": f"Q{i}"}], None, 40) for i in range(2)]
        got = "".join(p for p, _ in server.stream(chat, feedback="Excellent", max_new_tokens=24))
        [f.result() for f in other]
    assert got == whole


def test_model_input_shows_the_feedback_where_the_format_puts_it(server):
    built, text, fmt = server.model_input([{"role": "user", "content": "Hi"}], "Be brief")
    assert fmt.placement == "system"
    assert text.index("Feedback: Be brief") < text.index("<|im_start|>user")
    assert server.backend.tokenizer.decode(built.input_ids[built.start:built.end]) == "Feedback: Be brief"


def test_openai_client_streams_chat_completions(server, tmp_path):
    settings = Settings(db=str(tmp_path / "x.db"), serve_api_key=KEY, model="tiny")
    chat = [{"role": "user", "content": "Tell me a story"}]
    whole, usage = server.chat(chat, feedback="Horrible", max_new_tokens=60)
    with live(server, settings) as url:
        c = openai.OpenAI(base_url=url, api_key=KEY, max_retries=0, timeout=60)
        t0, arrivals, content, finish = time.monotonic(), [], [], None
        stream = c.chat.completions.create(model="v0-tiny", messages=chat, max_tokens=60, temperature=0, stream=True,
                                           stream_options={"include_usage": True}, extra_body={"feedback": "Horrible"})
        last = None
        for chunk in stream:
            last = chunk
            assert chunk.object == "chat.completion.chunk" and chunk.model == "v0-tiny"
            if chunk.choices:
                delta = chunk.choices[0].delta
                if delta.content:
                    content.append(delta.content)
                    arrivals.append(time.monotonic() - t0)
                finish = chunk.choices[0].finish_reason or finish
        assert "".join(content) == whole  # steered by the feedback field, exactly as server.chat
        assert len(content) > 10 and arrivals[0] < arrivals[-1]  # pieces, as they were generated
        assert finish == usage.finish_reason
        assert last.usage.completion_tokens == usage.completion_tokens
        # without include_usage there is no usage chunk; a non-streamed request still works
        chunks = list(c.chat.completions.create(model="v0-tiny", messages=chat, max_tokens=3, stream=True))
        assert all(ch.usage is None for ch in chunks) and chunks[-1].choices[0].finish_reason == "length"


def test_any_version_by_name_streams(db, tiny_model_dir, tmp_path):
    """``model`` = a version that is not served: loaded on demand, answers as itself; unknown names 404."""
    from fastapi.testclient import TestClient

    from alt_engine.modeling import resolve_model
    from alt_engine.versions import ensure_base_version
    from app.server import create_app

    other = save_tiny(tmp_path / "other", seed=1)
    settings = Settings(db=db, model=tiny_model_dir, device="cpu", serve_api_key=KEY)
    with session_scope(db) as s:
        base = ensure_base_version(s, tiny_model_dir, resolve_model(tiny_model_dir, settings.cache_dir))
        s.add(ModelVersion(name="v1-alt", path=other, parent_id=base.id, objective="alt"))
    chat = [{"role": "user", "content": "Hi"}]
    from alt_engine.sampling import make_backend

    expected, _ = ModelServer(make_backend("transformers", other, "cpu"), version_name="v1-alt").chat(
        chat, max_new_tokens=8)
    with TestClient(create_app(settings)) as http:
        c = openai.OpenAI(base_url="http://testserver/v1", api_key=KEY, max_retries=0, http_client=http)
        chunks = list(c.chat.completions.create(model="v1-alt", messages=chat, max_tokens=8, temperature=0,
                                                stream=True))
        assert {ch.model for ch in chunks} == {"v1-alt"}
        assert "".join(ch.choices[0].delta.content or "" for ch in chunks if ch.choices) == expected
        plain = c.chat.completions.create(model="v1-alt", messages=chat, max_tokens=8, temperature=0)
        assert plain.choices[0].message.content == expected and plain.model == "v1-alt"
        with pytest.raises(openai.NotFoundError, match="not a model version"):
            c.chat.completions.create(model="v9-nope", messages=chat, max_tokens=2)


def test_a_request_joins_a_running_batch_and_is_answered_before_it_ends():
    """Continuous batching: a request arriving while a long answer decodes starts at the next step and is answered
    when its own row stops — not after the long one — with the answer it gets alone under the same seed."""
    import threading

    tok = tiny_tokenizer()
    server = ModelServer(TransformersBackend(tiny_model(tok, seed=0), tok), version_name="v0-tiny", batch_wait_ms=20)

    chat, short_chat = [{"role": "user", "content": "Tell me a long story"}], [{"role": "user", "content": "Hi"}]
    sampling = dict(temperature=1.0, top_p=0.9)
    seed = next(s for s in range(50) if server.chat(chat, max_new_tokens=120, seed=s, **sampling)[1].completion_tokens
                >= 100)  # a long answer (the tiny model stops at random)
    short_alone = server.chat(short_chat, max_new_tokens=3, seed=7, **sampling)
    started, batches = threading.Event(), server.batches
    long = server.submit(chat, None, 120, seed=seed, on_text=lambda _: started.set(), **sampling)
    assert started.wait(60)
    short = server.submit(short_chat, None, 3, seed=7, **sampling)
    text, usage = short.result(60)
    assert not long.done()  # answered while the long one still decodes
    assert (text, usage.completion_tokens) == (short_alone[0], short_alone[1].completion_tokens)
    assert long.result(120)[1].completion_tokens >= 100
    assert server.batches - batches <= 1  # no batch of its own for the short one
    server.close()


def test_a_waiting_completions_call_stops_a_running_batch_from_admitting():
    """/v1/completions (``complete``) waits for the model while chats decode: the running batch admits no newcomer
    after it, so it runs as soon as the batch drains, before chats that came later."""
    import threading

    tok = tiny_tokenizer()
    server = ModelServer(TransformersBackend(tiny_model(tok, seed=0), tok), version_name="v0-tiny", batch_wait_ms=20)
    chat = [{"role": "user", "content": "Tell me a long story"}]
    sampling = dict(temperature=1.0, top_p=0.9)
    seed = next(s for s in range(50) if server.chat(chat, max_new_tokens=80, seed=s, **sampling)[1].completion_tokens
                >= 60)
    started, order = threading.Event(), []
    long = server.submit(chat, None, 80, seed=seed, on_text=lambda _: started.set(), **sampling)
    assert started.wait(60)
    from alt_engine.sampling import SamplingParams

    done = threading.Thread(target=lambda: (server.complete([[5, 6, 7]], SamplingParams(n=1, max_new_tokens=2)),
                                            order.append("complete")))
    done.start()
    while not server._others_waiting:  # the completions call is waiting for the model
        time.sleep(0.01)
    later = server.submit([{"role": "user", "content": "Hi"}], None, 2, seed=1, **sampling)
    later.add_done_callback(lambda _: order.append("later chat"))
    long.result(120)
    later.result(120)
    done.join(60)
    assert order == ["complete", "later chat"]  # the later chat did not join the running batch ahead of it
    server.close()
