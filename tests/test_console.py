"""The admin console's handlers, called in-process as an admin: tasks, data, rounds, training, jobs, models;
plus the engine reports they show (flagged is not unlabelled, the annotator's empty state)."""

from __future__ import annotations

import json
from pathlib import Path
from types import SimpleNamespace

import pytest
from sqlmodel import select

from alt_engine.db import Feedback, Job, ModelVersion, Prompt, Round, Task, session_scope
from alt_engine.jobs import get_job, run_job_inline
from alt_engine.settings import Settings
from alt_engine.users import add_user

ADMIN = SimpleNamespace(username="admin")
BOB = SimpleNamespace(username="bob")


@pytest.fixture
def console(db, tmp_path, tiny_model_dir, monkeypatch):
    """The console's tabs on a temp database with a served tiny model; jobs are queued, not started
    (the test runs them in-process with run_job_inline, the code the worker's child runs)."""
    from app.auth import Auth
    from app.console import build_console

    monkeypatch.setattr("alt_engine.jobs.queue.ensure_worker", lambda db: None)
    add_user(db, "admin", "adminpass1", "admin")
    add_user(db, "bob", "bobpass12")
    with session_scope(db) as s:
        s.add(ModelVersion(name="v0-base", path=tiny_model_dir, status="served"))
    settings = Settings(db=db, device="cpu", models_dir=str(tmp_path / "models"), secret_key="s" * 32,
                        model=tiny_model_dir)
    import gradio as gr

    with gr.Blocks():
        tabs = build_console(settings, Auth(settings))
    return {type(t).__name__: t for t in tabs}


def test_tasks_save_duplicate_and_safe_guidelines(console, db):
    tasks = console["TasksTab"]
    with pytest.raises(Exception, match="at least two categories"):
        tasks._save("t1", "Only one", "", True, True, True, 1, "", "system", "Feedback: {feedback}", "", ADMIN)
    with pytest.raises(Exception, match="admin"):
        tasks._save("t1", "Good\nBad", "", True, True, True, 2, "", "system", "Feedback: {feedback}", "", BOB)
    guidelines = 'Be kind <img src=x onerror=alert(1)> ![x](http://evil.example/a.png) $$\\rule{9px}{9px}$$'
    table, msg, preview, _ = tasks._save("t1", "Good\nBad", "", False, True, False, 2, guidelines, "user",
                                         "Label: {feedback}", "", ADMIN)
    assert "t1" in list(table["name"]) and "Saved" in msg
    # raw HTML escaped, the remote image only a link (never fetched); math is off in the component itself
    assert "<img" not in preview and "![" not in preview and "&lt;img" in preview
    with session_scope(db) as s:
        t = s.exec(select(Task).where(Task.name == "t1")).one()
        assert t.categories == ["Good", "Bad"] and t.annotations_per_item == 2 and not t.allow_free_text
        assert t.conditioning["placement"] == "user" and not t.allow_judgment
    tasks._duplicate("dialogue", "my-dialogue", ADMIN)
    with session_scope(db) as s:
        assert s.exec(select(Task).where(Task.name == "my-dialogue")).one().categories[0] == \
            "Harmless and very helpful"
    with pytest.raises(Exception, match="exists already"):
        tasks._duplicate("dialogue", "my-dialogue", ADMIN)


def as_upload(path) -> str:
    """``path`` copied where Gradio puts an uploaded file (the console imports only uploads)."""
    import shutil
    import uuid

    from gradio.utils import get_upload_folder

    folder = Path(get_upload_folder()) / uuid.uuid4().hex
    folder.mkdir(parents=True)
    return str(shutil.copy(path, folder / Path(path).name))


