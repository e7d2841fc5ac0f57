"""The Evaluate page's live views: blind scoring and results, redrawn every 2 s while the plan's job runs.

They live here, not in pages/evaluate.py, to keep the page short; the logic they call is core.evaluate's.
"""
from pathlib import Path

import streamlit as st

from core import jobs
from core.errors import IrisError
from core.evaluate import judge, questions, scoring
from core.evaluate.answers import read_answers
from core.evaluate.plan import load_plan, plan_dir
from ui.text import show_text


def live(view, plan: str, *args) -> None:
    """Draw `view(plan, *args)` in a fragment that reruns every 2 s while the plan's job is active, so
    answers, progress and results appear as the job writes them (not only after the next click)."""
    active = jobs.read_status(plan_dir(plan)).get("state") in jobs.ACTIVE
    st.fragment(run_every=2 if active else None)(view)(plan, *args)


def _answer_label(order: list[dict], mine: dict, qset) -> dict[str, str]:
    """answer_id → 'q2-and-or · answer 1 of 2 · ✓ 16/20' (the model stays hidden)."""
    labels, per_q = {}, {}
    for a in order:
        per_q.setdefault(a["question_id"], []).append(a["answer_id"])
    for qid, ids in per_q.items():
        for i, aid in enumerate(ids, 1):
            mark = f"✓ scored {mine[aid]['total']}/20" if aid in mine else "not scored yet"
            labels[aid] = f"{qid} · answer {i} of {len(ids)} · {mark}"
    return labels


def score_view(pick: str, rater: str) -> None:
    """One answer at a time, model hidden; after a save, the next unscored answer of any question."""
    folder = plan_dir(pick)
    try:
        qset = questions.load_set(load_plan(pick).question_set)
    except IrisError as err:
        st.error(str(err))
        return
    order = scoring.blind_order(read_answers(folder), [q.id for q in qset.questions], st.session_state["blind_seed"])
    mine = scoring.rater_scores(folder, rater)
    done = sum(a["answer_id"] in mine for a in order)
    st.progress(done / len(order) if order else 0.0, text=f"You scored {done} of {len(order)} answers")
    if not order:
        st.info("No answers yet: they appear here as the job writes them.")
        return
    if saved := st.session_state.pop("score_saved", None):
        st.success(saved)
    ids = [a["answer_id"] for a in order]
    if "score_next" in st.session_state:
        st.session_state["score_answer"] = st.session_state.pop("score_next")
    if st.session_state.get("score_answer") not in ids:
        st.session_state["score_answer"] = scoring.next_unscored(order, set(mine)) or ids[0]
    if done == len(order):
        st.success("You scored every answer. Pick one below to change its score.")
    labels = _answer_label(order, mine, qset)
    aid = st.selectbox("Answer", ids, format_func=labels.get, key="score_answer")
    ans = next(a for a in order if a["answer_id"] == aid)
    q = qset.get(ans["question_id"])
    st.markdown(f"**Question {[x.id for x in qset.questions].index(q.id) + 1} of {len(qset.questions)}:**")
    show_text(q.question)  # as written: a question about `2*17` or `**kwargs` is not Markdown either
    earlier = mine.get(aid)
    same_q = [a["answer_id"] for a in order if a["question_id"] == q.id]
    st.markdown(f"**Answer {same_q.index(aid) + 1} of {len(same_q)}** (model hidden)"
                + (f" · ✓ you scored it {earlier['total']}/20" if earlier else ""))
    with st.container(border=True):  # the model's text as written: `2*17` and `**kwargs` are not Markdown
        show_text(ans["text"], empty="*(empty answer)*")
    with st.form(f"score_{aid}"):
        values = {c: st.slider(c.capitalize(), 1, 5, int(earlier[c]) if earlier else 3, help=scoring.CRITERIA_HELP[c])
                  for c in scoring.CRITERIA}
        notes = st.text_area("Notes", earlier["notes"] if earlier else "")
        replace = earlier is not None and st.checkbox(f"Replace my earlier score ({earlier['total']}/20)")
        if st.form_submit_button("Replace score" if earlier else "Save score"):
            try:
                rec = scoring.save_score(folder, aid, values, notes, rater, replace=replace)
                nxt = scoring.next_unscored(order, set(mine) | {aid}, after=aid)
                st.session_state["score_next"] = nxt or aid
                st.session_state["score_saved"] = f"Saved: {rec['total']}/20." + ("" if nxt else " All answers scored.")
                st.rerun()
            except IrisError as err:
                st.error(str(err))
    with st.expander("Reference answer (look after scoring)"):
        show_text(q.reference)


def metric_notes(status: dict) -> None:
    """Which metrics failed and why, and how many answers the automatic judge could grade."""
    for metric, why in (status.get("metric_errors") or {}).items():
        st.warning(f"Completed with errors: the {metric} failed. {why}")
    summary = status.get("judge")
    if summary and summary.get("judge") and "automatic judge" not in (status.get("metric_errors") or {}):
        (st.warning if summary["ungraded"] else st.caption)(judge.summary_line(summary) + ".")


def results_view(pick: str) -> None:
    """Scores first, then held-out loss, speed and size; charts; the judge per answer; the CSV."""
    folder = plan_dir(pick)
    status = jobs.read_status(folder)
    metric_notes(status)
    table = scoring.results_table(folder)
    if table.empty:
        st.info("No answers yet: they appear here as the job writes them.")
        return
    config = {head: st.column_config.Column(help=help) for head, help in scoring.RESULT_COLUMNS.values()}
    st.dataframe(scoring.results_view(table), hide_index=True, width="stretch", column_config=config)
    st.caption("Hover a header for what each column measures. gen tok/s: "
               + scoring.RESULT_COLUMNS["gen_tok_s"][1][0].lower() + scoring.RESULT_COLUMNS["gen_tok_s"][1][1:])
    st.plotly_chart(scoring.score_chart(table), key="score_chart", width="stretch")
    c1, c2 = st.columns(2)
    quality = c1.selectbox("Quality", list(scoring.QUALITY), format_func=scoring.QUALITY.get)
    efficiency = c2.selectbox("Efficiency", list(scoring.EFFICIENCY), format_func=scoring.EFFICIENCY.get)
    try:
        chart = scoring.quality_efficiency_chart(table, quality, efficiency, status.get("metric_errors"))
        st.plotly_chart(chart, key="qe_chart", width="stretch")
    except IrisError as err:
        st.info(str(err))
    judged = scoring.judge_answers(folder)
    if len(judged):
        with st.expander(f"Automatic judge, per answer ({judged['judge (of 20)'].notna().sum()} of {len(judged)} graded)"):
            st.dataframe(judged, hide_index=True, width="stretch")
    st.download_button("Download answers + scores (CSV)", scoring.export_csv(folder),
                       file_name=f"{Path(folder).name}-answers.csv", mime="text/csv")
