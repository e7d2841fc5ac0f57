"""The evaluation job: every missing answer, then the optional held-out loss and automatic judge.

Run as: python -m core.evaluate PLAN.yaml   (pages call `launch(plan)`)
"""
from __future__ import annotations

import os
import time
from pathlib import Path

from core import jobs
from core.errors import IrisError
from core.evaluate.answers import answer_record, done_keys, messages_for
from core.evaluate.plan import ANSWERS, EvalPlan, decoding, expand, plan_dir, resolve_models, save_plan
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
    jobs.update_status(folder, state="running", pid=os.getpid(), message="checking the plan", error=None)
    try:
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
            from core.evaluate import perplexity

            jobs.update_status(folder, message=f"held-out loss on {plan.heldout_dataset}")
            perplexity.evaluate_models(folder, plan, available)
        if plan.judge_model:
            from core.evaluate import judge

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
    expand(plan)  # refuse gone models, sets and settings here, in the page, before the folder exists
    path = save_plan(plan)
    return jobs.launch(path.parent, jobs.python_module_argv("core.evaluate", str(path)))
