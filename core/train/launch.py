"""How a run's processes start: one process, one DDP process per local GPU, or a cluster of hosts.

- one host: `launcher_argv` (the Train page and `start`/`resume` in core.train.lora) runs
  `python -m core.train ...` alone, or under `accelerate launch` with one process per visible GPU;
  `IRIS_CPU_PROCESSES=N` runs N CPU processes under `torchrun` with the gloo backend (tests; CPU clusters).
- several hosts: `write_cluster_files` (`python -m core.train CONFIG --hosts H1,H2 --gpus-per-host G`)
  writes, into the run's `launch/` folder, one accelerate config per host (`accelerate-<rank>-<host>.yaml`:
  num_machines, machine_rank, main_process_ip/port, num_processes = hosts × G) and `torchrun.sh` with the
  equivalent torchrun line per host. The user starts each host's line on that host; the run directory must
  be at the same path on every host (a shared filesystem): rank 0 writes status, metrics and checkpoints,
  the other ranks only their own RNG state into each checkpoint, which resume needs.
"""
from __future__ import annotations

import os
import shlex
import sys
import time
from pathlib import Path
from typing import TYPE_CHECKING

import yaml

from core import jobs
from core.errors import IrisError
from core.train.warm import warm_dir, warm_enabled

if TYPE_CHECKING:
    from core.train.estimate import Device

PORT = 29500  # torch.distributed's usual rendezvous port
LAUNCH_DIR = "launch"


def cpu_processes() -> int:
    """IRIS_CPU_PROCESSES: CPU DDP processes (gloo) on this machine; 1 when unset."""
    raw = os.environ.get("IRIS_CPU_PROCESSES", "1")
    if not raw.isdigit() or int(raw) < 1:
        raise IrisError(f"IRIS_CPU_PROCESSES must be a whole number ≥ 1, got {raw!r}.")
    return int(raw)


def torchrun_argv(args: list[str], per_host: int, hosts: int = 1, rank: int = 0, main_ip: str = "127.0.0.1",
                  port: int = PORT) -> list[str]:
    """`python -m torch.distributed.run ... -m core.train ARGS` for host `rank` of `hosts`."""
    return [sys.executable, "-m", "torch.distributed.run", f"--nnodes={hosts}", f"--node_rank={rank}",
            f"--nproc_per_node={per_host}", f"--master_addr={main_ip}", f"--master_port={port}",
            "-m", "core.train", *args]


# glibc gives memory a CPU training step freed back to the kernel (large blocks unmapped, the heap's top trimmed)
# and the next step faults it in again: ~70k page faults a step on SmolLM2's CPU-quick preset (0.3 s of system
# time), ~480k in step 1. A training process reaches the same peak every step, so on CPU it keeps what it frees
# (bytes: blocks under 1 GiB come from the heap, which is never trimmed); steady steps then fault nothing.
KEEP_FREED_MEMORY = "glibc.malloc.mmap_threshold=1073741824:glibc.malloc.trim_threshold=17179869184"


def job_env(device: Device | None = None) -> dict[str, str]:
    """Environment a training process gets on `device` (this machine's, looked up when not given), besides the
    caller's: on CPU, KEEP_FREED_MEMORY (read by glibc when the process starts; other C libraries ignore it)."""
    from core.train.estimate import detect_device

    if (device or detect_device()).kind != "cpu":
        return {}
    current = os.environ.get("GLIBC_TUNABLES")
    return {"GLIBC_TUNABLES": f"{current}:{KEEP_FREED_MEMORY}" if current else KEEP_FREED_MEMORY}


def launcher_argv(*args: str, device: Device | None = None) -> tuple[list[str], int]:
    """(argv, processes) for `device` (this machine's, looked up when not given): alone, one DDP process per
    visible GPU, or IRIS_CPU_PROCESSES."""
    from core.train.estimate import detect_device

    device = device or detect_device()
    if device.kind == "cuda" and device.count > 1:
        argv = [sys.executable, "-m", "accelerate.commands.launch", "--multi_gpu",
                f"--num_processes={device.count}", "--num_machines=1", "--mixed_precision=bf16",
                "--dynamo_backend=no", "-m", "core.train", *args]
        return argv, device.count
    n = cpu_processes() if device.kind == "cpu" else 1
    if n > 1:
        return torchrun_argv(list(args), n, port=free_port()), n
    return jobs.python_module_argv("core.train", *args), 1


