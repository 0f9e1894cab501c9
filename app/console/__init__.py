"""The admin console: the loop run from the browser. One module per tab (Tasks, Data, Rounds, Training,
Jobs, Models, Export, Queue), each a class with ``build_ui()`` and handlers that call ``alt_engine``.

Every handler checks the role on the server first (``self.auth.require_admin(request)``): Gradio exposes
each event as an HTTP endpoint, and tests/test_console_auth.py calls every one as an annotator and as an
anonymous client. Long work (sampling, feedback, training, evaluation) is queued as a job
(``alt_engine.jobs``) and runs in the worker, never in the web request.
"""

from __future__ import annotations

import contextlib
import html

import gradio as gr
import pandas as pd

from alt_engine.settings import Settings

from ..auth import Auth


class ConsoleTab:
    """Shared by the console's tabs: settings, auth, the model hub, error and table helpers."""

    def __init__(self, settings: Settings, auth: Auth, hub=None):
        self.settings, self.db, self.auth, self.hub = settings, settings.db, auth, hub

    @staticmethod
    def error(e: Exception) -> gr.Error:
        """A refused action: shown as a toast; the form's inputs and tables stay as they were."""
        return gr.Error(str(e), print_exception=False)

    @staticmethod
    def frame(rows: list[dict], columns: list[str]) -> pd.DataFrame:
        return pd.DataFrame([{c: r.get(c, "") for c in columns} for r in rows], columns=columns)

    def page_load(self) -> dict:
        """Values for this tab's components when an admin opens the page."""
        return {}

    load_outputs: list = []  # the components ``page_load`` fills (set by ``build_ui``)
    task_pickers: list = []  # this tab's task dropdowns: refreshed when a task is created (``build_console``)
    task_events: list = []  # events that create a task (the Tasks tab's save and duplicate)
    select_outputs: list = []  # refreshed by ``on_select(request)`` when the tab is opened

    def job_settings(self) -> dict:
        """The settings a job started here runs with: the app's, with what an admin stored in the console."""
        from alt_engine.jobs import job_settings

        return job_settings(self.settings.with_stored())

    def task_names(self) -> list[str]:
        from alt_engine.annotation import task_names

        return task_names(self.db)


def header_markdown(db: str, user) -> str:
    """The page header: who is signed in and the served model (updated in place by promote and roll back)."""
    from alt_engine.db import session_scope
    from alt_engine.versions import served_version

    with session_scope(db) as s:
        served = served_version(s)
    return (f"Signed in as **{html.escape(user.name)}** ({user.role}) · model `{served.name if served else 'none'}` · "
            "[Sign out](/logout)")


def text_block(text: str) -> str:
    """Model or user text as HTML that shows it exactly as written (no markup, no math, no remote fetch)."""
    return f'<pre style="white-space: pre-wrap; margin: 0">{html.escape(text or "")}</pre>'


def build_console(settings: Settings, auth: Auth, hub=None, header: gr.Markdown | None = None,
                  tabs_block: gr.Tabs | None = None) -> list:
    """Lay out the console's tabs (inside the Admin tab); returns the tabs (``page_load`` fills their
    ``load_outputs``). ``header``: the page's header, which promote and roll back update; ``tabs_block``: the
    ``gr.Tabs`` they are laid out in (opened by the caller, who may add tabs of its own), else one of their own."""
    from .data import DataTab
    from .export import ExportTab
    from .jobs import JobsTab
    from .models import ModelsTab
    from .queue import QueueTab
    from .rounds import RoundsTab
    from .tasks import TasksTab
    from .training import TrainingTab

    tabs = [TasksTab(settings, auth, hub), DataTab(settings, auth, hub), RoundsTab(settings, auth, hub),
            TrainingTab(settings, auth, hub), JobsTab(settings, auth, hub), ModelsTab(settings, auth, hub),
            ExportTab(settings, auth, hub), QueueTab(settings, auth, hub)]
    with contextlib.nullcontext(tabs_block) if tabs_block is not None else gr.Tabs() as console_tabs:
        for tab in tabs:
            with gr.Tab(tab.title, id=f"console-{tab.title.lower()}", elem_id=f"console-{tab.title.lower()}") as t:
                tab.build_ui()
            if tab.select_outputs:  # what the tab refreshes when it is opened
                t.select(tab.on_select, None, tab.select_outputs, api_visibility="private", show_progress="hidden")
    models, jobs = tabs[5], tabs[4]
    models.wire(header if header is not None else gr.Markdown(visible=False), console_tabs, jobs)
    pickers = [p for tab in tabs for p in tab.task_pickers]

    def task_choices(request: gr.Request):
        """A task saved or duplicated in Tasks is at once in every tab's task dropdown (values kept)."""
        auth.require_admin(request)
        return [gr.update(choices=tabs[0].task_names())] * len(pickers)

    for event in (e for tab in tabs for e in tab.task_events):
        event.success(task_choices, None, pickers, api_visibility="private", show_progress="hidden")
    return tabs


__all__ = ["ConsoleTab", "build_console", "text_block"]
