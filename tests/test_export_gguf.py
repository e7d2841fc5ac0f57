"""Export through llama.cpp (slow): the GGUF loads and chats, q8_0 agrees with the merged model, outputs are atomic."""
from __future__ import annotations

import json
import os
from pathlib import Path

import pytest

from core import jobs
from core.errors import IrisError
from core.export.config import ExportConfig
from core.export.gguf import launch, main
from core.paths import exports_dir, read_json, runs_dir
from tests.export_helpers import make_run

pytestmark = pytest.mark.slow


@pytest.fixture
def llama3_256(llama3_256_dir) -> Path:
    """Tiny Llama with the real Llama-3 vocab and rows of 256 (K-quants need multiples of 256): conftest's,
    built once per session and shared with the chat and evaluate tests."""
    return llama3_256_dir


def _chat(gguf: Path, lora: Path | None = None) -> str:
    from llama_cpp import Llama

    llm = Llama(model_path=str(gguf), lora_path=str(lora) if lora else None, n_ctx=256, verbose=False, seed=0)
    out = llm.create_chat_completion([{"role": "user", "content": "Hello!"}], max_tokens=4, temperature=0)
    return out["choices"][0]["message"]["content"]


def test_run_checkpoint_exports_as_a_job_to_q8_0_and_q4_k_m(llama3_256):
    from core.export.convert import gguf_metadata

    make_run(runs_dir(), "tiny", str(llama3_256), llama3_256, checkpoints=(2,), final=True, dataset="chat-v3")
    folder = launch(ExportConfig(source="tiny", checkpoint=2, quants=["q8_0", "q4_k_m"]))
    status = jobs.wait(folder, timeout_s=900)
    assert status["state"] == "completed", jobs.tail(folder / jobs.LOG)
    assert folder.name == "tiny-ckpt2"
    assert sorted(p.name for p in folder.iterdir() if not p.name.startswith(".")) == [
        "export.json", "export.yaml", "job.log", "report.json", "status.json",
        "tiny-ckpt2-q4_k_m.gguf", "tiny-ckpt2-q8_0.gguf"]
    assert not list(folder.glob(".*"))  # no temporaries or work folder left behind
    info = read_json(folder / "export.json")
    assert info["source"] == {"run": "tiny", "checkpoint": 2, "dataset": "chat-v3", "base_model": str(llama3_256)}
    assert info["files"] == ["tiny-ckpt2-q8_0.gguf", "tiny-ckpt2-q4_k_m.gguf"] and info["quants"] == ["q8_0", "q4_k_m"]
    assert info["chat_template"] and info["tokenizer_pre"] == "llama-bpe"
    report = read_json(folder / "report.json")
    assert report["prompts"] == 8
    assert report["quants"]["q8_0"]["top1_agreement"] >= 0.9
    assert report["quants"]["q8_0"]["logit_correlation"] >= 0.99
    # A random 2-layer model has nearly flat logits, so 4-bit rounding flips many near-ties (0.65-0.97
    # seen across runs); well above chance (1 in 128k) is what this tiny model can show. The q8_0 bound
    # above is the acceptance criterion.
    assert report["quants"]["q4_k_m"]["top1_agreement"] >= 0.5
    meta = gguf_metadata(folder / "tiny-ckpt2-q4_k_m.gguf")
    assert "<|start_header_id|>" in meta["tokenizer.chat_template"]  # the Llama-3 template travelled
    assert isinstance(_chat(folder / "tiny-ckpt2-q4_k_m.gguf"), str)
    log = (folder / jobs.LOG).read_text()
    assert "[export] merging" in log and "[export] quantizing to q4_k_m" in log


def test_embedded_smollm2_run_exports_q8_0_that_agrees(home_with_model):
    from core.models import EMBEDDED_ID, resolve

    base = resolve(EMBEDDED_ID)
    make_run(runs_dir(), "smol", EMBEDDED_ID, base, checkpoints=(), final=True)
    folder = main(ExportConfig(source="smol", quants=["q8_0"], keep_merged=True))
    report = read_json(folder / "report.json")
    assert report["quants"]["q8_0"]["top1_agreement"] >= 0.9, report
    gguf = folder / "smol-q8_0.gguf"
    assert (folder / "merged" / "model.safetensors").exists()
    from core.export.convert import gguf_metadata

    meta = gguf_metadata(gguf)
    assert "<|im_start|>" in meta["tokenizer.chat_template"]
    # The materialised tokenizer is SmolLM2's byte-level BPE, which the converter recognises as 'smollm'
    # (with a SentencePiece-style decoder it used to write a vocab that llama.cpp aborted on).
    assert meta["tokenizer.ggml.pre"] == "smollm"
    assert meta["general.architecture"] == "llama"


