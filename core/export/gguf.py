"""Export a run (or any transformers folder) to GGUF: merge → convert → quantize → verify, as a job.

Run as:
    python -m core.export RUN_DIR [--checkpoint N] --quant q4_k_m [--quant q8_0 ...]
    python -m core.export path/to/hf_model_folder --quant q8_0 f16
    python -m core.export RUN_DIR --lora --quant q4_k_m          (base GGUF + LoRA GGUF)

Steps, each within a memory budget the pre-flight (`core.export.preflight`) announced beforehand:
  1. merge the LoRA into the base, tensor by tensor, into 16-bit safetensors (`core.export.merge`);
  2. convert once to an f16 GGUF with llama.cpp's own `convert_hf_to_gguf.py` (venv python, its gguf-py);
     the chat template travels in the GGUF metadata;
  3. quantize that f16 GGUF to each requested type with `llama_cpp.llama_model_quantize`;
  4. verify every GGUF against the merged model on a fixed prompt set (`core.export.verify`).

The export folder is the interface: `IRIS_HOME/exports/<name>/` holds `<name>-<quant>.gguf`,
`export.json` (lineage, quants, files), `report.json` (verification), `export.yaml` (this config),
`status.json` and `job.log`. Every GGUF is written under a hidden `.tmp` name and renamed when
complete; intermediates live in a hidden `.work-*` folder that is removed at the end.
"""
from __future__ import annotations

import os
import shutil
import tempfile
import time
from pathlib import Path

from core import jobs
from core.access import check_hub_repo
from core.config import save_yaml, to_dict
from core.errors import IrisError
from core.export import preflight
from core.export.config import ExportConfig
from core.export.sources import Source, resolve_source
from core.paths import check_name, exports_dir, read_json, write_json

CONFIG = "export.yaml"

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
                                  cfg.threads or preflight.default_threads(), ram, disk, cfg.keep_merged and merge,
                                  cfg.study)


def launch(cfg: ExportConfig) -> Path:
    """Pre-flight here (refusing at once when it would not fit), then run the export as a job."""
    src = resolve_source(cfg.source, cfg.checkpoint)
    preflight.check(plan(cfg, src))
    cfg.name = export_name(cfg, src)
    out = exports_dir() / cfg.name
    if (out / "export.json").exists() and not cfg.overwrite:
        raise IrisError(f"export {cfg.name} already exists: choose another name or tick overwrite.")
    out.mkdir(parents=True, exist_ok=True)
    save_yaml(cfg, out / CONFIG)  # the job reads exactly this object back (python -m core.export --config)
    jobs.launch(out, jobs.python_module_argv("core.export", "--config", str(out / CONFIG)))
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
    save_yaml(cfg, out / CONFIG)
    for old in ("export.json", "report.json", "study.json"):
        (out / old).unlink(missing_ok=True)
    cleaned = clean_leftovers(out, own_job=True)  # a died earlier attempt's merged copy and partial files
    if cleaned:
        print(f"[export] removed what a died earlier attempt left: {', '.join(cleaned)}", flush=True)
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
    from core.export import convert, verify

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

    f16_path = work / f"{name}-f16.gguf"
    model_dir, merge_info, f16, streamed = merge_and_convert(cfg, src, work, f16_path, begin, end, threads)
    if merge_info is not None and not cfg.verify and not cfg.keep_merged:
        shutil.rmtree(model_dir)  # converted; nothing reads it again, so give the disk back now
    ggufs: dict[str, Path] = {}
    for quant in cfg.quants:
        if quant == "f16":
            ggufs[quant] = f16
            continue
        begin(f"quantizing to {quant}")
        ggufs[quant] = quantize(f16, work / f"{name}-{quant}.gguf", quant, threads, streamed)
        end()
    # a study measures f16 as its reference even when it is not kept
    checked = {"f16": f16, **ggufs} if cfg.study else ggufs
    if "f16" not in checked:
        f16.unlink()
    lora = None
    if cfg.mode == "lora":
        begin("converting the LoRA adapter to GGUF")
        lora = convert.convert_lora(src.adapter_dir, src.base_dir, work / f"{name}-lora-f16.gguf")
        end()
    # the streamed f16's header already gave these (≈ 1.4 s of llama.cpp loading a 128k vocabulary again)
    meta = (streamed or {}).get("meta") or convert.gguf_metadata(next(iter(ggufs.values())))
    report = None
    if cfg.verify:
        begin("verifying each GGUF against the source model")
        report = verify.verify(model_dir, checked, src.adapter_dir if cfg.mode == "lora" else None, lora, threads)
        report.update(export=name, mode=cfg.mode, reference_dir=str(model_dir))
        write_json(out / "report.json", report)
        end()
    if cfg.study:
        from core.export import study

        begin(f"studying {', '.join(checked)}: perplexity, tok/s, TTFT, RAM ({cfg.study_threads} threads)")
        study.save(study.run_study(checked, report, model_dir, src.dataset, cfg.study_threads), out, name)
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


