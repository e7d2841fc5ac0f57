"""What a run writes while it trains: metrics lines, status, checkpoint markers, mirrors, graceful stops.

`IrisCallback` is a transformers `TrainerCallback`; only the main process (rank 0) writes, but every
process takes part in the stop decision so DDP ranks stop on the same step.
"""
from __future__ import annotations

import json
import os
import shutil
import time
from pathlib import Path

from transformers import TrainerCallback

from core import jobs
from core.errors import IrisError
from core.paths import free_disk_bytes, runs_dir, write_text
from core.train.config import TrainConfig

COMPLETE, METRICS, CHECKPOINTS, CONFIG = "COMPLETE", "metrics.jsonl", "checkpoints", "config.yaml"


class IrisCallback(TrainerCallback):
    def __init__(self, run_dir: Path, cfg: TrainConfig):
        self.run_dir, self.cfg = Path(run_dir), cfg
        self.stop_seen = False
        self.main = int(os.environ.get("RANK", "0")) == 0
        self.t0 = self.step0 = None
        self.last_tokens, self.last_time = 0, None
        self.eval_t0, self.eval_seconds = None, []  # wall seconds of each finished eval pass

    # -- progress ------------------------------------------------------------------------------------
    def on_train_begin(self, args, state, control, **kwargs):
        self.t0, self.step0 = time.time(), state.global_step
        self.last_tokens, self.last_time = state.num_input_tokens_seen or 0, time.time()
        if self.main:
            if state.global_step:  # resumed: checkpoints past this step belong to the abandoned line
                drop_checkpoints_after(self.run_dir, state.global_step)
            jobs.update_status(self.run_dir, state="running", step=state.global_step, total=state.max_steps,
                               eta_s=None, message="training")

    def on_step_end(self, args, state, control, **kwargs):
        done = state.global_step - self.step0
        train_s = time.time() - self.t0 - sum(self.eval_seconds)
        eta = None
        if done:  # training steps to go, plus the eval passes still to come at their measured length
            left = state.max_steps - state.global_step
            evals = (state.max_steps // args.eval_steps - state.global_step // args.eval_steps
                     if args.eval_strategy != "no" and args.eval_steps else 0)
            per_eval = sum(self.eval_seconds) / len(self.eval_seconds) if self.eval_seconds else 0.0
            eta = train_s / done * left + evals * per_eval
        if self.main:
            jobs.update_status(self.run_dir, step=state.global_step, total=state.max_steps, eta_s=eta,
                               state="stopping" if self.stop_seen else "running")
        if args.save_steps and state.global_step % args.save_steps == 0:
            self._check_disk()
        if self._stop_requested():
            self.stop_seen = True
            control.should_save = True  # the Trainer saves this step's checkpoint, then leaves the loop
            control.should_training_stop = True
        return control

    def on_prediction_step(self, args, state, control, eval_dataloader=None, **kwargs):
        """One eval batch done: the page shows "evaluating (n/m)", and a Stop says what it waits for."""
        if self.eval_t0 is None:
            self.eval_t0, self.eval_batch = time.time(), 0
        self.eval_batch += 1
        if not self.main:
            return
        total = len(eval_dataloader) if eval_dataloader is not None else "?"
        fields = {"message": f"evaluating ({self.eval_batch}/{total} batches)"}
        if jobs.stop_requested(self.run_dir):
            fields = {"state": "stopping", "message": f"stopping: finishing this eval pass first "
                      f"({self.eval_batch}/{total} batches), then saving a checkpoint"}
        jobs.update_status(self.run_dir, **fields)

    def on_evaluate(self, args, state, control, **kwargs):
        if self.eval_t0 is not None:
            self.eval_seconds.append(time.time() - self.eval_t0)
            self.eval_t0 = None
        if self._stop_requested():  # a Stop during the pass: save right after it instead of one step later
            self.stop_seen = True
            control.should_save = control.should_training_stop = True
        if self.main:
            jobs.update_status(self.run_dir, message="stopping: saving a checkpoint" if self.stop_seen else "training")
        return control

    def _stop_requested(self) -> bool:
        flag = jobs.stop_requested(self.run_dir)
        import torch.distributed as dist

        if dist.is_available() and dist.is_initialized():
            # Ranks may see the STOP file one step apart; agree on it so none waits forever in a collective.
            import torch

            t = torch.tensor([1.0 if flag else 0.0], device="cuda" if torch.cuda.is_available() else "cpu")
            dist.all_reduce(t, op=dist.ReduceOp.MAX)
            flag = bool(t.item())
        return flag

    def _check_disk(self) -> None:
        from core.runs import checkpoint_bytes

        need = checkpoint_bytes(0) + 200_000_000  # optimizer states of a LoRA run: well under 200 MB
        free = free_disk_bytes(self.run_dir)
        if free < need:
            raise IrisError(f"the disk holding {self.run_dir} has {free / 1e6:.0f} MB free, too little for the "
                            f"next checkpoint: free space, then resume from the last checkpoint.")

    # -- metrics -------------------------------------------------------------------------------------
    def on_log(self, args, state, control, logs=None, **kwargs):
        if not self.main or not logs:
            return
        now = time.time()
        row = {"step": state.global_step, "time": round(now, 3), "epoch": logs.get("epoch")}
        if "loss" in logs:
            row.update(loss=logs["loss"], lr=logs.get("learning_rate"), grad_norm=logs.get("grad_norm"))
            tokens = logs.get("num_input_tokens_seen")
            if tokens is not None and self.last_time is not None and now > self.last_time:
                # non-pad tokens of all processes (Trainer state: restored on resume, so counted from there)
                row["tokens_per_s"] = round((tokens - self.last_tokens) / (now - self.last_time), 1)
                self.last_tokens, self.last_time = tokens, now
        if "eval_loss" in logs:
            row["eval_loss"] = logs["eval_loss"]
        # DPO (trl): rewards/chosen, rewards/rejected, rewards/margins, rewards/accuracies (and their eval_ twins)
        row.update({k: v for k, v in logs.items() if k.startswith(("rewards/", "eval_rewards/"))})
        if "loss" not in row and "eval_loss" not in row:
            return  # the end-of-training summary (train_runtime, ...) goes to train.log only
        with open(self.run_dir / METRICS, "a", encoding="utf-8") as f:
            f.write(json.dumps(row) + "\n")

    # -- checkpoints ---------------------------------------------------------------------------------
    def on_save(self, args, state, control, **kwargs):
        """Called after the Trainer has written checkpoint-N completely: mark it, then mirror it."""
        if not self.main:
            return
        ckpt = Path(args.output_dir) / f"checkpoint-{state.global_step}"
        if not ckpt.exists():
            return
        write_text(ckpt / COMPLETE, json.dumps({"step": state.global_step, "time": time.time()}))
        jobs.update_status(self.run_dir, last_checkpoint=state.global_step)
        if self.cfg.mirror_dir:
            mirror_checkpoint(self.run_dir, ckpt, Path(self.cfg.mirror_dir))
        if self.cfg.mirror_hub_repo:
            mirror_to_hub(ckpt, self.cfg.mirror_hub_repo)