def test_lora_only_gguf_is_applied_by_llama_cpp(copy_lora_only_export):
    # conftest's session export: `main(ExportConfig(source="lo", quants=["f16"], mode="lora"))` of a random LoRA
    # on llama3_256 (shared with test_chat_cli, which only reads it)
    folder = copy_lora_only_export
    info = read_json(folder / "export.json")
    assert info["lora"] == "lo-lora-f16.gguf" and info["files"] == ["lo-f16.gguf", "lo-lora-f16.gguf"]
    # the reference is base + adapter (peft); llama.cpp applies the LoRA GGUF to the base GGUF
    assert read_json(folder / "report.json")["quants"]["f16"]["top1_agreement"] >= 0.9
    assert isinstance(_chat(folder / "lo-f16.gguf", folder / "lo-lora-f16.gguf"), str)
    # the Chat page offers the base GGUF with the LoRA applied (never the LoRA file, or the bare base as the fine-tune)
    from core import inference

    listed = [m for m in inference.list_chat_models() if m.lineage.get("export") == "lo"]
    assert [(m.id, m.lora) for m in listed] == [("export:lo/lo-f16.gguf", str(folder / "lo-lora-f16.gguf"))]
    engine = inference.load_engine(listed[0].id, cache=inference.EngineCache())
    assert engine.llm.lora_path == str(folder / "lo-lora-f16.gguf")
    answer = engine.generate([{"role": "user", "content": "Hello!"}], inference.DecodingSettings(max_new_tokens=4))
    assert answer.stats.completion_tokens > 0


def test_failed_conversion_leaves_no_gguf_and_says_why(llama3_256, tmp_path):
    """A model llama.cpp cannot convert: the job fails with one sentence and no GGUF appears."""
    import shutil

    model = tmp_path / "odd-model"
    shutil.copytree(llama3_256, model)
    config = json.loads((model / "config.json").read_text())
    config["architectures"] = ["NoSuchArchForCausalLM"]
    (model / "config.json").write_text(json.dumps(config))
    with pytest.raises(IrisError, match="llama.cpp cannot convert this architecture|failed"):
        main(ExportConfig(source=str(model), quants=["q8_0"], verify=False))
    folder = exports_dir() / "odd-model"
    assert read_json(folder / "status.json")["state"] == "failed"
    assert not list(folder.rglob("*.gguf")) and not list(folder.glob(".*")) and not (folder / "export.json").exists()


def test_quantize_failure_removes_its_temporary(tmp_path):
    from core.export.convert import quantize

    bogus = tmp_path / "bogus.gguf"
    bogus.write_bytes(b"GGUF" + b"\0" * 64)
    with pytest.raises(IrisError, match="could not quantize"):
        quantize(bogus, tmp_path / "out-q8_0.gguf", "q8_0", 1)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["bogus.gguf"]


def test_final_adapter_and_checkpoint_ggufs_carry_the_plain_template(llama3_256):
    """#27: the GGUF of checkpoint-N carried the training template ({% generation %}), which plain Jinja and
    other runtimes reject. Both exports' templates now render in jinja2 and in llama-cpp-python's formatter,
    to exactly the text the training template gives through transformers."""
    import jinja2
    from llama_cpp.llama_chat_format import Jinja2ChatFormatter
    from transformers import AutoTokenizer

    from core.export.convert import gguf_metadata
    from core.templates import folder_has_markers, has_markers

    run = make_run(runs_dir(), "tp", str(llama3_256), llama3_256, checkpoints=(2,), final=True)
    trained = AutoTokenizer.from_pretrained(run / "checkpoints" / "checkpoint-2")
    assert "{% generation %}" in trained.chat_template
    chat = [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Hi"},
            {"role": "assistant", "content": "Hello!"}, {"role": "user", "content": "2+2?"}]
    want = trained.apply_chat_template(chat, add_generation_prompt=True, tokenize=False)
    for checkpoint, name in ((None, "tp"), (2, "tp-ckpt2")):
        folder = main(ExportConfig(source="tp", checkpoint=checkpoint, quants=["f16"], verify=False, keep_merged=True))
        template = gguf_metadata(folder / f"{name}-f16.gguf")["tokenizer.chat_template"]
        assert not has_markers(template), name
        env = jinja2.Environment(trim_blocks=True, lstrip_blocks=True)
        got = env.from_string(template).render(messages=chat, add_generation_prompt=True, bos_token=trained.bos_token)
        assert got == want, name
        formatted = Jinja2ChatFormatter(template, eos_token="<|eot_id|>", bos_token=trained.bos_token)(messages=chat)
        assert formatted.prompt == want, name
        assert not folder_has_markers(folder / "merged")


