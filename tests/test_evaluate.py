"""Evaluate: question sets, plan expansion, blind scoring that maps back, results/CSV, held-out perplexity."""
from __future__ import annotations

import io
import math

import pytest

from core import paths
from core.errors import IrisError
from core.evaluate import questions, scoring
from core.evaluate.answers import read_answers
from core.evaluate.plan import ANSWERS, Cell, EvalPlan, decoding, expand, plan_dir, resolve_models


def test_lab_question_set_ships_and_is_valid():
    assert "boolean_logic" in questions.list_sets()
    qset = questions.load_set("boolean_logic")
    assert [q.id for q in qset.questions] == ["q1-operator", "q2-and-or", "q3-not", "q4-and-range", "q5-or-student"]
    assert "x > 3 && x < 10" in qset.questions[3].question and "age < 18 || isStudent" in qset.questions[4].question
    assert all(len(q.reference) > 80 for q in qset.questions)


@pytest.mark.parametrize("text, fmt, needle", [
    ("questions:\n  - id: a\n    question: Why?\n", "yaml", "`questions\\[1\\].reference`"),
    ("questions:\n  - question: Why?\n    reference: Because.\n", "yaml", "`questions\\[1\\].id`"),
    ('{"id": "a", "reference": "r"}\n', "jsonl", "`questions\\[1\\].question`"),
    ("questions: []\n", "yaml", "no questions"),
    ('{"id": "a", "question": "q", "reference": "r", "answer": "x"}\n', "jsonl", "`questions\\[1\\].answer` is not a question field"),
    ("questions:\n  - {id: a, question: q, reference: r}\n  - {id: a, question: q2, reference: r2}\n", "yaml", "twice"),
    ("questions: [unclosed\n", "yaml", "line 2, column 1: YAML syntax error"),
])
def test_bad_question_sets_name_the_problem(text, fmt, needle):
    with pytest.raises(IrisError, match=needle):
        questions.save_set("bad", text, fmt)
    assert "bad" not in questions.list_sets()  # nothing half-written


def test_question_set_jsonl_round_trip_replaces_yaml():
    questions.save_set("mine", "questions:\n  - {id: a, question: q, reference: r}\n", "yaml")
    questions.save_set("mine", '{"id": "b", "question": "q2", "reference": "r2", "topic": "t"}\n', "jsonl")
    qset = questions.load_set("mine")
    assert [(q.id, q.topic) for q in qset.questions] == [("b", "t")]
    assert qset.path.suffix == ".jsonl" and not (questions.questions_dir() / "mine.yaml").exists()


def test_plan_yaml_round_trip_and_expansion():
    from core.config import from_yaml, to_yaml

    plan = EvalPlan(name="p", models=["smollm2-135m-instruct"], settings=["A", "B", "greedy"],
                    custom_settings={"greedy": {"temperature": 0.0}}, max_new_tokens=8, seed=3)
    assert from_yaml(EvalPlan, to_yaml(plan)) == plan
    cells, qset = expand(plan)
    assert len(cells) == 1 * 3 * 5 and len({c.key for c in cells}) == 15
    assert cells[0] == Cell("smollm2-135m-instruct", "A", "q1-operator")
    greedy = decoding(plan, "greedy")
    assert (greedy.temperature, greedy.max_new_tokens, greedy.seed) == (0.0, 8, 3)
    b = decoding(plan, "B")
    assert (b.temperature, b.top_p, b.max_new_tokens) == (0.7, 0.9, 8)


@pytest.mark.parametrize("kwargs, needle", [
    (dict(models=[], settings=["A"]), "zero cells"),
    (dict(models=["smollm2-135m-instruct"], settings=[]), "zero cells"),
    (dict(models=["export:gone/model-q4_k_m.gguf"]), "no longer exist"),
    (dict(models=["smollm2-135m-instruct"], settings=["Z"]), "neither a preset"),
    (dict(models=["smollm2-135m-instruct"], question_set="nope"), "does not exist"),
    (dict(models=["smollm2-135m-instruct"], heldout_dataset="gone"), "does not exist"),
    (dict(models=["smollm2-135m-instruct"], judge_model="run:gone"), "no model 'run:gone'"),
])
def test_bad_plans_give_one_clear_message(kwargs, needle):
    with pytest.raises(IrisError, match=needle):
        expand(EvalPlan(name="bad", **kwargs))


