"""Train: build a TrainConfig, see its memory/time estimate, launch it outside this app, watch, stop, resume."""
import plotly.graph_objects as go
import streamlit as st

from core import jobs, models, train, versions
from core.errors import IrisError
from core.estimate import GIB, detect_device, estimate, fill_card
from core.train_config import BACKENDS, OPTIMIZERS, TrainConfig, list_presets, load_preset

st.title("Train")
device = st.cache_data(ttl=60)(detect_device)()
presets = list_presets()
new, watch = st.tabs(["New run", "Runs"])

with new:
    preset = st.selectbox("Preset", list(presets), help="Fills the form; change anything after.")
    base = load_preset(preset)
    if st.session_state.get("fill") == preset:
        base.__dict__.update(st.session_state["fill_values"])
    k = f"{preset}-{st.session_state.get('fill_n', 0)}-"  # new widget keys when the preset changes
    model_ids = [m.id for m in models.list_models()]
    labels = {m.id: f"{m.label} — {m.note}" if m.note else m.label for m in models.list_models()}
    if base.base_model not in model_ids:
        model_ids.insert(0, base.base_model)
    names = [v["name"] for v in versions.list_versions()]
    if not names:
        st.info("No dataset version yet: make one on the **Data** page (e.g. import the bundled sample).")
    c1, c2, c3 = st.columns(3)
    f = dict(
        base_model=c1.selectbox("Base model", model_ids, index=model_ids.index(base.base_model),
                                format_func=lambda m: labels.get(m, m), key=k + "model"),
        dataset=c2.selectbox("Dataset version", names, index=names.index(base.dataset) if base.dataset in names else 0,
                             key=k + "data"),
        run_name=c3.text_input("Run name (empty: dataset + time)", key=k + "name"),
        lora_r=c1.number_input("LoRA r", 1, 512, base.lora_r, key=k + "r"),
        lora_alpha=c2.number_input("LoRA alpha", 1, 1024, base.lora_alpha, key=k + "alpha"),
        lora_dropout=c3.number_input("LoRA dropout", 0.0, 0.9, base.lora_dropout, key=k + "drop"),
        target_modules=st.multiselect("Target modules", ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj",
                                      "up_proj", "down_proj"], base.target_modules, key=k + "tm"),
        max_seq_length=c1.number_input("Max sequence length (tokens)", 16, 131072, base.max_seq_length, key=k + "seq"),
        batch_size=c2.number_input("Batch size per device", 1, 512, base.batch_size, key=k + "bs"),
        grad_accum=c3.number_input("Gradient accumulation", 1, 512, base.grad_accum, key=k + "acc"),
        learning_rate=c1.number_input("Learning rate", 1e-6, 0.1, base.learning_rate, format="%.2e", key=k + "lr"),
        warmup_steps=c2.number_input("Warmup steps", 0, 10000, base.warmup_steps, key=k + "wu"),
        max_steps=c3.number_input("Max steps (0: use epochs)", 0, 10**6, base.max_steps, key=k + "steps"),
        epochs=c1.number_input("Epochs (when max steps is 0)", 0.01, 100.0, float(base.epochs), key=k + "ep"),
        save_steps=c2.number_input("Save a checkpoint every N steps", 1, 10**6, base.save_steps, key=k + "save"),
        eval_steps=c3.number_input("Eval loss every N steps (0: off)", 0, 10**6, base.eval_steps, key=k + "eval"),
        seed=c1.number_input("Seed", 0, 2**31, base.seed, key=k + "seed"),
        optimizer=c2.selectbox("Optimizer", OPTIMIZERS, OPTIMIZERS.index(base.optimizer), key=k + "opt"),
        backend=c3.selectbox("Backend", BACKENDS, BACKENDS.index(base.backend), key=k + "be"),
        packing=c1.checkbox("Packing", base.packing, key=k + "pack"),
        assistant_only_loss=c2.checkbox("Train on responses only", base.assistant_only_loss, key=k + "aol"),
        gradient_checkpointing=c3.checkbox("Gradient checkpointing", base.gradient_checkpointing, key=k + "gc"),
        load_in_4bit=c1.checkbox("4-bit base (CUDA only)", base.load_in_4bit, key=k + "4b"),
        mirror_dir=st.text_input("Mirror checkpoints to folder (optional)", base.mirror_dir, key=k + "mirror"),
    )
    try:
        cfg = TrainConfig(**f)
        est = estimate(cfg, device)
    except IrisError as err:
        st.error(str(err))
        cfg = est = None
    if est:
        st.caption(f"Estimate: {est.summary()} — {est.trainable / 1e6:.2f} M trainable of {est.params / 1e6:.0f} M")
        for note in est.notes:
            st.info(note)
        for problem in est.problems:
            st.error(problem)
        if device.kind == "cuda" and st.button("Fill this GPU", help="Batch size, packing and checkpointing that "
                                               "keep the card busy (the estimator's choice)"):
            pick = fill_card(cfg, device)
            st.session_state.update(fill=preset, fill_n=st.session_state.get("fill_n", 0) + 1,
                                    fill_values={**f, **{x: pick[x] for x in ("batch_size", "grad_accum", "packing",
                                                                              "gradient_checkpointing")}})
            st.rerun()
    if st.button("Launch", type="primary", disabled=not (est and est.ok and names)):
        try:
            run_dir = train.start(cfg)
            st.session_state["run"] = run_dir.name
            st.success(f"Launched **{run_dir.name}** ({jobs.read_status(run_dir).get('processes', 1)} process(es)); "
                       "watch it under **Runs**.")
        except IrisError as err:
            st.error(str(err))


