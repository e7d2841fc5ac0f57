"""The run directory: the one owner of its layout, for the training job, Export, Chat, Evaluate and pages.

    IRIS_HOME/runs/<run>/
      config.yaml       the TrainConfig (core.train.config)
      status.json       state, pid, step, total, eta_s (core.jobs); before step 1 also phase, phase_done,
                        phase_total (e.g. "tokenising", 120, 86892), rows_tokenised / rows_cached at the end
      metrics.jsonl     one line per log: step, loss, eval_loss, lr, grad_norm, tokens_per_s, epoch, time
      train.log         the job's stdout/stderr
      checkpoints/checkpoint-N/   HF Trainer checkpoint (adapter, optimizer, scheduler, RNG, trainer_state);
                        it counts only once its COMPLETE marker exists (written last), so a checkpoint torn
                        by a kill is never taken as the latest
      adapter/          final LoRA adapter + tokenizer + README.md model card

Everything here reads folders; nothing imports torch or a workflow package.
"""
from __future__ import annotations

from pathlib import Path

import yaml

from core import jobs
from core.errors import IrisError
from core.paths import listed, read_jsonl, runs_dir

CONFIG, METRICS, LOG, CHECKPOINTS, ADAPTER = "config.yaml", "metrics.jsonl", "train.log", "checkpoints", "adapter"
COMPLETE = "COMPLETE"


def run_path(name: str) -> Path:
    return runs_dir() / name


def find_run(source: str) -> Path | None:
    """The run folder `source` names (a path, or a name under IRIS_HOME/runs), else None."""
    path = Path(source).expanduser()
    for candidate in (path, runs_dir() / source):
        if candidate.is_dir() and (candidate / CONFIG).exists():
            return candidate.resolve()
    return None


def read_config(run_dir: Path) -> dict:
    """config.yaml as a plain dict ({} when missing or damaged): for lineage, without TrainConfig's checks."""
    try:
        data = yaml.safe_load((Path(run_dir) / CONFIG).read_text(encoding="utf-8"))
        return data if isinstance(data, dict) else {}
    except (OSError, yaml.YAMLError):
        return {}


def list_checkpoints(run_dir: Path) -> list[int]:
    """Steps of the complete checkpoints, ascending (torn ones, without COMPLETE, are left out)."""
    folder = Path(run_dir) / CHECKPOINTS
    steps = []
    for ckpt in folder.glob("checkpoint-*") if folder.exists() else []:
        suffix = ckpt.name.split("-", 1)[1]
        if suffix.isdigit() and (ckpt / COMPLETE).exists():
            steps.append(int(suffix))
    return sorted(steps)


def checkpoint_dir(run_dir: Path, step: int | None = None) -> Path:
    steps = list_checkpoints(run_dir)
    if not steps:
        raise IrisError(f"run {Path(run_dir).name} has no complete checkpoint yet.")
    if step is None:
        step = steps[-1]
    if step not in steps:
        raise IrisError(f"run {Path(run_dir).name} has no complete checkpoint-{step}; it has "
                        f"{', '.join(map(str, steps))}.")
    return Path(run_dir) / CHECKPOINTS / f"checkpoint-{step}"


def adapter_dir(run_dir: Path, checkpoint: int | None = None) -> Path:
    """The LoRA adapter folder (adapter_config.json + adapter_model.safetensors) to export or chat with:
    the final adapter/, or checkpoint-N's when `checkpoint` is given (or the run has no final adapter)."""
    run_dir = Path(run_dir)
    if checkpoint is None and (run_dir / ADAPTER / "adapter_config.json").exists():
        return run_dir / ADAPTER
    return checkpoint_dir(run_dir, checkpoint)


def read_metrics(run_dir: Path) -> list[dict]:
    return read_jsonl(Path(run_dir) / METRICS)


def list_runs() -> list[dict]:
    """Every run with its status, lineage and complete checkpoints, newest first (pages and Home)."""
    out = []
    for folder in listed(runs_dir()):
        if not (folder / CONFIG).exists():
            continue
        cfg, status = read_config(folder), jobs.read_status(folder)
        out.append({"run": folder.name, "state": status.get("state", "new"), "step": status.get("step"),
                    "total": status.get("total"), "progress": jobs.progress_line(status)[1], "checkpoints": list_checkpoints(folder), "path": folder,
                    "base_model": cfg.get("base_model"), "dataset": cfg.get("dataset"),
                    "method": cfg.get("method", "sft"), "parent_run": cfg.get("parent_run") or None})
    return out


def checkpoint_bytes(trainable: int) -> int:
    """Adapter (fp32) + two Adam moments + scheduler/RNG/state files, in bytes."""
    return trainable * 12 + 2_000_000
