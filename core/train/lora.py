"""The LoRA training job: launch it from a page, or run it in this process; resume from any complete checkpoint.

Run as: python -m core.train CONFIG.yaml | --resume RUN_DIR [--checkpoint N]   (see core/train/__main__.py)

The run directory (core.runs) is the interface: pages, Export and Chat read it; nothing else is shared.
A graceful stop (core.jobs STOP file) saves a checkpoint and ends in state "stopped". With more than one
GPU visible the page launches this module through `accelerate launch` (one DDP process per GPU; see
core.train.launch, which also writes the launch files for several hosts).
"""
from __future__ import annotations

import gc
import json
import os
import time
from pathlib import Path

from core import jobs, versions
from core.config import load_yaml, save_yaml
from core.errors import IrisError
from core.paths import atomic_dir, free_disk_bytes, runs_dir
from core.runs import (
    ADAPTER,
    CHECKPOINTS,
    CONFIG,
    LOG,
    METRICS,
    checkpoint_bytes,
    checkpoint_dir,
    list_checkpoints,
    read_metrics,
    run_path,
)
from core.train.config import TrainConfig
from core.train.launch import launcher_argv

# ---- launching from a page -----------------------------------------------------------------------------

def start(cfg: TrainConfig) -> Path:
    """Create the run directory, write config.yaml and launch the job. Returns the run directory."""
    cfg.with_run_name()
    preflight(cfg, resolve_model=False)
    run_dir = run_path(cfg.run_name)
    if run_dir.exists():
        raise IrisError(f"a run named {cfg.run_name!r} already exists: resume it or choose another name.")
    run_dir.mkdir(parents=True)
    save_yaml(cfg, run_dir / CONFIG)
    launch_job(run_dir, str(run_dir / CONFIG))
    return run_dir


def launch_job(run_dir: Path, *args: str) -> int:
    """`python -m core.train ARGS` for this run: handed to a warm process when one is ready (its imports done:
    core.train.launch), else a new one. Returns the pid."""
    from core.train.estimate import detect_device
    from core.train.launch import claim_warm, job_env, launch_warm

    device = detect_device()  # once: on a GPU host it runs nvidia-smi
    argv, processes = launcher_argv(*args, device=device)
    warm = claim_warm() if processes == 1 else None
    pid = (launch_warm(run_dir, warm, list(args), LOG) if warm
           else jobs.launch(run_dir, argv, log_name=LOG, env=job_env(device)))
    phase = "handing over to a warm process" if warm else "starting Python"
    jobs.update_status(run_dir, processes=processes, phase=phase, phase_times={phase: 0.0})
    return pid


def prepare_cluster(cfg: TrainConfig, hosts: list[str], gpus_per_host: int) -> tuple[Path, list[Path]]:
    """A run directory with config.yaml and the per-host launch files (core.train.launch); starts nothing."""
    from core.train.launch import check_hosts, write_cluster_files

    hosts = check_hosts(hosts, gpus_per_host)
    cfg.with_run_name()
    preflight(cfg, resolve_model=False)
    run_dir = run_path(cfg.run_name)
    if (run_dir / CONFIG).exists() and list_checkpoints(run_dir):
        raise IrisError(f"run {cfg.run_name!r} already has checkpoints: resume it, or choose another name.")
    run_dir.mkdir(parents=True, exist_ok=True)
    save_yaml(cfg, run_dir / CONFIG)
    return run_dir, write_cluster_files(run_dir, hosts, gpus_per_host)


def resume(run_dir: Path, checkpoint: int | None = None) -> int:
    """Relaunch a stopped/died run from its latest (or a chosen) complete checkpoint. Returns the pid."""
    checkpoint_dir(run_dir, checkpoint)  # fail here, in the page, if there is nothing to resume from
    args = ["--resume", str(run_dir)] + (["--checkpoint", str(checkpoint)] if checkpoint is not None else [])
    return launch_job(run_dir, *args)


# ---- checks before any weight is loaded ----------------------------------------------------------------

