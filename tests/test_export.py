"""Export without llama.cpp: the streaming merge equals peft's merge_and_unload; config, pre-flight, bad input."""
from __future__ import annotations

import json
import shutil

import pytest

from core.config import from_yaml, to_yaml
from core.errors import IrisError
from core.export.config import ExportConfig
from core.export.gguf import main, plan
from core.export.merge import merge_lora
from core.paths import exports_dir, runs_dir
from tests.export_helpers import make_run, save_adapter


def _merged_reference(base_dir, adapter_dir):
    import torch
    from peft import PeftModel
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(base_dir, dtype=torch.float32)
    return PeftModel.from_pretrained(model, adapter_dir).merge_and_unload().state_dict()


@pytest.mark.parametrize("rslora", [False, True])
def test_streaming_merge_equals_merge_and_unload(tiny_llama3_dir, tmp_path, rslora):
    import torch
    from transformers import AutoModelForCausalLM

    adapter = save_adapter(tiny_llama3_dir, tmp_path / "adapter", r=4, alpha=16, rslora=rslora)
    out = tmp_path / "merged"
    out.mkdir()
    # small shards, so the index + several files are exercised
    summary = merge_lora(tiny_llama3_dir, adapter, out, "f16", shard_bytes=4_000_000)
    assert summary["merged"] == 2 * 6 and summary["shards"] > 1
    assert (out / "model.safetensors.index.json").exists() and (out / "chat_template.jinja").exists()
    assert json.loads((out / "config.json").read_text())["dtype"] == "float16"

    want = _merged_reference(tiny_llama3_dir, adapter)
    got = AutoModelForCausalLM.from_pretrained(out, dtype=torch.float32).state_dict()
    assert set(got) == set(want)
    base = AutoModelForCausalLM.from_pretrained(tiny_llama3_dir, dtype=torch.float32).state_dict()
    for name, ref in want.items():
        # f16 storage: ~3 significant digits
        assert torch.allclose(got[name], ref, rtol=2e-3, atol=2e-4), name
    changed = [n for n in want if not torch.allclose(base[n], want[n])]
    assert len(changed) == 12 and all("proj" in n for n in changed)  # the LoRA really moved those weights


def test_tied_lm_head_copy_is_not_written(tiny_llama3_dir, tmp_path):
    """A tied base that stores lm_head anyway: the merge writes embed_tokens only, and loads back equal."""
    import torch
    from safetensors.torch import load_file, save_file
    from transformers import AutoModelForCausalLM

    base = tmp_path / "base"
    shutil.copytree(tiny_llama3_dir, base)
    assert json.loads((base / "config.json").read_text())["tie_word_embeddings"] is True
    weights = load_file(base / "model.safetensors")
    assert "lm_head.weight" not in weights  # transformers does not store the tied copy ...
    weights["lm_head.weight"] = weights["model.embed_tokens.weight"].clone()  # ... some checkpoints do
    save_file(weights, base / "model.safetensors", metadata={"format": "pt"})
    adapter = save_adapter(base, tmp_path / "adapter", r=4)
    out = tmp_path / "merged"
    out.mkdir()
    summary = merge_lora(base, adapter, out, "f16")
    assert summary["dropped"] == ["lm_head.weight"] and summary["tensors"] == len(weights) - 1
    assert set(load_file(out / "model.safetensors")) == set(weights) - {"lm_head.weight"}
    got = AutoModelForCausalLM.from_pretrained(out, dtype=torch.float32).state_dict()
    want = _merged_reference(base, adapter)
    assert torch.allclose(got["lm_head.weight"], want["lm_head.weight"], rtol=2e-3, atol=2e-4)


def test_config_yaml_round_trip():
    cfg = ExportConfig(source="run-a", checkpoint=20, quants=["q8_0", "q4_k_m", "q8_0"], name="a-20",
                       ram_budget_gb=4.0)
    assert cfg.quants == ["q8_0", "q4_k_m"]
    assert from_yaml(ExportConfig, to_yaml(cfg)) == cfg


@pytest.mark.parametrize("fields, needle", [
    ({"quants": ["q3_x"]}, "`quants\\[0\\]` is 'q3_x', which is not one of"),
    ({"mode": "both"}, "`mode` is 'both'"),
    ({"name": "../x"}, "export folder"),
    ({"ram_budget_gb": -1}, "ram_budget_gb"),
])
def test_config_rejects_bad_fields(fields, needle):
    with pytest.raises(IrisError, match=needle.replace("(", r"\(")):
        ExportConfig(source="r", **fields)


