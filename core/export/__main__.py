"""Export a run (or any transformers folder) to GGUF: merge → convert → quantize → verify.

Run as:
    python -m core.export RUN_DIR [--checkpoint N] --quant q4_k_m [q8_0 ...]
    python -m core.export path/to/hf_model_folder --quant q8_0 f16
    python -m core.export RUN_DIR --lora --quant q4_k_m          (base GGUF + LoRA GGUF)
    python -m core.export RUN_DIR --quant f16 q8_0 q5_k_m q4_k_m --study [--study-threads 2]
                                                                 (quant study: study.json + study.html/png)
    python -m core.export --config EXPORT.yaml                   (an ExportConfig; what the page launches)
"""
from __future__ import annotations

import argparse
from pathlib import Path

from core.config import load_yaml
from core.errors import IrisError, cli_exit
from core.export.config import MODES, QUANTS, ExportConfig
from core.export.gguf import main


def cli(args: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m core.export", description="Export a run or model to GGUF.")
    parser.add_argument("source", nargs="?", help="run folder, run name, or a transformers model folder")
    parser.add_argument("--config", help="an ExportConfig YAML (every other flag is then ignored)")
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
    parser.add_argument("--study", action="store_true",
                        help="measure each quant here (quality, tok/s, TTFT, RAM) into study.json + a chart")
    parser.add_argument("--study-threads", type=int, default=2, help="threads for the study's speed measurement")
    parser.add_argument("--overwrite", action="store_true", help="replace an existing export of the same name")
    a = parser.parse_args(args)
    if not a.config and not a.source:
        parser.error("give a SOURCE (run or model folder), or --config EXPORT.yaml")
    try:
        if a.config:
            cfg = load_yaml(ExportConfig, Path(a.config))
        else:
            cfg = ExportConfig(source=a.source, checkpoint=a.checkpoint, quants=a.quant or ["q4_k_m"], name=a.name,
                               mode="lora" if a.lora else a.mode, merge_dtype=a.merge_dtype, verify=not a.no_verify,
                               keep_merged=a.keep_merged, threads=a.threads, ram_budget_gb=a.ram_budget_gb,
                               disk_budget_gb=a.disk_budget_gb, push_repo=a.push, overwrite=a.overwrite,
                               study=a.study, study_threads=a.study_threads)
        print(f"export ready: {main(cfg)}")
    except IrisError as err:
        cli_exit(err)


if __name__ == "__main__":
    cli()
