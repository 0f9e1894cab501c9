"""A small, real OpenAI-compatible HTTP server with scripted replies, for driving the real ``openai`` client.

The script lives in the text being judged: a marker such as ``[[label:Good]]``
anywhere in a request's messages chooses the reply, so each test generation
carries its own scenario. Markers (``N`` = how many times, per marker text):

    [[label:TEXT]]          reply TEXT (e.g. a valid label, or a decorated one: ``"Label: good."``)
    [[reply:TEXT]]          reply TEXT verbatim (off-label, malformed ...)
    [[bad-then:N:TEXT]]     reply "I think it is fine" N times, then TEXT (tests re-asking)
    [[429:N:TEXT]]          answer 429 N times, then TEXT
    [[500:N:TEXT]]          answer 500 N times, then TEXT
    [[slow:N:TEXT]]         sleep past any short timeout N times, then TEXT
    [[freetext:SCORE:FEEDBACK]]  a well-formed three-part free-text judgement

Without a marker the server answers ``default_reply`` after ``delay`` seconds
(the benchmark uses this). ``counts`` records every HTTP request by path, so a
test can assert how many calls (retries included) really reached the server.
``\\n`` inside a marker's TEXT stands for a newline.
"""

from __future__ import annotations

import json
import re
import threading
import time
from collections import Counter
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

MARKER = re.compile(r"\[\[(label|reply|bad-then|429|500|slow|freetext):(.*?)\]\]")
SLOW_SECONDS = 3.0


class StubServer:
    """``with StubServer() as s: OpenAI(base_url=s.base_url, ...)``; ``s.counts["/v1/chat/completions"]``."""

    def __init__(self, delay: float = 0.0, default_reply: str = "Good", model: str = "stub-judge",
                 usage_tokens: tuple[int, int] = (50, 5)):
        self.delay, self.default_reply, self.model = delay, default_reply, model
        self.usage_tokens = usage_tokens
        self.counts: Counter[str] = Counter()
        self.seen: Counter[str] = Counter()  # per marker: how many times it was asked
        self.requests: list[dict] = []
        self.lock = threading.Lock()
        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), self._handler())
        self.httpd.daemon_threads = True
        self.thread = threading.Thread(target=self.httpd.serve_forever, daemon=True)

    @property
    def base_url(self) -> str:
        return f"http://127.0.0.1:{self.httpd.server_address[1]}/v1"

    @property
    def chat_calls(self) -> int:
        return self.counts["/v1/chat/completions"]

    def __enter__(self) -> StubServer:
        self.thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()

    # ----------------------------------------------------------------- script

    def decide(self, body: dict) -> tuple[int, str, float]:
        """(HTTP status, reply text, delay seconds) for one chat request."""
        text = "\n".join(str(m.get("content", "")) for m in body.get("messages", []))
        found = MARKER.search(text)
        if not found:
            return 200, self.default_reply, self.delay
        kind, arg = found.groups()
        with self.lock:
            self.seen[found.group(0)] += 1
            seen = self.seen[found.group(0)]
        arg = arg.replace("\\n", "\n")
        if kind in ("label", "reply"):
            return 200, arg, self.delay
        if kind == "freetext":
            score, feedback = arg.split(":", 1)
            return 200, f"Analysis: The reply is on topic.\nFeedback: {feedback}\nScore: {score}", self.delay
        times, reply = arg.split(":", 1)
        failing = seen <= int(times)
        if kind == "bad-then":
            return 200, ("I think it is fine" if failing else reply), self.delay
        if kind == "slow":
            return 200, reply, (SLOW_SECONDS if failing else self.delay)
        return (int(kind) if failing else 200), reply, self.delay

    def completion(self, body: dict, reply: str) -> dict:
        prompt_tokens, completion_tokens = self.usage_tokens
        return {
            "id": f"chatcmpl-stub{self.chat_calls}", "object": "chat.completion", "created": int(time.time()),
            "model": body.get("model", self.model),
            "choices": [{"index": 0, "message": {"role": "assistant", "content": reply}, "finish_reason": "stop"}],
            "usage": {"prompt_tokens": prompt_tokens, "completion_tokens": completion_tokens,
                      "total_tokens": prompt_tokens + completion_tokens},
        }

    def _handler(self):
        stub = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args):  # quiet
                pass

            def _send(self, status: int, payload: dict, headers: dict | None = None) -> None:
                data = json.dumps(payload).encode()
                self.send_response(status)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(data)))
                for k, v in (headers or {}).items():
                    self.send_header(k, v)
                self.end_headers()
                try:
                    self.wfile.write(data)
                except (BrokenPipeError, ConnectionResetError):  # the client timed out and left
                    pass

            def do_GET(self):
                with stub.lock:
                    stub.counts[self.path] += 1
                if self.path == "/v1/models":
                    self._send(200, {"object": "list", "data": [{"id": stub.model, "object": "model"}]})
                else:
                    self._send(404, {"error": {"message": "not found", "type": "invalid_request_error"}})

            def do_POST(self):
                with stub.lock:
                    stub.counts[self.path] += 1
                body = json.loads(self.rfile.read(int(self.headers.get("Content-Length", 0))) or b"{}")
                with stub.lock:
                    stub.requests.append(body)
                if self.path != "/v1/chat/completions":
                    self._send(404, {"error": {"message": "not found", "type": "invalid_request_error"}})
                    return
                status, reply, delay = stub.decide(body)
                if delay:
                    time.sleep(delay)
                if status != 200:
                    self._send(status, {"error": {"message": f"scripted {status}", "type": "server_error"}},
                               {"retry-after-ms": "5"})  # keep the client's backoff short in tests
                    return
                self._send(200, stub.completion(body, reply))

        return Handler
