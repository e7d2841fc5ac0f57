"""The default recipe on data larger than memory: passes over bounded pieces, grouping out of core in DuckDB.

Run through the CLI: python -m core.data filter VERSION --recipe R.yaml --name NAME --engine duckdb
(`--engine ray [--address ADDR]` runs the same passes on Ray: core.data.engine_ray).

    filter_big(version, recipe, name, ...) -> Path     the new version, its rows as Parquet shards
    run_recipe(files, recipe, work, runner, ...) -> FilterResult   kept / reasons / funnel without saving

Passes (each one's output lives in the work folder IRIS_HOME/work/filter-NAME until the version is saved):
  1 measure     per piece, in worker processes: the in-memory path's per-row measurements, a 128-bit key
                of the exact-dedup text and the MinHash LSH band keys (core.data.passes) → measure/, bands/
  2 candidates  the band keys grouped a run of bands at a time (each read from its own row groups, sorted
                in numpy, ≈ candidates.BAND_ROWS keys in memory) into candidate pairs exactly as
                dedup.lsh_candidates pairs rows within a bucket → pairs.npy
  3 verify      the in-memory path's signature pre-check on the signatures pass 1 saved, then the
                word-5-gram sets and true Jaccard of the rows still left only → near.parquet
  4 steps       DuckDB reads the measurements back in row order with each row's exact-duplicate cluster;
                the recipe's own step loop (filters.run_steps) decides kept rows and reasons
  5 write       workers copy each piece's kept rows into a shard of a temporary version folder (shard k =
                piece k) and serialise them for the content hash, which this process takes in row order; the
                folder is renamed into place at the end (core.paths.atomic_dir): never a partial version
Results equal filters.apply_recipe's on the same rows (kept rows, drop reasons, funnel counts).

Resume: every piece and pass output is written under a temporary name and renamed, and state.json lists
the finished passes with a fingerprint of (input, recipe, piece size); re-running the same command after
a kill resumes from the last finished piece, and a changed input or recipe starts clean.
"""
from __future__ import annotations

import hashlib
import os
import shutil
import time
from pathlib import Path
from typing import Callable, Iterator

import numpy as np

from core import versions
from core.data import candidates, passes, shards
from core.data.filters import DataRecipe, FilterResult, run_steps
from core.data.progress import Progress
from core.errors import IrisError
from core.paths import atomic_dir, iris_home, read_json, write_json

DROPPED = "dropped.parquet"  # in a version made out of core: (row of the parent, reason) per dropped row
WORK_LAYOUT = 3  # bump when the passes' files change (2: signatures saved by pass 1; 3: a row group per band)
DUCKDB_MEMORY = os.environ.get("IRIS_DUCKDB_MEMORY", "1GB")  # DuckDB's own limit; it spills to work/duck_tmp past it


class LocalRunner:
    """Runs piece functions in `workers` spawned processes (1: in this process); groups with DuckDB."""

    def __init__(self, workers: int | None = None):
        self.workers = workers or os.cpu_count() or 1
        self.pool = None

    def map(self, fn: Callable, tasks: list[dict]) -> Iterator:
        """fn(task) for every task, results as they finish; at most 2 pieces per worker in flight."""
        if self.workers <= 1:
            yield from (fn(t) for t in tasks)
            return
        import multiprocessing
        from concurrent.futures import FIRST_COMPLETED, ProcessPoolExecutor, wait

        if self.pool is None:  # spawn: the parent may hold DuckDB/Arrow threads that fork would copy mid-lock
            self.pool = ProcessPoolExecutor(self.workers, mp_context=multiprocessing.get_context("spawn"))
        todo, running = list(tasks), set()
        while todo or running:
            while todo and len(running) < 2 * self.workers:
                running.add(self.pool.submit(fn, todo.pop(0)))
            finished, running = wait(running, return_when=FIRST_COMPLETED)
            for fut in finished:
                yield fut.result()

    def candidates(self, work: Path, near_base: float, rows: int, progress: Progress) -> int:
        return grouped_candidates(work, near_base, rows, progress)

    def idle(self) -> None:
        """After the measure pass: end its workers, so they do not hold their memory (tokenizer, language
        model, the last piece: ≈ 0.5 GiB each) through the passes that run in this process; verify's
        workers (light: no models) start once and stay on for the write pass."""
        self.close()

    def close(self) -> None:
        if self.pool is not None:
            self.pool.shutdown(cancel_futures=True)
            self.pool = None


