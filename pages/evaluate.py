"""Evaluate: question sets, evaluation plans run as jobs, blind rubric scoring, results and quality vs speed."""
import streamlit as st

from core import inference, jobs, versions
from core.errors import IrisError
from core.evaluate import questions, scoring
from core.evaluate.job import launch as launch_plan
from core.evaluate.judge import judge_candidates
from core.evaluate.plan import EvalPlan, expand, list_plans, load_plan, plan_dir
from core.export import study as quant_study
from ui.evaluate import live, metric_notes, results_view, score_view
from ui.progress import job_panel

st.title("Evaluate")
st.caption("Ask every model the same questions, score the answers blind on the lab's 20-point rubric, "
           "and weigh quality against CPU speed and size.")
t_questions, t_plan, t_score, t_results = st.tabs(["Question sets", "Plan & run", "Score (blind)", "Results"])

with t_questions:
    sets = questions.list_sets()
    name = st.selectbox("Question set", sets + ["(new set)"], key="qs_pick")
    new = name == "(new set)"
    if new:
        name = st.text_input("New set name", "my_questions")
    path = None if new else questions.set_path(name)
    fmt = "jsonl" if path is not None and path.suffix == ".jsonl" else "yaml"
    starter = "questions:\n  - id: q1\n    question: ...\n    reference: ...\n"
    text = st.text_area(f"{name}.{fmt} (each question needs id, question, reference)",
                        starter if path is None else path.read_text(encoding="utf-8"), height=320,
                        key=f"qs_text_{st.session_state.qs_pick}")  # the pick, not the name: renaming keeps the text
    if st.button("Save question set", key="qs_save"):
        try:
            saved = questions.save_set(name, text, fmt)
            st.success(f"Saved {len(saved.questions)} questions to {saved.path}.")
        except IrisError as err:
            st.error(str(err))

with t_plan:
    models = {m.id: m.label for m in inference.list_chat_models()}
    eval_sets = [""] + [v["name"] for v in versions.list_versions() if v["rows"]["eval"]]
    with st.form("plan"):
        plan_name = st.text_input("Plan name", "boolean-logic")
        chosen = st.multiselect("Models", list(models), default=list(models)[:1], format_func=models.get)
        settings = st.multiselect("Decoding settings", list(inference.PRESETS), default=["A"],
                                  help="A: temperature 0.2 / top-p 0.7 (focused); B: 0.7 / 0.9 (more varied)")
        c1, c2, c3 = st.columns(3)
        qset = c1.selectbox("Question set", questions.list_sets())
        max_new = c2.number_input("Max new tokens", 1, 4096, 256)
        seed = c3.number_input("Seed", 0, 2**31 - 1, 0)
        heldout = st.selectbox("Held-out loss on (optional)", eval_sets, format_func=lambda v: v or "(none)")
        judge = st.selectbox("Automatic judge (optional GGUF)", [""] + [m.id for m in judge_candidates()],
                             format_func=lambda v: models.get(v, "(none)"),
                             help="A model that grades each answer against the reference. The embedded 135M "
                                  "model rarely gives a parseable grade; a larger one (1B or more) is more likely to.")
        submitted = st.form_submit_button("Save and run")
    if submitted:
        try:
            plan = EvalPlan(name=plan_name, models=chosen, settings=settings, question_set=qset,
                            seed=int(seed), max_new_tokens=int(max_new), heldout_dataset=heldout, judge_model=judge)
            cells, _ = expand(plan)
            launch_plan(plan)
            for key in ("run_pick", "score_plan", "results_plan"):  # the new plan, not the one picked before
                st.session_state[key] = plan.name
            st.success(f"Started {plan.name}: {len(cells)} answers to produce (already produced ones are kept).")
        except IrisError as err:
            st.error(str(err))

    plans = list_plans()
    if not plans:
        st.info("No plans yet.")
    else:
        if "run_pick" not in st.session_state and (running := jobs.active_job("evaluation")) and running["name"] in plans:
            st.session_state["run_pick"] = running["name"]  # a fresh session (an app restart) reattaches to it
        pick = st.selectbox("Plan", plans, key="run_pick")

        def resume(status: dict) -> None:
            metric_notes(status)
            if status.get("state") not in jobs.ACTIVE and st.button("Resume / rerun", key="run_resume"):
                try:
                    launch_plan(load_plan(pick))
                except IrisError as err:
                    st.error(str(err))

        job_panel(plan_dir(pick), unit="answers", extra=resume)

with t_score:
    plans = list_plans()
    if not plans:
        st.info("Run a plan first.")
    else:
        pick = st.selectbox("Plan to score", plans, key="score_plan")
        rater = st.text_input("Your name (scores are kept per rater)", key="rater")
        if "blind_seed" not in st.session_state:
            st.session_state["blind_seed"] = scoring.new_session_seed()
        live(score_view, pick, rater)

with t_results:
    plans = list_plans()
    if plans:
        live(results_view, st.selectbox("Plan", plans, key="results_plan"))

# Quant studies from the Export page (core.export.study): each quant's quality against speed on this machine.
with t_results:
    if studies := quant_study.list_studies():
        with st.expander("Quant studies: quality vs generation speed per quant (from the Export page)"):
            study_name = st.selectbox("Study", list(studies), key="quant_study")
            st.plotly_chart(quant_study.figure(studies[study_name], study_name), key="quant_study_chart")
            st.dataframe(quant_study.table(studies[study_name]), hide_index=True)
