"""Rows as sharded Parquet: a version's split is one file or a folder of shards, read in bounded pieces.

    IRIS_HOME/datasets/<version>/train.parquet              a small version: one file (core.versions.save)
    IRIS_HOME/datasets/<version>/train.parquet/part-00000.parquet, part-00001.parquet, ...
                                                            a big one: shards of SHARD_ROWS rows, row groups
                                                            of GROUP_ROWS; pandas/pyarrow/DuckDB read the
                                                            folder as one table (shards in name order)

    split_files(folder, "train") -> [Path]      the files of a split, in row order
    pieces(files, chunk_rows) -> [Piece]        bounded units of work: (file, first row in file, rows, global row)
    read_piece(piece, columns) -> pyarrow.Table only the row groups a piece covers; a file that fails to parse
                                                mid-way is an IrisError naming the file and the rows
    ShardWriter(folder)                         appends tables as shards (the write pass of the out-of-core engines)
    inmemory_rows()                             up to this many rows the Data page loads a version into memory
                                                (IRIS_INMEMORY_ROWS, default 200,000); above it, it queries shards
"""
from __future__ import annotations

import functools
import os
from dataclasses import dataclass
from pathlib import Path

from core.errors import IrisError

SHARD_ROWS = 100_000  # rows per shard file: ≈ 150 MB of FineTome-shaped text, a few seconds to scan
GROUP_ROWS = 10_000  # rows per Parquet row group: the smallest unit a piece reads
CHUNK_ROWS = 10_000  # rows per piece of work: ≈ 300 MB of Python objects while it is measured


def inmemory_rows() -> int:
    """Versions up to this many rows are loaded whole by the Data page; bigger ones are queried on disk."""
    return int(os.environ.get("IRIS_INMEMORY_ROWS", "200000"))


def split_files(folder: Path, split: str = "train") -> list[Path]:
    """The Parquet files of a version's split (`train` or `eval`), in row order; [] when there is none."""
    path = Path(folder) / f"{split}.parquet"
    if path.is_dir():
        return sorted(path.glob("part-*.parquet"))
    return [path] if path.exists() else []


@dataclass(frozen=True)
class Piece:
    file: str
    """The Parquet file the rows are in."""
    start: int
    """First row of the piece within that file."""
    rows: int
    """How many rows."""
    offset: int
    """Global row number of the piece's first row (files concatenated in order)."""


def file_rows(path: Path) -> int:
    """Rows in a Parquet file, from its footer; remembered per (path, modification time, size), since the
    Data page asks for every shard's count on every rerun (a filtered 2M-row version has ≈ 200 shards)."""
    try:
        stat = os.stat(path)
    except OSError as err:
        raise IrisError(f"{path} is not a readable Parquet file ({err}); restore it or re-import the version.") from None
    return _footer_rows(str(path), stat.st_mtime_ns, stat.st_size)


@functools.lru_cache(maxsize=4096)
def _footer_rows(path: str, mtime_ns: int, size: int) -> int:
    import pyarrow.parquet as pq

    try:
        return pq.ParquetFile(path).metadata.num_rows
    except Exception as err:
        raise IrisError(f"{path} is not a readable Parquet file ({err}); restore it or re-import the version.") from None


def pieces(files: list[Path], chunk_rows: int = CHUNK_ROWS) -> list[Piece]:
    """Pieces of at most `chunk_rows` rows that never cross a file (results never depend on where they cut)."""
    out, offset = [], 0
    for path in files:
        n = file_rows(path)
        out += [Piece(str(path), s, min(chunk_rows, n - s), offset + s) for s in range(0, n, chunk_rows)]
        offset += n
    return out


