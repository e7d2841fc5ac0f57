"""Chat core on tiny real transformers models: settings, trimming, templates, registry, transcripts, compare, blind."""
from __future__ import annotations

import json
import shutil
import threading
from pathlib import Path

import pytest
import yaml

from core import inference
from core.chat import compare, transcripts
from core.errors import IrisError
from core.inference.engine import fit_history
from core.paths import exports_dir, runs_dir

GREEDY = inference.DecodingSettings(temperature=0.0, max_new_tokens=8)


@pytest.fixture(scope="module")
def other_tiny(tmp_path_factory) -> str:
    """A second tiny Llama (other seed): a different model for LRU and compare tests."""
    from tests.helpers import make_tiny_llama

    return str(make_tiny_llama(tmp_path_factory.mktemp("other") / "model", seed=1))


def test_settings_yaml_round_trip_presets_and_validation():
    s = inference.DecodingSettings(temperature=0.5, top_p=0.8, top_k=10, repeat_penalty=1.2, max_new_tokens=64, seed=7)
    assert inference.DecodingSettings.from_yaml(s.to_yaml()) == s
    assert (inference.PRESETS["A"].temperature, inference.PRESETS["A"].top_p) == (0.2, 0.7)
    assert (inference.PRESETS["B"].temperature, inference.PRESETS["B"].top_p) == (0.7, 0.9)
    p = inference.preset("A")
    p.seed = 3  # a copy: the preset itself is unchanged
    assert inference.PRESETS["A"].seed == 0
    for bad in (dict(temperature=-1), dict(top_p=0), dict(max_new_tokens=0), dict(seed=-2)):
        with pytest.raises(IrisError):
            inference.DecodingSettings(**bad)
    with pytest.raises(IrisError, match="`temprature` is not a DecodingSettings field"):
        inference.DecodingSettings.from_yaml("temprature: 0.3\n")


def test_fit_history_drops_oldest_turns_after_system():
    msgs = [{"role": "system", "content": "s s"}]
    for i in range(3):
        msgs += [{"role": "user", "content": f"q{i} " * 5}, {"role": "assistant", "content": f"a{i} " * 5}]
    msgs.append({"role": "user", "content": "last question"})
    words = lambda ms: sum(len(m["content"].split()) for m in ms)  # noqa: E731 - a token counter for the test
    # 2 (system) + 6 × 5 + 2 = 34 words; without (q0, a0) 24; without (q1, a1) too, 14
    assert fit_history(msgs, words, 25) == ([msgs[0]] + msgs[3:], 2)
    assert fit_history(msgs, words, 15) == ([msgs[0]] + msgs[5:], 4)
    assert fit_history(msgs, words, 1000) == (msgs, 0)
    with pytest.raises(IrisError, match="prompt is"):
        fit_history(msgs, words, 3)


def test_empty_prompt_and_bad_messages(tiny_llama3_dir):
    engine = inference.load_engine(str(tiny_llama3_dir))
    for bad in ([], [{"role": "user", "content": "   "}],
                [{"role": "user", "content": "hi"}, {"role": "assistant", "content": "yo"}]):
        with pytest.raises(IrisError, match="empty prompt"):
            engine.stream(bad, GREEDY)
    with pytest.raises(IrisError, match="role"):
        engine.stream([{"role": "robot", "content": "x"}], GREEDY)


def test_hf_template_comes_from_the_tokenizer_and_streams(tiny_llama3_dir):
    from transformers import AutoTokenizer

    engine = inference.load_engine(str(tiny_llama3_dir))
    msgs = compare.compare_messages("Be brief.", "Hello there")
    expected = AutoTokenizer.from_pretrained(tiny_llama3_dir).apply_chat_template(msgs, tokenize=False,
                                                                                  add_generation_prompt=True)
    assert engine.render(msgs) == expected
    assert "<|start_header_id|>system<|end_header_id|>" in expected and "Be brief." in expected
    stream = engine.stream(msgs, inference.DecodingSettings(temperature=0.0, max_new_tokens=6))
    pieces = list(stream)
    assert "".join(pieces) == stream.text
    st = stream.stats
    assert st.prompt_tokens == len(engine.tokenize(expected)) and st.completion_tokens >= 1
    assert st.ttft_s > 0 and st.finish_reason in ("stop", "length")
    # greedy is deterministic; a second identical request gives the same answer
    assert engine.generate(msgs, inference.DecodingSettings(temperature=0.0, max_new_tokens=6)).text == stream.text


