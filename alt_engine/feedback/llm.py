"""The LLM judge: feedback from any OpenAI-compatible endpoint, categorical or free text.

``make_llm_provider(mode, settings, task)`` builds the provider (``llm:categorical``
/ ``llm:free_text`` / ``llm:judgment`` — a written judgment of what is wrong, CUT's data, stored as a
``judgment`` row like an annotator's, its verdict as the score: 0 bad, 1 good).
It calls the real ``openai`` client (base URL, model, key,
timeout and ``max_retries`` from Settings; the client itself retries 429/5xx/
timeouts with exponential backoff) at temperature 0, ``llm_concurrency``
requests at a time. A reply that does not parse is re-asked a bounded number
of times, then the item gets no feedback and the reason — an unparsed reply is
never a category. Every request and raw reply is a ``JudgeCall`` row, which is
also the cache: a rerun with the same (model, prompt version, prompt,
generation) makes no HTTP call, and identical items in one run are asked once.
A per-run budget (one provider object = one run; HTTP requests including the
client's retries, and usage tokens; 0 = unlimited) stops the run cleanly: the
items left get "budget exhausted" (no request starts past the limit; retries
and tokens of requests already in flight may overshoot it slightly). Client errors that no retry can fix (bad
key, unknown model or URL) abort the run with a clear message, and so does a run in which every request failed
(endpoint down, timeouts, 5xx after the retries): an error, not "N skipped". Replies are asked for with a
``max_tokens`` cap and cut at ``MAX_REPLY_CHARS`` (the cut is recorded in ``JudgeCall.error``).
"""

from __future__ import annotations

import hashlib
import json
import logging
import re
import threading
from concurrent.futures import ThreadPoolExecutor, as_completed
from dataclasses import dataclass, field

import openai
from sqlmodel import select
from tqdm.auto import tqdm

from ..db import Feedback, FeedbackKind, Generation, JudgeCall, Prompt, Task, session_scope
from ..settings import Settings
from . import judge_prompts as jp
from .base import FeedbackItem, FeedbackResult

log = logging.getLogger(__name__)
MODES = ("categorical", "free_text", "judgment")
BUDGET_EXHAUSTED = "budget exhausted"
REQUEST_FAILED = "request failed"
MAX_REPLY_CHARS = 4000  # a longer reply is cut here (stored, parsed and re-asked truncated) and the cut recorded
# asked of the endpoint, so replies stay short at source
MAX_REPLY_TOKENS = {"categorical": 64, "free_text": 512, "judgment": 256}
FATAL_ERRORS = (openai.AuthenticationError, openai.PermissionDeniedError, openai.NotFoundError)


class ParseError(ValueError):
    """A judge reply that is not in the required format; the message says what is wrong."""


# --------------------------------------------------------------------------- parsing

_STRIP = " \t\r\n\"'`*_“”‘’«»"
_LEADING = re.compile(r"^(?:the\s+)?(?:final\s+)?(?:label|category|answer|classification|rating|verdict)\s*[:=\-]\s*",
                      re.I)


def normalise(text: str) -> str:
    """Case, whitespace, quotes/markdown, trailing punctuation and a leading ``Label:`` removed."""
    prev = None
    while prev != text:
        prev = text
        text = _LEADING.sub("", text.strip(_STRIP)).rstrip(".!;,:").strip(_STRIP)
    return " ".join(text.split()).casefold()


def parse_label(reply: str, categories: list[str]) -> str:
    """The allowed label ``reply`` names exactly (after normalisation), else ParseError."""
    allowed = {normalise(c): c for c in categories}
    label = allowed.get(normalise(reply or ""))
    if label is None:
        raise ParseError(f"reply {(reply or '').strip()[:80]!r} is not one of the allowed labels")
    return label


_FREE_TEXT = re.compile(
    r"\**analysis\**\s*:\**\s*(?P<analysis>.+?)\s*\n"
    r"\s*\**feedback\**\s*:\**\s*(?P<feedback>[^\n]+?)\s*\n"
    r"\s*\**score\**\s*:\**\s*(?P<score>[^\n]+?)\s*", re.I | re.S)