def curves(run_names: list[str], title: str) -> go.Figure:
    fig = go.Figure()
    for name in run_names:
        rows = train.read_metrics(train.run_path(name))
        tr = [r for r in rows if r.get("loss") is not None]
        ev = [r for r in rows if r.get("eval_loss") is not None]
        tag = f"{name} " if len(run_names) > 1 else ""
        fig.add_scatter(x=[r["step"] for r in tr], y=[r["loss"] for r in tr], name=f"{tag}loss")
        if ev:
            fig.add_scatter(x=[r["step"] for r in ev], y=[r["eval_loss"] for r in ev], name=f"{tag}eval loss",
                            mode="lines+markers")
        if len(run_names) == 1:
            fig.add_scatter(x=[r["step"] for r in tr], y=[r.get("lr") for r in tr], name="learning rate", yaxis="y2")
    fig.update_layout(title=title, xaxis_title="step", yaxis_title="loss", height=360,
                      yaxis2=dict(title="lr", overlaying="y", side="right", showgrid=False))
    return fig


with watch:
    runs = train.list_runs()
    if not runs:
        st.info("No runs yet.")
    else:
        run_names = [r["run"] for r in runs]
        chosen = st.selectbox("Run", run_names, index=run_names.index(st.session_state["run"])
                              if st.session_state.get("run") in run_names else 0)

        @st.fragment(run_every=2)
        def live(name: str) -> None:
            run_dir = train.run_path(name)
            status = jobs.read_status(run_dir)
            state, step, total = status.get("state", "new"), status.get("step") or 0, status.get("total") or 0
            eta = f", ETA {status['eta_s'] / 60:.1f} min" if status.get("eta_s") and state == "running" else ""
            st.progress(min(1.0, step / total) if total else 0.0, text=f"{state}: step {step}/{total or '?'}{eta}")
            if status.get("error"):
                st.error(status["error"])
            st.plotly_chart(curves([name], name), key=f"curve-{name}")
            a, b, c = st.columns(3)
            if state in jobs.ACTIVE:
                if a.button("Stop (save a checkpoint)", key="stop"):
                    jobs.request_stop(run_dir)
                    st.toast("Stopping after this step…")
                if b.button("Kill now", key="kill"):
                    jobs.kill(run_dir)
            elif train.list_checkpoints(run_dir) and state != "completed":
                ckpt = a.selectbox("Resume from checkpoint", train.list_checkpoints(run_dir)[::-1], key="ckpt")
                if b.button("Resume", key="resume"):
                    try:
                        train.resume(run_dir, ckpt)
                    except IrisError as err:
                        st.error(str(err))
            c.caption(f"checkpoints: {', '.join(map(str, train.list_checkpoints(run_dir))) or 'none yet'}")
            with st.expander("Log"):
                st.code(jobs.tail(run_dir / train.LOG, 4000) or "(empty)")

        live(chosen)
        st.dataframe([{k: v for k, v in r.items() if k != "path"} for r in runs], hide_index=True)
        overlay = st.multiselect("Compare runs (loss curves overlaid)", run_names)
        if overlay:
            st.plotly_chart(curves(overlay, "comparison"), key="overlay")
