"""The admin console: the loop run from the browser. One module per tab (Tasks, Data, Rounds, Training,
Jobs, Models, Export), each a class with ``build_ui()`` and handlers that call ``alt_engine``.

Every handler checks the role on the server first (``self.auth.require_admin(request)``): Gradio exposes
each event as an HTTP endpoint, and tests/test_console_auth.py calls every one as an annotator and as an
anonymous client. Long work (sampling, feedback, training, evaluation) is queued as a job
(``alt_engine.jobs``) and runs in the worker, never in the web request.
"""

from __future__ import annotations

import contextlib
import functools
import html

import gradio as gr
import pandas as pd

from alt_engine.settings import Settings

from ..auth import Auth


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
    from .rounds import RoundsTab
    from .start import StartTab
    from .tasks import TasksTab
    from .training import TrainingTab

    start = StartTab(settings, auth, hub)
    tabs = [TasksTab(settings, auth, hub), DataTab(settings, auth, hub), RoundsTab(settings, auth, hub),
            TrainingTab(settings, auth, hub), JobsTab(settings, auth, hub), ModelsTab(settings, auth, hub),
            ExportTab(settings, auth, hub), start]
    with contextlib.nullcontext(tabs_block) if tabs_block is not None else gr.Tabs() as console_tabs:
        for tab in [start, *tabs[:-1]]:  # Start first: the page a new admin reads
            with gr.Tab(tab.title, id=f"console-{tab.title.lower()}", elem_id=f"console-tab-{tab.title.lower()}") as t:
                tab.build_ui()
            if tab.select_outputs:  # what the tab refreshes when it is opened
                t.select(tab.on_select, None, tab.select_outputs, api_visibility="private", show_progress="hidden")
    models, jobs, rounds = tabs[5], tabs[4], tabs[2]
    models.wire(header if header is not None else gr.Markdown(visible=False), console_tabs, jobs)
    start.task_events = start.wire(console_tabs, rounds.round_task)
    jobs.timer.tick(rounds._round_tick, None, [rounds.round_progress], api_name="admin_round_tick",
                    show_progress="hidden")  # a round's stages, on the Jobs tab's clock
    pickers = [p for tab in tabs for p in tab.task_pickers]

    def task_choices(request: gr.Request):
        """A task saved or duplicated in Tasks is at once in every tab's task dropdown (values kept)."""
        auth.require_admin(request)
        return [gr.update(choices=tabs[0].task_names())] * len(pickers)

    for event in (e for tab in tabs for e in tab.task_events):
        event.success(task_choices, None, pickers, api_visibility="private", show_progress="hidden")
    return tabs


__all__ = ["ConsoleTab", "Refusal", "build_console", "default_task", "refusable", "text_block"]