def _kill_during(folder: Path, needle: str, timeout_s: float = 600) -> None:
    """SIGKILL the export's own process (kill -9, not its session) as soon as its status says `needle`."""
    import os
    import signal
    import time

    deadline = time.time() + timeout_s
    while time.time() < deadline:
        status = read_json(folder / "status.json", default={}) or {}
        assert status.get("state") not in jobs.FINAL, f"ended before '{needle}': {status}"
        if needle in (status.get("message") or ""):
            os.kill(status["pid"], signal.SIGKILL)
            for _ in range(100):
                if not jobs.pid_alive(status["pid"]):
                    return
                time.sleep(0.1)
        time.sleep(0.05)
    raise TimeoutError(f"never saw '{needle}'")


def _processes_in(folder: Path) -> list[str]:
    import psutil

    found = []
    for proc in psutil.process_iter(["cmdline"]):
        cmd = " ".join(proc.info["cmdline"] or [])
        if str(folder) in cmd:
            found.append(cmd)
    return found


def test_kill_9_during_conversion_and_quantization_then_rerun(llama3_256):
    """#22: kill -9 mid-conversion and mid-quantization: no finished-looking GGUF, the job shows 'died', no
    converter keeps running, and running the same export again cleans the died attempt's .work-* and finishes."""
    import time

    from core.export.gguf import leftovers

    make_run(runs_dir(), "kd", str(llama3_256), llama3_256, checkpoints=(), final=True)
    cfg = dict(source="kd", quants=["q4_k_m", "q5_k_m", "q8_0"], verify=False)
    folder = exports_dir() / "kd"
    for needle in ("converting to an f16 GGUF", "quantizing to"):
        launch(ExportConfig(**cfg))
        _kill_during(folder, needle)
        assert jobs.read_status(folder)["state"] == "died"
        assert not [p.name for p in folder.iterdir() if p.name.endswith(".gguf")] and not (folder / "export.json").exists()
        assert [p.name for p in leftovers(folder) if p.name.startswith(".work-")], "the kill left no work folder?"
        time.sleep(1)
        assert _processes_in(folder) == []  # the converter died with the export (PR_SET_PDEATHSIG)
    launch(ExportConfig(**cfg))
    status = jobs.wait(folder, timeout_s=900)
    assert status["state"] == "completed", jobs.tail(folder / jobs.LOG)
    assert leftovers(folder) == [] and not list(folder.glob(".*"))
    assert sorted(p.name for p in folder.glob("*.gguf")) == ["kd-q4_k_m.gguf", "kd-q5_k_m.gguf", "kd-q8_0.gguf"]
    assert "removed what a died earlier attempt left: .work-" in (folder / jobs.LOG).read_text()


def test_a_rerun_removes_a_status_write_a_kill_cut_short_but_not_a_live_one(tmp_path, monkeypatch):
    """kill -9 between writing a status file's temporary copy and renaming it left `.status.json.*.tmp` in the
    export for good (seen once in the suite); a live writer's copy (the launcher's, at the same moment) must stay."""
    import subprocess
    import sys
    import tempfile

    from core import paths
    from core.export.gguf import leftovers

    prefixes = []
    mkstemp = tempfile.mkstemp
    monkeypatch.setattr(tempfile, "mkstemp", lambda **kw: prefixes.append(kw["prefix"]) or mkstemp(**kw))
    paths.write_json(tmp_path / "status.json", {"state": "running"})
    assert prefixes == [f".status.json.{os.getpid()}."] and not list(tmp_path.glob(".*"))
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    cut_short = tmp_path / f".status.json.{dead.pid}.k2x_9q0a.tmp"
    live = tmp_path / f".status.json.{os.getpid()}.p0m1n2b3.tmp"
    partial = tmp_path / ".kd-q8_0.gguf.tmp"
    for path in (cut_short, live, partial):
        path.write_text("{")
    assert paths.writer_pid(cut_short) == dead.pid and paths.writer_pid(partial) is None
    assert leftovers(tmp_path) == sorted([cut_short, partial])
