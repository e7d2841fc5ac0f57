"""The evaluation job: every missing answer, then the optional held-out loss and automatic judge.

Run as: python -m core.evaluate PLAN.yaml   (pages call `launch(plan)`)

The answers are the job: a failure there fails it. The metrics after them (held-out loss, automatic
judge) each fail on their own: the reason goes to status.json's `metric_errors` ({metric: reason}),
the other metric still runs, and the job ends `completed` with the message "completed with errors".
"""
from __future__ import annotations

import os
import time
from pathlib import Path

from core import jobs
from core.errors import IrisError
from core.evaluate.answers import answer_record, done_keys, messages_for
from core.evaluate.plan import ANSWERS, EvalPlan, decoding, expand, plan_dir, resolve_models, save_plan
from core.evaluate.plan import HELDOUT_METRIC as HELDOUT
from core.evaluate.plan import JUDGE_METRIC as JUDGE
from core.paths import append_jsonl


def main(plan: EvalPlan) -> Path:
    """Generate every missing answer, then the optional held-out and judge metrics. Returns the plan folder."""
    folder = plan_dir(plan.name)
    try:  # gone models, question sets, settings: refused before anything is written
        available = resolve_models(plan)
        cells, qset = expand(plan, available)
    except IrisError as err:
        if jobs.read_status(folder):  # launched from a page (status "queued"): show why it ended there
            jobs.mark_failed(folder, err)
        raise
    save_plan(plan)
    jobs.update_status(folder, state="running", pid=os.getpid(), message="checking the plan", error=None,
                       metric_errors={}, judge=None)
    try:
        if not _answer(folder, plan, cells, qset):
            return folder
        errors, judged = _metrics(folder, plan, qset, available)
        total = len(cells)
        message = f"{total} answers" + (f"; {judged}" if judged else "")
        if errors:
            message += "; completed with errors: " + ", ".join(f"{name} failed" for name in errors)
        jobs.update_status(folder, state="completed", step=total, total=total, eta_s=0, message=message,
                           metric_errors=errors)
        return folder
    except BaseException as err:
        jobs.mark_failed(folder, err)
        raise


def _answer(folder: Path, plan: EvalPlan, cells: list, qset) -> bool:
    """Generate the cells not answered yet; False when a stop was requested part way."""
    from core import inference

    done = done_keys(folder, plan, qset)
    pending = [c for c in cells if c.key not in done]
    total, step, t0 = len(cells), len(cells) - len(pending), time.time()
    message = f"{step} of {total} answers already there; {len(pending)} to generate"
    print(message, flush=True)
    jobs.update_status(folder, step=step, total=total, eta_s=None, message=message)
    for i, cell in enumerate(pending):
        if jobs.stop_requested(folder):
            jobs.update_status(folder, state="stopped", message=f"stopped after {step} of {total} answers")
            return False
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
    return True


def reason(err: BaseException) -> str:
    """A user error's own sentence, or the exception's type and text (as jobs.mark_failed words it)."""
    return str(err) if isinstance(err, IrisError) else f"{type(err).__name__}: {err}"


def _metrics(folder: Path, plan: EvalPlan, qset, available: dict) -> tuple[dict[str, str], str]:
    """Run each planned metric on its own. Returns ({metric: why it failed}, the judge's one-line summary)."""
    errors, judged = {}, ""
    if plan.heldout_dataset:
        jobs.update_status(folder, message=f"held-out loss on {plan.heldout_dataset}")
        try:
            from core.evaluate import perplexity

            perplexity.evaluate_models(folder, plan, available)
        except Exception as err:  # one metric's failure must not cost the others (Stop/^C still end the job)
            errors[HELDOUT] = reason(err)
            print(f"[metric] {HELDOUT} failed: {errors[HELDOUT]}", flush=True)
    if plan.judge_model:
        jobs.update_status(folder, message=f"automatic judge {plan.judge_model}")
        try:
            from core import inference
            from core.evaluate import judge

            judge.score_plan(folder, plan, qset)
            summary = judge.summary(folder, inference.find_model(plan.judge_model).id)
            jobs.update_status(folder, judge=summary)
            judged = judge.summary_line(summary)
            print(f"[metric] {judged}", flush=True)
            if summary["answers"] and not summary["graded"]:
                raise IrisError(judged)
        except Exception as err:
            errors[JUDGE] = reason(err)
            print(f"[metric] {JUDGE} failed: {errors[JUDGE]}", flush=True)
    return errors, judged


def launch(plan: EvalPlan) -> int:
    """Save the plan and start it as a background job (pages call this). Returns the pid."""
    expand(plan)  # refuse gone models, sets and settings here, in the page, before the folder exists
    path = save_plan(plan)
    return jobs.launch(path.parent, jobs.python_module_argv("core.evaluate", str(path)))