@pytest.mark.parametrize("kwargs, needle", [
    (dict(name="../x"), "not usable"),
    (dict(name="p", models=["a", "a"]), "twice"),
    (dict(name="p", max_new_tokens=0), "max_new_tokens"),
    (dict(name="p", custom_settings={"x": {"temprature": 1}}), "`custom_settings.x.temprature`"),
])
def test_bad_plan_fields(kwargs, needle):
    with pytest.raises(IrisError, match=needle):
        EvalPlan(**kwargs)


def test_cli_reports_a_gone_model(tmp_path):
    import subprocess
    import sys

    path = tmp_path / "plan.yaml"
    path.write_text("name: gone\nmodels: [run:deleted-run]\n")
    proc = subprocess.run([sys.executable, "-m", "core.evaluate", str(path)], capture_output=True, text=True,
                          cwd=paths.REPO_ROOT)
    assert proc.returncode == 2 and "run:deleted-run no longer exist" in proc.stderr
    from core import jobs

    assert jobs.read_status(plan_dir("gone")) == {} and not plan_dir("gone").exists()  # nothing written (#29)


def fake_answers(folder, models=("m-small", "m-big"), settings=("A",)):
    """answers.jsonl lines as the job writes them (text names the model so the test can check the join)."""
    for model in models:
        for setting in settings:
            for q in questions.load_set("boolean_logic").questions:
                cell = Cell(model, setting, q.id)
                paths.append_jsonl(folder / ANSWERS, {
                    "answer_id": cell.answer_id, "key": cell.key, "plan": folder.name, "model": model,
                    "model_label": model.upper(), "model_kind": "gguf", "model_path": f"/x/{model}.gguf",
                    "file_bytes": 2**20 * (100 if model == "m-small" else 300), "lineage": {"run": model},
                    "setting": setting, "settings": {"temperature": 0.2}, "question_id": q.id,
                    "question": q.question, "text": f"answer by {model}/{setting} to {q.id}", "words": 5,
                    "completion_tokens": 7, "gen_tok_s": 30.0 if model == "m-small" else 10.0, "rss_mb": 400.0})


def test_blind_order_is_shuffled_but_scores_map_back():
    folder = plan_dir("blind")
    fake_answers(folder, models=[f"model-{i}" for i in range(6)])
    answers = read_answers(folder)
    orders = {tuple(a["model"] for a in scoring.blind_queue(answers, "q1-operator", seed)) for seed in range(20)}
    assert len(orders) > 10  # different sessions see different orders
    q1 = scoring.blind_queue(answers, "q1-operator", 7)
    assert [a["answer_id"] for a in q1] == [a["answer_id"] for a in scoring.blind_queue(answers, "q1-operator", 7)]
    assert {a["question_id"] for a in q1} == {"q1-operator"} and len(q1) == 6
    assert set(scoring.blind_view(q1[0])) == {"answer_id", "text"}
    # Score by position in the blind order: the 1st shown gets 5s, the 2nd 1s...
    for points, ans in zip([5, 1, 3, 2, 4, 5], q1):
        scoring.save_score(folder, ans["answer_id"], {c: points for c in scoring.CRITERIA}, notes=f"p{points}")
    by_model = {a["model"]: points for points, a in zip([5, 1, 3, 2, 4, 5], q1)}
    frame = scoring.answers_frame(folder).dropna(subset=["total"])
    assert len(frame) == 6
    for _, row in frame.iterrows():
        assert row["total"] == 4 * by_model[row["model"]] and row["text"].startswith(f"answer by {row['model']}/")
    # Rescoring replaces, but only when confirmed; other raters average in.
    with pytest.raises(IrisError, match="already scored this answer 4/20"):
        scoring.save_score(folder, q1[1]["answer_id"], {c: 2 for c in scoring.CRITERIA})
    scoring.save_score(folder, q1[1]["answer_id"], {c: 2 for c in scoring.CRITERIA}, replace=True)
    scoring.save_score(folder, q1[1]["answer_id"], {c: 4 for c in scoring.CRITERIA}, rater="bo")
    row = scoring.answers_frame(folder).set_index("answer_id").loc[q1[1]["answer_id"]]
    assert (row["total"], row["raters"]) == (12.0, 2)


