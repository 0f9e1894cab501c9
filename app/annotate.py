"""The Annotate tab: one leased item at a time, categories on keys 1–9, AI suggestions on A.

Model text (prompts, responses, AI feedback) is only ever put into Textboxes and
a Chatbot with Markdown, math (``$$…$$``) and HTML off, so it shows exactly as
written and never runs. The task's guidelines are Markdown written by an admin,
shown with raw HTML escaped, images turned into plain links (no remote fetch) and
no math; every Markdown component that shows data has math rendering off.
Every handler resolves the user server-side (``auth.require_user``) and
calls ``alt_engine.annotation``; the item on screen lives in a per-session
``gr.State``. Buttons use ``trigger_mode="once"`` so a double click or a held
key cannot submit twice (and the lease makes a repeat a no-op anyway).
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import html
from http.cookies import CookieError, SimpleCookie
from zoneinfo import ZoneInfo

import gradio as gr

from alt_engine import annotation as ann
from alt_engine.settings import Settings
from alt_engine.vocab import SubmitStatus

from .auth import Auth
from .textview import visible

MAX_KEYS = 9
EMPTY = "### Nothing to annotate\nAn admin samples a round in **Admin → Rounds**; then press **Refresh**."
TZ_COOKIE = "alt_tz"  # the browser's time zone (set by the page's script): lease times in local time
HINT = ("**Keys:** `1`–`9` label with that category (plus any text you typed) · `A` accept the AI suggestion · "
        "`S` skip · `U` undo last · `Esc` leave a text box · `Ctrl+Enter` submit the text alone")

# Keyboard shortcuts: a document-level listener that clicks the visible buttons; keys typed into a text box are
# left alone (Esc leaves the box, Ctrl+Enter submits its text).
SHORTCUTS_JS = """
<script>
(() => {
  if (window.__altKeys) return; window.__altKeys = true;
  const click = (id) => {
    const b = document.getElementById(id);
    if (b && b.offsetParent !== null && !b.disabled) { b.click(); return true; }
    return false;
  };
  // lease times in the browser's own time zone: the server reads it from this cookie
  try {
    const tz = Intl.DateTimeFormat().resolvedOptions().timeZone;
    if (tz) document.cookie = 'alt_tz=' + encodeURIComponent(tz) + '; path=/; SameSite=Lax; max-age=31536000';
  } catch (e) {}
  // signed out meanwhile (deactivated, password changed, session ended): the next action goes to sign-in
  const realFetch = window.fetch;
  window.fetch = async (...args) => {
    const r = await realFetch(...args);
    const url = String((args[0] && args[0].url) || args[0] || '');
    if (r.status === 401 && url.includes('/gradio_api/') && !window.__altLeaving) {
      window.__altLeaving = true; window.location.assign('/login?why=signed-out');
    }
    return r;
  };
  // unsaved typed feedback survives a reload: kept in localStorage per item until the item is left
  const FIELDS = ['alt-free-text', 'alt-critique', 'alt-revision', 'alt-judgment'];
  const itemId = () => {
    const m = /Item #(\\d+)/.exec((document.getElementById('alt-meta') || {}).innerText || '');
    return m ? m[1] : null;
  };
  const box = (f) => document.querySelector('#' + f + ' textarea');
  const shownText = () => (box('alt-response') || {}).value;
  const key = (id, f) => 'alt-draft:' + location.host + ':' + id + ':' + f;
  let shownItem = null;
  document.addEventListener('input', (e) => {
    const id = itemId();
    for (const f of FIELDS) if (id && e.target === box(f)) localStorage.setItem(key(id, f), e.target.value);
  }, true);
  setInterval(() => {
    const id = itemId();
    if (id === shownItem) return;
    if (shownItem) for (const f of FIELDS) localStorage.removeItem(key(shownItem, f));  // left it: saved or skipped
    shownItem = id;
    if (!id) return;
    const response = shownText();
    setTimeout(() => {  // after Gradio filled the boxes for the new item
      // already saved or left (a fast key): a draft must never land on the item after it
      if (itemId() !== id || shownText() !== response) return;
      for (const f of FIELDS) {
        const v = localStorage.getItem(key(id, f)), b = box(f);
        if (v !== null && b && b.value !== v) { b.value = v; b.dispatchEvent(new Event('input', {bubbles: true})); }
      }
    }, 300);
  }, 250);
  document.addEventListener('keydown', (e) => {
    const t = e.target;
    const typing = t && (t.tagName === 'TEXTAREA' || t.tagName === 'INPUT' || t.isContentEditable);
    if (typing) {
      if (e.key === 'Escape') t.blur();
      else if (e.key === 'Enter' && (e.ctrlKey || e.metaKey) && click('alt-submit-text')) e.preventDefault();
      return;
    }
    if (e.ctrlKey || e.metaKey || e.altKey || e.repeat) return;
    const k = e.key.toLowerCase();
    let done = false;
    if (/^[1-9]$/.test(k)) done = click('alt-cat-' + k);
    else if (k === 'a') done = click('alt-accept');
    else if (k === 's') done = click('alt-skip');
    else if (k === 'u') done = click('alt-undo');
    if (done) e.preventDefault();
  });
})();
</script>
"""

CSS = """
#alt-response textarea, #alt-suggestion textarea, #alt-conditioning textarea { font-size: 1rem; }
.alt-cat button, button.alt-cat { min-width: 9rem; }
#alt-status { min-height: 1.5rem; }
#alt-prompt .message-content span { white-space: pre-wrap; }  /* keep the prompt's indentation (code) */
"""


PLAIN = dict(latex_delimiters=[], sanitize_html=True)  # for every Markdown/Chatbot showing data: no math, no HTML


def guidelines_markdown(text: str) -> str:
    """An admin's guidelines as safe Markdown: raw HTML shown as text, ``![alt](url)`` images (inline or by
    reference) as links, so nothing is fetched from elsewhere when the page shows them."""
    return html.escape(text or "", quote=False).replace("![", "[")


def _as_text(content) -> str:
    """Chatbot renders message HTML (sanitised, so tags would vanish) even with Markdown off: escape it so the
    prompt shows exactly as written."""
    return html.escape(visible(str(content or "")), quote=False)


def _chat(prompt) -> tuple[str, list[dict]]:
    """(system prompt, the other turns as Chatbot messages); a plain text prompt is one user turn."""
    if isinstance(prompt, str) or prompt is None:
        return "", [{"role": "user", "content": _as_text(prompt)}]
    system = "\n\n".join(visible(str(m.get("content", ""))) for m in prompt if m.get("role") == "system")
    turns = [{"role": "assistant" if m.get("role") == "assistant" else "user", "content": _as_text(m.get("content"))}
             for m in prompt if m.get("role") != "system"]
    return system, turns


def _suggestion_text(item: ann.Item | None) -> str:
    if item is None or item.suggestion is None:
        return ""
    sg = item.suggestion
    label = sg.category or sg.text or ""
    score = f"  (score {sg.score:g})" if sg.score is not None else ""
    return f"{label}{score}  — from {sg.source}"


def browser_tz(request) -> str | None:
    """The time zone the browser reported (cookie ``alt_tz``), if it is a real one."""
    headers = getattr(request, "headers", None) or {}
    try:
        morsel = SimpleCookie(headers.get("cookie", "")).get(TZ_COOKIE)
    except CookieError:
        return None
    name = morsel.value.replace("%2F", "/") if morsel else ""
    try:
        ZoneInfo(name)
    except (ValueError, KeyError, OSError):  # empty, unknown or a path: UTC
        return None
    return name


def local_time(iso: str, tz: str | None) -> str:
    """A UTC timestamp as the annotator's wall-clock time (``14:31:05 Europe/Paris``; UTC when unknown)."""
    t = dt.datetime.fromisoformat(iso)
    t = t if t.tzinfo else t.replace(tzinfo=dt.UTC)
    zone = ZoneInfo(tz) if tz else dt.UTC
    return f"{t.astimezone(zone):%H:%M:%S} {tz or 'UTC'}"


