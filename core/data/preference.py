"""Preference datasets: pairs of a preferred and a dispreferred answer to the same prompt, saved as versions.

    from core.data import preference
    df = preference.pairs_from_votes()                       # Chat → Compare → Blind votes
    df = preference.pairs_from_scores(eval_folder)           # Evaluate's blind rubric scores
    df = preference.load_pairs("pairs.jsonl")                 # a file or hub dataset in the common shapes
    df = preference.generate_pairs([GeneratorSpec("basic_arithmetic", 20)], "smollm2-135m-instruct", k=4)
    preference.save_pairs("my-prefs", df, parent={...}, recipe={...})

A row (and a version's columns):
  prompt     the conversation before the answer: [{"role": "system"|"user"|"assistant", "content": str}, ...]
  chosen     the preferred assistant answer (text)
  rejected   the other answer (text)
  origin     vote | score | file | generated
  pair_from  JSON: where the pair came from (transcript id and cells, evaluation + question + answer ids and
             scores, file and row, generator + seed + sample numbers and scores)
  messages   prompt + the chosen answer: the canonical column every version has, so browsing, search and the
             text filters of the Data page work on preference versions too (they judge the chosen answer)

The version's manifest says `kind: preference` and records the sources as its parent.
"""
from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Callable

import yaml

from core import versions
from core.errors import IrisError
from core.paths import read_json, read_jsonl, transcripts_dir

COLUMNS = ["prompt", "chosen", "rejected", "origin", "pair_from", "messages"]
EXPECTED = ("`prompt` (text or a list of {role, content}) with `chosen` and `rejected` (the answers as text, or "
            "conversations ending in the assistant's answer)")


def _row(prompt: list[dict], chosen: str, rejected: str, origin: str, pair_from: dict) -> dict:
    prompt = [{"role": m["role"], "content": m["content"]} for m in prompt]
    return {"prompt": prompt, "chosen": chosen, "rejected": rejected, "origin": origin,
            "pair_from": json.dumps(pair_from, sort_keys=True, ensure_ascii=False),
            "messages": prompt + [{"role": "assistant", "content": chosen}]}


def frame(rows: list[dict]):
    import pandas as pd

    return pd.DataFrame(rows, columns=COLUMNS)


def is_preference(columns) -> bool:
    """True for a version (or frame) with preference pairs."""
    return {"prompt", "chosen", "rejected"} <= set(columns)


# ---------------------------------------------------------------- votes and scores

def pairs_from_votes(transcripts: list[dict] | None = None) -> "pandas.DataFrame":  # noqa: F821
    """One pair per other answer of every blind comparison with a vote: the chosen cell beats each other cell.
    Cells are named by their index in the record, so the order they were shown in does not matter; an answer
    whose text equals the chosen one gives no pair."""
    if transcripts is None:  # read as files: core.data does not import the Chat workflow (core.chat.transcripts)
        found = (read_json(p, default=None) for p in sorted(transcripts_dir().glob("*.json")))
        transcripts = [t for t in found if isinstance(t, dict) and t.get("kind") == "compare"]
    rows = []
    for t in transcripts:
        blind = t.get("blind") or {}
        won = blind.get("preferred_cell")
        if t.get("kind") != "compare" or won is None:
            continue
        cells = t["cells"]
        prompt = ([{"role": "system", "content": t["system"]}] if (t.get("system") or "").strip() else []) + [
            {"role": "user", "content": t["prompt"]}]
        for lost, cell in enumerate(cells):
            if lost == won or cell["answer"].strip() == cells[won]["answer"].strip():
                continue
            rows.append(_row(prompt, cells[won]["answer"], cell["answer"], "vote", {
                "transcript": t["id"], "chosen_cell": won, "rejected_cell": lost,
                "chosen_model": cells[won]["model"]["id"], "rejected_model": cell["model"]["id"]}))
    return frame(rows)