def quantize(f16: Path, out: Path, quant: str, threads: int, streamed: dict | None) -> Path:
    """`quant` from the f16 GGUF. When it was streamed during the conversion, the streamed file is the result
    if every tensor has the type llama.cpp's dry run on the f16 gave it (`streamed["planned"]`); in the f16's
    order, llama.cpp's pass only copies the already quantized tensors. Else it is quantized from the f16."""
    from core.export import convert

    if streamed and streamed["quant"] == quant:
        try:
            if streamed["final"]:
                planned = streamed.get("planned") or {}
                differ = sorted(n for n, t in streamed["types"].items() if planned.get(n) != t)
                if differ:
                    raise IrisError(f"{len(differ)} tensors differ from llama.cpp's plan, first {differ[0]}: "
                                    f"{streamed['types'][differ[0]]} vs {planned.get(differ[0])}")
                os.replace(streamed["path"], out)
                how = "into the final file, every tensor of the type llama.cpp's quantize gives it"
            else:
                out = convert.quantize(streamed["path"], out, quant, threads)
                how = "llama.cpp's pass copied them"
            print(f"[export] {quant}: {streamed['quantized']} of {streamed['tensors']} tensors were quantized "
                  f"while converting; {how}", flush=True)
            print(f"[export] {quant}: {streamed.get('predicted', 0)} of them were predicted from the base's bytes "
                  "before the converter wrote them (hash-equal)", flush=True)
            print(f"[export] streaming {quant}: header on disk after {streamed['seconds']['header']} s, waited "
                  f"{streamed['seconds']['waiting']} s for the converter's bytes, done after "
                  f"{streamed['seconds']['total']} s", flush=True)
            return out
        except IrisError as err:
            print(f"[export] {quant}: the streamed tensors were refused ({err}); quantizing from the f16",
                  flush=True)
        finally:
            Path(streamed["path"]).unlink(missing_ok=True)
    return convert.quantize(f16, out, quant, threads)


def convert_streaming(cfg: ExportConfig, model_dir: Path, f16_path: Path, threads: int, merge) -> tuple[Path, dict | None]:
    """Convert to f16 while the first quant that `core.export.stream_quant` reproduces (q4_k_m, q5_k_m) is
    quantized from the f16's bytes as they are written (a thread here; the converter runs on one core).
    Meanwhile `core.export.predict` quantizes the tensors the LoRA leaves as they were on the core the
    converter's start leaves idle; the follower reuses each one whose written bytes hash-equal the guess."""
    import threading
    from concurrent.futures import ThreadPoolExecutor

    from core.export import convert, predict, stream_quant

    quant = next((q for q in stream_quant.STREAMED if q in cfg.quants), None)  # q4_k_m first: the usual choice
    if quant is None:
        return convert.convert_hf(model_dir, f16_path, merge=merge), None
    done, predictor = threading.Event(), None
    with ThreadPoolExecutor(1) as pool:
        pre = f16_path.with_name(f".{f16_path.stem}-{quant}-streamed.gguf.tmp")
        try:
            guesses = predict.plan(*merge, quant) if merge else []
            if guesses:
                predictor = predict.Predictor(guesses, pre.with_name(f".{f16_path.stem}-{quant}-predicted.tmp"))
        except Exception as err:  # predicting is only a shortcut: without it, everything is quantized as it lands
            print(f"[export] not predicting tensors ({type(err).__name__}: {err})", flush=True)
        following = pool.submit(stream_quant.follow, convert.tmp_name(f16_path), pre, quant, threads, done,
                                predictor and predictor.start())
        try:  # one torch thread: the follower's quantizing holds the cores, and idle torch workers spinning
            # between small ops cost ≈ 2.5 s of CPU on a 1B model (same bytes, measured alone: user 23.4 → 20.8 s)
            f16 = convert.convert_hf(model_dir, f16_path, merge=merge, torch_threads=1)
        finally:
            done.set()
        planned = None
        try:  # llama.cpp's own type for every tensor, from the finished f16, while the follower still quantizes
            planned = convert.planned_types(f16, quant)
        except IrisError as err:
            print(f"[export] {err}", flush=True)
        try:
            streamed = following.result()
        except Exception as err:  # a bug here must not cost the export: quantize from the f16 as before
            print(f"[export] quantizing while converting failed ({type(err).__name__}: {err}); "
                  "quantizing from the f16", flush=True)
            streamed = None
        finally:
            if predictor:
                predictor.close()
    return f16, streamed and {**streamed, "quant": quant, "planned": planned}