def test_preflight_refuses_a_budget_that_is_too_small(tiny_llama3_dir):
    make_run(runs_dir(), "r1", str(tiny_llama3_dir), tiny_llama3_dir, checkpoints=(), final=True)
    plans = plan(ExportConfig(source="r1", quants=["q8_0", "f16"]))
    assert plans[0].fits and plans[0].peak_ram > 0 and plans[0].disk > 0 and plans[0].time_s > 0
    assert [s.name for s in plans[0].steps] == ["merge", "convert", "quantize q8_0", "verify"]

    # a budget one byte under the estimated peak is refused, naming the step; the message offers the
    # first cheaper path that fits, or says what to free when none does
    worst = max(plans[0].steps, key=lambda s: s.peak_ram)
    budget = plans[0].peak_ram - 1
    cheaper = next((p for p in plans[1:] if p.peak_ram <= budget), None)
    hint = f"choose {cheaper.path} instead" if cheaper else "free memory or disk"
    cfg = ExportConfig(source="r1", quants=["q8_0", "f16"], ram_budget_gb=budget / 1024**3)
    with pytest.raises(IrisError, match=f"would not fit: {worst.name} needs .*; {hint}"):
        main(cfg)
    with pytest.raises(IrisError, match="of disk"):
        main(ExportConfig(source="r1", quants=["q8_0"], disk_budget_gb=0.001))
    assert not list(exports_dir().iterdir())  # refused before anything was written


def test_bad_sources_give_one_sentence(tiny_llama3_dir, monkeypatch):
    runs = runs_dir()
    with pytest.raises(IrisError, match="neither a run"):
        main(ExportConfig(source="nope"))
    # a run that never saved an adapter
    (runs / "empty").mkdir()
    (runs / "empty" / "config.yaml").write_text(f"base_model: {tiny_llama3_dir}\ndataset: d\n")
    with pytest.raises(IrisError, match="no complete checkpoint|no final adapter"):
        main(ExportConfig(source="empty"))
    # a checkpoint that is not there, and one whose weights were torn mid-write
    run = make_run(runs, "r2", str(tiny_llama3_dir), tiny_llama3_dir, checkpoints=(2,), final=False)
    with pytest.raises(IrisError, match="checkpoint-7"):
        main(ExportConfig(source="r2", checkpoint=7))
    weights = run / "checkpoints" / "checkpoint-2" / "adapter_model.safetensors"
    weights.write_bytes(weights.read_bytes()[:-1000])
    with pytest.raises(IrisError, match="torn|truncated"):
        main(ExportConfig(source="r2", checkpoint=2, verify=False))
    assert not list(exports_dir().glob("*/*.gguf"))
    # a base model that only the hub has, while offline
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    shutil.copytree(run, runs / "r3")
    (runs / "r3" / "config.yaml").write_text("base_model: someone/not-cached-7B\ndataset: d\n")
    with pytest.raises(IrisError, match="not available offline"):
        main(ExportConfig(source="r3"))
    # a bare adapter folder is not a model
    with pytest.raises(IrisError, match="bare adapter"):
        main(ExportConfig(source=str(run / "checkpoints" / "checkpoint-2")))


def test_llama_cpp_scripts_run_unmodified_with_the_heap_trimmed(tmp_path):
    """`python -m core.export.convert SCRIPT ARGS` behaves as `python SCRIPT ARGS` (plus the malloc_trim thread)."""
    import subprocess

    from core.export.convert import script_argv
    from core.paths import REPO_ROOT

    (tmp_path / "helper_mod.py").write_text("VALUE = 'beside the script'\n")
    script = tmp_path / "tool.py"
    script.write_text(
        "import sys, threading, helper_mod\n"
        "print(__name__, sys.argv[1:], helper_mod.VALUE, sorted(t.name for t in threading.enumerate()))\n"
        "if __name__ == '__main__':\n    sys.exit(3)\n")
    proc = subprocess.run(script_argv(script, "--outtype", "f16", tmp_path / "out"), cwd=REPO_ROOT,
                          capture_output=True, text=True)
    assert proc.returncode == 3, proc.stderr
    assert proc.stdout.strip() == (f"__main__ ['--outtype', 'f16', '{tmp_path / 'out'}'] beside the script "
                                   "['MainThread', 'malloc_trim']")


