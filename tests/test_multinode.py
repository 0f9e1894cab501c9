"""Training through ``accelerate launch`` with a generated config: 2 CPU ranks (gloo), and two "machines".

The same code path as a multi-machine run: ``training.launch`` writes the accelerate config
(num_machines, machine_rank, main_process_ip, main_process_port) and starts ``accelerate launch``,
which starts the ranks; rank 0 writes the model. The two-machine test runs machine rank 0 and machine
rank 1 as two commands on 127.0.0.1, as two hosts would with a shared output directory.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from dataclasses import asdict

import pytest
import torch
from safetensors.torch import load_file
from test_deepspeed import ITEMS, generates

from alt_engine.db import Feedback, Generation, ModelVersion, Prompt, Task, select, session_scope
from alt_engine.pool import PoolItem
from alt_engine.settings import Settings
from alt_engine.training.config import AltTrainConfig
from alt_engine.training.launch import accelerate_config, launcher_command
from alt_engine.versions import train_model_version

# several training ranks, each spinning on its collectives: they run alone, after the parallel part of
# `make test`
pytestmark = pytest.mark.serial


def seed_feedback(db) -> list[PoolItem]:
    with session_scope(db) as s:
        task = Task(name="t", categories=["Excellent", "Horrible"])
        s.add(task)
        s.flush()
        for item in ITEMS:
            s.add(p := Prompt(task_id=task.id, text=item.prompt))
            s.flush()
            s.add(g := Generation(prompt_id=p.id, response=item.response))
            s.flush()
            s.add(f := Feedback(generation_id=g.id, source="rule:test", category=item.feedback))
            s.flush()
            item.feedback_id = f.id
    return list(ITEMS)


@pytest.mark.slow
def test_version_trained_through_accelerate_launch_loads_and_generates(db, tmp_path, tiny_model_dir):
    with session_scope(db) as s:
        s.add(base := ModelVersion(name="v0-base", path=tiny_model_dir, status="served"))
        s.flush()
        base_id = base.id
    items = seed_feedback(db)
    config = AltTrainConfig(launcher="accelerate", deepspeed="zero2", num_procs=2, batch_size=4, epochs=1,
                            learning_rate=1e-3, warmup_ratio=0, report_to="none")
    seen = []
    version_id = train_model_version(db, Settings(db=db, models_dir=str(tmp_path / "models")), items, config,
                                     base_id, progress=lambda f, logs: seen.append(f))
    with session_scope(db) as s:
        version = s.exec(select(ModelVersion).where(ModelVersion.id == version_id)).one()
    assert version.status == "ready" and version.metrics["steps"] == 2  # 16 examples / (4 per rank x 2 ranks)
    assert version.hyperparameters["launcher"] == "accelerate" and seen and seen[-1] == 1.0
    generated = json.loads((tmp_path / "models" / version.name / "accelerate_config.machine0.json").read_text())
    assert generated["num_processes"] == 2 and generated["distributed_type"] == "DEEPSPEED"
    before, after = load_file(f"{tiny_model_dir}/model.safetensors"), load_file(f"{version.path}/model.safetensors")
    assert any(not torch.equal(before[k], after[k]) for k in before)  # it trained
    assert len(generates(version.path)) == 2  # the version loads and generates


@pytest.mark.slow
def test_two_machines_one_rank_each(tmp_path, tiny_model_dir):
    """``--num_machines 2``: machine 0 and machine 1 run the same command with their own rank."""
    from conftest import free_port

    items = tmp_path / "items.json"  # on the storage both machines share
    items.write_text(json.dumps([asdict(i) for i in ITEMS]))
    out, port = tmp_path / "out", free_port()
    base = [sys.executable, "-m", "alt_engine.training.rank", "--model", tiny_model_dir, "--items", str(items),
            "--output", str(out), "--launcher", "accelerate", "--deepspeed", "zero2", "--num_procs", "1",
            "--num_machines", "2", "--main_process_ip", "127.0.0.1", "--main_process_port", str(port),
            "--batch_size", "4", "--epochs", "1", "--learning_rate", "1e-3", "--warmup_ratio", "0",
            "--report_to", "none"]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    worker = subprocess.Popen([*base, "--machine_rank", "1"], env=env,
                              stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    main = subprocess.run([*base, "--machine_rank", "0"], env=env, capture_output=True, text=True, timeout=400)
    worker_log = worker.communicate(timeout=120)[0]
    assert main.returncode == 0, main.stdout[-3000:] + main.stderr[-3000:]
    assert worker.returncode == 0, worker_log[-3000:]
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["steps"] == 2  # 16 examples / (4 per rank x 2 ranks on 2 machines)
    for rank in (0, 1):
        assert json.loads((out / f"accelerate_config.machine{rank}.json").read_text())["machine_rank"] == rank
    assert len(generates(str(out))) == 2


def test_generated_configs_and_commands(tmp_path):
    config = AltTrainConfig(launcher="accelerate", deepspeed="zero2", num_procs=4, num_machines=2, machine_rank=1,
                            main_process_ip="10.0.0.1")
    cfg = accelerate_config(config, 29500)
    assert (cfg["num_processes"], cfg["num_machines"], cfg["machine_rank"]) == (8, 2, 1)
    assert cfg["main_process_ip"] == "10.0.0.1"
    assert cfg["deepspeed_config"]["deepspeed_config_file"].endswith("zero2.json")
    cmd = launcher_command(config, tmp_path, ["--model", "m"])
    written = tmp_path / "accelerate_config.machine1.json"
    assert cmd[1:5] == ["-m", "accelerate.commands.launch", "--config_file", str(written)]
    assert json.loads(written.read_text())["main_process_port"] == 29500
    hostfile = tmp_path / "hostfile"
    hostfile.write_text("node1 slots=8\nnode2 slots=8\n")
    ds = launcher_command(AltTrainConfig(deepspeed="zero2", hostfile=str(hostfile), main_process_ip="node1"),
                          tmp_path, ["--model", "m"])
    assert ds[ds.index("--hostfile") + 1] == str(hostfile) and ds[ds.index("--master_addr") + 1] == "node1"
    own = tmp_path / "fsdp.yaml"
    own.write_text("distributed_type: FSDP\n")
    mine = launcher_command(AltTrainConfig(launcher="accelerate", accelerate_config=str(own), num_procs=2),
                            tmp_path, [])
    assert mine[mine.index("--config_file") + 1] == str(own)  # the user's own config (FSDP) is used as is
    with pytest.raises(ValueError, match="machine_rank"):
        AltTrainConfig(launcher="accelerate", deepspeed="zero2", num_machines=2, machine_rank=2)
    with pytest.raises(ValueError, match="hostfile"):
        AltTrainConfig(deepspeed="zero2", num_machines=2)
    with pytest.raises(ValueError, match="accelerate_config"):
        AltTrainConfig(launcher="accelerate", num_procs=2)