def parse_free_text(reply: str) -> tuple[str, str, int]:
    """(analysis, feedback sentence, score) from a three-part reply, else ParseError saying why."""
    m = _FREE_TEXT.fullmatch((reply or "").strip())
    if m is None:
        raise ParseError("expected exactly three labelled lines 'Analysis:', 'Feedback:', 'Score:' in that order")
    feedback = m["feedback"].strip(_STRIP)
    words = feedback.split()
    if not words:
        raise ParseError("the feedback sentence is empty")
    if len(words) > jp.MAX_FEEDBACK_WORDS:
        raise ParseError(f"the feedback has {len(words)} words (at most {jp.MAX_FEEDBACK_WORDS})")
    if re.search(r"[.!?]\s+\S", feedback):
        raise ParseError("the feedback must be one sentence")
    score = re.fullmatch(r"([0-3])(?:\s*/\s*3)?\.?", m["score"].strip(_STRIP))
    if score is None:
        raise ParseError(f"score {m['score'].strip()[:20]!r} is not an integer from 0 to 3")
    return m["analysis"].strip(), feedback, int(score[1])


_JUDGMENT = re.compile(r"\**judgment\**\s*:\**\s*(?P<judgment>.+?)\s*\n"
                       r"\s*\**verdict\**\s*:\**\s*(?P<verdict>[^\n]+?)\s*", re.I | re.S)


def parse_judgment(reply: str) -> tuple[str, str]:
    """(judgment, verdict "good" | "bad") from a two-part reply, else ParseError saying why."""
    m = _JUDGMENT.fullmatch((reply or "").strip())
    if m is None:
        raise ParseError("expected exactly two labelled lines 'Judgment:', 'Verdict:' in that order")
    judgment = " ".join(m["judgment"].strip(_STRIP).split())
    if not judgment:
        raise ParseError("the judgment is empty")
    if len(judgment.split()) > jp.MAX_JUDGMENT_WORDS:
        raise ParseError(f"the judgment has {len(judgment.split())} words (at most {jp.MAX_JUDGMENT_WORDS})")
    verdict = normalise(m["verdict"])
    if verdict not in ("good", "bad"):
        raise ParseError(f"verdict {m['verdict'].strip()[:20]!r} is not 'good' or 'bad'")
    return judgment, verdict


# --------------------------------------------------------------------------- budget and stats


@dataclass
class Budget:
    """Requests and tokens spent in one run; 0 = unlimited. Thread-safe."""

    max_requests: int = 0
    max_tokens: int = 0
    requests: int = 0
    tokens: int = 0
    lock: threading.Lock = field(default_factory=threading.Lock, repr=False)

    def take_request(self) -> bool:
        """Reserve one request; False when the budget is spent."""
        with self.lock:
            if self.exhausted:
                return False
            self.requests += 1
            return True

    def spend(self, tokens: int = 0, extra_requests: int = 0) -> None:
        with self.lock:
            self.tokens += tokens
            self.requests += extra_requests

    @property
    def exhausted(self) -> bool:
        return bool((self.max_requests and self.requests >= self.max_requests)
                    or (self.max_tokens and self.tokens >= self.max_tokens))

    def limits(self) -> str:
        return f"per-run limits: {self.max_requests or 'no'} requests, {self.max_tokens or 'no'} tokens"

    def describe(self) -> str:
        return (f"{self.requests} requests (limit {self.max_requests or 'none'}), "
                f"{self.tokens} tokens (limit {self.max_tokens or 'none'})")


@dataclass
class RunStats:
    """What the last run cost: HTTP requests (retries included), cache hits, re-asks."""

    items: int = 0
    cache_hits: int = 0
    requests: int = 0
    http_retries: int = 0
    reasks: int = 0
    tokens: int = 0
    judged: int = 0
    failed: int = 0
    budget_exhausted: bool = False
    message: str = ""


# --------------------------------------------------------------------------- the provider


