"""Train: build a TrainConfig, see its memory/time estimate, launch it outside this app, watch, stop, resume."""
import dataclasses

import streamlit as st

from core import jobs, models, runs, versions
from core.config import field_docs
from core.errors import IrisError
from core.paths import check_folder
from core.train import lora
from core.train.config import BACKENDS, OPTIMIZERS, TrainConfig, list_presets, load_preset
from core.train.curves import curves_figure
from core.train.estimate import detect_device, estimate, fill_card
from core.train.launch import warm_up
from ui.preference import dpo_curves, method_fields
from ui.progress import job_panel

st.title("Train")
warm_up()  # a process with torch & co. imported waits for the next Launch (step 1 ~15 s sooner)
device = st.cache_data(ttl=60)(detect_device)()
presets = list_presets()
H = field_docs(TrainConfig)  # help text: each field's docstring
new, watch = st.tabs(["New run", "Runs"])

with new:
    preset = st.selectbox("Preset", list(presets), help="Fills the form; change anything after.")
    base = load_preset(preset)
    if st.session_state.get("fill") == preset:
        base = dataclasses.replace(base, **st.session_state["fill_values"])
    k = f"{preset}-{st.session_state.get('fill_n', 0)}-"  # new widget keys when the preset changes
    model_ids = [m.id for m in models.list_models()]
    labels = {m.id: f"{m.label} — {m.note}" if m.note else m.label for m in models.list_models()}
    if base.base_model not in model_ids:
        model_ids.insert(0, base.base_model)
    names = [v["name"] for v in versions.list_versions()]
    if not names:
        st.info("No dataset version yet: make one on the **Data** page (e.g. import the bundled sample).")
    method = method_fields(base, k, H)
    c1, c2, c3 = st.columns(3)
    f = dict(**method,
        base_model=c1.selectbox("Base model", model_ids, index=model_ids.index(base.base_model),
                                format_func=lambda m: labels.get(m, m), key=k + "model", help=H.get("base_model")),
        dataset=c2.selectbox("Dataset version", names, index=names.index(base.dataset) if base.dataset in names else 0,
                             key=k + "data", help=H.get("dataset")),
        run_name=c3.text_input("Run name (empty: dataset + time)", key=k + "name", help=H.get("run_name")),
        lora_r=c1.number_input("LoRA r", 1, 512, base.lora_r, key=k + "r", help=H.get("lora_r")),
        lora_alpha=c2.number_input("LoRA alpha", 1, 1024, base.lora_alpha, key=k + "alpha", help=H.get("lora_alpha")),
        lora_dropout=c3.number_input("LoRA dropout", 0.0, 0.9, base.lora_dropout, key=k + "drop", help=H.get("lora_dropout")),
        target_modules=st.multiselect("Target modules", ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj",
                                      "up_proj", "down_proj"], base.target_modules, key=k + "tm", help=H.get("target_modules")),
        max_seq_length=c1.number_input("Max sequence length (tokens)", 16, 131072, base.max_seq_length, key=k + "seq", help=H.get("max_seq_length")),
        batch_size=c2.number_input("Batch size per device", 1, 512, base.batch_size, key=k + "bs", help=H.get("batch_size")),
        grad_accum=c3.number_input("Gradient accumulation", 1, 512, base.grad_accum, key=k + "acc", help=H.get("grad_accum")),
        learning_rate=c1.number_input("Learning rate", 1e-6, 0.1, base.learning_rate, format="%.2e", key=k + "lr", help=H.get("learning_rate")),
        warmup_steps=c2.number_input("Warmup steps", 0, 10000, base.warmup_steps, key=k + "wu", help=H.get("warmup_steps")),
        max_steps=c3.number_input("Max steps (0: use epochs)", 0, 10**6, base.max_steps, key=k + "steps", help=H.get("max_steps")),
        epochs=c1.number_input("Epochs (when max steps is 0)", 0.01, 100.0, float(base.epochs), key=k + "ep", help=H.get("epochs")),
        save_steps=c2.number_input("Save a checkpoint every N steps", 1, 10**6, base.save_steps, key=k + "save", help=H.get("save_steps")),
        eval_steps=c3.number_input("Eval loss every N steps (0: off)", 0, 10**6, base.eval_steps, key=k + "eval", help=H.get("eval_steps")),
        seed=c1.number_input("Seed", 0, 2**31, base.seed, key=k + "seed", help=H.get("seed")),
        optimizer=c2.selectbox("Optimizer", OPTIMIZERS, OPTIMIZERS.index(base.optimizer), key=k + "opt", help=H.get("optimizer")),
        backend=c3.selectbox("Backend", BACKENDS, BACKENDS.index(base.backend), key=k + "be", help=H.get("backend")),
        packing=c1.checkbox("Packing", base.packing, key=k + "pack", help=H.get("packing")),
        assistant_only_loss=c2.checkbox("Train on responses only", base.assistant_only_loss, key=k + "aol", help=H.get("assistant_only_loss")),
        gradient_checkpointing=c3.checkbox("Gradient checkpointing", base.gradient_checkpointing, key=k + "gc", help=H.get("gradient_checkpointing")),
        load_in_4bit=c1.checkbox("4-bit base (CUDA only)", base.load_in_4bit, key=k + "4b", help=H.get("load_in_4bit")),
        mirror_dir=st.text_input("Mirror checkpoints to folder (optional)", base.mirror_dir, key=k + "mirror", help=H.get("mirror_dir")),
    )
    try:
        if f["mirror_dir"]:  # the page may only write under IRIS_HOME or IRIS_ALLOWED_DIRS (the CLI: anywhere)
            f["mirror_dir"] = str(check_folder(f["mirror_dir"], "Mirror checkpoints to folder"))
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
            run_dir = lora.start(cfg)
            st.session_state["run"] = run_dir.name
            st.success(f"Launched **{run_dir.name}** ({jobs.read_status(run_dir).get('processes', 1)} process(es)); "
                       "watch it under **Runs**.")
        except IrisError as err:
            st.error(str(err))


