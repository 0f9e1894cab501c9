"""The Admin tab: users, jobs with progress, inter-annotator agreement. Admins only, checked in every handler."""

from __future__ import annotations

import math

import gradio as gr
import pandas as pd

from alt_engine import annotation as ann
from alt_engine import users as users_svc
from alt_engine.agreement import agreement_report
from alt_engine.settings import Settings

from .auth import Auth


def _num(x: float) -> str:
    return "n/a" if x is None or (isinstance(x, float) and math.isnan(x)) else f"{x:.3f}"


def users_table(db: str) -> pd.DataFrame:
    rows = [dict(name=u.name, role=u.role, active=u.active) for u in users_svc.list_users(db)]
    return pd.DataFrame(rows, columns=["name", "role", "active"])


def jobs_table(db: str, limit: int = 50) -> pd.DataFrame:
    """The newest jobs (a job whose process died is marked failed first)."""
    from alt_engine.jobs import list_jobs

    cols = ["id", "kind", "status", "stage", "progress", "step", "loss", "eta", "round", "version", "message",
            "created", "finished"]
    rows = [dict(id=j.id, kind=j.kind, status=j.status, stage=j.stage, progress=f"{100 * j.progress:.0f}%",
                 step=j.step if j.step is not None else "", loss=f"{j.loss:.4f}" if j.loss is not None else "",
                 eta=f"{j.eta_s:.0f} s" if j.eta_s is not None else "", round=j.round_id or "",
                 version=j.version_id or "", message=(j.error or j.message or "").splitlines()[0][:200]
                 if (j.error or j.message) else "", created=j.created.replace("T", " ")[:19],
                 finished=j.finished[11:19]) for j in list_jobs(db, limit)]
    return pd.DataFrame(rows, columns=cols)


def task_with_data(db: str, names: list[str]) -> str | None:
    """The task Agreement opens on: the one with the most human labels (else the first)."""
    from sqlalchemy import func
    from sqlmodel import select

    from alt_engine.db import Feedback, Generation, Round, Task, session_scope

    with session_scope(db) as s:
        counts = dict(s.exec(select(Task.name, func.count(Feedback.id)).join(Round, Round.task_id == Task.id)
                             .join(Generation, Generation.round_id == Round.id)
                             .join(Feedback, Feedback.generation_id == Generation.id)
                             .where(Feedback.source.like("human:%")).group_by(Task.name)).all())
    return max(names, key=lambda n: counts.get(n, 0)) if names else None


def agreement_tables(db: str, task: str) -> tuple[str, pd.DataFrame, pd.DataFrame, pd.DataFrame]:
    r = agreement_report(db, task)
    summary = (f"**{r.task}** · items with ≥ 2 human labels: **{r.overlap_items}** · "
               f"Fleiss' κ: **{_num(r.fleiss)}**")
    counts = pd.DataFrame([dict(annotator=a, labelled=n) for a, n in r.annotators.items()],
                          columns=["annotator", "labelled"])
    pairs = pd.DataFrame([dict(a=p.a, b=p.b, shared_items=p.items, agreement=_num(p.agreement),
                               cohen_kappa=_num(p.kappa)) for p in r.pairs],
                         columns=["a", "b", "shared_items", "agreement", "cohen_kappa"])
    ai = pd.DataFrame([dict(ai_source=h.source, items=h.items, agreement=_num(h.agreement),
                            cohen_kappa=_num(h.kappa)) for h in r.human_vs_ai],
                      columns=["ai_source", "items", "agreement", "cohen_kappa"])
    return summary, counts, pairs, ai


class AdminTab:
    def __init__(self, settings: Settings, auth: Auth):
        self.db = settings.db
        self.auth = auth

    def _add_user(self, name, password, role, request: gr.Request):
        self.auth.require_admin(request)
        try:
            user = users_svc.add_user(self.db, (name or "").strip(), password or "", role or "annotator")
        except ValueError as e:
            raise gr.Error(str(e)) from e
        return users_table(self.db), f"Added {user.role} **{user.name}**.", "", ""

    def _set_active(self, name, active: bool, request: gr.Request):
        admin = self.auth.require_admin(request)
        if name == admin.name and not active:
            raise gr.Error("You cannot deactivate yourself.")
        try:
            users_svc.set_active(self.db, (name or "").strip(), active)
        except ValueError as e:
            raise gr.Error(str(e)) from e
        return users_table(self.db), f"{'Activated' if active else 'Deactivated'} **{name}**."

    def _agreement(self, task, request: gr.Request):
        self.auth.require_admin(request)
        if not task:
            raise gr.Error("Choose a task.")
        try:
            return agreement_tables(self.db, task)
        except ValueError as e:
            raise gr.Error(str(e)) from e

    def build_ui(self) -> None:
        with gr.Tab("Users"):
            users = gr.Dataframe(label="Users", interactive=False, elem_id="admin-users")
            with gr.Row():
                name = gr.Textbox(label="User name", elem_id="admin-new-name")
                password = gr.Textbox(label="Password (≥ 8 characters)", type="password", elem_id="admin-new-password")
                role = gr.Dropdown(label="Role", choices=list(users_svc.ROLES), value="annotator")
                add = gr.Button("Add user", variant="primary", elem_id="admin-add-user")
            with gr.Row():
                who = gr.Textbox(label="User name", scale=2)
                deactivate = gr.Button("Deactivate", size="sm")
                activate = gr.Button("Activate", size="sm")
            users_msg = gr.Markdown(latex_delimiters=[])
        with gr.Tab("Agreement"):
            with gr.Row():
                task = gr.Dropdown(label="Task", choices=[], elem_id="admin-agreement-task")
                compute = gr.Button("Compute agreement", variant="primary", elem_id="admin-agreement")
            summary = gr.Markdown(latex_delimiters=[])
            counts = gr.Dataframe(label="Labels per annotator", interactive=False)
            pairs = gr.Dataframe(label="Pairwise (Cohen's κ on shared items)", interactive=False)
            ai = gr.Dataframe(label="People vs AI labels (majority human label vs each AI source)", interactive=False)

        add.click(self._add_user, [name, password, role], [users, users_msg, name, password], api_name="admin_add_user")
        deactivate.click(partial_active(self, False), [who], [users, users_msg], api_name="admin_deactivate_user")
        activate.click(partial_active(self, True), [who], [users, users_msg], api_name="admin_activate_user")
        compute.click(self._agreement, [task], [summary, counts, pairs, ai], api_name="admin_agreement")
        self.load_outputs = [users, task]

    def page_load(self, user) -> tuple:
        """Values for ``load_outputs`` when the page opens: filled for admins, empty for everyone else."""
        if user is None or not user.is_admin:
            return pd.DataFrame(), gr.update(choices=[])
        names = ann.task_names(self.db)
        return users_table(self.db), gr.update(choices=names, value=task_with_data(self.db, names))


def partial_active(tab: AdminTab, active: bool):
    def handler(name, request: gr.Request):
        return tab._set_active(name, active, request)
    return handler