def test_history_trimmed_to_context_with_note(tiny_llama3_dir):
    engine = inference.EngineCache().load(str(tiny_llama3_dir), n_ctx=256)  # fresh: the default cache has it at 2048
    assert engine.n_ctx == 256
    msgs = [{"role": "system", "content": "sys"}]
    for i in range(6):
        msgs += [{"role": "user", "content": f"question {i} " + "word " * 20},
                 {"role": "assistant", "content": f"answer {i} " + "word " * 20}]
    msgs.append({"role": "user", "content": "final question"})
    s = engine.stream(msgs, GREEDY)
    assert s.stats.trimmed_messages > 0 and "left out" in s.note and "256-token" in s.note
    assert s.messages[0] == msgs[0] and s.messages[-1] == msgs[-1] and s.messages[1]["role"] == "user"
    assert s.messages == [msgs[0]] + msgs[1 + s.stats.trimmed_messages:]
    assert s.stats.prompt_tokens <= 256 - 8
    list(s)
    with pytest.raises(IrisError, match="prompt is"):
        engine.stream([{"role": "user", "content": "word " * 400}], GREEDY)


def test_stop_flag_ends_the_answer(tiny_llama3_dir):
    engine = inference.load_engine(str(tiny_llama3_dir))
    s = engine.stream(compare.compare_messages("", "Go"), inference.DecodingSettings(temperature=0.0, max_new_tokens=50))
    for _ in s:
        s.stop()
    assert s.stats.finish_reason == "stopped" and s.stats.completion_tokens < 50


def _make_run(name: str, base: Path, dataset: str = "sample-v1") -> Path:
    """A run folder as the Train helper writes it: config.yaml + a real (untrained) LoRA adapter."""
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM, AutoTokenizer

    run = runs_dir() / name
    (run / "config.yaml").parent.mkdir(parents=True)
    (run / "config.yaml").write_text(yaml.safe_dump({"base_model": str(base), "dataset": dataset}))
    model = get_peft_model(AutoModelForCausalLM.from_pretrained(base),
                           LoraConfig(r=4, target_modules=["q_proj", "v_proj"], init_lora_weights=False))
    model.save_pretrained(run / "adapter")
    AutoTokenizer.from_pretrained(base).save_pretrained(run / "adapter")
    return run


def test_registry_lists_exports_merged_folders_and_run_adapters(tiny_llama3_dir):
    _make_run("r1", tiny_llama3_dir)
    export = exports_dir() / "e1"
    shutil.copytree(tiny_llama3_dir, export / "merged")
    (export / "tiny-q4_k_m.gguf").write_bytes(b"GGUF" + b"\0" * 60)
    (export / "export.json").write_text(json.dumps({"source": {"run": "r1", "checkpoint": "checkpoint-2",
                                                               "dataset": "sample-v1", "base_model": "tiny"}}))
    models = {m.id: m for m in inference.list_chat_models()}
    assert list(models)[0] == "smollm2-135m-instruct" and models["smollm2-135m-instruct"].kind == "gguf"
    g = models["export:e1/tiny-q4_k_m.gguf"]
    assert g.kind == "gguf" and g.lineage == {"run": "r1", "checkpoint": "checkpoint-2", "dataset": "sample-v1",
                                              "base_model": "tiny", "export": "e1", "quant": "Q4_K_M"}
    assert models["export:e1/merged"].kind == "hf" and models["export:e1/merged"].lineage["run"] == "r1"
    ckpt = runs_dir() / "r1" / "checkpoints" / "checkpoint-2"
    shutil.copytree(runs_dir() / "r1" / "adapter", ckpt)
    (ckpt / "COMPLETE").write_text("")
    models = {m.id: m for m in inference.list_chat_models()}
    assert models["run:r1@checkpoint-2"].lineage["checkpoint"] == "checkpoint-2"
    assert models["run:r1@checkpoint-2"].path == str(ckpt)
    r = models["run:r1"]
    assert r.kind == "adapter" and r.lineage["dataset"] == "sample-v1" and r.base == str(tiny_llama3_dir)
    answer = inference.load_engine("run:r1").generate(compare.compare_messages("", "Hi"), GREEDY)
    assert answer.stats.completion_tokens >= 1
    # a transcript of a chat with the adapter carries its lineage
    tid = transcripts.save_chat("run:r1", "sys", GREEDY, [{"role": "user", "content": "Hi"},
                                                   {"role": "assistant", "content": answer.text,
                                                    "stats": answer.stats.to_dict()}])
    t = transcripts.load_transcript(tid)
    assert t["model"]["lineage"] == {"run": "r1", "dataset": "sample-v1", "base_model": str(tiny_llama3_dir),
                                     "quant": "fp32"}
    assert t["settings"]["temperature"] == 0.0 and t["messages"][1]["content"] == answer.text
    assert [x["id"] for x in transcripts.list_transcripts()] == [tid]
    with pytest.raises(IrisError, match="no readable transcript"):
        transcripts.load_transcript("nope")
    with pytest.raises(IrisError, match="no model"):
        inference.load_engine("run:gone")


