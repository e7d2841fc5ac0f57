"""Export a run (or any transformers folder) to GGUF: merge → convert → quantize → verify, as a job.

Run as:
    python -m core.export RUN_DIR [--checkpoint N] --quant q4_k_m [--quant q8_0 ...]
    python -m core.export path/to/hf_model_folder --quant q8_0 f16
    python -m core.export RUN_DIR --lora --quant q4_k_m          (base GGUF + LoRA GGUF)

Steps, each within a memory budget the pre-flight (`core.preflight`) announced beforehand:
  1. merge the LoRA into the base, tensor by tensor, into 16-bit safetensors (`core.merge`);
  2. convert once to an f16 GGUF with llama.cpp's own `convert_hf_to_gguf.py` (venv python, its gguf-py);
     the chat template travels in the GGUF metadata;
  3. quantize that f16 GGUF to each requested type with `llama_cpp.llama_model_quantize`;
  4. verify every GGUF against the merged model on a fixed prompt set (`core.verify`).

The export folder is the interface: `IRIS_HOME/exports/<name>/` holds `<name>-<quant>.gguf`,
`export.json` (lineage, quants, files), `report.json` (verification), `export.yaml` (this config),
`status.json` and `job.log`. Every GGUF is written under a hidden `.tmp` name and renamed when
complete; intermediates live in a hidden `.work-*` folder that is removed at the end.
"""
from __future__ import annotations

import argparse
import os
import shutil
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

from core import jobs, preflight
from core.config import save_yaml, to_dict
from core.errors import IrisError, cli_exit
from core.paths import check_name, exports_dir, read_json, write_json
from core.sources import Source, resolve_source

QUANTS = ("q4_k_m", "q5_k_m", "q8_0", "f16")
MODES = ("merged", "lora")


@dataclass
class ExportConfig:
    source: str
    """A run (name under IRIS_HOME/runs or its folder) or any transformers model folder."""
    checkpoint: int | None = None
    """Export this checkpoint of the run instead of its final adapter."""
    quants: list[str] = field(default_factory=lambda: ["q4_k_m"])
    """Any of q4_k_m, q5_k_m, q8_0, f16; the f16 GGUF is converted once and quantized to each."""
    name: str = ""
    """Folder under IRIS_HOME/exports; empty → the run name (+ `-ckpt<N>`) or the model folder's name."""
    mode: str = "merged"
    """'merged': one GGUF per quant with the LoRA merged in; 'lora': base GGUFs + a LoRA GGUF applied at load."""
    merge_dtype: str = "f16"
    """16-bit type of the merged safetensors: f16 (the converter keeps it as is) or bf16 (wider range)."""
    verify: bool = True
    """Compare each GGUF with the merged model on the fixed prompts (needs the model in fp32 in RAM)."""
    keep_merged: bool = False
    """Keep the merged 16-bit safetensors as `merged/` in the export (usable by transformers)."""
    threads: int = 0
    """Quantize / verify threads; 0 → every core."""
    ram_budget_gb: float | None = None
    """RAM the export may use; empty → what is free now."""
    disk_budget_gb: float | None = None
    """Disk the export may use; empty → what is free now."""
    push_repo: str = ""
    """Hub repo (user/name) to upload the GGUFs to; needs a token in HF_TOKEN (never logged)."""
    overwrite: bool = False

    def __post_init__(self) -> None:
        if not str(self.source).strip():
            raise IrisError("choose a run or a model folder to export.")
        self.quants = [q.lower() for q in (self.quants if isinstance(self.quants, list) else [self.quants])]
        unknown = [q for q in self.quants if q not in QUANTS]
        if unknown or not self.quants:
            raise IrisError(f"unknown quant type {unknown[0] if unknown else '(none)'!r}: choose from {', '.join(QUANTS)}.")
        self.quants = list(dict.fromkeys(self.quants))
        if self.mode not in MODES:
            raise IrisError(f"mode {self.mode!r} is not one of {', '.join(MODES)}.")
        if self.merge_dtype not in ("f16", "bf16"):
            raise IrisError(f"merge_dtype {self.merge_dtype!r} is not f16 or bf16.")
        if self.name:
            check_name(self.name, "export name")
        if self.checkpoint is not None and (not isinstance(self.checkpoint, int) or self.checkpoint < 0):
            raise IrisError(f"checkpoint must be a step number, got {self.checkpoint!r}.")
        for budget in ("ram_budget_gb", "disk_budget_gb"):
            value = getattr(self, budget)
            if value is not None and not (isinstance(value, (int, float)) and value > 0):
                raise IrisError(f"{budget} must be a positive number of GB, got {value!r}.")


