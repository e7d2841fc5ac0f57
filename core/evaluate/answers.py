"""answers.jsonl: one line per answer (cell, text, lineage, speed, token counts, RAM), and what is done."""
from __future__ import annotations

import dataclasses
import os
import time
from pathlib import Path

from core.errors import IrisError
from core.evaluate.plan import ANSWERS, Cell, EvalPlan, decoding
from core.evaluate.questions import QuestionSet
from core.paths import read_jsonl


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
