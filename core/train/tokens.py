"""Tokenised training rows: only the rows a run uses, tokenised as it reaches them, and cached for later runs.

A run used to tokenise its whole dataset version before step 1 (86,892 FineTome rows ≈ 65 s on 2 cores for a
30-step run that reads 120 of them). Now:

- **streaming** (no packing, transformers backend): the trainer gets a `datasets.Dataset` of row numbers
  with a transform that tokenises a micro-batch's rows when the data loader asks for them. The sampler still
  shuffles all N row numbers with the run's seed, so the order is the one the seed gives, and a resumed run
  skips the batches it has done by their row numbers (nothing is tokenised for them);
- **full** (packing, or unsloth's trainer): packing needs every row's length, so every row is tokenised first,
  reporting `tokenising n/N` in status.json; rows already in the cache cost nothing.

Either way each tokenised row lands in a cache keyed by what decides its tokens: the version's content hash and
split, the tokenizer (vocabulary + special tokens), the chat template, max length and assistant-only loss
(`IRIS_HOME/cache/tokens/<key>/part-*.parquet`, one file per flush and process). A later run on the same
version reads rows from there and tokenises nothing it has seen.

A row is rendered with the chat template and only the template's own structure becomes control tokens: a
message whose text holds `<|im_end|>` or `<|eot_id|>` keeps it as ordinary text tokens (no false end of turn
inside a training example; `core.inference.chat_tokens.encode_chat_masked`, which evaluation and the chat
engines share). A row is `input_ids` plus `labels` (-100 where no loss is taken: everything but the assistant's replies when
assistant-only), cut to max length keeping the start, as trl cuts them. A row whose replies all lie beyond max
length would train nothing; it keeps its last max-length tokens instead (trl dropped such rows, which needs
every row tokenised before the first step).
"""
from __future__ import annotations

import hashlib
import json
import os
import time
import weakref
from pathlib import Path
from typing import Callable

from core import versions
from core.errors import IrisError
from core.inference.chat_tokens import encode_chat_masked, hf_specials
from core.paths import iris_home, write_json

CACHE_FORMAT = 2  # bump when the stored columns or their meaning change (2: message text stays text)
FLUSH_ROWS = 2000  # write the cache every N new rows, so a long first pass survives a kill
FLUSH_EVERY_S = 30.0  # while training streams rows: a few part files per run, at most 30 s of rows lost to a kill


def cache_root() -> Path:
    return iris_home() / "cache" / "tokens"


def messages_column(name: str, split: str):
    """The split's `messages` column as one Arrow array. Arrow, not pandas: 100k FineTome rows load in about a
    second, not fifteen."""
    import pyarrow.parquet as pq

    versions.load_manifest(name)  # raises: the version no longer exists
    path = versions.version_dir(name) / (versions.TRAIN if split == "train" else versions.EVAL)
    if not path.exists():
        raise IrisError(f"dataset version {name!r} has no {split} split: save it with an eval split.")
    return pq.read_table(path, columns=["messages"]).column("messages").combine_chunks()


def trainable_rows(column, assistant_only: bool) -> list[int]:
    """Positions of the rows that can train: rows with no assistant reply are left out when assistant-only.
    Positions are stable for a version (versions are immutable)."""
    import numpy as np
    import pyarrow.compute as pc

    if not assistant_only:
        return list(range(len(column)))
    turns = pc.list_flatten(column)
    replies = pc.and_(pc.equal(turns.field("role"), "assistant"),
                      pc.greater(pc.utf8_length(pc.fill_null(turns.field("content"), "")), 0))
    parents = pc.list_parent_indices(column).to_numpy()
    return np.unique(parents[replies.to_numpy(zero_copy_only=False).astype(bool)]).tolist()


def conversations(name: str, split: str, assistant_only: bool) -> tuple:
    """(the split's `messages` column, positions of the rows that can train)."""
    column = messages_column(name, split)
    keep = trainable_rows(column, assistant_only)
    if not keep:
        raise IrisError(f"dataset version {name!r} ({split}) has no conversation with an assistant reply.")
    return column, keep


