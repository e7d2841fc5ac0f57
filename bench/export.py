"""Export benchmark: Iris's streaming export to q4_k_m vs the naive chain, same model, same run.

Run as: .venv/bin/python bench/export.py [--keep DIR] [--study]

Model: the exact Llama-3.2-1B architecture (core.models.LLAMA_CONFIGS) with random bf16 weights, the
rebuilt Llama-3 tokenizer (llama.cpp recognises it as llama-bpe), and a random r=16 LoRA on the six
projections q,k,v,o,up,down (speed and memory do not depend on the weight values).

  naive: load base + adapter (peft), merge_and_unload, save_pretrained; convert_hf_to_gguf.py → f16;
         llama_model_quantize → q4_k_m with default parameters. Three processes, one after another.
  iris:  python -m core.export RUN --quant q4_k_m f16 --no-verify: the same converter merges the LoRA tensor
         by tensor as it writes the f16 GGUF, and q4_k_m is quantized from that file's bytes as they land
         (core.export.stream_quant, ggml's own quantize), each at its final place in llama.cpp's layout, so
         the streamed file is the q4_k_m (kept when llama.cpp's dry run on the f16 gives every tensor its type).
         While the converter starts (≈ 20 s on one core, no tensor bytes yet), the other core quantizes the
         tensors the LoRA leaves untouched from the base's bytes (core.export.predict); each is reused only
         when the converter's written f16 bytes hash-equal the prediction.

Every step runs as a separate process tree measured from outside: wall time, and peak RSS as the
maximum over time of the summed RSS of the whole tree (psutil, polled every 50 ms), with
/usr/bin/time -v's maximum (largest single process) beside it. Goal: peak ≤ 1.2 GB, wall ≤ 0.6× naive.
Bytes: Iris's q4_k_m must hash-equal llama.cpp's own quantize (default parameters) of the same f16 GGUF
(Iris keeps its f16 here for that check; the naive chain's f16 differs: it merged in bf16).

`--study` adds one line: the four quants f16, q8_0, q5_k_m, q4_k_m in one Iris job (one merge, one
conversion, three quantizations, no verification) vs four separate naive chains (each merge + convert +
its quantize; computed from the naive steps measured above plus a measured quantize per type).
The machine is shared (2 cores): figures are noisy; compare only within one run.
"""
from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))
MODEL_ID = "unsloth/Llama-3.2-1B-Instruct"
TARGETS = ["q_proj", "k_proj", "v_proj", "o_proj", "up_proj", "down_proj"]


def measured(argv: list[str], env: dict, log: Path) -> dict:
    """Run `argv` under /usr/bin/time -v; poll the tree's summed RSS. Returns wall_s, peak_tree, peak_single."""
    import psutil

    timing = log.with_suffix(".time")
    full = ["/usr/bin/time", "-v", "-o", str(timing), *argv] if Path("/usr/bin/time").exists() else argv
    start = time.perf_counter()
    with open(log, "ab") as out:
        proc = subprocess.Popen(full, stdout=out, stderr=subprocess.STDOUT, env=env, cwd=REPO)
        root, peak = psutil.Process(proc.pid), 0
        while proc.poll() is None:
            try:
                tree = [root, *root.children(recursive=True)]
                peak = max(peak, sum(p.memory_info().rss for p in tree if p.is_running()))
            except psutil.Error:
                pass
            time.sleep(0.05)
    wall = time.perf_counter() - start
    if proc.returncode != 0:
        raise SystemExit(f"{argv[:4]} failed ({proc.returncode}); see {log}")
    single = 0
    if timing.exists():
        m = re.search(r"Maximum resident set size \(kbytes\): (\d+)", timing.read_text())
        single = int(m.group(1)) * 1024 if m else 0
    return {"wall_s": wall, "peak_tree": peak, "peak_single": single}


def build(work: Path, env: dict) -> tuple[Path, Path]:
    """Random-weight Llama-3.2-1B (bf16) + random r=16 adapter, in a child process (not measured)."""
    code = f"""
import sys, torch
sys.path.insert(0, {str(REPO)!r})
from pathlib import Path
from transformers import AutoTokenizer, LlamaConfig, LlamaForCausalLM
from peft import LoraConfig, get_peft_model
from core import models
from core.data import tokenizers
work = Path({str(work)!r})
torch.manual_seed(0)
cfg = LlamaConfig(**models.LLAMA_CONFIGS[{MODEL_ID!r}], dtype="bfloat16")
with torch.device("meta"):
    model = LlamaForCausalLM(cfg)
model = model.to_empty(device="cpu").to(torch.bfloat16)
with torch.no_grad():
    for name, p in model.named_parameters():
        p.fill_(1.0) if "norm" in name else p.normal_(0, 0.02)
model.tie_weights()
model.save_pretrained(work / "base")
AutoTokenizer.from_pretrained(tokenizers.llama3_dir()).save_pretrained(work / "base")
peft = get_peft_model(model, LoraConfig(r=16, lora_alpha=16, target_modules={TARGETS!r}))
with torch.no_grad():
    for name, p in peft.named_parameters():
        if "lora_B" in name:
            p.normal_(0, 0.01)
peft.save_pretrained(work / "adapter")
"""
    subprocess.run([sys.executable, "-c", code], check=True, env=env, cwd=REPO)
    return work / "base", work / "adapter"