def read_piece(piece: Piece, columns: list[str] | None = None):
    """The piece's rows as a pyarrow Table, reading only the row groups it covers."""
    import pyarrow.parquet as pq

    try:
        pf = pq.ParquetFile(piece.file)
        groups, first, row = [], None, 0
        for g in range(pf.metadata.num_row_groups):
            n = pf.metadata.row_group(g).num_rows
            if row + n > piece.start and row < piece.start + piece.rows:
                groups.append(g)
                first = row if first is None else first
            row += n
        if piece.rows <= FEW_ROWS:  # a page or one row: decode batches up to it, not its whole row groups
            return _read_few(pf, groups, piece.start - (first or 0), piece.rows, columns)
        table = pf.read_row_groups(groups, columns=columns)
        return table.slice(piece.start - (first or 0), piece.rows)
    except IrisError:
        raise
    except Exception as err:
        raise IrisError(f"{Path(piece.file).name} failed to parse at rows {piece.start}–{piece.start + piece.rows - 1} "
                        f"of that file (dataset rows from {piece.offset}): {str(err)[:200]}. Nothing was saved; "
                        "restore the file or re-import the version.") from None


FEW_ROWS = 1000  # pieces up to this many rows (the Data page's page, an opened row) are read batch by batch
FEW_BATCH = 256  # rows a batch: page 1 decodes ≈ 256 rows instead of its 10k-row group (≈ 0.15 CPU s)


def _read_few(pf, groups: list[int], skip: int, rows: int, columns: list[str] | None):
    """Rows [skip, skip + rows) of row groups `groups`, decoding batches only until they are covered."""
    import pyarrow as pa

    parts, seen = [], 0
    for batch in pf.iter_batches(batch_size=FEW_BATCH, row_groups=groups, columns=columns):
        if seen + batch.num_rows > skip:
            parts.append(batch)
        seen += batch.num_rows
        if seen >= skip + rows:
            break
    first = seen - sum(b.num_rows for b in parts)
    table = pa.Table.from_batches(parts, schema=pf.schema_arrow if columns is None else None) if parts else \
        pf.read_row_groups([], columns=columns)
    return table.slice(skip - first, rows)


def piece_frame(piece: Piece, columns: list[str] | None = None):
    """The piece as a pandas DataFrame with `messages` as plain lists of dicts."""
    from core.data.formats import as_lists

    return as_lists(read_piece(piece, columns).to_pandas())


class ShardWriter:
    """Writes tables into `folder/part-NNNNN.parquet`, a new shard every `shard_rows` rows."""

    def __init__(self, folder: Path, shard_rows: int = SHARD_ROWS):
        self.folder, self.shard_rows = Path(folder), shard_rows
        self.folder.mkdir(parents=True, exist_ok=True)
        self.writer, self.in_shard, self.shards, self.rows, self.schema = None, 0, 0, 0, None

    def write(self, table) -> None:
        import pyarrow.parquet as pq

        if self.schema is None:
            self.schema = table.schema
        elif table.schema != self.schema:  # e.g. a piece whose `score` is all null: same columns, cast
            table = table.cast(self.schema)
        while table.num_rows:
            if self.writer is None:
                self.writer = pq.ParquetWriter(self.folder / f"part-{self.shards:05d}.parquet", self.schema)
                self.shards += 1
            take = min(table.num_rows, self.shard_rows - self.in_shard)
            self.writer.write_table(table.slice(0, take), row_group_size=GROUP_ROWS)
            self.in_shard += take
            self.rows += take
            table = table.slice(take)
            if self.in_shard == self.shard_rows:
                self.close()

    def close(self) -> None:
        if self.writer is not None:
            self.writer.close()
        self.writer, self.in_shard = None, 0


def check_disk(folder: Path, need_bytes: int, what: str) -> None:
    """Refuse before starting when `folder`'s disk has less than `need_bytes` free."""
    from core.paths import free_disk_bytes

    free = free_disk_bytes(folder)
    if free < need_bytes:
        raise IrisError(f"{what} needs about {need_bytes / 2**30:.1f} GiB free on {folder}, but only "
                        f"{free / 2**30:.1f} GiB is left: free some space or set IRIS_HOME to a bigger disk.")


def split_bytes(files: list[Path]) -> int:
    return sum(Path(f).stat().st_size for f in files)
