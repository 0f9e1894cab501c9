"""The admin console: the loop run from the browser. One module per tab (Tasks, Data, Rounds, Training,
Jobs, Models, Export), each a class with ``build_ui()`` and handlers that call ``alt_engine``.

Every handler checks the role on the server first (``self.auth.require_admin(request)``): Gradio exposes
each event as an HTTP endpoint, and tests/test_console_auth.py calls every one as an annotator and as an
anonymous client. Long work (sampling, feedback, training, evaluation) is queued as a job
(``alt_engine.jobs``) and runs in the worker, never in the web request.
"""

from __future__ import annotations

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

    def job_settings(self) -> dict:
        """The settings a job started here runs with: the app's, with what an admin stored in the console."""
        from alt_engine.jobs import job_settings

        return job_settings(self.settings.with_stored())

    def task_names(self) -> list[str]:
        from alt_engine.annotation import task_names

        return task_names(self.db)


def text_block(text: str) -> str:
    """Model or user text as HTML that shows it exactly as written (no markup, no math, no remote fetch)."""
    return f'<pre style="white-space: pre-wrap; margin: 0">{html.escape(text or "")}</pre>'


def build_console(settings: Settings, auth: Auth, hub=None) -> list:
    """Lay out the console's tabs (inside the Admin tab); returns the components ``page_load`` fills."""
    from .data import DataTab
    from .export import ExportTab
    from .jobs import JobsTab
    from .models import ModelsTab
    from .rounds import RoundsTab
    from .tasks import TasksTab
    from .training import TrainingTab

    tabs = [TasksTab(settings, auth, hub), DataTab(settings, auth, hub), RoundsTab(settings, auth, hub),
            TrainingTab(settings, auth, hub), JobsTab(settings, auth, hub), ModelsTab(settings, auth, hub),
            ExportTab(settings, auth, hub)]
    for tab in tabs:
        with gr.Tab(tab.title, elem_id=f"console-{tab.title.lower()}"):
            tab.build_ui()
    return tabs


__all__ = ["ConsoleTab", "build_console", "text_block"]
