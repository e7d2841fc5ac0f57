"""Importing a file bigger than memory: read it in blocks, normalise each, write the version as shards.

    import_big(path, name, keep_broken_roles=False, block_rows=CHUNK_ROWS) -> Path

.parquet files are read row group by row group, .jsonl/.ndjson files line by line; every block goes through
the same normalisation as a small import (core.data.formats.normalise), and the version's content hash is
fed block by block. An error names the file and the row (or line); the version is written under a
temporary name and renamed at the end, so a file that breaks mid-way leaves nothing behind.
`python -m core.data import FILE --name NAME` takes this path for parquet files over IRIS_INMEMORY_ROWS
rows, and for any .parquet/.jsonl with `--engine duckdb` (which also lifts IRIS_MAX_UPLOAD_MB).
"""
from __future__ import annotations

import hashlib
import json
import re
from pathlib import Path
from typing import Iterator

from core import versions
from core.data import shards
from core.errors import IrisError
from core.paths import atomic_dir, write_json


def is_big_file(path: Path) -> bool:
    """Too big for the in-memory import: a parquet over IRIS_INMEMORY_ROWS rows. (A JSONL over IRIS_MAX_UPLOAD_MB
    is still refused unless `--engine duckdb` asks for the streamed import: the limit is the user's choice.)"""
    path = Path(path)
    return path.suffix.lower() == ".parquet" and path.exists() and shards.file_rows(path) > shards.inmemory_rows()


def _blocks(path: Path, block_rows: int) -> Iterator[tuple[int, "pandas.DataFrame"]]:  # noqa: F821
    """(first row, raw rows) blocks of a parquet or JSONL file."""
    import pandas as pd

    if path.suffix.lower() == ".parquet":
        import pyarrow.parquet as pq

        row = 0
        try:
            for batch in pq.ParquetFile(path).iter_batches(batch_size=block_rows):
                yield row, batch.to_pandas()
                row += batch.num_rows
        except Exception as err:
            raise IrisError(f"{path.name} failed to parse after row {row}: {str(err)[:200]}. Nothing was saved.") from None
        return
    if path.suffix.lower() not in (".jsonl", ".ndjson"):
        raise IrisError(f"{path.name}: a big import reads .parquet or .jsonl files; convert it to one of those.")
    rows, first, number = [], 0, 0
    with open(path, "rb") as f:
        for number, raw in enumerate(f, start=1):
            if not raw.strip():
                continue
            try:
                row = json.loads(raw.decode("utf-8"))
            except (UnicodeDecodeError, json.JSONDecodeError) as err:
                raise IrisError(f"{path.name}: malformed JSON on line {number} ({err}). Fix that line; nothing was "
                                "saved.") from None
            if not isinstance(row, dict):
                raise IrisError(f"{path.name}: line {number} is a JSON {type(row).__name__}, not an object with columns.")
            rows.append(row)
            if len(rows) == block_rows:
                yield first, pd.DataFrame(rows)
                first, rows = first + len(rows), []
    if rows:
        yield first, pd.DataFrame(rows)


def import_big(path: Path, name: str, keep_broken_roles: bool = False, block_rows: int = shards.CHUNK_ROWS) -> Path:
    """Stream `path` into version `name` (train split only), block by block."""
    import pyarrow as pa

    from core.data.formats import normalise

    path = Path(path)
    target = versions.version_dir(name)
    if versions.exists(name):
        raise IrisError(f"dataset version {name!r} already exists (versions are immutable): choose another name.")
    if not path.exists():
        raise IrisError(f"{path} does not exist.")
    shards.check_disk(target.parent, int(path.stat().st_size * 1.2), f"importing {path.name}")
    digest, columns = hashlib.sha256(), None
    with atomic_dir(target) as tmp:
        writer = shards.ShardWriter(tmp / versions.TRAIN)
        for first, raw in _blocks(path, block_rows):
            try:
                df = normalise(raw, keep_broken_roles=keep_broken_roles)
            except IrisError as err:  # formats counts rows within the block: say where in the file
                raise IrisError(f"{path.name}: " + re.sub(r"^row (\d+)", lambda m: f"row {first + int(m.group(1))}",
                                                          str(err))) from None
            columns = columns or list(df.columns)
            writer.write(pa.Table.from_pandas(df, preserve_index=False))
            versions.hash_rows(digest, df)
        writer.close()
        if not writer.rows:
            raise IrisError(f"{path.name} has no rows: pick a file with rows in it.")
        (tmp / versions.RECIPE).write_text(f"source: {path}\nkeep_broken_roles: {keep_broken_roles}\n", encoding="utf-8")
        write_json(tmp / versions.MANIFEST, versions.manifest_for(
            name, "import", {"source": str(path), "split": "train", "revision": None}, writer.rows, 0, columns,
            [{"step": "import", "before": writer.rows, "dropped": 0, "after": writer.rows}], digest.hexdigest(),
            {"split": {"eval_fraction": 0.0, "seed": 0}, "sharded": True}))
    return target
