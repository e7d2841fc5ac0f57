"""The fast export path (#25): without verification the converter merges the LoRA on the fly (no merged
copy on disk), and its GGUFs are byte-identical to merging into a folder first and converting that; the
q4_k_m, quantized while the converter writes the f16 (`core.export.stream_quant`), is byte-identical to
llama.cpp's own quantize (default parameters) of the same f16, also where a row is not a multiple of 256,
and also when the tensors predicted ahead of the converter (`core.export.predict`) are predicted wrong.
The streamed file is the final one (llama.cpp's metadata order, tensor order and offsets), kept only when
llama.cpp's dry run on the f16 gives every tensor its type; otherwise the export quantizes from the f16."""
from __future__ import annotations

import ctypes
import hashlib
import threading
import time
from pathlib import Path

import pytest

from core.export.config import ExportConfig
from core.export.gguf import main
from core.paths import read_json, runs_dir
from tests.export_helpers import make_run

pytestmark = pytest.mark.slow


def _sha(path: Path) -> str:
    return hashlib.sha256(Path(path).read_bytes()).hexdigest()


def test_merge_on_the_fly_gives_the_same_bytes_as_merging_first(tmp_path, capsys):
    import llama_cpp

    from tests.helpers import make_tiny_llama

    # K-quants need rows of 256: ffn_down's rows of 320 take llama.cpp's fallbacks (q4_K → q5_0, q6_K → q8_0)
    base = make_tiny_llama(tmp_path / "model", hidden=256, intermediate=320)
    make_run(runs_dir(), "fast", str(base), base, checkpoints=(), final=True)
    # keep_merged needs the merged folder, so it takes the two-step path (merge into a folder, convert it)
    two_step = main(ExportConfig(source="fast", name="two-step", quants=["f16", "q4_k_m"], verify=False,
                                 keep_merged=True))
    assert "[export] merging the LoRA into the base (tensor by tensor)" in capsys.readouterr().out
    fused = main(ExportConfig(source="fast", name="fused", quants=["f16", "q4_k_m"], verify=False))

    log = capsys.readouterr().out
    info = read_json(fused / "export.json")
    assert info["merge"]["on_the_fly"] and info["merge"]["merged"] == 2 * 6
    assert not (fused / "merged").exists() and (two_step / "merged" / "model.safetensors").exists()
    assert "merging the LoRA into the base (tensor by tensor)" not in log and "Model successfully exported" in log
    # q4_k_m was quantized from the f16's bytes while the converter wrote them, into the final file
    # (2 layers × 7 matrices + the tied embedding); no pass of llama.cpp's quantize after it
    assert ("q4_k_m: 15 of 20 tensors were quantized while converting; into the final file, every tensor of the "
            "type llama.cpp's quantize gives it") in log
    # of those, the tensors the LoRA leaves as they were (the tied embedding, both ffn_gate) were quantized
    # from the base's bytes before the converter wrote them, and their written bytes hash-equalled the guess
    assert "q4_k_m: 3 of them were predicted from the base's bytes before the converter wrote them" in log
    assert list(info["timings_s"])[0].startswith("merging the LoRA while converting")
    # export.json's metadata came from the streamed f16's header; the two-step export's from llama.cpp's read
    two_step_info = read_json(two_step / "export.json")
    assert info["tokenizer_pre"] == two_step_info["tokenizer_pre"] == "llama-bpe"
    assert info["chat_template"] is two_step_info["chat_template"] is True
    for quant in ("f16", "q4_k_m"):
        assert _sha(fused / f"fused-{quant}.gguf") == _sha(two_step / f"two-step-{quant}.gguf"), quant

    # llama.cpp's own quantize, as a user runs it (all defaults: every core, no slab limit), of that f16
    params = llama_cpp.llama_model_quantize_default_params()
    params.ftype = llama_cpp.LLAMA_FTYPE_MOSTLY_Q4_K_M
    ref = tmp_path / "llama-cpp-q4_k_m.gguf"
    assert llama_cpp.llama_model_quantize(str(fused / "fused-f16.gguf").encode(), str(ref).encode(),
                                          ctypes.byref(params)) == 0
    assert _sha(ref) == _sha(fused / "fused-q4_k_m.gguf")


def _llama_cpp_quantize(src: Path, out: Path, quant: str) -> str:
    import llama_cpp

    params = llama_cpp.llama_model_quantize_default_params()
    params.ftype = getattr(llama_cpp, f"LLAMA_FTYPE_MOSTLY_{quant.upper()}")
    assert llama_cpp.llama_model_quantize(str(src).encode(), str(out).encode(), ctypes.byref(params)) == 0
    return _sha(out)