def test_upload_bad_file_names_the_line_and_imports_nothing(console, db, tmp_path):
    data = console["DataTab"]
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"prompt": "one"}\n{"prompt": "two"}\n{"prompt": \n{"prompt": "four"}\n')
    _, error, _ = data._upload(as_upload(bad), "default", "", ADMIN)
    assert error["visible"] is True and "line 3" in error["value"] and "Nothing imported" in error["value"]
    with session_scope(db) as s:
        assert not s.exec(select(Prompt)).all()
    good = tmp_path / "good.jsonl"
    good.write_text("".join(json.dumps({"prompt": f"Say hello {i}.", "split": "train"}) + "\n" for i in range(4)))
    sets, error, msg = data._upload(as_upload(good), "default", "", ADMIN)
    assert error["visible"] is False and "4" in msg and list(sets["source"]) == ["good.jsonl"]
    assert len(data._browse("prompts", "default", None, "", "", "", ADMIN)) == 4
    _, msg = data._delete("default", "good.jsonl", ADMIN)  # no round used it yet
    assert "Deleted 4" in msg


def _sampled(console, db, tmp_path) -> int:
    good = tmp_path / "p.jsonl"
    good.write_text("".join(json.dumps({"prompt": f"Say hello {i}.", "split": "train"}) + "\n" for i in range(3)))
    console["DataTab"]._upload(as_upload(good), "default", "", ADMIN)
    console["RoundsTab"]._sample("default", None, None, 2, 1.0, 0.9, 6, "auto (exemplar if trained)", "", ADMIN)
    with session_scope(db) as s:
        job = s.exec(select(Job)).one()
    assert job.status == "queued" and job.kind == "sample"
    assert run_job_inline(db, job.id).status == "succeeded"
    return get_job(db, job.id).round_id


def test_rounds_sample_feedback_counts_close(console, db, tmp_path):
    rounds = console["RoundsTab"]
    round_id = _sampled(console, db, tmp_path)
    table = rounds.table()
    assert list(table["status"]) == ["labelling"] and list(table["unlabelled"]) == [6]
    with session_scope(db) as s:  # a person labels one, flags another
        from alt_engine.db import Generation

        g = s.exec(select(Generation).order_by(Generation.id)).all()
        s.add(Feedback(generation_id=g[0].id, source="human:bob", category="Excellent"))
        s.add(Feedback(generation_id=g[1].id, source="human:bob", kind="flag", text="garbled"))
    rounds._feedback(round_id, "rule:concise:3", ADMIN)
    with session_scope(db) as s:
        fb_job = s.exec(select(Job).where(Job.kind == "feedback")).one()
    assert run_job_inline(db, fb_job.id).status == "succeeded"
    row = rounds.table().iloc[0]
    # the AI labels only what nobody labelled; a flagged item is not "unlabelled" (and the AI leaves it alone)
    assert (row["human"], row["ai"], row["flagged"], row["unlabelled"]) == (1, 4, 1, 0), row.to_dict()
    _, msg, _ = rounds._close(round_id, ADMIN)
    assert "Closed" in msg and rounds.table().iloc[0]["status"] == "closed"


def test_training_jobs_models(console, db, tmp_path):
    round_id = _sampled(console, db, tmp_path)
    with session_scope(db) as s:  # a person's label, then AI labels with thresholds from the round's lengths
        from alt_engine.db import Generation

        first = s.exec(select(Generation).order_by(Generation.id)).first()
        s.add(Feedback(generation_id=first.id, source="human:bob", category="Horrible"))
    console["RoundsTab"]._feedback(round_id, "rule:concise:auto", ADMIN)
    with session_scope(db) as s:
        run_job_inline(db, s.exec(select(Job).where(Job.kind == "feedback")).one().id)
    training = console["TrainingTab"]
    with pytest.raises(Exception, match="choose the round"):
        training._train([], "alt", 1, 1e-3, None, 0.06, False, 2, 4, "", 2, "flush", "last", 2, ADMIN)
    msg = training._train([round_id], "alt", 1, 1e-3, None, 0.06, False, 2, 4, "", 2, "flush", "last", 2, ADMIN)
    assert "Queued **alt** training job" in msg
    with session_scope(db) as s:
        job = s.exec(select(Job).where(Job.kind == "train")).one()
    bars, table = console["JobsTab"].views()
    assert f'data-job="{job.id}"' in bars and "queued" in list(table["status"])
    assert run_job_inline(db, job.id).status == "succeeded"
    models = console["ModelsTab"]
    table = models.table()
    new = table[table["name"] != "v0-base"].iloc[0]
    assert new["parent"] == "v0-base" and new["status"] == "ready" and int(new["job"]) == job.id
    assert new["round"] == 1
    with pytest.raises(Exception, match="no job made v0-base"):
        models._open_job(int(table[table["name"] == "v0-base"].iloc[0]["id"]), ADMIN)
    with pytest.raises(Exception, match="admin"):
        models._open_job(int(new["id"]), BOB)
    tabs, job_id, log = models._open_job(int(new["id"]), ADMIN)  # the link: Jobs tab, that job, its log
    assert tabs.selected == "console-jobs" and job_id == job.id and "stage: training" in log
    _, msg, header = models._promote(int(new["id"]), ADMIN)
    assert "Now serving" in msg and f"`{new['name']}`" in header  # the page header follows
    with session_scope(db) as s:
        assert s.get(Round, round_id).status == "closed"  # served: the round it was trained on is done
    _, msg, header = models._rollback(ADMIN)
    assert "v0-base" in msg and "`v0-base`" in header
    logs, _ = console["JobsTab"]._logs(job.id, ADMIN)
    assert "stage: training" in logs
    with pytest.raises(Exception, match="already succeeded"):
        console["JobsTab"]._cancel(job.id, ADMIN)


def test_empty_queue_says_why(db):
    from alt_engine.reports import empty_queue_message
    from alt_engine.tasks import get_or_create_task

    with session_scope(db) as s:
        t = get_or_create_task(s, "default")
        tid = t.id
    assert "Nothing sampled yet" in empty_queue_message(db, "default")
    with session_scope(db) as s:
        s.add(Round(task_id=tid, number=1, status="training"))
    assert "being trained" in empty_queue_message(db, "default")
    with session_scope(db) as s:
        s.add(Round(task_id=tid, number=2, status="labelling"))
        s.exec(select(Round).where(Round.number == 1)).one().status = "trained"
    assert "You are done" in empty_queue_message(db, "default", done_by_user=3)


def test_sampling_server_set_in_the_console_is_what_rounds_sample_on(console, db, tmp_path, tiny_model_dir,
                                                                     monkeypatch):
    """Rounds · Sampling backend: an admin points rounds at an OpenAI-compatible server (base URL + model name);
    it is stored in the database, the next sampling job samples there, and the CLI sees it too (its flags win)."""
    import threading
    import time
    from argparse import Namespace

    import uvicorn
    from fastapi import FastAPI

    from alt_engine.db import Generation
    from alt_engine.sampling import make_backend
    from alt_engine.serving import ModelServer
    from alt_engine.settings import stored_settings
    from app.cli import settings_from
    from app.openai_api import add_openai_routes
    from tests.conftest import free_port

    rounds = console["RoundsTab"]
    with pytest.raises(Exception, match="admin"):
        rounds._save_sampling("openai", "http://x:1/v1", "m", None, BOB)
    with pytest.raises(Exception, match="base URL"):
        rounds._save_sampling("openai", "", "m", None, ADMIN)
    with pytest.raises(Exception, match="http"):
        rounds._save_sampling("openai", "gpu-box:8000", "m", None, ADMIN)
    assert stored_settings(db) == {}

    app = FastAPI()  # a real OpenAI-compatible completions server on 127.0.0.1: the app's own /v1
    server = ModelServer(make_backend("transformers", tiny_model_dir, "cpu"), version_name="remote-base")
    add_openai_routes(app, Settings(db=str(tmp_path / "remote.db"), serve_api_key="sk-remote"), server)
    port = free_port()
    uv = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=port, log_level="warning"))
    threading.Thread(target=uv.run, daemon=True).start()
    while not uv.started:
        time.sleep(0.05)
    url = f"http://127.0.0.1:{port}/v1"
    try:
        assert "401" in rounds._check_sampling(url, "remote-base", ADMIN)  # no key in the console's settings
        summary = rounds._save_sampling("openai", url, "remote-base", 2, ADMIN)
        assert "openai" in summary and url in summary and "remote-base" in summary
        assert stored_settings(db) == {"backend": "openai", "sampling_base_url": url,
                                       "sampling_model": "remote-base", "sampling_concurrency": 2}
        monkeypatch.setenv("ALT_SAMPLING_API_KEY", "sk-remote")  # secrets come from the worker's environment
        answered = server.answered
        round_id = _sampled(console, db, tmp_path)
        assert server.answered - answered == 3  # one request per prompt, n = 2 each, on the server
        with session_scope(db) as s:
            gens = s.exec(select(Generation).where(Generation.round_id == round_id)).all()
        assert len(gens) == 6 and {g.sampling_params["backend"] for g in gens} == {"openai"}

        cli = Namespace(db=db, model=None, backend=None, sampling_base_url=None, sampling_model=None)
        assert settings_from(cli).backend == "openai" and settings_from(cli).sampling_base_url == url
        cli.backend = "transformers"  # a flag wins over what the console stored
        assert settings_from(cli).backend == "transformers" and settings_from(cli).sampling_model == "remote-base"
        rounds._save_sampling("transformers", "", "", None, ADMIN)  # back: cleared values fall back to the env's
        assert stored_settings(db) == {"backend": "transformers"}
    finally:
        uv.should_exit = True
        server.close()


