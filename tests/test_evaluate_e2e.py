"""The lab's Boolean-logic set end to end: the embedded model vs a CPU-quick LoRA fine-tune of it.

Real pieces only: `python -m core.train` (3 LoRA steps on the set's own reference answers),
`python -m core.evaluate` on both models, held-out perplexity, blind scores,
results and CSV. Generation is kept to a few tokens: the point is the plumbing, not the prose.
"""
from __future__ import annotations

import io
import subprocess

import pytest

from core import jobs
from core.evaluate import questions, scoring
from core.evaluate.answers import read_answers
from core.evaluate.plan import EvalPlan, save_plan
from core.paths import REPO_ROOT

pytestmark = pytest.mark.slow


def _teaching_version(name: str) -> None:
    import pandas as pd

    from core import versions

    rows = [{"messages": [{"role": "user", "content": q.question}, {"role": "assistant", "content": q.reference}]}
            for q in questions.load_set("boolean_logic").questions]
    versions.save(name, pd.DataFrame(rows * 2), eval_df=pd.DataFrame(rows))


def test_lab_set_embedded_vs_cpu_quick_finetune(home_with_model, tmp_path):
    import pandas as pd

    from core.config import save_yaml
    from core.train.config import load_preset

    _teaching_version("boolean-teach")
    cfg = load_preset("cpu_quick_smollm2")
    cfg.dataset, cfg.run_name, cfg.max_steps, cfg.save_steps, cfg.eval_steps = "boolean-teach", "bq", 3, 3, 0
    cfg.batch_size, cfg.grad_accum, cfg.warmup_steps = 2, 1, 0
    save_yaml(cfg, tmp_path / "train.yaml")
    proc = subprocess.run(jobs.python_module_argv("core.train", str(tmp_path / "train.yaml")), cwd=REPO_ROOT,
                          capture_output=True, text=True, timeout=900)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    assert jobs.read_status(home_with_model / "runs" / "bq")["state"] == "completed"

    plan = EvalPlan(name="lab-e2e", models=["smollm2-135m-instruct", "run:bq"], settings=["A"], max_new_tokens=8,
                    heldout_dataset="boolean-teach", heldout_rows=5)
    path = save_plan(plan)
    jobs.launch(path.parent, jobs.python_module_argv("core.evaluate", str(path)))
    status = jobs.wait(path.parent, timeout_s=900)
    assert status["state"] == "completed", jobs.tail(path.parent / jobs.LOG)

    answers = read_answers(path.parent)
    assert len(answers) == 10
    tuned = [a for a in answers if a["model"] == "run:bq"]
    assert {a["model_kind"] for a in tuned} == {"adapter"} and tuned[0]["lineage"]["dataset"] == "boolean-teach"
    assert all(a["text"].strip() and 0 < a["completion_tokens"] <= 8 for a in answers)

    # Blind-score every answer: the fine-tune gets 4s, the base 2s; results must say so per model.
    for q in questions.load_set("boolean_logic").questions:
        for ans in scoring.blind_queue(answers, q.id, session_seed=11):
            points = 4 if ans["model"] == "run:bq" else 2
            scoring.save_score(path.parent, ans["answer_id"], {c: points for c in scoring.CRITERIA})
    table = scoring.results_table(path.parent).set_index("model")
    assert table.loc["run:bq", "human_total"] == 16 and table.loc["smollm2-135m-instruct", "human_total"] == 8
    # Held-out loss on the taught answers: the fine-tune has seen them, so its loss is lower.
    assert table.loc["run:bq", "heldout_loss"] < table.loc["smollm2-135m-instruct", "heldout_loss"]
    assert table["file_mb"].gt(0).all() and table["gen_tok_s"].gt(0).all()
    csv = pd.read_csv(io.StringIO(scoring.export_csv(path.parent)))
    assert len(csv) == 10 and set(csv["model"]) == {"smollm2-135m-instruct", "run:bq"}
    fig = scoring.quality_efficiency_chart(scoring.results_table(path.parent), "human_total", "file_mb")
    assert sum(len(t.x) for t in fig.data) == 2
