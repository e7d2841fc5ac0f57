"""Load instruction datasets and normalise them into Iris's canonical `messages` shape.

Sources (`load_source(source, split=, revision=)`):
  "sample"              the bundled FineTome-shaped sample, data/samples/finetome_sample.jsonl
  a file path           .parquet, .jsonl/.ndjson, .json (a list of records), .csv
  a hub id              "mlabonne/FineTome-100k" through `datasets.load_dataset(id, split=, revision=)`;
                        offline (or a wrong id) → one IrisError sentence

Shapes (`detect_format(columns) -> "sharegpt" | "alpaca" | "messages"`):
  ShareGPT   `conversations` = [{"from": "human"|"gpt"|"system"|..., "value": str}, ...]
  Alpaca     `instruction`, `output`, optional `input` and `system`
  OpenAI     `messages` = [{"role": "user"|"assistant"|"system"|"developer", "content": str | [parts]}]

`normalise(df) -> df` returns a new DataFrame with the canonical `messages` column
([{"role": "system"|"user"|"assistant", "content": str}, ...]) in place of the shape's own columns and
every other column (FineTome's `source`, `score`, ...) kept as is. `conversation_text(messages)` is the
plain text the measurements and dedup use. Bad input raises IrisError saying what is wrong and where:
malformed JSONL (line number), unknown shape (found vs expected columns), empty file, non-UTF-8 bytes,
a turn over `MAX_TURN_CHARS`, roles that do not alternate (unless `keep_broken_roles=True`, which
leaves them for the recipe's `role_order` step), a file over `max_upload_bytes()`.
"""
from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any, Iterable

from core.errors import IrisError
from core.paths import REPO_ROOT

SAMPLE_PATH = REPO_ROOT / "data" / "samples" / "finetome_sample.jsonl"
# 1 M characters ≈ 250k tokens: far past any model's context, so a longer turn is a broken file.
MAX_TURN_CHARS = 1_000_000
FILE_SUFFIXES = (".parquet", ".jsonl", ".ndjson", ".json", ".csv")

USER_ROLES = {"human", "user", "usr", "person", "prompter", "question", "instruction", "input", "customer"}
ASSISTANT_ROLES = {"gpt", "assistant", "bot", "model", "chatgpt", "gpt-4", "gpt4", "bard", "claude",
                   "ai", "answer", "response", "output", "agent", "llm"}
SYSTEM_ROLES = {"system", "sys", "developer", "context"}
EXPECTED = {
    "sharegpt": "`conversations` (list of {from, value})",
    "alpaca": "`instruction` + `output` (+ optional `input`, `system`)",
    "messages": "`messages` (list of {role, content})",
}


def max_upload_bytes() -> int:
    """Largest file Iris loads (MB from IRIS_MAX_UPLOAD_MB, default 2048): FineTome-100k is ~240 MB as JSONL."""
    return int(float(os.environ.get("IRIS_MAX_UPLOAD_MB", "2048")) * 1024 * 1024)


# ---------------------------------------------------------------- loading

def load_source(source: str, split: str = "train", revision: str | None = None,
                keep_broken_roles: bool = False) -> "pandas.DataFrame":  # noqa: F821
    """Rows of `source` ("sample", a file path or a hub id), normalised to canonical `messages`."""
    if source == "sample":
        return normalise(read_file(SAMPLE_PATH), keep_broken_roles=True)  # it plants broken rows on purpose
    path = Path(source).expanduser()
    if path.exists() or path.suffix.lower() in FILE_SUFFIXES:
        return normalise(read_file(path), keep_broken_roles=keep_broken_roles)
    return normalise(load_hub(source, split=split, revision=revision), keep_broken_roles=keep_broken_roles)


