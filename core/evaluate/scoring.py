"""Rubric scoring (the lab's 20 points), blind order, results per model/setting, CSV and charts.

Raters see one question at a time and its answers in a shuffled order that hides the model: the
order is seeded by the rater's session seed and the question id, so a page refresh keeps it while
a new session reshuffles. Each score is appended to `scores.jsonl` as it is given, pointing at the
answer's opaque `answer_id`; results join scores back to answers.jsonl to find model and setting.

    {"answer_id": "3fa1c2...", "rater": "ana", "correctness": 4, "clarity": 5, "examples": 3,
     "pedagogy": 4, "total": 16, "notes": "...", "created": 1764000000.0}
"""
from __future__ import annotations

import random
import secrets
import time
from pathlib import Path

from core.errors import IrisError
from core.evaluate.answers import read_answers
from core.paths import append_jsonl, read_jsonl

SCORES, JUDGE = "scores.jsonl", "judge.jsonl"
CRITERIA = ("correctness", "clarity", "examples", "pedagogy")
CRITERIA_HELP = {
    "correctness": "Is what it says true (and does it answer the question asked)?",
    "clarity": "Is it easy to follow for a beginner?",
    "examples": "Are the examples concrete, relevant and right?",
    "pedagogy": "Does it teach: builds intuition, anticipates confusion, right length?",
}
MAX_TOTAL = 5 * len(CRITERIA)  # 20 points an answer, as the lab scored


def new_session_seed() -> int:
    """A fresh seed per rater session (the page keeps it in session_state)."""
    return secrets.randbits(32)


def blind_queue(answers: list[dict], question_id: str, session_seed: int) -> list[dict]:
    """This question's answers in an order that depends only on (session seed, question), not on models."""
    mine = sorted((a for a in answers if a["question_id"] == question_id), key=lambda a: a["answer_id"])
    random.Random(f"{session_seed}:{question_id}").shuffle(mine)
    return mine


def blind_view(answer: dict) -> dict:
    """What a rater may see: the opaque id and the text, nothing naming the model or setting."""
    return {"answer_id": answer["answer_id"], "text": answer["text"]}


def blind_order(answers: list[dict], question_ids: list[str], session_seed: int) -> list[dict]:
    """Every answer in scoring order: question by question (the set's order), each question's blind queue."""
    return [a for qid in question_ids for a in blind_queue(answers, qid, session_seed)]


def next_unscored(order: list[dict], scored: set[str], after: str | None = None) -> str | None:
    """The first answer id in `order` not in `scored`, looking after `after` first and then from the top."""
    ids = [a["answer_id"] for a in order]
    start = ids.index(after) + 1 if after in ids else 0
    return next((aid for aid in ids[start:] + ids[:start] if aid not in scored), None)


def rater_scores(folder: Path, rater: str = "") -> dict[str, dict]:
    """{answer_id: this rater's latest score record}."""
    rater = (rater or "").strip()
    return {s["answer_id"]: s for s in latest_scores(folder) if s.get("rater", "") == rater}


def save_score(folder: Path, answer_id: str, scores: dict, notes: str = "", rater: str = "",
               replace: bool = False) -> dict:
    """Validate four 1–5 integers and append them for `answer_id` (the latest score per rater counts).

    A rater's earlier score of the same answer is replaced only with `replace=True`: a score is never
    overwritten unnoticed."""
    folder = Path(folder)
    known = {a["answer_id"] for a in read_answers(folder)}
    if answer_id not in known:
        raise IrisError(f"answer {answer_id!r} is not in {folder.name}'s answers: reload the page.")
    earlier = rater_scores(folder, rater).get(answer_id)
    if earlier is not None and not replace:
        raise IrisError(f"you already scored this answer {earlier['total']}/{MAX_TOTAL}: "
                        "confirm that the new score replaces it.")
    record = {"answer_id": answer_id, "rater": (rater or "").strip()}
    for name in CRITERIA:
        value = scores.get(name)
        if isinstance(value, bool) or not isinstance(value, (int, float)) or int(value) != value or not 1 <= value <= 5:
            raise IrisError(f"score `{name}` must be a whole number from 1 to 5, got {value!r}.")
        record[name] = int(value)
    record.update(total=sum(record[c] for c in CRITERIA), notes=(notes or "").strip(), created=time.time())
    append_jsonl(folder / SCORES, record)
    return record


def latest_scores(folder: Path, file: str = SCORES) -> list[dict]:
    """The last score each rater gave each answer (re-scoring replaces, never double counts)."""
    latest = {}
    for rec in read_jsonl(Path(folder) / file):
        latest[(rec["answer_id"], rec.get("rater", ""))] = rec
    return list(latest.values())


def scored_ids(folder: Path, rater: str = "") -> set[str]:
    return set(rater_scores(folder, rater))


