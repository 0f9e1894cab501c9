"""Console · Tasks: the feedback schema (ordered categories, exemplar, which fields annotators get),
guidelines (shown rendered, safely), overlap k, the conditioning format and SteerLM's category → attribute
string mapping; duplicate a built-in task."""

from __future__ import annotations

import gradio as gr
from sqlmodel import select

from alt_engine.conditioning import PLACEMENTS, Format, attribute_lines, parse_attributes
from alt_engine.db import Placement, Task, session_scope
from alt_engine.queue_order import STRATEGIES
from alt_engine.reports import TaskSpec, duplicate_task, save_task
from alt_engine.tasks import BUILTIN_TASKS

from .base import ConsoleTab

COLUMNS = ["name", "categories", "exemplar", "overlap_k", "free_text", "critique", "judgment", "conditioning",
           "attributes", "queue"]


def safe_markdown(text: str) -> str:
    """Guidelines for display, as the Annotate tab shows them (raw HTML escaped, images as links; the Markdown
    components showing them have math off)."""
    from ..annotate import guidelines_markdown

    return guidelines_markdown(text)


class TasksTab(ConsoleTab):
    title = "Tasks"

    def table(self):
        with session_scope(self.db) as s:
            rows = [dict(name=t.name, categories=" > ".join(t.categories), exemplar=t.exemplar_category,
                         overlap_k=t.annotations_per_item, free_text=t.allow_free_text, critique=t.allow_critique,
                         judgment=t.allow_judgment, conditioning=Format.from_dict(t.conditioning).placement,
                         attributes="; ".join(f"{c} → {a}" for c, a in Format.from_dict(t.conditioning)
                                              .attributes.items()), queue=t.queue_strategy)
                    for t in s.exec(select(Task).order_by(Task.id))]
        return self.frame(rows, COLUMNS)

    def _load_task(self, name, request: gr.Request):
        self.auth.require_admin(request)
        with session_scope(self.db) as s:
            t = s.exec(select(Task).where(Task.name == name)).first()
        if t is None:
            raise self.error(ValueError(f"no task {name!r}"))
        fmt = Format.from_dict(t.conditioning)
        return (t.name, "\n".join(t.categories), t.exemplar or "", t.allow_free_text, t.allow_critique,
                t.allow_judgment, t.annotations_per_item, t.guidelines, fmt.placement, fmt.template,
                attribute_lines(fmt.attributes), t.queue_strategy, safe_markdown(t.guidelines))

    def _save(self, name, categories, exemplar, free_text, critique, judgment, k, guidelines, placement, template,
              attributes, request: gr.Request, queue: str | None = None):
        self.auth.require_admin(request)
        try:
            cats = [c.strip() for c in (categories or "").splitlines() if c.strip()]
            fmt = Format(placement or "system", template or "Feedback: {feedback}",
                         attributes=parse_attributes(attributes, cats))
            spec = TaskSpec(name=(name or "").strip(), categories=cats, exemplar=(exemplar or "").strip() or None,
                            allow_free_text=bool(free_text), allow_critique=bool(critique),
                            allow_judgment=bool(judgment), annotations_per_item=int(k or 1),
                            guidelines=guidelines or "",
                            conditioning=fmt.to_dict() if placement != Placement.TOKENS else None,
                            queue_strategy=queue or None)
            task = save_task(self.db, spec)
        except ValueError as e:
            raise self.error(e) from e
        names = self.task_names()
        return (self.table(), f"Saved task **{task.name}**.", safe_markdown(task.guidelines),
                gr.update(choices=names, value=task.name))

    def _duplicate(self, source, new_name, request: gr.Request):
        self.auth.require_admin(request)
        try:
            task = duplicate_task(self.db, source, new_name)
        except ValueError as e:
            raise self.error(e) from e
        names = self.task_names()
        return self.table(), f"Created **{task.name}** from {source}.", gr.update(choices=names, value=task.name)

    def _preview(self, guidelines, request: gr.Request):
        self.auth.require_admin(request)
        return safe_markdown(guidelines)

    def build_ui(self) -> None:
        table = gr.Dataframe(label="Tasks", interactive=False, elem_id="console-tasks-table")
        with gr.Row():
            pick = gr.Dropdown(label="Edit task", choices=[], elem_id="console-task-pick")
            load = gr.Button("Load", size="sm")
        with gr.Row():
            name = gr.Textbox(label="Name", elem_id="console-task-name")
            k = gr.Number(label="Overlap k (people per item)", value=1, precision=0, minimum=1, maximum=20,
                          elem_id="console-task-k")
            exemplar = gr.Textbox(label="Exemplar (empty: the first category)", elem_id="console-task-exemplar")
        categories = gr.Textbox(label="Categories, best first, one per line", lines=5,
                                elem_id="console-task-categories")
        with gr.Row():
            free_text = gr.Checkbox(label="Free text allowed", value=True, elem_id="console-task-free-text")
            critique = gr.Checkbox(label="Critique & revision fields", value=True, elem_id="console-task-critique")
            judgment = gr.Checkbox(label="Judgment field", value=True, elem_id="console-task-judgment")
        with gr.Row():
            placement = gr.Dropdown(label="Conditioning placement",
                                    choices=[p for p in PLACEMENTS if p != Placement.TOKENS], value="system")
            template = gr.Textbox(label="Conditioning template", value="Feedback: {feedback}")
        attributes = gr.Textbox(label="SteerLM attributes: 'category = attribute string' per line (e.g. Harmless and "
                                      "very helpful = harmful:0,helpful:2); empty: quality:K-1 … quality:0",
                                lines=3, elem_id="console-task-attributes")
        queue = gr.Dropdown(label="Queue order: which item annotators get next (fixed = generation order; the "
                                  "Queue tab shows why)", choices=list(STRATEGIES), value="fixed",
                            allow_custom_value=True, elem_id="console-task-queue")
        with gr.Row():
            guidelines = gr.Textbox(label="Guidelines (Markdown; no HTML, images or math)", lines=6, scale=1)
            preview = gr.Markdown(label="Preview", elem_id="console-task-preview", latex_delimiters=[])
        save = gr.Button("Save task", variant="primary", elem_id="console-task-save")
        message = gr.Markdown(elem_id="console-task-message", latex_delimiters=[])
        with gr.Row():
            source = gr.Dropdown(label="Duplicate", choices=sorted(BUILTIN_TASKS), value="default")
            new_name = gr.Textbox(label="as", elem_id="console-task-dup-name")
            dup = gr.Button("Duplicate", size="sm", elem_id="console-task-dup")

        form = [name, categories, exemplar, free_text, critique, judgment, k, guidelines, placement, template,
                attributes, queue]
        load.click(self._load_task, [pick], [*form, preview], api_name="admin_task_load")
        self.task_events = [self.click(save, self._save, form, [table, message, preview, pick], message,
                                       api_name="admin_task_save"),
                            self.click(dup, self._duplicate, [source, new_name], [table, message, pick], message,
                                       api_name="admin_task_duplicate")]
        guidelines.change(self._preview, [guidelines], [preview], api_name="admin_task_preview",
                          show_progress="hidden")
        self.table_out, self.pick = table, pick
        self.load_outputs = [table, pick]

    def page_load(self):
        names = self.task_names()
        return {self.table_out: self.table(), self.pick: gr.update(choices=names, value=names[0] if names else None)}
