"""What an export starts from: a training run (its final adapter or one checkpoint) or a model folder.

A run directory is read through `core.runs`, its one owner (config.yaml with base_model and dataset,
complete checkpoints, the final adapter). The base model goes through the registry (`core.models.resolve`),
so an unreachable hub id fails with its one sentence before any work starts.
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import yaml

from core import runs
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


def adapter_dir(run_dir: Path, checkpoint: int | None) -> Path:
    """The adapter folder of checkpoint-N, or the final adapter (else the latest complete checkpoint)."""
    run_dir = Path(run_dir)
    have = runs.list_checkpoints(run_dir)
    if checkpoint is not None and checkpoint not in have:
        raise IrisError(f"run {run_dir.name} has no complete checkpoint-{checkpoint}"
                        + (f"; complete ones: {', '.join(map(str, have))}." if have else "; it has no complete checkpoints yet."))
    return runs.adapter_dir(run_dir, checkpoint)


def resolve_source(source: str, checkpoint: int | None = None) -> Source:
    """Turn what the user picked into base folder + adapter folder + lineage, or one IrisError."""
    from core import models

    run_dir = runs.find_run(source)
    if run_dir is not None:
        try:
            cfg = yaml.safe_load((run_dir / runs.CONFIG).read_text(encoding="utf-8")) or {}
        except yaml.YAMLError:
            raise IrisError(f"{run_dir / runs.CONFIG} is not valid YAML: the run folder is damaged.") from None
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


def exportable(run_dir: Path) -> bool:
    """Does the run have something to export yet (a final adapter or a complete checkpoint)?"""
    run_dir = Path(run_dir)
    return (run_dir / runs.ADAPTER / "adapter_config.json").exists() or bool(runs.list_checkpoints(run_dir))