def answers_frame(folder: Path):
    """One row per answer, with its mean human score, the automatic judge score, and speed/size columns."""
    import pandas as pd

    answers = read_answers(folder)
    if not answers:
        return pd.DataFrame()
    df = pd.DataFrame(answers)
    df["file_mb"] = df["file_bytes"] / 2**20
    df["short"] = [short_label(m, lin) for m, lin in zip(df["model"], df.get("lineage", [None] * len(df)))]
    human = pd.DataFrame(latest_scores(folder))
    if len(human):
        means = human.groupby("answer_id")[[*CRITERIA, "total"]].mean()
        means["raters"] = human.groupby("answer_id").size()
        notes = human.groupby("answer_id")["notes"].apply(lambda s: " | ".join(n for n in s if n))
        df = df.join(means, on="answer_id").join(notes, on="answer_id")
    else:
        for col in (*CRITERIA, "total", "raters", "notes"):
            df[col] = None
    judge = pd.DataFrame(latest_scores(folder, JUDGE))
    df["judge_total"] = df["answer_id"].map(judge.groupby("answer_id")["total"].mean()) if len(judge) else None
    df["judged"] = df["answer_id"].isin(set(judge["answer_id"])) if len(judge) else False
    # Answer tokens per second of the whole request (prompt reading included): what a user waits for.
    df["wall_tok_s"] = pd.to_numeric(df["completion_tokens"], errors="coerce") / pd.to_numeric(
        df.get("wall_s", pd.Series(None, index=df.index)), errors="coerce")
    return df


def results_table(folder: Path):
    """Per model × setting: human rubric means (of 20), automatic judge mean, speed, size, RAM, held-out loss."""
    import pandas as pd

    from core.evaluate.perplexity import read_metrics

    df = answers_frame(folder)
    if df.empty:
        return df
    for col in (*CRITERIA, "total", "judge_total", "raters"):
        df[col] = pd.to_numeric(df[col], errors="coerce")
    grouped = df.groupby(["model", "setting"], sort=False)
    out = grouped.agg(
        short=("short", "first"), label=("model_label", "first"), path=("model_path", "first"),
        answers=("answer_id", "count"), scored=("total", "count"),
        human_total=("total", "mean"), **{c: (c, "mean") for c in CRITERIA},
        judge_total=("judge_total", "mean"), judged=("judged", "sum"), judge_graded=("judge_total", "count"),
        gen_tok_s=("gen_tok_s", "mean"), wall_tok_s=("wall_tok_s", "mean"),
        completion_tokens=("completion_tokens", "mean"), words=("words", "mean"),
        file_mb=("file_mb", "first"), rss_mb=("rss_mb", "max"),
    ).reset_index()
    metrics = {m["model"]: m for m in read_metrics(folder)}
    out["heldout_loss"] = out["model"].map(lambda m: metrics.get(m, {}).get("loss"))
    out["perplexity"] = out["model"].map(lambda m: metrics.get(m, {}).get("perplexity"))
    return out.round(3)


def short_label(model_id: str, lineage: dict | None = None) -> str:
    """A model's name short enough for a table column: export · quant, run@checkpoint, a file's name."""
    lineage = lineage or {}
    if model_id.startswith("export:"):
        export, _, file = model_id.removeprefix("export:").partition("/")
        return f"{export} · {lineage.get('quant') or file}" + (" + LoRA" if lineage.get("lora") else "")
    if model_id.startswith(("run:", "model:")):
        return model_id.split(":", 1)[1]
    return Path(model_id).name if "/" in model_id else model_id


# results_table column → (header, what it measures): the page's table leads with the scores.
RESULT_COLUMNS = {
    "short": ("model", "Short name; the full label and path are in the last columns."),
    "setting": ("setting", "Decoding setting (A: temperature 0.2 / top-p 0.7; B: 0.7 / 0.9)."),
    "human_total": ("human (of 20)", "Mean blind rubric score of the answers scored so far."),
    "judge_total": ("judge (of 20)", "Mean automatic-judge score of the answers it could grade (not a human)."),
    "scored": ("scored", "Answers with a human score."),
    "judge_graded": ("judge graded", "Answers the automatic judge gave a parseable grade."),
    "answers": ("answers", "Answers generated."),
    "perplexity": ("held-out perplexity", "exp(held-out loss) on the plan's dataset; lower is better."),
    "heldout_loss": ("held-out loss", "Mean negative log-likelihood per token (nats) on the eval split."),
    "gen_tok_s": ("gen tok/s", "Answer tokens per second after the first token: the same measure as Chat's "
                  "tok/s, but taken in the background job (no page streaming, short prompt, nothing else "
                  "running), so usually higher than what Chat shows for a long conversation."),
    "wall_tok_s": ("tok/s incl. prompt", "Answer tokens divided by the whole request's time, reading the "
                   "prompt included: what waiting for an answer feels like."),
    "completion_tokens": ("answer tokens", "Mean answer length in tokens."),
    "file_mb": ("file MiB", "Model weights on disk (adapter plus base for adapters)."),
    "rss_mb": ("RAM MiB", "Peak resident memory of the job process while answering."),
    "label": ("label", "The model's full label, as Chat lists it."),
    "path": ("path", "Where the model's weights are."),
}