def cache_key(model: str, prompt_version: str, messages: list[dict]) -> str:
    """Hash of (model, prompt version, prompt + generation); the messages hold both."""
    blob = json.dumps([model, prompt_version, messages], ensure_ascii=False, sort_keys=True)
    return hashlib.sha256(blob.encode()).hexdigest()


def _result_from(parsed: dict, reply: str | None) -> FeedbackResult:
    if parsed.get("reason"):
        return FeedbackResult(reason=parsed["reason"], raw=reply)
    if "category" in parsed:
        return FeedbackResult(category=parsed["category"], kind="category", raw=reply)
    if "judgment" in parsed:  # score 1 = a "good" verdict (a positive for CUT), 0 = "bad" (a negative)
        return FeedbackResult(text=parsed["judgment"], score=1.0 if parsed["verdict"] == "good" else 0.0,
                              kind="judgment", raw=reply)
    return FeedbackResult(text=parsed["feedback"], score=float(parsed["score"]), kind="text", raw=reply)


class LLMJudge:
    """A feedback provider asking an OpenAI-compatible chat model; ``name`` = ``llm:<model>``."""

    def __init__(self, mode: str, settings: Settings, *, client: openai.OpenAI | None = None, reasks: int = 2,
                 use_cache: bool = True, show_progress: bool = True):
        if mode not in MODES:
            raise ValueError(f"unknown LLM judge mode {mode!r} (categorical | free_text | judgment)")
        self.mode, self.settings, self.reasks = mode, settings, reasks
        self.use_cache, self.show_progress = use_cache, show_progress
        self.model = settings.llm_model
        self.name = f"llm:{self.model}"  # provenance; both modes share it, ``kind`` tells their rows apart
        self.kind = {"categorical": "category", "free_text": "text", "judgment": "judgment"}[mode]
        self.prompt_version = {"categorical": jp.CATEGORICAL_VERSION, "free_text": jp.FREE_TEXT_VERSION,
                               "judgment": jp.JUDGMENT_VERSION}[mode]
        self.client = client or openai.OpenAI(base_url=settings.llm_base_url, api_key=settings.llm_api_key or "none",
                                              timeout=settings.llm_timeout, max_retries=settings.llm_max_retries)
        self.budget = Budget(settings.llm_max_requests, settings.llm_max_tokens)
        self.stats = RunStats()

    # one request ------------------------------------------------------------

    def _ask(self, messages: list[dict]) -> str:
        """One chat completion (the client retries transient errors); spends the budget."""
        raw = self.client.chat.completions.with_raw_response.create(model=self.model, messages=messages,
                                                                     temperature=0,
                                                                     max_tokens=MAX_REPLY_TOKENS[self.mode])
        completion = raw.parse()
        usage = completion.usage
        self.budget.spend(usage.total_tokens if usage else 0, extra_requests=raw.retries_taken)
        with self.budget.lock:
            self.stats.http_retries += raw.retries_taken
        return completion.choices[0].message.content or ""

    def _parse(self, reply: str, task: Task) -> dict:
        if self.mode == "categorical":
            return {"category": parse_label(reply, task.categories)}
        if self.mode == "judgment":
            judgment, verdict = parse_judgment(reply)
            return {"judgment": judgment, "verdict": verdict}
        analysis, feedback, score = parse_free_text(reply)
        return {"analysis": analysis, "feedback": feedback, "score": score}

    def _judge(self, item: FeedbackItem, task: Task, messages: list[dict], key: str) -> FeedbackResult:
        """Ask, re-ask on unparsable replies, record every attempt as a JudgeCall row."""
        calls: list[JudgeCall] = []
        result: FeedbackResult | None = None

        def record(reply=None, parsed=None, ok=False, error=None):
            calls.append(JudgeCall(key=key, generation_id=item.generation_id, model=self.model,
                                   prompt_version=self.prompt_version, mode=self.mode, request=list(messages),
                                   reply=reply, parsed=parsed, ok=ok, error=error))

        try:
            for attempt in range(self.reasks + 1):
                if not self.budget.take_request():
                    result = FeedbackResult(reason=f"{BUDGET_EXHAUSTED} ({self.budget.limits()})")
                    break
                try:
                    reply = self._ask(messages)
                except FATAL_ERRORS:
                    raise
                except Exception as e:  # retried by the client already (or a malformed response); not cached
                    record(error=f"{type(e).__name__}: {str(e)[:1000]}")
                    result = FeedbackResult(reason=f"{REQUEST_FAILED}: {type(e).__name__}: {str(e)[:200]}")
                    break
                cut = ""
                if len(reply) > MAX_REPLY_CHARS:  # an endpoint that ignores max_tokens: keep the database small
                    cut = f"reply truncated: {len(reply)} characters, kept {MAX_REPLY_CHARS}; "
                    reply = reply[:MAX_REPLY_CHARS]
                try:
                    parsed = self._parse(reply, task)
                except ParseError as e:
                    if attempt < self.reasks:
                        record(reply=reply, error=f"{cut}unparsed: {e}")
                        messages = messages + [{"role": "assistant", "content": reply},
                                               {"role": "user", "content": self._reask(reply, task, str(e))}]
                        with self.budget.lock:
                            self.stats.reasks += 1
                        continue
                    reason = f"no valid answer after {attempt + 1} tries: {e}"
                    record(reply=reply, parsed={"reason": reason}, error=f"{cut}unparsed: {e}")  # cached: temperature 0
                    result = FeedbackResult(reason=reason, raw=reply)
                    break
                record(reply=reply, parsed=parsed, ok=True, error=cut.rstrip("; ") or None)
                result = _result_from(parsed, reply)
                break
        finally:
            if calls:
                with session_scope(self.settings.db) as s:
                    s.add_all(calls)
        assert result is not None
        return result

    def _reask(self, reply: str, task: Task, problem: str) -> str:
        if self.mode == "categorical":
            return jp.categorical_reask(reply, task)
        return jp.judgment_reask(problem) if self.mode == "judgment" else jp.free_text_reask(problem)

    # a batch ----------------------------------------------------------------

    def _messages(self, item: FeedbackItem, task: Task) -> list[dict]:
        build = {"categorical": jp.categorical_messages, "free_text": jp.free_text_messages,
                 "judgment": jp.judgment_messages}[self.mode]
        return build(task, item.prompt, item.response)

    def _cached(self, keys: list[str]) -> dict[str, FeedbackResult]:
        if not self.use_cache or not keys:
            return {}
        found: dict[str, FeedbackResult] = {}
        with session_scope(self.settings.db) as s:
            for row in s.exec(select(JudgeCall).where(JudgeCall.key.in_(set(keys))).order_by(JudgeCall.id)):
                if row.parsed:  # only final outcomes carry ``parsed`` (a JSON null is not SQL NULL)
                    found[row.key] = _result_from(row.parsed, row.reply)
        return found

    def __call__(self, items: list[FeedbackItem], task: Task) -> list[FeedbackResult]:
        if self.mode == "categorical" and not task.categories:
            raise ValueError(f"task {task.name!r} has no categories for the categorical judge")
        self.stats = RunStats(items=len(items))
        start_requests, start_tokens = self.budget.requests, self.budget.tokens
        messages = [self._messages(it, task) for it in items]
        keys = [cache_key(self.model, self.prompt_version, m) for m in messages]
        cached = self._cached(keys)
        results: list[FeedbackResult | None] = [cached.get(k) for k in keys]
        todo: dict[str, int] = {}  # key -> first item with it: identical items are asked once
        for i, k in enumerate(keys):
            if results[i] is None:
                todo.setdefault(k, i)
        self.stats.cache_hits = sum(r is not None for r in results)
        bar = tqdm(total=len(items), initial=self.stats.cache_hits, desc=f"judging ({self.name})", unit="item",
                   disable=not self.show_progress)
        pool = ThreadPoolExecutor(max_workers=max(1, self.settings.llm_concurrency))
        try:
            futures = {pool.submit(self._judge, items[i], task, messages[i], k): k for k, i in todo.items()}
            for fut in as_completed(futures):
                try:
                    result = fut.result()
                except FATAL_ERRORS as e:
                    pool.shutdown(wait=True, cancel_futures=True)
                    raise RuntimeError(f"LLM judge at {self.settings.llm_base_url} refused the request "
                                       f"({type(e).__name__}): {e}. Check ALT_LLM_BASE_URL, ALT_LLM_MODEL and "
                                       "ALT_LLM_API_KEY.") from e
                same = [i for i, k in enumerate(keys) if k == futures[fut]]
                for i in same:
                    results[i] = result
                bar.update(len(same))
        finally:
            pool.shutdown(wait=True, cancel_futures=True)
            bar.close()
        out = [r if r is not None else FeedbackResult(reason="not judged") for r in results]
        self._finish(out, start_requests, start_tokens)
        asked = [out[i] for i in todo.values()]
        if asked and not any(r.ok for r in out) and all((r.reason or "").startswith(REQUEST_FAILED) for r in asked):
            raise RuntimeError(f"LLM judge at {self.settings.llm_base_url}: all {len(asked)} requests failed, nothing "
                               f"was judged — {asked[0].reason}. Check that the endpoint is up (ALT_LLM_BASE_URL, "
                               "ALT_LLM_TIMEOUT); the failures are in the judgecall table and are retried on a rerun.")
        return out

    def _finish(self, results: list[FeedbackResult], start_requests: int, start_tokens: int) -> None:
        st = self.stats
        st.requests = self.budget.requests - start_requests
        st.tokens = self.budget.tokens - start_tokens
        st.judged = sum(r.ok for r in results)
        st.failed = len(results) - st.judged
        skipped = sum(1 for r in results if (r.reason or "").startswith(BUDGET_EXHAUSTED))
        st.budget_exhausted = skipped > 0
        st.message = (f"{self.name}: {st.judged}/{st.items} judged, {st.cache_hits} from cache, "
                      f"{st.requests} HTTP requests ({st.http_retries} client retries, {st.reasks} re-asks), "
                      f"{st.tokens} tokens")
        if st.budget_exhausted:
            st.message += (f"; BUDGET EXHAUSTED after {self.budget.describe()}: "
                           f"{skipped} items were not judged — raise ALT_LLM_MAX_REQUESTS / ALT_LLM_MAX_TOKENS "
                           "or rerun (answers so far are cached)")
            log.warning(st.message)
        else:
            log.info(st.message)


