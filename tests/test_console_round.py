"""Issue #22's defects, each at the console's handlers on a real database and a tiny model: a whole round from the
console with an estimate and its stages; Evaluate, and Promote showing the evaluation it decides on; demo tasks in
one click and the first-run page; sampling progress per sequence; refusals in the page, not an error badge; exports
that count what training counted and say what they left out; the first admin's credentials; one DOM id each."""

from __future__ import annotations

import json
import threading
from collections import Counter
from pathlib import Path
from types import SimpleNamespace

import gradio as gr
import pytest
from sqlmodel import select

from alt_engine import export, jobs
from alt_engine.db import Generation, Job, ModelVersion, Prompt, Round, Task, session_scope
from alt_engine.jobs import get_job, run_job_inline, wait_job
from alt_engine.pool import build_pool
from alt_engine.rounds import STAGES
from alt_engine.settings import Settings
from alt_engine.users import add_user

ADMIN = SimpleNamespace(username="admin")
START_WORKER = jobs.ensure_worker  # the fixture stops jobs starting a worker; the round test starts the real one


def _console(db, tmp_path, model, monkeypatch):
    from app.auth import Auth
    from app.console import build_console

    monkeypatch.setattr("alt_engine.jobs.queue.ensure_worker", lambda db: None)
    monkeypatch.setenv("ALT_DEVICE", "cpu")
    add_user(db, "admin", "adminpass1", "admin")
    with session_scope(db) as s:
        s.add(ModelVersion(name="v0-base", path=model, status="served"))
    settings = Settings(db=db, device="cpu", models_dir=str(tmp_path / "models"), secret_key="s" * 32, model=model)
    with gr.Blocks() as blocks:
        tabs = {type(t).__name__: t for t in build_console(settings, Auth(settings))}
    return SimpleNamespace(db=db, tabs=tabs, blocks=blocks, settings=settings)


@pytest.fixture
def console(db, tmp_path, tiny_model_dir, monkeypatch):
    return _console(db, tmp_path, tiny_model_dir, monkeypatch)


def _job(db: str, kind: str) -> Job:
    with session_scope(db) as s:
        return s.exec(select(Job).where(Job.kind == kind).order_by(Job.id.desc())).first()


def _small_concise(db: str, folder: Path, train: int = 4, probe: int = 2) -> None:
    """The concise demo task with a few of its own prompts (a fast round on a tiny model)."""
    from alt_engine.prompts import import_prompts
    from alt_engine.tasks import DEMOS

    rows = [json.loads(line) for line in DEMOS["concise"].prompt_file.read_text().splitlines() if line.strip()]
    picked = [r for r in rows if r["split"] == "train"][:train] + [r for r in rows if r["split"] == "probe"][:probe]
    path = folder / "concise-small.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in picked))
    import_prompts(db, str(path), "concise")


def test_first_run_page_and_demo_in_one_click(console):
    """A new database: Start says so and offers the demos; one click makes the task with its shipped prompts;
    the Data tab imports a built-in set too; then Start says to run a round."""
    from app.console.start import first_run, next_step

    db, start = console.db, console.tabs["StartTab"]
    assert first_run(db) and "New database" in next_step(db)
    assert "concise" in start.demos_markdown() and "offensiveness" in start.demos_markdown()
    message, nxt, demos, task_pick = start._demo("concise", ADMIN)
    with session_scope(db) as s:
        task = s.exec(select(Task).where(Task.name == "concise")).one()
        splits = Counter(p.split for p in s.exec(select(Prompt).where(Prompt.task_id == task.id)))
    assert splits["train"] > 0 and splits["probe"] > 0 and sum(splits.values()) == 140
    assert "imported 140 prompts" in message and "Run a round" in nxt and task_pick["value"] == "concise"
    assert "started: 140 prompts" in demos
    assert "imported 0 prompts" in start._demo("concise", ADMIN)[0]  # a second click adds nothing
    sets, msg = console.tabs["DataTab"]._builtin("offensiveness", ADMIN)
    assert "imported 140 prompts into task 'offensiveness'" in msg and "offensiveness" in list(sets["task"])
    assert not first_run(db)


