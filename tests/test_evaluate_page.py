"""The Evaluate page driven with AppTest: question-set editor, plan errors, blind scoring, results."""
from __future__ import annotations

from streamlit.testing.v1 import AppTest

from core.evaluate import questions, scoring
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
    shown = _shown(at)
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
    nxt = _shown(at)
    assert nxt != shown and nxt.endswith("q1-operator")
    # Results: the table has the score under the right model, and the CSV is offered.
    table = at.dataframe[0].value.set_index("model")
    assert table.loc[answer["model"], "human (of 20)"] == 14 and table["scored"].sum() == 1
    assert len(at.get("download_button")) == 1


def _progress_text(at: AppTest) -> str:
    return next(p.proto.text for p in at.get("progress") if p.proto.text.startswith("You scored"))


def _shown(at: AppTest) -> str:
    """The answer on screen, read back as text (it is shown escaped, so Markdown cannot change it)."""
    return next(m.value for m in at.markdown if m.value.startswith("answer by ")).replace("\\", "")


def _score(at: AppTest, points: int) -> None:
    for label in ("Correctness", "Clarity", "Examples", "Pedagogy"):
        next(s for s in at.slider if s.label == label).set_value(points)


def test_blind_scoring_walks_to_the_next_unscored_answer_marks_it_and_confirms_a_replacement():
    save_plan(EvalPlan(name="lab", models=["m-small", "m-big"]))
    fake_answers(plan_dir("lab"))
    at = _app().run()
    at.text_input(key="rater").set_value("ana").run()
    assert _progress_text(at) == "You scored 0 of 10 answers"
    seen = []
    for i in range(3):  # both answers to q1, then on to q2 by itself (no question picked by hand)
        seen.append(_shown(at))
        _score(at, 4)
        _button(at, "Save score").click().run()
        assert not at.exception and not at.error
        assert _progress_text(at) == f"You scored {i + 1} of 10 answers"
    assert [s.rsplit(" ", 1)[-1] for s in seen] == ["q1-operator", "q1-operator", "q2-and-or"]
    assert _shown(at).endswith("q2-and-or") and _shown(at) != seen[2]
    picker = at.selectbox(key="score_answer")
    marks = list(picker.options)  # AppTest holds the labels the rater reads
    assert sum("✓ scored 16/20" in m for m in marks) == 3 and sum("not scored yet" in m for m in marks) == 7
    # Going back to a scored answer: it says so, and a new score replaces it only when confirmed.
    qids = [q.id for q in questions.load_set("boolean_logic").questions]
    order = scoring.blind_order(read_answers(plan_dir("lab")), qids, at.session_state["blind_seed"])
    assert marks[0].startswith("q1-operator · answer 1 of 2 · ✓")
    picker.set_value(order[0]["answer_id"]).run()
    assert _shown(at) == seen[0]
    assert "you scored it 16/20" in next(m.value for m in at.markdown if "model hidden" in m.value)
    _score(at, 2)
    _button(at, "Replace score").click().run()
    assert any("already scored this answer 16/20" in e.value for e in at.error)
    assert sorted(s["total"] for s in scoring.latest_scores(plan_dir("lab"))) == [16, 16, 16]
    _score(at, 2)
    next(c for c in at.checkbox if c.label.startswith("Replace my earlier score")).check()
    _button(at, "Replace score").click().run()
    assert sorted(s["total"] for s in scoring.latest_scores(plan_dir("lab"))) == [8, 16, 16]
    assert _progress_text(at) == "You scored 3 of 10 answers"


def test_results_say_which_metric_failed_and_how_many_answers_the_judge_graded():
    from core.evaluate.job import main
    from tests.test_evaluate import failing_metrics_plan

    main(failing_metrics_plan())
    at = _app().run()
    assert not at.exception
    warnings = [w.value for w in at.warning]
    assert any("Completed with errors: the held-out loss failed. dataset version 'no-eval' has no eval split" in w
               for w in warnings)
    assert any("the automatic judge failed" in w and "graded 0 of 5 answers" in w and "larger judge model" in w
               for w in warnings)
    view = at.dataframe[0].value
    assert list(view.columns[:4]) == ["model", "setting", "human (of 20)", "judge (of 20)"]
    next(s for s in at.selectbox if s.label == "Quality").set_value("judge_total").run()
    infos = [i.value for i in at.info]
    assert any("the automatic judge failed" in i for i in infos)
    assert not any("add that metric to the plan" in i for i in infos)
    per_answer = at.dataframe[1].value
    assert len(per_answer) == 5 and per_answer["not graded because"].str.startswith("the reply gives no grade").all()


