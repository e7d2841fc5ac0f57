"""Benchmark: Launch → first logged step of the CPU-quick preset on a FineTome-sized version (issue #26).

Run as: .venv/bin/python bench/train_start.py [--rows 100000] [--packing] [--home DIR]

1. Writes --rows FineTome-shaped conversations (bench/data_pipeline.py's generator: lognormal lengths,
   median ≈ 350 Llama-3 tokens) as a dataset version with a 2% eval split, into a temporary IRIS_HOME,
   and materialises the embedded SmolLM2 there (what `make app` does once per machine; timed apart).
2. Launches the "CPU quick: SmolLM2-135M" preset on it twice, as the Train page does (`core.train.lora.start`:
   a subprocess), and times Launch → the first line with a loss in metrics.jsonl: once on a version never
   tokenised (goal ≤ 30 s on 2 cores) and once on the same version again (goal ≤ 10 s). Each run is
   killed after its first step, once the rows that step read are in the token cache (the job writes them at
   the end of step 1, before the step's loss is logged; the bench checks the count, and that the second run
   added none). Prints a table of the phases (status.json's `phase_times`: when each began, from Launch) and
   the load average while each run started. Both runs are timed twice: each in a new Python, and handed to a
   warm process as the Train page does.
3. Then tokenises the whole version (as a packing run or a finished epoch leaves it; kept under
   IRIS_HOME/bench-full-tokens for the next bench run on the same --home) and times one more run, handed to a
   warm process, on it: the "version already tokenised" case in full (goal ≤ 10 s; the run must tokenise none).
4. Times, in a fresh Python, the imports the job cannot do without (torch, transformers' Llama and Trainer,
   peft, trl, datasets): the floor under any Launch → step 1 that starts a new process.
With --packing the preset packs rows, so every row is tokenised before step 1 the first time (cached after).
"""
from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "bench"))

ROLES = {"system": "system", "human": "user", "gpt": "assistant"}


def make_version(rows: int, name: str) -> float:
    import pandas as pd
    from data_pipeline import build_rows

    from core import versions

    t0 = time.time()
    built, _ = build_rows(rows)
    msgs = [[{"role": ROLES[t["from"]], "content": t["value"]} for t in r["conversations"]] for r in built]
    df = pd.DataFrame({"messages": msgs, "source": [r["source"] for r in built]})
    n_eval = rows // 50
    versions.save(name, df.iloc[n_eval:].reset_index(drop=True), eval_df=df.iloc[:n_eval].reset_index(drop=True))
    return time.time() - t0


def time_first_step(dataset: str, run_name: str, packing: bool, timeout_s: float = 600) -> dict:
    from core import jobs, runs
    from core.train import lora
    from core.train.config import load_preset

    cfg = load_preset("cpu_quick_smollm2")
    cfg.dataset, cfg.run_name, cfg.packing = dataset, run_name, packing
    t0 = time.time()
    run_dir = lora.start(cfg)
    first, loads = None, []
    while time.time() - t0 < timeout_s:
        status = jobs.read_status(run_dir)
        loads.append(os.getloadavg()[0])
        if any("loss" in m for m in runs.read_metrics(run_dir)):
            first = time.time() - t0
            break
        if status.get("state") in jobs.FINAL:
            raise SystemExit(f"run ended {status['state']}: {status.get('error')}\n" + jobs.tail(run_dir / runs.LOG))
        time.sleep(0.1)
    cached = _cached_rows()  # the job flushed step 1's rows before logging its loss
    jobs.kill(run_dir)
    status = jobs.read_status(run_dir)
    return {"first_step_s": first, "phases": status.get("phase_times") or {}, "cpu": status.get("phase_cpu") or {},
            "rows_cached": cached, "load": sum(loads) / max(1, len(loads))}


