"""The admin console: the loop run from the browser. One module per tab (Tasks, Data, Rounds, Training,
Jobs, Models, Export, Queue), each a class with ``build_ui()`` and handlers that call ``alt_engine``.

Every handler checks the role on the server first (``self.auth.require_admin(request)``): Gradio exposes
each event as an HTTP endpoint, and tests/test_console_auth.py calls every one as an annotator and as an
anonymous client. Long work (sampling, feedback, training, evaluation) is queued as a job
(``alt_engine.jobs``) and runs in the worker, never in the web request.
"""

from __future__ import annotations

import contextlib

import gradio as gr

from alt_engine.settings import Settings

from ..auth import Auth
from .base import ConsoleTab, default_task, header_markdown, refusable, text_block  # noqa: F401  (shared pieces)


def build_console(settings: Settings, auth: Auth, hub=None, header: gr.Markdown | None = None,
                  tabs_block: gr.Tabs | None = None, clock: gr.Timer | None = None) -> list:
    """Lay out the console's tabs (inside the Admin tab); returns the tabs (``page_load`` fills their
    ``load_outputs``). ``header``: the page's header, which promote and roll back update; ``tabs_block``: the
    ``gr.Tabs`` they are laid out in (opened by the caller, who may add tabs of its own), else one of their own;
    ``clock``: the 2-second ``gr.Timer`` behind the jobs table and the round's stage bar. It must sit outside every
    tab: Gradio mounts a tab's components only once the tab is opened, and a timer that is not mounted never ticks
    (a new admin lands on Admin → Start, so a timer in the Jobs tab stayed silent until Jobs was clicked)."""
    from .data import DataTab
    from .export import ExportTab
    from .jobs import JobsTab
    from .models import ModelsTab
    from .queue import QueueTab
    from .rounds import RoundsTab
    from .start import StartTab
    from .tasks import TasksTab
    from .training import TrainingTab

    start, tasks, data, rounds, training, jobs, models, export, queue = (
        cls(settings, auth, hub) for cls in (StartTab, TasksTab, DataTab, RoundsTab, TrainingTab, JobsTab, ModelsTab,
                                             ExportTab, QueueTab))
    jobs.timer = clock
    tabs = [tasks, data, rounds, training, jobs, models, export, queue, start]
    with contextlib.nullcontext(tabs_block) if tabs_block is not None else gr.Tabs() as console_tabs:
        for tab in [start, *tabs[:-1]]:  # Start first: the page a new admin reads
            with gr.Tab(tab.title, id=f"console-{tab.title.lower()}", elem_id=f"console-tab-{tab.title.lower()}") as t:
                tab.build_ui()
            if tab.select_outputs:  # what the tab refreshes when it is opened
                t.select(tab.on_select, None, tab.select_outputs, api_visibility="private",
                         show_progress="hidden")
            if tab.task_pickers:  # and its task dropdowns (a task made in another tab since the page loaded)
                t.select(tab.open_pickers, tab.task_pickers, tab.task_pickers, api_visibility="private",
                         show_progress="hidden")
    header = header if header is not None else gr.Markdown(visible=False)
    models.wire(header, console_tabs, jobs)
    start.task_events = start.wire(console_tabs, rounds.round_task)
    jobs.timer.tick(rounds._round_tick, None, [rounds.round_progress, header], api_name="admin_round_tick",
                    show_progress="hidden")  # a round's stages (and the served model), on the console's clock
    pickers = [p for tab in tabs for p in tab.task_pickers]

    def task_choices(request: gr.Request):
        """A task saved or duplicated in Tasks is at once in every tab's task dropdown (values kept)."""
        auth.require_admin(request)
        return [gr.update(choices=tasks.task_names())] * len(pickers)

    for event in (e for tab in tabs for e in tab.task_events):
        event.success(task_choices, None, pickers, api_visibility="private", show_progress="hidden")
    return tabs


__all__ = ["ConsoleTab", "Refusal", "build_console", "default_task", "refusable", "text_block"]