def export_name(cfg: ExportConfig, src: Source) -> str:
    if cfg.name:
        return cfg.name
    if src.run:
        return src.run + (f"-ckpt{src.checkpoint}" if src.checkpoint is not None else "")
    return check_name(Path(src.base_dir).name.replace(" ", "-"), "export name")


def plan(cfg: ExportConfig, src: Source | None = None) -> list[preflight.Plan]:
    """The chosen path and its cheaper alternatives, sized for this machine (the page shows plans[0])."""
    src = src or resolve_source(cfg.source, cfg.checkpoint)
    if cfg.mode == "lora" and src.adapter_dir is None:
        raise IrisError("a LoRA-only GGUF needs a run with an adapter; this source is a plain model.")
    size = preflight.model_size(src.base_dir)
    ram, disk = preflight.available(cfg.ram_budget_gb, cfg.disk_budget_gb, exports_dir())
    merge = cfg.mode == "merged" and src.adapter_dir is not None
    return preflight.alternatives(size, cfg.quants, cfg.mode, merge, cfg.verify, preflight.adapter_bytes(src.adapter_dir),
                                  cfg.threads or preflight.default_threads(), ram, disk, cfg.keep_merged and merge)


def argv(cfg: ExportConfig) -> list[str]:
    """The CLI call for `cfg` (what the page launches)."""
    args = [cfg.source, "--quant", *cfg.quants, "--mode", cfg.mode, "--merge-dtype", cfg.merge_dtype]
    args += ["--checkpoint", str(cfg.checkpoint)] if cfg.checkpoint is not None else []
    args += ["--name", cfg.name] if cfg.name else []
    args += [] if cfg.verify else ["--no-verify"]
    args += ["--keep-merged"] if cfg.keep_merged else []
    args += ["--threads", str(cfg.threads)] if cfg.threads else []
    args += ["--ram-budget-gb", str(cfg.ram_budget_gb)] if cfg.ram_budget_gb else []
    args += ["--disk-budget-gb", str(cfg.disk_budget_gb)] if cfg.disk_budget_gb else []
    args += ["--push", cfg.push_repo] if cfg.push_repo else []
    args += ["--overwrite"] if cfg.overwrite else []
    return jobs.python_module_argv("core.export", *args)


def launch(cfg: ExportConfig) -> Path:
    """Pre-flight here (refusing at once when it would not fit), then run the export as a job."""
    src = resolve_source(cfg.source, cfg.checkpoint)
    preflight.check(plan(cfg, src))
    cfg.name = export_name(cfg, src)
    out = exports_dir() / cfg.name
    if (out / "export.json").exists() and not cfg.overwrite:
        raise IrisError(f"export {cfg.name} already exists: choose another name or tick overwrite.")
    jobs.launch(out, argv(cfg))
    return out


def main(cfg: ExportConfig) -> Path:
    """Run the whole export in this process; returns the export folder."""
    src = resolve_source(cfg.source, cfg.checkpoint)
    chosen = preflight.check(plan(cfg, src))
    name = export_name(cfg, src)
    out = exports_dir() / name
    if (out / "export.json").exists() and not cfg.overwrite:
        raise IrisError(f"export {name} already exists: choose another name or pass --overwrite.")
    out.mkdir(parents=True, exist_ok=True)
    save_yaml(cfg, out / "export.yaml")
    for old in ("export.json", "report.json"):
        (out / old).unlink(missing_ok=True)
    work = Path(tempfile.mkdtemp(dir=out, prefix=".work-"))
    started = time.time()
    jobs.update_status(out, state="running", pid=os.getpid(), step=0, total=len(chosen.steps), error=None,
                       message="starting", started=started, eta_s=round(chosen.time_s, 1),
                       preflight=chosen.summary())
    try:
        result = run_steps(cfg, src, name, out, work, chosen)
        info = {"name": name, "created": time.time(), "mode": cfg.mode,
                "source": {"run": src.run, "checkpoint": src.checkpoint, "dataset": src.dataset,
                           "base_model": src.base_model},
                "source_path": str(src.adapter_dir or src.base_dir), "quants": cfg.quants, **result,
                "preflight": chosen.summary(), "config": to_dict(cfg), "wall_s": round(time.time() - started, 1)}
        write_json(out / "export.json", info)
        shutil.rmtree(work, ignore_errors=True)  # gone before 'completed': whoever waits on the status sees no temporaries
        jobs.update_status(out, state="completed", step=len(chosen.steps), eta_s=0, message="done")
        return out
    except BaseException as err:
        jobs.mark_failed(out, err)
        raise
    finally:
        shutil.rmtree(work, ignore_errors=True)


