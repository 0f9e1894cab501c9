"""What the console's tabs share: ``ConsoleTab`` (settings, auth, the model hub, error and table helpers), the
page header, and model text shown exactly as written."""

from __future__ import annotations

import functools
import html

import gradio as gr
import pandas as pd

from alt_engine.settings import Settings

from ..auth import Auth
from ..textview import visible, visible_cells


class Refusal(gr.Error):
    """A refused action (bad input, nothing to train on ...): its message says the cause and the fix."""


def refusal_markdown(message: str) -> str:
    """A refusal as the page shows it, in the form's message area (escaped: it may quote user text)."""
    return f'<div class="alt-refusal" role="alert"><b>Refused:</b> {html.escape(message)}</div>'


def refusable(fn, outputs: list, message):
    """``fn`` as an event handler whose refusal stays on the page: ``message`` (one of ``outputs``) shows it and
    every other output keeps its value (no error badge over a table), besides a warning toast. Sign-in and role
    errors are not refusals: they stay errors (tests/test_console_auth.py)."""
    slot = outputs.index(message)

    @functools.wraps(fn)
    def handler(*args, **kwargs):
        try:
            return fn(*args, **kwargs)
        except Refusal as e:
            gr.Warning(e.message)
            out = [gr.update() for _ in outputs]
            out[slot] = refusal_markdown(e.message)
            return out[0] if len(out) == 1 else tuple(out)

    return handler


class ConsoleTab:
    """Shared by the console's tabs: settings, auth, the model hub, error and table helpers."""

    def __init__(self, settings: Settings, auth: Auth, hub=None):
        self.settings, self.db, self.auth, self.hub = settings, settings.db, auth, hub

    @staticmethod
    def error(e: Exception) -> Refusal:
        """A refused action: shown in the form's message area (``refusable``) and as a toast; the form's inputs and
        tables stay as they were."""
        return Refusal(str(e), print_exception=False)

    def click(self, button, fn, inputs, outputs: list, message, **kw):
        """``button.click`` with ``fn``'s refusals shown in ``message`` (``refusable``)."""
        return button.click(refusable(fn, outputs, message), inputs, outputs, **kw)

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

    def open_pickers(self, request: gr.Request, *chosen):
        """This tab's task dropdowns, refreshed as the tab opens: each keeps its task if that still exists, else
        takes the newest task with prompts. Updates sent to a tab before it first mounts do not reach it (Gradio
        6.31 mounts it with what the page load gave it), so a task created since the page loaded shows up here."""
        self.auth.require_admin(request)
        names = self.task_names()
        fallback = default_task(self.db, names)
        updates = [gr.update(choices=names, value=c if c in names else fallback) for c in chosen]
        return updates if len(updates) != 1 else updates[0]

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


def default_task(db: str, names: list[str]) -> str | None:
    """The task a round form opens on: the newest task with train prompts (a demo just started), else the first."""
    from sqlmodel import select

    from alt_engine.db import Prompt, Task, session_scope

    with session_scope(db) as s:
        ids = set(s.exec(select(Prompt.task_id).where(Prompt.split == "train").distinct()))
        with_prompts = [t.name for t in s.exec(select(Task).order_by(Task.id.desc())) if t.id in ids]
    return with_prompts[0] if with_prompts else (names[0] if names else None)


def text_block(text: str) -> str:
    """Model or user text as HTML that shows it exactly as written (no markup, no math, no remote fetch)."""
    return f'<pre style="white-space: pre-wrap; margin: 0">{html.escape(visible(text or ""))}</pre>'
