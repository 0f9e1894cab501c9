"""DeepSpeed ZeRO-2 on two CPU ranks (gloo), started by the DeepSpeed launcher, as a user would run it."""

from __future__ import annotations

import json
import subprocess
import sys
from dataclasses import asdict
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from alt_engine import conditioning
from alt_engine.db import ModelVersion, select, session_scope
from alt_engine.modeling import load_model, load_tokenizer
from alt_engine.pool import PoolItem
from alt_engine.sampling import SamplingParams, TransformersBackend
from alt_engine.settings import Settings
from alt_engine.training.config import AltTrainConfig
from alt_engine.versions import train_model_version

# several training ranks, each spinning on its collectives: they run alone, after the parallel part of
# `make test`
pytestmark = pytest.mark.serial

ITEMS = [PoolItem(i, i, i, f"Prompt {i}: say hello.", "Excellent" if i % 2 else "Horrible",
                  "HELLO THERE" if i % 2 else "hello there", False) for i in range(16)]


def generates(path: str) -> list[str]:
    tokenizer = load_tokenizer(path)
    backend = TransformersBackend(load_model(path, device="cpu"), tokenizer)
    inputs = [conditioning.build_input(tokenizer, "Prompt 1: say hello.", "Excellent").input_ids]
    return [s.text for s in backend.generate(inputs, SamplingParams(n=2, max_new_tokens=6))[0]]


@pytest.mark.slow
def test_launch_command_trains_on_two_cpu_ranks(tmp_path, tiny_model_dir):
    items = tmp_path / "items.json"
    items.write_text(json.dumps([asdict(i) for i in ITEMS]))
    out = tmp_path / "out"
    cmd = [sys.executable, "-m", "alt_engine.training.rank", "--model", tiny_model_dir, "--items", str(items),
           "--output", str(out), "--deepspeed", "zero2", "--num_procs", "2", "--batch_size", "4", "--epochs", "1",
           "--learning_rate", "1e-3", "--warmup_ratio", "0"]
    shm = set(Path("/dev/shm").glob("deepspeed_allreduce_buffer_*"))
    run = subprocess.run(cmd, capture_output=True, text=True, timeout=300)
    assert run.returncode == 0, run.stdout[-3000:] + run.stderr[-3000:]
    assert "world_size=2" in run.stderr or "dist_world_size=2" in run.stderr
    assert set(Path("/dev/shm").glob("deepspeed_allreduce_buffer_*")) <= shm  # its 2 x 66 MB buffers are gone
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["steps"] == 2  # 16 examples / (4 per rank x 2 ranks)
    assert metrics["tokens"] > 0 and metrics["config"]["deepspeed"].endswith("zero2.json")
    before, after = load_file(f"{tiny_model_dir}/model.safetensors"), load_file(out / "model.safetensors")
    assert any(not torch.equal(before[k], after[k]) for k in before)  # it trained
    assert len(generates(str(out))) == 2  # the output loads and generates


@pytest.mark.slow
def test_model_version_trained_with_deepspeed_lora(db, tmp_path, tiny_model_dir):
    with session_scope(db) as s:
        base = ModelVersion(name="v0-base", path=tiny_model_dir, status="served")
        s.add(base)
        s.flush()
        base_id = base.id
    from alt_engine.db import Feedback, Generation, Prompt, Task

    with session_scope(db) as s:  # real feedback rows for the provenance table
        task = Task(name="t", categories=["Excellent", "Horrible"])
        s.add(task)
        s.flush()
        for item in ITEMS:
            s.add(Prompt(id=item.prompt_id + 1, task_id=task.id, text=item.prompt))
            s.flush()
            s.add(g := Generation(id=item.generation_id + 1, prompt_id=item.prompt_id + 1, response=item.response))
            s.flush()
            s.add(Feedback(id=item.feedback_id + 1, generation_id=g.id, source="rule:test", category=item.feedback))
    items = [PoolItem(**{**asdict(i), "feedback_id": i.feedback_id + 1}) for i in ITEMS]
    seen = []
    config = AltTrainConfig(deepspeed="zero2", num_procs=2, lora=True, lora_r=4, batch_size=4, epochs=1,
                            learning_rate=1e-3, beta=0.05, report_to="none")
    version_id = train_model_version(db, Settings(db=db, models_dir=str(tmp_path / "models")), items, config,
                                     base_id, progress=lambda f, logs: seen.append((f, logs)))
    with session_scope(db) as s:
        version = s.exec(select(ModelVersion).where(ModelVersion.id == version_id)).one()
        served = s.exec(select(ModelVersion).where(ModelVersion.status == "served")).one()
    assert version.status == "ready" and served.id == base_id
    assert version.metrics["steps"] == 2 and "kl" in version.metrics  # beta > 0: reference = adapters off
    assert seen and seen[-1][0] == 1.0  # progress came back from rank 0
    assert (tmp_path / "models" / version.name / "adapter_config.json").exists()
    assert len(generates(version.path)) == 2


def test_config_round_trips_through_the_launch_command_line():
    """What ``launch`` passes to every rank parses back (HfArgumentParser) to the same config."""
    from transformers import HfArgumentParser

    from alt_engine.training.launch import LaunchArgs, config_args

    config = AltTrainConfig(deepspeed="zero2", num_procs=2, lora=True, lora_target_modules="q_proj,v_proj",
                            beta=0.05, epochs=1.5, report_to="none")
    argv = ["--model", "m", "--items", "i.json", "--output", "o", *config_args(config)]
    launch_args, parsed = HfArgumentParser((LaunchArgs, AltTrainConfig)).parse_args_into_dataclasses(args=argv)
    assert parsed == config and launch_args.model == "m"
    assert parsed.target_modules == ["q_proj", "v_proj"] and AltTrainConfig().beta is None  # None = auto


def test_bad_configs_are_refused():
    with pytest.raises(ValueError, match="needs a DeepSpeed config"):
        AltTrainConfig(num_procs=2)
    with pytest.raises(ValueError, match="not found"):
        AltTrainConfig(deepspeed="/nope.json")
    with pytest.raises(ValueError, match="merge_lora needs lora"):
        AltTrainConfig(merge_lora=True)


def test_remove_shm_buffers_takes_only_its_own_ports(tmp_path):
    import os

    from alt_engine.training.launch import remove_shm_buffers

    uid = os.getuid()
    names = [f"deepspeed_allreduce_buffer_{uid}_127.0.0.1_29500_{r}" for r in (0, 1)]
    others = [f"deepspeed_allreduce_buffer_{uid}_127.0.0.1_129500_0",
              f"deepspeed_allreduce_buffer_{uid}_10.0.0.1_29501_0"]
    for name in names + others:
        (tmp_path / name).write_bytes(b"x")
    assert sorted(remove_shm_buffers(29500, tmp_path)) == names
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted(others)