@pytest.mark.parametrize("scores, needle", [
    ({"correctness": 6, "clarity": 3, "examples": 3, "pedagogy": 3}, "correctness"),
    ({"correctness": 3, "clarity": 2.5, "examples": 3, "pedagogy": 3}, "clarity"),
    ({"correctness": 3, "clarity": 3, "examples": 3}, "pedagogy"),
])
def test_bad_scores_are_refused(scores, needle):
    folder = plan_dir("bad-scores")
    fake_answers(folder, models=["m"])
    aid = read_answers(folder)[0]["answer_id"]
    with pytest.raises(IrisError, match=needle):
        scoring.save_score(folder, aid, scores)
    with pytest.raises(IrisError, match="not in"):
        scoring.save_score(folder, "nope", {c: 3 for c in scoring.CRITERIA})
    assert not (folder / scoring.SCORES).exists()


def test_results_table_csv_and_charts():
    import pandas as pd

    folder = plan_dir("res")
    fake_answers(folder, settings=("A", "B"))
    for ans in read_answers(folder):
        points = 4 if ans["model"] == "m-big" else 3
        scoring.save_score(folder, ans["answer_id"], {c: points for c in scoring.CRITERIA}, notes="ok, but")
    table = scoring.results_table(folder).set_index(["model", "setting"])
    assert table.loc[("m-big", "A"), "human_total"] == 16 and table.loc[("m-small", "B"), "human_total"] == 12
    assert table.loc[("m-big", "A"), "answers"] == 5 and table.loc[("m-small", "A"), "file_mb"] == 100
    csv = pd.read_csv(io.StringIO(scoring.export_csv(folder)))
    assert len(csv) == 20 and {"model", "setting", "question_id", "text", "total", "correctness", "gen_tok_s",
                               "lineage", "notes"} <= set(csv.columns)
    assert csv.groupby("model")["total"].mean().to_dict() == {"m-big": 16, "m-small": 12}
    assert '"ok, but"' in scoring.export_csv(folder)  # commas quoted
    fig = scoring.quality_efficiency_chart(scoring.results_table(folder), "human_total", "gen_tok_s")
    points = {(t.name, x, y) for t in fig.data for x, y in zip(t.x, t.y)}
    assert ("M-BIG, A", 10.0, 16.0) in points and ("M-SMALL, B", 30.0, 12.0) in points
    with pytest.raises(IrisError, match="automatic judge"):
        scoring.quality_efficiency_chart(scoring.results_table(folder), "judge_total", "file_mb")
    assert len(scoring.score_chart(scoring.results_table(folder)).data) == 1


def test_csv_export_without_answers_is_a_clear_error():
    with pytest.raises(IrisError, match="no answers"):
        scoring.export_csv(plan_dir("empty"))


def test_jsonl_append_survives_a_torn_tail():
    folder = plan_dir("torn")
    paths.append_jsonl(folder / "x.jsonl", {"a": 1})
    with open(folder / "x.jsonl", "a") as f:
        f.write('{"a": 2, "b"')  # a writer killed mid-line
    paths.append_jsonl(folder / "x.jsonl", {"a": 3})
    assert paths.read_jsonl(folder / "x.jsonl") == [{"a": 1}, {"a": 3}]


