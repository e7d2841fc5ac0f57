"""Saving dataset versions from the Data workflow: import a source, filter a version, with lineage.

Each call writes one immutable version under IRIS_HOME/datasets/NAME (core.versions: train.parquet,
eval.parquet, recipe.yaml, manifest.json with parent, per-step counts and content hash); a name that is
taken is refused before any slow work.
"""
from __future__ import annotations

import sys
from pathlib import Path

from core import versions
from core.data.filters import DataRecipe, FilterResult, apply_recipe
from core.errors import IrisError


def _save(name: str, df, *, eval_fraction: float, seed: int, recipe, kind: str, parent: dict, steps: list[dict],
          extra: dict | None = None) -> Path:
    if versions.exists(name):
        raise IrisError(f"dataset version {name!r} already exists (versions are immutable): choose another name.")
    train, eval_df = (versions.split(df, eval_fraction, seed) if eval_fraction else (df, None))
    versions.save(name, train, eval_df=eval_df, recipe=recipe, kind=kind, parent=parent, steps=steps,
                  extra={**(extra or {}), "split": {"eval_fraction": eval_fraction, "seed": seed}})
    return versions.version_dir(name)


def name_problem(name: str) -> str | None:
    """Why `name` cannot be a new version (taken, or not a valid name), or None: pages check before Save."""
    try:
        versions.version_dir(name)
    except IrisError as err:
        return str(err)
    if versions.exists(name):
        return f"dataset version {name!r} already exists (versions are immutable): choose another name."
    return None


def source_from_link(version: str | None) -> tuple | None:
    """The Data page's source for a `?version=NAME` link (None when there is no such version)."""
    known = version in {v["name"] for v in versions.list_versions()}
    return (f"version:{version}", "train", "", False) if known else None


def parent_of(source: str, split: str = "train", revision: str | None = None) -> dict:
    """The lineage parent a version records for a loaded source (the page and the CLI write the same)."""
    from core.data.formats import SAMPLE_PATH

    label = f"bundled:{SAMPLE_PATH.name}" if source == "sample" else source
    return {"source": label, "split": split, "revision": revision or None}


def load_for_edit(source: str, split: str = "train", revision: str | None = None, keep_broken_roles: bool = False):
    """Rows to browse and filter, and their lineage parent: `version:NAME` (train + eval) or any source."""
    if source.startswith("version:"):
        df, manifest = load_version_rows(source[8:])
        return df, {"version": source[8:], "content_hash": manifest.get("content_hash")}
    from core.data.formats import load_source

    df = load_source(source, split=split, revision=revision or None, keep_broken_roles=keep_broken_roles)
    return df, parent_of(source, split, revision)


def import_source(source: str, name: str, split: str = "train", revision: str | None = None,
                  keep_broken_roles: bool = False, eval_fraction: float = 0.0, seed: int = 0) -> Path:
    """Load `source`, normalise it to canonical messages and save it as version `name`."""
    from core.data.formats import load_source

    versions.version_dir(name)  # validates the name before any slow loading
    if versions.exists(name):
        raise IrisError(f"dataset version {name!r} already exists (versions are immutable): choose another name.")
    df = load_source(source, split=split, revision=revision, keep_broken_roles=keep_broken_roles)
    parent = parent_of(source, split, revision)
    recipe = {"source": source, "split": split, "revision": revision, "keep_broken_roles": keep_broken_roles}
    return _save(name, df, eval_fraction=eval_fraction, seed=seed, recipe=recipe, kind="import", parent=parent,
                 steps=[{"step": "import", "before": len(df), "dropped": 0, "after": len(df)}])


def load_version_rows(version: str):
    """All rows of a version (train, then eval if it has one) as one DataFrame."""
    import pandas as pd

    manifest = versions.load_manifest(version)
    parts = [versions.load(version)]
    if manifest.get("rows", {}).get("eval"):
        parts.append(versions.load(version, "eval"))
    from core.data.formats import as_lists

    return as_lists(pd.concat(parts, ignore_index=True)), manifest


def save_filtered(result: FilterResult, recipe: DataRecipe, name: str, parent: dict,
                  eval_fraction: float | None = None) -> Path:
    """Save a recipe's kept rows as version `name`, with the funnel and drop reasons in its manifest.

    `parent` is {"version": ..., "content_hash": ...} for a saved version, {"source": ...} otherwise."""
    fraction = recipe.eval_fraction if eval_fraction is None else eval_fraction
    return _save(name, result.kept_rows(), eval_fraction=fraction, seed=recipe.seed, recipe=recipe.to_yaml(),
                 kind="filter", parent=parent,
                 steps=result.funnel, extra={"dropped_by_reason": result.reason_counts(), "recipe_name": recipe.name,
                                             "tokenizer": recipe.tokenizer})


def filter_version(version: str, recipe: DataRecipe, name: str, eval_fraction: float | None = None) -> Path:
    """Apply `recipe` to version `version` and save the kept rows as version `name`."""
    versions.version_dir(name)
    if versions.exists(name):
        raise IrisError(f"dataset version {name!r} already exists (versions are immutable): choose another name.")
    df, manifest = load_version_rows(version)
    result = apply_recipe(df, recipe, progress=lambda step: print(f"step {step}", file=sys.stderr, flush=True))
    for row in result.funnel:
        print(f"{row['step']:<14} {row['before']:>8} → {row['after']:>8}  (-{row['dropped']})", file=sys.stderr)
    parent = {"version": version, "content_hash": manifest.get("content_hash")}
    return save_filtered(result, recipe, name, parent, eval_fraction)