def free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def accelerate_config(hosts: list[str], rank: int, per_host: int, port: int = PORT) -> dict:
    """An `accelerate launch --config_file` for host `rank` (accelerate's num_processes counts every host)."""
    return {"compute_environment": "LOCAL_MACHINE", "distributed_type": "MULTI_GPU", "num_machines": len(hosts),
            "machine_rank": rank, "main_process_ip": hosts[0], "main_process_port": port,
            "num_processes": len(hosts) * per_host, "gpu_ids": "all", "mixed_precision": "bf16",
            "rdzv_backend": "static", "same_network": True, "use_cpu": False, "dynamo_config": {},
            "main_training_function": "main", "downcast_bf16": "no", "tpu_use_cluster": False}


def check_hosts(hosts: list[str], per_host: int) -> list[str]:
    hosts = [h.strip() for h in hosts if h.strip()]
    if len(hosts) < 2 or len(set(hosts)) != len(hosts):
        raise IrisError(f"--hosts needs two or more distinct host names (the first runs rank 0), got {hosts}.")
    if per_host < 1:
        raise IrisError(f"--gpus-per-host must be at least 1, got {per_host}.")
    return hosts


def write_cluster_files(run_dir: Path, hosts: list[str], per_host: int, port: int = PORT) -> list[Path]:
    """Per-host accelerate configs and torchrun.sh under RUN_DIR/launch/. Returns the files written."""
    hosts = check_hosts(hosts, per_host)
    folder = Path(run_dir) / LAUNCH_DIR
    folder.mkdir(parents=True, exist_ok=True)
    config = str(Path(run_dir).resolve() / "config.yaml")
    written, lines = [], ["#!/bin/sh", f"# {len(hosts)} hosts × {per_host} GPUs = {len(hosts) * per_host} "
                          f"processes; run line N on host N, from the Iris checkout, all at about the same time."]
    for rank, host in enumerate(hosts):
        path = folder / f"accelerate-{rank}-{host}.yaml"
        path.write_text(yaml.safe_dump(accelerate_config(hosts, rank, per_host, port), sort_keys=False))
        written.append(path)
        argv = torchrun_argv([config], per_host, len(hosts), rank, hosts[0], port)
        lines.append(f"# host {rank}: {host}   (or: accelerate launch --config_file {path} -m core.train {config})")
        lines.append(shlex.join([".venv/bin/python", *argv[1:]]))
    script = folder / "torchrun.sh"
    script.write_text("\n".join(lines) + "\n")
    return [*written, script]


# ---- a warm process: the job's imports done before Launch -----------------------------------------------
# A new Python spends ~15 s of CPU on 2 cores importing torch, transformers, peft, trl and datasets before a run
# can do anything (bench/train_start.py prints this floor): more than the whole "step 1 within 10 s" goal. So the
# Train page keeps one process waiting with those imports done (`warm_up`, while no run is starting or training);
# Launch hands it the run (`claim_warm`, `launch_warm`): it becomes that run's job, exactly `python -m core.train
# ARGS` from there on. One-process runs on this machine only; without a ready one, Launch starts a new Python.
WARM_IDLE_S = 1800.0  # an unclaimed warm process exits after 30 min (it holds ~0.5 GB of libraries + 0.55 GB model)
WARM_MODULES = ("torch", "transformers", "transformers.models.llama.modeling_llama", "transformers.trainer",
                "peft", "trl", "datasets", "pyarrow.parquet", "core.train.backends", "core.train.callbacks",
                "core.train.tokens")