def test_judge_reply_parsing():
    from core.evaluate.judge import parse_grades

    assert parse_grades("Correctness: 4\nclarity: 5\n**Examples**: 2\npedagogy - 3") == \
        {"correctness": 4, "clarity": 5, "examples": 2, "pedagogy": 3}
    assert parse_grades("great answer")["clarity"] is None


def test_heldout_perplexity_matches_direct_computation(tiny_llama3_dir):
    import pandas as pd
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from core import versions
    from core.evaluate import perplexity

    convs = [[{"role": "user", "content": "Is 5 between 3 and 10?"}, {"role": "assistant", "content": "Yes: 5 > 3 and 5 < 10."}],
             [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "NOT true?"},
              {"role": "assistant", "content": "False."}],
             [{"role": "user", "content": "AND or OR?"}, {"role": "assistant", "content": "OR is true if either side is."}]]
    rows = pd.DataFrame({"messages": convs})
    versions.save("heldout", rows.head(1), eval_df=rows)
    assert perplexity.heldout_rows("heldout", 10) == convs
    got = perplexity.hf_perplexity(tiny_llama3_dir, perplexity.heldout_rows("heldout", 10))

    tok = AutoTokenizer.from_pretrained(tiny_llama3_dir)
    model = AutoModelForCausalLM.from_pretrained(tiny_llama3_dir, dtype=torch.float32).eval()
    nll, n = 0.0, 0
    with torch.no_grad():
        for msgs in convs:
            ids = torch.tensor([tok.apply_chat_template(msgs, tokenize=True, return_dict=True)["input_ids"]])
            loss = model(input_ids=ids, labels=ids).loss.item()  # mean over the len-1 shifted targets
            nll += loss * (ids.shape[1] - 1)
            n += ids.shape[1] - 1
    assert got["tokens"] == n and got["rows"] == 3
    assert got["loss"] == pytest.approx(nll / n, rel=1e-5)
    assert got["perplexity"] == pytest.approx(math.exp(nll / n), rel=1e-5)
    # Through a plan: written once to metrics.jsonl, not recomputed on resume.
    plan = EvalPlan(name="ppl", models=[str(tiny_llama3_dir)], heldout_dataset="heldout", heldout_rows=2)
    available = resolve_models(plan)
    assert available[str(tiny_llama3_dir)].kind == "hf"
    first = perplexity.evaluate_models(plan_dir("ppl"), plan, available)
    assert len(first) == 1 and first[0]["rows"] == 2 and perplexity.evaluate_models(plan_dir("ppl"), plan, available) == []
    assert perplexity.read_metrics(plan_dir("ppl"))[0]["perplexity"] == pytest.approx(first[0]["perplexity"])


def test_heldout_needs_an_eval_split():
    import pandas as pd

    from core import versions
    from core.evaluate import perplexity

    versions.save("noeval", pd.DataFrame({"messages": [[{"role": "user", "content": "hi"}]]}))
    with pytest.raises(IrisError, match="no eval split"):
        perplexity.heldout_rows("noeval", 5)


def test_blind_order_walks_every_question_and_next_unscored_moves_on():
    folder = plan_dir("walk")
    fake_answers(folder)
    qids = [q.id for q in questions.load_set("boolean_logic").questions]
    order = scoring.blind_order(read_answers(folder), qids, session_seed=5)
    assert [a["question_id"] for a in order] == [q for q in qids for _ in range(2)]
    ids = [a["answer_id"] for a in order]
    assert scoring.next_unscored(order, set()) == ids[0]
    assert scoring.next_unscored(order, {ids[0]}, after=ids[0]) == ids[1]
    # After the last answer of one question comes the next question's first, not answer 1 again.
    assert scoring.next_unscored(order, set(ids[:2]), after=ids[1]) == ids[2]
    # Unscored answers before the current one are found by wrapping around; none left → None.
    assert scoring.next_unscored(order, set(ids[1:]), after=ids[5]) == ids[0]
    assert scoring.next_unscored(order, set(ids), after=ids[3]) is None


