"""Question sets: the questions an evaluation asks every model, each with a short reference answer.

    IRIS_HOME/evals/questions/<name>.yaml     name, description, questions: [{id, question, reference}]
    IRIS_HOME/evals/questions/<name>.jsonl    one {"id", "question", "reference"} object per line

The lab's Boolean-logic set ships in `data/questions/boolean_logic.yaml` and is copied into the
workspace the first time sets are listed, so a user can edit it there like any other set.
Validation is strict: a question without an `id`, `question` or `reference` is refused with a
message naming the field and the question, because a silently skipped question changes the score.
"""
from __future__ import annotations

import json
import shutil
from dataclasses import dataclass, field
from pathlib import Path

import yaml

from core.config import parse_yaml
from core.errors import IrisError
from core.paths import REPO_ROOT, check_name, evals_dir, write_text

BUNDLED_DIR = REPO_ROOT / "data" / "questions"
REQUIRED = ("id", "question", "reference")
OPTIONAL = ("topic",)
SUFFIXES = (".yaml", ".yml", ".jsonl")


@dataclass(frozen=True)
class Question:
    id: str
    """Stable key used in answers.jsonl and scores.jsonl (renaming it orphans old answers)."""
    question: str
    """What the student asks, sent to the model as the user turn."""
    reference: str
    """A short correct answer: shown to raters after they score, used by the automatic judge."""
    topic: str = ""


@dataclass
class QuestionSet:
    name: str
    questions: list[Question]
    description: str = ""
    path: Path | None = field(default=None, compare=False)

    def get(self, question_id: str) -> Question:
        for q in self.questions:
            if q.id == question_id:
                return q
        raise IrisError(f"question set {self.name!r} has no question {question_id!r}.")


def questions_dir() -> Path:
    path = evals_dir() / "questions"
    path.mkdir(parents=True, exist_ok=True)
    return path


def _seed_bundled() -> None:
    """Copy the shipped sets into the workspace once (never over a user's edited copy)."""
    target = questions_dir()
    for src in sorted(BUNDLED_DIR.glob("*.yaml")):
        if not any((target / f"{src.stem}{s}").exists() for s in SUFFIXES):
            shutil.copyfile(src, target / src.name)


def list_sets() -> list[str]:
    _seed_bundled()
    return sorted({p.stem for p in questions_dir().iterdir() if p.suffix in SUFFIXES and not p.name.startswith(".")})


def set_path(name: str) -> Path:
    _seed_bundled()
    check_name(name, "question set name")
    for suffix in SUFFIXES:
        path = questions_dir() / f"{name}{suffix}"
        if path.exists():
            return path
    raise IrisError(f"question set {name!r} does not exist in {questions_dir()}: "
                    f"pick one of {', '.join(list_sets()) or 'none'} or create it on the Evaluate page.")


def load_set(name: str) -> QuestionSet:
    path = set_path(name)
    return parse(path.read_text(encoding="utf-8"), fmt=path.suffix.lstrip("."), name=name, path=path)


def parse(text: str, fmt: str = "yaml", name: str = "questions", path: Path | None = None) -> QuestionSet:
    """Build a validated QuestionSet from YAML (a mapping with `questions`, or a bare list) or JSONL."""
    description = ""
    if fmt == "jsonl":
        items = []
        for n, line in enumerate(text.splitlines(), 1):
            if line.strip():
                try:
                    items.append(json.loads(line))
                except json.JSONDecodeError as err:
                    raise IrisError(f"question set {name!r}, line {n}, column {err.colno} is not valid JSON: "
                                    f"{err.msg}; each line must be one {{id, question, reference}} object.") from None
    else:
        data = parse_yaml(text, f"question set {name!r}" + (f" ({path})" if path else ""))
        if isinstance(data, dict):
            description = str(data.get("description") or "")
            unknown = sorted(set(map(str, data)) - {"name", "description", "questions"})
            if unknown:
                raise IrisError(f"question set {name!r}: `{unknown[0]}` is not a question-set key; known keys: "
                                "name, description, questions.")
            if "questions" not in data:
                raise IrisError(f"question set {name!r} has no `questions` list: add `questions:` with items of "
                                "id, question and reference.")
            items = data["questions"]
        else:
            items = data
    if not isinstance(items, list) or not items:
        raise IrisError(f"question set {name!r} has no questions: add at least one with id, question and reference.")
    questions, seen = [], set()
    for n, item in enumerate(items, 1):
        if not isinstance(item, dict):
            raise IrisError(f"question set {name!r}: `questions[{n}]` is {item!r}, not a mapping of id, question, "
                            "reference.")
        for key in REQUIRED:
            value = item.get(key)
            if value is None or not str(value).strip():
                raise IrisError(f"question set {name!r}: `questions[{n}].{key}` is missing or empty; every question "
                                "needs id, question and reference.")
            if not isinstance(value, (str, int, float)) or isinstance(value, bool):
                raise IrisError(f"question set {name!r}: `questions[{n}].{key}` must be text, got {value!r}.")
        unknown = sorted(set(item) - set(REQUIRED) - set(OPTIONAL))
        if unknown:
            raise IrisError(f"question set {name!r}: `questions[{n}].{unknown[0]}` is not a question field; "
                            f"known: {', '.join(REQUIRED + OPTIONAL)}.")
        qid = str(item["id"]).strip()
        if qid in seen:
            raise IrisError(f"question set {name!r}: `questions[{n}].id` {qid!r} is used twice; ids must be unique.")
        seen.add(qid)
        questions.append(Question(id=qid, question=str(item["question"]).strip(),
                                  reference=str(item["reference"]).strip(), topic=str(item.get("topic") or "")))
    return QuestionSet(name=name, questions=questions, description=description, path=path)


def to_yaml(qset: QuestionSet) -> str:
    data = {"name": qset.name, "description": qset.description,
            "questions": [{k: v for k, v in vars(q).items() if v or k in REQUIRED} for q in qset.questions]}
    return yaml.safe_dump(data, sort_keys=False, allow_unicode=True, width=100)


def save_set(name: str, text: str, fmt: str = "yaml") -> QuestionSet:
    """Validate `text` and write it as the set `name` (replacing the file atomically)."""
    check_name(name, "question set name")
    if fmt not in ("yaml", "jsonl"):
        raise IrisError(f"question sets are YAML or JSONL, not {fmt!r}.")
    qset = parse(text, fmt=fmt, name=name)
    path = questions_dir() / f"{name}.{fmt}"
    for suffix in SUFFIXES:  # one file per name, so the set a plan names is unambiguous
        other = questions_dir() / f"{name}{suffix}"
        if other != path:
            other.unlink(missing_ok=True)
    write_text(path, text if text.endswith("\n") else text + "\n")
    qset.path = path
    return qset