def phase_table(runs_out: dict) -> str:
    """Seconds each phase took (from its start to the next phase's), per run, markdown; in brackets the job's CPU
    seconds in it (all its threads), where both ends were recorded by the job."""
    labels = list(runs_out)
    names = []
    for out in runs_out.values():
        names += [n for n in out["phases"] if n not in names]
    lines = ["| phase | " + " | ".join(labels) + " |", "|---|" + "---|" * len(labels)]
    for name in names:
        cells = []
        for out in runs_out.values():
            times = sorted(out["phases"].items(), key=lambda kv: kv[1]) + [("logged", out["first_step_s"])]
            at = [i for i, (n, _) in enumerate(times) if n == name]
            cpu = out["cpu"]
            nxt = times[at[0] + 1][0] if at else None
            spent = f" ({cpu[nxt] - cpu.get(name, 0.0):.1f} CPU)" if at and nxt in cpu and name in cpu else ""
            cells.append(f"{times[at[0] + 1][1] - times[at[0]][1]:.1f} s{spent}" if at else "—")
        lines.append(f"| {name} | " + " | ".join(cells) + " |")
    lines.append("| **Launch → first logged step** | " + " | ".join(f"**{o['first_step_s']:.1f} s**"
                                                                    for o in runs_out.values()) + " |")
    lines.append("| load average (1 min) while starting | " + " | ".join(f"{o['load']:.2f}"
                                                                        for o in runs_out.values()) + " |")
    return "\n".join(lines)


IMPORTS = ("import torch; from transformers import AutoModelForCausalLM, AutoTokenizer, Trainer; "
           "import transformers.models.llama.modeling_llama; from peft import LoraConfig; "
           "from trl import SFTConfig, SFTTrainer; from datasets import Dataset")


def import_floor() -> float:
    """Seconds a fresh Python takes to import what the training job needs, as the job does (core.train.__main__
    first: it keeps scikit-learn out)."""
    import subprocess

    t0 = time.time()
    subprocess.run([sys.executable, "-c", f"import core.train.__main__; {IMPORTS}"], check=True, cwd=ROOT)
    return time.time() - t0


def _cached_rows() -> int:
    import pyarrow.parquet as pq

    from core.train.tokens import cache_root

    return sum(pq.read_metadata(p).num_rows for p in cache_root().rglob("part-*.parquet"))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rows", type=int, default=100_000, help="FineTome-shaped conversations in the version")
    parser.add_argument("--packing", action="store_true", help="pack rows (every row tokenised before step 1)")
    parser.add_argument("--home", help="reuse this IRIS_HOME (its model and version); its token cache and "
                        "start-* runs are removed first")
    args = parser.parse_args()
    os.environ["IRIS_HOME"] = args.home or tempfile.mkdtemp(prefix="iris-train-start-")
    import shutil

    from core import models, versions
    from core.paths import runs_dir
    from core.train.tokens import cache_root

    shutil.rmtree(cache_root(), ignore_errors=True)
    for old in runs_dir().glob("start-*"):
        shutil.rmtree(old)
    os.environ["IRIS_WARM_START"] = "0"  # the first two runs start a new Python each; wait_warm turns it on

    t0 = time.time()
    models.materialise_embedded()
    print(f"materialise embedded SmolLM2 (once per machine): {time.time() - t0:.1f} s", flush=True)
    if not versions.exists("finetome-like"):
        print(f"dataset version of {args.rows:,} rows written in {make_version(args.rows, 'finetome-like'):.1f} s",
              flush=True)
    print(f"uptime: {os.popen('uptime').read().strip()}", flush=True)
    goals = {"fresh": 30.0, "tokenised": 10.0}
    results = {}
    for how in ("new Python", "warm process"):
        if how == "warm process":  # what the Train page keeps ready (core.train.launch.warm_up), on a fresh cache
            shutil.rmtree(cache_root(), ignore_errors=True)
        for label, name in (("fresh", "start-fresh"), ("tokenised", "start-again")):
            if how == "warm process":
                name += "-warm"
                print(f"warm process ready after {wait_warm():.1f} s", flush=True)
            out = time_first_step("finetome-like", name, args.packing, timeout_s=1200)
            verdict = "meets" if out["first_step_s"] and out["first_step_s"] <= goals[label] else "misses"
            print(f"{label:10s} ({how}) Launch → first logged step {out['first_step_s']:.1f} s ({verdict} the ≤ "
                  f"{goals[label]:.0f} s goal); phases began at {out['phases']}; rows cached "
                  f"{out['rows_cached']:,}; load average {out['load']:.2f}", flush=True)
            results[f"{label}, {how}"] = out
        fresh, again = results[f"fresh, {how}"]["rows_cached"], results[f"tokenised, {how}"]["rows_cached"]
        if not fresh or again != fresh:
            raise SystemExit(f"the token cache did not serve the second run: {fresh} rows cached after the first "
                             f"run's step 1, {again} after the second's (it tokenised {again - fresh} rows)")
        print(f"the second run read step 1's {fresh} rows from the cache (tokenised none)\n", flush=True)
    seconds, rows = tokenise_all("finetome-like")
    print(f"whole version tokenised: {rows:,} rows in the cache ({seconds:.1f} s)", flush=True)
    print(f"warm process ready after {wait_warm():.1f} s", flush=True)
    out = time_first_step("finetome-like", "start-full-warm", args.packing, timeout_s=600)
    verdict = "meets" if out["first_step_s"] and out["first_step_s"] <= goals["tokenised"] else "misses"
    print(f"tokenised in full (warm process) Launch → first logged step {out['first_step_s']:.1f} s ({verdict} the "
          f"≤ {goals['tokenised']:.0f} s goal); phases began at {out['phases']}; rows cached {out['rows_cached']:,}; "
          f"load average {out['load']:.2f}\n", flush=True)
    if out["rows_cached"] != rows:
        raise SystemExit(f"the run on a fully tokenised version tokenised {out['rows_cached'] - rows} rows")
    results["in full, warm process"] = out
    print(phase_table(results), flush=True)
    print(f"\nfloor: a fresh Python importing what the job needs takes {import_floor():.1f} s", flush=True)
    print(f"uptime: {os.popen('uptime').read().strip()}", flush=True)


