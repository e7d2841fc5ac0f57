"""Automatic scoring: a local chat model grades each answer against the question's reference answer.

Clearly not a human: results go to `judge.jsonl` (beside the human `scores.jsonl`) with the judge's
model id, and pages label them "automatic judge". Small judges are noisy; a 135M judge mostly
shows the mechanism. The judge answers four lines `criterion: N` (1–5); anything it fails to give
is recorded as missing rather than guessed, with the reason in `ungraded` and the raw reply kept for
inspection. `summary` counts graded and ungraded answers, so a judge that graded nothing never looks
like a success.
"""
from __future__ import annotations

import re
import time
from pathlib import Path

from core.errors import IrisError

PROMPT = """You grade a teacher's answer to a student's question, using the reference answer as the truth.

Question: {question}

Reference answer: {reference}

Answer to grade: {answer}

Give each criterion a whole number from 1 (poor) to 5 (excellent), exactly in this form:
correctness: N
clarity: N
examples: N
pedagogy: N"""


def judge_candidates() -> list:
    """The models that can judge: GGUF chat models (fast enough on CPU to grade every answer)."""
    from core import inference

    return [m for m in inference.list_chat_models() if m.kind == "gguf"]


def parse_grades(reply: str) -> dict[str, int | None]:
    """`criterion: N` lines → {criterion: N}; a criterion the reply does not grade is None."""
    from core.evaluate.scoring import CRITERIA

    grades = {}
    for name in CRITERIA:
        match = re.search(rf"{name}\W{{0,3}}\s*([1-5])\b", reply, flags=re.IGNORECASE)
        grades[name] = int(match.group(1)) if match else None
    return grades


def ungraded_reason(reply: str, grades: dict[str, int | None]) -> str:
    """Why a reply gives no total ("" when it grades every criterion)."""
    missing = [name for name, value in grades.items() if value is None]
    if not missing:
        return ""
    if not reply.strip():
        return "the judge replied nothing"
    return (f"the reply gives no grade for {', '.join(missing)} "
            "(expected lines 'criterion: N' with N from 1 to 5)")


def summary(folder: Path, judge_id: str) -> dict:
    """How many of the plan's answers this judge graded, and how many it replied to without a usable grade."""
    from core.evaluate.answers import read_answers
    from core.evaluate.scoring import JUDGE, latest_scores

    answers = {a["answer_id"] for a in read_answers(folder)}
    records = [r for r in latest_scores(folder, JUDGE) if r.get("judge") == judge_id and r["answer_id"] in answers]
    graded = sum(r.get("total") is not None for r in records)
    return {"judge": judge_id, "answers": len(answers), "judged": len(records), "graded": graded,
            "ungraded": len(records) - graded}


def summary_line(s: dict) -> str:
    """One sentence for the log, status and page: graded N of M, and why the rest were not."""
    line = f"automatic judge {s['judge']} graded {s['graded']} of {s['answers']} answers"
    if s["ungraded"]:
        line += (f"; {s['ungraded']} of its replies had no parseable grade (no 'criterion: N' lines): "
                 "a larger judge model (1B or more) is more likely to follow the format")
    return line


def judge_settings(max_new_tokens: int = 32):  # four "criterion: N" lines ≈ 20 tokens
    from core.inference.settings import DecodingSettings

    # Greedy: the same answer always gets the same grade.
    return DecodingSettings(temperature=0.0, top_p=1.0, top_k=0, repeat_penalty=1.0, max_new_tokens=max_new_tokens)


def score_plan(folder: Path, plan, qset) -> list[dict]:
    """Grade every answer of the plan not yet graded by this judge; append to judge.jsonl."""
    from core import inference
    from core.evaluate.answers import read_answers
    from core.evaluate.scoring import CRITERIA, JUDGE
    from core.paths import append_jsonl, read_jsonl

    judge = inference.find_model(plan.judge_model)
    if judge.kind != "gguf":
        raise IrisError(f"the automatic judge must be a GGUF model (fast on CPU); {judge.label} is {judge.kind}.")
    done = {r["answer_id"] for r in read_jsonl(Path(folder) / JUDGE) if r.get("judge") == judge.id}
    pending = [a for a in read_answers(folder) if a["answer_id"] not in done]
    engine = inference.load_engine(judge.id) if pending else None  # nothing left to grade: no model to load
    out = []
    for ans in pending:
        q = qset.get(ans["question_id"])
        prompt = PROMPT.format(question=q.question, reference=q.reference, answer=ans["text"].strip() or "(empty)")
        reply = engine.generate([{"role": "user", "content": prompt}], judge_settings()).text
        grades = parse_grades(reply)
        complete = all(grades[c] is not None for c in CRITERIA)
        record = {"answer_id": ans["answer_id"], "judge": judge.id, "rater": f"auto:{judge.id}", **grades,
                  "total": sum(grades.values()) if complete else None, "ungraded": ungraded_reason(reply, grades),
                  "reply": reply, "created": time.time()}
        append_jsonl(Path(folder) / JUDGE, record)
        out.append(record)
    return out
