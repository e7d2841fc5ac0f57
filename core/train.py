"""LoRA fine-tuning runs that live in their own directory and survive stops, kills and restarts.

Run as:
    python -m core.train CONFIG.yaml                          # a new run (IRIS_HOME/runs/<run_name>/)
    python -m core.train --resume RUN_DIR [--checkpoint N]    # continue from the latest (or step N) checkpoint

The run directory is the interface (pages, Export and Chat read it; nothing else is shared):
    config.yaml       the TrainConfig
    status.json       state, pid, step, total, eta_s (core.jobs)
    metrics.jsonl     one line per log: step, loss, eval_loss, lr, grad_norm, tokens_per_s, epoch, time
    train.log         the job's stdout/stderr
    checkpoints/checkpoint-N/   HF Trainer checkpoint (adapter, optimizer, scheduler, RNG, trainer_state);
                      it counts only once its COMPLETE marker exists (written last), so a checkpoint torn
                      by a kill is never taken as the latest
    adapter/          final LoRA adapter + tokenizer + README.md model card
A graceful stop (core.jobs STOP file) saves a checkpoint and ends in state "stopped". With more than one
GPU visible the page launches this module through `accelerate launch` (one DDP process per GPU).
"""
from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path

from core import jobs, versions
from core.config import load_yaml, save_yaml
from core.errors import IrisError, cli_exit
from core.paths import atomic_dir, free_disk_bytes, read_jsonl, runs_dir
from core.train_config import TrainConfig

CONFIG, METRICS, LOG, CHECKPOINTS, ADAPTER = "config.yaml", "metrics.jsonl", "train.log", "checkpoints", "adapter"
COMPLETE = "COMPLETE"


# ---- the run directory, for pages and the Export helper -------------------------------------------------

def run_path(name: str) -> Path:
    return runs_dir() / name


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


def load_config(run_dir: Path) -> TrainConfig:
    return load_yaml(TrainConfig, Path(run_dir) / CONFIG)


def read_metrics(run_dir: Path) -> list[dict]:
    return read_jsonl(Path(run_dir) / METRICS)


def list_runs() -> list[dict]:
    """Every run with its status and config, newest first (the page's table)."""
    from core.paths import listed

    out = []
    for folder in listed(runs_dir()):
        if not (folder / CONFIG).exists():
            continue
        status = jobs.read_status(folder)
        out.append({"run": folder.name, "state": status.get("state", "new"), "step": status.get("step"),
                    "total": status.get("total"), "checkpoints": list_checkpoints(folder), "path": folder})
    return out


# ---- launching from a page -----------------------------------------------------------------------------

def launcher_argv(*args: str) -> tuple[list[str], int]:
    """`python -m core.train ...`, or `accelerate launch` with one process per visible GPU."""
    from core.estimate import detect_device

    device = detect_device()
    if device.kind == "cuda" and device.count > 1:
        argv = [sys.executable, "-m", "accelerate.commands.launch", "--multi_gpu",
                f"--num_processes={device.count}", "--num_machines=1", "--mixed_precision=bf16",
                "--dynamo_backend=no", "-m", "core.train", *args]
        return argv, device.count
    return jobs.python_module_argv("core.train", *args), 1


def start(cfg: TrainConfig) -> Path:
    """Create the run directory, write config.yaml and launch the job. Returns the run directory."""
    cfg.with_run_name()
    preflight(cfg, resolve_model=False)
    run_dir = run_path(cfg.run_name)
    if run_dir.exists():
        raise IrisError(f"a run named {cfg.run_name!r} already exists: resume it or choose another name.")
    run_dir.mkdir(parents=True)
    save_yaml(cfg, run_dir / CONFIG)
    argv, processes = launcher_argv(str(run_dir / CONFIG))
    jobs.launch(run_dir, argv, log_name=LOG)
    jobs.update_status(run_dir, processes=processes)
    return run_dir


def resume(run_dir: Path, checkpoint: int | None = None) -> int:
    """Relaunch a stopped/died run from its latest (or a chosen) complete checkpoint. Returns the pid."""
    checkpoint_dir(run_dir, checkpoint)  # fail here, in the page, if there is nothing to resume from
    args = ["--resume", str(run_dir)] + (["--checkpoint", str(checkpoint)] if checkpoint is not None else [])
    argv, processes = launcher_argv(*args)
    pid = jobs.launch(run_dir, argv, log_name=LOG)
    jobs.update_status(run_dir, processes=processes)
    return pid


