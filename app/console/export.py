"""Console · Export: every export ``alt export`` writes — annotations with provenance (CSV / JSONL / parquet /
a ``datasets`` folder), TRL's SFT / DPO / KTO datasets, a round's snapshot — as a file to download, optionally
pushed to a Hugging Face Hub dataset repo. The same engine call as the CLI (``export.export_to``)."""

from __future__ import annotations

import re
import shutil
import tempfile
from pathlib import Path

import gradio as gr
from sqlmodel import select

from alt_engine import export
from alt_engine.db import ModelVersion, session_scope

from .base import ConsoleTab

KIND_HELP = {
    "annotations": "every feedback row with its provenance",
    "sft": "conditional SFT, prompt/completion conditioned as training conditions it",
    "dpo": "preference pairs (prompt/chosen/rejected) from the category order",
    "kto": "unpaired prompt/completion/label",
    "snapshot": "one round's rows, training config and parent version (a zip)",
}


EXPORT_PREFIX = "alt-export-"  # every export's file name: Gradio's cache serves these to admins only (app/server.py)
_UNSAFE = re.compile(r"[^A-Za-z0-9._-]+")


def safe_name(text: str) -> str:
    """``text`` as one safe file-name part: no separators, no leading dots (a task named ``../../x`` stays inside
    the export folder)."""
    return _UNSAFE.sub("_", text).strip("._")[:80] or "task"


def parse_rounds(text: str | None) -> list[int] | None:
    """"1, 3" → [1, 3]; empty → None (every round, or the data pool's own choice for SFT)."""
    parts = [p for p in (text or "").replace(",", " ").split() if p]
    try:
        return [int(p) for p in parts] or None
    except ValueError as e:
        raise ValueError(f"rounds: give round numbers such as 1, 2 (not {text!r})") from e


class ExportTab(ConsoleTab):
    title = "Export"

    def _export(self, kind, fmt, task, rounds, version, push, repo, request: gr.Request):
        self.auth.require_admin(request)
        if kind not in export.KINDS:
            raise self.error(ValueError(f"choose what to export ({' | '.join(export.KINDS)})"))
        fmt = fmt or "jsonl"
        try:
            round_list = parse_rounds(rounds)
            if fmt not in export.FORMATS:
                raise ValueError(f"unknown format {fmt!r} ({' | '.join(export.FORMATS)})")
        except ValueError as e:
            raise self.error(e) from e
        folder = kind == "snapshot" or fmt == "datasets"
        stem = EXPORT_PREFIX + "-".join([safe_name(task) if task else "all-tasks", kind,
                                         *(f"r{n}" for n in round_list or [])])
        out = Path(tempfile.mkdtemp(prefix="alt-export-")) / (stem if folder else f"{stem}.{fmt}")
        hub_repo = ((repo or "").strip() or None) if push else None
        if push and hub_repo is None:
            hub_repo = ""  # the settings' repo (an error if none is set)
        message = ""
        try:
            message = export.export_to(self.settings, kind, out, None if kind == "snapshot" else fmt, task or None,
                                       round_list, version or None, push_to_hub=hub_repo)
        except export.HubError as e:  # the file is written; only the push failed
            message = f"Exported, but **not pushed to the Hub**: {e}"
        except (ValueError, FileNotFoundError) as e:
            raise self.error(e) from e
        if not out.exists():
            raise self.error(ValueError("nothing was written"))
        path = shutil.make_archive(str(out), "zip", out) if folder else str(out)
        return path, message.replace(str(out.parent) + "/", "")

    def _versions(self) -> list[str]:
        with session_scope(self.db) as s:
            return [v.name for v in s.exec(select(ModelVersion).order_by(ModelVersion.id.desc()))]

    def _refresh(self, request: gr.Request):
        self.auth.require_admin(request)
        return self._pickers()

    def _pickers(self) -> tuple:
        return (gr.update(choices=["", *self.task_names()]), gr.update(choices=["", *self._versions()]))

    def build_ui(self) -> None:
        gr.Markdown("**Export** (the same as `alt export`): "
                    + "; ".join(f"`{k}`: {h}" for k, h in KIND_HELP.items()) + ". A `datasets` folder and a "
                    "snapshot come as a zip.")
        with gr.Row():
            kind = gr.Dropdown(label="What", choices=list(export.KINDS), value="annotations",
                               elem_id="console-export-kind")
            fmt = gr.Dropdown(label="Format", choices=list(export.FORMATS), value="jsonl",
                              elem_id="console-export-format")
            task = gr.Dropdown(label="Task (empty: all; SFT/DPO/KTO/snapshot need one when there are several)",
                               choices=[""], value="", allow_custom_value=True, elem_id="console-export-task")
            rounds = gr.Textbox(label="Rounds (e.g. 1, 2; empty: all — a snapshot needs one)",
                                elem_id="console-export-rounds")
            version = gr.Dropdown(label="Version whose tokenizer and format build SFT prompts (empty: served)",
                                  choices=[""], value="", allow_custom_value=True,
                                  elem_id="console-export-version")
        with gr.Row():
            push = gr.Checkbox(label="Also push to the Hugging Face Hub", value=False, elem_id="console-export-push")
            repo = gr.Textbox(label="Hub dataset repo (empty: ALT_HUB_REPO); token: ALT_HUB_TOKEN or HF_TOKEN",
                              value=self.settings.hub_repo, elem_id="console-export-repo")
            go = gr.Button("Export", variant="primary", elem_id="console-export")
            refresh = gr.Button("Refresh lists", size="sm")
        file = gr.File(label="Download", interactive=False, elem_id="console-export-file")
        message = gr.Markdown(elem_id="console-export-message", latex_delimiters=[])
        go.click(self._export, [kind, fmt, task, rounds, version, push, repo], [file, message],
                 api_name="admin_export")
        refresh.click(self._refresh, None, [task, version], api_name="admin_export_lists")
        self.task_pick, self.version_pick = task, version
        self.load_outputs = [task, version]

    def page_load(self):
        tasks, versions = self._pickers()
        return {self.task_pick: tasks, self.version_pick: versions}
