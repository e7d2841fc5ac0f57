"""Export page: pick a run (final adapter or a checkpoint) or a model folder, see the pre-flight, export to GGUF.

The export runs as a job (`python -m core.export`); this page only launches it and rereads its folder.
The exports list below is drawn whatever the form above shows (even an error), and follows status live.
"""
from pathlib import Path

import pandas as pd
import streamlit as st

from core import jobs, lineage
from core.access import check_hub_repo
from core.errors import IrisError
from core.export import study as quant_study
from core.export.config import QUANTS, VERIFY_MEANING, ExportConfig
from core.export.gguf import clean_leftovers, launch, leftovers, list_exports, plan, report
from core.export.preflight import gb
from core.export.sources import exportable
from core.paths import check_folder, exports_dir, runs_dir
from core.runs import list_checkpoints
from ui.progress import job_panel

st.title("Export")
st.caption("Merge a LoRA into its base, convert with llama.cpp, quantize, and check the GGUF against the source.")


def export_form() -> None:
    kind = st.radio("Export from", ["a training run", "a model folder"], horizontal=True)
    checkpoint = None
    if kind == "a training run":
        runs = [r["run"] for r in lineage.list_runs()]
        if not runs:
            st.info("No runs yet: train one on the Train page, or export a model folder.")
            return
        ready = [exportable(runs_dir() / r) for r in runs]  # default to a run that has an adapter to export
        source = st.selectbox("Run", runs, index=ready.index(True) if True in ready else 0)
        steps = list_checkpoints(runs_dir() / source)
        pick = st.selectbox("Adapter", ["final adapter"] + [f"checkpoint-{s}" for s in reversed(steps)])
        checkpoint = None if pick == "final adapter" else int(pick.split("-")[1])
    else:
        source = st.text_input("Model folder (config.json + safetensors + tokenizer)", "")
    quants = st.multiselect("Quantizations", list(QUANTS), default=["q4_k_m"],
                            help="q4_k_m: smallest, fastest on CPU; q8_0: near-lossless; f16: reference")
    c1, c2, c3 = st.columns(3)
    lora_only = c1.checkbox("LoRA-only GGUF", help="base GGUFs + a small LoRA GGUF that llama.cpp applies at load time",
                            disabled=kind != "a training run")
    verify = c2.checkbox("Verify against the source", value=True)
    keep_merged = c3.checkbox("Keep merged safetensors", disabled=lora_only)
    s1, s2 = st.columns(2)
    study = s1.checkbox("Study quants", disabled=lora_only,
                        help="one job: verify every quant (f16 as reference), held-out perplexity on the run's eval "
                             "split, and tok/s, time to first token and RAM measured on this machine")
    threads = s2.number_input("Study threads", 1, 64, 2, disabled=not study)
    name = st.text_input("Export name (empty: from the run)", "")
    push_repo = st.text_input("Push to hub repo (optional; needs HF_TOKEN)", "").strip()
    confirmed = bool(push_repo) and st.checkbox(f"Yes, upload the GGUFs to {push_repo} on the hub")
    if not source or not quants:
        return
    try:
        if kind == "a model folder":  # the page reads only under IRIS_HOME or IRIS_ALLOWED_DIRS (the CLI: anywhere)
            source = str(check_folder(source, "Model folder"))
        if push_repo:
            check_hub_repo(push_repo)
        cfg = ExportConfig(source=source, checkpoint=checkpoint, quants=quants, name=name,
                           mode="lora" if lora_only else "merged", verify=verify, keep_merged=keep_merged,
                           push_repo=push_repo if confirmed else "", study=study,
                           study_threads=int(threads))
        plans = plan(cfg)
    except IrisError as err:
        st.error(str(err))
        return
    chosen = plans[0]
    st.subheader("Pre-flight")
    m1, m2, m3 = st.columns(3)
    m1.metric("Peak RAM", gb(chosen.peak_ram), help=f"{gb(chosen.ram_available)} free now")
    m2.metric("Disk", gb(chosen.disk), help=f"{gb(chosen.disk_available)} free now")
    m3.metric("Time", f"~{chosen.time_s / 60:.1f} min" if chosen.time_s >= 60 else f"~{chosen.time_s:.0f} s")
    st.caption(chosen.path)
    st.dataframe(pd.DataFrame([{"step": s.name, "peak RAM": gb(s.peak_ram), "disk after": gb(s.disk),
                                "time s": round(s.time_s, 1)} for s in chosen.steps]), hide_index=True)
    fits = next((p for p in plans[1:] if p.fits), None)
    if not chosen.fits:
        st.error(f"This export would not fit: {chosen.reason}."
                 + (f" {fits.path} fits (~{gb(fits.peak_ram)} RAM, ~{gb(fits.disk)} disk)." if fits else ""))
    if push_repo and not confirmed:
        st.warning(f"Tick the box to confirm the upload to {push_repo}, or clear the repo to export locally.")
    if st.button("Export", type="primary", disabled=not chosen.fits or bool(push_repo and not confirmed)):
        try:
            st.session_state["export_dir"] = str(launch(cfg))
        except IrisError as err:
            st.error(str(err))