def test_a_round_from_the_console_estimate_stages_evaluate_promote(console, tmp_path):
    db, rounds, models = console.db, console.tabs["RoundsTab"], console.tabs["ModelsTab"]
    _small_concise(db, tmp_path)
    form = ["concise", "", "always", 2, 4, 12]  # task, provider (the demo's), promote, n, prompts, max new tokens
    estimate = rounds._estimate(*form, ADMIN)
    assert "rule:concise:auto" in estimate and "not measured on this machine yet" in estimate
    assert "4 prompts × 2 at 12 new tokens" in estimate
    assert "Queued round job" in rounds._start_round(*form, ADMIN)
    assert 'data-status="queued"' in rounds._round_progress_html()
    job = _job(db, "round")
    assert run_job_inline(db, job.id).status == "succeeded"
    job = get_job(db, job.id)
    ran = [e["msg"].removeprefix("stage: ") for e in job.events if e["msg"].startswith("stage: ")]
    assert ran == [s for s in STAGES if s in ran] and {"sample", "train", "evaluate", "promote"} <= set(ran)
    shown = rounds._round_progress_html()
    assert shown.count('data-state="done"') == len(STAGES) and "promoted" in shown
    measured = rounds._estimate(*form, ADMIN)
    assert "measured here: sampling" in measured and "training" in measured

    # Models: the evaluation a promotion decides on, beside the parent's; a version without one warns
    with session_scope(db) as s:
        new = s.exec(select(ModelVersion).where(ModelVersion.parent_id.is_not(None))).one()
        base = s.exec(select(ModelVersion).where(ModelVersion.parent_id.is_(None))).one()
        bare = ModelVersion(name="v9-bare", path=new.path, status="ready", parent_id=base.id)
        s.add(bare)
        s.flush()
        new_id, bare_id = new.id, bare.id
    shown = models._evaluation(new_id, ADMIN)
    assert "exemplar share" in shown and "steer gap" in shown and "parent v0-base" in shown and "[" in shown
    assert "has no evaluation" in models._evaluation(bare_id, ADMIN)
    _, message, _ = models._promote(bare_id, ADMIN)
    assert "Now serving **v9-bare**" in message and "has no evaluation" in message
    _, message, _ = models._promote(new_id, ADMIN)
    assert "exemplar share" in message
    # Evaluate any version: a job judged by the task's own provider
    assert "Queued evaluation job" in models._evaluate(bare_id, "concise", "", ADMIN)
    ev = _job(db, "eval")
    assert ev.params["version_id"] == bare_id and ev.params["provider"] == "rule:concise:auto"
    assert run_job_inline(db, ev.id).status == "succeeded"
    assert "has no evaluation" not in models._evaluation(bare_id, ADMIN)


def test_sampling_progress_moves_per_sequence(console, tmp_path):
    """One batch of sequences: the job's progress rises while they finish, not 0 % then 100 %."""
    db, rounds = console.db, console.tabs["RoundsTab"]
    _small_concise(db, tmp_path, train=4)
    rounds._sample("concise", None, 4, 4, 1.0, 0.9, 400, "none", "", ADMIN)  # 16 sequences, one write
    job = _job(db, "sample")
    seen, stop = [], threading.Event()

    def poll():
        while not stop.is_set():
            seen.append(get_job(db, job.id).progress or 0.0)
            stop.wait(0.05)

    watcher = threading.Thread(target=poll)
    watcher.start()
    try:
        assert run_job_inline(db, job.id).status == "succeeded"
    finally:
        stop.set()
        watcher.join()
    assert any(0.0 < p < 1.0 for p in seen), sorted(set(seen))


def test_a_refusal_shows_in_the_page_and_keeps_the_table(console):
    """Import with no file: the message area says why; the prompt-sets table is left as it was (no error badge)."""
    fns = {f.api_name: f for f in console.blocks.fns.values()}
    upload = fns["admin_upload_prompts"]
    sets, errors, message = upload.fn(None, "default", "", ADMIN)
    assert sets == gr.update() and errors == gr.update()
    assert "Refused" in message and "choose a file first" in message
    train = fns["admin_start_training"]
    shown = train.fn(*[c.value for c in console.tabs["TrainingTab"].form], ADMIN)
    assert "Refused" in shown and "choose the round" in shown
    add_user(console.db, "bob", "bobpass12")
    with pytest.raises(gr.Error, match="needs an admin"):  # a role refusal stays an error (no console data)
        upload.fn(None, "default", "", SimpleNamespace(username="bob"))