def planned_answers(plan: EvalPlan) -> list[dict]:
    """answers.jsonl as the job writes it for `plan` (same decoding values and question text), so a job
    run on the plan finds every answer already made and goes straight to its metrics."""
    from core.evaluate.answers import _settings_dict

    cells, qset = expand(plan)
    for cell in cells:
        paths.append_jsonl(plan_dir(plan.name) / ANSWERS, {
            "answer_id": cell.answer_id, "key": cell.key, "plan": plan.name, "model": cell.model,
            "model_label": "SmolLM2-135M-Instruct Q4_1 (embedded)", "model_kind": "gguf", "model_path": "/x/s.gguf",
            "file_bytes": 2**20, "lineage": {}, "setting": cell.setting,
            "settings": _settings_dict(decoding(plan, cell.setting)), "question_id": cell.question_id,
            "question": qset.get(cell.question_id).question, "text": f"answer to {cell.question_id}", "words": 3,
            "completion_tokens": 4, "gen_tok_s": 50.0, "wall_s": 0.2, "rss_mb": 300.0})
    return read_answers(plan_dir(plan.name))


def free_text_judge(plan: EvalPlan, answers: list[dict]) -> None:
    """judge.jsonl as a 135M judge wrote it in the issue: free-text replies, no parseable grade."""
    from core.evaluate.judge import parse_grades, ungraded_reason

    for ans in answers:
        reply = "This answer is good and explains the operator well."
        grades = parse_grades(reply)
        paths.append_jsonl(plan_dir(plan.name) / scoring.JUDGE, {
            "answer_id": ans["answer_id"], "judge": plan.judge_model, "rater": f"auto:{plan.judge_model}",
            **grades, "total": None, "ungraded": ungraded_reason(reply, grades), "reply": reply})


def failing_metrics_plan() -> EvalPlan:
    """A plan whose held-out loss fails (the version has no eval split) and whose judge graded nothing."""
    import pandas as pd

    from core import versions

    versions.save("no-eval", pd.DataFrame({"messages": [[{"role": "user", "content": "hi"}]]}))
    plan = EvalPlan(name="metrics", models=["smollm2-135m-instruct"], heldout_dataset="no-eval",
                    judge_model="smollm2-135m-instruct")
    free_text_judge(plan, planned_answers(plan))
    return plan


def test_a_failing_metric_does_not_fail_the_evaluation_and_an_ungrading_judge_is_an_error():
    from core import jobs
    from core.evaluate.job import main

    plan = failing_metrics_plan()
    folder = main(plan)
    status = jobs.read_status(folder)
    assert status["state"] == "completed" and status["error"] is None
    assert "completed with errors: held-out loss failed, automatic judge failed" in status["message"]
    errors = status["metric_errors"]
    assert errors["held-out loss"] == "dataset version 'no-eval' has no eval split: save it with an eval split."
    assert errors["automatic judge"].startswith("automatic judge smollm2-135m-instruct graded 0 of 5 answers; "
                                                "5 of its replies had no parseable grade")
    assert "larger judge model" in errors["automatic judge"]
    assert status["judge"] == {"judge": "smollm2-135m-instruct", "answers": 5, "judged": 5, "graded": 0,
                               "ungraded": 5}
    # Results name the failure instead of asking for a metric that was in the plan.
    results = scoring.results_table(folder)
    with pytest.raises(IrisError, match="the automatic judge failed .*graded 0 of 5") as err:
        scoring.quality_efficiency_chart(results, "judge_total", "gen_tok_s", errors)
    assert "add that metric to the plan" not in str(err.value)
    with pytest.raises(IrisError, match="replied to 5 answers but gave no parseable grade"):
        scoring.quality_efficiency_chart(results, "judge_total", "gen_tok_s")  # from the table alone
    judged = scoring.judge_answers(folder)
    assert len(judged) == 5 and judged["judge (of 20)"].isna().all()
    assert set(judged["not graded because"]) == {
        "the reply gives no grade for correctness, clarity, examples, pedagogy "
        "(expected lines 'criterion: N' with N from 1 to 5)"}