def warm_up() -> int | None:
    """Start a warm process unless one is starting or waiting, or a run is starting or training: its ~15 s of
    imports would take one of the run's two cores. Returns the new one's pid, or None."""
    import subprocess

    from core.paths import runs_dir

    if not warm_enabled() or any(jobs.read_status(s.parent).get("state") in jobs.ACTIVE
                                 for s in runs_dir().glob("*/status.json")):
        return None
    folder = warm_dir()
    folder.mkdir(parents=True, exist_ok=True)
    for mark in [*folder.glob("*.starting"), *folder.glob("*.ready")]:
        if jobs.pid_alive(int(mark.stem)):
            return None
        mark.unlink(missing_ok=True)
    env = {**os.environ, "PYTHONUNBUFFERED": "1", **job_env()}
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(jobs.REPO_ROOT), env.get("PYTHONPATH")]))
    with open(folder / "warm.log", "ab") as log:
        proc = subprocess.Popen(jobs.python_module_argv("core.train", "--warm"), cwd=jobs.REPO_ROOT, stdout=log,
                                stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, start_new_session=True, env=env)
    (folder / f"{proc.pid}.starting").touch()
    return proc.pid


def claim_warm() -> int | None:
    """Reserve a ready warm process for the caller (an atomic rename, so two Launches never share one): its pid."""
    folder = warm_dir()
    for ready in sorted(folder.glob("*.ready")) if warm_enabled() and folder.exists() else []:
        claimed = ready.with_suffix(".claimed")
        try:
            os.rename(ready, claimed)
        except FileNotFoundError:
            continue  # another Launch took it
        if jobs.pid_alive(int(ready.stem)):
            return int(ready.stem)
        claimed.unlink(missing_ok=True)
    return None


def launch_warm(run_dir: Path, pid: int, args: list[str], log_name: str) -> int:
    """What jobs.launch does, with the claimed warm process `pid` instead of a new one."""
    from core.paths import write_json

    run_dir = Path(run_dir)
    (run_dir / jobs.STOP_FILE).unlink(missing_ok=True)
    jobs.update_status(run_dir, state="queued", pid=pid, started=time.time(), error=None, message="starting",
                       launched_argv=jobs.python_module_argv("core.train", *args), warm=True)
    write_json(warm_dir() / f"{pid}.request.json", {"args": list(args), "log": str(run_dir / log_name)})
    return pid


def preload_embedded() -> None:
    """Load the embedded base model (the CPU presets' base), if this machine has materialised it, so a run on it
    skips reading its weights; a run on another base loads its own as usual. Holds ~0.55 GB more while waiting."""
    from core.models import materialised_embedded
    from core.train import backends

    if folder := materialised_embedded():
        backends.preload(folder)


def serve_warm(idle_s: float = WARM_IDLE_S) -> list[str] | None:
    """`python -m core.train --warm`: import what a run needs, say so, wait for a run. Returns that run's CLI
    arguments (stdout and stderr now go to its log), or None when nobody came within `idle_s`."""
    import importlib

    from core.paths import read_json
    from core.train.backends import warm_kernels

    for module in WARM_MODULES:
        importlib.import_module(module)
    preload_embedded()
    folder, pid = warm_dir(), os.getpid()
    (folder / f"{pid}.ready").touch()
    (folder / f"{pid}.starting").unlink(missing_ok=True)
    started = time.time()
    warm_kernels()  # after "ready": a Launch meanwhile waits for its few seconds instead of starting a new Python
    print(f"iris: warm process {pid}: kernels warm ({time.time() - started:.1f} s)", flush=True)
    request, deadline, grace = folder / f"{pid}.request.json", time.time() + idle_s, True
    while not request.exists():
        if time.time() > deadline:
            try:
                (folder / f"{pid}.ready").unlink()
                return None
            except FileNotFoundError:  # claimed just now: its request follows within moments
                if not grace:  # the claimer went away without sending one
                    (folder / f"{pid}.claimed").unlink(missing_ok=True)
                    return None
                grace, deadline = False, time.time() + 60
        time.sleep(0.05)  # seconds: the hand-over adds at most this to Launch → step 1
    job = read_json(request)
    request.unlink()
    (folder / f"{pid}.claimed").unlink(missing_ok=True)
    fd = os.open(job["log"], os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o644)
    os.dup2(fd, 1)
    os.dup2(fd, 2)
    os.close(fd)
    return job["args"]
