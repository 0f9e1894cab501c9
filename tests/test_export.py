"""Exports round-trip: annotations re-read to the same rows; SFT prompts equal the trainer's inputs;
DPO and KTO exports load with ``datasets`` and pass TRL's own preparation and one training step."""

from __future__ import annotations

import json

import pytest

from alt_engine import conditioning, export
from alt_engine.db import Feedback, Generation, ModelVersion, Prompt, Round, session_scope
from alt_engine.tasks import get_or_create_task
from alt_engine.users import add_user

CATS = ["Excellent", "Good", "Mediocre", "Bad", "Horrible"]


def seed(db: str) -> dict:
    """Task ``default``, 4 prompts (one a chat with a system turn, one a duplicate text), 2 rounds, 3
    generations per prompt per round labelled by a rule, plus one human label over an AI one."""
    user = add_user(db, "ann", "annpass123", "annotator")
    with session_scope(db) as s:
        task = get_or_create_task(s, "default")
        base = ModelVersion(name="v0-base", path="tiny", objective="base")
        s.add(base)
        s.flush()
        prompts = [Prompt(task_id=task.id, text="Say hello."), Prompt(task_id=task.id, text="Say hello."),
                   Prompt(task_id=task.id, messages=[{"role": "system", "content": "Be brief."},
                                                     {"role": "user", "content": "Name a colour."}]),
                   Prompt(task_id=task.id, text="Count to three, please.", split="probe")]
        s.add_all(prompts)
        s.flush()
        gens = []
        for number in (1, 2):
            rnd = Round(task_id=task.id, number=number, model_version_id=base.id, status="labelling")
            s.add(rnd)
            s.flush()
            for p in prompts:
                for j in range(3):
                    g = Generation(prompt_id=p.id, round_id=rnd.id, model_version_id=base.id,
                                   response=f"answer {j} to {p.id}, round {number}" + ", more" * j,
                                   truncated=(j == 2 and p.id == prompts[0].id), conditioning="Excellent" if
                                   number == 2 else None, sampling_params={"temperature": 1.0, "n": 3}, seed=j)
                    s.add(g)
                    s.flush()
                    gens.append(g.id)
                    s.add(Feedback(generation_id=g.id, source="rule:test", category=CATS[(j * 2) % 5]))
        s.add(Feedback(generation_id=gens[0], source="human:ann", category="Horrible", user_id=user.id,
                       text="too \"quoted\", with commas\nand a newline"))
    return {"generations": gens}


@pytest.fixture
def seeded(db):
    return db, seed(db)


@pytest.mark.parametrize("fmt", ["jsonl", "csv", "parquet", "datasets"])
def test_annotations_round_trip(seeded, tmp_path, fmt):
    db, _ = seeded
    rows = export.annotation_rows(db)
    assert len(rows) == 4 * 3 * 2 + 1
    human = [r for r in rows if r["source"] == "human:ann"]
    assert human[0]["user"] == "ann" and human[0]["effective"]
    # the AI label under the human one no longer counts
    assert not next(r for r in rows if r["generation_id"] == human[0]["generation_id"] and r["source"] != "human:ann")[
        "effective"]
    chat = next(r for r in rows if r["messages"])
    assert json.loads(chat["messages"])[0] == {"role": "system", "content": "Be brief."}
    path = tmp_path / ("out" if fmt == "datasets" else f"out.{fmt}")
    assert export.export_annotations(db, path, fmt) == len(rows)
    assert export.read_annotations(path, fmt) == rows


def test_annotations_filter_by_round(seeded):
    db, _ = seeded
    rows = export.annotation_rows(db, task="default", rounds=[2])
    assert rows and {r["round"] for r in rows} == {2}
    with pytest.raises(ValueError, match="no task"):
        export.annotation_rows(db, task="nope")


def test_sft_prompt_is_what_the_trainer_sees(seeded, tiny_tokenizer):
    from alt_engine.pool import build_pool
    from alt_engine.training.config import AltTrainConfig
    from alt_engine.training.run import build_examples

    db, _ = seeded
    config = AltTrainConfig(max_prompt_tokens=512)
    for fmt in (conditioning.Format(), conditioning.Format("user", "[{feedback}]"), conditioning.PAPER_FORMAT):
        rows = export.sft_rows(db, tiny_tokenizer, "default", fmt=fmt, config=config, truncated="last")
        with session_scope(db) as s:
            task = get_or_create_task(s, "default")
        items = build_pool(db, task.id, truncated="last")
        trained = build_examples(tiny_tokenizer, items, config, fmt)
        assert len(rows) == len(trained) > 0
        for row, item, ex in zip(rows, items, trained):
            assert row["generation_id"] == item.generation_id and row["feedback"] == item.feedback
            assert row["prompt"] == tiny_tokenizer.decode(ex["input_ids"])
            assert tiny_tokenizer(row["prompt"], add_special_tokens=False)["input_ids"] == ex["input_ids"]
            assert item.feedback in row["prompt"]
        assert any(r["truncated"] for r in rows)  # truncated rows say so (no EOS in training)


