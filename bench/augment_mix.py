"""Augment benchmark: what building the example mixture (bundled sample + 500 math/logic rows) costs.

Run as: .venv/bin/python bench/augment_mix.py [--recipe data/recipes/sample_plus_math.yaml] [--repeats 2]

Phases, timed separately in one process (the tokenizer is loaded once, before timing):
  raw generation   reasoning-gym items for the recipe's generators, nothing else (the baseline)
  iris generation  core.data.generate: the same items + answer check + explanation; ratio vs raw
  load             every source through core.data.augment.load_source (the sample's JSONL + generation)
  dedup            exact + cross-source near dedup of the pooled rows (core.data.dedup)
  tokens           token counts, once per pooled row (stages reuse them)
  build            the whole core.data.augment.build, `--repeats` times; the content hashes must agree
The machine is shared (2 cores): figures are noisy; compare only within one run.
"""
from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))


def timed(fn, *args, **kw):
    start = time.perf_counter()
    out = fn(*args, **kw)
    return out, time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--recipe", type=Path, default=Path("data/recipes/sample_plus_math.yaml"),
                        help="AugmentRecipe YAML to build")
    parser.add_argument("--repeats", type=int, default=2, help="whole builds to time (hashes must agree)")
    args = parser.parse_args()
    os.environ.setdefault("IRIS_HOME", tempfile.mkdtemp(prefix="iris-bench-augment-"))

    import reasoning_gym

    from core import versions
    from core.data import augment, tokenizers
    from core.data.generate import HUMAN_EVAL, generate

    recipe = augment.load_recipe_file(args.recipe)
    tokenizers.load(recipe.tokenizer)  # cached for the rest of the run: not part of any phase
    gen_sources = [s for s in recipe.sources if s.kind == "generated"]
    specs = [(g, s.seed) for s in gen_sources for g in s.generators]

    def raw():
        n = 0
        for g, seed in specs:
            if g.name == HUMAN_EVAL:
                continue
            ds = reasoning_gym.create_dataset(g.name, seed=seed, size=g.count)
            n += sum(1 for _ in ds)
        return n

    n_raw, t_raw = timed(raw)
    rows, t_gen = timed(lambda: sum(len(generate(s.generators, seed=s.seed)) for s in gen_sources))
    print(f"raw reasoning-gym   {n_raw:6d} items  {t_raw:7.2f} s  {n_raw / t_raw:8.0f} items/s")
    print(f"iris generation     {rows:6d} rows   {t_gen:7.2f} s  {rows / t_gen:8.0f} rows/s  "
          f"({t_gen / t_raw:.2f}× raw: answer check + explanations + skipped duplicates)")

    frames, t_load = timed(lambda: [augment.load_source(s) for s in recipe.sources])
    pool = augment._concat(frames)
    (kept, collisions), t_dedup = timed(augment.dedup, pool, recipe.dedup_exact, recipe.dedup_near,
                                        recipe.near_threshold)
    _, t_tok = timed(augment.token_counts, pool, recipe.tokenizer)
    print(f"load sources        {len(pool):6d} rows   {t_load:7.2f} s")
    print(f"dedup               {len(pool) - len(kept):6d} dropped {t_dedup:6.2f} s  "
          f"({int((collisions['kind'] == 'exact').sum())} exact, {int((collisions['kind'] == 'near').sum())} near, "
          f"{int(collisions['across'].sum())} across sources)")
    print(f"token counts        {len(pool):6d} rows   {t_tok:7.2f} s  (once per pooled row)")

    hashes = []
    for i in range(args.repeats):
        mix, t_build = timed(augment.build, recipe)
        hashes.append(versions.content_hash(mix.train))
        print(f"build #{i + 1}            {len(mix.train):6d} train + {0 if mix.eval is None else len(mix.eval)} eval  "
              f"{t_build:6.2f} s  hash {hashes[-1][:16]}")
    print("reproducible:", "yes" if len(set(hashes)) == 1 else "NO")


if __name__ == "__main__":
    main()
