"""Chat page: talk to any model version on the CPU, or send one prompt to a grid of (model, setting) cells."""
import streamlit as st

from core import inference
from core.chat import compare, transcripts
from core.errors import IrisError
from ui.forms import decoding_inputs
from ui.serve_panel import serve_panel


@st.cache_resource
def engines() -> inference.EngineCache:
    """Loaded models, shared by every browser session of this server (LRU, lock around generation)."""
    return inference.EngineCache()

ss = st.session_state
if "messages" not in ss:
    ss.update(messages=[], transcript=None, partial=None, compare_id=None)

st.title("Chat")
models = {m.id: m for m in inference.list_chat_models()}
with st.sidebar:
    model_id = st.selectbox("Model", list(models), format_func=lambda i: models[i].label, key="model")
    system = st.text_area("System prompt", transcripts.DEFAULT_SYSTEM, key="system")
    choice = st.radio("Decoding", ["A", "B", "custom"], horizontal=True, key="preset",
                      help="A: temperature 0.2 / top_p 0.7 (focused) · B: 0.7 / 0.9 (varied)")
    base = inference.preset("A" if choice == "custom" else choice)
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
                ss.update(messages=t["messages"], transcript=t["id"], partial=None)
                st.info(f"Reopened a chat with {t['model']['label']} (system prompt and settings as saved: "
                        f"{t['settings']}).")
            else:
                ss.update(compare_id=t["id"])
        except IrisError as err:
            st.error(str(err))
    serve_panel(model_id)
tab_chat, tab_compare = st.tabs(["Chat", "Compare"])

with tab_chat:
    if ss.partial:  # the stop button interrupted the last answer: keep what had arrived
        ss.messages.append({"role": "assistant", "content": ss.partial, "note": "stopped"})
        ss.partial = None
        ss.transcript = transcripts.save_chat(model_id, system, settings, ss.messages, ss.transcript)
    for m in ss.messages:
        with st.chat_message(m["role"]):
            st.markdown(m["content"])
            if m.get("note"):
                st.caption(f"⚠ {m['note']}")
            if m.get("stats"):
                st.caption(transcripts.stats_line(m["stats"]))
    prompt = st.chat_input("Ask something")
    if prompt is not None:
        messages = transcripts.chat_messages(system, ss.messages, prompt)
        try:
            stream = inference.load_engine(model_id, engines()).stream(messages, settings)
            ss.messages.append({"role": "user", "content": prompt})
            with st.chat_message("user"):
                st.markdown(prompt)
            with st.chat_message("assistant"):
                if stream.note:
                    st.caption(f"⚠ {stream.note}")
                st.button("Stop", key="stop")

                def pieces():
                    ss.partial = ""
                    for piece in stream:
                        ss.partial += piece
                        yield piece

                st.write_stream(pieces())
                ss.partial = None
                st.caption(transcripts.stats_line(stream.stats.to_dict()))
            ss.messages.append({"role": "assistant", "content": stream.text, "stats": stream.stats.to_dict(),
                                "note": stream.note})
            ss.transcript = transcripts.save_chat(model_id, system, settings, ss.messages, ss.transcript)
        except IrisError as err:
            ss.partial = None
            st.error(str(err))

with tab_compare:
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
            cells = compare.compare_grid(picked, {n: settings if n == "custom" else inference.preset(n)
                                               for n in setting_names})
            order = compare.blind_order(len(cells), int(seed)) if blind else list(range(len(cells)))
            answers: list = [None] * len(cells)
            columns = st.columns(min(len(setting_names), 4))
            for pos, i in enumerate(order):
                c = cells[i]
                with columns[pos % len(columns)]:
                    st.markdown(f"**Answer {pos + 1}**" if blind else f"**{models[c.model_id].label} · {c.setting}**")
                    s = inference.load_engine(c.model_id, engines()).stream(
                        compare.compare_messages(system, cmp_prompt), c.settings)
                    st.write_stream(s)
                    st.caption(transcripts.stats_line(s.stats.to_dict()))
                    answers[i] = inference.Answer(s.text, s.stats, s.note)
            ss.compare_id = compare.save_compare(cmp_prompt, system, cells, answers, int(seed) if blind else None)
            st.rerun()  # show the saved comparison (and the vote) from disk
        except IrisError as err:
            st.error(str(err))
    if ss.compare_id:
        try:
            t = transcripts.load_transcript(ss.compare_id)
            b = t["blind"]
            order = b["order"] if b else list(range(len(t["cells"])))
            st.divider()
            st.markdown(f"**Saved comparison** · {t['title']}")
            cols = st.columns(min(len({c['setting'] for c in t['cells']}), 4))
            for pos, i in enumerate(order):
                c = t["cells"][i]
                hidden = b and b["choice"] is None
                with cols[pos % len(cols)]:
                    st.markdown(f"**Answer {pos + 1}**" if hidden else f"**Answer {pos + 1}: {c['model']['label']} · "
                                f"{c['setting']}**")
                    st.markdown(c["answer"])
                    st.caption(transcripts.stats_line(c["stats"]))
            if b and b["choice"] is None:
                vote = st.radio("Which answer is best?", range(len(order)), format_func=lambda p: f"Answer {p + 1}",
                                horizontal=True, key="vote")
                if st.button("Record vote"):
                    transcripts.record_vote(t["id"], int(vote))
                    st.rerun()
            elif b:
                st.success(f"You preferred answer {b['choice'] + 1}: {b['preferred']['model']} · "
                           f"{b['preferred']['setting']}")
        except IrisError as err:
            st.error(str(err))
