"""Evaluate as a real job on the embedded GGUF: killed mid-plan, it resumes without regenerating."""
from __future__ import annotations

import time
from collections import Counter

import pytest

from core import jobs, paths
from core.evaluate.answers import read_answers
from core.evaluate.plan import ANSWERS, EvalPlan, plan_dir, save_plan

pytestmark = pytest.mark.slow  # compiled llama-cpp-python, a subprocess generating ~100 tokens


def test_killed_job_resumes_without_regenerating():
    plan = EvalPlan(name="resume", models=["smollm2-135m-instruct"], settings=["A", "B"], max_new_tokens=6)
    path = save_plan(plan)
    folder = path.parent
    jobs.launch(folder, jobs.python_module_argv("core.evaluate", str(path)))
    deadline = time.time() + 300
    while not paths.read_jsonl(folder / ANSWERS):
        assert time.time() < deadline, jobs.tail(folder / jobs.LOG)
        assert jobs.read_status(folder).get("state") not in ("failed", "died"), jobs.tail(folder / jobs.LOG)
        time.sleep(0.05)
    jobs.kill(folder)
    first = paths.read_jsonl(folder / ANSWERS)
    assert 1 <= len(first) < 10, "the job should have been killed part way"
    assert jobs.read_status(folder)["state"] == "stopped"

    jobs.launch(folder, jobs.python_module_argv("core.evaluate", str(path)))
    status = jobs.wait(folder, timeout_s=600)
    assert status["state"] == "completed", jobs.tail(folder / jobs.LOG)
    assert (status["step"], status["total"]) == (10, 10)
    lines = paths.read_jsonl(folder / ANSWERS)
    assert len(lines) == 10 and set(Counter(r["key"] for r in lines).values()) == {1}
    assert lines[: len(first)] == first  # the answers from before the kill were kept, not redone
    assert f"{len(first)} of 10 answers already there" in jobs.tail(folder / jobs.LOG)
    rec = lines[-1]
    assert rec["completion_tokens"] <= 6 and rec["gen_tok_s"] is not None and rec["prompt_tokens"] > 0
    assert rec["file_bytes"] > 90e6 and rec["lineage"]["quant"] == "Q4_1" and rec["rss_mb"] > 0
    assert rec["settings"]["temperature"] == 0.7 and rec["settings"]["max_new_tokens"] == 6

    # A changed setting regenerates only the cells it affects.
    save_plan(EvalPlan(name="resume", models=plan.models, settings=["A", "B"], max_new_tokens=6,
                                custom_settings={"B": {"temperature": 0.5}}))
    jobs.launch(folder, jobs.python_module_argv("core.evaluate", str(path)))
    assert jobs.wait(folder, timeout_s=600)["state"] == "completed"
    assert len(paths.read_jsonl(folder / ANSWERS)) == 15
    assert {r["settings"]["temperature"] for r in read_answers(folder) if r["setting"] == "B"} == {0.5}


def test_gguf_perplexity_agrees_with_transformers_on_the_same_weights(home_with_model):
    """The embedded GGUF (Q4_1) and its dequantised fp32 transformers copy hold the same weight values."""
    from core import models
    from core.evaluate import perplexity

    convs = [[{"role": "user", "content": "What does NOT do?"},
              {"role": "assistant", "content": "NOT flips a Boolean: NOT true is false, NOT false is true."}],
             [{"role": "system", "content": "You are a patient teacher."},
              {"role": "user", "content": "Is 12 between 3 and 10?"},
              {"role": "assistant", "content": "No. 12 > 3 is true but 12 < 10 is false, so the AND is false."}]]
    hf = perplexity.hf_perplexity(models.resolve(models.EMBEDDED_ID), convs)
    gg = perplexity.gguf_perplexity(models.embedded_gguf_path(), convs)
    assert gg["tokens"] == hf["tokens"]  # same template rendering, same tokenizer
    # llama.cpp multiplies Q4_1 blocks with 8-bit activations: close, not bit-equal.
    assert gg["loss"] == pytest.approx(hf["loss"], rel=0.02)
    assert 1 < gg["perplexity"] < 200


