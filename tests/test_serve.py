"""`alt serve` on the default model: answers HTTP 200, the model is loaded, a first admin can sign in."""

import os

import httpx
import pytest
from conftest import LiveServer


@pytest.mark.slow
def test_serve_default_model(tmp_path):
    cache = os.environ.get("ALT_CACHE_DIR") or os.path.expanduser("~/.cache/alt-studio")  # reuse the converted model
    server = LiveServer(str(tmp_path / "annotations.db"), "default", tmp_path,
                        env={"ALT_ADMIN_PASSWORD": "first-admin-pw", "ALT_CACHE_DIR": cache})
    try:
        with httpx.Client(base_url=server.url, timeout=120) as http:
            assert http.get("/healthz").status_code == 200
            assert http.get("/login").status_code == 200
            out = server.output()  # the first admin in a box, after the start-up output, and in a 0600 file
            assert "the first admin" in out and "password:  first-admin-pw" in out
            assert out.rindex("#" * 20) > out.index("ALT Studio on http")
            cred = tmp_path / "annotations.db.admin-credentials.txt"
            assert "first-admin-pw" in cred.read_text() and (cred.stat().st_mode & 0o777) == 0o600
            assert http.post("/api/login", json={"username": "admin", "password": "first-admin-pw"}).status_code == 200
            page = http.get("/")
            assert page.status_code == 200 and "ALT Studio" in page.text
            assert http.get("/v1/models", headers={"Authorization": "Bearer sk-local"}).status_code == 401  # no default
            key = http.post("/api/keys", json={"name": "test"}).json()["key"]  # the admin's own key, made in the app
            models = http.get("/v1/models", headers={"Authorization": f"Bearer {key}"}).json()
            assert models["data"][0]["id"] == "v0-base"
            reply = http.post("/v1/chat/completions", headers={"Authorization": f"Bearer {key}"}, json={
                "model": "v0-base", "messages": [{"role": "user", "content": "What is 2 + 2?"}],
                "max_tokens": 8, "temperature": 0})
            assert reply.status_code == 200, reply.text
            body = reply.json()
            assert body["choices"][0]["message"]["content"].strip()  # SmolLM2 answered
            assert body["usage"]["completion_tokens"] > 0
    finally:
        server.stop()
