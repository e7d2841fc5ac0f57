"""`python -m core.chat` takes a model by id or by path, and both mean the same model: a LoRA-only export's
base GGUF given by path still gets its LoRA applied (slow: exports a tiny model through llama.cpp)."""
from __future__ import annotations

from pathlib import Path

import pytest

from core import inference
from core.chat.__main__ import main as chat_main
from core.export.config import ExportConfig
from core.export.gguf import main as export_main
from core.paths import runs_dir
from tests.export_helpers import make_run

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def llama3_256(tmp_path_factory) -> Path:
    """Tiny Llama with the real Llama-3 vocab and rows of 256 (what llama.cpp's export path needs)."""
    from tests.helpers import make_tiny_llama

    return make_tiny_llama(tmp_path_factory.mktemp("llama3_256") / "model", hidden=256, intermediate=512,
                           heads=4, kv_heads=2)


def test_a_path_and_an_id_of_a_lora_only_export_give_the_same_answer(llama3_256, capsys):
    make_run(runs_dir(), "lo", str(llama3_256), llama3_256, checkpoints=(), final=True)
    folder = export_main(ExportConfig(source="lo", quants=["f16"], mode="lora"))
    path, lora = folder / "lo-f16.gguf", folder / "lo-lora-f16.gguf"
    capsys.readouterr()  # the export's own log
    by_path = inference.find_model(str(path))
    assert by_path.lora == str(lora) and by_path.id == "export:lo/lo-f16.gguf" and by_path.lineage["run"] == "lo"
    outputs = []
    for model in ("export:lo/lo-f16.gguf", str(path)):
        inference.default_cache().unload("export:lo/lo-f16.gguf")  # each loads afresh, as a new CLI process would
        assert chat_main([model, "--prompt", "Hello!", "--system", "", "--temperature", "0",
                          "--max-new-tokens", "8"]) == 0
        outputs.append(capsys.readouterr().out)
        assert inference.load_engine(model).llm.lora_path == str(lora)
    assert outputs[0] == outputs[1] and outputs[0].strip()