def preflight(cfg: TrainConfig, resolve_model: bool = True) -> Path | None:
    """Refuse what cannot work, with one message: missing dataset, sequence too long, no model, no disk."""
    from core import models
    from core.train.dpo import check_version, parent_adapter
    from core.train.estimate import check_target_modules, estimate

    versions.load_manifest(cfg.dataset)  # raises: the version no longer exists
    check_version(cfg)  # DPO needs preference pairs
    parent_adapter(cfg)  # raises: a parent run that is gone, or trained another base model
    est = estimate(cfg)
    if est.problems:
        raise IrisError(" ".join(est.problems))
    model_dir = None
    if resolve_model:
        model_dir = models.resolve(cfg.base_model)  # raises IrisError offline / unknown id
        check_target_modules(cfg, model_dir)  # names peft would skip silently
        max_pos = json.loads((model_dir / "config.json").read_text()).get("max_position_embeddings")
        if max_pos and cfg.max_seq_length > max_pos:
            raise IrisError(f"max_seq_length {cfg.max_seq_length} is beyond {cfg.base_model}'s "
                            f"{max_pos} positions: lower it.")
    need = checkpoint_bytes(est.trainable) * 3
    if free_disk_bytes(runs_dir()) < need:
        raise IrisError(f"only {free_disk_bytes(runs_dir()) / 1e6:.0f} MB free for checkpoints "
                        f"(need ~{need / 1e6:.0f} MB): free some disk space.")
    return model_dir


# ---- the training job ----------------------------------------------------------------------------------

def load_config(run_dir: Path) -> TrainConfig:
    return load_yaml(TrainConfig, Path(run_dir) / CONFIG)


def is_main_process() -> bool:
    return int(os.environ.get("RANK", "0")) == 0


def set_phase(run_dir: Path, phase: str | None, done: int | None = None, total: int | None = None) -> None:
    """What the job does before step 1, for the progress line and the runs table (rank 0 only).

    status.json fields: `phase` (starting, preparing base model, loading model, tokenising, first step; None
    once steps run), `phase_done` / `phase_total` (rows tokenised of all, when the phase counts anything), and
    `phase_times`: seconds from Launch at which each phase began ("step 1 done" when the first step ended), and
    `phase_cpu`: the CPU seconds the job had used by then (what a busy machine does not inflate), also printed
    to train.log, so a slow start says where its time went.
    """
    if not is_main_process():
        return
    status = jobs.read_status(run_dir)
    times, key = dict(status.get("phase_times") or {}), phase or "step 1 done"
    fields = {}
    if key not in times and status.get("started"):
        times[key] = round(time.time() - status["started"], 2)
        cpu = dict(status.get("phase_cpu") or {}, **{key: round(time.process_time(), 2)})
        fields.update(phase_times=times, phase_cpu=cpu)  # phase_cpu: this process's CPU seconds (all threads)
        print(f"iris: +{times[key]:.1f} s since Launch ({cpu[key]:.1f} s CPU): {key}", flush=True)
    jobs.update_status(run_dir, phase=phase, phase_done=done, phase_total=total, **fields)


def datasets_for(cfg: TrainConfig, tokenizer, backend: str, run_dir: Path) -> tuple:
    """(train dataset, eval dataset or None, their row sources). Streams rows when nothing needs them all.
    Sets the phases "reading rows", then "building trainer" (what main does next)."""
    from core.train.tokens import RowSource

    set_phase(run_dir, "reading rows")

    train = RowSource(cfg.dataset, "train", tokenizer, cfg.max_seq_length, cfg.assistant_only_loss)
    sources = [train]
    evals = None
    if cfg.use_eval_split and cfg.eval_steps and versions.load_manifest(cfg.dataset)["rows"].get("eval"):
        evals = RowSource(cfg.dataset, "eval", tokenizer, cfg.max_seq_length, cfg.assistant_only_loss)
        sources.append(evals)
    if streams(cfg, backend):
        train_ds, eval_ds = train.streaming_dataset(), evals.streaming_dataset() if evals else None
    else:
        train_ds = train.full_dataset(lambda n, total: set_phase(run_dir, "tokenising", n, total))
        eval_ds = evals.full_dataset(lambda n, total: set_phase(run_dir, "tokenising eval", n, total)) if evals else None
    set_phase(run_dir, "building trainer")
    return train_ds, eval_ds, sources


def phase_callback(run_dir: Path):
    """Clears the pre-step phase once the first step of this process has ended."""
    from transformers import TrainerCallback

    class PhaseDone(TrainerCallback):
        def on_step_end(self, args, state, control, **kwargs):
            if not getattr(self, "done", False):
                self.done = True
                set_phase(run_dir, None)

    return PhaseDone()


def streams(cfg: TrainConfig, backend: str) -> bool:
    """Packing needs every row's length first; unsloth's trainer prepares datasets its own way."""
    return not cfg.packing and backend == "transformers"


