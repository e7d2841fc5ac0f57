"""Evaluation plans: ask every model, under every decoding setting, every question of a set.

Run as: python -m core.evaluate PLAN.yaml

    IRIS_HOME/evals/<plan>/
      plan.yaml        the EvalPlan (models × settings × question set, seed, optional metrics)
      answers.jsonl    one line per answer: cell, text, lineage, speed, token counts, RAM (appended atomically)
      scores.jsonl     human rubric scores, appended as they are given (core.scoring)
      judge.jsonl      automatic judge scores, labelled as such (core.judge)
      metrics.jsonl    held-out loss / perplexity per model (core.perplexity)
      status.json, job.log

The job is resumable: a cell whose answer is already in answers.jsonl (same model, setting values
and question text) is not generated again, so a killed or stopped run continues where it was.
"""
from __future__ import annotations

import argparse
import dataclasses
import hashlib
import json
import os
import time
from dataclasses import dataclass, field
from pathlib import Path

from core import jobs
from core.config import load_yaml, save_yaml
from core.errors import IrisError, cli_exit
from core.paths import check_name, evals_dir, read_jsonl
from core.questions import QuestionSet, load_set

PLAN, ANSWERS = "plan.yaml", "answers.jsonl"
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
        check_name(self.name, "evaluation plan name")
        for what, items in (("models", self.models), ("settings", self.settings)):
            if not isinstance(items, list) or not all(isinstance(x, str) and x.strip() for x in items):
                raise IrisError(f"plan {self.name!r}: `{what}` must be a list of names.")
            if len(set(items)) != len(items):
                raise IrisError(f"plan {self.name!r} lists the same entry twice in `{what}`.")
        if not 1 <= int(self.max_new_tokens) <= 4096:
            raise IrisError(f"max_new_tokens must be between 1 and 4096, got {self.max_new_tokens}.")
        if not 1 <= int(self.heldout_rows) <= 10000:
            raise IrisError(f"heldout_rows must be between 1 and 10000, got {self.heldout_rows}.")
        for label, values in (self.custom_settings or {}).items():
            unknown = sorted(set(values or {}) - set(DECODING_FIELDS))
            if unknown:
                raise IrisError(f"custom setting {label!r} has unknown field(s) {', '.join(unknown)}; "
                                f"known: {', '.join(DECODING_FIELDS)}.")


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


# --- answers.jsonl --------------------------------------------------------------------------------

def append_jsonl(path: Path, record: dict) -> None:
    """Append one JSON line with a single write + fsync; a torn tail from a kill is closed off first."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    line = json.dumps(record, ensure_ascii=False, default=str) + "\n"
    fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
    try:
        size = os.fstat(fd).st_size
        if size:
            with open(path, "rb") as f:
                f.seek(size - 1)
                if f.read(1) != b"\n":
                    line = "\n" + line  # the previous writer died mid-line; that fragment is ignored on read
        os.write(fd, line.encode("utf-8"))
        os.fsync(fd)
    finally:
        os.close(fd)


def read_answers(folder: Path) -> list[dict]:
    """The latest answer per cell (a regenerated cell replaces the older line)."""
    latest = {}
    for rec in read_jsonl(Path(folder) / ANSWERS):
        latest[rec["key"]] = rec
    return list(latest.values())


def _settings_dict(settings) -> dict:
    return {k: v for k, v in dataclasses.asdict(settings).items()}


def done_keys(folder: Path, plan: EvalPlan, qset: QuestionSet) -> set[str]:
    """Cells already answered with the same decoding values and question text."""
    done = set()
    for rec in read_answers(folder):
        try:
            same = (rec.get("settings") == _settings_dict(decoding(plan, rec["setting"]))
                    and rec.get("question") == qset.get(rec["question_id"]).question)
        except IrisError:
            same = False
        if same:
            done.add(rec["key"])
    return done


def model_files_bytes(model) -> int:
    """Bytes of weights a model loads from disk: the GGUF, a folder's weights, or an adapter plus its base."""
    def weights(path: Path) -> int:
        if path.is_file():
            return path.stat().st_size
        if path.is_dir():
            return sum(p.stat().st_size for p in path.iterdir() if p.suffix in (".safetensors", ".bin", ".gguf"))
        return 0

    size = weights(Path(model.path))
    if model.kind == "adapter" and model.base:
        from core import models

        try:
            size += weights(models.resolve(model.base))
        except IrisError:
            pass  # base not available locally: the adapter alone is all we can measure
    return size


def rss_mb() -> float:
    """Resident memory of this process now, in MiB (model weights + KV cache + Python)."""
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 2**20