def load_hub(repo_id: str, split: str = "train", revision: str | None = None):
    """A hub dataset split as a DataFrame, through the real `datasets.load_dataset` code path."""
    if repo_id.count("/") != 1 or any(c.isspace() for c in repo_id):
        raise IrisError(f"{repo_id!r} is neither an existing file nor a hub dataset id like 'mlabonne/FineTome-100k'.")
    from core import hub

    if not hub.reachable():  # ≤ 2 s, instead of `datasets` retrying for ~25 s
        raise IrisError(f"could not load {repo_id!r} (split {split!r}) from the Hugging Face hub: "
                        f"{hub.why_unreachable()}. Load a local file, a saved version or the bundled sample.")
    try:
        import datasets

        ds = datasets.load_dataset(repo_id, split=split or "train", revision=revision or None)
    except Exception as err:  # offline, unknown id, unknown split: all the user's to fix
        first = str(err).strip().splitlines()[0][:200] if str(err).strip() else type(err).__name__
        raise IrisError(f"could not load {repo_id!r} (split {split!r}) from the Hugging Face hub: {first}. "
                        "Check the id and your network, or load a local file or the bundled sample.") from None
    return ds.to_pandas()


def read_file(path: Path) -> "pandas.DataFrame":  # noqa: F821
    """Rows of a parquet / JSONL / JSON / CSV file (not yet normalised)."""
    import pandas as pd

    path = Path(path)
    if not path.exists():
        raise IrisError(f"{path} does not exist.")
    size = path.stat().st_size
    if size > max_upload_bytes():
        raise IrisError(f"{path.name} is {size / 2**20:.0f} MB, over the {max_upload_bytes() / 2**20:.0f} MB limit "
                        "(IRIS_MAX_UPLOAD_MB): load it from the hub or split it.")
    if size == 0:
        raise IrisError(f"{path.name} is empty: pick a file with rows in it.")
    suffix = path.suffix.lower()
    if suffix == ".parquet":
        try:
            df = pd.read_parquet(path)
        except Exception as err:
            raise IrisError(f"{path.name} is not a readable parquet file ({err}).") from None
    elif suffix in (".jsonl", ".ndjson"):
        df = pd.DataFrame(_jsonl_records(_text(path)))
    elif suffix == ".json":
        df = pd.DataFrame(_json_records(_text(path), path.name))
    elif suffix == ".csv":
        import io

        try:
            df = pd.read_csv(io.StringIO(_text(path)))
        except Exception as err:
            raise IrisError(f"{path.name} is not a readable CSV file ({err}).") from None
        for col in df.columns:  # nested columns arrive as JSON strings in a CSV
            if df[col].dtype == object and df[col].astype(str).str.lstrip().str.startswith(("[", "{")).all():
                df[col] = [json.loads(v) for v in df[col]]
    else:
        raise IrisError(f"{path.name}: unsupported file type {suffix or '(none)'}; use one of {', '.join(FILE_SUFFIXES)}.")
    if len(df) == 0:
        raise IrisError(f"{path.name} has no rows: pick a file with rows in it.")
    return df


def _text(path: Path) -> str:
    data = path.read_bytes()
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as err:
        line = data[: err.start].count(b"\n") + 1
        raise IrisError(f"{path.name} is not UTF-8 text: byte 0x{data[err.start]:02x} at offset {err.start} "
                        f"(line {line}). Re-save it as UTF-8.") from None
    if not text.strip():
        raise IrisError(f"{path.name} is empty: pick a file with rows in it.")
    return text.lstrip("\ufeff")


def _jsonl_records(text: str) -> list[dict]:
    rows = []
    for number, line in enumerate(text.splitlines(), start=1):
        if not line.strip():
            continue
        try:
            row = json.loads(line)
        except json.JSONDecodeError as err:
            raise IrisError(f"malformed JSON on line {number}: {err.msg} (column {err.colno}). "
                            "Fix that line; each line must be one JSON object.") from None
        if not isinstance(row, dict):
            raise IrisError(f"line {number} is a JSON {type(row).__name__}, not an object with columns.")
        rows.append(row)
    return rows


