"""Built-in demonstration tasks and their shipped prompt sets; the probe share held out of a file with no split."""

import json

import pytest
from sqlmodel import select

from alt_engine.db import Prompt, Task, init_db, session_scope
from alt_engine.feedback import make_provider
from alt_engine.prompts import import_prompts, probe_rows
from alt_engine.settings import Settings
from alt_engine.tasks import BUILTIN_TASKS, DEMOS, builtin_prompt_file, get_or_create_task
from app.cli import main


def splits(db, task="default"):
    with session_scope(db) as s:
        t = s.exec(select(Task).where(Task.name == task)).one()
        return {p.text: p.split for p in s.exec(select(Prompt).where(Prompt.task_id == t.id))}


def plain_file(path, n=10):
    path.write_text("".join(json.dumps({"prompt": f"Question number {i}?"}) + "\n" for i in range(n)))
    return str(path)


def test_file_without_split_holds_out_a_stable_probe_share(db, tmp_path):
    report = import_prompts(db, plain_file(tmp_path / "p.jsonl"))
    assert report.added == 10 and report.held_out == 2
    assert "held out 2 prompts as probe (no split column)" in str(report)
    first = splits(db)
    assert sorted(first.values()).count("probe") == 2
    other = str(tmp_path / "other.db")  # the same file into a fresh database picks the same rows
    init_db(other)
    import_prompts(other, plain_file(tmp_path / "p.jsonl"))
    assert splits(other) == first
    again = import_prompts(db, plain_file(tmp_path / "p.jsonl"))  # a reimport adds and holds out nothing
    assert again.added == 0 and "held out" not in str(again)


def test_probe_share_is_configurable_and_skipped_with_a_split(db, tmp_path):
    assert import_prompts(db, plain_file(tmp_path / "p.jsonl"), task="dialogue", probe_share=0.5).held_out == 5
    assert import_prompts(db, plain_file(tmp_path / "p.jsonl"), task="toxicity", split="train").held_out == 0
    assert set(splits(db, "toxicity").values()) == {"train"}
    mixed = tmp_path / "m.jsonl"  # a split column anywhere in the file: it decides
    mixed.write_text(json.dumps({"prompt": "x", "split": "probe"}) + "\n" + json.dumps({"prompt": "y"}) + "\n")
    assert import_prompts(db, str(mixed), task="summarization").held_out == 0
    assert splits(db, "summarization") == {"x": "probe", "y": "train"}
    assert probe_rows(["only"], 0.2) == set()  # one prompt stays train: never hold out everything
    assert len(probe_rows(["a", "b"], 0.2)) == 1  # at least one
    assert probe_rows(list("abcdefghij"), 0) == set()


@pytest.mark.parametrize("name", list(DEMOS))
def test_demo_tasks_ship_prompt_sets_and_name_a_provider_that_builds(name, tmp_path):
    rows = [json.loads(line) for line in builtin_prompt_file(name).read_text().splitlines()]
    prompts = [r["prompt"] for r in rows]
    assert len(prompts) == 140 == len(set(prompts)) and all(p.strip() for p in prompts)
    assert sum(r["split"] == "probe" for r in rows) == 40
    assert len(BUILTIN_TASKS[name]["categories"]) >= 4 or name == "concise_text"  # free text: no categories
    db = str(tmp_path / "d.db")
    init_db(db)
    with session_scope(db) as s:
        task = get_or_create_task(s, name)
        s.expunge(task)
    provider = make_provider(DEMOS[name].provider, Settings(db=db), task)
    assert provider.name.startswith(DEMOS[name].provider.removesuffix(":auto"))


def test_cli_imports_a_builtin_prompt_set_into_its_task(tmp_path, capsys):
    db = str(tmp_path / "c.db")
    assert main(["prompts", "import", "--builtin", "concise", "--db", db]) == 0
    out = capsys.readouterr().out
    assert "imported 140 prompts into task 'concise'" in out and "rule:concise:auto" in out
    assert sorted(splits(db, "concise").values()).count("probe") == 40
    assert main(["prompts", "import", "--db", db]) == 1
    assert "give a prompt file or --builtin" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        main(["prompts", "import", "--builtin", "nope", "--db", db])