def test_automatic_judge_grades_against_the_reference_and_is_labelled():
    from core.evaluate import judge, questions, scoring
    from tests.test_evaluate import fake_answers

    folder = plan_dir("judged")
    fake_answers(folder, models=["m"])
    lines = paths.read_jsonl(folder / ANSWERS)
    (folder / ANSWERS).write_text(__import__("json").dumps(lines[3]) + "\n")  # q4 only: one generation
    plan = EvalPlan(name="judged", models=["m"], judge_model="smollm2-135m-instruct")
    [rec] = judge.score_plan(folder, plan, questions.load_set("boolean_logic"))
    assert rec["answer_id"] == lines[3]["answer_id"] and rec["rater"] == "auto:smollm2-135m-instruct"
    assert rec["reply"].strip()  # kept for inspection; grades the reply lacks are None, never guessed
    assert rec["total"] is None or 4 <= rec["total"] <= 20
    assert judge.score_plan(folder, plan, questions.load_set("boolean_logic")) == []  # resumable
    assert scoring.latest_scores(folder) == []  # never mixed into the human scores


@pytest.fixture
def sharp_llama3(sharp_llama3_dir):
    """Tiny untied Llama-3 with large weights: clear next-token winners, so a LoRA visibly moves the loss
    (conftest's, built once per session and shared with test_chat_kv)."""
    return sharp_llama3_dir


def test_heldout_loss_of_a_lora_only_export_applies_its_lora(sharp_llama3):
    """A LoRA-only export (base GGUF + LoRA GGUF) and the merged export of the same adapter are the same
    model: their held-out losses agree; the bare base GGUF (what was measured before) does not."""
    import pandas as pd

    from core import inference, versions
    from core.evaluate import perplexity
    from core.export.config import ExportConfig
    from core.export.gguf import main as export
    from core.paths import runs_dir
    from tests.export_helpers import make_run

    make_run(runs_dir(), "lo", str(sharp_llama3), sharp_llama3, checkpoints=(), final=True)
    export(ExportConfig(source="lo", quants=["f16"], mode="lora", verify=False))
    export(ExportConfig(source="lo", quants=["f16"], name="lo-merged", verify=False))
    rows = [{"messages": [{"role": "user", "content": q}, {"role": "assistant", "content": a}]}
            for q, a in [("Is 5 between 3 and 10?", "Yes: 5 > 3 and 5 < 10."), ("NOT true?", "False."),
                         ("What does OR do?", "OR is true when either side is true.")]]
    versions.save("held", pd.DataFrame(rows), eval_df=pd.DataFrame(rows))
    plan = EvalPlan(name="lora-ppl", models=["export:lo/lo-f16.gguf", "export:lo-merged/lo-merged-f16.gguf"],
                    heldout_dataset="held", heldout_rows=3)
    available = {m: inference.find_model(m) for m in plan.models}
    assert available["export:lo/lo-f16.gguf"].lora  # listed as base GGUF + LoRA applied at load
    lora, merged = perplexity.evaluate_models(plan_dir("lora-ppl"), plan, available)
    base = perplexity.gguf_perplexity(available["export:lo/lo-f16.gguf"].path, perplexity.heldout_rows("held", 3))
    print(f"held-out loss: base {base['loss']:.4f}, LoRA-only {lora['loss']:.4f}, merged {merged['loss']:.4f}")
    assert lora["tokens"] == merged["tokens"] == base["tokens"]
    # Both in f16: the merged weights are rounded once more than base + LoRA at runtime.
    assert lora["loss"] == pytest.approx(merged["loss"], rel=0.01)
    assert abs(base["loss"] - lora["loss"]) > 10 * abs(lora["loss"] - merged["loss"])


def test_a_failed_heldout_loss_leaves_the_judge_to_run():
    """The issue's case: held-out loss fails, yet the judge grades the answers and the job completes."""
    from core.evaluate import scoring
    from core.evaluate.job import main
    from tests.test_evaluate import failing_metrics_plan

    plan = failing_metrics_plan()
    judged = paths.read_jsonl(plan_dir(plan.name) / scoring.JUDGE)
    (plan_dir(plan.name) / scoring.JUDGE).write_text("".join(__import__("json").dumps(r) + "\n" for r in judged[1:]))
    status = jobs.read_status(main(plan))
    assert status["state"] == "completed" and "held-out loss" in status["metric_errors"]
    fresh = paths.read_jsonl(plan_dir(plan.name) / scoring.JUDGE)[-1]  # graded by the real judge just now
    assert fresh["answer_id"] == judged[0]["answer_id"] and fresh["reply"].strip()
    assert (fresh["total"] is None) == bool(fresh["ungraded"])
    assert status["judge"]["judged"] == 5 and status["judge"]["graded"] == (fresh["total"] is not None)
