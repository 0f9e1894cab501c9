"""The Playground tab (every signed-in user): steer the model by the feedback it is conditioned on.

Two panels side by side — the same conversation under two feedback texts or two versions — stream their
replies at once; each panel has a steering strength γ (feedback guidance away from a chosen negative feedback,
docs/guidance.md); any version (loaded on demand by the model hub); regenerate; sampling settings; revision
passes (a Critique-and-Revise version critiques and revises its answer up to 5 times); "show the exact model
input" (built by the conditioning module with the version's own format). Model text is shown
in plain text boxes, never as HTML or Markdown. Admins can send the conversation to the annotation queue.
Handlers call ``alt_engine.playground``; per-session state lives in ``gr.State``.
"""

from __future__ import annotations

import time

import gradio as gr

from alt_engine import playground as pg
from alt_engine.serving import hub_for
from alt_engine.settings import Settings

from .auth import Auth

SIDES = ("a", "b")


def _empty_state() -> dict:
    return {"a": [], "b": [], "turn": 0}


class PlaygroundTab:
    def __init__(self, settings: Settings, auth: Auth):
        self.settings, self.db, self.auth = settings, settings.db, auth

    @property
    def hub(self):
        return hub_for(self.settings)  # the process-wide model hub the /v1 routes use too

    # ------------------------------------------------------------------ handlers

    def _panels(self, state, side_by_side, va, fa, vb, fb, steering=()) -> list[tuple[str, pg.Panel]]:
        """``steering``: (γ A, negative A, γ B, negative B), the panels' guidance sliders and choices."""
        ga, na, gb, nb = (tuple(steering) + (0, None, 0, None))[:4]
        chosen = [("a", va, fa, ga, na)] + ([("b", vb, fb, gb, nb)] if side_by_side else [])
        return [(k, pg.Panel(v or None, pg.parse_feedback(f), list(state[k]), float(g or 0), pg.parse_feedback(n)))
                for k, v, f, g, n in chosen]

    def _run(self, state, panels, settings, show_input, revision_passes=0):
        """Stream every panel's next reply (then revise it ``revision_passes`` times: Critique-and-Revise);
        yields output dicts (transcripts, inputs, revisions, status, state)."""
        temperature, top_p, max_tokens, seed = settings
        passes = int(revision_passes or 0)
        # regenerate draws anew, reproducibly; a stride, since a batch gives request i the seed + i stream
        seed = int(seed or 0) + 1000 * state["turn"]
        out_text = {k: "" for k, _ in panels}
        try:
            inputs = {k: pg.model_input(pg.server_for(self.hub, p.version), p.messages, p.feedback)
                      for k, p in panels}
        except ValueError as e:
            raise gr.Error(str(e)) from e
        shown = {self.inputs[k]: gr.update(value=inputs[k].text, visible=bool(show_input)) for k, _ in panels}
        shown |= {self.input_info[k]: gr.update(value=inputs[k].describe(), visible=bool(show_input))
                  for k, _ in panels}
        t0, first, usage = time.monotonic(), None, {}
        yield {**shown, self.status: "generating…"}
        try:
            events = pg.stream_panels(self.hub, [p for _, p in panels], int(max_tokens), float(temperature),
                                      float(top_p), seed)
            for i, piece, done in events:
                key, panel = panels[i]
                if done is not None:
                    usage[key] = done
                    continue
                first = first or time.monotonic() - t0
                out_text[key] += piece
                yield {self.transcripts[key]: pg.render(panel.messages + [
                    {"role": "assistant", "content": out_text[key]}])}
        except ValueError as e:
            raise gr.Error(str(e)) from e
        shown_revisions = {self.revisions[k]: gr.update(value="", visible=False) for k, _ in panels}
        if passes:
            yield {self.status: f"revising ({passes} pass{'es' if passes > 1 else ''})…"}
            try:
                steps = pg.revise_panels(self.hub, [p for _, p in panels], [out_text[k] for k, _ in panels], passes,
                                         int(max_tokens), seed)
            except ValueError as e:
                raise gr.Error(str(e)) from e
            from alt_engine.revise import final_answer

            for (key, _), st in zip(panels, steps):
                out_text[key] = final_answer(st, out_text[key])
                shown_revisions[self.revisions[key]] = gr.update(value=pg.render_revisions(st), visible=True)
        for key, panel in panels:
            state[key] = panel.messages + [{"role": "assistant", "content": out_text[key]}]
        took = time.monotonic() - t0
        tokens = sum(u.completion_tokens for u in usage.values())
        status = " · ".join(f"{k.upper()}: {p.version or 'served'} / {p.feedback or 'no feedback'}"
                            + (f" (γ {p.guidance:g} away from {p.negative or 'no feedback'})"
                               if p.guidance and p.feedback else "")
                            + f" → {usage[k].completion_tokens if k in usage else 0} tokens" for k, p in panels)
        status += f" · first token {first or 0:.2f} s · {tokens / max(took, 1e-6):.1f} tokens/s"
        if passes:
            status += f" · {passes} revision pass{'es' if passes > 1 else ''} (Critique-and-Revise)"
        yield {**{self.transcripts[k]: pg.render(state[k]) for k, _ in panels}, **shown_revisions,
               self.status: status, self.state: state}

    def _send(self, message, state, side_by_side, va, fa, vb, fb, temperature, top_p, max_tokens, seed, show_input,
              revision_passes=0, ga=0, na=None, gb=0, nb=None, request: gr.Request = None):
        self.auth.require_user(request)
        message = (message or "").strip()
        if not message:
            raise gr.Error("Type a message first.")
        state = dict(state or _empty_state())
        if side_by_side and len(state["b"]) != len(state["a"]):
            state["b"] = list(state["a"])  # B joins the conversation where A is
        for k in SIDES:
            state[k] = state[k] + [{"role": "user", "content": message}]
        panels = self._panels(state, side_by_side, va, fa, vb, fb, (ga, na, gb, nb))
        yield {self.message: ""}
        yield from self._run(state, panels, (temperature, top_p, max_tokens, seed), show_input, revision_passes)

    def _regenerate(self, state, side_by_side, va, fa, vb, fb, temperature, top_p, max_tokens, seed, show_input,
                    revision_passes=0, ga=0, na=None, gb=0, nb=None, request: gr.Request = None):
        self.auth.require_user(request)
        state = dict(state or _empty_state())
        if not state["a"]:
            raise gr.Error("Nothing to regenerate yet: send a message.")
        for k in SIDES:
            if state[k] and state[k][-1]["role"] == "assistant":
                state[k] = state[k][:-1]
        state["turn"] += 1
        panels = self._panels(state, side_by_side, va, fa, vb, fb, (ga, na, gb, nb))
        yield from self._run(state, panels, (temperature, top_p, max_tokens, seed), show_input, revision_passes)

    def _clear(self, request: gr.Request):
        self.auth.require_user(request)
        return {self.state: _empty_state(), **{self.transcripts[k]: "" for k in SIDES}, self.status: ""}

    def _to_queue(self, task, state, side_by_side, va, fa, vb, fb, request: gr.Request):
        user = self.auth.require_admin(request)
        panels = [p for _, p in self._panels(state or _empty_state(), side_by_side, va, fa, vb, fb)]
        try:
            prompt_id, queued = pg.send_to_queue(self.db, task, panels, user.name)
        except ValueError as e:
            raise gr.Error(str(e)) from e
        where = (f"its {queued} replies are in the annotation queue" if queued else
                 "no open round: it will be sampled with the next round")
        return f"Saved as prompt {prompt_id} of task {task}; {where}."

    def _feedback_for_task(self, task, request: gr.Request):
        self.auth.require_user(request)
        choices = pg.feedback_choices(self.db, task)
        negatives, worst = pg.negative_choices(self.db, task)
        return {**{self.feedback[k]: gr.update(choices=choices, value=choices[i if i < len(choices) else 0])
                   for i, k in enumerate(SIDES)},
                **{self.negative[k]: gr.update(choices=negatives, value=worst) for k in SIDES}}

    # ------------------------------------------------------------------ layout

    def build_ui(self) -> None:
        from alt_engine.guidance import EVAL_GUIDANCE
        from alt_engine.revise import MAX_PASSES
        from alt_engine.sampling import MAX_GUIDANCE

        self.transcripts, self.inputs, self.input_info, self.versions, self.feedback = {}, {}, {}, {}, {}
        self.revisions, self.guidance, self.negative = {}, {}, {}
        with gr.Row():
            self.task = gr.Dropdown(label="Task (its categories are the feedback choices)", choices=[],
                                    elem_id="pg-task", scale=2)
            self.side_by_side = gr.Checkbox(label="Side by side", value=True, elem_id="pg-side")
            self.show_input = gr.Checkbox(label="Show the exact model input", value=False, elem_id="pg-show-input")
        with gr.Row():
            for k in SIDES:
                with gr.Column(elem_id=f"pg-panel-{k}") as col:
                    with gr.Row():
                        self.versions[k] = gr.Dropdown(label=f"{k.upper()}: model version", choices=[],
                                                       elem_id=f"pg-version-{k}")
                        self.feedback[k] = gr.Dropdown(label=f"{k.upper()}: feedback (pick or type; none = "
                                                       "unconditioned)", choices=[pg.NONE], value=pg.NONE,
                                                       allow_custom_value=True, elem_id=f"pg-feedback-{k}")
                    with gr.Row():  # feedback guidance: l(f) + γ(l(f) − l(f⁻)); 0 = plain sampling
                        self.guidance[k] = gr.Slider(0, MAX_GUIDANCE, value=EVAL_GUIDANCE, step=0.25,
                                                     label=f"{k.upper()}: steering strength γ (0 = off)",
                                                     elem_id=f"pg-guidance-{k}")
                        self.negative[k] = gr.Dropdown(label=f"{k.upper()}: steer away from (none = the plain "
                                                       "prompt)", choices=[pg.NONE], value=pg.NONE,
                                                       allow_custom_value=True, elem_id=f"pg-negative-{k}")
                    self.transcripts[k] = gr.Textbox(label=f"{k.upper()}: conversation", lines=12, max_lines=30,
                                                     interactive=False, elem_id=f"pg-out-{k}")
                    self.input_info[k] = gr.Textbox(label=f"{k.upper()}: feedback placement", visible=False,
                                                    interactive=False, elem_id=f"pg-input-info-{k}")
                    self.inputs[k] = gr.Textbox(label=f"{k.upper()}: exact model input", lines=6, max_lines=20,
                                                visible=False, interactive=False, elem_id=f"pg-input-{k}")
                    self.revisions[k] = gr.Textbox(label=f"{k.upper()}: critique & revision passes", lines=4,
                                                   max_lines=20, visible=False, interactive=False,
                                                   elem_id=f"pg-revisions-{k}")
                if k == "b":
                    panel_b = col
        with gr.Accordion("Sampling", open=True):
            with gr.Row():
                temperature = gr.Slider(0, 2, value=0.7, step=0.05, label="temperature", elem_id="pg-temperature")
                top_p = gr.Slider(0.05, 1, value=0.9, step=0.05, label="top_p", elem_id="pg-top-p")
                max_tokens = gr.Number(value=128, minimum=1, maximum=self.settings.serve_max_tokens, precision=0,
                                       label="max tokens", elem_id="pg-max-tokens")
                seed = gr.Number(value=0, precision=0, label="seed", elem_id="pg-seed")
                passes = gr.Slider(0, MAX_PASSES, value=0, step=1, elem_id="pg-revision-passes",
                                   label="revision passes (Critique-and-Revise versions: the answer critiqued and "
                                         "revised, greedy)")
        with gr.Row():
            self.message = gr.Textbox(label="Message", placeholder="Ask something…", scale=4, elem_id="pg-message")
            send = gr.Button("Send", variant="primary", elem_id="pg-send")
            regenerate = gr.Button("Regenerate", elem_id="pg-regenerate")
            clear = gr.Button("Clear", elem_id="pg-clear")
        self.status = gr.Markdown(elem_id="pg-status", latex_delimiters=[])
        with gr.Row(visible=False) as self.admin_row:
            to_queue = gr.Button("Send to the annotation queue", size="sm", elem_id="pg-to-queue")
            queue_msg = gr.Markdown(elem_id="pg-queue-msg", latex_delimiters=[])
        self.state = gr.State(_empty_state())

        args = [self.state, self.side_by_side, self.versions["a"], self.feedback["a"], self.versions["b"],
                self.feedback["b"], temperature, top_p, max_tokens, seed, self.show_input, passes,
                self.guidance["a"], self.negative["a"], self.guidance["b"], self.negative["b"]]
        outputs = [self.state, self.message, self.status, *self.transcripts.values(), *self.inputs.values(),
                   *self.input_info.values(), *self.revisions.values()]
        send.click(self._send, [self.message, *args], outputs, api_name="playground_send")
        self.message.submit(self._send, [self.message, *args], outputs, api_visibility="private")
        regenerate.click(self._regenerate, args, outputs, api_name="playground_regenerate")
        clear.click(self._clear, None, [self.state, self.status, *self.transcripts.values()],
                    api_name="playground_clear")
        to_queue.click(self._to_queue, [self.task, *args[:6]], queue_msg, api_name="playground_to_queue")
        self.task.change(self._feedback_for_task, self.task, [*self.feedback.values(), *self.negative.values()],
                         api_visibility="private")
        self.side_by_side.change(lambda on: gr.update(visible=on), self.side_by_side, panel_b,
                                 api_visibility="private")
        self.show_input.change(lambda on: [gr.update(visible=on)] * 4, self.show_input,
                               [*self.inputs.values(), *self.input_info.values()], api_visibility="private")
        self.load_outputs = [self.task, self.versions["a"], self.versions["b"], self.admin_row]

    def page_load(self, user) -> tuple:
        """The task and version choices (the served version preselected) and the admin row for admins."""
        tasks = pg.task_names(self.db)
        names, served = pg.version_names(self.db)
        if not names:  # no versions registered: the configured model, as the hub serves it
            names, served = [self.hub.served.version_name], self.hub.served.version_name
        pick = served or names[0]
        return (gr.update(choices=tasks, value=tasks[0] if tasks else None),
                gr.update(choices=names, value=pick), gr.update(choices=names, value=pick),
                gr.update(visible=bool(user and user.is_admin)))