def _json_records(text: str, name: str) -> list[dict]:
    try:
        data = json.loads(text)
    except json.JSONDecodeError as err:
        raise IrisError(f"{name} is not valid JSON: {err.msg} at line {err.lineno}, column {err.colno}.") from None
    if isinstance(data, dict):  # {"data": [...]} or {"train": [...]}: one list of records inside
        lists = [v for v in data.values() if isinstance(v, list)]
        data = lists[0] if len(lists) == 1 else data
    if not isinstance(data, list) or not all(isinstance(r, dict) for r in data):
        raise IrisError(f"{name} must hold a list of row objects (or one key holding such a list).")
    return data


# ---------------------------------------------------------------- shapes

def detect_format(columns: Iterable[str]) -> str:
    """Which known shape these columns are: 'messages', 'sharegpt' or 'alpaca'."""
    cols = set(columns)
    if "messages" in cols:
        return "messages"
    if "conversations" in cols:
        return "sharegpt"
    if {"instruction", "output"} <= cols:
        return "alpaca"
    found = ", ".join(sorted(map(str, cols))) or "(none)"
    raise IrisError(f"no known dataset shape: found columns {found}; expected one of "
                    + "; ".join(f"{k}: {v}" for k, v in EXPECTED.items()) + ".")


SHAPE_NAMES = {"sharegpt": "ShareGPT", "alpaca": "Alpaca", "messages": "OpenAI messages"}


def row_shapes(df) -> "list[str | None]":  # noqa: F821
    """Each row's own shape from the columns it fills (None: none of the known ones)."""
    def filled(col):
        return df[col].notna().to_numpy() if col in df.columns else [False] * len(df)

    msgs, conv = filled("messages"), filled("conversations")
    alpaca = [a and b for a, b in zip(filled("instruction"), filled("output"))]
    return ["messages" if m else "sharegpt" if c else "alpaca" if a else None for m, c, a in zip(msgs, conv, alpaca)]


def check_one_shape(df) -> None:
    """Refuse a file whose rows change shape (ShareGPT rows, then an Alpaca row), naming the first row that does."""
    keys = {"messages", "conversations", "instruction"} & set(df.columns)
    if len(keys) < 2:
        return  # one shape's columns only: nothing to mix
    shapes = row_shapes(df)
    first = shapes[0]
    for i, shape in enumerate(shapes):
        if shape != first:
            looks = f"looks like {SHAPE_NAMES[shape]} ({EXPECTED[shape]})" if shape else \
                "has none of the known shapes' columns filled"
            raise IrisError(f"row {i + 1} {looks}, but the rows before it are {SHAPE_NAMES.get(first, first)} "
                            f"({EXPECTED.get(first, '?')}): one file holds one shape, so split it into one file "
                            "per shape.")


def normalise(df, keep_broken_roles: bool = False):
    """Canonical `messages` rows from a ShareGPT, Alpaca or OpenAI-messages DataFrame; other columns kept."""
    shape = detect_format(df.columns)
    check_one_shape(df)
    if shape == "alpaca":
        messages = [_from_alpaca(row) for row in df.itertuples(index=False)]
        dropped = ["instruction", "input", "output", "system"]
    else:
        col = "conversations" if shape == "sharegpt" else "messages"
        messages = [_from_turns(turns, i) for i, turns in enumerate(df[col])]
        dropped = [col]
    out = df.drop(columns=[c for c in dropped if c in df.columns]).reset_index(drop=True)
    out.insert(0, "messages", messages)
    check_rows(out, keep_broken_roles=keep_broken_roles)
    return out


def _from_alpaca(row) -> list[dict]:
    get = row._asdict().get
    instruction, extra = _str(get("instruction")), _str(get("input"))
    msgs = [{"role": "system", "content": _str(get("system"))}] if _str(get("system")).strip() else []
    msgs.append({"role": "user", "content": f"{instruction}\n\n{extra}" if extra.strip() else instruction})
    msgs.append({"role": "assistant", "content": _str(get("output"))})
    return msgs


