"""Chat page: talk to any model version on the CPU, or send one prompt to a grid of (model, setting) cells."""
import streamlit as st

from core import inference
from core.chat import transcripts
from core.errors import IrisError
from ui import chat as chat_ui
from ui.forms import decoding_inputs
from ui.serve_panel import serve_panel
from ui.text import show_text


@st.cache_resource
def engines() -> inference.EngineCache:
    """Loaded models, shared by every browser session of this server (LRU, one answer at a time per model)."""
    return inference.EngineCache()

ss = st.session_state
if "messages" not in ss:
    ss.update(messages=[], transcript=None, partial=None, compare_id=None, custom=None, notice=None)
models = {m.id: m for m in inference.list_chat_models()}
if ss.get("restore"):  # a transcript was opened on the last run: follow its last answer's model and settings
    r = ss.pop("restore")
    ss.update(system=r["system"], preset=r["preset"], custom=r["settings"] if r["preset"] == "custom" else None)
    if r["model_id"] in models:
        ss.model = r["model_id"]
    else:
        ss.notice = f"{ss.notice} Its model {r['model_id']!r} no longer exists: pick another to continue."
if ss.get("model") not in models:
    ss.model = inference.default_model(list(models.values())).id  # the newest export, else the embedded model
ss.setdefault("system", transcripts.DEFAULT_SYSTEM)

st.title("Chat")
with st.sidebar:
    model_id = st.selectbox("Model", list(models), format_func=lambda i: models[i].label, key="model")
    system = st.text_area("System prompt", key="system")
    choice = st.radio("Decoding", ["A", "B", "custom"], horizontal=True, key="preset",
                      help="A: temperature 0.2 / top_p 0.7 (focused) · B: 0.7 / 0.9 (varied) · max new tokens 512")
    base = transcripts.chat_settings(choice, ss.custom)
    with st.expander("Custom settings", expanded=choice == "custom"):
        custom = decoding_inputs(st, base)
    settings = inference.DecodingSettings(**custom) if choice == "custom" else base
    if st.button("New chat"):
        ss.update(messages=[], transcript=None, partial=None)
    st.subheader("Loaded models")
    st.caption("  \n".join(f"{e['label']}: ≈ {e['ram_bytes'] / 2**20:,.0f} MiB RAM" for e in engines().loaded()))
    st.subheader("Transcripts")
    saved = transcripts.list_transcripts()
    labels = {t["id"]: f"{t['created']} · {t['kind']} · {t['title']}" for t in saved}
    pick = st.selectbox("Saved", list(labels), index=None, key="pick", format_func=labels.get)
    if pick and st.button("Open"):
        try:
            t = transcripts.load_transcript(pick)
            if t["kind"] == "chat":
                restore = transcripts.reopen_state(t)
                ss.update(messages=t["messages"], transcript=t["id"], partial=None, restore=restore,
                          notice=f"Reopened a chat last answered by {t['model']['label']} (model, system prompt "
                                 "and settings as saved).")
                st.rerun()
            ss.update(compare_id=t["id"])
        except IrisError as err:
            st.error(str(err))
    if ss.notice:
        st.info(ss.notice)
    serve_panel(model_id)

tab_chat, tab_compare = st.tabs(["Chat", "Compare"])

with tab_chat:
    if ss.partial:  # the stop button (or leaving the page) interrupted the last answer: keep what had arrived
        ss.messages.append({**ss.partial, "note": "stopped"})
        ss.partial = None
        ss.transcript = transcripts.save_chat(model_id, system, settings, ss.messages, ss.transcript)
    for m, took_over in zip(ss.messages, transcripts.answered_by(ss.messages)):
        with st.chat_message(m["role"]):
            if took_over:
                st.caption(f"Model: {took_over}")
            show_text(m["content"])
            if m.get("note"):
                st.caption(f"⚠ {m['note']}")
            if m.get("stats"):
                st.caption(transcripts.stats_line(m["stats"]))
    last = ss.messages[-1] if ss.messages else {}
    resume = (last.get("stats") or {}).get("finish_reason") == "length" and st.button(
        "Continue", help=f"Send “{transcripts.CONTINUE}” so the model goes on where the limit cut it.")
    if ss.get("chat_error"):
        st.error(ss.pop("chat_error"))
    if ss.get("refill"):  # a refused message goes back into the box, to shorten rather than retype
        ss.chat_box = ss.pop("refill")
    prompt = st.chat_input("Ask something", key="chat_box") or (transcripts.CONTINUE if resume else None)
    if prompt:
        try:
            messages = transcripts.chat_messages(system, ss.messages, prompt)
            stream = inference.load_engine(model_id, engines()).stream(messages, settings)
        except IrisError as err:
            ss.update(chat_error=str(err), refill=prompt)
            st.rerun()
        ss.messages.append({"role": "user", "content": prompt})
        history, history_id = list(ss.messages), ss.transcript or transcripts.new_id("chat")
        ss.transcript = history_id
        with st.chat_message("user"):
            show_text(prompt)
        with st.chat_message("assistant"):
            if stream.note:
                st.caption(f"⚠ {stream.note}")
            st.button("Stop", key="stop")
            record = transcripts.answer_message("", {}, stream.note, model_id, settings, choice)
            ss.partial = {**record, "content": ""}  # Stop before the first token still leaves a "stopped" answer
            so_far = [""]  # the answer's text outside session state, which a stopping script may no longer read

            def on_text(text: str) -> None:
                so_far[0] = text
                ss.partial = {**record, "content": text}
            try:
                chat_ui.stream_answer(stream, on_text)
            except IrisError as err:  # failed mid-answer (model deleted?): unsend the message, keep its text
                ss.messages.pop()
                ss.update(partial=None, chat_error=str(err), refill=prompt)
                st.rerun()
            except BaseException:  # Stop, or the tab reloaded / closed (its session ends, nothing reruns): save
                # the question and the answer so far now, so the Saved list has them at once, in any tab
                stopped = {**record, "content": so_far[0], "note": "stopped"}
                transcripts.save_chat(model_id, system, settings, history + [stopped], history_id)
                raise
        ss.messages.append(transcripts.answer_message(stream.text, stream.stats.to_dict(), stream.note, model_id,
                                                      settings, choice))
        ss.partial = None
        ss.transcript = transcripts.save_chat(model_id, system, settings, ss.messages, ss.transcript)
        st.rerun()  # draw the finished chat as a reload would: no Stop button, input at the bottom, loaded models

with tab_compare:  # its "custom" column is the Custom settings sliders, whichever preset the chat itself uses
    chat_ui.compare_tab(models, system, inference.DecodingSettings(**custom), engines())
