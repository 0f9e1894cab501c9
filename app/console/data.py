"""Console · Data: upload prompts (CSV / JSONL / parquet; a bad file names its line and imports nothing),
browse and filter prompts, generations and feedback (model text shown as text), delete an unused prompt set."""

from __future__ import annotations

from pathlib import Path

import gradio as gr

from alt_engine import reports
from alt_engine.prompts import import_prompts

from .base import ConsoleTab

SETS = ["task", "source", "prompts", "train", "probe", "used"]
VIEWS = {
    "prompts": ["id", "task", "split", "source", "prompt"],
    "generations": ["id", "task", "round", "state", "flagged", "feedback", "conditioning", "prompt", "response",
                    "truncated"],
    "feedback": ["id", "task", "round", "generation", "source", "kind", "category", "text", "created"],
}


def uploaded(path: str) -> bool:
    """Whether ``path`` is a file Gradio received as an upload (inside its upload folder), not any server path a
    client names."""
    from gradio.utils import get_upload_folder

    try:
        return Path(path).resolve().is_relative_to(Path(get_upload_folder()).resolve()) and Path(path).is_file()
    except (OSError, ValueError):
        return False


class DataTab(ConsoleTab):
    title = "Data"

    def sets(self):
        return self.frame(reports.prompt_sets(self.db), SETS)

    def _upload(self, file, task, split, request: gr.Request):
        self.auth.require_admin(request)
        if not file:
            raise self.error(ValueError("choose a file first"))
        if not task:
            raise self.error(ValueError("choose the task the prompts are for"))
        path = file if isinstance(file, str) else getattr(file, "name", str(file))
        if not uploaded(path):
            raise self.error(ValueError("import a file uploaded here (choose it in the Prompt file box); "
                                        "server paths are imported with `alt prompts import`"))
        try:
            report = import_prompts(self.db, path, task, split=split or None)
        except ValueError as e:  # ImportError_: names the file, the line and the problem; nothing was imported
            return self.sets(), gr.update(value=f"Nothing imported.\n{e}", visible=True), ""
        return self.sets(), gr.update(value="", visible=False), f"{report} (from {Path(path).name})"

    def _builtin(self, name, request: gr.Request):
        """A demo task's shipped prompt set into the task of that name (created if new): ``alt prompts import
        --builtin NAME``."""
        self.auth.require_admin(request)
        from alt_engine.prompts import import_builtin
        from alt_engine.tasks import DEMOS

        if name not in DEMOS:
            raise self.error(ValueError(f"choose a built-in prompt set ({', '.join(DEMOS)})"))
        report = import_builtin(self.db, name)
        return self.sets(), f"{report} (the built-in {name} set; feedback for it: `{DEMOS[name].provider}`)"

    def _browse(self, view, task, round_number, state, source, category, request: gr.Request):
        self.auth.require_admin(request)
        rnd = int(round_number) if round_number else None
        if view == "prompts":
            rows = reports.browse_prompts(self.db, task or None, split=state or None, source=source or None)
        elif view == "generations":
            rows = reports.browse_generations(self.db, task or None, rnd, state or None)
        else:
            rows = reports.browse_feedback(self.db, task or None, rnd, source or None, category or None)
        return self.frame(rows, VIEWS[view])

    def _delete(self, task, source, request: gr.Request):
        self.auth.require_admin(request)
        try:
            n = reports.delete_prompt_set(self.db, task, (source or "").strip())
        except ValueError as e:
            raise self.error(e) from e
        return self.sets(), f"Deleted {n} prompts of {source}."

    def build_ui(self) -> None:
        gr.Markdown("**Upload prompts** — CSV, JSONL or parquet with a `prompt` (text) or `messages` (chat) "
                    "column; optional `split` (train / probe). A file with any bad row imports nothing.")
        with gr.Row():
            file = gr.File(label="Prompt file", file_types=[".csv", ".jsonl", ".ndjson", ".parquet"], type="filepath",
                           elem_id="console-upload-file")
            with gr.Column():
                task = gr.Dropdown(label="Task", choices=[], elem_id="console-upload-task")
                split = gr.Dropdown(label="Split (empty: from the file, else a held-out probe share)",
                                    choices=["", "train", "probe"], value="")
                upload = gr.Button("Import", variant="primary", elem_id="console-upload")
        with gr.Row():
            from alt_engine.tasks import DEMOS

            builtin = gr.Dropdown(label="… or a built-in prompt set (into the demo task of that name)",
                                  choices=list(DEMOS), value=next(iter(DEMOS)), elem_id="console-builtin-set")
            builtin_go = gr.Button("Import built-in set", elem_id="console-builtin-import")
        errors = gr.Textbox(label="Import error", visible=False, interactive=False, lines=3,
                            elem_id="console-upload-error")
        message = gr.Markdown(elem_id="console-upload-message", latex_delimiters=[])
        sets = gr.Dataframe(label="Prompt sets", interactive=False, elem_id="console-prompt-sets")
        with gr.Row():
            del_task = gr.Dropdown(label="Task", choices=[])
            del_source = gr.Textbox(label="Prompt set (source file name)")
            delete = gr.Button("Delete unused set", size="sm", variant="stop")
        gr.Markdown("**Browse** (model and prompt text are shown as text)")
        with gr.Row():
            view = gr.Dropdown(label="Show", choices=list(VIEWS), value="generations", elem_id="console-browse-view")
            b_task = gr.Dropdown(label="Task", choices=[])
            b_round = gr.Number(label="Round", precision=0, value=None)
            state = gr.Dropdown(label="State / split", choices=["", "human", "ai", "unlabelled", "flagged", "train",
                                                                 "probe"], value="")
            source = gr.Textbox(label="Source (human | ai | flag | rule:… | file)")
            category = gr.Textbox(label="Category")
            go = gr.Button("Show", size="sm", elem_id="console-browse")
        table = gr.Dataframe(interactive=False, wrap=True, elem_id="console-browse-table")

        self.click(upload, self._upload, [file, task, split], [sets, errors, message], message,
                   api_name="admin_upload_prompts")
        self.task_events = [self.click(builtin_go, self._builtin, [builtin], [sets, message], message,
                                       api_name="admin_import_builtin")]
        self.click(delete, self._delete, [del_task, del_source], [sets, message], message,
                   api_name="admin_delete_prompt_set")
        go.click(self._browse, [view, b_task, b_round, state, source, category], [table], api_name="admin_browse")
        self.sets_out, self.task_pickers = sets, [task, del_task, b_task]
        self.load_outputs = [sets]  # the task dropdowns are filled as the tab opens (``open_pickers``)

    def page_load(self):
        return {self.sets_out: self.sets()}