def test_save_and_run_shows_the_new_plans_progress_not_the_previous_one():
    from core import jobs

    save_plan(EvalPlan(name="older", models=["smollm2-135m-instruct"]))
    jobs.update_status(plan_dir("older"), state="completed", step=5, total=5, message="5 answers")
    at = _app().run()
    assert at.selectbox(key="run_pick").value == "older"
    at.text_input[0].set_value("zz-newer")  # sorts after the old plan, so index 0 would not pick it
    next(n for n in at.number_input if n.label == "Max new tokens").set_value(1)
    _button(at, "Save and run").click().run()
    try:
        assert not at.exception and any("Started zz-newer" in s.value for s in at.success)
        assert at.selectbox(key="run_pick").value == "zz-newer"
        assert at.selectbox(key="score_plan").value == at.selectbox(key="results_plan").value == "zz-newer"
        texts = [p.proto.text for p in at.get("progress")]
        assert not any(t.startswith("completed: 5/5") for t in texts), texts
    finally:
        jobs.kill(plan_dir("zz-newer"))


def test_blind_scoring_shows_the_answer_as_written_not_as_markdown():
    """A model's `2*17 + 3*5`, `**kwargs` and `# ...` reach the rater as written (st.info rendered them as
    Markdown: italics, bold, a heading), so the rater scores the text the model wrote."""
    import json

    from core.chat.display import segments
    from core.evaluate.answers import ANSWERS

    save_plan(EvalPlan(name="md", models=["m-small"]))
    fake_answers(plan_dir("md"), models=("m-small",))
    text = "84 = 2*17 + 3*5, then f(**kwargs)\n# not a heading"
    lines = [json.loads(line) for line in (plan_dir("md") / ANSWERS).read_text().splitlines()]
    (plan_dir("md") / ANSWERS).write_text("".join(json.dumps({**a, "text": text}) + "\n" for a in lines))
    at = _app().run()
    assert not at.exception
    [(kind, body, _)] = segments(text)
    assert kind == "text" and body in [m.value for m in at.markdown]
    assert not [i.body for i in at.info if "2*17" in i.body]


def test_blind_scoring_shows_the_question_and_reference_as_written():
    """Walked: a question set's "What is 2*17? Show it as 2*17 = ?" showed as "What is 217? Show it as 217 = ?" with
    the middle in italics (the question went into a Markdown line), and the reference through st.write likewise."""
    from core.chat.display import segments
    from core.evaluate.answers import ANSWERS
    from core.evaluate.plan import Cell
    from core.paths import append_jsonl

    question, reference = "What is 2*17? Show it as 2*17 = ?", "2*17 = 34, and f(**kwargs) is fine"
    questions.save_set("mdq", f"questions:\n  - id: q1\n    question: {question!r}\n    reference: {reference!r}\n")
    save_plan(EvalPlan(name="mdq", models=["m-small"], question_set="mdq"))
    cell = Cell("m-small", "A", "q1")
    append_jsonl(plan_dir("mdq") / ANSWERS, {
        "answer_id": cell.answer_id, "key": cell.key, "plan": "mdq", "model": "m-small", "model_label": "M",
        "model_kind": "gguf", "model_path": "/x/m.gguf", "file_bytes": 2**20, "lineage": {}, "setting": "A",
        "settings": {"temperature": 0.2}, "question_id": "q1", "question": question, "text": "34", "words": 1,
        "completion_tokens": 2, "gen_tok_s": 30.0, "rss_mb": 400.0})
    at = _app().run()
    assert not at.exception
    shown = [m.value for m in at.markdown]
    for text in (question, reference):
        [(kind, body, _)] = segments(text)
        assert kind == "text" and body in shown, text
    assert not [v for v in shown if "2*17?" in v]  # never the raw text, where the asterisks become italics


def test_a_new_question_set_keeps_its_typed_questions_when_it_is_named_afterwards():
    """Walked: pick "(new set)", type the questions, then change "New set name": the editor was keyed by that name,
    so renaming swapped in a fresh editor with the starter text and the typed questions were gone."""
    at = _app().run()
    at.selectbox(key="qs_pick").set_value("(new set)").run()
    typed = "questions:\n  - id: geo1\n    question: What is the capital of Peru?\n    reference: Lima\n"
    next(t for t in at.text_area if t.label.startswith("my_questions.yaml")).set_value(typed).run()
    next(t for t in at.text_input if t.label == "New set name").set_value("geography").run()
    assert next(t for t in at.text_area if t.label.startswith("geography.yaml")).value == typed
    _button(at, "Save question set").click().run()
    assert not at.exception and any("Saved 1 questions" in s.value for s in at.success)
    assert questions.load_set("geography").questions[0].question == "What is the capital of Peru?"
