"""Immutable dataset versions: the unit that Data, Augment, Train and Evaluate hand to each other.

    IRIS_HOME/datasets/<name>/
      train.parquet     canonical rows: `messages` = [{"role": "system"|"user"|"assistant", "content": str}, ...]
                        plus every other column the source had (FineTome's `source`, `score`, an `origin`, ...)
      eval.parquet      optional held-out split
      recipe.yaml       how it was made (the filter or augmentation recipe, or the import source)
      manifest.json     lineage: parent, row counts per step, content hash, created time, split

A version is written under a temporary name and renamed into place, so a failed save leaves
nothing; an existing version is never overwritten.
"""
from __future__ import annotations

import hashlib
import json
import time
from pathlib import Path
from typing import Any

import yaml

from core.errors import IrisError
from core.paths import atomic_dir, check_name, datasets_dir, listed, read_json

TRAIN, EVAL, RECIPE, MANIFEST = "train.parquet", "eval.parquet", "recipe.yaml", "manifest.json"


def version_dir(name: str) -> Path:
    return datasets_dir() / check_name(name, "dataset version name")


def list_versions() -> list[dict]:
    """Manifests of all saved versions, newest first."""
    out = []
    for folder in listed(datasets_dir()):
        manifest = read_json(folder / MANIFEST)
        if manifest and (folder / TRAIN).exists():
            out.append(manifest)
    return out


def exists(name: str) -> bool:
    return (version_dir(name) / TRAIN).exists()


def load_manifest(name: str) -> dict:
    folder = version_dir(name)
    manifest = read_json(folder / MANIFEST)
    if not manifest or not (folder / TRAIN).exists():
        raise IrisError(f"dataset version {name!r} does not exist (anymore) in {datasets_dir()}: "
                        "pick one of the saved versions on the Data page.")
    return manifest


def load(name: str, split: str = "train") -> "pandas.DataFrame":  # noqa: F821
    """Rows of a version's split ('train' or 'eval') as a DataFrame."""
    import pandas as pd

    load_manifest(name)
    path = version_dir(name) / (TRAIN if split == "train" else EVAL)
    if not path.exists():
        raise IrisError(f"dataset version {name!r} has no {split} split: save it with an eval split.")
    return pd.read_parquet(path)


def load_recipe(name: str) -> Any:
    path = version_dir(name) / RECIPE
    return yaml.safe_load(path.read_text(encoding="utf-8")) if path.exists() else None


def content_hash(df) -> str:
    """sha256 over the rows' canonical JSON, in order: same rows + same order → same hash."""
    h = hashlib.sha256()
    hash_rows(h, df)
    return h.hexdigest()


def hash_rows(h, df) -> None:
    """Feed `df`'s rows into the sha256 `h`: chunk after chunk gives the whole frame's content_hash."""
    cols = sorted(df.columns)
    for row in df[cols].itertuples(index=False):
        h.update(json.dumps([_plain(v) for v in row], sort_keys=True, ensure_ascii=False, default=str).encode())
        h.update(b"\n")


def _plain(value: Any) -> Any:
    """numpy arrays / pyarrow structs → plain lists and dicts, so hashing and JSON are stable."""
    if hasattr(value, "tolist"):
        value = value.tolist()
    if isinstance(value, list):
        return [_plain(v) for v in value]
    if isinstance(value, dict):
        return {k: _plain(v) for k, v in value.items()}
    if isinstance(value, float) and value != value:  # NaN
        return None
    return value


def to_records(df) -> list[dict]:
    """DataFrame rows as plain Python dicts (messages as lists of dicts)."""
    return [{k: _plain(v) for k, v in row.items()} for row in df.to_dict(orient="records")]


def save(name: str, train, *, eval_df=None, recipe: Any = None, kind: str = "import",
         parent: dict | None = None, steps: list[dict] | None = None, extra: dict | None = None) -> dict:
    """Write a new immutable version atomically and return its manifest.

    `parent` says where the rows came from ({"source": "mlabonne/FineTome-100k"} or {"version": "x"}),
    `steps` the rows kept/dropped per recipe step.
    """
    folder = version_dir(name)
    if folder.exists():
        raise IrisError(f"dataset version {name!r} already exists (versions are immutable): choose another name.")
    if "messages" not in train.columns:
        raise IrisError("rows must be normalised to the canonical `messages` shape before saving.")
    if len(train) == 0:
        raise IrisError(f"dataset version {name!r} would be empty: loosen the recipe.")
    manifest = manifest_for(name, kind, parent, int(len(train)), int(len(eval_df)) if eval_df is not None else 0,
                            list(train.columns), steps, content_hash(train if eval_df is None else _concat(train, eval_df)),
                            extra)
    with atomic_dir(folder, what=f"dataset version {name!r}") as tmp:
        train.to_parquet(tmp / TRAIN, index=False)
        if eval_df is not None and len(eval_df):
            eval_df.to_parquet(tmp / EVAL, index=False)
        (tmp / RECIPE).write_text(yaml.safe_dump(_plain(recipe), sort_keys=False, allow_unicode=True)
                                  if not isinstance(recipe, str) else recipe, encoding="utf-8")
        (tmp / MANIFEST).write_text(json.dumps(manifest, indent=2, default=str), encoding="utf-8")
    return manifest


def manifest_for(name: str, kind: str, parent: dict | None, train_rows: int, eval_rows: int, columns: list[str],
                 steps: list[dict] | None, digest: str, extra: dict | None = None) -> dict:
    """The manifest.json every version has (`save` and the sharded writer of core.data.engine_duckdb)."""
    return {"name": name, "kind": kind, "created": time.strftime("%Y-%m-%dT%H:%M:%S%z"), "created_ts": time.time(),
            "parent": parent or {}, "rows": {"train": train_rows, "eval": eval_rows}, "columns": columns,
            "steps": steps or [], "content_hash": digest, **(extra or {})}


def _concat(a, b):
    import pandas as pd

    return pd.concat([a, b], ignore_index=True)


def split(df, eval_fraction: float, seed: int = 0, stratify: str | None = None):
    """Deterministic train/eval split; `stratify` keeps each group's share (e.g. by `origin`)."""
    import numpy as np

    if not 0 < eval_fraction < 1:
        raise IrisError(f"eval fraction must be between 0 and 1, got {eval_fraction}.")
    rng = np.random.default_rng(seed)
    eval_idx: list[int] = []
    groups = df.groupby(stratify).indices.values() if stratify and stratify in df.columns else [np.arange(len(df))]
    for idx in groups:
        idx = np.array(idx)
        n = int(round(len(idx) * eval_fraction))
        if n:
            eval_idx.extend(rng.choice(idx, size=n, replace=False).tolist())
    mask = np.zeros(len(df), dtype=bool)
    mask[eval_idx] = True
    return df[~mask].reset_index(drop=True), df[mask].reset_index(drop=True)


def table_rows() -> list[dict]:
    """One row per saved version for pages: name, kind, rows, eval rows, parent and when it was made."""
    return [{"version": v["name"], "kind": v["kind"], "rows": v["rows"]["train"], "eval": v["rows"]["eval"],
             "parent": v["parent"].get("version") or v["parent"].get("source"), "created": v["created"]}
            for v in list_versions()]
