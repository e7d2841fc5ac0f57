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