def _describe(saved: dict | None) -> str:
    """A saved submission in a few words: ``'Good' with text``."""
    saved = saved or {}
    what = f"'{saved['category']}'" if saved.get("category") else ("a flag" if saved.get("flag") else "feedback")
    extras = [k for k in ("text", "critique", "revision", "judgment") if saved.get(k)]
    return what + (f" with {', '.join(extras)}" if extras else "")


def _progress_md(db: str, user, task: str | None) -> str:
    if not task:
        return ""
    p = ann.progress(db, user, task)
    return f"**{html.escape(task)}** · done **{p.done}** · remaining **{p.remaining}** · items in open rounds {p.total}"


class AnnotateTab:
    """Builds the tab and owns its handlers."""

    def __init__(self, settings: Settings, auth: Auth):
        self.settings = settings
        self.db = settings.db
        self.auth = auth
        self._saved_by: dict[str, int] = {}  # browser tab (Gradio session) -> the lease it saved last

    # ------------------------------------------------------------------ rendering
    def _render(self, user, item: ann.Item | None, task: str | None, message: str = "", tz: str | None = None,
                pending: dict | None = None) -> tuple:
        """Updates for every output component, in ``self.outputs`` order. ``tz``: the browser's time zone;
        ``pending``: a submission waiting for the annotator to confirm it replaces their saved label."""
        task = item.task if item is not None else task
        has = item is not None
        cats = item.categories if has else []
        buttons = [gr.update(value=f"{i + 1} · {cats[i]}" if i < len(cats) else "", visible=i < len(cats))
                   for i in range(MAX_KEYS)]
        sugg = _suggestion_text(item)
        guidelines = ""
        if has and item.guidelines:
            guidelines = guidelines_markdown(item.guidelines)
        state = item.to_dict() if has else None
        system, turns = _chat(item.prompt) if has else ("", [])
        meta = ""
        if has:
            meta = (f"Item #{item.generation_id} · round {item.round_number or '-'} · "
                    f"{'**truncated** (hit the token limit) · ' if item.truncated else ''}"
                    f"lease until {local_time(item.expires_at, tz)}")
        prev = (item.previous if has else None) or {}
        critique_on, judgment_on = has and item.allow_critique, has and item.allow_judgment
        return (
            state,
            item.lease_id if has else None,
            gr.update(visible=has),  # panel
            gr.update(visible=not has, value=None if has else self._empty(user, task)),  # empty state
            _progress_md(self.db, user, task),
            meta,
            guidelines or "_No guidelines for this task._",
            gr.update(value=system, visible=bool(system)),
            turns,
            gr.update(value=visible(item.conditioning) if has else "", visible=bool(has and item.conditioning)),
            visible(item.response) if has else "",  # bidi controls and zero-width characters shown, not obeyed
            gr.update(value=sugg, visible=bool(sugg)),
            gr.update(visible=bool(sugg)),
            *buttons,
            gr.update(value=prev.get("text") or "", visible=bool(has and item.allow_free_text) or not has),
            gr.update(value=prev.get("critique") or "", visible=critique_on),
            gr.update(value=prev.get("revision") or (visible(item.response) if has else ""), visible=critique_on),
            gr.update(value=prev.get("judgment") or "", visible=judgment_on),  # as the response to edit
            prev.get("flag") or "",
            message,
            gr.update(visible=critique_on or judgment_on),  # the critique & judgment accordion
            gr.update(visible=pending is not None),  # Replace
            pending,
        )

    def _empty(self, user, task: str | None) -> str:
        """Why there is nothing to label: done, nothing sampled yet, or a round being sampled or trained."""
        from alt_engine.reports import empty_queue_message

        try:
            done = ann.progress(self.db, user, task).done if task else 0
        except ann.AnnotationError:
            done = 0
        return empty_queue_message(self.db, task, done)

    def _load(self, task: str | None, request: gr.Request):
        user = self.auth.require_user(request)
        names = ann.task_names(self.db)
        try:
            item = ann.next_item(self.db, user, task or None, self.settings.lease_seconds)
        except ann.AnnotationError as e:
            raise gr.Error(str(e)) from e
        chosen = item.task if item else (task or (names[0] if names else None))
        return (gr.update(choices=names, value=chosen), *self._render(user, item, chosen, tz=browser_tz(request)))

    def _after(self, user, task: str | None, message: str, tz: str | None = None):
        try:
            item = ann.next_item(self.db, user, task or None, self.settings.lease_seconds)
        except ann.AnnotationError as e:
            raise gr.Error(str(e)) from e
        return self._render(user, item, task, message, tz)

    def _stale(self, user, state, shown, task, tz: str | None) -> tuple | None:
        """Updates that ignore an action made on an item no longer on screen (a key pressed twice quickly: the
        browser sends the lease it showed, ``shown``, while the session state already moved on), else None."""
        if not state:
            return self._after(user, task, "Nothing on screen.", tz)
        if shown is not None and int(shown) != state["lease_id"]:
            return self._render(user, ann.get_item(self.db, user, state["lease_id"]), task,
                                "Ignored a second key press meant for the previous item.", tz)
        return None

    def _submit(self, category_index: int | None, state, shown, task, free_text, critique, revision, judgment,
                request: gr.Request, accept: bool = False):
        user = self.auth.require_user(request)
        tz = browser_tz(request)
        if (ignored := self._stale(user, state, shown, task, tz)) is not None:
            return ignored
        response = (state or {}).get("response") or ""
        if state and (revision or "").strip() in (response.strip(), visible(response).strip()):
            revision = None  # the box starts with the response: unchanged is no revision
        sub = ann.Submission(text=free_text, critique=critique, revision=revision, judgment=judgment)
        if accept:
            sugg = state.get("suggestion")
            if not sugg:
                gr.Warning("There is no AI suggestion on this item.")
                return self._render(user, ann.get_item(self.db, user, state["lease_id"]), task, tz=tz)
            sub.accept_suggestion = sugg["feedback_id"]
        elif category_index is not None:
            cats = state.get("categories") or []
            if category_index >= len(cats):
                return self._render(user, ann.get_item(self.db, user, state["lease_id"]), task, tz=tz)
            sub.category = cats[category_index]
        try:
            res = ann.submit(self.db, user, state["lease_id"], sub)
        except ann.Conflict as e:
            gr.Warning(str(e))
            return self._after(user, task, f"⚠ {e}", tz)
        except ann.AnnotationError as e:
            raise gr.Error(str(e)) from e
        label = sub.category or ("AI suggestion" if accept else "feedback")
        session = getattr(request, "session_hash", None)
        if res.status == SubmitStatus.ALREADY_LABELLED and session and self._saved_by.get(session) == state["lease_id"]:
            # this very tab saved that lease a moment ago: two keys in quick succession, both sent for the item then
            # on screen — the second is not a relabel (a stale *second tab* is another session: offered Replace)
            return self._after(user, task, "Ignored a second key press meant for the previous item.", tz)
        if res.status == SubmitStatus.SAVED and session:
            self._saved_by[session] = state["lease_id"]
            while len(self._saved_by) > 10_000:  # one entry per browser tab; the oldest go first
                self._saved_by.pop(next(iter(self._saved_by)))
        if res.status == SubmitStatus.ALREADY_LABELLED:  # a stale second tab: say so, offer to replace
            saved, label = html.escape(_describe(res.existing), quote=False), html.escape(label, quote=False)
            note = (f"⚠ You already labelled item #{state['generation_id']} ({saved}), e.g. in another tab. "
                    f"Press **Replace my saved label** to save {label} instead, or **Refresh** to keep it.")
            return self._render(user, ann.get_item(self.db, user, state["lease_id"]), task, note, tz,
                                pending=dataclasses.asdict(sub))
        note = (f"Saved item #{state['generation_id']}: {label}." if res.status == SubmitStatus.SAVED
                else "Already saved; the extra key press was ignored.")
        return self._after(user, task, html.escape(note), tz)

    def _replace(self, pending, state, task, request: gr.Request):
        """The annotator confirmed: their saved label on the item on screen becomes ``pending``."""
        user = self.auth.require_user(request)
        tz = browser_tz(request)
        if not pending or not state:
            return self._after(user, task, "Nothing to replace.", tz)
        try:
            ann.replace_label(self.db, user, state["lease_id"], ann.Submission(**pending))
        except ann.AnnotationError as e:
            raise gr.Error(str(e)) from e
        label = html.escape(pending.get("category") or "your feedback")
        return self._after(user, task, f"Replaced your label on item #{state['generation_id']}: {label}.", tz)

    def _submitter(self, category_index: int | None, accept: bool = False):
        """A handler with the plain signature Gradio inspects (it injects ``request`` by annotation)."""
        def handler(state, shown, task, free_text, critique, revision, judgment, request: gr.Request):
            return self._submit(category_index, state, shown, task, free_text, critique, revision, judgment, request,
                                accept=accept)
        return handler

    def _skip(self, state, shown, task, request: gr.Request):
        user = self.auth.require_user(request)
        tz = browser_tz(request)
        if (ignored := self._stale(user, state, shown, task, tz)) is not None:
            return ignored
        try:
            ann.skip(self.db, user, state["lease_id"])
        except ann.AnnotationError as e:
            raise gr.Error(str(e)) from e
        return self._after(user, task, f"Skipped item #{state['generation_id']} (U brings it back).", tz)

    def _flag(self, state, shown, task, reason, request: gr.Request):
        user = self.auth.require_user(request)
        tz = browser_tz(request)
        if (ignored := self._stale(user, state, shown, task, tz)) is not None:
            return ignored
        try:
            ann.flag(self.db, user, state["lease_id"], reason or "")
        except ann.AnnotationError as e:
            raise gr.Error(str(e)) from e
        return self._after(user, task, f"Flagged item #{state['generation_id']} as problematic.", tz)

    def _undo(self, task, request: gr.Request):
        user = self.auth.require_user(request)
        tz = browser_tz(request)
        try:
            item = ann.undo_last(self.db, user, self.settings.lease_seconds)
        except ann.AnnotationError as e:
            gr.Warning(str(e))
            return self._after(user, task, html.escape(str(e)), tz)
        note = f"Undone: item #{item.generation_id} is back for you to redo."
        if item.previous:
            note += f" It had {html.escape(_describe(item.previous), quote=False)}; your text is back in the boxes."
        return self._render(user, item, item.task, note, tz)

    # ------------------------------------------------------------------ layout
    def build_ui(self) -> gr.Dropdown:
        """Lay out the tab inside the current Blocks; returns the task picker (loaded by the page's load event)."""
        state = gr.State(None)
        shown = gr.Number(visible=False, precision=0, elem_id="alt-lease")  # the lease on screen, sent by the browser
        with gr.Row():
            task = gr.Dropdown(label="Task", choices=[], scale=1, interactive=True, elem_id="alt-task")
            with gr.Column(scale=3):
                progress = gr.Markdown(elem_id="alt-progress", **PLAIN)
                refresh = gr.Button("Refresh / next item", size="sm", elem_id="alt-refresh")
        empty = gr.Markdown(EMPTY, visible=False, elem_id="alt-empty")
        with gr.Column(visible=False) as panel:
            with gr.Accordion("Guidelines", open=False):
                guidelines = gr.Markdown(elem_id="alt-guidelines", **PLAIN)
            meta = gr.Markdown(elem_id="alt-meta", **PLAIN)
            system_box = gr.Textbox(label="System prompt", interactive=False, visible=False, elem_id="alt-system")
            chat = gr.Chatbot(label="Prompt", render_markdown=False, latex_delimiters=[], sanitize_html=True,
                              height="auto", max_height=360, feedback_options=None, buttons=[], elem_id="alt-prompt")
            conditioning = gr.Textbox(label="Sampled with feedback (conditioning)", interactive=False, visible=False,
                                      elem_id="alt-conditioning")
            response = gr.Textbox(label="Response", interactive=False, lines=6, max_lines=20, elem_id="alt-response")
            with gr.Row():
                suggestion = gr.Textbox(label="AI suggestion", interactive=False, visible=False, scale=4,
                                        elem_id="alt-suggestion")
                accept = gr.Button("Accept suggestion (A)", visible=False, scale=1, elem_id="alt-accept")
            gr.Markdown("**Choose a category** (keys 1–9):")
            with gr.Row():
                cat_buttons = [gr.Button(f"{i + 1}", visible=False, elem_id=f"alt-cat-{i + 1}", variant="primary",
                                         elem_classes="alt-cat") for i in range(MAX_KEYS)]
            with gr.Row():
                free_text = gr.Textbox(label="Feedback in your words (optional with a category)", lines=2, scale=4,
                                       placeholder="e.g. Correct but too long; skip the preamble.",
                                       elem_id="alt-free-text")
                submit_text = gr.Button("Submit text only (Ctrl+Enter)", scale=1, elem_id="alt-submit-text")
            with gr.Accordion("Critique & revision · judgment (optional)", open=False, elem_id="alt-cnr") as cnr:
                critique = gr.Textbox(label="Critique", lines=2, elem_id="alt-critique")
                revision = gr.Textbox(label="Revised response", lines=3, elem_id="alt-revision")
                judgment = gr.Textbox(label="Judgment (what is wrong, in a sentence)", lines=1, elem_id="alt-judgment")
            with gr.Row():
                skip = gr.Button("Skip (S)", size="sm", elem_id="alt-skip")
                flag_reason = gr.Textbox(placeholder="why is it problematic? (optional)", show_label=False, scale=3,
                                         elem_id="alt-flag-reason")
                flag = gr.Button("Flag as problematic", size="sm", variant="stop", elem_id="alt-flag")
                undo = gr.Button("Undo last (U)", size="sm", elem_id="alt-undo")
        status = gr.Markdown(elem_id="alt-status", **PLAIN)
        replace = gr.Button("Replace my saved label", visible=False, variant="stop", elem_id="alt-replace")
        pending = gr.State(None)
        gr.Markdown(HINT, elem_id="alt-hint")

        self.outputs = [state, shown, panel, empty, progress, meta, guidelines, system_box, chat, conditioning,
                        response, suggestion, accept, *cat_buttons, free_text, critique, revision, judgment,
                        flag_reason, status, cnr, replace, pending]
        texts = [free_text, critique, revision, judgment]
        once = dict(trigger_mode="once", show_progress="hidden")
        for i, b in enumerate(cat_buttons):
            b.click(self._submitter(i), [state, shown, task, *texts], self.outputs, api_name=f"label_{i + 1}",
                    **once)
        submit_text.click(self._submitter(None), [state, shown, task, *texts], self.outputs, api_name="submit_text",
                          **once)
        accept.click(self._submitter(None, accept=True), [state, shown, task, *texts], self.outputs,
                     api_name="accept_suggestion", **once)
        skip.click(self._skip, [state, shown, task], self.outputs, api_name="skip", **once)
        flag.click(self._flag, [state, shown, task, flag_reason], self.outputs, api_name="flag", **once)
        undo.click(self._undo, [task], self.outputs, api_name="undo", **once)
        replace.click(self._replace, [pending, state, task], self.outputs, api_name="replace_label", **once)
        refresh.click(self._load, [task], [task, *self.outputs], api_name="next_item", **once)
        task.input(self._load, [task], [task, *self.outputs], api_visibility="private")
        self.task = task
        return task

    def on_load(self, blocks: gr.Blocks) -> None:
        blocks.load(self._load, [self.task], [self.task, *self.outputs], api_visibility="private")