def connect(work: Path):
    """A DuckDB connection that spills to the work folder past DUCKDB_MEMORY."""
    import duckdb

    con = duckdb.connect()
    (work / "duck_tmp").mkdir(parents=True, exist_ok=True)
    con.execute(f"SET temp_directory = '{work / 'duck_tmp'}'")
    con.execute(f"SET memory_limit = '{DUCKDB_MEMORY}'")
    con.execute(f"SET threads = {os.cpu_count() or 1}")
    con.execute("SET preserve_insertion_order = false")
    return con


def grouped_candidates(work: Path, near_base: float, rows: int, progress: Progress) -> int:
    """Candidate pairs (i < j, distinct, sorted) from the band keys into work/PAIRS as int64 codes
    (core.data.candidates), a run of bands at a time (each read from its own row groups, sorted in numpy,
    ≈ candidates.BAND_ROWS keys in memory, its pairs written to a run file), then the run files merged out of
    core. Memory holds ≈ BAND_ROWS keys or MERGE_CODES codes whatever the size. Returns how many pairs. (Was the
    union of every run's pairs in memory: at 2M rows ≈ 240M pairs, 5.8 GiB and growing.)"""
    files, paths, todo = candidates.plan_runs(work, near_base, rows, progress)
    for lo, hi, path in todo:
        candidates.write_run(files, lo, hi, path, on_band=lambda _: progress.advance(1))
    progress.done()
    return candidates.merge_runs(work, paths, progress)


def near_base_of(recipe: DataRecipe) -> float | None:
    from core.data.measure import base_threshold_for

    near = recipe.step("near_dedup")
    return base_threshold_for(float(near.get("threshold"))) if near and near.enabled else None


def _piece_task(piece: shards.Piece, work: Path, recipe: DataRecipe) -> dict:
    length, edu = recipe.step("length"), recipe.step("edu_semantic")
    return {"piece": piece.__dict__, "work": str(work), "near_base": near_base_of(recipe),
            "tokenizer": recipe.tokenizer if length and length.enabled else None,
            "edu": dict(edu.params) if edu and edu.enabled else None}


def measure_pass(all_pieces: list[shards.Piece], work: Path, recipe: DataRecipe, runner, progress: Progress) -> None:
    """Pass 1: measure every piece that has no measurement file yet."""
    done = {p.name for p in (work / passes.MEASURE).glob("piece-*.parquet")}
    todo = [p for p in all_pieces if passes.piece_name(p.offset) not in done]
    total = sum(p.rows for p in all_pieces)
    progress.start("measure", total, already=total - sum(p.rows for p in todo))
    for out in runner.map(passes.measure_piece, [_piece_task(p, work, recipe) for p in todo]):
        progress.advance(out["rows"])
    runner.idle()
    progress.done()