@pytest.fixture(scope="module")
def untied_f16(tmp_path_factory) -> Path:
    """An untied 4-layer Llama (output.weight of its own) with ffn_down rows of 320, converted to f16 once."""
    from core.export import convert
    from tests.helpers import make_tiny_llama

    work = tmp_path_factory.mktemp("untied")
    model = make_tiny_llama(work / "model", hidden=256, intermediate=320, layers=4, tie_embeddings=False)
    return convert.convert_hf(model, work / "untied-f16.gguf")


@pytest.mark.parametrize("quant", ["q4_k_m", "q5_k_m"])
def test_streamed_quant_of_a_growing_file_is_llama_cpps_own(untied_f16, tmp_path, quant):
    """`follow` reads a file still being written (copied here in 1 MB pieces, as the converter appends)."""
    from transformers import AutoTokenizer

    from core.export import convert, stream_quant

    growing, done = tmp_path / "growing.gguf", threading.Event()

    def write_slowly() -> None:
        with open(untied_f16, "rb") as src, open(growing, "wb") as dst:
            for block in iter(lambda: src.read(1 << 20), b""):
                dst.write(block)
                dst.flush()
                time.sleep(0.01)
        done.set()

    writer = threading.Thread(target=write_slowly)
    writer.start()
    streamed = stream_quant.follow(growing, tmp_path / "pre.gguf", quant, 2, done)
    writer.join()
    # 4 layers × 7 matrices + token_embd + output
    assert streamed["meta"] == {"general.architecture": "llama", "tokenizer.ggml.pre": "llama-bpe",
                                "tokenizer.chat_template": AutoTokenizer.from_pretrained(untied_f16.parent / "model").chat_template}
    assert {k: v for k, v in streamed.items() if k not in ("seconds", "meta", "types")} == {
        "path": tmp_path / "pre.gguf", "final": True, "quantized": 30, "predicted": 0, "tensors": 39}
    assert streamed["seconds"]["total"] >= streamed["seconds"]["header"] >= 0
    assert _sha(growing) == _sha(untied_f16)
    # the streamed file is llama.cpp's own quantized file, and its types are those of llama.cpp's dry run
    assert streamed["types"] == convert.planned_types(untied_f16, quant)
    assert _sha(streamed["path"]) == _llama_cpp_quantize(untied_f16, tmp_path / f"ref-{quant}.gguf", quant)


def _streamed_then_quantized(f16: Path, tmp_path: Path) -> tuple[dict, Path]:
    """q4_k_m streamed from a finished f16, then the export's quantize step given llama.cpp's dry-run plan."""
    from core.export import convert, gguf, stream_quant

    done = threading.Event()
    done.set()
    pre = stream_quant.follow(f16, tmp_path / "pre.gguf", "q4_k_m", 1, done)
    out = gguf.quantize(f16, tmp_path / "out.gguf", "q4_k_m", 1,
                        {**pre, "quant": "q4_k_m", "planned": convert.planned_types(f16, "q4_k_m")})
    return pre, out


def test_the_f16_order_file_goes_through_llama_cpps_pass(untied_f16, tmp_path, monkeypatch, capsys):
    """A model with a tensor whose type is not reproduced here is streamed in the f16's order, and llama.cpp's
    quantize makes the real file from it, copying the tensors that already have their type."""
    from core.export import stream_quant

    monkeypatch.setattr(stream_quant, "final_types", lambda *a: None)
    pre, out = _streamed_then_quantized(untied_f16, tmp_path)
    assert pre["final"] is False
    assert "tensors were quantized while converting; llama.cpp's pass copied them" in capsys.readouterr().out
    assert not pre["path"].exists()
    assert _sha(out) == _llama_cpp_quantize(untied_f16, tmp_path / "ref.gguf", "q4_k_m")


@pytest.mark.parametrize("final", [True, False])
def test_a_wrong_streamed_type_is_refused_and_quantized_from_the_f16(untied_f16, tmp_path, monkeypatch, capsys, final):
    """The safety net: a streamed type that differs from llama.cpp's dry-run plan is not kept (and in the
    f16's order, llama.cpp will not re-quantize a tensor whose type differs from its own choice), so the export
    quantizes from the f16 and the bytes stay llama.cpp's."""
    from core.export import stream_quant

    right = stream_quant.target_types
    monkeypatch.setattr(stream_quant, "target_types",
                        lambda *a: {**right(*a), "blk.0.attn_q.weight": stream_quant.Q8_0})  # llama.cpp: q4_K
    if not final:
        monkeypatch.setattr(stream_quant, "final_types", lambda *a: None)
    pre, out = _streamed_then_quantized(untied_f16, tmp_path)
    assert pre["final"] is final
    log = capsys.readouterr().out
    assert "the streamed tensors were refused" in log
    if final:
        assert "1 tensors differ from llama.cpp's plan, first blk.0.attn_q.weight: q8_0 vs q4_K" in log
    assert not pre["path"].exists()
    assert _sha(out) == _llama_cpp_quantize(untied_f16, tmp_path / "ref.gguf", "q4_k_m")