def main(cfg: TrainConfig, run_dir: Path | None = None, resume_step: int | None = None,
         resume: bool = False) -> Path:
    """Train `cfg` into `run_dir` (fresh, or from a complete checkpoint when `resume`). Returns run_dir."""
    from core.train import backends

    cfg.with_run_name()
    run_dir = Path(run_dir or run_path(cfg.run_name))
    main_proc = is_main_process()
    if main_proc and (run_dir / CONFIG).exists():
        jobs.update_status(run_dir, state="running", pid=os.getpid(), error=None, message="starting")
        set_phase(run_dir, "importing libraries")
    backend, why = backends.choose(cfg)  # first: unsloth must be imported before transformers and trl
    from core.train.callbacks import IrisCallback, disk_full, drop_torn_checkpoints, truncate_metrics
    from core.train.tokens import flush_callback
    if main_proc and (run_dir / CONFIG).exists():
        set_phase(run_dir, "preparing base model")
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
        set_phase(run_dir, "loading model")
    print(f"iris: backend {backend}, {backends.world_size()} process(es), base {cfg.base_model} "
          f"({model_dir}), dataset {cfg.dataset}", flush=True)
    callback = IrisCallback(run_dir, cfg)
    if cfg.method == "dpo":  # preference pairs through trl's DPOTrainer (core.train.dpo); the rest is shared
        from core.train import dpo

        trainer, family = dpo.build(cfg, model_dir, backend, run_dir, [callback, phase_callback(run_dir)], set_phase)
        tokenizer, sources = trainer.processing_class, []
    else:
        model, tokenizer, peft_config = backends.load_model(cfg, model_dir, backend)
        family = backends.set_training_template(tokenizer, cfg.assistant_only_loss)
        train_ds, eval_ds, sources = datasets_for(cfg, tokenizer, backend, run_dir)
        trainer = backends.build_trainer(cfg, model, tokenizer, peft_config, train_ds, eval_ds, run_dir / CHECKPOINTS,
                                         backend, [callback, flush_callback(sources), phase_callback(run_dir)])
    if main_proc:
        jobs.update_status(run_dir, message=f"training ({backend}, {family} template)", backend=backend,
                           backend_reason=why)
    set_phase(run_dir, "first step")
    # What is alive now (libraries, model, tokenizer, datasets) lives as long as the run: the Trainer's full
    # collection at the start (Accelerator.free_memory) and Python's own while training skip it (~0.35 s each).
    gc.freeze()
    try:
        trainer.train(resume_from_checkpoint=str(resume_from) if resume_from else None)
    except Exception as err:  # a full disk while saving a checkpoint: one sentence, and no torn checkpoint left
        if main_proc and (replaced := disk_full(run_dir, err)) is not err:
            raise replaced from err
        raise
    finally:
        gc.unfreeze()
    stopped = callback.stop_seen
    if main_proc:
        jobs.update_status(run_dir, phase=None, rows_tokenised=sum(s.cache.tokenised for s in sources),
                           rows_cached=sum(len(s.cache) for s in sources))
        if stopped:
            jobs.update_status(run_dir, state="stopped", message=f"stopped at step {trainer.state.global_step}",
                               eta_s=0)
        else:
            save_adapter(trainer, tokenizer, cfg, run_dir, backend)
            jobs.update_status(run_dir, state="completed", step=trainer.state.global_step, eta_s=0,
                               message=f"completed {trainer.state.global_step} steps")
    return run_dir


def save_adapter(trainer, tokenizer, cfg: TrainConfig, run_dir: Path, backend: str) -> Path:
    from core.train.backends import inference_template

    manifest = versions.load_manifest(cfg.dataset)
    with atomic_dir(run_dir / ADAPTER, overwrite=True) as tmp:
        # only the trained adapter: a DPO run that continues a parent also holds trl's frozen "ref" copy
        trainer.model.save_pretrained(tmp, **({"selected_adapters": ["default"]}
                                              if "ref" in getattr(trainer.model, "peft_config", {}) else {}))
        if tokenizer.chat_template:
            tokenizer.chat_template = inference_template(tokenizer.chat_template)
        tokenizer.save_pretrained(tmp)
        last = read_metrics(run_dir)
        losses = [m["loss"] for m in last if m.get("loss") is not None]
        (tmp / "README.md").write_text(
            f"# {run_dir.name}\n\nLoRA adapter trained with Iris ({backend} backend, {cfg.method.upper()}"
            f"{f', beta {cfg.beta}, {cfg.loss_type} loss' if cfg.method == 'dpo' else ''}"
            f"{f', continuing run {cfg.parent_run}' if cfg.parent_run else ''}).\n\n"
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
    from core.train.callbacks import restore_from_mirror

    run_dir = Path(run_dir).expanduser().resolve()
    if not (run_dir / CONFIG).exists():
        raise IrisError(f"{run_dir} is not a run directory (no {CONFIG}).")
    if run_dir.parent != runs_dir().resolve():
        run_dir = restore_from_mirror(run_dir)
    return main(load_config(run_dir), run_dir, resume_step=checkpoint, resume=True)