def test_every_element_id_is_unique(console):
    """The Export tab and its button once shared #console-export."""
    ids = Counter(b.elem_id for b in console.blocks.blocks.values() if getattr(b, "elem_id", None))
    assert not [i for i, n in ids.items() if n > 1], ids.most_common(3)


def test_exports_count_what_training_counted_and_say_what_they_left_out(console, tmp_path):
    """The concise demo keeps truncated answers as its worst category: SFT exports the pool training used (not a
    handful of untruncated rows), DPO counts them too, and each says what it left out."""
    from alt_engine.plan import plan_train

    db, settings = console.db, console.settings
    _small_concise(db, tmp_path)
    console.tabs["RoundsTab"]._sample("concise", None, None, 4, 1.0, 0.9, 12, "none", "", ADMIN)
    assert run_job_inline(db, _job(db, "sample").id).status == "succeeded"
    with session_scope(db) as s:
        rnd = s.exec(select(Round)).one()
        task = s.exec(select(Task).where(Task.name == "concise")).one()
        gens = s.exec(select(Generation)).all()
        n_gens, n_truncated = len(gens), sum(g.truncated for g in gens)
    console.tabs["RoundsTab"]._feedback(rnd.id, "rule:concise:auto", ADMIN)
    assert run_job_inline(db, _job(db, "feedback").id).status == "succeeded"
    assert n_truncated > 0
    spec = plan_train(db, task)
    trained = len(build_pool(db, task.id, **spec.pool.kwargs()))
    assert trained and spec.pool.truncated == "worst"
    message = export.export_to(settings, "sft", tmp_path / "sft.jsonl", task="concise")
    rows = export.read_rows(tmp_path / "sft.jsonl")
    assert len(rows) == trained and f"from {trained} generations, as training with truncated = worst" in message
    assert f"left out: {n_gens - trained} not drawn (at most 2 per prompt, 2 per category)" in message
    message = export.export_to(settings, "dpo", tmp_path / "dpo.jsonl", task="concise")
    assert "dpo rows" in message and ("left out" in message or "nothing left out" in message)
    # a task whose policy is exclude, every answer truncated: the refusal says so instead of "label some first"
    with session_scope(db) as s:
        for g in s.exec(select(Generation)):
            g.truncated = True
        s.exec(select(Task).where(Task.name == "concise")).one().name = "concise-copy"
    with pytest.raises(ValueError, match=f"{n_gens} truncated \\(no EOS; truncated = exclude\\)"):
        export.export_to(settings, "dpo", tmp_path / "none.jsonl", task="concise-copy")


def test_first_admin_credentials_in_a_box_and_a_private_file(tmp_path, monkeypatch):
    from alt_engine.db import init_db
    from app.server import credentials_path, first_admin

    db = str(tmp_path / "fresh.db")
    init_db(db)
    monkeypatch.setenv("ALT_ADMIN_PASSWORD", "first-pass-123")
    settings = Settings(db=db, port=7999)
    box = first_admin(settings)
    lines = box.strip().splitlines()
    assert lines[0] == lines[-1] and set(lines[0]) == {"#"} and all(line.startswith("#") for line in lines)
    assert "password:  first-pass-123" in box and "admin" in box
    path = credentials_path(settings)
    assert "first-pass-123" in path.read_text() and (path.stat().st_mode & 0o777) == 0o600
    assert str(path) in box
    assert first_admin(settings) is None  # users exist: nothing made, nothing printed


@pytest.mark.slow
def test_a_round_job_in_the_worker_trains_inside_the_worker_s_lock(console, tmp_path):
    """The worker's child runs the round; the round runs its training job inline, inside the lock the worker holds
    (it waited for that lock forever: `python -m alt_engine.jobs` ran a second copy of the module)."""
    db, rounds = console.db, console.tabs["RoundsTab"]
    _small_concise(db, tmp_path)
    rounds._start_round("concise", "", "never", 2, 4, 12, ADMIN)  # as the in-process round: two categories
    START_WORKER(db)
    job = wait_job(db, _job(db, "round").id, timeout=400)
    assert job.status == "succeeded", job.error
    assert get_job(db, job.id + 1).kind == "train" and get_job(db, job.id + 1).status == "succeeded"