def test_training_objective_choice_options_and_the_playground_format(console, db, tmp_path):
    """Quark chosen in the Training form: its options parsed from its config, its version trained by the job,
    then served in the playground with its own format (a control token), not the task's text format."""
    from alt_engine import playground as pg
    from alt_engine.serving import ModelHub
    from alt_engine.training.quark import control_tokens

    round_id = _sampled(console, db, tmp_path)
    console["RoundsTab"]._feedback(round_id, "rule:concise:auto", ADMIN)
    with session_scope(db) as s:
        run_job_inline(db, s.exec(select(Job).where(Job.kind == "feedback")).one().id)
    training = console["TrainingTab"]
    with pytest.raises(Exception, match="admin"):
        training._objective("cut", BOB)
    shown = training._objective("cut", ADMIN)  # the objective's own defaults fill the form
    assert shown[training.lr] == 4e-4 and shown[training.lora] is True and shown[training.epochs] == 1
    assert shown[training.alpha]["interactive"] is False and "--ul_threshold" in shown[training.help]
    form = dict(epochs=1, lr=1e-3, beta=None, alpha=0.06, lora=False, max_steps=2, batch_size=4, k=2,
                policy="default", truncated="last", max_per_prompt=2)  # policy: the objective's (quark: accumulate)
    args = lambda objective, options: ([round_id], objective, *list(form.values())[:7], options,  # noqa: E731
                                       *list(form.values())[7:], ADMIN)
    with pytest.raises(Exception, match="has no option --ul_threshold"):
        training._train(*args("quark", "--ul_threshold 1.2"))
    with pytest.raises(Exception, match="invalid float"):
        training._train(*args("quark", "--alpha lots"))
    with pytest.raises(Exception, match="admin"):
        training._train(*args("quark", "")[:-1], BOB)
    msg = training._train(*args("quark", "--alpha 0.1 --token_template <|q{i}|>"))
    assert "**quark**" in msg and "control tokens" in msg
    with session_scope(db) as s:
        job = s.exec(select(Job).where(Job.kind == "train")).one()
        assert job.params["objective"] == "quark" and job.params["policy"] == "accumulate"
        assert job.params["config"]["alpha"] == 0.1 and job.params["config"]["token_template"] == "<|q{i}|>"
        assert job.params["conditioning"]["placement"] == "tokens"
    assert run_job_inline(db, job.id).status == "succeeded"
    with session_scope(db) as s:
        version = s.exec(select(ModelVersion).where(ModelVersion.objective == "quark")).one()
        stored, name = version.conditioning, version.name
    task_cats = console["TasksTab"]._load_task("default", ADMIN)[1].splitlines()
    assert stored["placement"] == "tokens" and stored["tokens"] == control_tokens(task_cats, "<|q{i}|>")
    _, msg, _ = console["ModelsTab"]._promote(version.id, ADMIN)
    hub = ModelHub(console["TrainingTab"].settings)
    try:  # the playground, on the promoted version: the best category is its control token
        shown = pg.model_input(pg.server_for(hub, name), [{"role": "user", "content": "Hi"}], task_cats[0])
        assert shown.feedback_segment == "<|q0|>" and "control tokens" in shown.format
        usage = [done for _, _, done in pg.stream_panels(
            hub, [pg.Panel(name, task_cats[0], [{"role": "user", "content": "Hi"}])], 4, 0.0, 1.0, 0) if done]
        built, _, _ = pg.server_for(hub, name).model_input([{"role": "user", "content": "Hi"}], task_cats[0])
        assert usage[0].version == name and usage[0].prompt_tokens == len(built.input_ids)  # that input, answered
    finally:
        hub.close()


