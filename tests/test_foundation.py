"""Workspace paths, atomic writes, YAML configs, jobs, llama.cpp tool lookup, the model registry."""
from __future__ import annotations

import dataclasses
import os
import sys
import time
from pathlib import Path

import pytest

from core import config, jobs, paths
from core.errors import IrisError


def test_workspace_layout_under_iris_home(iris_home):
    assert paths.iris_home() == iris_home.resolve()
    for sub in paths.SUBDIRS:
        assert (iris_home / sub).is_dir()
    assert paths.runs_dir() == iris_home.resolve() / "runs"


def test_check_name_rejects_paths():
    assert paths.check_name("lab2-v1.0") == "lab2-v1.0"
    for bad in ["", "../x", "a/b", ".hidden", "x" * 101, "sp ace"]:
        with pytest.raises(IrisError):
            paths.check_name(bad)


def test_atomic_dir_leaves_nothing_on_failure(tmp_path):
    final = tmp_path / "v1"
    with pytest.raises(RuntimeError):
        with paths.atomic_dir(final) as tmp:
            (tmp / "half.parquet").write_text("x")
            raise RuntimeError("disk full")
    assert not final.exists()
    assert list(tmp_path.iterdir()) == []
    with paths.atomic_dir(final) as tmp:
        (tmp / "ok").write_text("y")
    assert (final / "ok").read_text() == "y"
    with pytest.raises(IrisError, match="already exists"):
        with paths.atomic_dir(final):
            pass
    assert paths.listed(tmp_path) == [final]


def test_write_json_is_atomic_and_read_tolerates_torn(tmp_path):
    p = tmp_path / "s.json"
    paths.write_json(p, {"a": 1})
    assert paths.read_json(p) == {"a": 1}
    p.write_text('{"a": ')  # a torn foreign write
    assert paths.read_json(p, default={}) == {}


@dataclasses.dataclass
class _Inner:
    r: int = 16


@dataclasses.dataclass
class _Cfg:
    name: str
    lr: float = 2e-4
    targets: list = dataclasses.field(default_factory=lambda: ["q_proj", "v_proj"])
    inner: _Inner = dataclasses.field(default_factory=_Inner)


def test_yaml_round_trip_and_unknown_keys(tmp_path):
    cfg = _Cfg(name="x", inner=_Inner(r=8))
    config.save_yaml(cfg, tmp_path / "c.yaml")
    assert config.load_yaml(_Cfg, tmp_path / "c.yaml") == cfg
    with pytest.raises(IrisError, match="`learning_rat` is not a _Cfg field"):
        config.from_yaml(_Cfg, "name: x\nlearning_rat: 1")
    with pytest.raises(IrisError, match="line 1, column .*YAML syntax error"):
        config.from_yaml(_Cfg, "name: [")


def test_job_lifecycle_with_a_real_subprocess(tmp_path):
    job = tmp_path / "job"
    script = (
        "import sys, time\n"
        "from core import jobs\n"
        "d = sys.argv[1]\n"
        "jobs.update_status(d, state='running', step=0, total=100)\n"
        "for i in range(100):\n"
        "    if jobs.stop_requested(d):\n"
        "        jobs.update_status(d, state='stopped', step=i); sys.exit(0)\n"
        "    jobs.update_status(d, step=i); time.sleep(0.05)\n"
        "jobs.update_status(d, state='completed', step=100)\n"
    )
    pid = jobs.launch(job, [sys.executable, "-c", script, str(job)])
    assert pid > 0
    deadline = time.time() + 30
    while jobs.read_status(job).get("step", 0) < 3 and time.time() < deadline:
        time.sleep(0.1)
    with pytest.raises(IrisError, match="already"):
        jobs.launch(job, [sys.executable, "-c", "pass"])
    jobs.request_stop(job)
    status = jobs.wait(job, timeout_s=30)
    assert status["state"] == "stopped" and 3 <= status["step"] < 100


def test_killed_job_reads_as_died(tmp_path):
    job = tmp_path / "job"
    script = "import sys,time\nfrom core import jobs\njobs.update_status(sys.argv[1], state='running')\ntime.sleep(60)\n"
    pid = jobs.launch(job, [sys.executable, "-c", script, str(job)])
    deadline = time.time() + 30
    while jobs.read_status(job).get("state") != "running" and time.time() < deadline:
        time.sleep(0.1)
    os.killpg(os.getpgid(pid), 9)
    deadline = time.time() + 10
    while jobs.read_status(job)["state"] != "died" and time.time() < deadline:
        time.sleep(0.1)
    assert jobs.read_status(job)["state"] == "died"


def test_llama_cpp_tools_found_from_sdist_cache():
    from core import llamacpp

    t = llamacpp.tools()
    assert t.convert_hf.exists() and t.convert_lora.exists()
    assert (t.gguf_py / "gguf" / "__init__.py").exists()
    assert t.vocab("llama-bpe").stat().st_size > 1_000_000
    assert "start_header_id" in t.template(llamacpp_template := "meta-llama-Llama-3.2-3B-Instruct")
    assert llamacpp_template
    assert ".cache" in str(t.root) and "work/main" not in str(t.root).replace(str(paths.REPO_ROOT), "")


def test_llama_cpp_override_must_be_a_checkout(monkeypatch, tmp_path):
    from core import llamacpp

    monkeypatch.setenv("IRIS_LLAMA_CPP_DIR", str(tmp_path))
    with pytest.raises(IrisError, match="not a llama.cpp checkout"):
        llamacpp.tools()
    real = llamacpp.tools.__wrapped__ if hasattr(llamacpp.tools, "__wrapped__") else None
    assert real is None