def plain_messages(msgs) -> list[dict]:
    return [{"role": str(m["role"]), "content": str(m.get("content") or "")} for m in msgs]


def tokenizer_fingerprint(tokenizer) -> str:
    """What decides token ids besides the template: vocabulary, special tokens, class. Worked out once per
    tokenizer object and special tokens (~0.2 s for SmolLM2's 49k-entry vocabulary; a run has a train and an
    eval split)."""
    specials = json.dumps(tokenizer.special_tokens_map, sort_keys=True, default=str)
    seen = (len(tokenizer), specials)  # added tokens and special tokens change it; both are cheap to read
    memo = getattr(tokenizer, "_iris_fingerprint", None)
    if memo and memo[0] == seen:
        return memo[1]
    h = hashlib.sha256()
    h.update(type(tokenizer).__name__.encode())
    vocab = tokenizer.get_vocab()
    h.update(json.dumps(sorted(vocab.items(), key=lambda kv: kv[1]), ensure_ascii=False).encode())
    h.update(specials.encode())
    tokenizer._iris_fingerprint = (seen, h.hexdigest())
    return h.hexdigest()


def cache_key(name: str, split: str, tokenizer, max_length: int, assistant_only: bool) -> str:
    manifest = versions.load_manifest(name)
    parts = {"format": CACHE_FORMAT, "content": manifest.get("content_hash") or manifest.get("created"),
             "split": split, "tokenizer": tokenizer_fingerprint(tokenizer), "template": tokenizer.chat_template,
             "max_length": max_length, "assistant_only": assistant_only}
    return hashlib.sha256(json.dumps(parts, sort_keys=True).encode()).hexdigest()[:24]


def tokenise(tokenizer, messages: list[dict], max_length: int, assistant_only: bool,
             specials: dict[str, int] | None = None) -> tuple[list, list]:
    """(input_ids, labels) of one conversation with the tokenizer's (training) chat template, message text as
    plain text. `specials`: `chat_tokens.hf_specials(tokenizer)`, computed once by callers of many rows."""
    ids, mask = encode_chat_masked(tokenizer, messages, add_generation_prompt=False, specials=specials)
    labels = [t if m else -100 for t, m in zip(ids, mask)] if assistant_only else list(ids)
    if len(ids) > max_length:
        head = labels[:max_length]
        if all(x == -100 for x in head):  # the replies start past max length: keep the end instead
            return ids[-max_length:], labels[-max_length:]
        return ids[:max_length], head
    return ids, labels


