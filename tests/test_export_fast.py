"""The fast export path (#25): without verification the converter merges the LoRA on the fly (no merged
copy on disk), and its GGUFs are byte-identical to merging into a folder first and converting that; the
q4_k_m is byte-identical to llama.cpp's own quantize (default parameters) of the same f16."""
from __future__ import annotations

import ctypes
import hashlib
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

    base = make_tiny_llama(tmp_path / "model", hidden=256, intermediate=512)  # K-quants need rows of 256
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
    assert list(info["timings_s"])[0].startswith("merging the LoRA while converting")
    for quant in ("f16", "q4_k_m"):
        assert _sha(fused / f"fused-{quant}.gguf") == _sha(two_step / f"two-step-{quant}.gguf"), quant

    # llama.cpp's own quantize, as a user runs it (all defaults: every core, no slab limit), of that f16
    params = llama_cpp.llama_model_quantize_default_params()
    params.ftype = llama_cpp.LLAMA_FTYPE_MOSTLY_Q4_K_M
    ref = tmp_path / "llama-cpp-q4_k_m.gguf"
    assert llama_cpp.llama_model_quantize(str(fused / "fused-f16.gguf").encode(), str(ref).encode(),
                                          ctypes.byref(params)) == 0
    assert _sha(ref) == _sha(fused / "fused-q4_k_m.gguf")