def _from_turns(turns: Any, row: int) -> list[dict]:
    if hasattr(turns, "tolist"):
        turns = turns.tolist()
    if isinstance(turns, str):
        try:
            turns = json.loads(turns)
        except json.JSONDecodeError:
            raise IrisError(f"row {row}: the conversation is a string that is not JSON.") from None
    if not isinstance(turns, list):
        raise IrisError(f"row {row}: expected a list of turns, got {type(turns).__name__}.")
    out = []
    for turn in turns:
        if not isinstance(turn, dict):
            raise IrisError(f"row {row}: a turn is {type(turn).__name__}, expected an object with role/content.")
        role = turn.get("from", turn.get("role"))
        content = turn.get("value", turn.get("content"))
        out.append({"role": canonical_role(role, row), "content": _content(content)})
    return out


def canonical_role(role: Any, row: int = -1) -> str:
    """'human'/'gpt'/'bot'/... → 'user'/'assistant'/'system'; an unknown role is an IrisError."""
    name = str(role).strip().lower()
    if name in USER_ROLES:
        return "user"
    if name in ASSISTANT_ROLES:
        return "assistant"
    if name in SYSTEM_ROLES:
        return "system"
    raise IrisError(f"row {row}: unknown role {role!r}; known roles are user ({', '.join(sorted(USER_ROLES))}), "
                    f"assistant ({', '.join(sorted(ASSISTANT_ROLES))}) and system ({', '.join(sorted(SYSTEM_ROLES))}).")


def _content(content: Any) -> str:
    if hasattr(content, "tolist"):
        content = content.tolist()
    if isinstance(content, list):  # OpenAI content parts: keep the text ones
        return "".join(_str(p.get("text")) if isinstance(p, dict) else _str(p) for p in content)
    return _str(content)


def _str(value: Any) -> str:
    if value is None or (isinstance(value, float) and value != value):
        return ""
    return value if isinstance(value, str) else str(value)


# ---------------------------------------------------------------- checks

def role_order_problem(messages: list[dict]) -> str | None:
    """Why a conversation's roles do not alternate (system first, then user/assistant turns), or None."""
    roles = [m["role"] for m in messages]
    body = roles[next((i for i, r in enumerate(roles) if r != "system"), len(roles)):]
    if "system" in body:
        return "a system turn after the conversation started"
    if body and body[0] != "user":
        return "starts with the assistant"
    for a, b in zip(body, body[1:]):
        if a == b:
            return f"two {a} turns in a row"
    return None


def check_rows(df, keep_broken_roles: bool = False) -> None:
    """Refuse rows no recipe should see: a giant turn, no turns at all or (unless kept) broken role order."""
    if len(df) == 0:
        raise IrisError("the dataset has no rows.")
    for i, msgs in enumerate(df["messages"]):
        for m in msgs:
            if len(m["content"]) > MAX_TURN_CHARS:
                raise IrisError(f"row {i}: one {m['role']} turn has {len(m['content']) / 1e6:.1f} M characters "
                                f"(limit {MAX_TURN_CHARS / 1e6:.0f} M): that is not a chat turn; remove the row.")
        if not keep_broken_roles:
            problem = role_order_problem(msgs)
            if problem:
                raise IrisError(f"row {i}: roles do not alternate ({problem}). Fix the file, or load it with "
                                "'keep rows with broken role order' (--keep-broken-roles) so the recipe's "
                                "role_order step drops them.")


def as_lists(df):
    """`df` with `messages` as plain lists of dicts (parquet reads them back as numpy arrays)."""
    if len(df) and not isinstance(df["messages"].iat[0], list):
        df = df.copy()
        df["messages"] = [list(m) for m in df["messages"]]
    return df


def conversation_text(messages: list[dict]) -> str:
    """The turns' contents joined by blank lines: what dedup, language id and search look at."""
    return "\n\n".join(m["content"] for m in messages)


def to_sharegpt(messages: list[dict]) -> list[dict]:
    """Canonical messages → ShareGPT turns (human/gpt/system), FineTome's own shape."""
    names = {"user": "human", "assistant": "gpt", "system": "system"}
    return [{"from": names[m["role"]], "value": m["content"]} for m in messages]
