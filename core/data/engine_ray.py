"""The out-of-core recipe on a Ray cluster: the DuckDB engine's passes with Ray doing the work.

Run as: python -m core.data filter VERSION --recipe R.yaml --name NAME --engine ray [--address HOST:PORT]

    RayRunner(address=None, workers=None)   no address: a local Ray with this machine's cores (or `workers`)
      .map(fn, tasks)        per-piece passes as Ray Data `map_batches` over the pieces (one piece a batch)
      .candidates(work, b, n, progress)   LSH band keys grouped per band partition: one Ray task per run of
                             bands reads only its bands' keys, pairs bucket members exactly as
                             dedup.lsh_candidates and writes them as a sorted code file; merged out of core

The work folder must be on storage every node sees (a shared file system on a real cluster; here, local
disk). Results are the DuckDB engine's, row for row. An address that does not answer is one sentence
within ADDRESS_TIMEOUT_S, never a hang.
"""
from __future__ import annotations

import os
import socket
import subprocess
import sys
import time
from pathlib import Path
from typing import Callable, Iterator

from core.data import passes
from core.errors import IrisError
from core.paths import REPO_ROOT

ADDRESS_TIMEOUT_S = 8.0  # socket + a probe that joins the cluster: one sentence within 10 s, never a hang


def check_address(address: str, timeout_s: float = ADDRESS_TIMEOUT_S) -> None:
    """Refuse a Ray address whose port does not accept a connection within `timeout_s`."""
    hostport = address.split("://", 1)[-1]
    host, _, port = hostport.rpartition(":")
    if not host or not port.isdigit():
        raise IrisError(f"Ray address {address!r} is not HOST:PORT (e.g. 10.0.0.5:6379 or ray://10.0.0.5:10001).")
    start = time.monotonic()
    why = ""
    try:
        socket.create_connection((host, int(port)), timeout=timeout_s / 2).close()
        # a port can accept connections without a Ray behind it (ray.init then retries for minutes):
        # join once in a child process that is killed at the deadline
        probe = subprocess.run([sys.executable, "-c", "import ray, sys; ray.init(address=sys.argv[1], "
                                "log_to_driver=False); ray.shutdown()", address], capture_output=True, text=True,
                               timeout=max(1.0, timeout_s - (time.monotonic() - start)))
        if probe.returncode == 0:
            return
        why = (probe.stderr.strip().splitlines() or ["no Ray there"])[-1][:160]
    except OSError as err:
        why = str(err.strerror or err)
    except subprocess.TimeoutExpired:
        why = "no Ray answered on that port"
    raise IrisError(f"the Ray cluster at {address} did not answer within {timeout_s:.0f} s ({why}): check the "
                    "address and that `ray start --head` runs there, or leave --address out for a local Ray.")


def _env() -> dict:
    keep = {k: v for k, v in os.environ.items() if k.startswith(("IRIS_", "HF_")) or k == "TOKENIZERS_PARALLELISM"}
    return {"PYTHONPATH": os.pathsep.join(filter(None, [str(REPO_ROOT), os.environ.get("PYTHONPATH")])), **keep}


class RayRunner:
    def __init__(self, address: str | None = None, workers: int | None = None):
        import ray

        if address:
            check_address(address)
        if not ray.is_initialized():
            kwargs = {"address": address} if address else {"num_cpus": workers or os.cpu_count() or 1}
            ray.init(**kwargs, include_dashboard=False, log_to_driver=False, configure_logging=False,
                     runtime_env={"env_vars": _env()})
        self.started = not address

    def map(self, fn: Callable, tasks: list[dict]) -> Iterator:
        """fn(task) on the cluster for every task; Ray Data for piece passes, Ray tasks for the rest."""
        import ray

        if not tasks:
            return
        if fn is passes.measure_piece:
            ds = ray.data.from_items([{"task": t} for t in tasks], override_num_blocks=len(tasks))
            out = ds.map_batches(_measure_batch, batch_size=1, batch_format="pandas")
            for row in out.iter_rows():
                yield {"offset": int(row["offset"]), "rows": int(row["rows"])}
            return
        remote = ray.remote(fn)
        pending = [remote.remote(t) for t in tasks]
        while pending:
            done, pending = ray.wait(pending, num_returns=1)
            yield ray.get(done[0])

    def candidates(self, work: Path, near_base: float, rows: int, progress) -> int:
        """Per-band partitions: one Ray task per run of bands (≈ BAND_ROWS keys, as the DuckDB engine's runs)
        writes that run's pairs as a sorted code file; this process merges the files out of core (candidates.merge_runs,
        as the DuckDB engine). Returns how many pairs."""
        import ray

        from core.data import candidates

        work = Path(work)
        files, paths, todo = candidates.plan_runs(work, near_base, rows, progress)
        remote = ray.remote(candidates.write_run)
        pending = {remote.remote(files, lo, hi, path): hi - lo + 1 for lo, hi, path in todo}  # → its bands
        while pending:
            done, _ = ray.wait(list(pending), num_returns=1)
            ray.get(done[0])
            progress.advance(pending.pop(done[0]))
        progress.done()
        return candidates.merge_runs(work, paths, progress)

    def idle(self) -> None:
        """Ray keeps its workers between passes (it bounds their memory itself)."""

    def close(self) -> None:
        import ray

        if self.started and ray.is_initialized():
            ray.shutdown()


def _measure_batch(batch):
    import pandas as pd

    outs = [passes.measure_piece(t) for t in batch["task"]]
    return pd.DataFrame({"offset": [o["offset"] for o in outs], "rows": [o["rows"] for o in outs]})
