"""Loaded engines, shared by every page session and thread of one process, least recently used dropped first."""
from __future__ import annotations

import threading
from collections import OrderedDict

from core.inference.catalog import ChatModel, find_model
from core.inference.engine import Engine

DEFAULT_MAX_LOADED = 2  # engines kept in RAM; a 1B q4_k_m engine is ≈ 1 GiB, fp32 transformers ≈ 5 GiB


def open_engine(model: ChatModel, n_ctx: int | None = None) -> Engine:
    """A new engine for `model`: llama-cpp-python for GGUFs, transformers for folders and adapters."""
    if model.kind == "gguf":
        from core.inference.engine_gguf import GGUFEngine

        return GGUFEngine(model, n_ctx=n_ctx)
    from core.inference.engine_hf import HFEngine

    return HFEngine(model, n_ctx=n_ctx)


class EngineCache:
    """Loaded engines, least recently used dropped first. One per process (the page keeps it in
    `st.cache_resource`); safe to share between threads: loading is serialised by a lock, and each
    engine serialises its own generation."""

    def __init__(self, max_loaded: int = DEFAULT_MAX_LOADED) -> None:
        self.max_loaded = max(1, int(max_loaded))
        self._engines: OrderedDict[str, Engine] = OrderedDict()
        self._lock = threading.Lock()

    def load(self, model_id: str, n_ctx: int | None = None) -> Engine:
        model = find_model(model_id)
        with self._lock:
            engine = self._engines.get(model.id)
            if engine is not None and not engine.stale():
                self._engines.move_to_end(model.id)
                return engine
            self._engines.pop(model.id, None)
            # Evict before loading so the new model has the RAM; a thread still generating with an
            # evicted engine keeps its reference, and the engine is freed when that thread is done.
            while len(self._engines) >= self.max_loaded:
                self._engines.popitem(last=False)
            engine = open_engine(model, n_ctx=n_ctx)
            self._engines[model.id] = engine
            return engine

    def unload(self, model_id: str) -> None:
        with self._lock:
            self._engines.pop(model_id, None)

    def loaded(self) -> list[dict]:
        """[{id, label, kind, ram_bytes}] for the loaded engines, most recently used last."""
        with self._lock:
            return [{"id": e.model.id, "label": e.model.label, "kind": e.model.kind, "ram_bytes": e.ram_bytes}
                    for e in self._engines.values()]


_DEFAULT_CACHE = EngineCache()


def default_cache() -> EngineCache:
    return _DEFAULT_CACHE


def load_engine(model_id: str, cache: EngineCache | None = None, n_ctx: int | None = None) -> Engine:
    """A ready engine for `model_id`, from the cache when loaded; raises IrisError for bad models."""
    return (cache or _DEFAULT_CACHE).load(model_id, n_ctx=n_ctx)


def loaded_engines(cache: EngineCache | None = None) -> list[dict]:
    return (cache or _DEFAULT_CACHE).loaded()
