"""Chat on the embedded SmolLM2 GGUF through llama-cpp-python: template, streaming, KV reuse, threads, bad files, CLI."""
from __future__ import annotations

import json
import shutil
import subprocess
import sys
import threading

import pytest

from core import inference, models
from core.chat import compare, transcripts
from core.errors import IrisError
from core.paths import REPO_ROOT, exports_dir, transcripts_dir

pytestmark = pytest.mark.slow
QUESTION = "What is the capital of France? Answer in one word."  # "Paris" at Q4_1 and in fp32
GREEDY = inference.DecodingSettings(temperature=0.0, max_new_tokens=24)


@pytest.fixture(scope="module")
def engine():
    return inference.EngineCache().load(models.EMBEDDED_ID)


def test_template_is_the_one_stored_in_the_gguf(engine):
    import jinja2

    from core.llamacpp import ensure_gguf_importable

    ensure_gguf_importable()
    import gguf

    field = gguf.GGUFReader(models.embedded_gguf_path()).fields["tokenizer.chat_template"]
    template = bytes(field.parts[field.data[0]]).decode("utf-8")
    msgs = [{"role": "user", "content": QUESTION}]
    expected = jinja2.Environment(trim_blocks=True, lstrip_blocks=True).from_string(template).render(
        messages=msgs, add_generation_prompt=True, bos_token="<|im_start|>", eos_token="<|im_end|>")
    assert engine.render(msgs) == expected
    # No system message given: SmolLM2's own default system prompt (which lives only in the GGUF) appears.
    assert "You are a helpful AI assistant named SmolLM" in expected and expected.endswith("<|im_start|>assistant\n")


def test_streams_pieces_and_stats(engine):
    s = engine.stream(compare.compare_messages(transcripts.DEFAULT_SYSTEM, QUESTION), GREEDY)
    pieces = list(s)
    assert len(pieces) > 1 and "".join(pieces) == s.text and "Paris" in s.text
    st = s.stats
    assert st.finish_reason == "stop" and st.completion_tokens == len(pieces)
    assert st.prompt_tokens == len(engine.tokenize(engine.render(s.messages)))
    assert st.ttft_s > 0 and st.gen_tok_s > 0 and st.prompt_tok_s > 0


def test_follow_up_reuses_kv_cache_and_matches_cold_answer(engine):
    engine.reset_cache()
    msgs = compare.compare_messages(transcripts.DEFAULT_SYSTEM, QUESTION)
    first = engine.generate(msgs, GREEDY)
    assert first.stats.cached_tokens == 0
    msgs += [{"role": "assistant", "content": first.text}, {"role": "user", "content": "And of Germany?"}]
    warm = engine.generate(msgs, GREEDY)
    # the whole first turn (prompt + answer as generated) was already in the KV cache
    assert warm.stats.cached_tokens == first.stats.prompt_tokens + first.stats.completion_tokens
    engine.reset_cache()
    cold = engine.generate(msgs, GREEDY)
    assert cold.stats.cached_tokens == 0 and cold.text == warm.text


def test_stop_flag(engine):
    s = engine.stream(compare.compare_messages("", "Write a long story about a dragon."),
                      inference.DecodingSettings(temperature=0.0, max_new_tokens=100))
    pieces = []
    for i, piece in enumerate(s):
        pieces.append(piece)
        if i == 2:
            s.stop()
    # the worker generates ahead of the reader, so it stops within a few tokens of the reader's stop;
    # the reader still gets every piece generated
    assert s.stats.finish_reason == "stopped" and 3 <= s.stats.completion_tokens < 12
    assert "".join(pieces) == s.text


def test_concurrent_threads_keep_their_own_answers(engine):
    # Exact text can differ by KV-cache history (a prompt evaluated in one batch or in two rounds
    # differently, and greedy can flip on a near tie), so each thread checks its own fact instead.
    prompts = {QUESTION: "Paris", "What is the capital of Japan? Answer in one word.": "Tokyo",
               "What is the capital of Italy? Answer in one word.": "Rome"}
    assert all(want in engine.generate(compare.compare_messages("", p), GREEDY).text for p, want in prompts.items())
    got: dict[int, tuple[str, str]] = {}
    errors: list[BaseException] = []

    def work(i):
        try:
            p = list(prompts)[i % 3]
            got[i] = (p, engine.generate(compare.compare_messages("", p), GREEDY).text)
        except BaseException as err:  # surfaced below
            errors.append(err)

    threads = [threading.Thread(target=work, args=(i,)) for i in range(6)]
    for th in threads:
        th.start()
    for th in threads:
        th.join()
    assert not errors and len(got) == 6
    for p, text in got.values():
        others = [w for q, w in prompts.items() if q != p]
        assert prompts[p] in text and not any(w in text for w in others), (p, text)


def test_bad_gguf_files_give_one_clear_message(tmp_path):
    wrong = tmp_path / "wrong.gguf"
    wrong.write_bytes(b"PK\x03\x04" + b"\0" * 1000)
    with pytest.raises(IrisError, match="not a GGUF model"):
        inference.EngineCache().load(str(wrong))
    truncated = tmp_path / "truncated.gguf"
    with open(models.embedded_gguf_path(), "rb") as f:
        truncated.write_bytes(f.read(3_000_000))
    with pytest.raises(IrisError, match="truncated or not a valid model"):
        inference.EngineCache().load(str(truncated))


def _export(name: str = "e1") -> str:
    folder = exports_dir() / name
    folder.mkdir(parents=True)
    shutil.copy(models.embedded_gguf_path(), folder / "smol-q4_1.gguf")
    (folder / "export.json").write_text(json.dumps({"source": {"run": "r7", "checkpoint": None, "dataset": "ft-v2",
                                                               "base_model": "smollm2-135m-instruct"}}))
    return f"export:{name}/smol-q4_1.gguf"


def test_model_deleted_while_loaded(tmp_path):
    model_id = _export()
    cache = inference.EngineCache()
    engine = cache.load(model_id)
    (exports_dir() / "e1" / "smol-q4_1.gguf").unlink()
    with pytest.raises(IrisError, match="deleted"):
        engine.stream(compare.compare_messages("", QUESTION), GREEDY)
    with pytest.raises(IrisError, match="no model"):
        cache.load(model_id)


def test_cli_answers_and_saves_transcript_with_export_lineage():
    model_id = _export()
    proc = subprocess.run([sys.executable, "-m", "core.chat", model_id, "--prompt", QUESTION, "--temperature", "0",
                           "--save"], cwd=REPO_ROOT, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr
    assert "Paris" in proc.stdout and "tok/s" in proc.stderr and "TTFT" in proc.stderr
    [path] = list(transcripts_dir().glob("*.json"))
    t = json.loads(path.read_text())
    assert t["model"]["lineage"] == {"run": "r7", "dataset": "ft-v2", "base_model": "smollm2-135m-instruct",
                                     "export": "e1", "quant": "Q4_1"}
    assert t["settings"]["temperature"] == 0.0 and proc.stdout == t["messages"][-1]["content"] + "\n"
    assert t["messages"][-1]["stats"]["completion_tokens"] > 0
    bad = subprocess.run([sys.executable, "-m", "core.chat", "no-such-model", "--prompt", "x"], cwd=REPO_ROOT,
                         capture_output=True, text=True, timeout=120)
    assert bad.returncode == 2 and "no model 'no-such-model'" in bad.stderr and "Traceback" not in bad.stderr