def drop_checkpoints_after(run_dir: Path, step: int) -> list[str]:
    """Remove checkpoints past `step` when a run resumes from `step`: they belong to the abandoned line
    (their metrics are truncated too), so Train, Export and Chat never offer them as this run's."""
    folder = Path(run_dir) / CHECKPOINTS
    later = [p for p in folder.glob("checkpoint-*") if p.name.split("-", 1)[1].isdigit()
             and int(p.name.split("-", 1)[1]) > step]
    for p in later:
        shutil.rmtree(p, ignore_errors=True)
        print(f"iris: removed {p.name}: the run resumed from checkpoint-{step}", flush=True)
    return sorted(p.name for p in later)


def drop_torn_checkpoints(run_dir: Path) -> list[str]:
    """Move checkpoints without a COMPLETE marker out of the way (a kill during save); returns their names."""
    folder = Path(run_dir) / CHECKPOINTS
    torn = [p for p in folder.glob("checkpoint-*") if p.is_dir() and not (p / COMPLETE).exists()]
    for p in torn:
        shutil.rmtree(p, ignore_errors=True)
    return [p.name for p in torn]


def disk_full(run_dir: Path, err: BaseException) -> BaseException:
    """What a run that hit a full disk raises: the disk-full IrisError when `err` came from one (the torn
    checkpoint it was writing is removed first, so the space comes back and the last complete checkpoint is
    what a resume picks), else `err` itself."""
    from core.paths import disk_full_error, is_disk_full, tree_bytes

    if not is_disk_full(err) or isinstance(err, IrisError):
        return err
    folder = Path(run_dir) / CHECKPOINTS
    torn = sorted(p for p in folder.glob("checkpoint-*") if p.is_dir() and not (p / COMPLETE).exists())
    written = sum(tree_bytes(p) for p in torn)
    drop_torn_checkpoints(run_dir)
    done = [p for p in folder.glob("checkpoint-*") if (p / COMPLETE).exists()]
    last = max(done, key=lambda p: int(p.name.split("-")[1]) if p.name.split("-")[1].isdigit() else -1, default=None)
    what = f"saving {torn[-1].name if torn else 'a checkpoint'} of run {Path(run_dir).name}"
    if last is not None:  # a checkpoint needs about what the previous one took
        return disk_full_error(folder, what, tree_bytes(last))
    return disk_full_error(folder if folder.exists() else Path(run_dir), what, written or None, at_least=True)