# ---- checks before any weight is loaded ----------------------------------------------------------------

def preflight(cfg: TrainConfig, resolve_model: bool = True) -> Path | None:
    """Refuse what cannot work, with one message: missing dataset, sequence too long, no model, no disk."""
    from core import models
    from core.estimate import estimate

    versions.load_manifest(cfg.dataset)  # raises: the version no longer exists
    est = estimate(cfg)
    if est.problems:
        raise IrisError(" ".join(est.problems))
    model_dir = None
    if resolve_model:
        model_dir = models.resolve(cfg.base_model)  # raises IrisError offline / unknown id
        max_pos = json.loads((model_dir / "config.json").read_text()).get("max_position_embeddings")
        if max_pos and cfg.max_seq_length > max_pos:
            raise IrisError(f"max_seq_length {cfg.max_seq_length} is beyond {cfg.base_model}'s "
                            f"{max_pos} positions: lower it.")
    need = checkpoint_bytes(est.trainable) * 3
    if free_disk_bytes(runs_dir()) < need:
        raise IrisError(f"only {free_disk_bytes(runs_dir()) / 1e6:.0f} MB free for checkpoints "
                        f"(need ~{need / 1e6:.0f} MB): free some disk space.")
    return model_dir


def checkpoint_bytes(trainable: int) -> int:
    """Adapter (fp32) + two Adam moments + scheduler/RNG/state files."""
    return trainable * 12 + 2_000_000


# ---- the training job ----------------------------------------------------------------------------------

def is_main_process() -> bool:
    return int(os.environ.get("RANK", "0")) == 0


def to_dataset(name: str, split: str, assistant_only: bool):
    from datasets import Dataset

    rows = []
    for rec in versions.to_records(versions.load(name, split)):
        msgs = [{"role": m["role"], "content": str(m.get("content") or "")} for m in rec["messages"]]
        if not assistant_only or any(m["role"] == "assistant" and m["content"] for m in msgs):
            rows.append({"messages": msgs})
    if not rows:
        raise IrisError(f"dataset version {name!r} ({split}) has no conversation with an assistant reply.")
    return Dataset.from_list(rows)


def main(cfg: TrainConfig, run_dir: Path | None = None, resume_step: int | None = None,
         resume: bool = False) -> Path:
    """Train `cfg` into `run_dir` (fresh, or from a complete checkpoint when `resume`). Returns run_dir."""
    from core import backends

    cfg.with_run_name()
    run_dir = Path(run_dir or run_path(cfg.run_name))
    main_proc = is_main_process()
    backend = backends.choose(cfg)  # first: unsloth must be imported before transformers and trl
    from core.train_callbacks import IrisCallback, drop_torn_checkpoints, truncate_metrics
    model_dir = preflight(cfg)
    resume_from = None
    if resume:
        resume_from = checkpoint_dir(run_dir, resume_step)
        if main_proc:
            drop_torn_checkpoints(run_dir)
            truncate_metrics(run_dir / METRICS, int(resume_from.name.split("-")[1]))
    elif main_proc and list_checkpoints(run_dir):
        raise IrisError(f"run {run_dir.name} already has checkpoints: resume it (--resume) or use a new name.")
    if main_proc:
        run_dir.mkdir(parents=True, exist_ok=True)
        if not (run_dir / CONFIG).exists():
            save_yaml(cfg, run_dir / CONFIG)
        jobs.update_status(run_dir, state="running", pid=os.getpid(), error=None, message="loading model",
                           resumed_from=resume_from.name if resume_from else None)
    print(f"iris: backend {backend}, {backends.world_size()} process(es), base {cfg.base_model} "
          f"({model_dir}), dataset {cfg.dataset}", flush=True)
    model, tokenizer, peft_config = backends.load_model(cfg, model_dir, backend)
    family = backends.set_training_template(tokenizer, cfg.assistant_only_loss)
    train_ds = to_dataset(cfg.dataset, "train", cfg.assistant_only_loss)
    eval_ds = None
    if cfg.use_eval_split and cfg.eval_steps and versions.load_manifest(cfg.dataset)["rows"].get("eval"):
        eval_ds = to_dataset(cfg.dataset, "eval", cfg.assistant_only_loss)
    callback = IrisCallback(run_dir, cfg)
    trainer = backends.build_trainer(cfg, model, tokenizer, peft_config, train_ds, eval_ds,
                                     run_dir / CHECKPOINTS, backend, [callback])
    if main_proc:
        jobs.update_status(run_dir, message=f"training ({backend}, {family} template)", backend=backend)
    trainer.train(resume_from_checkpoint=str(resume_from) if resume_from else None)
    stopped = callback.stop_seen
    if main_proc:
        if stopped:
            jobs.update_status(run_dir, state="stopped", message=f"stopped at step {trainer.state.global_step}",
                               eta_s=0)
        else:
            save_adapter(trainer, tokenizer, cfg, run_dir, backend)
            jobs.update_status(run_dir, state="completed", step=trainer.state.global_step, eta_s=0,
                               message=f"completed {trainer.state.global_step} steps")
    return run_dir