def tokenise_all(dataset: str) -> tuple[float, int]:
    """Tokenise every row of `dataset` (train and eval) into the token cache as the preset's runs key it:
    (seconds, rows cached). Copies the result to IRIS_HOME/bench-full-tokens, and starts from there next time."""
    import shutil

    from transformers import AutoTokenizer

    from core import models
    from core.paths import iris_home
    from core.train import backends
    from core.train.config import load_preset
    from core.train.tokens import RowSource, cache_key, cache_root

    cfg = load_preset("cpu_quick_smollm2")
    tokenizer = AutoTokenizer.from_pretrained(models.resolve(cfg.base_model))
    backends.set_training_template(tokenizer, cfg.assistant_only_loss)
    kept, t0 = iris_home() / "bench-full-tokens", time.time()
    for split in ("train", "eval"):
        key = cache_key(dataset, split, tokenizer, cfg.max_seq_length, cfg.assistant_only_loss)
        if (kept / key).exists():
            shutil.copytree(kept / key, cache_root() / key, dirs_exist_ok=True)
        RowSource(dataset, split, tokenizer, cfg.max_seq_length, cfg.assistant_only_loss).full_dataset()
        shutil.rmtree(kept / key, ignore_errors=True)
        shutil.copytree(cache_root() / key, kept / key)
    return time.time() - t0, _cached_rows()


def wait_warm(timeout_s: float = 600) -> float:
    """Start a warm process (as the Train page does) and wait until it is ready and has warmed its kernels (a
    Launch in the seconds between waits for that; a user picking a version and a name takes longer)."""
    from core.train.launch import warm_dir, warm_up

    t0 = time.time()
    os.environ["IRIS_WARM_START"] = "1"
    pid = warm_up()
    if pid is None:
        raise SystemExit("a warm process is already waiting or starting (or a run is active): none started")
    log = warm_dir() / "warm.log"
    while f"warm process {pid}: kernels warm" not in (log.read_text(errors="replace") if log.exists() else ""):
        if time.time() - t0 > timeout_s:
            raise SystemExit(f"no warm process ready after {timeout_s:.0f} s: see {log}")
        time.sleep(0.2)
    return time.time() - t0


if __name__ == "__main__":
    main()