NAIVE_MERGE = """
import sys
from transformers import AutoModelForCausalLM, AutoTokenizer
from peft import PeftModel
base, adapter, out = sys.argv[1:4]
model = PeftModel.from_pretrained(AutoModelForCausalLM.from_pretrained(base), adapter).merge_and_unload()
model.save_pretrained(out)
AutoTokenizer.from_pretrained(base).save_pretrained(out)
"""
NAIVE_QUANT = """
import ctypes, sys, llama_cpp
p = llama_cpp.llama_model_quantize_default_params()
p.ftype = getattr(llama_cpp, sys.argv[3] if len(sys.argv) > 3 else "LLAMA_FTYPE_MOSTLY_Q4_K_M")
p.nthread = 0
sys.exit(llama_cpp.llama_model_quantize(sys.argv[1].encode(), sys.argv[2].encode(), ctypes.byref(p)))
"""


def naive(base: Path, adapter: Path, work: Path, env: dict) -> dict:
    from core.llamacpp import tools

    merged, f16, q4 = work / "naive-merged", work / "naive-f16.gguf", work / "naive-q4_k_m.gguf"
    log = work / "naive.log"
    steps = {
        "merge_and_unload + save_pretrained": measured([sys.executable, "-c", NAIVE_MERGE, str(base), str(adapter), str(merged)], env, log),
        "convert_hf_to_gguf f16": measured([sys.executable, str(tools().convert_hf), str(merged), "--outfile", str(f16),
                                            "--outtype", "f16"], env, log),
        "quantize q4_k_m (defaults)": measured([sys.executable, "-c", NAIVE_QUANT, str(f16), str(q4)], env, log),
    }
    return {"steps": steps, "wall_s": sum(s["wall_s"] for s in steps.values()),
            "peak_tree": max(s["peak_tree"] for s in steps.values()),
            "peak_single": max(s["peak_single"] for s in steps.values()), "size": q4.stat().st_size}


def iris(base: Path, adapter: Path, work: Path, env: dict, quants: tuple[str, ...] = ("q4_k_m", "f16"),
         name: str = "bench") -> dict:
    home = work / "iris_home"
    run = home / "runs" / name
    run.mkdir(parents=True)
    shutil.copytree(adapter, run / "adapter")
    (run / "config.yaml").write_text(f"base_model: {base}\ndataset: bench\n")
    log = work / f"iris-{name}.log"
    log.unlink(missing_ok=True)  # measured() appends: only this run's lines below
    result = measured([sys.executable, "-m", "core.export", name, "--quant", *quants, "--no-verify"],
                      {**env, "IRIS_HOME": str(home)}, log)
    info = json.loads((home / "exports" / name / "export.json").read_text())
    for line in log.read_text(errors="replace").splitlines():
        if line.startswith("[export] streaming") or "while converting" in line or "predicted from" in line \
                or "refused" in line:
            print("  " + line)
    return {**result, "size": info["sizes"][f"{name}-q4_k_m.gguf"], "timings_s": info["timings_s"],
            "folder": home / "exports" / name}


def sha256(path: Path) -> str:
    import hashlib

    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 24), b""):
            h.update(block)
    return h.hexdigest()


def same_bytes_as_llama_cpp(i: dict, work: Path, env: dict) -> bool:
    """llama.cpp's own quantize (defaults) of Iris's f16 GGUF, hashed against Iris's q4_k_m."""
    ref = work / "llama-cpp-q4_k_m.gguf"
    measured([sys.executable, "-c", NAIVE_QUANT, str(i["folder"] / "bench-f16.gguf"), str(ref)], env, work / "ref.log")
    same = sha256(ref) == sha256(i["folder"] / "bench-q4_k_m.gguf")
    ref.unlink()
    return same