def run_steps(cfg: ExportConfig, src: Source, name: str, out: Path, work: Path, chosen: preflight.Plan) -> dict:
    """merge → convert → quantize → (LoRA GGUF) → verify, in `work`; then move the results into `out`."""
    from core import convert, verify

    threads = cfg.threads or preflight.default_threads()
    timings: dict[str, float] = {}
    state = {"step": 0, "t0": time.time()}

    def begin(label: str) -> None:
        done = sum(s.time_s for s in chosen.steps[: state["step"]])
        jobs.update_status(out, step=state["step"], message=label, eta_s=round(max(0.0, chosen.time_s - done), 1))
        print(f"[export] {label}", flush=True)
        state["label"], state["t0"] = label, time.time()

    def end() -> None:
        timings[state["label"]] = round(time.time() - state["t0"], 2)
        state["step"] += 1

    model_dir, merge_info = src.base_dir, None
    f16_path = work / f"{name}-f16.gguf"
    if cfg.mode == "merged" and src.adapter_dir is not None:
        begin("merging the LoRA into the base (tensor by tensor)")
        model_dir, marker = work / "merged", work / "merged.done"
        # the converter starts now and imports torch/transformers (≈ 10 s) while the merge runs; it
        # reads the merged folder only once `marker` exists
        from concurrent.futures import ThreadPoolExecutor

        with ThreadPoolExecutor(1) as pool:
            converting = pool.submit(convert.convert_hf, model_dir, f16_path, "f16", marker)
            try:
                merge_info = convert.run_merge(src.base_dir, src.adapter_dir, model_dir, cfg.merge_dtype)
            except BaseException:
                marker.with_name(marker.name + ".failed").touch()
                converting.exception()  # let it exit before the work folder goes
                raise
            marker.touch()
            end()
            begin("converting to an f16 GGUF (llama.cpp convert_hf_to_gguf.py)")
            f16 = converting.result()
    else:
        begin("converting to an f16 GGUF (llama.cpp convert_hf_to_gguf.py)")
        f16 = convert.convert_hf(model_dir, f16_path)
    end()
    if merge_info is not None and not cfg.verify and not cfg.keep_merged:
        shutil.rmtree(model_dir)  # converted; nothing reads it again, so give the disk back now
    ggufs: dict[str, Path] = {}
    for quant in cfg.quants:
        if quant == "f16":
            ggufs[quant] = f16
            continue
        begin(f"quantizing to {quant}")
        ggufs[quant] = convert.quantize(f16, work / f"{name}-{quant}.gguf", quant, threads)
        end()
    if "f16" not in cfg.quants:
        f16.unlink()
    lora = None
    if cfg.mode == "lora":
        begin("converting the LoRA adapter to GGUF")
        lora = convert.convert_lora(src.adapter_dir, src.base_dir, work / f"{name}-lora-f16.gguf")
        end()
    meta = convert.gguf_metadata(next(iter(ggufs.values())))
    report = None
    if cfg.verify:
        begin("verifying each GGUF against the source model")
        report = verify.verify(model_dir, ggufs, src.adapter_dir if cfg.mode == "lora" else None, lora, threads)
        report.update(export=name, mode=cfg.mode, reference_dir=str(model_dir))
        write_json(out / "report.json", report)
        end()
    finals = [p for p in [*ggufs.values(), lora] if p is not None]
    for path in finals:  # complete and verified: only now do they appear under their real names
        os.replace(path, out / path.name)
    if cfg.keep_merged and merge_info is not None:
        shutil.rmtree(out / "merged", ignore_errors=True)
        os.replace(model_dir, out / "merged")
    result = {"files": [p.name for p in finals], "gguf": {q: p.name for q, p in ggufs.items()},
              "lora": lora.name if lora else None, "sizes": {p.name: (out / p.name).stat().st_size for p in finals},
              "merged": "merged" if cfg.keep_merged and merge_info else None, "merge": merge_info,
              "chat_template": bool(meta.get("tokenizer.chat_template")), "tokenizer_pre": meta.get("tokenizer.ggml.pre"),
              "verification": (report or {}).get("quants"), "timings_s": timings, "peak_rss_bytes": _peak_rss()}
    if cfg.push_repo:
        result["push"] = push(out, cfg.push_repo, [p.name for p in finals])
    return result


