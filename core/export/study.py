"""Which quant should I ship? Quality, speed and memory of each GGUF of one export, measured here.

`python -m core.export RUN --quant f16 q8_0 q5_k_m q4_k_m --study` runs one job: one merge, one f16
conversion, each quant from that f16, each verified (`core.export.verify`), then this study:

  quality   top-1 agreement and logit correlation with the merged model (from the verification), and
            held-out perplexity on the run's eval split: the same token ids (the model's chat template,
            transformers' tokenizer) scored by every GGUF, exp(mean NLL per token; lower is better)
  speed     each GGUF in its own process (`python -m core.export.study GGUF PROMPTS.json`), so its peak
            RSS is its own: the fixed verification prompts through the chat template, one warm-up, then
            per prompt time to first token (prompt read + first token), prompt tok/s (prompt tokens / TTFT)
            and generation tok/s over GEN_TOKENS greedy tokens, `threads` threads (2 by default)

The f16 GGUF is the reference point (it is measured even when it is not kept). `study.json`, a chart
(`study.html` interactive, `study.png` from matplotlib: plotly's PNG export needs kaleido and a Chrome,
which Iris does not install) and a recommendation line computed from the numbers land next to the GGUFs.
"""
from __future__ import annotations

import json
import math
import subprocess
import sys
import time
from pathlib import Path

from core.errors import IrisError
from core.paths import REPO_ROOT, read_json, write_json

STUDY = "study.json"
GEN_TOKENS = 32  # greedy tokens generated per prompt for the generation-speed figure
PPL_ROWS = 16  # held-out conversations scored per GGUF
PPL_MAX_TOKENS = 256  # per conversation (longer ones are cut): keeps logits ≤ 256 × vocab floats
PPL_TOLERANCE = 0.02  # "keeps quality": perplexity within 2% of f16's (or, without one, top-1 ≥ 0.98)
TOP1_KEEP = 0.98


def heldout_ids(model_dir: Path, dataset: str | None) -> tuple[list[list[int]], str]:
    """Token ids of the first PPL_ROWS conversations of the dataset's eval split, and why there are none."""
    from transformers import AutoTokenizer

    from core import versions

    if not dataset or not versions.exists(dataset):
        return [], "no dataset version behind this export: perplexity needs a run's eval split"
    if not versions.load_manifest(dataset)["rows"].get("eval"):
        return [], f"dataset version {dataset} has no eval split"
    tok = AutoTokenizer.from_pretrained(model_dir)
    out = []
    for row in versions.to_records(versions.load(dataset, "eval").head(PPL_ROWS)):
        messages = [{"role": m["role"], "content": m["content"]} for m in row["messages"] or []]
        if not messages:
            continue
        ids = tok.apply_chat_template(messages, tokenize=True, return_dict=False) if tok.chat_template \
            else tok("\n".join(m["content"] for m in messages))["input_ids"]
        ids = ids["input_ids"] if isinstance(ids, dict) else ids
        if len(ids) > 1:
            out.append([int(i) for i in ids[:PPL_MAX_TOKENS]])
    return out, "" if out else f"the eval split of {dataset} has no scorable conversations"


def gguf_perplexity(gguf: Path, rows: list[list[int]], threads: int) -> dict:
    """exp(mean negative log-likelihood per token) of `rows` under the GGUF, every token after the first."""
    import numpy as np
    from llama_cpp import Llama

    n_ctx = max(len(r) for r in rows) + 8
    llm = Llama(model_path=str(gguf), logits_all=True, n_ctx=n_ctx, n_batch=n_ctx, n_threads=threads, verbose=False)
    nll, tokens = 0.0, 0
    for ids in rows:
        llm.reset()
        llm.eval(ids)
        logits = np.array(llm.scores[: len(ids) - 1], dtype=np.float64)
        peak = logits.max(1, keepdims=True)
        logz = np.log(np.exp(logits - peak).sum(1)) + peak[:, 0]
        nll += float((logz - logits[np.arange(len(ids) - 1), ids[1:]]).sum())
        tokens += len(ids) - 1
    del llm
    return {"perplexity": round(math.exp(nll / tokens), 4), "tokens": tokens, "rows": len(rows)}


def measure(gguf: Path, prompts: list[list[int]], threads: int) -> dict:
    """Speed and memory of one GGUF in a fresh process (see the module docstring); returns its JSON."""
    prompts_file = gguf.with_name(f".{gguf.name}.prompts.json")
    prompts_file.write_text(json.dumps(prompts))
    try:
        proc = subprocess.run([sys.executable, "-m", "core.export.study", str(gguf), str(prompts_file),
                               "--threads", str(threads)], capture_output=True, text=True, cwd=REPO_ROOT)
    finally:
        prompts_file.unlink(missing_ok=True)
    if proc.returncode != 0:
        raise IrisError(f"measuring {gguf.name} failed: {(proc.stderr.strip().splitlines() or ['no output'])[-1][-300:]}")
    return json.loads(proc.stdout.strip().splitlines()[-1])


