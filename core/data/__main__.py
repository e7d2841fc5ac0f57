"""Import and filter dataset versions from the command line (the Data page calls the same functions).

Run as:
    python -m core.data import SOURCE --name NAME [--split train] [--revision REV] [--keep-broken-roles]
                                                  [--eval-fraction 0.05] [--seed 0] [--engine duckdb]
        SOURCE = "sample" (the bundled FineTome-shaped sample), a .parquet/.jsonl/.json/.csv file,
        or a hub dataset id such as mlabonne/FineTome-100k
    python -m core.data filter VERSION --recipe data/recipes/default.yaml --name NAME [--eval-fraction F]
                               [--engine memory|duckdb|ray] [--address RAY_ADDR] [--chunk-rows 10000]
                               [--workers N] [--job-dir DIR]
        --engine duckdb runs the recipe out of core (core.data.engine_duckdb: passes over bounded pieces,
        rows as Parquet shards, progress with rows/s and ETA on stderr); ray runs the same passes on a Ray
        cluster (a local Ray with this machine's cores without --address). Default: duckdb for versions
        over IRIS_INMEMORY_ROWS rows, memory below. A big import (.parquet/.jsonl) streams into shards.
    python -m core.data augment RECIPE.yaml --name NAME      (an AugmentRecipe: mix versions and generators)
    python -m core.data prefs --name NAME (--from-votes | --from-scores EVAL_DIR | --file SOURCE |
                              --generate GEN:COUNT[:LEVEL] ... [--model ID] [--k 4] [--seed 0]) [--eval-fraction F]
        a preference version (prompt, chosen, rejected; core.data.preference) from Chat's blind votes, an
        evaluation's blind scores, a file or hub dataset, or reasoning-gym questions answered K times by a model
        (right answer = chosen, wrong = rejected; it prints how many prompts gave a pair)

Each writes one immutable version under IRIS_HOME/datasets/NAME (core.versions: train.parquet,
eval.parquet, recipe.yaml, manifest.json with parent, per-step counts and content hash), print its
path, and exit 2 with one sentence on a user error (nothing is written then).
"""
from __future__ import annotations

import argparse
from pathlib import Path

from core import versions
from core.data.filters import DataRecipe
from core.data.store import import_source
from core.errors import IrisError, cli_exit


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
    imp.add_argument("--engine", choices=["memory", "duckdb"], default=None,
                     help="duckdb: stream a .parquet/.jsonl file of any size into shards block by block (the "
                          "default for parquet files over IRIS_INMEMORY_ROWS rows)")
    flt = sub.add_parser("filter", help="apply a recipe to a version and save the result")
    flt.add_argument("version", help="the version to filter")
    flt.add_argument("--recipe", required=True, type=Path, help="recipe YAML (see data/recipes/default.yaml)")
    flt.add_argument("--name", required=True, help="name of the new version")
    flt.add_argument("--eval-fraction", type=float, default=None, help="overrides the recipe's eval_fraction")
    flt.add_argument("--engine", choices=["memory", "duckdb", "ray"], default=None,
                     help="memory: all rows in RAM; duckdb: passes over pieces on this machine; ray: on a Ray "
                          "cluster (default: duckdb above IRIS_INMEMORY_ROWS rows, else memory)")
    flt.add_argument("--address", default=None, help="Ray cluster address (host:port); none: a local Ray")
    flt.add_argument("--chunk-rows", type=int, default=None, help="rows per piece of work (default 10000)")
    flt.add_argument("--workers", type=int, default=None, help="worker processes (default: this machine's cores)")
    flt.add_argument("--job-dir", type=Path, default=None,
                     help="keep status.json (progress, rows/s, ETA) here and stop on its STOP file (the page's job)")
    aug = sub.add_parser("augment", help="mix versions, files and generated data into a new version")
    aug.add_argument("recipe", type=Path, help="AugmentRecipe YAML (see data/recipes/sample_plus_math.yaml)")
    aug.add_argument("--name", required=True, help="name of the new version")
    prf = sub.add_parser("prefs", help="save preference pairs (for DPO) as a version")
    prf.add_argument("--name", required=True, help="name of the new version")
    src = prf.add_mutually_exclusive_group(required=True)
    src.add_argument("--from-votes", action="store_true", help="every blind Chat comparison with a vote")
    src.add_argument("--from-scores", type=Path, metavar="EVAL_DIR", help="an evaluation folder with blind scores")
    src.add_argument("--file", metavar="SOURCE", help="a .parquet/.jsonl/.json/.csv file or a hub dataset id")
    src.add_argument("--generate", nargs="+", metavar="GEN:COUNT[:LEVEL]",
                     help="reasoning-gym generators, questions each (and curriculum level), e.g. basic_arithmetic:40:0")
    prf.add_argument("--model", default="smollm2-135m-instruct", help="--generate: the model that answers (Chat's ids)")
    prf.add_argument("--k", type=int, default=4, help="--generate: answers sampled per question")
    prf.add_argument("--seed", type=int, default=0, help="--generate: questions and sampling seed; also the split's")
    prf.add_argument("--split", default="train", help="--file with a hub id: the split to load")
    prf.add_argument("--eval-fraction", type=float, default=0.0, help="share of pairs held out as the eval split")
    return parser.parse_args(argv)