def _peak_rss() -> dict:
    """Peak resident memory of this process and of the biggest child (the converter), in bytes."""
    import resource

    return {"self": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024,
            "children": resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss * 1024}


def push(out: Path, repo: str, files: list[str]) -> dict:
    """Upload the GGUFs + export.json/report.json to a hub repo when a token is set; never logs the token."""
    token = os.environ.get("HF_TOKEN") or os.environ.get("HUGGING_FACE_HUB_TOKEN")
    if not token:
        return {"repo": repo, "ok": False, "error": "no token: set HF_TOKEN to push"}
    try:
        from huggingface_hub import HfApi

        api = HfApi(token=token)
        api.create_repo(repo, exist_ok=True)
        api.upload_folder(repo_id=repo, folder_path=str(out), allow_patterns=[*files, "report.json", "export.yaml"])
        return {"repo": repo, "ok": True}
    except Exception as err:  # offline or refused: the export itself is done; say why without the token
        return {"repo": repo, "ok": False, "error": f"{type(err).__name__}: {str(err).replace(token, '***')[:300]}"}


def list_exports() -> list[dict]:
    """Every export folder with its export.json (or status, while running), newest first."""
    from core.lineage import list_exports as listed_exports

    return listed_exports()


def report(export_dir: Path) -> dict:
    return read_json(Path(export_dir) / "report.json", default={}) or {}


def cli(args: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m core.export", description="Export a run or model to GGUF.")
    parser.add_argument("source", help="run folder, run name, or a transformers model folder")
    parser.add_argument("--checkpoint", type=int, help="export checkpoint-N of the run instead of its final adapter")
    parser.add_argument("--quant", nargs="+", action="extend", default=[], help=f"one or more of {', '.join(QUANTS)}")
    parser.add_argument("--name", default="", help="export folder name (default: run name or model folder name)")
    parser.add_argument("--mode", choices=MODES, default="merged", help="merged GGUFs, or base GGUF + LoRA GGUF")
    parser.add_argument("--lora", action="store_true", help="shorthand for --mode lora")
    parser.add_argument("--merge-dtype", choices=("f16", "bf16"), default="f16", help="16-bit type of the merge")
    parser.add_argument("--no-verify", action="store_true", help="skip the GGUF-vs-merged-model comparison")
    parser.add_argument("--keep-merged", action="store_true", help="keep the merged safetensors in the export")
    parser.add_argument("--threads", type=int, default=0, help="threads for quantize/verify (0: all cores)")
    parser.add_argument("--ram-budget-gb", type=float, help="RAM the export may use (default: free RAM now)")
    parser.add_argument("--disk-budget-gb", type=float, help="disk the export may use (default: free disk now)")
    parser.add_argument("--push", default="", help="hub repo to upload to (token from HF_TOKEN)")
    parser.add_argument("--overwrite", action="store_true", help="replace an existing export of the same name")
    a = parser.parse_args(args)
    try:
        cfg = ExportConfig(source=a.source, checkpoint=a.checkpoint, quants=a.quant or ["q4_k_m"], name=a.name,
                           mode="lora" if a.lora else a.mode, merge_dtype=a.merge_dtype, verify=not a.no_verify,
                           keep_merged=a.keep_merged, threads=a.threads, ram_budget_gb=a.ram_budget_gb,
                           disk_budget_gb=a.disk_budget_gb, push_repo=a.push, overwrite=a.overwrite)
        print(f"export ready: {main(cfg)}")
    except IrisError as err:
        cli_exit(err)


if __name__ == "__main__":
    cli()
