"""Shared fixtures: a temp database, a tiny model saved to disk, and a tokenizer."""

from __future__ import annotations

import os

import pytest

os.environ.setdefault("DS_ACCELERATOR", "cpu")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
os.environ.setdefault("HF_HUB_OFFLINE", "1")


@pytest.fixture
def db(tmp_path):
    """A fresh, initialised database path."""
    from alt_engine.db import init_db

    path = str(tmp_path / "test.db")
    init_db(path)
    return path


@pytest.fixture(scope="session")
def tiny_model_dir(tmp_path_factory):
    """A tiny random Llama + byte-level BPE tokenizer (with chat template) saved to disk."""
    from alt_engine.tiny import save_tiny

    return save_tiny(tmp_path_factory.mktemp("tiny") / "model")


@pytest.fixture(scope="session")
def tiny_tokenizer():
    from alt_engine.tiny import tiny_tokenizer

    return tiny_tokenizer()


# --------------------------------------------------------------------------- annotation app (engineer D)


def seed_annotation_db(path: str, n: int = 6, k: int = 1, task: str = "default", responses: list[str] | None = None,
                       chat: bool = False) -> dict:
    """A database with one task, ``n`` prompts, one open round and one generation per prompt.

    Returns {"task": name, "round": id, "generations": [ids]}.
    """
    from alt_engine.db import Generation, Prompt, Round, init_db, session_scope
    from alt_engine.tasks import get_or_create_task

    init_db(path)
    with session_scope(path) as s:
        t = get_or_create_task(s, task)
        t.annotations_per_item = k
        rnd = Round(task_id=t.id, number=1, status="feedback")
        s.add(rnd)
        s.flush()
        ids = []
        for i in range(n):
            if chat:
                p = Prompt(task_id=t.id, messages=[{"role": "system", "content": "Be brief."},
                                                   {"role": "user", "content": f"Question number {i}?"}])
            else:
                p = Prompt(task_id=t.id, text=f"Prompt number {i}: say something.")
            s.add(p)
            s.flush()
            response = responses[i % len(responses)] if responses else f"Response number {i}."
            g = Generation(prompt_id=p.id, round_id=rnd.id, response=response, conditioning="Excellent")
            s.add(g)
            s.flush()
            ids.append(g.id)
        return {"task": t.name, "round": rnd.id, "generations": ids}


@pytest.fixture
def annotation_db(tmp_path):
    """(db path, seed info) with 6 generations, k = 1."""
    path = str(tmp_path / "annotate.db")
    return path, seed_annotation_db(path)