def test_models_whose_types_are_not_reproduced_are_not_streamed(untied_f16):
    """q8_0 (cheap: not streamed), and an arch with its own rules (falcon), give None: quantized as before."""
    from core.export import stream_quant

    with open(untied_f16, "rb") as f:
        _, kv, tensors, _ = stream_quant.parse_header(f)
    assert stream_quant.target_types(kv, tensors, "q8_0") is None
    assert stream_quant.target_types({**kv, "general.architecture": "falcon"}, tensors, "q4_k_m") is None
    types = stream_quant.target_types(kv, tensors, "q4_k_m")
    # llama.cpp's choices for 4 layers: attn_v / ffn_down of layers 2 and 3 get more bits (use_more_bits),
    # ffn_down's rows of 320 fall back (q6_K → q8_0, q4_K → q5_0); untied: output q6_K, token_embd q4_K
    assert types["output.weight"] == stream_quant.Q6_K and types["token_embd.weight"] == stream_quant.Q4_K
    assert [types[f"blk.{i}.attn_v.weight"] for i in range(4)] == [12, 12, 14, 14]
    assert [types[f"blk.{i}.ffn_down.weight"] for i in range(4)] == [6, 6, 8, 8]


def test_predicted_tensors_are_the_ones_the_lora_leaves_with_llama_cpps_types(tmp_path):
    """Only plain casts of the base are guessed (never q/k: the converter permutes their rows), typed as
    llama.cpp's quantize types them; a bf16 merge is never guessed."""
    from core.export import predict, stream_quant
    from tests.export_helpers import save_adapter
    from tests.helpers import make_tiny_llama

    base = make_tiny_llama(tmp_path / "model", hidden=256, intermediate=320, layers=4, tie_embeddings=False)
    adapter = save_adapter(base, tmp_path / "adapter", targets=["v_proj", "up_proj"])
    guesses = {g.name: g.type for g in predict.plan(base, adapter, "f16", "q4_k_m")}
    # ffn_down: rows of 320 fall back (q4_K → q5_0, q6_K → q8_0 for layers 2 and 3, as use_more_bits says)
    assert guesses == {"token_embd.weight": stream_quant.Q4_K, "output.weight": stream_quant.Q6_K,
                       **{f"blk.{i}.attn_output.weight": stream_quant.Q4_K for i in range(4)},
                       **{f"blk.{i}.ffn_gate.weight": stream_quant.Q4_K for i in range(4)},
                       **{f"blk.{i}.ffn_down.weight": [6, 6, 8, 8][i] for i in range(4)}}
    assert predict.plan(base, adapter, "bf16", "q4_k_m") == [] and predict.plan(base, adapter, "f16", "q8_0") == []


def test_a_wrong_prediction_is_caught_by_its_hash_and_quantized_as_written(tmp_path, monkeypatch, capsys):
    """Forced mispredictions (each ffn_gate guessed from another layer's): the written bytes' hash differs, the
    follower quantizes what the converter wrote and stops the predictor; the one right guess (the tied
    embedding, first in the file) is still reused, and the bytes stay llama.cpp's own."""
    from core.export import predict
    from tests.helpers import make_tiny_llama

    base = make_tiny_llama(tmp_path / "model", hidden=256, intermediate=320, layers=3)
    make_run(runs_dir(), "wrong", str(base), base, checkpoints=(), final=True)
    right = predict.plan

    def wrong(*args):
        guesses = right(*args)
        gates = [g for g in guesses if "ffn_gate" in g.name]
        sources = [g.source for g in gates]
        assert len(gates) == 3
        for g, source in zip(gates, sources[1:] + sources[:1]):
            g.source = source
        return guesses

    monkeypatch.setattr(predict, "plan", wrong)
    out = main(ExportConfig(source="wrong", name="wrong", quants=["f16", "q4_k_m"], verify=False))
    log = capsys.readouterr().out
    assert "q4_k_m: 1 of them were predicted from the base's bytes" in log
    assert not [p for p in out.rglob("*") if "predicted" in p.name]
    ref = tmp_path / "llama-cpp-q4_k_m.gguf"
    assert _sha(out / "wrong-q4_k_m.gguf") == _llama_cpp_quantize(out / "wrong-f16.gguf", ref, "q4_k_m")