def results_view(results):
    """results_table with the scores first and readable headers (the page adds RESULT_COLUMNS' help)."""
    cols = [c for c in RESULT_COLUMNS if c in results.columns]
    return results[cols].rename(columns={c: RESULT_COLUMNS[c][0] for c in cols})


def export_csv(folder: Path) -> str:
    """Every answer with its lineage, settings, speed and scores, as CSV text (one row per answer)."""
    df = answers_frame(folder)
    if df.empty:
        raise IrisError(f"{Path(folder).name} has no answers yet: run the plan first.")
    df = df.copy()
    df["lineage"] = df["lineage"].map(lambda d: "; ".join(f"{k}={v}" for k, v in (d or {}).items()))
    df["settings"] = df["settings"].map(lambda d: "; ".join(f"{k}={v}" for k, v in (d or {}).items()))
    drop = [c for c in ("stats", "key") if c in df.columns]
    return df.drop(columns=drop).to_csv(index=False)


def score_chart(results):
    """Bar chart: mean rubric total (of 20) per model/setting, human and automatic side by side."""
    import plotly.graph_objects as go

    names = results["label"] + " · " + results["setting"]
    fig = go.Figure()
    fig.add_bar(x=names, y=results["human_total"], name="human rubric (of 20)")
    if results["judge_total"].notna().any():
        fig.add_bar(x=names, y=results["judge_total"], name="automatic judge (of 20)")
    fig.update_layout(barmode="group", yaxis_range=[0, MAX_TOTAL], yaxis_title="mean score (of 20)",
                      legend_orientation="h", margin=dict(t=30))
    return fig


QUALITY = {"human_total": "human rubric (of 20)", "judge_total": "automatic judge (of 20)",
           "perplexity": "held-out perplexity (lower is better)"}
EFFICIENCY = {"gen_tok_s": "generation speed (tokens/s after the first, CPU)",
              "wall_tok_s": "answer speed incl. prompt (tokens/s, CPU)", "file_mb": "model files (MiB)"}


def missing_reason(results, quality: str, metric_errors: dict | None = None) -> str:
    """Why no model has `quality` yet: the metric failed, the judge graded nothing, or it was not planned."""
    from core.evaluate.plan import HELDOUT_METRIC as HELDOUT
    from core.evaluate.plan import JUDGE_METRIC

    metric = {"judge_total": JUDGE_METRIC, "perplexity": HELDOUT}.get(quality)
    if metric and (metric_errors or {}).get(metric):
        return f"no model has a {QUALITY[quality]}: the {metric} failed ({metric_errors[metric]})."
    if quality == "judge_total" and "judged" in results and results["judged"].sum() > 0:
        return (f"the automatic judge replied to {int(results['judged'].sum())} answers but gave no parseable "
                "grade: pick a larger judge model (1B or more) in the plan.")
    if quality == "human_total":
        return "no answer has a human score yet: score some on the Score (blind) tab."
    return f"no model has a {QUALITY[quality]} yet: add that metric to the plan."


def quality_efficiency_chart(results, quality: str = "human_total", efficiency: str = "gen_tok_s",
                             metric_errors: dict | None = None):
    """One point per model/setting: quality against speed or size, so 'better but slower' is a picture."""
    import plotly.express as px

    if quality not in QUALITY or efficiency not in EFFICIENCY:
        raise IrisError(f"pick quality from {list(QUALITY)} and efficiency from {list(EFFICIENCY)}.")
    data = results.dropna(subset=[quality, efficiency])
    if data.empty:
        raise IrisError(missing_reason(results, quality, metric_errors))
    fig = px.scatter(data, x=efficiency, y=quality, color="label", symbol="setting", text="setting",
                     hover_data=["model", "answers", "scored", "completion_tokens", "rss_mb"],
                     labels={quality: QUALITY[quality], efficiency: EFFICIENCY[efficiency], "label": "model"})
    fig.update_traces(marker_size=14, textposition="top center")
    fig.update_layout(margin=dict(t=30))
    return fig


def progress(folder: Path, rater: str = "") -> tuple[int, int]:
    """(answers this rater scored, answers there are)."""
    total = len(read_answers(folder))
    return len(scored_ids(folder, rater) & {a["answer_id"] for a in read_answers(folder)}), total



def judge_answers(folder: Path):
    """One row per answer the automatic judge replied to: model, setting, question, grade or why none."""
    import pandas as pd

    by_id = {a["answer_id"]: a for a in read_answers(folder)}
    rows = []
    for rec in latest_scores(folder, JUDGE):
        ans = by_id.get(rec["answer_id"])
        if ans is None:
            continue
        why = rec.get("ungraded") or ("" if rec.get("total") is not None else "no parseable grade")
        rows.append({"model": short_label(ans["model"], ans.get("lineage")), "setting": ans["setting"],
                     "question": ans["question_id"], "judge": rec.get("judge", ""),
                     "judge (of 20)": rec.get("total"), "not graded because": why, "judge's reply": rec.get("reply", "")})
    return pd.DataFrame(rows)
