"""What an export starts from: a training run (its final adapter or one checkpoint) or a model folder.

A run directory is owned by `core.train` (config.yaml with base_model and dataset, checkpoints/,
adapter/); we read it through `core.train.list_checkpoints` / `adapter_dir` when those exist, and by
the documented layout otherwise. The base model goes through the registry (`core.models.resolve`),
so an unreachable hub id fails with its one sentence before any work starts.
"""
from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path

import yaml

from core.errors import IrisError
from core.paths import runs_dir


@dataclass(frozen=True)
class Source:
    base_dir: Path
    """transformers folder of the base model (or of the whole model, for a plain folder)"""
    adapter_dir: Path | None
    """peft adapter folder; None for a plain model folder"""
    run: str | None = None
    checkpoint: int | None = None
    dataset: str | None = None
    base_model: str | None = None
    """what the run's config names (registry id, hub id or folder), for lineage"""


def find_run(source: str) -> Path | None:
    """The run folder `source` names (a path, or a name under IRIS_HOME/runs), else None."""
    path = Path(source).expanduser()
    for candidate in (path, runs_dir() / source):
        if candidate.is_dir() and (candidate / "config.yaml").exists():
            return candidate.resolve()
    return None


def list_checkpoints(run_dir: Path) -> list[int]:
    """Steps of the run's complete checkpoints (core.train's view when available)."""
    try:
        from core.train import list_checkpoints as train_list
    except ImportError:
        train_list = None
    if train_list is not None:
        found = train_list(run_dir)
        return sorted(_step(c) for c in found)
    steps = []
    for folder in (Path(run_dir) / "checkpoints").glob("checkpoint-*"):
        # a checkpoint counts once its COMPLETE marker (written last by core.train) exists
        if re.fullmatch(r"checkpoint-\d+", folder.name) and (folder / "COMPLETE").exists():
            steps.append(int(folder.name.split("-")[1]))
    return sorted(steps)


def _step(item) -> int:
    if isinstance(item, int):
        return item
    return int(str(Path(item).name).rsplit("-", 1)[-1])


def adapter_dir(run_dir: Path, checkpoint: int | None) -> Path:
    """The adapter folder of checkpoint-N, or the final adapter (core.train's view when available)."""
    run_dir = Path(run_dir)
    if checkpoint is not None and checkpoint not in list_checkpoints(run_dir):
        have = list_checkpoints(run_dir)
        raise IrisError(f"run {run_dir.name} has no complete checkpoint-{checkpoint}"
                        + (f"; complete ones: {', '.join(map(str, have))}." if have else "; it has no complete checkpoints yet."))
    try:
        from core.train import adapter_dir as train_adapter_dir
    except ImportError:
        train_adapter_dir = None
    if train_adapter_dir is not None:
        try:
            return Path(train_adapter_dir(run_dir, checkpoint))
        except IrisError:
            raise
        except (FileNotFoundError, ValueError) as err:
            raise IrisError(f"run {run_dir.name}: {err}") from None
    folder = run_dir / "checkpoints" / f"checkpoint-{checkpoint}" if checkpoint is not None else run_dir / "adapter"
    if not (folder / "adapter_model.safetensors").exists():
        have = list_checkpoints(run_dir)
        hint = f"export one of its checkpoints ({', '.join(map(str, have))})" if have else "train it first"
        raise IrisError(f"run {run_dir.name} has no final adapter yet: {hint}.")
    return folder


def resolve_source(source: str, checkpoint: int | None = None) -> Source:
    """Turn what the user picked into base folder + adapter folder + lineage, or one IrisError."""
    from core import models

    run_dir = find_run(source)
    if run_dir is not None:
        try:
            cfg = yaml.safe_load((run_dir / "config.yaml").read_text(encoding="utf-8")) or {}
        except yaml.YAMLError:
            raise IrisError(f"{run_dir / 'config.yaml'} is not valid YAML: the run folder is damaged.") from None
        if not cfg.get("base_model"):
            raise IrisError(f"run {run_dir.name} names no base_model in config.yaml.")
        adapter = adapter_dir(run_dir, checkpoint)
        if not (adapter / "adapter_config.json").exists():
            raise IrisError(f"{adapter} has no adapter_config.json: the checkpoint is torn; pick another one.")
        base = models.resolve(str(cfg["base_model"]))
        return Source(base, adapter, run_dir.name, checkpoint, cfg.get("dataset"), str(cfg["base_model"]))
    if checkpoint is not None:
        raise IrisError(f"{source} is not a run folder, so it has no checkpoints to pick from.")
    path = Path(source).expanduser()
    if path.is_dir() and (path / "adapter_config.json").exists() and not (path / "config.json").exists():
        raise IrisError(f"{path} is a bare adapter: export the run it belongs to (its config names the base model).")
    if not path.is_dir():
        raise IrisError(f"{source} is neither a run under {runs_dir()} nor a model folder.")
    base = models.resolve(str(path))
    return Source(base.resolve(), None, None, None, None, str(path))