def show_study(folder: str) -> None:
    found = quant_study.load(Path(folder))
    if not found:
        return
    st.markdown(f"**Quant study** ({found['threads']} threads, {found['prompts']} prompts, "
                f"perplexity on {found['perplexity_rows']} held-out rows{': ' + found['perplexity_note'] if found['perplexity_note'] else ''})")
    st.dataframe(pd.DataFrame(quant_study.table(found)), hide_index=True)
    st.plotly_chart(quant_study.figure(found, Path(folder).name), key=f"study-{Path(folder).name}")
    st.success(found["recommendation"])


@st.fragment(run_every=2)
def exports_list() -> None:
    """Every export with its live state, verification verdicts and study; reread every two seconds."""
    exports = list_exports()
    if not exports:
        st.caption(f"None yet (they go to {exports_dir()}).")
    for item in exports:
        with st.expander(f"{item['export']} — {item['state']} — {', '.join(item['files']) or 'no GGUF yet'}"):
            st.write({k: item[k] for k in ("run", "checkpoint", "dataset", "base_model")})
            rep = report(item["path"])
            if rep.get("quants"):
                st.caption(f"Verification on {rep['prompts']} fixed prompts vs {rep['reference']}. "
                           + rep.get("meaning", VERIFY_MEANING))
                st.dataframe(pd.DataFrame([{"quant": q, "verdict": v.get("verdict"), "why": v.get("why"),
                                            "top1_agreement": v["top1_agreement"],
                                            "logit_correlation": v["logit_correlation"], "positions": v["positions"]}
                                           for q, v in rep["quants"].items()]), hide_index=True)
            show_study(item["path"])
            left = leftovers(Path(item["path"]))
            if left and item["state"] not in ("running", "queued", "stopping"):
                st.warning(f"A died attempt left {', '.join(p.name for p in left)} on disk.")
                if st.button("Clean up", key=f"clean-{item['export']}"):
                    st.toast(f"Removed {', '.join(clean_leftovers(Path(item['path'])))}")
            if st.button("Watch", key=f"watch-{item['export']}"):
                st.session_state["export_dir"] = item["path"]
                st.rerun()


export_form()
if not st.session_state.get("export_dir") and (running := jobs.active_job("export")):
    st.session_state["export_dir"] = running["path"]  # a fresh session (an app restart) reattaches to it
if st.session_state.get("export_dir"):
    st.subheader(f"Export {Path(st.session_state['export_dir']).name}")
    job_panel(st.session_state["export_dir"], unit="steps", graceful_stop=False, stop_label="Stop export")
st.subheader("Exports")
exports_list()
