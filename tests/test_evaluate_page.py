"""The Evaluate page driven with AppTest: question-set editor, plan errors, blind scoring, results."""
from __future__ import annotations

from streamlit.testing.v1 import AppTest

from core.evaluate import scoring
from core.evaluate.answers import read_answers
from core.evaluate.plan import EvalPlan, list_plans, plan_dir, save_plan
from tests.test_evaluate import fake_answers

PAGE = "../pages/evaluate.py"


def _app() -> AppTest:
    return AppTest.from_file(PAGE, default_timeout=120)


def _button(at: AppTest, label: str):
    return next(b for b in at.button if b.label == label)


def test_page_edits_question_sets_and_refuses_bad_ones():
    at = _app().run()
    assert not at.exception
    editor = next(t for t in at.text_area if t.label.startswith("boolean_logic.yaml"))
    original = editor.value
    assert "age < 18 || isStudent" in original
    editor.set_value("questions:\n  - id: q1\n    question: What is XOR?\n")
    _button(at, "Save question set").click().run()
    assert any("`questions[1].reference` is missing or empty" in e.value for e in at.error)
    editor = next(t for t in at.text_area if t.label.startswith("boolean_logic.yaml"))
    editor.set_value(original.replace("What is a Boolean operator?", "What is a logical operator?"))
    _button(at, "Save question set").click().run()
    assert any("Saved 5 questions" in s.value for s in at.success)
    from core.evaluate import questions

    assert questions.load_set("boolean_logic").questions[0].question.endswith("What is a logical operator?")


def test_plan_with_zero_models_is_one_clear_error():
    at = _app().run()
    next(m for m in at.multiselect if m.label == "Models").set_value([])
    _button(at, "Save and run").click().run()
    assert not at.exception
    assert any("zero cells" in e.value for e in at.error)
    assert list_plans() == []


def test_blind_scoring_saves_scores_for_the_answer_shown_and_results_render():
    save_plan(EvalPlan(name="lab", models=["m-small", "m-big"]))
    fake_answers(plan_dir("lab"))
    at = _app().run()
    assert not at.exception
    shown = next(i.body for i in at.info if i.body.startswith("answer by "))
    assert "Answer" in next(m.value for m in at.markdown if "model hidden" in m.value)
    at.text_input(key="rater").set_value("ana").run()
    for label, value in zip(["Correctness", "Clarity", "Examples", "Pedagogy"], [5, 4, 3, 2]):
        next(s for s in at.slider if s.label == label).set_value(value)
    next(t for t in at.text_area if t.label == "Notes").set_value("clear, one example missing")
    _button(at, "Save score").click().run()
    assert not at.exception
    [score] = scoring.latest_scores(plan_dir("lab"))
    answer = next(a for a in read_answers(plan_dir("lab")) if a["answer_id"] == score["answer_id"])
    assert answer["text"] == shown and answer["question_id"] == "q1-operator"
    assert (score["total"], score["rater"], score["notes"]) == (14, "ana", "clear, one example missing")
    # The next answer shown is another model's answer to the same question.
    nxt = next(i.body for i in at.info if i.body.startswith("answer by "))
    assert nxt != shown and nxt.endswith("q1-operator")
    # Results: the table has the score under the right model, and the CSV is offered.
    table = at.dataframe[0].value.set_index("model")
    assert table.loc[answer["model"], "human_total"] == 14 and table["scored"].sum() == 1
    assert len(at.get("download_button")) == 1
