"""Several processes: a real 2-process DDP run (gloo, CPU) and the launch files for a cluster of hosts."""
from __future__ import annotations

import os
import shlex
import time

import pytest
import yaml

from core import jobs, runs
from core.train import lora
from core.train.__main__ import cli as train_cli
from tests.test_train import tiny_cfg, toy_version, wait_for


def rank_pids(launcher_pid: int) -> dict[int, int]:
    """RANK → pid of the training processes torchrun started."""
    import psutil

    out = {}
    for child in psutil.Process(launcher_pid).children(recursive=True):
        try:
            rank = child.environ().get("RANK")
        except (psutil.NoSuchProcess, psutil.AccessDenied):
            continue
        if rank is not None and "core.train" in " ".join(child.cmdline()):
            out[int(rank)] = child.pid
    return out


def adapter(run_dir):
    from safetensors.torch import load_file

    return load_file(runs.adapter_dir(run_dir) / "adapter_model.safetensors")


@pytest.mark.slow
def test_two_gloo_processes_train_like_one_with_the_same_global_batch(tiny_llama3_dir, monkeypatch):
    toy_version(rows=40, eval_rows=0)
    single = lora.main(tiny_cfg(tiny_llama3_dir, run_name="single", batch_size=2, eval_steps=0))
    monkeypatch.setenv("IRIS_CPU_PROCESSES", "2")
    run_dir = lora.start(tiny_cfg(tiny_llama3_dir, run_name="ddp", batch_size=1, eval_steps=0))
    status = jobs.wait(run_dir, timeout_s=600)
    log = jobs.tail(run_dir / runs.LOG, 20000)
    assert status["state"] == "completed" and status["processes"] == 2, log
    assert "torch.distributed.run" in " ".join(status["launched_argv"])
    assert "2 process(es)" in log and runs.list_checkpoints(run_dir) == [2, 4]
    # both ranks stepped (each saves its own RNG state into every checkpoint); only rank 0 wrote anything else
    for step in (2, 4):
        names = {p.name for p in (run_dir / "checkpoints" / f"checkpoint-{step}").iterdir()}
        assert {"rng_state_0.pth", "rng_state_1.pth", "adapter_model.safetensors", "COMPLETE"} <= names
    assert [m["step"] for m in runs.read_metrics(run_dir) if "loss" in m] == [1, 2, 3, 4]  # one line per step
    assert {p.name for p in run_dir.iterdir()} == {"config.yaml", "status.json", "metrics.jsonl", "train.log",
                                                  "checkpoints", "adapter"}
    # 2 processes × batch 1 = 1 process × batch 2: the same rows per step, the same gradient
    a, b = adapter(single), adapter(run_dir)
    assert a.keys() == b.keys()
    for k in a:
        assert (a[k] - b[k]).abs().max() <= 1e-4 + 1e-3 * a[k].abs().max(), k


@pytest.mark.slow
def test_kill_9_of_one_rank_fails_the_run_and_resume_finishes_it(tiny_llama3_dir, monkeypatch):
    toy_version(rows=60, eval_rows=0)
    monkeypatch.setenv("IRIS_CPU_PROCESSES", "2")
    run_dir = lora.start(tiny_cfg(tiny_llama3_dir, run_name="ddp-kill", batch_size=1, max_steps=30, eval_steps=0))
    launcher = jobs.read_status(run_dir)["pid"]
    wait_for(lambda: runs.list_checkpoints(run_dir) or jobs.read_status(run_dir).get("state") in jobs.FINAL,
             timeout=400, what="checkpoint-2")
    pids = rank_pids(launcher)
    assert set(pids) == {0, 1}, pids
    os.kill(pids[1], 9)
    t = time.time()
    wait_for(lambda: jobs.read_status(run_dir).get("state") in jobs.FINAL, timeout=120, what="the run to end")
    status = jobs.read_status(run_dir)
    assert status["state"] == "failed" and time.time() - t < 120, status  # not hung in a collective
    assert status["step"] < 30

    lora.resume(run_dir)
    status = jobs.wait(run_dir, timeout_s=600)
    assert status["state"] == "completed" and status["step"] == 30, jobs.tail(run_dir / runs.LOG)
    assert [m["step"] for m in runs.read_metrics(run_dir) if "loss" in m] == list(range(1, 31))


def test_cluster_launch_files_name_each_host_and_rank(tiny_llama3_dir, tmp_path, capsys):
    toy_version()
    cfg_file = tmp_path / "run.yaml"
    from core.config import save_yaml

    save_yaml(tiny_cfg(tiny_llama3_dir, run_name="cluster"), cfg_file)
    train_cli([str(cfg_file), "--hosts", "node-a,node-b,node-c", "--gpus-per-host", "8"])
    run_dir = runs.run_path("cluster")
    launch = run_dir / "launch"
    configs = sorted(launch.glob("accelerate-*.yaml"))
    assert [p.name for p in configs] == ["accelerate-0-node-a.yaml", "accelerate-1-node-b.yaml",
                                         "accelerate-2-node-c.yaml"]
    for rank, path in enumerate(configs):
        cfg = yaml.safe_load(path.read_text())
        assert (cfg["machine_rank"], cfg["num_machines"], cfg["num_processes"]) == (rank, 3, 24)
        assert cfg["main_process_ip"] == "node-a" and cfg["distributed_type"] == "MULTI_GPU"
    lines = [shlex.split(ln) for ln in (launch / "torchrun.sh").read_text().splitlines() if ln and ln[0] != "#"]
    assert len(lines) == 3
    for rank, argv in enumerate(lines):
        assert argv[1:3] == ["-m", "torch.distributed.run"]
        assert {"--nnodes=3", f"--node_rank={rank}", "--nproc_per_node=8", "--master_addr=node-a"} <= set(argv)
        assert argv[-3:] == ["-m", "core.train", str((run_dir / "config.yaml").resolve())]
    assert (run_dir / "config.yaml").exists() and not (run_dir / "status.json").exists()  # nothing started
    assert "torch.distributed.run" in capsys.readouterr().out
    save_yaml(tiny_cfg(tiny_llama3_dir, run_name="lonely"), cfg_file)
    with pytest.raises(SystemExit):
        train_cli([str(cfg_file), "--hosts", "only-one"])
    assert "two or more distinct host names" in capsys.readouterr().err
    assert not runs.run_path("lonely").exists()
