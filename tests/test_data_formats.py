"""core.data.formats: each normaliser on exact 3-row inputs, and every bad input with its message."""
import json

import pandas as pd
import pytest

from core.data import formats
from core.errors import IrisError

U, A, S = "user", "assistant", "system"


def m(role, content):
    return {"role": role, "content": content}


def test_sharegpt_three_rows_all_role_names():
    df = pd.DataFrame({
        "conversations": [
            [{"from": "system", "value": "Be brief."}, {"from": "human", "value": "2+2?"}, {"from": "gpt", "value": "4"}],
            [{"from": "user", "value": "hi"}, {"from": "assistant", "value": "hello"}],
            [{"from": "Human", "value": "q"}, {"from": "bot", "value": "a"}, {"from": "prompter", "value": "q2"},
             {"from": "model", "value": "a2"}],
        ],
        "source": ["s1", "s2", "s3"],
        "score": [5.0, 4.5, 3.25],
    })
    out = formats.normalise(df)
    assert list(out.columns) == ["messages", "source", "score"]
    assert out["messages"].tolist() == [
        [m(S, "Be brief."), m(U, "2+2?"), m(A, "4")],
        [m(U, "hi"), m(A, "hello")],
        [m(U, "q"), m(A, "a"), m(U, "q2"), m(A, "a2")],
    ]
    assert out["score"].tolist() == [5.0, 4.5, 3.25]


def test_alpaca_three_rows():
    df = pd.DataFrame({"instruction": ["Add", "Name a color", "Translate"], "input": ["1 and 2", "", None],
                       "output": ["3", "red", "hola"], "system": ["", "", "You translate."], "id": [7, 8, 9]})
    out = formats.normalise(df)
    assert list(out.columns) == ["messages", "id"]
    assert out["messages"].tolist() == [
        [m(U, "Add\n\n1 and 2"), m(A, "3")],
        [m(U, "Name a color"), m(A, "red")],
        [m(S, "You translate."), m(U, "Translate"), m(A, "hola")],
    ]


def test_openai_messages_three_rows_with_parts_and_developer():
    df = pd.DataFrame({"messages": [
        [{"role": "user", "content": "a"}, {"role": "assistant", "content": "b"}],
        [{"role": "developer", "content": "rules"}, {"role": "user", "content": [{"type": "text", "text": "x"},
                                                                                  {"type": "text", "text": "y"}]},
         {"role": "assistant", "content": "z"}],
        [{"role": "user", "content": "only"}, {"role": "assistant", "content": ""}],
    ], "lang": ["en", "en", "de"]})
    out = formats.normalise(df)
    assert out["messages"].tolist() == [[m(U, "a"), m(A, "b")], [m(S, "rules"), m(U, "xy"), m(A, "z")],
                                        [m(U, "only"), m(A, "")]]
    assert out["lang"].tolist() == ["en", "en", "de"]


@pytest.mark.parametrize("suffix", [".jsonl", ".json", ".csv", ".parquet"])
def test_files_round_trip(tmp_path, suffix):
    rows = [{"conversations": [{"from": "human", "value": f"q{i}"}, {"from": "gpt", "value": f"a{i}"}],
             "source": "x", "score": float(i)} for i in range(3)]
    path = tmp_path / f"d{suffix}"
    if suffix == ".jsonl":
        path.write_text("\n".join(json.dumps(r) for r in rows) + "\n")
    elif suffix == ".json":
        path.write_text(json.dumps(rows))
    elif suffix == ".csv":
        pd.DataFrame([{**r, "conversations": json.dumps(r["conversations"])} for r in rows]).to_csv(path, index=False)
    else:
        pd.DataFrame(rows).to_parquet(path)
    out = formats.load_source(str(path))
    assert out["messages"].tolist() == [[m(U, f"q{i}"), m(A, f"a{i}")] for i in range(3)]
    assert out["score"].tolist() == [0.0, 1.0, 2.0]


def test_malformed_jsonl_names_the_line(tmp_path):
    path = tmp_path / "bad.jsonl"
    path.write_text('{"messages": []}\n{"messages": [}\n')
    with pytest.raises(IrisError, match="line 2"):
        formats.read_file(path)


def test_unknown_shape_names_found_and_expected_columns():
    with pytest.raises(IrisError, match=r"found columns prompt, text; expected .*conversations.*instruction.*messages"):
        formats.detect_format(["text", "prompt"])


def test_empty_and_non_utf8_files(tmp_path):
    (tmp_path / "e.jsonl").write_text("")
    with pytest.raises(IrisError, match="empty"):
        formats.read_file(tmp_path / "e.jsonl")
    (tmp_path / "w.jsonl").write_text("\n \n")
    with pytest.raises(IrisError, match="empty"):
        formats.read_file(tmp_path / "w.jsonl")
    (tmp_path / "l1.jsonl").write_bytes(b'{"messages": "caf\xe9"}\n')
    with pytest.raises(IrisError, match="not UTF-8.*line 1"):
        formats.read_file(tmp_path / "l1.jsonl")


def test_giant_turn_is_refused():
    df = pd.DataFrame({"messages": [[m(U, "q"), m(A, "a")], [m(U, "x" * 10_000_000), m(A, "a")]]})
    with pytest.raises(IrisError, match="row 1: one user turn has 10.0 M characters"):
        formats.normalise(df)


def test_roles_that_do_not_alternate():
    df = pd.DataFrame({"messages": [[m(U, "q"), m(A, "a")], [m(U, "q"), m(U, "again"), m(A, "a")]]})
    with pytest.raises(IrisError, match="row 1: roles do not alternate \\(two user turns in a row\\)"):
        formats.normalise(df)
    kept = formats.normalise(df, keep_broken_roles=True)
    assert len(kept) == 2
    assert formats.role_order_problem([m(A, "x"), m(U, "y")]) == "starts with the assistant"
    assert formats.role_order_problem([m(U, "x"), m(S, "y"), m(A, "z")]) == "a system turn after the conversation started"


def test_unknown_role_name():
    df = pd.DataFrame({"conversations": [[{"from": "narrator", "value": "once"}]]})
    with pytest.raises(IrisError, match="unknown role 'narrator'"):
        formats.normalise(df)


def test_file_over_the_upload_limit(tmp_path, monkeypatch):
    monkeypatch.setenv("IRIS_MAX_UPLOAD_MB", "0.001")  # 1 KiB
    path = tmp_path / "big.jsonl"
    path.write_text(json.dumps({"messages": [m(U, "x" * 2000), m(A, "y")]}) + "\n")
    with pytest.raises(IrisError, match="over the 0 MB limit"):
        formats.read_file(path)


def test_hub_id_offline_is_one_clear_error(monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_DATASETS_OFFLINE", "1")
    with pytest.raises(IrisError, match="could not load 'nobody-here/no-such-dataset'"):
        formats.load_source("nobody-here/no-such-dataset")
    with pytest.raises(IrisError, match="neither an existing file nor a hub dataset id"):
        formats.load_source("no such thing")