def merge_and_convert(cfg: ExportConfig, src: Source, work: Path, f16_path: Path, begin, end, threads: int = 1):
    """Merge the LoRA (when there is one and the mode is 'merged') while the converter starts, then convert
    to f16. Returns (the folder converted, the merge's report or None, the f16 GGUF, the streamed quant or
    None)."""
    from core.export import convert

    model_dir, merge_info, streamed = src.base_dir, None, None
    if cfg.mode == "merged" and src.adapter_dir is not None and not (cfg.verify or cfg.keep_merged or cfg.study):
        from core.export.merge import plan_merge, write_side_files

        # nothing reads a merged folder afterwards: the converter merges each tensor as it writes it
        begin("merging the LoRA while converting to an f16 GGUF (one pass, no merged copy on disk)")
        model_dir = work / "merged"
        model_dir.mkdir()
        write_side_files(Path(src.base_dir), Path(src.adapter_dir), model_dir, cfg.merge_dtype)
        merge_info = {**plan_merge(src.base_dir, src.adapter_dir, cfg.merge_dtype)[1], "on_the_fly": True}
        f16, streamed = convert_streaming(cfg, model_dir, f16_path, threads,
                                          (src.base_dir, src.adapter_dir, cfg.merge_dtype))
        end()
        begin("converted (in the merge's pass)")  # the plan's separate convert step, so progress counts match
    elif cfg.mode == "merged" and src.adapter_dir is not None:
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
        from core.export.merge import plain_view

        begin("converting to an f16 GGUF (llama.cpp convert_hf_to_gguf.py)")
        # a LoRA-only export's base GGUF takes the adapter's tokenizer files: one template for both export modes
        f16 = convert.convert_hf(plain_view(model_dir, work, src.adapter_dir if cfg.mode == "lora" else None), f16_path)
    end()
    return model_dir, merge_info, f16, streamed


def leftovers(out: Path) -> list[Path]:
    """Hidden work folders (`.work-*`: the merged model, the f16 GGUF), partial `.gguf.tmp` files, and atomic
    writes a kill cut short (`.status.json.PID.*.tmp` of a dead pid) in an export. Not a live writer's `.*.tmp`:
    the launcher's status write lives there for a moment too, and a rerun's clean-up deleting it made the
    launcher's rename fail."""
    from core.paths import writer_pid

    out = Path(out)
    if not out.is_dir():
        return []
    cut_short = [p for p in out.glob(".*.tmp") if (pid := writer_pid(p)) and not jobs.pid_alive(pid)]
    return sorted({*out.glob(".work-*"), *out.glob(".*.gguf.tmp"), *cut_short})


def clean_leftovers(out: Path, own_job: bool = False) -> list[str]:
    """Delete what a died or killed export left behind; refuses while the export's job is running
    (`own_job`: the caller is that job, starting again). Returns the names removed."""
    if not own_job and jobs.read_status(out).get("state") in jobs.ACTIVE:
        raise IrisError(f"export {Path(out).name} is still running: its work folder is in use.")
    removed = []
    for path in leftovers(out):
        shutil.rmtree(path, ignore_errors=True) if path.is_dir() else path.unlink(missing_ok=True)
        removed.append(path.name)
    return removed


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
        check_hub_repo(repo, token=token)  # only the owner's namespaces (IRIS_HUB_NAMESPACES, else the token's user)
    except IrisError as err:
        return {"repo": repo, "ok": False, "error": str(err)}
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