def test_judge_summary_counts_graded_and_ungraded():
    from core.evaluate import judge

    plan = EvalPlan(name="half", models=["smollm2-135m-instruct"], judge_model="smollm2-135m-instruct")
    answers = planned_answers(plan)
    free_text_judge(plan, answers[:2])
    for ans in answers[2:4]:
        paths.append_jsonl(plan_dir("half") / scoring.JUDGE, {
            "answer_id": ans["answer_id"], "judge": plan.judge_model, "rater": f"auto:{plan.judge_model}",
            **{c: 4 for c in scoring.CRITERIA}, "total": 16, "ungraded": "", "reply": "correctness: 4 ..."})
    summary = judge.summary(plan_dir("half"), plan.judge_model)
    assert summary == {"judge": plan.judge_model, "answers": 5, "judged": 4, "graded": 2, "ungraded": 2}
    assert judge.summary_line(summary).startswith("automatic judge smollm2-135m-instruct graded 2 of 5 answers; "
                                                  "2 of its replies had no parseable grade")
    assert judge.ungraded_reason("", {c: None for c in scoring.CRITERIA}) == "the judge replied nothing"
    assert judge.ungraded_reason("correctness: 3", judge.parse_grades("correctness: 3")).startswith(
        "the reply gives no grade for clarity, examples, pedagogy")


def test_results_table_leads_with_scores_under_short_labels():
    folder = plan_dir("view")
    fake_answers(folder, models=["export:lab2/lab2-q4_k_m.gguf", "run:bq@checkpoint-20"])
    aid = read_answers(folder)[0]["answer_id"]
    scoring.save_score(folder, aid, {c: 4 for c in scoring.CRITERIA})
    view = scoring.results_view(scoring.results_table(folder))
    assert list(view.columns[:4]) == ["model", "setting", "human (of 20)", "judge (of 20)"]
    assert list(view.columns[-2:]) == ["label", "path"]
    assert set(view["model"]) == {"lab2 · lab2-q4_k_m.gguf", "bq@checkpoint-20"}
    assert set(view["path"]) == {"/x/export:lab2/lab2-q4_k_m.gguf.gguf", "/x/run:bq@checkpoint-20.gguf"}
    assert scoring.short_label("export:lab2/lab2-f16.gguf", {"quant": "F16", "lora": "l.gguf"}) == "lab2 · F16 + LoRA"
    assert {"gen tok/s", "tok/s incl. prompt"} <= set(view.columns)
    assert "Chat" in scoring.RESULT_COLUMNS["gen_tok_s"][1]  # says how it relates to Chat's tok/s


def test_heldout_loss_of_one_broken_model_does_not_cost_the_others(tiny_llama3_dir, tmp_path):
    import pandas as pd

    from core import versions
    from core.evaluate import perplexity

    broken = tmp_path / "broken"
    broken.mkdir()
    (broken / "config.json").write_text("{}")  # a transformers folder with no model in it
    rows = pd.DataFrame({"messages": [[{"role": "user", "content": "NOT true?"},
                                       {"role": "assistant", "content": "False."}]]})
    versions.save("held1", rows, eval_df=rows)
    plan = EvalPlan(name="two", models=[str(broken), str(tiny_llama3_dir)], heldout_dataset="held1")
    with pytest.raises(IrisError, match=rf"held-out loss failed for {broken} \(.+\); measured 1 other model"):
        perplexity.evaluate_models(plan_dir("two"), plan, resolve_models(plan))
    [measured] = perplexity.read_metrics(plan_dir("two"))
    assert measured["model"] == str(tiny_llama3_dir) and measured["loss"] > 0