def save_adapter(trainer, tokenizer, cfg: TrainConfig, run_dir: Path, backend: str) -> Path:
    from core.backends import inference_template

    manifest = versions.load_manifest(cfg.dataset)
    with atomic_dir(run_dir / ADAPTER, overwrite=True) as tmp:
        trainer.model.save_pretrained(tmp)
        if tokenizer.chat_template:
            tokenizer.chat_template = inference_template(tokenizer.chat_template)
        tokenizer.save_pretrained(tmp)
        last = read_metrics(run_dir)
        losses = [m["loss"] for m in last if m.get("loss") is not None]
        (tmp / "README.md").write_text(
            f"# {run_dir.name}\n\nLoRA adapter trained with Iris ({backend} backend).\n\n"
            f"- base model: `{cfg.base_model}`\n"
            f"- dataset version: `{cfg.dataset}` (content hash {manifest.get('content_hash', '?')[:12]}, "
            f"{manifest['rows']['train']} train rows)\n"
            f"- steps: {trainer.state.global_step}; final train loss: {losses[-1] if losses else 'n/a'}\n"
            f"- LoRA r={cfg.lora_r}, alpha={cfg.lora_alpha}, dropout={cfg.lora_dropout}, "
            f"targets {', '.join(cfg.target_modules)}\n"
            f"- max_seq_length {cfg.max_seq_length}, batch {cfg.batch_size} × accum {cfg.grad_accum}, "
            f"lr {cfg.learning_rate}, warmup {cfg.warmup_steps}, seed {cfg.seed}\n\n"
            "The full configuration is in `../config.yaml`.\n", encoding="utf-8")
    return run_dir / ADAPTER


def resume_run(run_dir: Path, checkpoint: int | None = None) -> Path:
    """`--resume`: a run under IRIS_HOME/runs, or a mirror folder (copied into runs/ first)."""
    from core.train_callbacks import restore_from_mirror

    run_dir = Path(run_dir).expanduser().resolve()
    if not (run_dir / CONFIG).exists():
        raise IrisError(f"{run_dir} is not a run directory (no {CONFIG}).")
    if run_dir.parent != runs_dir().resolve():
        run_dir = restore_from_mirror(run_dir)
    return main(load_config(run_dir), run_dir, resume_step=checkpoint, resume=True)


def cli(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m core.train", description="Iris LoRA fine-tuning")
    parser.add_argument("config", nargs="?", help="TrainConfig YAML (a preset, or a run's config.yaml)")
    parser.add_argument("--resume", metavar="RUN_DIR", help="continue this run (or a mirror of it)")
    parser.add_argument("--checkpoint", type=int, metavar="N", help="resume from checkpoint-N, not the latest")
    args = parser.parse_args(argv)
    run_dir = None
    try:
        if args.resume:
            run_dir = Path(args.resume)
            out = resume_run(run_dir, args.checkpoint)
        elif args.config:
            cfg = load_yaml(TrainConfig, Path(args.config)).with_run_name()
            run_dir = run_path(cfg.run_name)
            own = Path(args.config).resolve() == (run_dir / CONFIG).resolve()  # launched by start()
            if not own and run_dir.exists():
                raise IrisError(f"a run named {cfg.run_name!r} already exists: resume it or choose another name.")
            out = main(cfg, run_dir)
        else:
            parser.error("give a CONFIG.yaml, or --resume RUN_DIR")
        print(f"run: {out}")
    except BaseException as err:
        if run_dir is not None and (run_dir / CONFIG).exists() and is_main_process():
            jobs.mark_failed(run_dir, err)
        if isinstance(err, IrisError):
            cli_exit(err)
        raise


if __name__ == "__main__":
    cli()