def answer_record(plan: EvalPlan, cell: Cell, qset: QuestionSet, engine, settings, answer, wall_s: float) -> dict:
    """One answers.jsonl line: the cell, the text, where the model came from, and how fast/large it was."""
    model = engine.model
    stats = dataclasses.asdict(answer.stats)
    text = answer.text
    return {
        "answer_id": cell.answer_id, "key": cell.key, "plan": plan.name,
        "model": cell.model, "model_label": model.label, "model_kind": model.kind, "model_path": str(model.path),
        "file_bytes": model_files_bytes(model), "engine_ram_mb": round((engine.ram_bytes or 0) / 2**20, 1),
        "lineage": dict(model.lineage or {}),
        "setting": cell.setting, "settings": _settings_dict(settings),
        "question_id": cell.question_id, "question": qset.get(cell.question_id).question,
        "text": text, "chars": len(text), "words": len(text.split()),
        "prompt_tokens": stats.get("prompt_tokens"), "completion_tokens": stats.get("completion_tokens"),
        "ttft_s": stats.get("ttft_s"), "gen_tok_s": stats.get("gen_tok_s"),
        "wall_s": round(wall_s, 3), "rss_mb": round(rss_mb(), 1), "stats": stats,
        "finish_reason": stats.get("finish_reason"), "note": answer.note, "created": time.time(),
    }


def messages_for(plan: EvalPlan, question: str) -> list[dict]:
    system = [{"role": "system", "content": plan.system_prompt}] if plan.system_prompt.strip() else []
    return system + [{"role": "user", "content": question}]


def main(plan: EvalPlan) -> Path:
    """Generate every missing answer, then the optional held-out and judge metrics. Returns the plan folder."""
    folder = plan_dir(plan.name)
    save_plan(plan)
    jobs.update_status(folder, state="running", pid=os.getpid(), message="checking the plan", error=None)
    try:
        from core import inference

        available = resolve_models(plan)
        cells, qset = expand(plan, available)
        done = done_keys(folder, plan, qset)
        pending = [c for c in cells if c.key not in done]
        total, step, t0 = len(cells), len(cells) - len(pending), time.time()
        message = f"{step} of {total} answers already there; {len(pending)} to generate"
        print(message, flush=True)
        jobs.update_status(folder, step=step, total=total, eta_s=None, message=message)
        for i, cell in enumerate(pending):
            if jobs.stop_requested(folder):
                jobs.update_status(folder, state="stopped", message=f"stopped after {step} of {total} answers")
                return folder
            settings = decoding(plan, cell.setting)
            engine = inference.load_engine(cell.model)
            started = time.perf_counter()
            answer = engine.generate(messages_for(plan, qset.get(cell.question_id).question), settings)
            record = answer_record(plan, cell, qset, engine, settings, answer, time.perf_counter() - started)
            append_jsonl(folder / ANSWERS, record)
            step += 1
            rate = (time.time() - t0) / (i + 1)  # seconds per answer in this session
            jobs.update_status(folder, step=step, total=total, eta_s=round(rate * (len(pending) - i - 1), 1),
                               message=f"{cell.model} · {cell.setting} · {cell.question_id}")
            print(f"[{step}/{total}] {cell.key}: {record['completion_tokens']} tokens, "
                  f"{record['gen_tok_s']} tok/s", flush=True)
        if plan.heldout_dataset:
            from core import perplexity

            jobs.update_status(folder, message=f"held-out loss on {plan.heldout_dataset}")
            perplexity.evaluate_models(folder, plan, available)
        if plan.judge_model:
            from core import judge

            jobs.update_status(folder, message=f"automatic judge {plan.judge_model}")
            judge.score_plan(folder, plan, qset)
        jobs.update_status(folder, state="completed", step=total, total=total, eta_s=0,
                           message=f"{total} answers")
        return folder
    except BaseException as err:
        jobs.mark_failed(folder, err)
        raise


def launch(plan: EvalPlan) -> int:
    """Save the plan and start it as a background job (pages call this). Returns the pid."""
    path = save_plan(plan)
    return jobs.launch(path.parent, jobs.python_module_argv("core.evaluate", str(path)))


def cli(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description="Run an Iris evaluation plan (resumable).")
    parser.add_argument("plan", help="path to the plan's YAML (an EvalPlan); answers go to IRIS_HOME/evals/<name>/")
    args = parser.parse_args(argv)
    try:
        folder = main(load_plan(args.plan))
        print(f"evaluation {jobs.read_status(folder).get('state')}: {folder}")
    except IrisError as err:
        cli_exit(err)


if __name__ == "__main__":
    cli()