def verify_pass(all_pieces: list[shards.Piece], pairs_file: Path, near_base: float, runner,
                progress: Progress, work: Path):
    """Pass 3: the (i, j, jaccard) table of candidate pairs whose true Jaccard reaches `near_base`.

    dedup.plausible_pairs' two checks (_plausible) on the signatures pass 1 saved; only the rows still left
    are read again, by workers that write their word-5-gram sets, for the true Jaccard. Each step holds only
    what it needs."""
    import pandas as pd

    from core.data import dedup

    involved = _rows_in(pairs_file, sum(p.rows for p in all_pieces))
    cand = _plausible(work, pairs_file, involved, near_base, progress)
    cand = involved[cand]  # global rows from here on
    del involved
    rows = candidates.distinct(cand)
    offsets = np.array([p.offset for p in all_pieces])
    which = np.searchsorted(offsets, rows, side="right") - 1
    (work / passes.VERIFY).mkdir(exist_ok=True)
    done = {p.name for p in (work / passes.VERIFY).glob("piece-*.npz")}
    tasks = [{"piece": all_pieces[k].__dict__, "work": str(work), "rows": rows[which == k]}
             for k in candidates.distinct(which) if f"piece-{all_pieces[k].offset:012d}.npz" not in done]
    progress.start("verify", len(rows), already=len(rows) - sum(len(t["rows"]) for t in tasks))
    for out in runner.map(passes.verify_piece, tasks):  # these workers stay on for the write pass
        progress.advance(out["rows"])
    progress.done()
    sets = _gather_sets(work, rows)
    jac = dedup.jaccard_of_sets(dict(enumerate(sets)), np.searchsorted(rows, cand))
    keep = jac >= near_base
    return pd.DataFrame({"i": cand[keep, 0], "j": cand[keep, 1], "jaccard": jac[keep]})


def _rows_in(pairs_file: Path, n: int) -> np.ndarray:
    """The sorted rows that appear in any pair of `pairs_file` (a mark per row, not the pairs)."""
    seen = np.zeros(n, dtype=bool)
    for codes in candidates.read_chunks(pairs_file):
        pairs = candidates.decode(codes)
        seen[pairs[:, 0]] = seen[pairs[:, 1]] = True
    return np.flatnonzero(seen)


QUICK_BINS, PLAUSIBLE_MARGIN = 64, 0.15  # as dedup.plausible_pairs: its first 64 bins, its margin


def _plausible(work: Path, pairs_file: Path, involved: np.ndarray, near_base: float, progress: Progress
               ) -> np.ndarray:
    """The candidate pairs (as int32 indices into `involved`) that pass dedup.plausible_pairs' two checks:
    its first QUICK_BINS bins of the rows in candidate pairs (held: 512 B a row) against the pairs streamed
    from `pairs_file` a chunk at a time (at 2M rows ≈ 240M pairs, 1.9 GB); then, for the pairs left, the
    agreement over all bins counted QUICK_BINS bins at a time (never the full 2 KiB signatures of every row
    left: 1M rows would be 2 GiB). A share is count / bins in float64, which is what dedup's mean of the
    bins' equality computes, so the same pairs pass."""
    sig_files = sorted((work / passes.SIGS).glob("piece-*.npy"))
    bins = np.load(sig_files[0], mmap_mode="r").shape[1] if sig_files else QUICK_BINS
    first = min(QUICK_BINS, bins)  # as dedup: its first 64 bins, or all of fewer
    quick = _gather_signatures(work, involved, slice(0, first))
    progress.start("verify: signatures", candidates.count(pairs_file), unit="pairs")
    cand, agree = [np.zeros((0, 2), dtype=np.int32)], [np.zeros(0, dtype=np.int16)]
    for codes in candidates.read_chunks(pairs_file):
        part = np.searchsorted(involved, candidates.decode(codes)).astype(np.int32)
        count = _agreements(quick, part)
        ok = count / first >= near_base - PLAUSIBLE_MARGIN - 0.2
        cand.append(part[ok])
        agree.append(count[ok])
        progress.advance(len(codes))
    del quick
    cand, agree = np.concatenate(cand), np.concatenate(agree)
    left = candidates.distinct(cand)
    local = np.searchsorted(left, cand).astype(np.int32)
    for lo in range(first, bins, QUICK_BINS):  # the full check's count, a block of bins at a time
        agree += _agreements(_gather_signatures(work, involved[left], slice(lo, lo + QUICK_BINS)), local)
    progress.done()
    return cand[agree / bins >= near_base - PLAUSIBLE_MARGIN]


