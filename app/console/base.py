"""What the console's tabs share: ``ConsoleTab`` (settings, auth, the model hub, error and table helpers), the
page header, and model text shown exactly as written."""

from __future__ import annotations

import html

import gradio as gr
import pandas as pd

from alt_engine.settings import Settings

from ..auth import Auth
from ..textview import visible, visible_cells


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
        return pd.DataFrame([{c: visible_cells(r.get(c, "")) for c in columns} for r in rows], columns=columns)

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
    return f'<pre style="white-space: pre-wrap; margin: 0">{html.escape(visible(text or ""))}</pre>'
