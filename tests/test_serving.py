"""The process-wide model server: hot swap under load, instant rollback, other versions in a bounded LRU."""

from __future__ import annotations

import threading
from concurrent.futures import ThreadPoolExecutor

import pytest

from alt_engine.db import ModelVersion, session_scope
from alt_engine.serving import BackendCache, ModelHub, ModelServer
from alt_engine.settings import Settings
from alt_engine.tiny import save_tiny, tiny_model, tiny_tokenizer
from alt_engine.versions import served_version

CHATS = [[{"role": "user", "content": f"Hello, how are you? {i}"}] for i in range(8)]
LETTERS = "XYZ"  # version i always answers LETTERS[i] (random tiny models all answer the same thing)


@pytest.fixture(scope="module")
def three_models(tmp_path_factory):
    root = tmp_path_factory.mktemp("hub")
    return [save_tiny(root / f"m{i}") for i in range(3)]


def letter_backend(letter: str):
    """A tiny model whose logits are pushed to one token: which version answered shows in the text."""
    import torch

    from alt_engine.sampling import TransformersBackend

    tok = tiny_tokenizer()
    model = tiny_model(tok)
    bias = torch.zeros(len(tok))
    bias[tok.convert_tokens_to_ids(letter)] = 1e4
    model.lm_head.register_forward_hook(lambda _m, _i, out: out + bias)
    return TransformersBackend(model, tok)


@pytest.fixture
def hub(db, three_models):
    with session_scope(db) as s:
        s.add_all([ModelVersion(name="v0", path=three_models[0], status="served"),
                   ModelVersion(name="v1", path=three_models[1], parent_id=1, objective="alt"),
                   ModelVersion(name="v2", path=three_models[2], parent_id=1, objective="alt")])
    hub = ModelHub(Settings(db=db, device="cpu"), max_models=3, max_batch=8, batch_wait_ms=20,
                   loader=lambda path: letter_backend(LETTERS[three_models.index(path)]))
    yield hub
    hub.close()


def reference(letter: str) -> list[str]:
    server = ModelServer(letter_backend(letter))
    answers = [server.chat(c, max_new_tokens=12)[0] for c in CHATS]
    server.close()
    return answers


def test_promote_under_load_drops_nothing_and_new_requests_get_the_new_version(hub, three_models):
    want = {"v0": reference("X"), "v1": reference("Y")}
    assert want["v0"] != want["v1"] and want["v1"][0] == "Y" * 12
    hub.served.preload()
    started = threading.Event()
    answers: list[tuple[int, str, str]] = []

    def user(i: int) -> None:
        for _ in range(4):
            text, usage = hub.served.chat(CHATS[i], max_new_tokens=12, timeout=60)
            answers.append((i, usage.version, text))
            started.set()

    with ThreadPoolExecutor(8) as pool:
        futures = [pool.submit(user, i) for i in range(8)]  # 8 concurrent users, 4 chats each
        started.wait(30)
        hub.promote(2)  # v1, while requests are in flight
        after = [pool.submit(hub.served.chat, c, None, 12) for c in CHATS]  # started after the promote
        for f in futures:
            f.result(60)  # every request completed, none raised
        after = [f.result(60) for f in after]
    assert len(answers) == 32
    for i, version, text in answers:  # each answer is exactly what the version that claims it would say
        assert text == want[version][i]
    assert [u.version for _, u in after] == ["v1"] * 8
    assert [t for t, _ in after] == want["v1"]
    with session_scope(hub.db) as s:
        assert served_version(s).name == "v1"


def test_rollback_is_instant_and_other_versions_load_on_request(hub, three_models):
    hub.served.preload()
    hub.promote(2)
    loads = hub.cache.loads
    assert hub.rollback().name == "v0" and hub.cache.loads == loads  # the previous version was still loaded
    assert hub.served.chat(CHATS[0], max_new_tokens=4)[1].version == "v0"
    other = hub.for_version("v2")
    assert other is not hub.served and other.chat(CHATS[0], max_new_tokens=4)[1].version == "v2"
    assert hub.for_version("v0") is hub.served and hub.for_version(3) is other
    with pytest.raises(ValueError, match="no model version"):
        hub.for_version("v9")


def test_the_cache_is_bounded_and_keeps_pinned_models():
    loaded = []
    cache = BackendCache(max_models=2, loader=lambda p: loaded.append(p) or object())
    cache.pin(["a"])
    for path in ("a", "b", "c", "a", "d"):
        cache.get(path)
    assert "a" in cache and cache.paths == ["a", "d"] and loaded == ["a", "b", "c", "d"]


def test_close_hub_stops_following_the_database(db):
    """A closed hub's watcher stops asking the database (else it asks one that was dropped, every few seconds)."""
    from alt_engine.serving import close_hub, hub_for

    hub = hub_for(Settings(db=db))
    assert hub_for(Settings(db=db)) is hub  # one per process and database
    before = set(threading.enumerate())
    hub.follow(every=0.2)
    (watcher,) = [t for t in threading.enumerate() if t not in before and t.name == "model-follow"]
    close_hub(db)
    watcher.join(2)
    assert not watcher.is_alive()
    assert hub_for(Settings(db=db)) is not hub  # a new one on the next use
    close_hub(db)