def pairs_from_scores(folder: Path) -> "pandas.DataFrame":  # noqa: F821
    """Pairs from an evaluation's blind rubric scores: on the same question, an answer with a higher mean human
    total beats one with a lower total; equal totals give no pair; unscored answers are left out.

    Read from the evaluation's files (answers.jsonl: the latest line per cell; scores.jsonl: the latest score per
    rater and answer; plan.yaml's system prompt), as core.evaluate writes them: core.data does not import it."""
    folder = Path(folder)
    if not (folder / "answers.jsonl").exists():
        raise IrisError(f"{folder} has no answers.jsonl: pick an evaluation that has run (Evaluate → Plan & run).")
    latest = {(s["answer_id"], s.get("rater", "")): s for s in read_jsonl(folder / "scores.jsonl")}
    totals: dict[str, list[int]] = {}
    for s in latest.values():
        totals.setdefault(s["answer_id"], []).append(s["total"])
    answers = {a["key"]: a for a in read_jsonl(folder / "answers.jsonl")}.values()
    scored = sorted((a for a in answers if a["answer_id"] in totals), key=lambda a: a["answer_id"])
    plan = yaml.safe_load((folder / "plan.yaml").read_text(encoding="utf-8")) if (folder / "plan.yaml").exists() else {}
    system = str((plan or {}).get("system_prompt") or "")
    by_question: dict[str, list[dict]] = {}
    for a in scored:
        by_question.setdefault(a["question_id"], []).append(a)
    rows = []
    for qid, answers in by_question.items():
        for i, a in enumerate(answers):
            for b in answers[i + 1:]:
                sa, sb = (sum(totals[x["answer_id"]]) / len(totals[x["answer_id"]]) for x in (a, b))
                if sa == sb or a["text"].strip() == b["text"].strip():
                    continue
                win, lose, ws, ls = (a, b, sa, sb) if sa > sb else (b, a, sb, sa)
                prompt = ([{"role": "system", "content": system}] if system.strip() else []) + [
                    {"role": "user", "content": win["question"]}]
                rows.append(_row(prompt, win["text"], lose["text"], "score", {
                    "evaluation": folder.name, "question_id": qid, "chosen_answer": win["answer_id"],
                    "rejected_answer": lose["answer_id"], "chosen_score": ws, "rejected_score": ls}))
    return frame(rows)


# ---------------------------------------------------------------- files and hub datasets

def load_pairs(source: str, split: str = "train", revision: str | None = None) -> "pandas.DataFrame":  # noqa: F821
    """Pairs from a .parquet/.jsonl/.json/.csv file or a hub dataset id, normalised (see `normalise_pairs`)."""
    from core.data.formats import FILE_SUFFIXES, load_hub, read_file

    path = Path(source).expanduser()
    if path.suffix.lower() in FILE_SUFFIXES or path.exists():
        df, where = read_file(path), {"file": path.name}
    else:
        df, where = load_hub(source, split=split, revision=revision), {"hub": source, "split": split}
    return normalise_pairs(df, where)


def normalise_pairs(df, where: dict | None = None) -> "pandas.DataFrame":  # noqa: F821
    """Rows in the common preference shapes → Iris's pair rows. Accepted per row:
    prompt text or messages; chosen/rejected text, or conversations whose last turn is the assistant's answer
    (the `mlabonne/orpo-dpo-mix-40k` shape: then the prompt is what comes before it, when no prompt is given)."""
    missing = [c for c in ("chosen", "rejected") if c not in df.columns]
    if missing:
        raise IrisError(f"no {' or '.join(f'`{c}`' for c in missing)} column (found {', '.join(map(str, df.columns))}): "
                        f"expected {EXPECTED}.")
    rows = []
    for i, rec in enumerate(df.to_dict(orient="records")):
        chosen_prompt, chosen = _answer(rec["chosen"], i, "chosen")
        rejected_prompt, rejected = _answer(rec["rejected"], i, "rejected")
        prompt = _prompt(rec.get("prompt"), i) if _present(rec.get("prompt")) else chosen_prompt
        if not prompt:
            raise IrisError(f"row {i}: no prompt (no `prompt` column and `chosen` holds no turns before the "
                            f"answer); expected {EXPECTED}.")
        if not _present(rec.get("prompt")) and rejected_prompt and rejected_prompt != chosen_prompt:
            raise IrisError(f"row {i}: `chosen` and `rejected` start with different conversations; expected the "
                            "same turns before two different answers.")
        rows.append(_row(prompt, chosen, rejected, "file", {**(where or {}), "row": i}))
    return frame(rows)


def _present(value: Any) -> bool:
    if hasattr(value, "tolist"):
        value = value.tolist()
    return value is not None and not (isinstance(value, float) and value != value) and value != "" and value != []


def _turns(value: Any, row: int, column: str) -> list[dict] | None:
    """A list of {role, content} turns (also JSON text of one), or None when `value` is plain text."""
    from core.data.formats import _from_turns

    if hasattr(value, "tolist"):
        value = value.tolist()
    if isinstance(value, str) and value.lstrip().startswith("[{"):
        try:
            value = json.loads(value)
        except json.JSONDecodeError:
            return None
    if isinstance(value, list):
        try:
            return _from_turns(value, row)
        except IrisError as err:
            raise IrisError(f"{err} (column `{column}`)") from None
    return None


def _answer(value: Any, row: int, column: str) -> tuple[list[dict], str]:
    """(turns before the answer, the answer text) of a chosen/rejected cell."""
    turns = _turns(value, row, column)
    if turns is None:
        if not isinstance(value, str) or not value.strip():
            raise IrisError(f"row {row}: `{column}` is {type(value).__name__ if not isinstance(value, str) else 'empty'}"
                            f"; expected {EXPECTED}.")
        return [], value
    if not turns or turns[-1]["role"] != "assistant" or not turns[-1]["content"].strip():
        last = turns[-1]["role"] if turns else "nothing"
        raise IrisError(f"row {row}: `{column}` ends with {last if turns and turns[-1]['content'].strip() else 'an empty turn'}"
                        f"; expected a conversation ending in the assistant's answer.")
    return turns[:-1], turns[-1]["content"]


