"""Import and filter dataset versions from the command line (the Data page calls the same functions).

Run as:
    python -m core.data import SOURCE --name NAME [--split train] [--revision REV] [--keep-broken-roles]
                                                  [--eval-fraction 0.05] [--seed 0]
        SOURCE = "sample" (the bundled FineTome-shaped sample), a .parquet/.jsonl/.json/.csv file,
        or a hub dataset id such as mlabonne/FineTome-100k
    python -m core.data filter VERSION --recipe data/recipes/default.yaml --name NAME [--eval-fraction F]

Both write one immutable version under IRIS_HOME/datasets/NAME (core.versions: train.parquet,
eval.parquet, recipe.yaml, manifest.json with parent, per-step counts and content hash), print its
path, and exit 2 with one sentence on a user error (nothing is written then).
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

from core import versions
from core.errors import IrisError, cli_exit
from core.filters import DataRecipe, FilterResult, apply_recipe


def _save(name: str, df, *, eval_fraction: float, seed: int, recipe, kind: str, parent: dict, steps: list[dict],
          extra: dict | None = None) -> Path:
    if versions.exists(name):
        raise IrisError(f"dataset version {name!r} already exists (versions are immutable): choose another name.")
    train, eval_df = (versions.split(df, eval_fraction, seed) if eval_fraction else (df, None))
    versions.save(name, train, eval_df=eval_df, recipe=recipe, kind=kind, parent=parent, steps=steps,
                  extra={**(extra or {}), "split": {"eval_fraction": eval_fraction, "seed": seed}})
    return versions.version_dir(name)


def import_source(source: str, name: str, split: str = "train", revision: str | None = None,
                  keep_broken_roles: bool = False, eval_fraction: float = 0.0, seed: int = 0) -> Path:
    """Load `source`, normalise it to canonical messages and save it as version `name`."""
    from core.formats import SAMPLE_PATH, load_source

    versions.version_dir(name)  # validates the name before any slow loading
    if versions.exists(name):
        raise IrisError(f"dataset version {name!r} already exists (versions are immutable): choose another name.")
    df = load_source(source, split=split, revision=revision, keep_broken_roles=keep_broken_roles)
    label = f"bundled:{SAMPLE_PATH.name}" if source == "sample" else source
    parent = {"source": label, "split": split, "revision": revision}
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
    from core.formats import as_lists

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


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m core.data", description="Import and filter dataset versions.")
    sub = parser.add_subparsers(dest="command", required=True)
    imp = sub.add_parser("import", help="load a source and save it as a version")
    imp.add_argument("source", help="'sample', a .parquet/.jsonl/.json/.csv path, or a hub dataset id")
    imp.add_argument("--name", required=True, help="name of the new version")
    imp.add_argument("--split", default="train", help="hub split to load")
    imp.add_argument("--revision", default=None, help="hub revision (branch, tag or commit)")
    imp.add_argument("--keep-broken-roles", action="store_true",
                     help="keep rows whose roles do not alternate (the recipe's role_order step drops them)")
    imp.add_argument("--eval-fraction", type=float, default=0.0, help="share held out as the eval split")
    imp.add_argument("--seed", type=int, default=0, help="seed of the train/eval split")
    flt = sub.add_parser("filter", help="apply a recipe to a version and save the result")
    flt.add_argument("version", help="the version to filter")
    flt.add_argument("--recipe", required=True, type=Path, help="recipe YAML (see data/recipes/default.yaml)")
    flt.add_argument("--name", required=True, help="name of the new version")
    flt.add_argument("--eval-fraction", type=float, default=None, help="overrides the recipe's eval_fraction")
    return parser.parse_args(argv)


def main(args: argparse.Namespace) -> Path:
    if args.command == "import":
        return import_source(args.source, args.name, split=args.split, revision=args.revision,
                             keep_broken_roles=args.keep_broken_roles, eval_fraction=args.eval_fraction,
                             seed=args.seed)
    return filter_version(args.version, DataRecipe.load(args.recipe), args.name, args.eval_fraction)


if __name__ == "__main__":
    try:
        print(main(parse_args()))
    except IrisError as err:
        cli_exit(err)