with watch:
    all_runs = runs.list_runs()
    if not all_runs:
        st.info("No runs yet.")
    else:
        run_names = [r["run"] for r in all_runs]
        running = next((r["run"] for r in all_runs if r["state"] in jobs.ACTIVE), None)  # reattach after a restart
        st.session_state.setdefault("run", st.query_params.get("run") or running)  # /train?run=NAME: Home's links
        chosen = st.selectbox("Run", run_names, index=run_names.index(st.session_state["run"])
                              if st.session_state.get("run") in run_names else 0)

        run_dir = runs.run_path(chosen)

        def run_controls(status: dict) -> None:
            st.plotly_chart(curves_figure([chosen], chosen), key=f"curve-{chosen}")
            dpo_curves(chosen)
            a, b, c = st.columns(3)
            steps = runs.list_checkpoints(run_dir)
            if status.get("state") in jobs.ACTIVE and b.button("Kill now", key="kill"):
                jobs.kill(run_dir)
            elif status.get("state") not in jobs.ACTIVE and steps and status.get("state") != "completed":
                ckpt = a.selectbox("Resume from checkpoint", steps[::-1], key="ckpt")
                if b.button("Resume", key="resume"):
                    try:
                        lora.resume(run_dir, ckpt)
                    except IrisError as err:
                        st.error(str(err))
            c.caption(f"checkpoints: {', '.join(map(str, steps)) or 'none yet'}")
            # inside the panel's fragment: the table rereads every run's status.json as the progress bar does
            st.dataframe([{k: v for k, v in r.items() if k != "path"} for r in runs.list_runs()], hide_index=True,
                         key="runs-table")

        job_panel(run_dir, unit="steps", log_name=runs.LOG, stop_label="Stop (save a checkpoint)", extra=run_controls)
        overlay = st.multiselect("Compare runs (loss curves overlaid)", run_names)
        if overlay:
            st.plotly_chart(curves_figure(overlay, "comparison"), key="overlay")
