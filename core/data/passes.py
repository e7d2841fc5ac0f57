"""The per-piece work of the out-of-core recipe: what a worker (a local process or a Ray task) does to one
bounded piece of rows. Every function takes and returns plain data, so any engine can run it anywhere.

    measure_piece(task)  -> {"offset", "rows"}   per-row measurements (the in-memory path's own functions),
                            a 128-bit key of the exact-dedup text (dedup.exact_keys), the rows' MinHash
                            signatures and LSH band keys, all from one read of each row's text, written to
                            WORK/measure/, WORK/sigs/ (.npy) and WORK/bands/ as piece-<offset> (atomic: a
                            killed worker leaves no half file, so a re-run redoes only the pieces without one)
    verify_piece(task)   -> {"offset", "rows"}   word-5-gram sets of the rows of a piece left after the
                            signature checks, written to WORK/verify/piece-<offset>.npz

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
from core.data.formats import as_lists, conversation_text
from core.data.shards import Piece, piece_frame, read_piece

MEASURE, BANDS, SIGS, VERIFY, WRITE = "measure", "bands", "sigs", "verify", "write"


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


def _write(table, path: Path, **parquet) -> None:
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    table.to_parquet(tmp, index=False, **parquet)
    tmp.replace(path)


def _save(array: np.ndarray, path: Path) -> None:
    tmp = path.with_name(f".{path.stem}.{os.getpid()}.tmp.npy")
    np.save(tmp, array)
    tmp.replace(path)


def measure_piece(task: dict) -> dict:
    """Measure one piece and write its tables; returns its offset and row count."""
    import pandas as pd

    piece, work = Piece(**task["piece"]), Path(task["work"])
    df = piece_frame(piece, ["messages"])
    rows = piece.offset + np.arange(len(df), dtype=np.int64)
    sigs = [] if task.get("near_base") is not None else None
    out = measure.text_measurements(df, None, sigs, keys=True)  # one pass over each row's text
    if task.get("tokenizer"):
        toks = measure.token_measurements(df, task["tokenizer"], threads=1)
        out = pd.concat([out, toks], axis=1)
    if task.get("edu") is not None:
        from core.data import edu

        out["edu_score"] = edu.edu_scores(df, task["edu"].get("prototypes"), task["edu"].get("counter_prototypes"))
    out.insert(0, "row", rows)
    if sigs is not None:  # the signatures themselves for verify's checks (2 KiB a row), then the band keys
        _save(sigs[0], work / SIGS / f"piece-{piece.offset:012d}.npy")
        keys = band_keys(sigs[0], rows, task["near_base"])
        per_band = max(1, len(keys) // band_plan(task["near_base"], sigs[0].shape[1])[0])
        # one Parquet row group per band (their min/max statistics let band_pairs read only its bands)
        _write(keys, work / BANDS / piece_name(piece.offset), row_group_size=per_band)
    _write(out, work / MEASURE / piece_name(piece.offset))  # last: its presence means the piece is done
    return {"offset": piece.offset, "rows": len(df)}


def verify_piece(task: dict) -> dict:
    """Sorted word-5-gram sets of task["rows"] (global rows) of one piece, the rows left after the signature
    checks, written to WORK/verify/piece-<offset>.npz (rows, set_values, set_offsets); returns offset and
    row count."""
    import pyarrow as pa

    piece, work = Piece(**task["piece"]), Path(task["work"])
    rows = np.asarray(task["rows"], dtype=np.int64)
    # only the rows asked for become Python objects (a few % of the piece): Arrow takes them first
    table = read_piece(piece, ["messages"]).take(pa.array(rows - piece.offset))
    texts = [conversation_text(m) for m in as_lists(table.to_pandas())["messages"]]
    sets = dedup.shingle_sets(texts, np.arange(len(texts)))
    values = [sets[k] for k in range(len(texts))]
    offsets = np.concatenate([[0], np.cumsum([len(v) for v in values])]).astype(np.int64)
    path = work / VERIFY / f"piece-{piece.offset:012d}.npz"
    tmp = path.with_name(f".{path.stem}.{os.getpid()}.tmp.npz")
    np.savez(tmp, rows=rows, set_values=np.concatenate([np.zeros(0, np.uint64)] + values), set_offsets=offsets)
    tmp.replace(path)
    return {"offset": piece.offset, "rows": len(rows)}


def row_lines(table) -> bytes:
    """The bytes versions.hash_rows feeds its sha256 for `table`'s rows (as pandas reads them), taken straight
    from Arrow when every column's type reads back the same either way (strings, bools, whole numbers
    without nulls, floats with NaN as null, lists of structs of strings: FineTome's shape); through pandas
    otherwise. ≈ 2× faster than to_pandas + hash_rows (tests/test_data_scale.py pins equal bytes)."""
    import json

    if not _same_through_pandas(table):
        lines = _Lines()
        from core import versions

        versions.hash_rows(lines, table.to_pandas())
        return b"".join(lines.parts)
    import pyarrow.types as pt

    columns = []
    for name in sorted(table.column_names):
        values = table.column(name).to_pylist()
        if pt.is_floating(table.schema.field(name).type):  # hash_rows writes NaN as null
            values = [None if v != v else v for v in values]
        columns.append(values)
    dumps = json.JSONEncoder(sort_keys=True, ensure_ascii=False, default=str).encode
    return b"".join((dumps(list(row)) + "\n").encode() for row in zip(*columns))


def _same_through_pandas(table) -> bool:
    import pyarrow.types as pt

    meta = table.schema.pandas_metadata or {}
    if any(isinstance(c, str) for c in meta.get("index_columns", [])):  # a stored index: pandas drops the column
        return False

    def strings(t) -> bool:
        return pt.is_string(t) or pt.is_large_string(t)

    for field in table.schema:
        t = field.type
        if strings(t) or pt.is_boolean(t) or pt.is_floating(t) or pt.is_null(t):
            continue
        if pt.is_integer(t) and table.column(field.name).null_count == 0:  # with nulls pandas makes them floats
            continue
        if (pt.is_list(t) or pt.is_large_list(t)) and (strings(t.value_type) or (
                pt.is_struct(t.value_type) and all(strings(f.type) for f in t.value_type))):
            continue
        return False
    return True


class _Lines:
    """Collects what versions.hash_rows feeds its sha256, so a worker can serialise its rows and the parent
    only hashes the bytes, in row order."""

    def __init__(self):
        self.parts: list[bytes] = []

    def update(self, data: bytes) -> None:
        self.parts.append(data)


def write_piece(task: dict) -> dict:
    """Pass 5 for one piece: its kept rows (task["train"] / task["eval"]: rows within the piece, in order)
    written as shard `part-<index>` of out/train.parquet/ and out/eval.parquet/ (cast to task["schema_of"]'s
    schema, so every shard has one schema), and the bytes versions.hash_rows hashes for them written to
    WORK/write/<split>-<offset>.bin for the parent to hash in row order; returns offset and row counts."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    from core.data.shards import GROUP_ROWS

    piece, work, out = Piece(**task["piece"]), Path(task["work"]), Path(task["out"])
    table = read_piece(piece)
    schema = pq.read_schema(task["schema_of"])
    counts = {}
    for split in ("train", "eval"):
        local = np.asarray(task[split], dtype=np.int64)
        counts[split] = len(local)
        if not len(local):
            continue
        rows = table.take(pa.array(local))
        path = work / WRITE / f"{split}-{piece.offset:012d}.bin"
        tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
        tmp.write_bytes(row_lines(rows))
        tmp.replace(path)
        folder = out / f"{split}.parquet"
        folder.mkdir(parents=True, exist_ok=True)
        if rows.schema != schema:  # e.g. a piece whose `score` is all null: same columns, cast
            rows = rows.cast(schema)
        pq.write_table(rows, folder / f"part-{task['index']:05d}.parquet", row_group_size=GROUP_ROWS)
    return {"offset": piece.offset, "rows": piece.rows, "train": counts["train"], "eval": counts["eval"],
            "columns": table.column_names}