def _agreements(sig: np.ndarray, pairs: np.ndarray) -> np.ndarray:
    """How many bins of `sig` each pair's rows agree on (int16), 20k pairs at a time."""
    out = np.zeros(len(pairs), dtype=np.int16)
    for lo in range(0, len(pairs), 20000):
        a, c = pairs[lo:lo + 20000, 0], pairs[lo:lo + 20000, 1]
        out[lo:lo + 20000] = (sig[a] == sig[c]).sum(axis=1)
    return out


def _gather_signatures(work: Path, rows: np.ndarray, bins: slice) -> np.ndarray:
    """Bins `bins` of the saved signatures of `rows` (sorted global rows), piece file by piece file (each
    memory-mapped and let go: only the rows asked for are copied)."""
    out = None
    for path in sorted((work / passes.SIGS).glob("piece-*.npy")):
        sig = np.load(path, mmap_mode="r")
        first = int(path.stem.split("-")[1])
        lo, hi = np.searchsorted(rows, [first, first + len(sig)])
        if out is None:
            out = np.empty((len(rows), sig[:, bins].shape[1]), dtype=np.uint64)
        if hi > lo:
            out[lo:hi] = sig[rows[lo:hi] - first, bins]
        del sig
    return out if out is not None else np.zeros((len(rows), 0), dtype=np.uint64)


def _gather_sets(work: Path, rows: np.ndarray) -> list[np.ndarray]:
    """The word-5-gram sets verify_piece wrote for `rows` (sorted global rows), in that order."""
    out: list = [None] * len(rows)
    for path in sorted((work / passes.VERIFY).glob("piece-*.npz")):
        with np.load(path) as z:
            values, offsets = z["set_values"], z["set_offsets"]  # each npz key read once: it loads the whole array
            for k, row in enumerate(z["rows"]):
                out[int(np.searchsorted(rows, row))] = values[offsets[k]:offsets[k + 1]]
    return out


def measurements(work: Path):
    """Pass 4's input: every measurement in row order, with each row's exact-duplicate cluster (the lowest
    row with the same normalised text), grouped by DuckDB."""
    con = connect(work)
    glob = work / passes.MEASURE / "piece-*.parquet"
    m = con.execute(f"""SELECT * EXCLUDE (row, exact_hi, exact_lo),
        min(row) OVER (PARTITION BY exact_hi, exact_lo) AS exact_cluster
        FROM read_parquet('{glob}') ORDER BY row""").df()
    con.close()
    return m


def scalar_columns(files: list[Path]):
    """The columns the steps read besides the measurements (`source`, `score`), for every row."""
    import pandas as pd
    import pyarrow.parquet as pq

    wanted = [c for c in ("source", "score") if c in pq.ParquetFile(files[0]).schema_arrow.names]
    parts = [pq.read_table(f, columns=wanted).to_pandas() for f in files] if wanted else []
    return pd.concat(parts, ignore_index=True) if parts else None


def run_recipe(files: list[Path], recipe: DataRecipe, work: Path, runner, progress: Progress,
               chunk_rows: int = shards.CHUNK_ROWS, fingerprint: str = "") -> FilterResult:
    """Passes 1–4 over the rows of `files` (resuming what state.json says is done); the FilterResult's df
    holds only the scalar columns: the rows themselves stay on disk."""
    import pandas as pd

    state = _state(work, fingerprint)
    all_pieces = shards.pieces(files, chunk_rows)
    n = sum(p.rows for p in all_pieces)
    if "measure" not in state["passes"]:
        measure_pass(all_pieces, work, recipe, runner, progress)
        _finish(work, state, "measure")
    near_base, near = near_base_of(recipe), None
    if near_base is not None:
        if "verify" not in state["passes"]:
            # (a layout-3 folder whose candidates pass finished kept pairs.npy: redo the pass)
            if "candidates" not in state["passes"] or not (work / candidates.PAIRS).exists():
                runner.candidates(work, near_base, n, progress)
                _finish(work, state, "candidates")
            near = verify_pass(all_pieces, work / candidates.PAIRS, near_base, runner, progress, work)
            passes._write(near, work / "near.parquet")
            _finish(work, state, "verify")
        near = pd.read_parquet(work / "near.parquet")
    progress.start("steps", n)
    m = measurements(work)
    light = scalar_columns(files)
    result = run_steps(light if light is not None else pd.DataFrame(index=range(n)), m, recipe, near_pairs=near)
    progress.advance(n)
    progress.done()
    return result


