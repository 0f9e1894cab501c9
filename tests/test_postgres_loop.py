"""The whole loop on PostgreSQL from the CLI with its defaults, on a tiny model:
init → import → sample → feedback → train → eval → promote → serve (``ALT_DATABASE_URL``, nothing else set).

Sampling with the default seeds wrote 63-bit seeds into a 32-bit column and one NUL in a generation failed the
round on PostgreSQL (#23 items 2, 3): this test is what keeps the PostgreSQL path working end to end.
"""

from __future__ import annotations

import json

import httpx
import pytest
from conftest import LiveServer
from sqlmodel import select

from alt_engine.db import Feedback, Generation, ModelVersion, session_scope
from app.cli import main


@pytest.mark.slow  # ~20 s on an idle machine (most of it `alt serve` starting); runs under `make test`
def test_the_whole_loop_on_postgresql_from_the_cli(pg_cluster, tmp_path, tiny_model_dir, monkeypatch, capsys):
    url = pg_cluster.create_database()
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("ALT_DATABASE_URL", url)
    monkeypatch.setenv("ALT_MODELS_DIR", str(tmp_path / "models"))
    monkeypatch.setenv("ALT_DEVICE", "cpu")
    prompts = tmp_path / "prompts.jsonl"
    prompts.write_text("".join(json.dumps({"prompt": f"Question {i}: say something short."}) + "\n"
                               for i in range(10)))

    def alt(*argv: str) -> int:
        return main(list(argv))

    assert alt("init", "--model", tiny_model_dir) == 0
    assert alt("prompts", "import", str(prompts)) == 0
    assert alt("sample") == 0  # the default n, tokens and seeds
    with session_scope(url) as s:
        gens = s.exec(select(Generation)).all()
    assert gens and max(g.seed for g in gens) > 2**31  # 63-bit seeds, stored
    assert alt("feedback", "--provider", "rule:concise") == 0
    assert alt("train", "--max_steps", "2") == 0
    with session_scope(url) as s:
        trained = s.exec(select(ModelVersion).order_by(ModelVersion.id.desc())).first()
        assert s.exec(select(Feedback)).first() is not None
    assert trained.objective != "base"
    assert alt("eval", "--version", str(trained.id)) == 0
    assert alt("models", "promote", str(trained.id)) == 0
    capsys.readouterr()
    assert alt("status", "--json") == 0
    assert json.loads(capsys.readouterr().out)["served"] == trained.name

    server = LiveServer(url, tiny_model_dir, tmp_path, env={"ALT_DATABASE_URL": url, "ALT_SERVE_API_KEY": "k-1"})
    try:
        with httpx.Client(base_url=server.url, timeout=120) as http:
            r = http.post("/v1/chat/completions", headers={"Authorization": "Bearer k-1"},
                          json={"model": trained.name, "messages": [{"role": "user", "content": "Hi"}],
                                "max_tokens": 4})
            assert r.status_code == 200, r.text
            assert r.json()["model"] == trained.name
    finally:
        server.stop()
