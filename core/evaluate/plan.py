"""Evaluation plans: ask every model, under every decoding setting, every question of a set.

Run as: python -m core.evaluate PLAN.yaml   (core/evaluate/__main__.py; the job is core.evaluate.job)

    IRIS_HOME/evals/<plan>/
      plan.yaml        the EvalPlan (models × settings × question set, seed, optional metrics)
      answers.jsonl    one line per answer: cell, text, lineage, speed, token counts, RAM (appended atomically)
      scores.jsonl     human rubric scores, appended as they are given (core.evaluate.scoring)
      judge.jsonl      automatic judge scores, labelled as such (core.evaluate.judge)
      metrics.jsonl    held-out loss / perplexity per model (core.evaluate.perplexity)
      status.json, job.log

The job is resumable: a cell whose answer is already in answers.jsonl (same model, setting values
and question text) is not generated again, so a killed or stopped run continues where it was.
"""
from __future__ import annotations

import dataclasses
import hashlib
from dataclasses import dataclass, field
from pathlib import Path

from core.config import check_types, in_range, load_yaml, one_of, save_yaml
from core.errors import IrisError
from core.evaluate.questions import QuestionSet, load_set
from core.paths import check_name, evals_dir

PLAN, ANSWERS = "plan.yaml", "answers.jsonl"
HELDOUT_METRIC, JUDGE_METRIC = "held-out loss", "automatic judge"  # metric names, as status.json's `metric_errors` keys them
DECODING_FIELDS = ("temperature", "top_p", "top_k", "repeat_penalty", "max_new_tokens", "seed")


@dataclass
class EvalPlan:
    name: str
    """Folder name under IRIS_HOME/evals/."""
    models: list[str] = field(default_factory=list)
    """Chat model ids, as `core.inference.list_chat_models()` lists them."""
    settings: list[str] = field(default_factory=lambda: ["A"])
    """Decoding setting labels: presets from `core.inference.PRESETS` ("A", "B") or keys of `custom_settings`."""
    question_set: str = "boolean_logic"
    seed: int = 0
    """Sampling seed, the same for every cell, so two models see the same random stream."""
    max_new_tokens: int = 256
    """Answer length cap in tokens, applied to every setting."""
    custom_settings: dict[str, dict] = field(default_factory=dict)
    """Extra named settings, e.g. {"greedy": {"temperature": 0.0}}; fields of DecodingSettings."""
    system_prompt: str = ""
    heldout_dataset: str = ""
    """Optional dataset version whose eval split gives each model a held-out loss / perplexity."""
    heldout_rows: int = 32
    judge_model: str = ""
    """Optional GGUF chat model id that scores answers against the references (automatic, not human)."""

    def __post_init__(self) -> None:
        check_types(self)
        check_name(self.name, "`name` (the evaluation plan's folder)")
        check_name(self.question_set, "`question_set`")
        for what, items in (("models", self.models), ("settings", self.settings)):
            for i, item in enumerate(items):
                if not item.strip():
                    raise IrisError(f"`{what}[{i}]` is empty: name a {what[:-1]}.")
            twice = sorted({x for x in items if items.count(x) > 1})
            if twice:
                raise IrisError(f"`{what}` lists {twice[0]!r} twice: keep one.")
        in_range("seed", self.seed, 0)
        in_range("max_new_tokens", self.max_new_tokens, 1, 4096)
        in_range("heldout_rows", self.heldout_rows, 1, 10000)
        if self.heldout_dataset:
            check_name(self.heldout_dataset, "`heldout_dataset` (a dataset version)")
        for label, values in self.custom_settings.items():
            for key in values:
                one_of(f"custom_settings.{label}.{key}", key, DECODING_FIELDS)
        from core.inference.settings import PRESETS, DecodingSettings

        for label, values in self.custom_settings.items():
            try:
                DecodingSettings(**{**vars(PRESETS.get(label, DecodingSettings())), **values})
            except IrisError as err:
                raise IrisError(f"custom_settings.{label}: {err}") from None
        for label in self.settings:
            if label not in PRESETS and label not in self.custom_settings:
                raise IrisError(f"`settings` names {label!r}, which is neither a preset ({', '.join(PRESETS)}) "
                                "nor a key of `custom_settings`.")


@dataclass(frozen=True)
class Cell:
    """One answer to produce: a model, a decoding setting and a question."""
    model: str
    setting: str
    question_id: str

    @property
    def key(self) -> str:
        return f"{self.model}|{self.setting}|{self.question_id}"

    @property
    def answer_id(self) -> str:
        """Short opaque id: what raters' scores point at, so the rater never sees the model name."""
        return hashlib.sha1(self.key.encode()).hexdigest()[:12]


def plan_dir(name: str) -> Path:
    return evals_dir() / check_name(name, "evaluation plan name")


def list_plans() -> list[str]:
    return sorted(p.parent.name for p in evals_dir().glob(f"*/{PLAN}"))


def save_plan(plan: EvalPlan) -> Path:
    path = plan_dir(plan.name) / PLAN
    save_yaml(plan, path)
    return path


def load_plan(name_or_path: str | Path) -> EvalPlan:
    path = Path(name_or_path)
    if not path.suffix:  # a plan name
        path = plan_dir(str(name_or_path)) / PLAN
    return load_yaml(EvalPlan, path)


# --- models and settings (through the Chat helper's core.inference) -------------------------------

def resolve_models(plan: EvalPlan) -> dict[str, "object"]:
    """{plan model id: ChatModel}; a model that is gone (deleted export, run or file) is one clear error."""
    from core import inference

    found, gone = {}, []
    for model_id in plan.models:
        try:
            found[model_id] = inference.find_model(model_id)
        except IrisError:
            gone.append(model_id)
    if gone:
        raise IrisError(f"model(s) {', '.join(gone)} no longer exist (deleted export, run or file?): remove them "
                        "from the plan, or pick from the Chat models list.")
    return found


def decoding(plan: EvalPlan, label: str):
    """The DecodingSettings for `label`: preset or default, custom overrides, then the plan's cap and seed."""
    from core import inference

    base = inference.PRESETS.get(label)
    if base is None and label not in plan.custom_settings:
        raise IrisError(f"decoding setting {label!r} is neither a preset ({', '.join(inference.PRESETS)}) "
                        "nor one of the plan's custom settings.")
    values = dataclasses.asdict(base) if base is not None else {}
    values.update(plan.custom_settings.get(label) or {})
    values.update(max_new_tokens=int(plan.max_new_tokens), seed=int(plan.seed))
    return inference.DecodingSettings(**values)


def expand(plan: EvalPlan, available: dict | None = None) -> tuple[list[Cell], QuestionSet]:
    """All cells of the plan, model-major (one engine load per model). Refuses zero cells and gone models."""
    qset = load_set(plan.question_set)
    if not plan.models or not plan.settings:
        raise IrisError(f"plan {plan.name!r} has zero cells: pick at least one model and one decoding setting.")
    if available is None:
        resolve_models(plan)
    for label in plan.settings:
        decoding(plan, label)  # validates the label
    if plan.heldout_dataset:
        from core import versions

        versions.load_manifest(plan.heldout_dataset)  # gone → one message, before any answer is generated
    if plan.judge_model:
        from core import inference

        if inference.find_model(plan.judge_model).kind != "gguf":
            raise IrisError(f"the automatic judge {plan.judge_model!r} must be a GGUF model (fast on CPU).")
    cells = [Cell(m, s, q.id) for m in plan.models for s in plan.settings for q in qset.questions]
    return cells, qset