def test_steerlm_attributes_edited_in_the_task_editor_reach_training(console, db, tmp_path):
    from alt_engine.conditioning import Format

    tasks, training = console["TasksTab"], console["TrainingTab"]
    cats = "Excellent\nGood\nMediocre\nBad\nHorrible"
    mapping = "Excellent = quality:4,verbosity:0\n\nHorrible = quality:0,verbosity:4"
    form = ["default", cats, "", True, True, True, 1, "", "system", "Feedback: {feedback}"]
    with pytest.raises(Exception, match="admin"):
        tasks._save(*form, mapping, BOB)
    with pytest.raises(Exception, match="line 1: 'Superb' is not one of the task's categories"):
        tasks._save(*form, "Superb = quality:9", ADMIN)
    with pytest.raises(Exception, match="line 2: write 'category = attribute string'"):
        tasks._save(*form, "Good = quality:3\nBad quality:1", ADMIN)
    table, msg, _, _ = tasks._save(*form, mapping, ADMIN)
    assert "Saved" in msg and "Excellent → quality:4,verbosity:0" in table[table["name"] == "default"].iloc[0][
        "attributes"]
    with session_scope(db) as s:
        stored = Format.from_dict(s.exec(select(Task).where(Task.name == "default")).one().conditioning)
    assert stored.attributes == {"Excellent": "quality:4,verbosity:0", "Horrible": "quality:0,verbosity:4"}
    loaded = tasks._load_task("default", ADMIN)[10]  # the form shows the mapping back, one line per category
    assert loaded == "Excellent = quality:4,verbosity:0\nHorrible = quality:0,verbosity:4"
    # SteerLM trains (and its version serves) on the mapping; ALT keeps the category text as written
    round_id = _sampled(console, db, tmp_path)
    console["RoundsTab"]._feedback(round_id, "rule:concise:auto", ADMIN)
    with session_scope(db) as s:
        run_job_inline(db, s.exec(select(Job).where(Job.kind == "feedback")).one().id)
    for objective in ("steerlm", "alt"):
        training._train([round_id], objective, 1, 1e-3, None, 0.06, False, 2, 4, "", 2, "flush", "last", 2, ADMIN)
    with session_scope(db) as s:
        jobs = {j.params["objective"]: j for j in s.exec(select(Job).where(Job.kind == "train"))}
    assert jobs["steerlm"].params["conditioning"]["attributes"] == stored.attributes
    assert jobs["alt"].params["conditioning"]["attributes"] == {}
    assert run_job_inline(db, jobs["steerlm"].id).status == "succeeded"
    with session_scope(db) as s:
        version = s.exec(select(ModelVersion).where(ModelVersion.objective == "steerlm")).one()
        assert Format.from_dict(version.conditioning).text("Excellent") == "Feedback: quality:4,verbosity:0"