def _prompt(value: Any, row: int) -> list[dict]:
    turns = _turns(value, row, "prompt")
    if turns is not None:
        if not turns or turns[-1]["role"] == "assistant":
            raise IrisError(f"row {row}: `prompt` ends with an assistant turn; expected the turns before the answer.")
        return turns
    if not isinstance(value, str) or not value.strip():
        raise IrisError(f"row {row}: `prompt` is empty; expected the question as text or a list of turns.")
    return [{"role": "user", "content": value}]


# ---------------------------------------------------------------- generated with verifiable answers

ANSWER_HINT = "\n\nEnd your reply with a line of the form `Answer: <your final answer>`."


def final_answer(text: str) -> str:
    """What a reply gives as its final answer: after its last `Answer:`, else its last non-empty line."""
    import re

    hits = re.findall(r"answer\s*(?:is)?\s*[:=]\s*(.+)", text, flags=re.IGNORECASE)
    if hits:
        return hits[-1].strip().strip("*`. ")
    lines = [ln.strip() for ln in text.strip().splitlines() if ln.strip()]
    return lines[-1].strip("*`. ") if lines else ""


def pair_from_samples(question: str, samples: list[str], score: Callable[[str], float]) -> tuple[int, int] | None:
    """(index of the first right sample, index of the first wrong one), or None when the samples are all right
    or all wrong. Right = `score(final answer)` is 1.0 (reasoning-gym's own scoring)."""
    right = [i for i, s in enumerate(samples) if score(final_answer(s)) == 1.0]
    wrong = [i for i in range(len(samples)) if i not in right and samples[i].strip()]
    return (right[0], wrong[0]) if right and wrong else None


def generate_pairs(specs: list, model_id: str, k: int = 4, seed: int = 0, temperature: float = 0.8,
                   max_new_tokens: int = 96, progress: Callable[[int, int], None] | None = None):
    """For each reasoning-gym question of `specs`, sample `k` answers from `model_id` (core.inference, seeds
    seed..seed+k-1 at `temperature`), score each with the generator's own `score_answer` and keep the first right
    one as chosen and the first wrong one as rejected. Returns (pairs frame, {"prompts": n, "pairs": m})."""
    import reasoning_gym

    from core import inference
    from core.data.generate import _config

    engine = inference.load_engine(model_id)
    rows, prompts = [], 0
    total = sum(s.count for s in specs)
    for spec in specs:
        dataset = reasoning_gym.create_dataset(spec.name, **_config(spec, seed, spec.count))
        for idx in range(spec.count):
            entry = dataset[idx]
            prompt = [{"role": "user", "content": entry["question"] + ANSWER_HINT}]
            samples = [engine.generate(prompt, inference.DecodingSettings(
                temperature=temperature, top_p=0.95, top_k=0, repeat_penalty=1.0, max_new_tokens=max_new_tokens,
                seed=seed + j)).text for j in range(k)]
            answers = [final_answer(s) for s in samples]
            scores = [dataset.score_answer(answer=a, entry=entry) for a in answers]
            picked = pair_from_samples(entry["question"], samples, dict(zip(answers, scores)).__getitem__)  # scored once
            prompts += 1
            if progress:
                progress(prompts, total)
            if picked:
                rows.append(_row(prompt, samples[picked[0]], samples[picked[1]], "generated", {
                    "generator": spec.name, "index": idx, "seed": seed, "model": model_id, "k": k,
                    "temperature": temperature, "chosen_sample": picked[0], "rejected_sample": picked[1],
                    "scores": scores, "answer": str(entry.get("answer"))}))
    return frame(rows), {"prompts": prompts, "pairs": len(rows)}


# ---------------------------------------------------------------- saving

def save_pairs(name: str, df, *, parent: dict, recipe: dict, eval_fraction: float = 0.0, seed: int = 0,
               extra: dict | None = None) -> Path:
    """Save pair rows as the immutable preference version `name` (core.versions, kind "preference")."""
    if versions.exists(name):
        raise IrisError(f"dataset version {name!r} already exists (versions are immutable): choose another name.")
    if len(df) == 0:
        raise IrisError(f"no preference pairs to save as {name!r}: the source gave none (ties, one answer per "
                        "question, or every sample equally right).")
    train, eval_df = versions.split(df, eval_fraction, seed) if eval_fraction else (df, None)
    counts = df["origin"].value_counts().to_dict()
    versions.save(name, train, eval_df=eval_df, recipe=recipe, kind="preference", parent=parent,
                  steps=[{"step": "pairs", "before": len(df), "dropped": 0, "after": len(df)}],
                  extra={**(extra or {}), "pairs_by_origin": counts,
                         "split": {"eval_fraction": eval_fraction, "seed": seed}})
    return versions.version_dir(name)