def prefs(args: argparse.Namespace) -> Path:
    """`prefs`: build the pairs from the chosen source and save them as a preference version."""
    import sys

    from core.data import preference

    versions.version_dir(args.name)  # a bad or taken name fails before any slow work
    if versions.exists(args.name):
        raise IrisError(f"dataset version {args.name!r} already exists (versions are immutable): choose another name.")
    extra: dict = {}
    if args.from_votes:
        df, parent = preference.pairs_from_votes(), {"source": "chat blind votes"}
    elif args.from_scores:
        df, parent = preference.pairs_from_scores(args.from_scores), {"source": f"evaluation:{args.from_scores.name}"}
    elif args.file:
        df, parent = preference.load_pairs(args.file, split=args.split), {"source": args.file}
    else:
        from core.data.generate import GeneratorSpec

        specs = []
        for item in args.generate:
            name, _, rest = item.partition(":")
            count, _, level = rest.partition(":")
            if not count.isdigit():
                raise IrisError(f"--generate {item!r}: expected GENERATOR:COUNT[:LEVEL], e.g. basic_arithmetic:40:0.")
            specs.append(GeneratorSpec(name, int(count), int(level) if level else None))
        df, counts = preference.generate_pairs(specs, args.model, k=args.k, seed=args.seed, progress=lambda n, t: print(
            f"question {n}/{t}", file=sys.stderr, flush=True))
        print(f"{counts['pairs']} of {counts['prompts']} prompts gave a pair (a right and a wrong answer among "
              f"{args.k} samples from {args.model})", flush=True)
        parent, extra = {"generated": [{"source": s.name, "count": s.count} for s in specs]}, {"generation": counts}
    recipe = {k: (str(v) if isinstance(v, Path) else v) for k, v in vars(args).items() if k != "command"}
    return preference.save_pairs(args.name, df, parent=parent, recipe=recipe, eval_fraction=args.eval_fraction,
                                 seed=args.seed, extra=extra)


def main(args: argparse.Namespace) -> Path:
    if args.command == "import":
        from core.data import bigimport

        if args.engine == "duckdb" or (args.engine is None and bigimport.is_big_file(Path(args.source))):
            if args.eval_fraction:
                raise IrisError("a streamed import has no eval split: set one when filtering (--eval-fraction).")
            return bigimport.import_big(Path(args.source), args.name, keep_broken_roles=args.keep_broken_roles)
        return import_source(args.source, args.name, split=args.split, revision=args.revision,
                             keep_broken_roles=args.keep_broken_roles, eval_fraction=args.eval_fraction,
                             seed=args.seed)
    if args.command == "prefs":
        return prefs(args)
    if args.command == "augment":
        from core.data import augment

        return augment.main(augment.load_recipe_file(args.recipe), args.name)
    from core.data import bigdata

    return bigdata.filter_any(args.version, DataRecipe.load(args.recipe), args.name, args.eval_fraction,
                              engine=args.engine, address=args.address, chunk_rows=args.chunk_rows,
                              workers=args.workers, job_dir=args.job_dir)


if __name__ == "__main__":
    try:
        args = parse_args()
        folder = main(args)
        if args.command == "augment":
            rows = versions.load_manifest(args.name)["rows"]
            print(f"saved {folder} ({rows['train']} train / {rows['eval']} eval rows)")
        else:
            print(folder)
    except IrisError as err:
        cli_exit(err)
