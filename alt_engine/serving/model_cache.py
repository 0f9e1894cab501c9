"""Loaded models by path in one process, bounded in number and bytes (least recently used evicted first);
the served version and the one before it are pinned, so a rollback loads nothing."""

from __future__ import annotations

import logging
import threading

log = logging.getLogger(__name__)


def model_bytes(backend) -> int:
    """Memory a loaded model takes (parameters and buffers)."""
    model = getattr(backend, "model", None)
    if model is None:
        return 0
    tensors = [*model.parameters(), *model.buffers()]
    return sum(t.numel() * t.element_size() for t in tensors)


class BackendCache:
    """Loaded models by path, least recently used evicted first: at most ``max_models`` and ``max_bytes``.

    ``pin`` marks paths that must stay (the served version and the one before it, for an instant
    rollback); an unpinned one is dropped when a new load would exceed either bound.
    """

    def __init__(self, device: str = "auto", max_models: int = 3, max_bytes: int | None = None, loader=None):
        from collections import OrderedDict

        self.device, self.max_models, self.max_bytes = device, max_models, max_bytes
        self._loader = loader or (lambda path: __import__("alt_engine.sampling", fromlist=["make_backend"])
                                  .make_backend("transformers", path, device))
        self._models: OrderedDict[str, object] = OrderedDict()
        self._sizes: dict[str, int] = {}
        self._pinned: set[str] = set()
        self._lock = threading.RLock()
        self._loading: dict[str, threading.Lock] = {}
        self.loads = 0  # models loaded so far (a rollback to a cached version loads nothing)

    def __contains__(self, path: str) -> bool:
        return path in self._models

    @property
    def paths(self) -> list[str]:
        """Loaded paths, least recently used first."""
        return list(self._models)

    @property
    def total_bytes(self) -> int:
        return sum(self._sizes.values())

    def pin(self, paths) -> None:
        with self._lock:
            self._pinned = set(paths)

    def get(self, path: str):
        """The loaded model at ``path`` (loaded now if needed; one load per path at a time)."""
        with self._lock:
            if path in self._models:
                self._models.move_to_end(path)
                return self._models[path]
            gate = self._loading.setdefault(path, threading.Lock())
        with gate:
            with self._lock:
                if path in self._models:
                    return self._models[path]
            backend = self._loader(path)
            size = model_bytes(backend)
            with self._lock:
                self.loads += 1
                self._evict_for(size)
                self._models[path], self._sizes[path] = backend, size
                self._loading.pop(path, None)
            return backend

    def _evict_for(self, size: int) -> None:
        def over() -> bool:
            too_many = len(self._models) + 1 > self.max_models
            too_big = self.max_bytes is not None and self.total_bytes + size > self.max_bytes
            return too_many or too_big

        for path in list(self._models):  # least recently used first
            if not over():
                return
            if path not in self._pinned:
                del self._models[path], self._sizes[path]
                log.info("unloaded %s (model cache full)", path)