def test_dpo_and_kto_rows(seeded):
    db, _ = seeded
    dpo = export.dpo_rows(db, "default", rounds=[1])
    ranks = {c: i for i, c in enumerate(CATS)}
    assert dpo and all(ranks[r["chosen_category"]] < ranks[r["rejected_category"]] for r in dpo)
    assert all(r["chosen_generation_id"] != r["rejected_generation_id"] for r in dpo)
    # the two prompts with the same text stay apart (keyed by prompt id)
    assert len({r["prompt_id"] for r in dpo}) == 4
    kto = export.kto_rows(db, "default", rounds=[1])
    assert {r["category"]: r["label"] for r in kto} == {"Excellent": True, "Horrible": False}  # Mediocre left out
    one = export.dpo_rows(db, "default", rounds=[1], max_pairs_per_prompt=1)
    assert len(one) == 4  # one pair per prompt, the widest gap; a person's label outranks the rule's
    assert (one[0]["chosen_category"], one[0]["rejected_category"]) == ("Mediocre", "Horrible")
    assert (one[1]["chosen_category"], one[1]["rejected_category"]) == ("Excellent", "Horrible")


def _one_trl_step(rows: list[dict], model_dir: str, out, config_cls, trainer_cls, batch: int):
    """Write ``rows`` as JSONL, load them with ``datasets``, let TRL's trainer prepare them and train one step on
    the tiny model (loaded from its path, as TRL loads the DPO reference model). Returns (trainer, weights before)."""
    from datasets import load_dataset
    from transformers import AutoModelForCausalLM, AutoTokenizer

    path = out / "rows.jsonl"
    export.write_rows(rows, path)
    ds = load_dataset("json", data_files=str(path), split="train")
    model, tok = AutoModelForCausalLM.from_pretrained(model_dir), AutoTokenizer.from_pretrained(model_dir)
    args = config_cls(output_dir=str(out / "run"), max_steps=1, per_device_train_batch_size=batch, report_to=[],
                      use_cpu=True, logging_steps=1, save_strategy="no", max_length=128)
    trainer = trainer_cls(model=model, args=args, train_dataset=ds, processing_class=tok)
    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    trainer.train()
    assert any("loss" in e for e in trainer.state.log_history)
    return trainer, before


@pytest.mark.slow
def test_dpo_export_trains_one_step_with_trl(seeded, tmp_path, tiny_model_dir):
    from trl import DPOConfig, DPOTrainer

    db, _ = seeded
    trainer, before = _one_trl_step(export.dpo_rows(db, "default"), tiny_model_dir, tmp_path, DPOConfig, DPOTrainer, 2)
    assert {"prompt_ids", "chosen_ids", "rejected_ids"} <= set(trainer.train_dataset.column_names)
    assert any(not (p.detach() == before[n]).all() for n, p in trainer.model.named_parameters())


@pytest.mark.slow
def test_kto_export_trains_one_step_with_trl(seeded, tmp_path, tiny_model_dir):
    from trl import KTOConfig, KTOTrainer

    db, _ = seeded
    trainer, _ = _one_trl_step(export.kto_rows(db, "default"), tiny_model_dir, tmp_path, KTOConfig, KTOTrainer, 4)
    assert {"prompt_ids", "completion_ids", "label"} <= set(trainer.train_dataset.column_names)