def _bench(gguf: Path, prompts: list[list[int]], threads: int) -> dict:
    """What `measure` runs in the child process."""
    from llama_cpp import Llama

    n_ctx = max(len(p) for p in prompts) + GEN_TOKENS + 8
    t0 = time.perf_counter()
    llm = Llama(model_path=str(gguf), n_ctx=n_ctx, n_threads=threads, n_threads_batch=threads, verbose=False)
    load_s = time.perf_counter() - t0

    def run(ids: list[int]) -> tuple[float, float, int]:
        llm.reset()  # else generate() reuses the cached prefix of the previous prompt
        start, first, n = time.perf_counter(), None, 0
        for _ in llm.generate(ids, temp=0.0, top_k=1, reset=True):
            n += 1
            first = first or time.perf_counter()
            if n >= GEN_TOKENS:
                break
        return first - start, time.perf_counter() - first, n

    run(prompts[0])  # warm-up: first-touch page faults and thread start-up are not the model's speed
    ttft, gen_s, gen_n, prompt_n = [], 0.0, 0, 0
    for ids in prompts:
        t, g, n = run(ids)
        ttft.append(t)
        gen_s, gen_n, prompt_n = gen_s + g, gen_n + n - 1, prompt_n + len(ids)  # the first token is TTFT's
    return {"threads": threads, "load_s": round(load_s, 3), "ttft_s": round(sorted(ttft)[len(ttft) // 2], 4),
            "prompt_tok_s": round(prompt_n / sum(ttft), 2), "gen_tok_s": round(gen_n / gen_s, 2) if gen_s else 0.0,
            "generated_tokens": gen_n, "prompt_tokens": prompt_n,
            "peak_rss_bytes": peak_rss_bytes()}


def peak_rss_bytes() -> int:
    """This process's own peak resident memory (core.jobs.own_peak_rss_bytes: every quant showed the study
    process's own 1.5 GB with ru_maxrss); ru_maxrss only where /proc is missing."""
    from core.jobs import own_peak_rss_bytes

    own = own_peak_rss_bytes()
    if own is not None:
        return own
    import resource

    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024


def run_study(ggufs: dict[str, Path], report: dict, model_dir: Path, dataset: str | None, threads: int,
              lora: Path | None = None) -> dict:
    """Measure every GGUF (f16 included, as the reference) and return the study (rows + recommendation)."""
    from core.export.verify import prompt_ids

    if lora is not None:
        raise IrisError("a quant study compares merged GGUFs: export with mode 'merged' to study quants.")
    prompts = prompt_ids(model_dir)
    heldout, why_no_ppl = heldout_ids(model_dir, dataset)
    rows = []
    for quant, path in ggufs.items():
        row = {"quant": quant, "file": path.name, "size_bytes": path.stat().st_size,
               **{k: report.get("quants", {}).get(quant, {}).get(k) for k in ("top1_agreement", "logit_correlation", "verdict")}}
        row.update(gguf_perplexity(path, heldout, threads) if heldout else {"perplexity": None})
        row.update(measure(path, prompts, threads))
        rows.append(row)
    study = {"threads": threads, "prompts": len(prompts), "gen_tokens": GEN_TOKENS, "dataset": dataset,
             "perplexity_rows": len(heldout), "perplexity_note": why_no_ppl, "reference": "f16", "rows": rows}
    study["recommendation"] = recommend(study)
    return study


def recommend(study: dict) -> str:
    """One line from the numbers: the fastest quant that keeps f16's quality within tolerance."""
    rows = {r["quant"]: r for r in study["rows"]}
    ref = rows.get("f16")
    if ref is None:
        return "no f16 reference in this study: nothing to compare against."

    def keeps(r: dict) -> bool:
        if r.get("verdict") == "fail":
            return False
        if r.get("perplexity") and ref.get("perplexity"):
            return r["perplexity"] <= ref["perplexity"] * (1 + PPL_TOLERANCE)
        return (r.get("top1_agreement") or 0) >= TOP1_KEEP

    good = [r for r in rows.values() if keeps(r)]
    best = max(good, key=lambda r: r["gen_tok_s"]) if good else ref
    speed = best["gen_tok_s"] / ref["gen_tok_s"] if ref["gen_tok_s"] else float("nan")
    ram = best["peak_rss_bytes"] / ref["peak_rss_bytes"] if ref["peak_rss_bytes"] else float("nan")
    quality = (f"perplexity {best['perplexity']:.3f} vs f16's {ref['perplexity']:.3f}" if best.get("perplexity")
               and ref.get("perplexity") else f"{100 * (best.get('top1_agreement') or 0):.1f}% top-1 agreement")
    if best is ref:
        return (f"f16: no smaller quant kept quality within {100 * PPL_TOLERANCE:.0f}% of f16's perplexity "
                f"(or {100 * TOP1_KEEP:.0f}% top-1 agreement); f16 runs at {ref['gen_tok_s']:.1f} tok/s here.")
    return (f"{best['quant']} keeps {quality} and {100 * (best.get('top1_agreement') or 0):.1f}% top-1 agreement "
            f"at {speed:.2f}× f16's generation speed ({best['gen_tok_s']:.1f} tok/s, {study['threads']} threads) "
            f"in {ram:.2f}× its RAM.")


def table(study: dict) -> list[dict]:
    """The study as table rows for people (units in the column names)."""
    return [{"quant": r["quant"], "verdict": r.get("verdict"), "top-1 agreement": r.get("top1_agreement"),
             "logit corr.": r.get("logit_correlation"), "perplexity": r.get("perplexity"),
             "gen tok/s": r["gen_tok_s"], "prompt tok/s": r["prompt_tok_s"], "TTFT s": r["ttft_s"],
             "peak RSS MB": round(r["peak_rss_bytes"] / 1024**2), "file MB": round(r["size_bytes"] / 1024**2, 1)}
            for r in study["rows"]]


def quality_axis(study: dict) -> tuple[str, str]:
    """(row key, axis title): perplexity when the study has one, else top-1 agreement."""
    if all(r.get("perplexity") for r in study["rows"]):
        return "perplexity", "held-out perplexity (lower is better)"
    return "top1_agreement", "top-1 agreement with the merged model"


def figure(study: dict, name: str = ""):
    """Plotly chart: quality vs generation tok/s, marker size = peak RSS, f16 drawn as the reference."""
    import plotly.graph_objects as go

    key, title = quality_axis(study)
    rows = study["rows"]
    peak = max(r["peak_rss_bytes"] for r in rows)
    fig = go.Figure(go.Scatter(
        x=[r["gen_tok_s"] for r in rows], y=[r.get(key) for r in rows], mode="markers+text",
        text=[f"{r['quant']} ({r['peak_rss_bytes'] / 1024**2:.0f} MB)" for r in rows], textposition="top center",
        marker={"size": [12 + 36 * r["peak_rss_bytes"] / peak for r in rows],
                "color": ["#888" if r["quant"] == "f16" else "#1f77b4" for r in rows]},
        hovertemplate="%{text}<br>%{x:.1f} tok/s<br>%{y}<extra></extra>"))
    ref = next((r for r in rows if r["quant"] == "f16"), None)
    if ref is not None and ref.get(key) is not None:
        fig.add_hline(y=ref[key], line_dash="dash", line_color="#888", annotation_text="f16 reference")
    fig.update_layout(title=f"Quant study {name}: quality vs speed ({study['threads']} threads; marker size = peak RAM)",
                      xaxis_title="generation tokens/s on this machine", yaxis_title=title, height=460,
                      margin={"t": 60, "r": 30})
    return fig


def write_charts(study: dict, out: Path, name: str) -> list[str]:
    """study.html (plotly, self-contained: works offline) and study.png (matplotlib)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    figure(study, name).write_html(out / "study.html", include_plotlyjs=True)
    key, title = quality_axis(study)
    rows = study["rows"]
    peak = max(r["peak_rss_bytes"] for r in rows)
    fig, ax = plt.subplots(figsize=(7, 4.5), dpi=110)
    for r in rows:
        ax.scatter(r["gen_tok_s"], r.get(key), s=60 + 600 * r["peak_rss_bytes"] / peak, alpha=0.7,
                   color="#888" if r["quant"] == "f16" else "#1f77b4")
        ax.annotate(f"{r['quant']} ({r['peak_rss_bytes'] / 1024**2:.0f} MB)", (r["gen_tok_s"], r.get(key)),
                    textcoords="offset points", xytext=(0, 12), ha="center", fontsize=8)
    ref = next((r for r in rows if r["quant"] == "f16"), None)
    if ref is not None and ref.get(key) is not None:
        ax.axhline(ref[key], ls="--", color="#888", lw=1)
    ax.set_xlabel("generation tokens/s on this machine")
    ax.set_ylabel(title)
    ax.set_title(f"Quant study {name} ({study['threads']} threads; marker size = peak RAM)", fontsize=10)
    ax.margins(0.25)
    fig.tight_layout()
    fig.savefig(out / "study.png")
    plt.close(fig)
    return ["study.html", "study.png"]


def save(study: dict, out: Path, name: str) -> None:
    study["charts"] = write_charts(study, out, name)
    write_json(out / STUDY, study)


def load(export_dir: Path) -> dict | None:
    return read_json(Path(export_dir) / STUDY, default=None)


def main(argv: list[str] | None = None) -> None:
    """Run as: python -m core.export.study GGUF PROMPTS.json [--threads 2]   (prints one JSON line)"""
    import argparse

    parser = argparse.ArgumentParser(prog="python -m core.export.study", description="Speed and memory of one GGUF.")
    parser.add_argument("gguf", help="the GGUF to measure")
    parser.add_argument("prompts", help="JSON list of token-id lists (the same for every GGUF compared)")
    parser.add_argument("--threads", type=int, default=2, help="llama.cpp threads for reading and generating")
    a = parser.parse_args(argv)
    print(json.dumps(_bench(Path(a.gguf), json.loads(Path(a.prompts).read_text()), a.threads)))


def list_studies() -> dict[str, dict]:
    """Every export that has a study.json, by export name (newest first): the Evaluate page adds their points."""
    from core.paths import exports_dir, listed

    return {f.name: found for f in listed(exports_dir()) if (found := load(f))}


if __name__ == "__main__":
    main()
