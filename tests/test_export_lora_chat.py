"""A LoRA-only export in the Chat list: its base GGUF with the LoRA GGUF applied at load, never the bare base."""
from __future__ import annotations

from core.inference import list_chat_models
from core.paths import exports_dir, write_json


def _export(name: str, mode: str, files: list[str], lora: str | None, write_info: bool = True):
    """An export folder as core.export leaves it: export.yaml at the start, GGUFs, then export.json."""
    folder = exports_dir() / name
    folder.mkdir(parents=True)
    (folder / "export.yaml").write_text(f"source: run-{name}\nmode: {mode}\n")
    for f in files:
        (folder / f).write_bytes(b"GGUF")
    if write_info:
        write_json(folder / "export.json", {
            "name": name, "mode": mode, "files": files, "lora": lora,
            "gguf": {f.rsplit("-", 1)[-1].removesuffix(".gguf"): f for f in files if f != lora},
            "source": {"run": f"run-{name}", "checkpoint": None, "dataset": "d-v1", "base_model": "tiny"}})
    return folder


def _exported(models, name: str):
    return [m for m in models if m.lineage.get("export") == name]


def test_lora_export_lists_its_base_gguf_with_the_lora_applied():
    lo = _export("lo", "lora", ["lo-q8_0.gguf", "lo-f16.gguf", "lo-lora-f16.gguf"], "lo-lora-f16.gguf")
    _export("mg", "merged", ["mg-q4_k_m.gguf"], None)
    models = list_chat_models()

    listed = _exported(models, "lo")
    assert [m.id for m in listed] == ["export:lo/lo-f16.gguf", "export:lo/lo-q8_0.gguf"]  # no LoRA file alone
    for m in listed:
        assert m.kind == "gguf" and m.lora == str(lo / "lo-lora-f16.gguf")
        assert "base" in m.label and "+ LoRA lo-lora-f16.gguf" in m.label
        assert m.lineage["lora"] == "lo-lora-f16.gguf" and m.lineage["run"] == "run-lo"
    merged = _exported(models, "mg")
    assert [(m.id, m.lora) for m in merged] == [("export:mg/mg-q4_k_m.gguf", "")]
    assert "LoRA" not in merged[0].label


def test_lora_export_without_its_lora_file_or_export_json_is_not_listed_as_the_fine_tune():
    gone = _export("gone", "lora", ["gone-f16.gguf"], "gone-lora-f16.gguf")  # LoRA file deleted
    _export("early", "lora", ["early-f16.gguf", "early-lora-f16.gguf"], None, write_info=False)  # finishing
    models = list_chat_models()
    assert not (gone / "gone-lora-f16.gguf").exists()
    assert _exported(models, "gone") == [] and _exported(models, "early") == []