def make_llm_provider(mode: str, settings: Settings, task: Task | None = None, **kw) -> LLMJudge:
    """The ``llm:categorical`` / ``llm:free_text`` / ``llm:judgment`` provider (``free-text`` accepted too)."""
    mode = mode.replace("-", "_")
    if mode == "categorical" and task is not None and not task.categories:
        raise ValueError(f"task {task.name!r} has no categories for the categorical judge")
    return LLMJudge(mode, settings, **kw)


def exemplar_pool(db: str, task_id: int, top: int = 8, min_score: float | None = None) -> list[str]:
    """The best-scored distinct free-text feedback texts of a task, best first.

    From round 2 on, sampling for a free-text task is conditioned on one of these (ALT-LMU: the score-3 texts of
    earlier rounds). Feedback on evaluation samples never becomes an exemplar.
    """
    q = (select(Feedback.text, Generation.sampling_params).join(Generation, Generation.id == Feedback.generation_id)
         .join(Prompt, Prompt.id == Generation.prompt_id)
         .where(Prompt.task_id == task_id, Feedback.kind == FeedbackKind.TEXT, Feedback.text.is_not(None),
                Feedback.score.is_not(None))
         .order_by(Feedback.score.desc(), Feedback.id.desc()))
    if min_score is not None:
        q = q.where(Feedback.score >= min_score)
    texts: list[str] = []
    with session_scope(db) as s:
        for text, params in s.exec(q):
            if (params or {}).get("purpose") == "eval":
                continue
            if text.strip() and text not in texts:
                texts.append(text)
                if len(texts) >= top:
                    break
    return texts
