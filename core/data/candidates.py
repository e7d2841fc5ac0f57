"""Candidate pairs out of core: the LSH pairs of a run of bands as sorted int64 codes in a file, every run's
file merged into one sorted, distinct file a bounded chunk at a time, and read back a chunk at a time.

    write_run(files, first, last, path, on_band=None) -> int   bands first..last's pairs → path (codes), count
    merge(paths, out, memory_codes=None) -> int             k-way merge of sorted code files, distinct → out
    read_chunks(path, chunk=READ_CODES) -> Iterator[codes]     a code file back, a chunk at a time
    decode(codes) -> (n, 2) int64 pairs (i, j)

A pair (i, j), i < j, is one int64 code i << 31 | j (rows stay below 2^31), so "sorted by (i, j)" is "sorted
codes" and the union of the bands' pairs is a merge of sorted files. At 2M FineTome-shaped rows one band
holds ≈ 3.7M pairs and the 64 bands ≈ 240M (1.9 GB of codes): held at once (and uniqued) they took 5.8 GiB
and growing, so only a run's pairs (≈ BAND_ROWS band keys' worth) and the merge's chunks are ever in memory.
Code files are raw little-endian int64 (np.fromfile with an offset), not memory-mapped: mapped pages that
were read count in the process's RSS until unmapped.
"""
from __future__ import annotations

import os
import shutil
from pathlib import Path
from typing import Callable, Iterator

import numpy as np

from core.data import dedup

BAND_ROWS = 8_000_000  # band keys paired at once, a run (≈ 0.5 GB with the sort's temporaries; 4 bands at 2M rows)
MERGE_CODES = 8_000_000  # codes buffered across all merged files (64 MB, ≈ 3× that with the merge's sort)
READ_CODES = 4_000_000  # codes a consumer reads at a time (32 MB)
_LOW = (1 << 31) - 1
PAIRS, RUNS = "pairs.i64", "runs"  # in a work folder: the merged pairs; the runs' code files before the merge


def distinct(values: np.ndarray) -> np.ndarray:
    """Sorted distinct values of an int array, flattened (as np.unique; numpy 2.4's np.unique took 76 s on
    16.5M int64 codes where a sort takes 3 s)."""
    values = np.sort(values, axis=None)
    return values[np.concatenate([[True], values[1:] != values[:-1]])] if len(values) else values


def encode(i: np.ndarray, j: np.ndarray) -> np.ndarray:
    return np.asarray(i, dtype=np.int64) << 31 | np.asarray(j, dtype=np.int64)


def decode(codes: np.ndarray) -> np.ndarray:
    return np.stack([codes >> 31, codes & _LOW], axis=1)


def band_codes(band: np.ndarray, key: np.ndarray, row: np.ndarray, which: int) -> np.ndarray:
    """Sorted codes of band `which`'s pairs: in every key bucket, members in row order, each paired with the
    next dedup.LSH_MAX_OFFSET members, as dedup.lsh_candidates pairs them. A row has one key per band, so a
    band's pairs are already distinct."""
    at = band == which
    key, row = key[at], row[at]
    if len(row) > 1 and (np.diff(row) > 0).all():  # as the band files are written: a stable sort by key suffices
        order = np.argsort(key, kind="stable")
    else:
        order = np.lexsort((row, key))
    key, row = key[order], row[order]
    del order
    group = np.cumsum(np.concatenate([[True], key[1:] != key[:-1]]))
    del key
    out = [np.zeros(0, dtype=np.int64)]
    for d in range(1, dedup.LSH_MAX_OFFSET + 1):
        same = group[d:] == group[:-d]
        if not same.any():
            break
        out.append(encode(row[:-d][same], row[d:][same]))
    return np.sort(np.concatenate(out))


def write_run(files: list[str], first: int, last: int, path: Path, on_band: Callable[[int], None] | None = None
              ) -> int:
    """The distinct sorted codes of bands first..last (one read of their row groups) written to `path`
    (atomic); on_band(band) after each band is paired. Returns how many codes."""
    band, key, row = band_rows(files, first, last)
    parts = []
    for b in range(first, last + 1):
        parts.append(band_codes(band, key, row, b))
        if on_band:
            on_band(b)
    del band, key, row
    codes = parts[0] if len(parts) == 1 else distinct(np.concatenate(parts))
    del parts
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    codes.astype("<i8", copy=False).tofile(tmp)
    tmp.replace(path)
    return len(codes)