def test_lru_cache_and_loaded_ram(tiny_llama3_dir, other_tiny):
    other = other_tiny
    cache = inference.EngineCache(max_loaded=1)
    a = cache.load(str(tiny_llama3_dir))
    assert cache.load(str(tiny_llama3_dir)) is a
    cache.load(str(other))
    loaded = cache.loaded()
    assert [e["id"] for e in loaded] == [str(other)] and loaded[0]["ram_bytes"] > 0


def test_too_big_for_free_ram(tiny_llama3_dir, monkeypatch):
    import psutil

    real = psutil.virtual_memory()
    monkeypatch.setattr(psutil, "virtual_memory", lambda: real._replace(available=1 << 20))
    with pytest.raises(IrisError, match="RAM"):
        inference.EngineCache().load(str(tiny_llama3_dir))


def test_compare_grid_pairing_and_blind_vote(tiny_llama3_dir, other_tiny):
    other = other_tiny
    a, b = inference.DecodingSettings(temperature=0.0, max_new_tokens=5), \
        inference.DecodingSettings(temperature=1.0, top_p=0.9, max_new_tokens=5, seed=3)
    cells = compare.compare_grid([str(tiny_llama3_dir), other], {"A": a, "B": b})
    assert [(c.model_id, c.setting) for c in cells] == [(str(tiny_llama3_dir), "A"), (str(tiny_llama3_dir), "B"),
                                                        (other, "A"), (other, "B")]
    with pytest.raises(IrisError):
        compare.compare_grid([], {"A": a})
    with pytest.raises(IrisError, match="cells"):
        compare.compare_grid([str(i) for i in range(5)], {"A": a, "B": b, "C": a, "D": b})
    tid = compare.run_compare("Tell me a fact", "Be brief.", cells, blind_seed=11)
    t = transcripts.load_transcript(tid)
    msgs = compare.compare_messages("Be brief.", "Tell me a fact")
    for cell, saved in zip(cells, t["cells"]):  # each answer is that (model, setting) pair's own answer
        assert saved["model"]["id"] == cell.model_id and saved["setting"] == cell.setting
        assert saved["answer"] == inference.load_engine(cell.model_id).generate(msgs, cell.settings).text
    order = t["blind"]["order"]
    assert order == compare.blind_order(4, 11) and sorted(order) == [0, 1, 2, 3]
    voted = transcripts.record_vote(tid, 2)
    reread = transcripts.load_transcript(tid)["blind"]
    assert reread == voted["blind"] and reread["choice"] == 2 and reread["preferred_cell"] == order[2]
    assert reread["preferred"] == {"model": cells[order[2]].model_id, "setting": cells[order[2]].setting}
    with pytest.raises(IrisError):
        transcripts.record_vote(tid, 9)
    plain = compare.run_compare("Hi", "", cells[:1])
    with pytest.raises(IrisError, match="blind"):
        transcripts.record_vote(plain, 0)


def test_threads_on_one_engine_do_not_mix_answers(tiny_llama3_dir):
    engine = inference.load_engine(str(tiny_llama3_dir))
    prompts = ["Alpha", "Bravo beta", "Charlie gamma delta"]
    settings = inference.DecodingSettings(temperature=0.0, max_new_tokens=10)
    expected = {p: engine.generate(compare.compare_messages("", p), settings).text for p in prompts}
    got: dict[int, tuple[str, str]] = {}

    def work(i):
        p = prompts[i % 3]
        got[i] = (p, inference.load_engine(str(tiny_llama3_dir)).generate(compare.compare_messages("", p), settings).text)

    threads = [threading.Thread(target=work, args=(i,)) for i in range(6)]
    for th in threads:
        th.start()
    for th in threads:
        th.join()
    assert len(got) == 6 and all(text == expected[p] for p, text in got.values())
