"""Benchmark: the default recipe out of core (DuckDB engine, optionally Ray) against the in-memory path.

Run as: .venv/bin/python bench/data_scale.py [--rows 100000] [--memory-rows 100000] [--ray-rows 0] [--skip-memory]
        [--page] [--engines duckdb,memory,ray] [--home DIR (keeps and reuses the generated versions)] [--keep-work]

1. Builds FineTome-shaped rows with planted duplicates (bench/data_pipeline.py's generator, 100k rows at a
   time) straight into a sharded version (core.data.shards.ShardWriter): generating 2M rows holds 100k.
2. Each engine runs `python -m core.data filter` in its own process tree on a cold work folder; a sampler
   adds up the RSS of the whole tree (the CLI, its spawned workers, Ray's processes) every 0.2 s.
3. Prints wall time, µs per row, peak tree RSS (also per pass, named by the CLI's latest progress line), the kept-row hash of each engine (equal = identical
   output), the ratio of per-row times, and near-dup recall on the planted copies.
"""
from __future__ import annotations

import argparse
import importlib.util
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))


def generator():
    spec = importlib.util.spec_from_file_location("data_pipeline", ROOT / "bench" / "data_pipeline.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


BLOCK_ROWS = 100_000  # rows generated at a time: the generator's peak stays that of 100k rows at any size


def make_version(home: Path, name: str, n: int) -> list[tuple[int, int]]:
    """Write n generated rows as a sharded version, block by block (block b is build_rows(100k, seed=b), its
    planted copies within the block), so generating 2M rows holds 100k at a time; return the planted
    near-dup pairs (global rows). A version already in `home` (--home) is reused with its planted.json."""
    import pandas as pd
    import pyarrow as pa

    os.environ["IRIS_HOME"] = str(home)
    from core import versions
    from core.data import formats, shards
    from core.paths import read_json, write_json

    folder = versions.version_dir(name)
    if (folder / versions.MANIFEST).exists() and (home / f"planted-{name}.json").exists():
        return [tuple(p) for p in read_json(home / f"planted-{name}.json")]
    gen = generator()
    pool = gen.sentence_pool()
    gen.sentence_pool = lambda: pool  # built once, not once per block
    writer, planted = shards.ShardWriter(folder / versions.TRAIN), []
    for b, lo in enumerate(range(0, n, BLOCK_ROWS)):
        rows, pairs = gen.build_rows(min(BLOCK_ROWS, n - lo), seed=b)
        planted += [(lo + o, lo + c) for o, c in pairs]
        df = formats.normalise(pd.DataFrame(rows), keep_broken_roles=True)
        del rows
        writer.write(pa.Table.from_pandas(df, preserve_index=False))
        del df
    writer.close()
    write_json(home / f"planted-{name}.json", planted)
    write_json(folder / versions.MANIFEST, versions.manifest_for(name, "import", {"source": "bench"}, n, 0,
                                                                 ["messages", "source", "score"], [], f"bench-{n}"))
    return planted


def last_line(log: Path) -> str:
    """The CLI's latest pass line (read from the log's tail: cheap every 0.2 s)."""
    try:
        with open(log, "rb") as f:
            f.seek(max(0, f.seek(0, 2) - 2048))
            lines = f.read().decode(errors="replace").strip().splitlines()
    except OSError:
        return ""
    return lines[-1] if lines else ""


def run_engine(home: Path, version: str, engine: str, out: str) -> dict:
    import psutil

    recipe = ROOT / "data" / "recipes" / "default.yaml"
    env = {**os.environ, "IRIS_HOME": str(home), "PYTHONPATH": str(ROOT)}
    import resource

    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    start = time.perf_counter()
    log = home / f"{out}.log"  # the CLI's pass lines (rows/s, ETA), readable while it runs
    with open(log, "w") as err:
        proc = subprocess.Popen([sys.executable, "-m", "core.data", "filter", version, "--recipe", str(recipe),
                                 "--name", out, "--engine", engine], cwd=ROOT, env=env, stdout=err, stderr=err)
    peak, root, shown = 0, psutil.Process(proc.pid), time.perf_counter()
    passes: dict[str, list[float]] = {}  # pass → [peak tree RSS (bytes), first seen, last seen (s)]
    while proc.poll() is None:
        now = time.perf_counter()
        name = last_line(log).split(":")[0] if engine != "memory" else "all"
        try:
            tree = [root] + root.children(recursive=True)
            rss = sum(p.memory_info().rss for p in tree if p.is_running())
            peak = max(peak, rss)
            seen = passes.setdefault(name, [0, now - start, 0])
            seen[0], seen[2] = max(seen[0], rss), now - start
        except psutil.Error:
            pass
        if now - shown > 60:  # a run cut short by the deadline still leaves its figures
            shown = now
            per = ", ".join(f"{k} {v[0] / 2**30:.2f}" for k, v in passes.items() if k)
            print(f"  {engine} {shown - start:6.0f} s, peak tree RSS so far {peak / 2**30:.2f} GiB ({per}): "
                  f"{last_line(log)}", flush=True)
        time.sleep(0.2)
    wall = time.perf_counter() - start
    after = resource.getrusage(resource.RUSAGE_CHILDREN)  # the CLI and the workers it reaped (not Ray's raylet workers)
    cpu = after.ru_utime + after.ru_stime - before.ru_utime - before.ru_stime
    if proc.returncode:
        raise SystemExit(f"{engine} failed:\n{log.read_text(errors='replace')[-3000:]}")
    for name, (rss, first, last) in passes.items():
        print(f"  {engine} pass {name or '(starting)'}: peak tree RSS {rss / 2**30:.2f} GiB, {first:.0f}–{last:.0f} s",
              flush=True)
    return {"engine": engine, "wall_s": wall, "cpu_s": cpu, "peak_tree_rss_gib": peak / 2**30, "version": out,
            "pass_peak_gib": {k: round(v[0] / 2**30, 3) for k, v in passes.items()}}


def kept_hash_and_recall(home: Path, out: str, planted) -> tuple[str, float]:
    """The version's content hash, and the share of planted (original, copy) pairs that both reached the
    dedup steps where one went as a duplicate (as bench/data_pipeline.py counts recall)."""
    import pandas as pd

    os.environ["IRIS_HOME"] = str(home)
    from core import versions

    m = versions.load_manifest(out)
    path = versions.version_dir(out) / "dropped.parquet"
    if not path.exists():  # the in-memory engine does not write it
        return m["content_hash"], float("nan")
    why = dict(zip(*pd.read_parquet(path).to_dict("list").values()))

    def reached(r):
        return r not in why or why[r].startswith(("near_dedup", "exact_dedup"))
    pairs = [(o, c) for o, c in planted if reached(o) and reached(c)]
    found = sum(o in why or c in why for o, c in pairs)
    return m["content_hash"], found / max(1, len(pairs))


PAGE_PROBE = """
import os, sys, time
from streamlit.testing.v1 import AppTest
at = AppTest.from_file(sys.argv[1] + "/pages/data.py", default_timeout=600).run()
at.radio[0].set_value("Saved version").run()
at.selectbox[0].set_value(sys.argv[2]).run()
start, cpu = time.perf_counter(), time.process_time()
at.button[0].click().run()
opened, opened_cpu = time.perf_counter() - start, time.process_time() - cpu
assert not at.exception and len(at.dataframe[0].value) == 50, at.exception
start = time.perf_counter()
at.number_input(key="big_page").set_value(1000).run()
paged = time.perf_counter() - start
# this process's own peak: ru_maxrss carries the bench's peak over exec on Linux (1.4 GiB after generating
# 2M rows, where the page itself held 0.3 GiB)
from core.jobs import own_peak_rss_bytes
print(opened_cpu, opened, paged, own_peak_rss_bytes() / 2**30)
"""


def page_open(home: Path, version: str) -> dict:
    """The Data page (AppTest, in its own process) opening `version`: seconds (and CPU seconds, steadier on a
    shared machine) to page 1, seconds to page 1000, peak RSS."""
    env = {**os.environ, "IRIS_HOME": str(home), "PYTHONPATH": str(ROOT), "IRIS_INMEMORY_ROWS": "1000"}
    out = subprocess.run([sys.executable, "-c", PAGE_PROBE, str(ROOT), version], env=env, cwd=ROOT,
                         capture_output=True, text=True, timeout=1800)
    if out.returncode:
        raise SystemExit(f"page probe failed:\n{out.stderr[-3000:]}")
    opened_cpu, opened, paged, rss = map(float, out.stdout.split()[-4:])
    return {"open_s": opened, "open_cpu_s": opened_cpu, "page_1000_s": paged, "peak_rss_gib": rss}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, default=100_000, help="rows for the out-of-core engine")
    parser.add_argument("--memory-rows", type=int, default=100_000, help="rows for the in-memory baseline")
    parser.add_argument("--ray-rows", type=int, default=0, help="also run the Ray engine on this many rows (0: no)")
    parser.add_argument("--skip-memory", action="store_true", help="no in-memory baseline")
    parser.add_argument("--page", action="store_true", help="time the Data page opening the --rows version")
    parser.add_argument("--home", type=Path, help="IRIS_HOME to use and keep (generated versions are reused; "
                        "outputs of an earlier run there are replaced); default: a fresh temporary folder")
    parser.add_argument("--engines", default="duckdb,memory,ray", help="which engines to run, comma-separated")
    parser.add_argument("--keep-work", action="store_true", help="keep the out-of-core work folder of an earlier "
                        "run with the same input and recipe, so its finished passes are resumed, not redone")
    args = parser.parse_args()
    home = args.home or Path(tempfile.mkdtemp(prefix="iris-scale-"))
    wanted = set(args.engines.split(","))
    print(f"uptime: {os.popen('uptime').read().strip()}", flush=True)
    results = {}
    sizes = sorted({args.rows, args.memory_rows} | ({args.ray_rows} if args.ray_rows else set()))
    for n in sizes:
        planted = make_version(home, f"gen{n}", n)
        print(f"built {n:,} rows ({len(planted):,} planted near-dup pairs)", flush=True)
        if args.page and n == args.rows:  # first: the filters after it may not finish by a deadline
            page = page_open(home, f"gen{n}")
            print(f"Data page (AppTest), {n:,}-row version: page 1 in {page['open_s']:.2f} s ({page['open_cpu_s']:.2f} CPU s; goal ≤ 3 s), page 1000 "
                  f"in {page['page_1000_s']:.2f} s, app peak RSS {page['peak_rss_gib']:.2f} GiB (goal ≤ 1.5 GiB); "
                  f"{os.popen('uptime').read().strip()}", flush=True)
        engines = (["duckdb"] if n == args.rows else []) + (["memory"] if n == args.memory_rows and not args.skip_memory
                                                             else []) + (["ray"] if n == args.ray_rows else [])
        for engine in [e for e in engines if e in wanted]:
            shutil.rmtree(home / "datasets" / f"out-{engine}-{n}", ignore_errors=True)
            if not args.keep_work:  # cold: this output's own work folder (another size's stays, for --keep-work)
                shutil.rmtree(home / "work" / f"filter-out-{engine}-{n}", ignore_errors=True)
            shutil.rmtree(home / "cache", ignore_errors=True)  # cold: the in-memory path caches measurements
            r = run_engine(home, f"gen{n}", engine, f"out-{engine}-{n}")
            r["content_hash"], r["near_recall"] = kept_hash_and_recall(home, r["version"], planted)
            r["us_per_row"], r["cpu_us_per_row"] = r["wall_s"] / n * 1e6, r["cpu_s"] / n * 1e6
            results[(engine, n)] = r
            print(f"{engine:>6} {n:>9,} rows: {r['wall_s']:7.1f} s ({r['us_per_row']:.0f} µs/row; CPU {r['cpu_s']:.0f} s, {r['cpu_us_per_row']:.0f} µs/row), peak tree RSS "
                  f"{r['peak_tree_rss_gib']:.2f} GiB, near-dup recall {r['near_recall']:.4f}, kept hash "
                  f"{r['content_hash'][:16]}; after it: {os.popen('uptime').read().strip()}", flush=True)
    mem = results.get(("memory", args.memory_rows))
    duck = results.get(("duckdb", args.rows))
    if mem and duck:
        print(f"per-row time duckdb@{args.rows:,} / memory@{args.memory_rows:,}: "
              f"{duck['us_per_row'] / mem['us_per_row']:.2f}x wall (goal ≤ 1.2x), "
              f"{duck['cpu_us_per_row'] / mem['cpu_us_per_row']:.2f}x CPU (steadier on a shared machine)")
        if args.rows == args.memory_rows:
            print(f"kept rows identical: {duck['content_hash'] == mem['content_hash']}")
    if ("ray", args.ray_rows) in results and ("duckdb", args.ray_rows) in results:
        ray, d = results[("ray", args.ray_rows)], results[("duckdb", args.ray_rows)]
        print(f"ray {ray['wall_s']:.1f} s vs duckdb {d['wall_s']:.1f} s; identical: {ray['content_hash'] == d['content_hash']}")
    print(json.dumps({f"{k[0]}@{k[1]}": v for k, v in results.items()}, indent=1, default=str))


if __name__ == "__main__":
    main()