def band_rows(files: list[str], first: int, last: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(band, key, row) of bands first..last from every band file, row group by row group."""
    import pyarrow.parquet as pq

    parts = {"band": [], "key": [], "row": []}
    for path in files:
        pf = pq.ParquetFile(path)
        at = pf.schema_arrow.get_field_index("band")
        groups = []
        for g in range(pf.metadata.num_row_groups):
            stats = pf.metadata.row_group(g).column(at).statistics
            if stats is None or not stats.has_min_max or (stats.min <= last and stats.max >= first):
                groups.append(g)
        if not groups:
            continue
        table = pf.read_row_groups(groups, columns=["band", "key", "row"])
        band = table["band"].to_numpy()
        keep = (band >= first) & (band <= last)
        for name, values in (("band", band), ("key", table["key"].to_numpy()), ("row", table["row"].to_numpy())):
            parts[name].append(values[keep])
    empty = {"band": np.int16, "key": np.uint64, "row": np.int64}
    return tuple(np.concatenate(parts[c]) if parts[c] else np.zeros(0, empty[c]) for c in ("band", "key", "row"))


def count(path: Path) -> int:
    return os.path.getsize(path) // 8


def read_chunks(path: Path, chunk: int | None = None) -> Iterator[np.ndarray]:
    chunk = chunk or READ_CODES
    with open(path, "rb") as f:
        while len(codes := np.fromfile(f, dtype="<i8", count=chunk)):
            yield codes


def merge(paths: list[Path], out: Path, memory_codes: int | None = None,
          on_chunk: Callable[[int], None] | None = None) -> int:
    """K-way merge of sorted code files into `out` (atomic), each code once; at most ≈ memory_codes codes
    buffered. Each round takes, from every buffer, the codes up to the smallest last code among the buffers
    of files not yet at their end: nothing later in any file can be below it, so rounds never overlap.
    on_chunk(codes read) after each round. Returns how many distinct codes."""
    chunk = max(1, (memory_codes or MERGE_CODES) // max(1, len(paths)))
    handles = [open(p, "rb") for p in paths]
    tmp = out.with_name(f".{out.name}.{os.getpid()}.tmp")
    written = 0
    try:
        bufs = [np.fromfile(f, dtype="<i8", count=chunk) for f in handles]
        ended = [len(b) < chunk for b in bufs]
        with open(tmp, "wb") as sink:
            while any(len(b) for b in bufs):
                open_lasts = [b[-1] for b, e in zip(bufs, ended) if not e and len(b)]
                cut = min(open_lasts) if open_lasts else np.iinfo(np.int64).max
                taken, read = [], 0
                for k, b in enumerate(bufs):
                    at = int(np.searchsorted(b, cut, side="right"))
                    taken.append(b[:at])
                    read += at
                    bufs[k] = b[at:]
                    if not ended[k] and len(bufs[k]) <= chunk // 2:  # never empty while its file has more
                        more = np.fromfile(handles[k], dtype="<i8", count=chunk)
                        ended[k] = len(more) < chunk
                        bufs[k] = np.concatenate([bufs[k], more])
                codes = distinct(np.concatenate(taken))
                del taken
                codes.astype("<i8", copy=False).tofile(sink)
                written += len(codes)
                if on_chunk:
                    on_chunk(read)
        tmp.replace(out)
    finally:
        for f in handles:
            f.close()
        tmp.unlink(missing_ok=True)
    return written


def band_runs(bands: int, rows: int) -> list[tuple[int, int]]:
    """(first, last) band of each run: as many bands as make ≈ BAND_ROWS keys (one band at least)."""
    run = max(1, min(bands, BAND_ROWS // max(1, rows))) if bands else 1
    return [(lo, min(bands, lo + run) - 1) for lo in range(0, bands, run)]


def run_paths(work: Path, runs: list[tuple[int, int]]) -> list[Path]:
    (work / RUNS).mkdir(exist_ok=True)
    return [work / RUNS / f"run-{lo:03d}-{hi:03d}.i64" for lo, hi in runs]


def plan_runs(work: Path, near_base: float, rows: int, progress) -> tuple[list[str], list[Path], list[tuple]]:
    """What the candidates pass of `work` does (either engine): (its band files, every run's code file, the
    runs still to write as (first band, last band, file)). A run file is written atomically, so a killed pass
    redoes only the missing runs. Starts `progress` in bands, those of the written runs counted as done."""
    from core.data import passes

    files = sorted(str(p) for p in (work / passes.BANDS).glob("piece-*.parquet"))
    bands = passes.band_plan(near_base)[0] if files else 0
    runs = band_runs(bands, rows)
    paths = run_paths(work, runs)
    todo = [(lo, hi, path) for (lo, hi), path in zip(runs, paths) if not path.exists()]
    progress.start("candidates", bands, already=bands - sum(hi - lo + 1 for lo, hi, _ in todo), unit="bands")
    return files, paths, todo


def merge_runs(work: Path, paths: list[Path], progress) -> int:
    """The run files merged into work/PAIRS (distinct, sorted) with progress (a core.data.progress.Progress)
    in codes read; the run files go. Returns how many pairs."""
    progress.start("merge pairs", sum(count(p) for p in paths), unit="pairs")
    total = merge(paths, work / PAIRS, on_chunk=progress.advance)
    progress.done()
    shutil.rmtree(work / RUNS, ignore_errors=True)
    return total
