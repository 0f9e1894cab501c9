"""The steering playground's engine side: which versions and feedback texts to offer, side-by-side streaming,
and turning a conversation into a prompt for the annotation queue. The app's Playground tab only lays these out.

A panel is one conversation under one (version, feedback) pair; several panels stream at once through the
model hub (``serving.hub_for``): panels on the same version meet in the same micro-batch.
"""

from __future__ import annotations

import queue
from collections.abc import Iterator
from dataclasses import dataclass, field

from sqlmodel import select

from .db import ModelVersion, Prompt, Task, VersionStatus, session_scope
from .serving import ModelServer, Usage
from .versions import served_version

NONE = "none"  # the feedback choice that means "unconditioned"


def parse_feedback(text: str | None) -> str | None:
    """The feedback to condition on: None for an empty text or "none"."""
    text = (text or "").strip()
    return None if not text or text.lower() == NONE else text


def version_names(db: str) -> tuple[list[str], str | None]:
    """Every usable version's name (newest first) and the served one's."""
    with session_scope(db) as s:
        usable = (VersionStatus.READY, VersionStatus.SERVED)
        rows = list(s.exec(select(ModelVersion).where(ModelVersion.status.in_(usable))
                           .order_by(ModelVersion.id.desc())))
        served = served_version(s)
    return [r.name for r in rows], served.name if served else None


def task_names(db: str) -> list[str]:
    with session_scope(db) as s:
        return list(s.exec(select(Task.name).order_by(Task.id)))


def feedback_choices(db: str, task: str | None) -> list[str]:
    """The task's categories best → worst — for a free-text task its exemplar pool (score-3 texts, the conditioning
    of round ≥ 2) — then "none" (any other text is typed in the same box)."""
    from .evaluation import exemplar_feedback

    with session_scope(db) as s:
        t = s.exec(select(Task).where(Task.name == task)).first() if task else None
        if t is not None:
            s.expunge(t)
    if t is not None and not t.categories:
        return [*exemplar_feedback(db, t)[:8], NONE]
    return [*(t.categories if t else []), NONE]


def negative_choices(db: str, task: str | None) -> tuple[list[str], str]:
    """What guidance may steer away from: the task's categories worst first, then "none" (the plain prompt);
    and the default, the worst category (else "none")."""
    choices = [c for c in feedback_choices(db, task) if c != NONE][::-1] + [NONE]
    return choices, choices[0]


def server_for(hub, version: str | None) -> ModelServer:
    """The hub's server for ``version`` (a name); the served one for None or an unknown-to-the-database model."""
    if not version or version == hub.served.version_name:
        return hub.served
    return hub.for_version(version)


@dataclass
class Panel:
    """One side of the comparison: a conversation under one version and one feedback text."""

    version: str | None
    feedback: str | None
    messages: list[dict] = field(default_factory=list)  # the chat so far, the new user turn last
    guidance: float = 0.0  # steering strength γ (feedback guidance, ``guidance.py``); needs ``feedback``
    negative: str | None = None  # the feedback guidance steers away from (None: the plain prompt)


@dataclass
class ModelInput:
    """What the model is given, for "show the exact model input"."""

    text: str  # the input ids decoded
    feedback_segment: str  # the feedback segment's tokens decoded ("" unconditioned)
    start: int
    end: int
    format: str  # the version's format, described

    def describe(self) -> str:
        if self.start == self.end:
            return f"unconditioned · {len(self.text)} characters"
        return f"feedback at tokens {self.start}:{self.end} · {self.format}"


def model_input(server: ModelServer, messages: list[dict], feedback: str | None) -> ModelInput:
    built, text, fmt = server.model_input(messages, feedback)
    tokenizer = server.backend.tokenizer
    return ModelInput(text, tokenizer.decode(built.input_ids[built.start:built.end]), built.start, built.end,
                      fmt.describe())