def test_cli_exports_and_round_snapshot(seeded, tmp_path, tiny_model_dir, capsys):
    from alt_engine.db import TrainingExample
    from alt_engine.pool import build_pool
    from app.cli import main

    db, _ = seeded
    with session_scope(db) as s:
        task = get_or_create_task(s, "default")
        base = s.exec(export.select(ModelVersion)).first()
        base.path = tiny_model_dir
        r1 = s.exec(export.select(Round).where(Round.number == 1)).first()
        child = ModelVersion(name="v1-alt", path=tiny_model_dir, parent_id=base.id, objective="alt",
                             conditioning=conditioning.Format("user").to_dict(),
                             hyperparameters={"round_id": r1.id, "learning_rate": 2e-5, "max_prompt_tokens": 512})
        s.add(child)
        s.flush()
        used = [it.feedback_id for it in build_pool(db, task.id, [r1.id])]
        s.add_all(TrainingExample(model_version_id=child.id, feedback_id=f) for f in used)
    base_args = ["--db", db, "--model", tiny_model_dir]
    assert main(["export", "annotations", str(tmp_path / "a.csv"), "--round", "2", *base_args]) == 0
    assert "12 annotation rows" in capsys.readouterr().out
    assert main(["export", "snapshot", str(tmp_path / "snap"), "--round", "1", "--version", "v1-alt",
                 *base_args]) == 0
    manifest = json.loads((tmp_path / "snap" / "snapshot.json").read_text())
    trained = manifest["trained"][0]
    assert trained["name"] == "v1-alt" and trained["parent"] == "v0-base"
    assert trained["hyperparameters"]["learning_rate"] == 2e-5 and trained["feedback_ids"] == sorted(used)
    sft = export.read_rows(tmp_path / "snap" / "sft.jsonl")
    assert sorted(r["feedback_id"] for r in sft) == sorted(used)
    assert all(r["prompt"].index(r["feedback"]) > r["prompt"].index("<|im_start|>user")  # the version's format
               for r in sft)
    assert len(export.read_annotations(tmp_path / "snap" / "annotations.jsonl")) == 13
    assert main(["export", "dpo", str(tmp_path / "d.jsonl"), "--task", "nope", *base_args]) == 1
    assert "no task 'nope'" in capsys.readouterr().err


@pytest.fixture
def hub(monkeypatch):
    """The Hub client pointed at ``ENDPOINT`` (set by the test), offline mode off."""
    from huggingface_hub import constants

    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", False)
    return lambda endpoint: monkeypatch.setattr(constants, "ENDPOINT", endpoint)


def test_push_to_hub_says_clearly_when_the_hub_cannot_be_reached(seeded, tmp_path, hub, monkeypatch):
    """The export is written, then the push fails with a message naming the cause and the local copy."""
    import socket
    import threading
    from http.server import BaseHTTPRequestHandler, HTTPServer

    from alt_engine.settings import Settings

    db, _ = seeded
    settings = Settings(db=db, hub_token="hf_test_token", hub_repo="me/alt-annotations")
    with socket.socket() as sock:  # a port nothing listens on
        sock.bind(("127.0.0.1", 0))
        closed = sock.getsockname()[1]
    hub(f"http://127.0.0.1:{closed}")
    out = tmp_path / "a.jsonl"
    with pytest.raises(export.HubError, match=r"cannot be reached.*written to .*a\.jsonl"):
        export.export_to(settings, "annotations", out, push_to_hub="")  # "": the settings' repo
    assert export.read_annotations(out) == export.annotation_rows(db)  # the local export is complete

    class Refuses(BaseHTTPRequestHandler):  # a Hub that answers, but not to this token
        def do_GET(self):
            self.send_response(401)
            self.send_header("Content-Type", "application/json")
            self.end_headers()
            self.wfile.write(b'{"error": "Invalid credentials"}')

        def log_message(self, *args):
            pass

    server = HTTPServer(("127.0.0.1", 0), Refuses)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        hub(f"http://127.0.0.1:{server.server_port}")
        with pytest.raises(export.HubError, match="token was refused"):
            export.export_to(settings, "dpo", tmp_path / "d.parquet", push_to_hub="me/dpo")
        assert len(export.read_rows(tmp_path / "d.parquet")) == len(export.dpo_rows(db))
    finally:
        server.shutdown()

    monkeypatch.setattr("huggingface_hub.get_token", lambda: None)
    with pytest.raises(export.HubError, match="no token"):
        export.export_to(Settings(db=db), "kto", tmp_path / "k.jsonl", push_to_hub="me/kto")
    from huggingface_hub import constants

    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", True)
    with pytest.raises(export.HubError, match="offline mode"):
        export.export_to(settings, "annotations", tmp_path / "b.csv", push_to_hub="me/x")
    with pytest.raises(ValueError, match="no Hub repo"):
        export.export_to(Settings(db=db), "annotations", tmp_path / "c.csv", push_to_hub="")