def truncate_metrics(path: Path, step: int) -> None:
    """Keep metric lines up to `step`: after a resume the curve continues instead of repeating."""
    if not path.exists():
        return
    keep = []
    for line in path.read_text(encoding="utf-8").splitlines():
        try:
            if json.loads(line).get("step", 0) <= step:
                keep.append(line)
        except json.JSONDecodeError:
            pass
    write_text(path, "".join(k + "\n" for k in keep))


def mirror_checkpoint(run_dir: Path, ckpt: Path, mirror_root: Path) -> Path:
    """Copy a complete checkpoint (and config.yaml) to `mirror_root/<run>/`, atomically per checkpoint."""
    target_run = Path(mirror_root).expanduser() / run_dir.name
    target = target_run / CHECKPOINTS / ckpt.name
    tmp = target.parent / f".tmp-{ckpt.name}"
    try:
        target.parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(run_dir / CONFIG, target_run / CONFIG)
        shutil.rmtree(tmp, ignore_errors=True)
        shutil.copytree(ckpt, tmp)
        if target.exists():
            shutil.rmtree(target)
        os.replace(tmp, target)
        for name in ("metrics.jsonl", "status.json"):
            if (run_dir / name).exists():
                shutil.copy2(run_dir / name, target_run / name)
    except OSError as err:  # a full or unmounted drive must not kill the run; say so in the log
        print(f"iris: mirror to {target_run} failed ({err}); the local checkpoint is intact", flush=True)
    return target


def mirror_to_hub(ckpt: Path, repo_id: str) -> None:
    try:
        from huggingface_hub import HfApi

        from core.access import check_hub_repo

        check_hub_repo(repo_id, "mirror_hub_repo")  # only the owner's namespaces
        api = HfApi()
        api.create_repo(repo_id, private=True, exist_ok=True)
        api.upload_folder(repo_id=repo_id, folder_path=str(ckpt), path_in_repo=ckpt.name)
    except Exception as err:  # offline, no token: the run goes on with its local checkpoints
        print(f"iris: hub mirror {repo_id} skipped ({type(err).__name__}); local checkpoint intact", flush=True)


def restore_from_mirror(mirror_run: Path) -> Path:
    """Copy a mirrored run (config + complete checkpoints + metrics) into IRIS_HOME/runs to resume it."""
    local = runs_dir() / mirror_run.name
    if (local / CONFIG).exists():
        return local  # already here: resume the local copy, it is at least as new
    tmp = runs_dir() / f".tmp-{mirror_run.name}"
    shutil.rmtree(tmp, ignore_errors=True)
    (tmp / CHECKPOINTS).mkdir(parents=True)
    shutil.copy2(mirror_run / CONFIG, tmp / CONFIG)
    if (mirror_run / METRICS).exists():
        shutil.copy2(mirror_run / METRICS, tmp / METRICS)
    for ckpt in (mirror_run / CHECKPOINTS).glob("checkpoint-*"):
        if (ckpt / COMPLETE).exists():
            shutil.copytree(ckpt, tmp / CHECKPOINTS / ckpt.name)
    os.replace(tmp, local)
    print(f"iris: restored {mirror_run} into {local}", flush=True)
    return local