def _state(work: Path, fingerprint: str) -> dict:
    """The work folder's state; a different fingerprint (input, recipe, piece size) starts clean."""
    state = read_json(work / "state.json", default=None)
    if not state or state.get("fingerprint") != fingerprint:
        shutil.rmtree(work, ignore_errors=True)
        for sub in (passes.MEASURE, passes.BANDS, passes.SIGS):
            (work / sub).mkdir(parents=True, exist_ok=True)
        state = {"fingerprint": fingerprint, "passes": [], "started": time.time()}
        write_json(work / "state.json", state)
    return state


def _finish(work: Path, state: dict, name: str) -> None:
    state["passes"].append(name)
    write_json(work / "state.json", state)


def eval_mask(kept_rows: int, fraction: float, seed: int) -> np.ndarray:
    """The rows of the kept ones that versions.split would hold out (it depends on the count alone)."""
    mask = np.zeros(kept_rows, dtype=bool)
    n = int(round(kept_rows * fraction)) if fraction else 0
    if n:
        mask[np.random.default_rng(seed).choice(np.arange(kept_rows), size=n, replace=False)] = True
    return mask


def write_version(files: list[Path], kept: np.ndarray, held: np.ndarray, folder: Path, runner, work: Path,
                  progress: Progress, chunk_rows: int = shards.CHUNK_ROWS) -> tuple[int, int, str, list[str]]:
    """Pass 5: workers copy each piece's kept rows into a shard of folder/train.parquet/ and eval.parquet/
    (shard k = piece k, so name order is row order) and serialise them as versions.hash_rows does; this
    process hashes those bytes in row order. Returns (train rows, eval rows, content hash as
    versions.content_hash computes it: train rows, then eval rows, columns)."""
    all_pieces = shards.pieces(files, chunk_rows)
    tasks, position = [], 0
    for index, piece in enumerate(all_pieces):
        local = np.flatnonzero(kept[piece.offset: piece.offset + piece.rows])
        to_eval = held[position: position + len(local)]
        position += len(local)
        tasks.append({"piece": piece.__dict__, "work": str(work), "out": str(folder), "index": index,
                      "schema_of": str(files[0]), "train": local[~to_eval], "eval": local[to_eval]})
    (work / passes.WRITE).mkdir(parents=True, exist_ok=True)
    digest, done, hashed, counts, columns = hashlib.sha256(), set(), 0, {"train": 0, "eval": 0}, []
    progress.start("write", len(kept))
    for out in runner.map(passes.write_piece, tasks):
        done.add(out["offset"])
        counts["train"] += out["train"]
        counts["eval"] += out["eval"]
        columns = out["columns"]
        while hashed < len(all_pieces) and all_pieces[hashed].offset in done:  # the train rows, in row order
            _hash_file(digest, work / passes.WRITE / f"train-{all_pieces[hashed].offset:012d}.bin")
            hashed += 1
        progress.advance(out["rows"])
    for piece in all_pieces:  # the manifest hashes train rows, then eval rows
        _hash_file(digest, work / passes.WRITE / f"eval-{piece.offset:012d}.bin")
    progress.done()
    return counts["train"], counts["eval"], digest.hexdigest(), columns


def _hash_file(digest, path: Path) -> None:
    """Feed a worker's serialised rows to the digest and let the file go (a missing one: no such rows)."""
    if path.exists():
        with open(path, "rb") as f:
            while chunk := f.read(1 << 24):
                digest.update(chunk)
        path.unlink()


def version_files(version: str) -> list[Path]:
    """A version's rows as files: train, then eval (the order core.data.store.load_version_rows reads them)."""
    folder = versions.version_dir(version)
    versions.load_manifest(version)
    return shards.split_files(folder, "train") + shards.split_files(folder, "eval")


