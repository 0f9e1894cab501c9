"""`alt --help` answers fast and no command imports torch, transformers or gradio before it needs them."""

from __future__ import annotations

import json
import subprocess
import sys
import time

import pytest

HEAVY = ("torch", "transformers", "gradio", "sqlmodel")
PROBE = f"""
import sys, json
from app.cli import main
try:
    rc = main(sys.argv[1:])
except SystemExit as e:  # --help
    rc = e.code or 0
print('LOADED ' + json.dumps([m for m in {HEAVY!r} if m in sys.modules]))
sys.exit(rc)
"""


def loaded(*argv: str, env=None) -> tuple[int, list[str], float]:
    t0 = time.perf_counter()
    out = subprocess.run([sys.executable, "-c", PROBE, *argv], capture_output=True, text=True, env=env)
    took = time.perf_counter() - t0
    line = [x for x in out.stdout.splitlines() if x.startswith("LOADED ")]
    assert line, out.stdout + out.stderr
    return out.returncode, json.loads(line[-1][7:]), took


def test_help_imports_nothing_heavy_and_is_fast():
    code, mods, took = loaded("--help")
    assert code == 0 and mods == []  # not even the database layer
    assert took < 3.0  # < 1 s on an idle machine (see README); generous here: the test machine is shared


@pytest.mark.parametrize("argv", [("status",), ("models", "list"), ("jobs", "list"), ("users", "list"),
                                  ("settings",), ("train", "--help"), ("serve", "--help")])
def test_commands_do_not_load_the_model_stack(tmp_path, monkeypatch, argv):
    monkeypatch.setenv("ALT_DB", str(tmp_path / "x.db"))
    import os

    code, mods, _ = loaded(*argv, env={**os.environ})
    assert code == 0 and "gradio" not in mods
    if argv[0] != "train":  # train's options are its config's fields: a transformers TrainingArguments (torch)
        assert "transformers" not in mods and "torch" not in mods
