"""The `alt` CLI end to end on a tiny model: init, import, sample, status, models."""

import json

from sqlalchemy import func
from sqlmodel import select

from alt_engine.db import Generation, Prompt, session_scope
from app.cli import main


def run(capsys, *argv):
    code = main(list(argv))
    out = capsys.readouterr()
    return code, out.out, out.err


def test_cli_flow(tmp_path, tiny_model_dir, capsys):
    db = str(tmp_path / "a.db")
    good = tmp_path / "p.jsonl"
    good.write_text("".join(json.dumps({"prompt": f"Prompt {i}"}) + "\n" for i in range(10)))  # no split column
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"prompt": "fine"}\n{"prompt": "also fine"}\n{"prompt": \n')

    code, out, _ = run(capsys, "init", "--db", db, "--model", tiny_model_dir)
    assert code == 0 and "v0-base" in out
    code, out, _ = run(capsys, "prompts", "import", str(good), "--db", db)
    assert code == 0 and "imported 10 prompts" in out
    assert "held out 2 prompts as probe (no split column)" in out  # 8 train prompts left

    code, _, err = run(capsys, "prompts", "import", str(bad), "--db", db)
    assert code != 0 and "bad.jsonl line 3" in err and "invalid JSON" in err
    with session_scope(db) as s:
        assert s.exec(select(func.count()).select_from(Prompt)).one() == 10  # unchanged

    code, out, _ = run(capsys, "sample", "--db", db, "--n", "4", "--max-new-tokens", "6", "--seed", "1")
    assert code == 0 and "32 generations" in out
    with session_scope(db) as s:
        gens = s.exec(select(Generation)).all()
    assert len(gens) == 32 and all(g.sampling_params["max_new_tokens"] == 6 for g in gens)

    code, out, _ = run(capsys, "status", "--db", db, "--json")
    status = json.loads(out)
    assert status["rounds"][0]["generations"] == 32 and status["rounds"][0]["unlabelled"] == 32
    assert status["served"] == "v0-base"

    code, out, _ = run(capsys, "sample", "--db", db, "--n", "1", "--max-new-tokens", "4", "--exemplar")
    assert code == 0 and "round 2" in out
    with session_scope(db) as s:
        conds = s.exec(select(Generation.conditioning).where(Generation.id > 32)).all()
    assert set(conds) == {"Excellent"}

    code, out, _ = run(capsys, "models", "list", "--db", db)
    assert "* " in out and "v0-base" in out


def test_sample_without_prompts_is_a_clear_error(tmp_path, tiny_model_dir, capsys):
    db = str(tmp_path / "b.db")
    code, _, err = run(capsys, "sample", "--db", db, "--model", tiny_model_dir)
    assert code == 1 and "no train prompts" in err and "alt prompts import" in err
