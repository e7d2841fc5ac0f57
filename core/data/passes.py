"""The per-piece work of the out-of-core recipe: what a worker (a local process or a Ray task) does to one
bounded piece of rows. Every function takes and returns plain data, so any engine can run it anywhere.

    measure_piece(task)  -> {"offset", "rows"}   per-row measurements (the in-memory path's own functions),
                            a 128-bit hash of the exact-dedup text, and the rows' LSH band keys, written to
                            WORK/measure/ and WORK/bands/ as piece-<offset>.parquet (atomic: a killed worker
                            leaves no half file, so a re-run redoes only the pieces without one)
    verify_piece(task)   -> {"offset", "rows"}   signatures and word-5-gram sets of the rows of a piece that
                            are in candidate pairs, written to WORK/verify/piece-<offset>.npz

A task is a dict: piece (core.data.shards.Piece fields), work (folder), tokenizer (None: no length step),
near_base (None: no near_dedup), edu (None or the edu_semantic step's params), rows (verify_piece only).
Results equal the in-memory path's (core.data.measure / dedup) row for row: every measurement is per row,
so where the pieces cut never changes them.
"""
from __future__ import annotations

import os
from pathlib import Path

import numpy as np

from core.data import dedup, measure
from core.data.formats import conversation_text
from core.data.shards import Piece, piece_frame

MEASURE, BANDS, VERIFY = "measure", "bands", "verify"


def piece_name(offset: int) -> str:
    return f"piece-{offset:012d}.parquet"


def band_plan(near_base: float, num_perm: int = 256) -> tuple[int, int]:
    """(bands, rows per band) exactly as dedup.lsh_candidates chooses them for `near_base`."""
    return dedup.lsh_params(max(near_base - 0.1, 0.05), num_perm)


def band_keys(sig: np.ndarray, rows: np.ndarray, near_base: float):
    """(row, band, key) of every row with words, `key` mixed from its band's bins as lsh_candidates does."""
    import pandas as pd

    b, r = band_plan(near_base, sig.shape[1])
    valid = np.flatnonzero(sig[:, 0] != dedup._EMPTY)
    parts = []
    with np.errstate(over="ignore"):
        for band in range(b):
            key = np.zeros(len(valid), dtype=np.uint64)
            for k in range(band * r, (band + 1) * r):
                key = dedup._mix(key ^ sig[valid, k])
            parts.append(pd.DataFrame({"band": np.full(len(valid), band, dtype=np.int16), "key": key,
                                       "row": rows[valid]}))
    return pd.concat(parts, ignore_index=True)


def exact_keys(messages: list[list[dict]]) -> tuple[np.ndarray, np.ndarray]:
    """Two 64-bit halves of xxh3-128 of each row's dedup.normalise_text(conversation text): equal text,
    equal key (a collision between different texts is ≈ n² / 2^129: none in any real dataset)."""
    import xxhash

    digests = [xxhash.xxh3_128_intdigest(dedup.normalise_text(conversation_text(m)).encode("utf-8", "surrogatepass"))
               for m in messages]
    hi = np.fromiter((d >> 64 for d in digests), dtype=np.uint64, count=len(digests))
    lo = np.fromiter((d & ((1 << 64) - 1) for d in digests), dtype=np.uint64, count=len(digests))
    return hi, lo


def _write(table, path: Path) -> None:
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    table.to_parquet(tmp, index=False)
    tmp.replace(path)


def measure_piece(task: dict) -> dict:
    """Measure one piece and write its tables; returns its offset and row count."""
    import pandas as pd

    piece, work = Piece(**task["piece"]), Path(task["work"])
    df = piece_frame(piece, ["messages"])
    msgs = df["messages"].tolist()
    rows = piece.offset + np.arange(len(df), dtype=np.int64)
    sigs = [] if task.get("near_base") is not None else None
    out = measure.text_measurements(df, None, sigs).drop(columns=["exact_cluster"])
    out["exact_hi"], out["exact_lo"] = exact_keys(msgs)
    if task.get("tokenizer"):
        toks = measure.token_measurements(df, task["tokenizer"], threads=1)
        out = pd.concat([out, toks], axis=1)
    if task.get("edu") is not None:
        from core.data import edu

        out["edu_score"] = edu.edu_scores(df, task["edu"].get("prototypes"), task["edu"].get("counter_prototypes"))
    out.insert(0, "row", rows)
    if sigs is not None:
        _write(band_keys(sigs[0], rows, task["near_base"]), work / BANDS / piece_name(piece.offset))
    _write(out, work / MEASURE / piece_name(piece.offset))  # last: its presence means the piece is done
    return {"offset": piece.offset, "rows": len(df)}


def verify_piece(task: dict) -> dict:
    """MinHash signatures and sorted word-5-gram sets of task["rows"] (global rows) of one piece, written to
    WORK/verify/piece-<offset>.npz (rows, sig, set_values, set_offsets); returns offset and row count."""
    piece, work = Piece(**task["piece"]), Path(task["work"])
    rows = np.asarray(task["rows"], dtype=np.int64)
    df = piece_frame(piece, ["messages"])
    msgs = [df["messages"].iat[int(r - piece.offset)] for r in rows]
    sig = measure.word_measurements(msgs, signatures=True, repetition=False)[1]
    sets = dedup.shingle_sets([conversation_text(m) for m in msgs], np.arange(len(msgs)))
    values = [sets[k] for k in range(len(msgs))]
    offsets = np.concatenate([[0], np.cumsum([len(v) for v in values])]).astype(np.int64)
    path = work / VERIFY / f"piece-{piece.offset:012d}.npz"
    tmp = path.with_name(f".{path.stem}.{os.getpid()}.tmp.npz")
    np.savez(tmp, rows=rows, sig=sig, set_values=np.concatenate([np.zeros(0, np.uint64)] + values),
             set_offsets=offsets)
    tmp.replace(path)
    return {"offset": piece.offset, "rows": len(rows)}
