"""`python -m core.chat` takes a model by id or by path, and both mean the same model: a LoRA-only export's
base GGUF given by path still gets its LoRA applied (slow: exports a tiny model through llama.cpp)."""
from __future__ import annotations

import pytest

from core import inference
from core.chat.__main__ import main as chat_main

pytestmark = pytest.mark.slow


def test_a_path_and_an_id_of_a_lora_only_export_give_the_same_answer(copy_lora_only_export, capsys):
    # conftest's session export (`ExportConfig(source="lo", quants=["f16"], mode="lora")` of a random LoRA on the
    # 256-wide tiny Llama-3), copied into this test's workspace: the export itself is tested in test_export_gguf
    folder = copy_lora_only_export
    path, lora = folder / "lo-f16.gguf", folder / "lo-lora-f16.gguf"
    capsys.readouterr()  # what set-up printed (the session export's log when this test built it)
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