def make_runner(engine: str, workers: int | None = None, address: str | None = None):
    if engine == "duckdb":
        if address:
            raise IrisError("--address is for --engine ray; the duckdb engine runs on this machine.")
        return LocalRunner(workers)
    if engine == "ray":
        from core.data import engine_ray

        return engine_ray.RayRunner(address, workers)
    raise IrisError(f"unknown engine {engine!r}: use duckdb (this machine) or ray (a Ray cluster).")


def filter_big(version: str, recipe: DataRecipe, name: str, eval_fraction: float | None = None,
               engine: str = "duckdb", address: str | None = None, chunk_rows: int = shards.CHUNK_ROWS,
               workers: int | None = None, job_dir: Path | None = None) -> Path:
    """Apply `recipe` to version `version` out of core and save the kept rows as version `name` (shards)."""
    target = versions.version_dir(name)
    if versions.exists(name):
        raise IrisError(f"dataset version {name!r} already exists (versions are immutable): choose another name.")
    files, manifest = version_files(version), versions.load_manifest(version)
    work = work_dir(name)
    n = sum(shards.file_rows(f) for f in files)
    bands = passes.band_plan(near_base_of(recipe))[0] if near_base_of(recipe) is not None else 0
    # input again for the output, band keys twice (files and DuckDB's spill), ≈ 200 B of measurements a row,
    # 2 KiB of MinHash signature a row, candidate pairs twice (run files and their merge: ≈ 120 pairs × 8 B a
    # row at 2M FineTome-shaped rows)
    per_row = bands * 36 + 200 + (2048 + 2 * 1000 if bands else 0)
    shards.check_disk(iris_home(), shards.split_bytes(files) + n * per_row, f"filtering {n:,} rows")
    fraction = recipe.eval_fraction if eval_fraction is None else eval_fraction
    fingerprint = hashlib.sha1(f"{manifest.get('content_hash')}|{recipe.to_yaml()}|{chunk_rows}|{WORK_LAYOUT}".encode()
                               ).hexdigest()
    progress, runner = Progress(job_dir), make_runner(engine, workers, address)
    try:
        result = run_recipe(files, recipe, work, runner, progress, chunk_rows, fingerprint)
        kept = result.kept
        if not kept.any():
            raise IrisError(f"dataset version {name!r} would be empty: loosen the recipe.")
        with atomic_dir(target) as tmp:
            written = write_version(files, kept, eval_mask(int(kept.sum()), fraction, recipe.seed), tmp, runner, work,
                                    progress, chunk_rows)
            extra = {"dropped_by_reason": result.reason_counts(), "recipe_name": recipe.name,
                     "tokenizer": recipe.tokenizer, "split": {"eval_fraction": fraction, "seed": recipe.seed},
                     "engine": engine, "sharded": True}
            parent = {"version": version, "content_hash": manifest.get("content_hash")}
            _describe(tmp, name, recipe, result, parent, written, extra)
    finally:
        runner.close()
    shutil.rmtree(work, ignore_errors=True)
    return target


def _describe(tmp: Path, name: str, recipe: DataRecipe, result: FilterResult, parent: dict,
              written: tuple[int, int, str, list[str]], extra: dict) -> None:
    """The new version's files besides its rows: recipe, why each input row went, manifest."""
    import pandas as pd

    (tmp / versions.RECIPE).write_text(recipe.to_yaml(), encoding="utf-8")
    gone = np.flatnonzero(~result.kept)  # why each input row went (row numbers of the parent version)
    pd.DataFrame({"row": gone, "reason": result.reasons[gone].astype(str)}).to_parquet(tmp / DROPPED, index=False)
    train_rows, eval_rows, digest, columns = written
    write_json(tmp / versions.MANIFEST, versions.manifest_for(name, "filter", parent, train_rows, eval_rows, columns,
                                                              result.funnel, digest, extra))


def work_dir(name: str) -> Path:
    """Where a filter into version `name` keeps its passes (and, run as a job, its status.json)."""
    return iris_home() / "work" / f"filter-{name}"

