"""Many versions in one process: ``ModelHub`` (one per database, ``hub_for``) holds the served version's
``ModelServer``, keeps the previous one loaded for an instant rollback, loads others on request and
hot-swaps on promote / rollback."""

from __future__ import annotations

import threading
from pathlib import Path

from .. import conditioning
from ..db import is_url
from .model_cache import BackendCache, model_bytes
from .server import ModelServer


class ModelHub:
    """The process-wide model server: the served version, the one before it, and others on request.

    - ``hub.served`` is the ``ModelServer`` for the promoted version (``/v1``, the playground's default);
    - ``hub.for_version(name_or_id)`` is a ``ModelServer`` for any version (the playground comparing
      versions), sharing loaded weights through one memory-bounded ``BackendCache``;
    - ``hub.promote(version_id)`` / ``hub.rollback()`` change the database's served version and hot-swap
      ``served``: requests in flight finish on the old model, new ones get the new one; the previous
      version stays loaded, so rolling back loads nothing.
    - ``hub.follow()`` picks up promotions made by other processes (``alt models promote``, a round job).
    """

    def __init__(self, settings, *, max_models: int = 3, max_bytes: int | None = None,
                 served: ModelServer | None = None, loader=None, **server_kw):
        self.db, self.settings = settings.db, settings
        self.cache = BackendCache(settings.device, max_models, max_bytes, loader)
        self._server_kw = server_kw
        self.served = served or ModelServer.from_settings(settings, cache=self.cache, **server_kw)
        if self.served.cache is None:
            self.served.cache = self.cache
        if self.served.backend is not None and self.served.path:
            with self.cache._lock:  # a ready backend given by the caller counts as loaded
                self.cache._models[self.served.path] = self.served.backend
                self.cache._sizes[self.served.path] = model_bytes(self.served.backend)
        self.cache.pin([self.served.path])
        self._others: dict[str, ModelServer] = {}
        self._lock = threading.Lock()

    def _version(self, version):
        from ..db import ModelVersion, select, session_scope

        if hasattr(version, "path"):
            return version
        with session_scope(self.db) as s:
            row = s.get(ModelVersion, version) if isinstance(version, int) else s.exec(
                select(ModelVersion).where(ModelVersion.name == version)).first()
        if row is None:
            raise ValueError(f"no model version {version!r}")
        return row

    def for_version(self, version) -> ModelServer:
        """A server for ``version`` (name, id or row): the served one, or one loaded on request (LRU)."""
        row = self._version(version)
        if (row.name, row.path) == (self.served.version_name, self.served.path):
            return self.served
        with self._lock:
            server = self._others.get(row.path)
            if server is None:
                fmt = conditioning.format_of(row) if getattr(row, "conditioning", None) else None
                server = ModelServer(path=row.path, version_name=row.name, device=self.settings.device,
                                     cache=self.cache, fmt=fmt, **self._server_kw)
                server.max_prompt_tokens = self.served.max_prompt_tokens
                self._others[row.path] = server
            for path in [p for p in self._others if p not in self.cache and p != row.path]:
                self._others.pop(path).close(timeout=0)  # its model was evicted
        return server

    def promote(self, version_id: int):
        """Serve ``version_id``: load it, mark it served in the database, swap. Returns the version row."""
        from ..db import session_scope
        from ..versions import promote

        row = self._version(version_id)
        self.cache.get(row.path)  # load before anything changes: a failed load leaves serving as it was
        with session_scope(self.db) as s:
            row = promote(s, row.id)
        self.served.reload(row)
        return row

    def rollback(self):
        """Serve the parent of the served version (usually still loaded: instant)."""
        from ..db import session_scope
        from ..versions import rollback

        with session_scope(self.db) as s:
            row = rollback(s)
        self.served.reload(row)
        return row

    def sync(self) -> bool:
        return self.served.sync(self.db)

    def follow(self, every: float = 5.0) -> None:
        self.served.follow(self.db, every)

    def close(self) -> None:
        for server in [self.served, *self._others.values()]:
            server.close(timeout=5)


_hubs: dict[str, ModelHub] = {}
_hubs_lock = threading.Lock()


def _hub_key(db: str) -> str:
    return db if is_url(db) else str(Path(db).resolve())


def hub_for(settings, **kw) -> ModelHub:
    """The one ``ModelHub`` of this process for ``settings.db`` (created on first use)."""
    key = _hub_key(settings.db)
    with _hubs_lock:
        if key not in _hubs:
            _hubs[key] = ModelHub(settings, **kw)
        return _hubs[key]


def close_hub(db: str) -> None:
    """Stop this process's hub for ``db`` — its model servers and its promotion watcher — e.g. before the
    database is dropped (else the watcher keeps asking a database that is gone)."""
    with _hubs_lock:
        hub = _hubs.pop(_hub_key(db), None)
    if hub is not None:
        hub.close()