def study_line(base: Path, adapter: Path, work: Path, env: dict, n: dict) -> None:
    """Four quants in one Iris job vs four naive chains (merge + convert each time, then its quantize)."""
    from core.llamacpp import tools

    f16 = work / "naive-f16-again.gguf"
    measured([sys.executable, str(tools().convert_hf), str(base), "--outfile",
              str(f16), "--outtype", "f16"], env, work / "study.log")  # an f16 to quantize from (not timed)
    quant_s = {}
    for q, ftype in (("q8_0", "LLAMA_FTYPE_MOSTLY_Q8_0"), ("q5_k_m", "LLAMA_FTYPE_MOSTLY_Q5_K_M")):
        out = work / f"naive-{q}.gguf"
        quant_s[q] = measured([sys.executable, "-c", NAIVE_QUANT, str(f16), str(out), ftype], env, work / "study.log")["wall_s"]
        out.unlink()
    f16.unlink()
    steps = list(n["steps"].values())
    chain = steps[0]["wall_s"] + steps[1]["wall_s"]
    naive4 = 4 * chain + steps[2]["wall_s"] + quant_s["q8_0"] + quant_s["q5_k_m"]
    s = iris(base, adapter, work, env, ("f16", "q8_0", "q5_k_m", "q4_k_m"), "study")
    print(f"--study: f16+q8_0+q5_k_m+q4_k_m: iris one job {s['wall_s']:.1f} s (peak {s['peak_tree'] / 1e9:.2f} GB) "
          f"vs four naive chains {naive4:.1f} s: {s['wall_s'] / naive4:.2f}×; iris steps "
          + ", ".join(f"{k}: {v:.1f}" for k, v in s["timings_s"].items()))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--keep", help="work folder to keep and reuse (default: a temporary one, removed); a model "
                        "built there by an earlier run is reused")
    parser.add_argument("--study", action="store_true", help="add the four-quants-in-one-job vs four-chains line")
    args = parser.parse_args()
    work = Path(args.keep or tempfile.mkdtemp(prefix="iris-bench-export-"))
    work.mkdir(parents=True, exist_ok=True)
    env = {**os.environ, "PYTHONPATH": str(REPO), "TOKENIZERS_PARALLELISM": "false", "HF_HUB_OFFLINE": "1"}
    try:
        t = time.perf_counter()
        if (work / "base" / "config.json").exists() and (work / "adapter" / "adapter_config.json").exists():
            base, adapter = work / "base", work / "adapter"  # built by an earlier run with the same --keep
            print("reusing the random Llama-3.2-1B + r=16 adapter built earlier in", work)
        else:
            base, adapter = build(work, env)
            print(f"built random Llama-3.2-1B + r=16 adapter in {time.perf_counter() - t:.0f} s (not measured)")
        for old in ("naive-merged", "iris_home"):
            shutil.rmtree(work / old, ignore_errors=True)
        n = naive(base, adapter, work, env)
        shutil.rmtree(work / "naive-merged", ignore_errors=True)
        i = iris(base, adapter, work, env)
        gib = 1024**3
        print(f"\nExport to q4_k_m, Llama-3.2-1B config (random weights), r=16 LoRA on {', '.join(TARGETS)}; "
              f"{os.cpu_count()} cores, shared machine (noisy); load average now {os.getloadavg()[0]:.2f}")
        print(f"{'path':40} {'wall s':>8} {'peak tree GiB':>14} {'max proc GiB':>13}")
        for name, s in n["steps"].items():
            print(f"  naive: {name:32} {s['wall_s']:8.1f} {s['peak_tree'] / gib:14.2f} {s['peak_single'] / gib:13.2f}")
        print(f"{'naive chain':40} {n['wall_s']:8.1f} {n['peak_tree'] / gib:14.2f} {n['peak_single'] / gib:13.2f}")
        print(f"{'iris (python -m core.export)':40} {i['wall_s']:8.1f} {i['peak_tree'] / gib:14.2f} {i['peak_single'] / gib:13.2f}")
        for name, s in i["timings_s"].items():
            print(f"  iris: {name}: {s:.1f} s")
        print(f"ratios iris/naive: wall {i['wall_s'] / n['wall_s']:.2f} (goal ≤ 0.6), "
              f"peak {i['peak_tree'] / n['peak_tree']:.2f}; iris peak {i['peak_tree'] / 1e9:.2f} GB (goal ≤ 1.2 GB)")
        print(f"q4_k_m size: naive {n['size'] / 2**20:.0f} MiB, iris {i['size'] / 2**20:.0f} MiB; iris q4_k_m "
              f"hash-equal to llama.cpp's quantize of the same f16: {same_bytes_as_llama_cpp(i, work, env)}")
        if args.study:
            shutil.rmtree(i["folder"], ignore_errors=True)
            study_line(base, adapter, work, env, n)
    finally:
        if not args.keep:
            shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