class TokenCache:
    """Rows tokenised so far for one key: the part files' row numbers read at start, a part's tokens when a row
    of it is first asked for (a fully tokenised 100k-row version: 0.04 s to open, not 1.3 s), new rows written
    by `flush`."""

    def __init__(self, folder: Path):
        import pyarrow.parquet as pq

        self.folder = Path(folder)
        self.parts: list[Path | None] = []  # per table: its file while its tokens are not read yet
        self.tables, self.where = [], {}  # tables: the `row` column, or all of it once read; where: row → (table, position)
        for part in sorted(self.folder.glob("part-*.parquet")) if self.folder.exists() else []:
            try:
                rows = pq.read_table(part, columns=["row"])
            except Exception:  # a part torn by a kill mid-write is skipped: its rows are tokenised again
                continue
            for pos, row in enumerate(rows.column("row").to_pylist()):
                self.where.setdefault(row, (len(self.tables), pos))
            self.tables.append(rows)
            self.parts.append(part)
        self.pending: dict[int, tuple[list, list]] = {}
        self.tokenised = 0  # rows this process tokenised (tests and status.json count them)

    def __len__(self) -> int:
        return len(self.where) + len(self.pending)

    def __contains__(self, row: int) -> bool:
        return row in self.pending or row in self.where

    def table(self, index: int):
        """Table `index` with its tokens (read from its part file the first time)."""
        if self.parts[index] is not None:
            import pyarrow.parquet as pq

            self.tables[index], self.parts[index] = pq.read_table(self.parts[index]), None
        return self.tables[index]

    def get(self, row: int) -> tuple[list, list] | None:
        if row in self.pending:
            return self.pending[row]
        hit = self.where.get(row)
        if hit is None:
            return None
        table = self.table(hit[0])
        return table.column("input_ids")[hit[1]].as_py(), table.column("labels")[hit[1]].as_py()

    def put(self, row: int, ids: list, labels: list) -> None:
        self.pending[row] = (ids, labels)
        self.tokenised += 1

    def flush(self) -> None:
        """Write the pending rows as one more part file (atomically: a kill leaves no half file behind)."""
        if not self.pending:
            return
        import pyarrow as pa
        import pyarrow.parquet as pq

        rows = sorted(self.pending)
        table = pa.table({"row": pa.array(rows, pa.int64()),
                          "input_ids": pa.array([self.pending[r][0] for r in rows], pa.list_(pa.int32())),
                          "labels": pa.array([self.pending[r][1] for r in rows], pa.list_(pa.int32()))})
        self.folder.mkdir(parents=True, exist_ok=True)
        final = self.folder / f"part-{time.time_ns()}-{os.getpid()}.parquet"
        tmp = final.with_suffix(".tmp")
        pq.write_table(table, tmp)
        os.replace(tmp, final)
        for pos, row in enumerate(rows):
            self.where.setdefault(row, (len(self.tables), pos))
        self.tables.append(table)
        self.parts.append(None)
        self.pending = {}


class RowSource:
    """One split of a version, tokenised on demand through its cache.

    The positions of the rows that can train are kept beside the cache (`keep.npy`), so a run whose rows are
    all cached never reads the version's conversations (`column` loads them at the first row not cached)."""

    def __init__(self, name: str, split: str, tokenizer, max_length: int, assistant_only: bool):
        self.name, self.split, self._column = name, split, None
        self.tokenizer, self.max_length, self.assistant_only = tokenizer, max_length, assistant_only
        self.specials = hf_specials(tokenizer)
        self.key = cache_key(name, split, tokenizer, max_length, assistant_only)
        folder = cache_root() / self.key
        self.cache = TokenCache(folder)
        self.keep = self._trainable_rows(folder / "keep.npy")
        if not (folder / "meta.json").exists():  # what the key stands for, for estimates that look for lengths
            write_json(folder / "meta.json", {"dataset": name, "split": split, "max_length": max_length,
                                              "assistant_only": assistant_only, "rows": len(self.keep)})

    def _trainable_rows(self, path: Path) -> list[int]:
        import numpy as np

        if path.exists():
            try:
                return np.load(path).tolist()
            except (OSError, ValueError):  # torn or foreign: computed again below
                pass
        self._column, keep = conversations(self.name, self.split, self.assistant_only)
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(f".keep-{os.getpid()}.tmp")
        with open(tmp, "wb") as f:
            np.save(f, np.asarray(keep, dtype=np.int64))
        os.replace(tmp, path)  # atomic: a reader sees the whole file or none
        return keep

    @property
    def column(self):
        """The split's conversations, read when a row is not in the cache."""
        if self._column is None:
            self._column = messages_column(self.name, self.split)
        return self._column

    def __len__(self) -> int:
        return len(self.keep)

    def encode(self, index: int) -> tuple[list, list]:
        """Row `index` (0..len-1, in the version's order) as (input_ids, labels)."""
        row = self.keep[index]
        hit = self.cache.get(row)
        if hit is None:
            hit = tokenise(self.tokenizer, plain_messages(self.column[row].as_py()), self.max_length,
                           self.assistant_only, self.specials)
            self.cache.put(row, *hit)
            if len(self.cache.pending) >= FLUSH_ROWS:
                self.cache.flush()
        return hit

    def streaming_dataset(self):
        """A Dataset of N row numbers whose items are tokenised when the data loader reads them."""
        from datasets import Dataset

        return Dataset.from_dict({"index": list(range(len(self)))}).with_transform(_Encode(self))

    def full_dataset(self, progress: Callable[[int, int], None] | None = None, every_s: float = 1.0):
        """Every row tokenised (the ones not in the cache first), as a Dataset with input_ids and labels, in the
        version's order. Built straight from the cache's Arrow tables: a cached 100k-row version takes seconds."""
        import numpy as np
        import pyarrow as pa
        from datasets import Dataset
        from datasets.table import InMemoryTable

        missing = [i for i in range(len(self)) if self.keep[i] not in self.cache]
        done, last = len(self) - len(missing), 0.0
        for n, i in enumerate(missing):
            self.encode(i)
            if progress and time.time() - last >= every_s:
                progress(done + n, len(self))
                last = time.time()
        self.cache.flush()
        if progress:
            progress(len(self), len(self))
        tables = [self.cache.table(i) for i in range(len(self.cache.tables))]
        table = pa.concat_tables(t.select(["row", "input_ids", "labels"]) for t in tables)
        rows, first = np.unique(table.column("row").to_numpy(), return_index=True)
        picked = table.take(pa.array(first[np.searchsorted(rows, np.asarray(self.keep))]))
        return Dataset(InMemoryTable(picked.select(["input_ids", "labels"]).combine_chunks()))


