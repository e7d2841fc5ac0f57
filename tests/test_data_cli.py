"""core.data CLI: import → filter → versions with lineage; atomic saves; every bad input exits 2 with its message."""
import json
import subprocess
import sys

import pandas as pd
import pytest

from core import versions
from core.data import store
from core.data.filters import DataRecipe, Step
from core.errors import IrisError
from core.paths import REPO_ROOT, datasets_dir


def cli(*args, env_home):
    import os
    env = {**os.environ, "IRIS_HOME": str(env_home), "HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1"}
    return subprocess.run([sys.executable, "-m", "core.data", *args], cwd=REPO_ROOT, env=env,
                          capture_output=True, text=True, timeout=600)


def write_jsonl(path, rows):
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


def chat(q, a):
    return {"messages": [{"role": "user", "content": q}, {"role": "assistant", "content": a}]}


def test_import_sample_then_filter_with_lineage(iris_home, tmp_path):
    out = cli("import", "sample", "--name", "sample", env_home=iris_home)
    assert out.returncode == 0, out.stderr
    manifest = versions.load_manifest("sample")
    assert manifest["parent"]["source"] == "bundled:finetome_sample.jsonl" and manifest["rows"]["train"] > 2000
    recipe = tmp_path / "r.yaml"
    recipe.write_text(DataRecipe(steps=[Step("empty_turns"), Step("role_order"), Step("exact_dedup")]).to_yaml())
    out = cli("filter", "sample", "--recipe", str(recipe), "--name", "clean", "--eval-fraction", "0.1",
              env_home=iris_home)
    assert out.returncode == 0, out.stderr
    m = versions.load_manifest("clean")
    assert m["kind"] == "filter"
    assert m["parent"] == {"version": "sample", "content_hash": manifest["content_hash"]}
    assert [s["step"] for s in m["steps"]] == ["empty_turns", "role_order", "exact_dedup"]
    assert m["steps"][0]["before"] == manifest["rows"]["train"]
    assert m["rows"]["train"] + m["rows"]["eval"] == m["steps"][-1]["after"]
    assert m["rows"]["eval"] == round(m["steps"][-1]["after"] * 0.1)
    assert m["dropped_by_reason"]["empty_turns"] == m["steps"][0]["dropped"]
    assert DataRecipe.from_yaml(versions.version_dir("clean").joinpath("recipe.yaml").read_text()).steps[0].kind == "empty_turns"
    assert versions.content_hash(pd.concat([versions.load("clean"), versions.load("clean", "eval")],
                                           ignore_index=True)) == m["content_hash"]


@pytest.mark.parametrize("content, message", [
    ('{"messages": []}\n{oops\n', "malformed JSON on line 2"),
    ('{"text": "a", "prompt": "b"}\n', "found columns prompt, text; expected"),
    ("", "is empty"),
    (b'{"instruction": "caf\xe9", "output": "x"}\n', "not UTF-8"),
    (json.dumps(chat("q", "x" * 10_000_000)) + "\n", "row 0: one assistant turn has 10.0 M characters"),
    (json.dumps({"conversations": [{"from": "human", "value": "a"}, {"from": "human", "value": "b"}]}) + "\n",
     "roles do not alternate"),
])
def test_bad_inputs_exit_2_and_write_nothing(iris_home, tmp_path, content, message):
    versions.save("existing", pd.DataFrame([chat("q", "a")]))
    before = sorted(p.name for p in datasets_dir().iterdir())
    path = tmp_path / "bad.jsonl"
    path.write_bytes(content if isinstance(content, bytes) else content.encode())
    out = cli("import", str(path), "--name", "new", env_home=iris_home)
    assert out.returncode == 2
    assert message in out.stderr and "Traceback" not in out.stderr
    assert sorted(p.name for p in datasets_dir().iterdir()) == before
    assert versions.to_records(versions.load("existing")) == [chat("q", "a")]


def test_upload_over_limit_and_hub_offline(iris_home, tmp_path, monkeypatch):
    path = write_jsonl(tmp_path / "big.jsonl", [chat("q" * 3000, "a")])
    import os
    env = {**os.environ, "IRIS_HOME": str(iris_home), "IRIS_MAX_UPLOAD_MB": "0.001"}
    out = subprocess.run([sys.executable, "-m", "core.data", "import", str(path), "--name", "x"], cwd=REPO_ROOT,
                         env=env, capture_output=True, text=True)
    assert out.returncode == 2 and "limit" in out.stderr
    out = cli("import", "nobody-here/no-such-dataset", "--name", "x", env_home=iris_home)
    assert out.returncode == 2 and "could not load 'nobody-here/no-such-dataset'" in out.stderr
    assert not versions.exists("x")


def test_save_is_atomic_and_immutable(iris_home, tmp_path, monkeypatch):
    rows = pd.DataFrame([chat("q", "a")])
    path = write_jsonl(tmp_path / "ok.jsonl", [chat("q", "a")])
    store.import_source(str(path), "v1")
    with pytest.raises(IrisError, match="already exists"):
        store.import_source(str(path), "v1")

    def boom(*a, **k):
        raise OSError("disk full")
    monkeypatch.setattr(pd.DataFrame, "to_parquet", boom)
    with pytest.raises(OSError):
        store.import_source(str(path), "v2")
    assert not versions.exists("v2")
    assert sorted(p.name for p in datasets_dir().iterdir()) == ["v1"]  # no half-written or temporary folder left
    assert versions.to_records(versions.load("v1")) == versions.to_records(rows)