def _render_plain(template: str, messages: list[dict], bos: str = "") -> str:
    """Plain Jinja (no transformers extensions), the way other runtimes see a template."""
    import jinja2

    env = jinja2.Environment(trim_blocks=True, lstrip_blocks=True)
    return env.from_string(template).render(messages=messages, add_generation_prompt=True, bos_token=bos)


CHAT = [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Hi"},
        {"role": "assistant", "content": "Hello!"}, {"role": "user", "content": "2+2?"}]


def test_merging_a_checkpoint_writes_the_plain_template(tiny_llama3_dir, tmp_path):
    """#27: a Trainer checkpoint holds the training template ({% generation %}); the merged folder must not."""
    import jinja2
    from transformers import AutoTokenizer

    from core.export.merge import plain_view
    from core.templates import folder_has_markers

    run = make_run(runs_dir(), "tpl", str(tiny_llama3_dir), tiny_llama3_dir, checkpoints=(2,), final=False)
    ckpt = run / "checkpoints" / "checkpoint-2"
    trained = AutoTokenizer.from_pretrained(ckpt)
    assert "{% generation %}" in trained.chat_template  # what trl leaves in a checkpoint
    with pytest.raises(jinja2.TemplateSyntaxError, match="generation"):
        _render_plain(trained.chat_template, CHAT)
    out = tmp_path / "merged"
    out.mkdir()
    merge_lora(tiny_llama3_dir, ckpt, out)
    assert not folder_has_markers(out)
    plain = AutoTokenizer.from_pretrained(out)
    want = trained.apply_chat_template(CHAT, add_generation_prompt=True, tokenize=False)
    assert _render_plain(plain.chat_template, CHAT, trained.bos_token) == want  # same text, plain Jinja
    # a model folder with markers that needs no merge is converted from a plain view (weights linked)
    view = plain_view(ckpt, tmp_path)
    assert view != ckpt and not folder_has_markers(view) and folder_has_markers(ckpt)
    assert (view / "adapter_model.safetensors").resolve() == (ckpt / "adapter_model.safetensors").resolve()
    assert plain_view(out, tmp_path / "unused") == out


def test_time_estimate_matches_measured_exports():
    """#18: the pre-flight said ~46 s for a 12 s export. Calibrated on two measured exports (see
    core.export.preflight): SmolLM2-135M q4_k_m + verify (12 s) and Llama-3.2-1B q4_k_m, no verify (45.8 s)."""
    from core.export.preflight import ModelSize, estimate

    smol = ModelSize(134_515_008, 49152 * 576, 576 * 1536, 4, "F32")
    llama_1b = ModelSize(1_235_814_400, 128256 * 2048, 2048 * 8192, 2, "BF16")
    for size, verify, measured in ((smol, True, 12.0), (llama_1b, False, 45.8)):
        plan_ = estimate(size, ["q4_k_m"], "merged", merge=True, verify=verify, adapter=10_000_000, threads=2)
        assert 0.6 * measured <= plan_.time_s <= 1.4 * measured, (measured, plan_.time_s, plan_.steps)


def test_verdicts_follow_the_quant_table_thresholds():
    """#18: pass / warn / fail per quant from the thresholds kept in QUANT_TABLE."""
    from core.export.verify import judged

    def verdict(quant, top1, corr):
        return judged(quant, {"top1_agreement": top1, "logit_correlation": corr, "positions": 10})["verdict"]

    assert verdict("q8_0", 0.99, 0.999) == "pass"
    assert verdict("q8_0", 0.93, 0.999) == "warn"
    assert verdict("q8_0", 0.8774, 0.9875) == "fail"  # the numbers: too much drift for q8_0 ...
    assert verdict("q4_k_m", 0.8774, 0.9875) == "pass"  # ... and what q4_k_m is expected to show
    assert verdict("q4_k_m", 0.75, 0.96) == "warn"
    assert verdict("q4_k_m", 0.2, 0.5) == "fail"
    assert verdict("f16", 0.97, 0.999) == "warn"