def stream_panels(hub, panels: list[Panel], max_new_tokens: int, temperature: float, top_p: float,
                  seed: int) -> Iterator[tuple[int, str, Usage | None]]:
    """Generate every panel's next reply at once: ``(panel index, new piece, None)`` as pieces come, then
    ``(panel index, "", usage)`` when that panel is done. Errors are raised after every panel finished."""
    events: queue.Queue = queue.Queue()
    futures = []
    for i, p in enumerate(panels):
        server = server_for(hub, p.version)
        guidance = p.guidance if p.feedback is not None else 0.0  # unconditioned: nothing to steer by
        future = server.submit(p.messages, p.feedback, max_new_tokens, temperature, top_p, seed,
                               on_text=lambda piece, i=i: events.put((i, piece)), guidance=guidance,
                               negative=p.negative)
        future.add_done_callback(lambda _, i=i: events.put((i, None)))
        futures.append(future)
    try:
        left = len(panels)
        while left:
            i, piece = events.get()
            if piece is not None:
                yield i, piece, None
                continue
            left -= 1
            if futures[i].exception() is None:
                yield i, "", futures[i].result()[1]
        for f in futures:
            if f.exception() is not None:
                raise f.exception()
    finally:
        for f in futures:
            f.cancel()


def revise_panels(hub, panels: list[Panel], answers: list[str], passes: int, max_new_tokens: int,
                  seed: int = 0) -> list[list]:
    """Critique-and-Revise on each panel's new answer (``ModelServer.revise``): the revision steps per panel."""
    return [server_for(hub, p.version).revise(p.messages, a, passes, 2 * max_new_tokens, seed)
            for p, a in zip(panels, answers)]


def render_revisions(steps: list) -> str:
    """The passes as plain text: each pass's critique and revision."""
    lines = []
    for i, step in enumerate(steps, 1):
        lines.append(f"Pass {i}\nCritique: {step.critique or '(none)'}\n"
                     f"Revision: {step.revision if step.revision else '(none: the answer stays)'}")
    return "\n\n".join(lines)


def render(messages: list[dict]) -> str:
    """A conversation as plain text for display."""
    names = {"user": "You", "assistant": "Model", "system": "System"}
    return "\n\n".join(f"{names.get(m['role'], m['role'])}: {m['content']}" for m in messages)


def send_to_queue(db: str, task: str, panels: list[Panel], user_name: str) -> tuple[int, int]:
    """Store a conversation as a train prompt of ``task`` (its turns up to the last user turn), and each panel's
    reply to that turn as a generation in the task's newest open round, so annotators label them next.

    Returns (prompt id, generations queued); no open round: the prompt waits for the next round's sampling."""
    from .db import Generation, Round, RoundStatus

    if not task:
        raise ValueError("choose a task first")
    messages = panels[0].messages if panels else []
    last_user = max((i for i, m in enumerate(messages) if m["role"] == "user"), default=None)
    if last_user is None:
        raise ValueError("the conversation has no user turn yet")
    chat = [{"role": m["role"], "content": m["content"]} for m in messages[:last_user + 1]]
    with session_scope(db) as s:
        t = s.exec(select(Task).where(Task.name == task)).first()
        if t is None:
            raise ValueError(f"no task {task!r}")
        prompt = Prompt(task_id=t.id, messages=chat if len(chat) > 1 else None,
                        text=chat[0]["content"] if len(chat) == 1 else None, split="train",
                        source=f"playground:{user_name}")
        s.add(prompt)
        s.flush()
        rnd = s.exec(select(Round).where(Round.task_id == t.id, Round.status.in_(RoundStatus.open()))
                     .order_by(Round.number.desc())).first()
        queued = 0
        for p in panels if rnd is not None else []:
            reply = p.messages[last_user + 1] if len(p.messages) > last_user + 1 else None
            if reply is None or reply["role"] != "assistant":
                continue
            version = s.exec(select(ModelVersion).where(ModelVersion.name == p.version)).first() if p.version else None
            s.add(Generation(prompt_id=prompt.id, round_id=rnd.id, model_version_id=version.id if version else None,
                             conditioning=p.feedback, response=reply["content"],
                             sampling_params={"source": "playground"}))
            queued += 1
        return prompt.id, queued


__all__ = ["NONE", "Panel", "ModelInput", "parse_feedback", "version_names", "task_names", "feedback_choices",
           "negative_choices",
           "server_for", "model_input", "stream_panels", "render", "send_to_queue"]