def test_llama3_tokenizer_passes_llama_cpp_vectors():
    from core import llamacpp
    from core.data import tokenizers

    tok = tokenizers.load("llama-3")
    vocab = llamacpp.tools().vocab("llama-bpe")
    inputs = Path(str(vocab) + ".inp").read_text().split("\n__ggml_vocab_test__\n")
    outputs = Path(str(vocab) + ".out").read_text().split("\n")
    pairs = list(zip(inputs, outputs))
    assert len(pairs) >= 46
    for text, ids in pairs:
        assert tok.encode(text, add_special_tokens=False) == [int(x) for x in ids.split()], text
    assert len(tok) == 128256 and tok.eos_token == "<|eot_id|>"
    rendered = tok.apply_chat_template([{"role": "user", "content": "hi"}], tokenize=False, add_generation_prompt=True)
    assert rendered.startswith("<|begin_of_text|><|start_header_id|>system<|end_header_id|>")
    assert rendered.endswith("<|start_header_id|>assistant<|end_header_id|>\n\n")


def test_registry_lists_embedded_first_and_hub_ids():
    from core import models

    specs = models.list_models()
    assert specs[0].id == models.EMBEDDED_ID and specs[0].kind == "embedded"
    assert {"unsloth/Llama-3.2-1B-Instruct", "unsloth/Llama-3.2-3B-Instruct"} <= {s.id for s in specs}
    assert models.embedded_gguf_path().stat().st_size > 90_000_000


@pytest.mark.parametrize("offline", ["1", ""])
def test_hub_id_offline_gives_one_clear_sentence(monkeypatch, offline):
    from core import models

    monkeypatch.setenv("HF_HUB_OFFLINE", offline)
    t0 = time.time()
    with pytest.raises(IrisError) as info:
        models.resolve("unsloth/Llama-3.2-1B-Instruct")
    msg = str(info.value)
    assert "unsloth/Llama-3.2-1B-Instruct" in msg and "embedded" in msg and "\n" not in msg
    assert "Traceback" not in msg
    assert time.time() - t0 < 60


def test_local_folder_without_config_is_refused(tmp_path):
    from core import models

    with pytest.raises(IrisError, match="no config.json"):
        models.resolve(str(tmp_path))


def test_embedded_model_materialises_as_a_trainable_checkpoint(home_with_model, embedded_model_dir):
    import json

    from core import models

    assert models.resolve(models.EMBEDDED_ID).resolve() == embedded_model_dir.resolve()
    cfg = json.loads((embedded_model_dir / "config.json").read_text())
    assert cfg["architectures"] == ["LlamaForCausalLM"] and "quantization_config" not in cfg
    assert cfg["num_hidden_layers"] == 30 and cfg["hidden_size"] == 576
    assert (embedded_model_dir / "model.safetensors").stat().st_size > 500_000_000
    assert "<|im_start|>" in (embedded_model_dir / "chat_template.jinja").read_text()

    from transformers import AutoModelForCausalLM, AutoTokenizer

    tok = AutoTokenizer.from_pretrained(embedded_model_dir)
    model = AutoModelForCausalLM.from_pretrained(embedded_model_dir)
    ids = tok.apply_chat_template([{"role": "user", "content": "What is the capital of France?"}],
                                  add_generation_prompt=True, return_tensors="pt", return_dict=True)
    out = model.generate(**ids, max_new_tokens=12, do_sample=False)
    answer = tok.decode(out[0][ids["input_ids"].shape[1]:], skip_special_tokens=True)
    assert "Paris" in answer


@pytest.mark.slow
def test_materialised_tokenizer_matches_the_embedded_gguf(embedded_model_dir):
    """llama.cpp's converter must see SmolLM2's byte-level BPE (pre-tokenizer 'smollm'), not a
    SentencePiece vocab: token ids and decoded text agree with the GGUF's own tokenizer."""
    import json

    from llama_cpp import Llama
    from transformers import AutoTokenizer

    from core import models

    tj = json.loads((embedded_model_dir / "tokenizer.json").read_text())
    assert tj["decoder"]["type"] == "ByteLevel" and not tj["model"].get("byte_fallback")
    tok = AutoTokenizer.from_pretrained(embedded_model_dir)
    vocab = Llama(str(models.embedded_gguf_path()), vocab_only=True, verbose=False)
    for text in ["Hello world, it's 12345 tokens!\n\n  x = 3.14", "Ünïcode — naïve café 🚀", "a  b\tc"]:
        ids = tok.encode(text, add_special_tokens=False)
        assert ids == vocab.tokenize(text.encode(), add_bos=False, special=False), text
        assert tok.decode(ids) == text


@pytest.mark.slow
def test_embedded_gguf_answers_through_llama_cpp():
    from llama_cpp import Llama

    from core import models

    llm = Llama(str(models.embedded_gguf_path()), n_ctx=512, n_threads=2, verbose=False, seed=0)
    # At Q4_1 a 135M model's answers can flip against the fp32 checkpoint; this prompt is stable in both.
    out = llm.create_chat_completion(
        messages=[{"role": "user", "content": "What is the capital of France? Answer in one word."}],
        max_tokens=16, temperature=0)
    assert "Paris" in out["choices"][0]["message"]["content"]