def test_console_file_paths_stay_confined(console, db, tmp_path, monkeypatch):
    """Item 9: a task named ``../../x`` wrote its export outside the temp folder; the upload handler imported any
    server path with an allowed suffix; "Test the server" sent the stored sampling key to any typed URL."""
    import os

    from app.console.export import safe_name

    secret = tmp_path / "secret.jsonl"
    secret.write_text(json.dumps({"prompt": "not for import"}) + "\n")
    with pytest.raises(Exception, match="uploaded here"):
        console["DataTab"]._upload(str(secret), "default", "", ADMIN)
    with session_scope(db) as s:
        assert not s.exec(select(Prompt)).all()
    assert safe_name("../../../../tmp/x") == "tmp_x" and "/" not in safe_name("a/b\\c") and safe_name("..") == "task"
    from alt_engine.tasks import get_or_create_task

    with session_scope(db) as s:
        get_or_create_task(s, "../../../../tmp/x", categories=["Good", "Bad"])
    target = Path(os.path.realpath("/tmp")) / "x-annotations.jsonl"
    path, _ = console["ExportTab"]._export("annotations", "jsonl", "../../../../tmp/x", "", "", False, "", ADMIN)
    assert Path(path).name == "alt-export-tmp_x-annotations.jsonl" and not target.exists()

    import http.server
    import threading

    seen = []

    class Recorder(http.server.BaseHTTPRequestHandler):  # a real server on 127.0.0.1 noting the keys it is sent
        def do_GET(self):
            seen.append(self.headers.get("Authorization"))
            body = b'{"data": [{"id": "m"}]}'
            self.send_response(200)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, *a):
            pass

    httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Recorder)
    threading.Thread(target=httpd.serve_forever, daemon=True).start()
    url = f"http://127.0.0.1:{httpd.server_address[1]}/v1"
    rounds = console["RoundsTab"]
    monkeypatch.setattr(rounds.settings, "sampling_api_key", "sk-stored")  # as ALT_SAMPLING_API_KEY sets it
    try:
        rounds._check_sampling(url, "m", ADMIN)  # a typed URL: not the configured one
        rounds._check_sampling(url, "m", ADMIN, "sk-typed")
        rounds._save_sampling("openai", url, "m", None, ADMIN)
        rounds._check_sampling(url, "m", ADMIN)  # the saved URL gets the configured key
    finally:
        httpd.shutdown()
    assert seen == [None, "Bearer sk-typed", "Bearer sk-stored"]
