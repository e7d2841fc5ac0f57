"""The Data page's view of a version too big to load: DuckDB queries over its Parquet shards.

    is_big(version) -> bool                    more rows than IRIS_INMEMORY_ROWS (core.data.shards)
    browse(version, page, query, regex) -> (table, matches)   one page of rows (row, first question, turns,
                                               source, score), after a substring (case-insensitive) or
                                               regex search over the conversation text
    open_row(version, row) -> messages         one conversation
    stats_figures(version) -> {title: figure}  turns, characters, sources, scores: aggregates, never the rows

Nothing here holds more than one page of rows in memory: the app stays small whatever the version's size.
"""
from __future__ import annotations

from pathlib import Path

import numpy as np

from core import versions
from core.data import shards

PAGE_SIZE = 50
TEXT = "array_to_string(list_transform(messages, lambda m: m.content), chr(10) || chr(10))"


def is_big(version: str) -> bool:
    try:
        rows = versions.load_manifest(version).get("rows", {})
    except Exception:
        return False
    return int(rows.get("train", 0)) + int(rows.get("eval", 0)) > shards.inmemory_rows()


def _rows_sql(version: str) -> tuple[str, list]:
    """A SQL relation of every row (train then eval) with its global row number `row`."""
    folder = versions.version_dir(version)
    files = shards.split_files(folder, "train") + shards.split_files(folder, "eval")
    offsets, at = [], 0
    for f in files:
        offsets.append((str(f), at))
        at += shards.file_rows(f)
    starts = " UNION ALL ".join(f"SELECT ? AS filename, {o}::BIGINT AS start" for _, o in offsets)
    sql = (f"(SELECT r.* EXCLUDE (filename, file_row_number), o.start + r.file_row_number AS row "
           f"FROM read_parquet(?, filename = true, file_row_number = true) r JOIN ({starts}) o USING (filename))")
    return sql, [[str(f) for f in files]] + [f for f, _ in offsets]


def _connect():
    import duckdb

    return duckdb.connect()


def browse(version: str, page: int = 1, query: str = "", regex: bool = False):
    """(one page of rows as a DataFrame, how many rows match). Without a query only the page's row
    groups are read; a search scans the text of every row (DuckDB, both cores)."""
    if not query.strip():
        return _plain_page(version, page)
    rows, params = _rows_sql(version)
    where, args = "", []
    if query.strip():
        where = f"WHERE regexp_matches({TEXT}, ?)" if regex else f"WHERE contains(lower({TEXT}), ?)"
        args = [query if regex else query.strip().lower()]
    con = _connect()
    try:
        matches = con.execute(f"SELECT count(*) FROM {rows} {where}", params + args).fetchone()[0]
        cols = con.execute(f"SELECT * FROM {rows} LIMIT 0", params).df().columns
        extra = ", ".join(c for c in ("source", "score", "origin") if c in cols)
        table = con.execute(
            f"""SELECT row, coalesce(list_filter(messages, lambda m: m.role = 'user')[1].content[:140], '') AS "first question",
                len(messages) AS turns{', ' + extra if extra else ''}
                FROM {rows} {where} ORDER BY row LIMIT {PAGE_SIZE} OFFSET {(max(1, page) - 1) * PAGE_SIZE}""",
            params + args).df()
    except Exception as err:
        from core.errors import IrisError

        raise IrisError(f"could not search {version}: {str(err).splitlines()[0][:200]}") from None
    finally:
        con.close()
    return table, int(matches)


def _plain_page(version: str, page: int):
    """Rows [(page-1)·PAGE_SIZE, page·PAGE_SIZE) straight from the row groups that hold them; the shards
    before the page give only their footers' row counts, the ones after it are not opened."""
    import pandas as pd

    folder = versions.version_dir(version)
    lo, at, parts = (max(1, page) - 1) * PAGE_SIZE, 0, []
    for path in shards.split_files(folder, "train") + shards.split_files(folder, "eval"):
        if at >= lo + PAGE_SIZE:  # past the page: the shards after it are not opened
            break
        n = shards.file_rows(path)
        start, stop = max(lo, at), min(lo + PAGE_SIZE, at + n)  # the page's rows in this file, if any
        if stop > start:
            frame = shards.piece_frame(shards.Piece(str(path), start - at, stop - start, start))
            frame.insert(0, "row", start + np.arange(len(frame)))
            parts.append(frame)
        at += n
    rows = versions.load_manifest(version)["rows"]
    total = int(rows.get("train", 0)) + int(rows.get("eval", 0))
    frame = pd.concat(parts, ignore_index=True) if parts else pd.DataFrame({"row": [], "messages": []})
    table = pd.DataFrame({"row": frame["row"].to_numpy(),
                          "first question": [next((m["content"][:140] for m in msgs if m["role"] == "user"), "")
                                             for msgs in frame["messages"]],
                          "turns": [len(m) for m in frame["messages"]]})
    for col in ("source", "score", "origin"):
        if col in frame:
            table[col] = frame[col].to_numpy()
    return table, total


def open_row(version: str, row: int) -> list[dict]:
    """One conversation, read from the one row group that holds it (never a scan: 2M rows open as fast as 3k)."""
    folder = versions.version_dir(version)
    at = 0
    for path in shards.split_files(folder, "train") + shards.split_files(folder, "eval"):
        n = shards.file_rows(path)
        if 0 <= row - at < n:
            frame = shards.piece_frame(shards.Piece(str(path), int(row) - at, 1, int(row)), ["messages"])
            return [dict(m) for m in frame["messages"].iat[0]]
        at += n
    return []


def stats_figures(version: str) -> dict:
    import plotly.express as px

    rows, params = _rows_sql(version)
    con = _connect()
    figs = {}
    try:
        turns = con.execute(f"SELECT len(messages) AS turns, count(*) AS rows FROM {rows} GROUP BY 1 ORDER BY 1",
                            params).df()
        figs["Turns per conversation"] = px.bar(turns, x="turns", y="rows")
        chars = con.execute(f"""SELECT floor(log10(greatest(1, length({TEXT}))) * 10) / 10 AS log10_chars,
            count(*) AS rows FROM {rows} GROUP BY 1 ORDER BY 1""", params).df()
        figs["Characters per conversation (log10)"] = px.bar(chars, x="log10_chars", y="rows")
        cols = con.execute(f"SELECT * FROM {rows} LIMIT 0", params).df().columns
        if "source" in cols:
            src = con.execute(f"SELECT source, count(*) AS rows FROM {rows} GROUP BY 1 ORDER BY 2 DESC LIMIT 30",
                              params).df()
            figs["Sources"] = px.bar(src, x="rows", y="source", orientation="h")
        if "score" in cols:
            score = con.execute(f"SELECT round(score, 1) AS score, count(*) AS rows FROM {rows} GROUP BY 1 ORDER BY 1",
                                params).df()
            figs["Score"] = px.bar(score, x="score", y="rows")
    finally:
        con.close()
    for fig in figs.values():
        fig.update_layout(height=300, margin=dict(l=10, r=10, t=10, b=10))
    return figs


def version_path(version: str) -> Path:
    return versions.version_dir(version)