# The row sources of this process's streaming datasets, by cache key (see _Encode).
_SOURCES: "weakref.WeakValueDictionary[str, RowSource]" = weakref.WeakValueDictionary()


class _Encode:
    """A streaming dataset's transform: the rows of a micro-batch as input_ids and labels.

    `datasets` fingerprints a transform by pickling it; a closure over the RowSource pickled its tokenizer and
    every cached token table with it at every Launch (0.2 s with a few rows cached, 2.7 s with a 100k-row version
    tokenised in full). This
    one pickles as its cache key, which names everything its output depends on; a copy made in this process
    (deepcopy, pickle) finds the same source again."""

    def __init__(self, source: RowSource):
        self.source = source
        _SOURCES[source.key] = source

    def __call__(self, batch: dict) -> dict:
        pairs = [self.source.encode(i) for i in batch["index"]]
        return {"input_ids": [p[0] for p in pairs], "labels": [p[1] for p in pairs]}

    def __reduce__(self):
        return _encode_rows_of, (self.source.key,)


def _encode_rows_of(key: str) -> _Encode:
    source = _SOURCES.get(key)
    if source is None:  # another process (the data loader reads rows in this one: dataloader_num_workers=0)
        raise IrisError(f"token rows {key} are not open in this process: a streaming dataset cannot be sent "
                        "to another process.")
    return _Encode(source)


def flush_callback(sources: list[RowSource]):
    """A TrainerCallback that writes the sources' new rows to the cache: at the end of this process's first step
    (so a run stopped or killed right after it leaves the rows step 1 read cached for the next run), then at most
    every FLUSH_EVERY_S seconds, at every checkpoint and at the end. Step end comes before the step's loss is
    logged, so whoever sees a step's loss in metrics.jsonl finds that step's rows in the cache."""
    from transformers import TrainerCallback

    def flush() -> None:
        for source in sources:
            source.cache.flush()

    class FlushTokens(TrainerCallback):
        last = 0.0  # time.time() of this process's last flush; 0: none yet, so the first step end flushes

        def on_step_end(self, args, state, control, **kwargs):
            if time.time() - self.last >= FLUSH_EVERY_S:
                flush()
                self.last = time.time()

        def on_save(self, args, state, control, **kwargs):
            flush()

        def on_train_end(self, args, state, control, **kwargs):
            flush()

    return FlushTokens()
