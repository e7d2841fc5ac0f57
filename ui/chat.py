"""Chat widgets: model text shown as written, an answer streamed with its place in the queue, and the
Compare tab (one prompt to a grid of model × setting cells, optionally blind). Used by pages/chat.py;
the text display is for any page that shows model answers."""
from __future__ import annotations

import time
from typing import Callable

import streamlit as st

from core import inference
from core.chat import compare, transcripts
from core.errors import IrisError
from ui.text import show_text

REDRAW_S = 0.1  # seconds between redraws of a streaming answer (each redraw re-sends the text so far)


def stream_answer(stream: inference.Stream, on_text: Callable[[str], None] | None = None) -> str:
    """Show `stream` as it arrives (after telling a waiting user their place in the queue); returns the text.
    However this ends (done, Stop pressed, page left), the stream is stopped, so the model is freed."""
    try:
        wait = st.empty()
        while not stream.wait_turn(0.25):
            wait.info(f"Queued: {stream.ahead} answer(s) ahead of yours on this model (other users). "
                      "Yours starts as soon as they finish.")
        wait.empty()
        box, text, drawn = st.empty(), "", 0.0
        for piece in stream:
            text += piece
            if on_text:
                on_text(text)
            if time.monotonic() - drawn > REDRAW_S:
                show_text(text, box.container())
                drawn = time.monotonic()
        show_text(text, box.container())
        return text
    finally:
        stream.stop()
        stream.close()


def _answer_header(pos: int, cell: dict | None) -> str:
    return f"**Answer {pos + 1}**" if cell is None else f"**Answer {pos + 1}: {cell['model']['label']} · {cell['setting']}**"


def compare_tab(models: dict, system: str, custom: inference.DecodingSettings, cache: inference.EngineCache) -> None:
    """The Compare tab: pick models and settings, send one prompt to every cell, show and vote on the saved grid."""
    ss = st.session_state
    st.caption("One prompt, every (model, setting) pair: models are rows, settings are columns.")
    picked = st.multiselect("Models", list(models), default=list(models)[:2], format_func=lambda i: models[i].label,
                            key="cmp_models")
    setting_names = st.multiselect("Settings", ["A", "B", "custom"], default=["A", "B"], key="cmp_settings")
    blind = st.toggle("Blind (hide which model and setting wrote each answer)", key="cmp_blind")
    seed = st.number_input("Shuffle seed", 0, 10**6, 0, key="cmp_seed") if blind else None
    cmp_prompt = st.text_area("Prompt", key="cmp_prompt")
    if st.button("Send to grid", type="primary"):
        try:
            if not cmp_prompt.strip():
                raise IrisError("empty prompt: type a message first.")
            cells = compare.compare_grid(picked, {n: custom if n == "custom" else inference.preset(n)
                                               for n in setting_names})
            order = compare.blind_order(len(cells), int(seed)) if blind else list(range(len(cells)))
            answers: list = [None] * len(cells)
            columns = st.columns(min(len(setting_names), 4))
            for pos, i in enumerate(order):
                c = cells[i]
                with columns[pos % len(columns)]:
                    st.markdown(f"**Answer {pos + 1}**" if blind else f"**{models[c.model_id].label} · {c.setting}**")
                    s = inference.load_engine(c.model_id, cache).stream(
                        compare.compare_messages(system, cmp_prompt), c.settings)
                    stream_answer(s)
                    st.caption(transcripts.stats_line(s.stats.to_dict(), show_cache=not blind))
                    answers[i] = inference.Answer(s.text, s.stats, s.note)
            ss.compare_id = compare.save_compare(cmp_prompt, system, cells, answers, int(seed) if blind else None)
            st.rerun()  # show the saved comparison (and the vote) from disk
        except IrisError as err:
            st.error(str(err))
    if ss.compare_id:
        try:
            saved_comparison(transcripts.load_transcript(ss.compare_id))
        except IrisError as err:
            st.error(str(err))


def saved_comparison(t: dict) -> None:
    """A saved grid; blind ones show no model, setting or cache counts until the vote, then reveal labels."""
    b = t["blind"]
    hidden = bool(b) and b["choice"] is None
    order = b["order"] if b else list(range(len(t["cells"])))
    st.divider()
    st.markdown(f"**Saved comparison** · {t['title']}")
    cols = st.columns(min(len({c['setting'] for c in t['cells']}), 4))
    for pos, i in enumerate(order):
        c = t["cells"][i]
        with cols[pos % len(cols)]:
            st.markdown(_answer_header(pos, None if hidden else c))
            show_text(c["answer"])
            st.caption(transcripts.stats_line(c["stats"], show_cache=not hidden))
    if hidden:
        vote = st.radio("Which answer is best?", range(len(order)), format_func=lambda p: f"Answer {p + 1}",
                        horizontal=True, key="vote")
        if st.button("Record vote"):
            transcripts.record_vote(t["id"], int(vote))
            st.rerun()
    elif b:
        cell = t["cells"][b["preferred_cell"]]
        st.success(f"You preferred answer {b['choice'] + 1}: {cell['model']['label']} · {cell['setting']}")
