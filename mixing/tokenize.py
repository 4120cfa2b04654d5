"""Batched tokenization of cleaned documents: token ids + EOS, and the per-document fields mixing needs.

`Tokenize` is a plain callable over an Arrow table, so it is unit-testable without Ray; Ray Data calls
`tokenize_batch`, which keeps one `Tokenize` per worker process so the tokenizer loads once.
"""
from __future__ import annotations

import functools
import itertools
import json
import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import xxhash

from mixing.select import doc_hash
from mixing.shards import sha256_file
from pipeline.config import CODE, ConfigError

OTHER = "other"
_NULL_PARTITION = "__HIVE_DEFAULT_PARTITION__"  # how a null partition value comes back from a hive path

TOKENIZED_SCHEMA = pa.schema([
    ("id", pa.string()), ("category", pa.string()), ("key", pa.string()),
    ("n_tokens", pa.int64()), ("h", pa.uint64()), ("tie", pa.uint64()), ("content", pa.int64()),
    ("tokens", pa.list_(pa.uint32())),
])


@dataclass(frozen=True)
class TokenizerInfo:
    """What mixing needs to know about a tokenizer directory (from tokenizer_training)."""

    path: str
    eos_id: int
    pad_id: int
    vocab_size: int
    sha256: str

    @classmethod
    def load(cls, tokenizer_dir: str | os.PathLike) -> "TokenizerInfo":
        from tokenizer_training.load import load_tokenizer

        d = Path(tokenizer_dir)
        tok_file, cfg_file = d / "tokenizer.json", d / "tokenizer_config.json"
        for f in (tok_file, cfg_file):
            if not f.is_file():
                raise ConfigError(f"tokenizer directory {d}: missing {f.name}")
        cfg = json.loads(cfg_file.read_text(encoding="utf-8"))
        tok = load_tokenizer(d)
        ids = {}
        for role in ("eos_token", "pad_token"):
            token = cfg.get(role)
            token = token.get("content") if isinstance(token, dict) else token
            ids[role] = tok.token_to_id(token) if token else None
            if ids[role] is None:
                raise ConfigError(f"{cfg_file}: {role} {token!r} is missing or not in the vocabulary")
        return cls(str(d), ids["eos_token"], ids["pad_token"], tok.get_vocab_size(with_added_tokens=True),
                   sha256_file(tok_file))


def bucket_keys(category: pa.Array, lang: pa.Array, code_lang: pa.Array) -> tuple[list[str], list[str]]:
    """(category, key) per document: key is the language, or the programming language for code.

    A missing language becomes `other`; the planner excludes buckets outside the ratio tables.
    """
    cats = [str(c) for c in category.to_pylist()]
    keys = []
    for c, l, k in zip(cats, lang.to_pylist(), code_lang.to_pylist()):
        value = k if c == CODE else l
        keys.append(OTHER if value in (None, "", _NULL_PARTITION) else str(value))
    return cats, keys


def has_text(text: pa.ChunkedArray) -> pa.ChunkedArray:
    """Rows with text that is neither null nor blank: the others are no document to train on."""
    return pc.fill_null(pc.greater(pc.utf8_length(pc.utf8_trim_whitespace(text.cast(pa.string()))), 0), False)


class Tokenize:
    """Arrow batch of cleaned documents -> `TOKENIZED_SCHEMA` (tokens end with EOS).

    `h` is the selection hash of (seed, id); `tie` (a hash of the cleaned row's source, position and
    text, unique per row) tells apart documents that share an id, so the selection can take one
    without the other; `content` (a hash of the text) only breaks ties in the output order between
    documents that share an id, so even such input gives the same bytes.
    """

    def __init__(self, tokenizer_dir: str, seed: int):
        from tokenizer_training.load import load_tokenizer

        self.info = TokenizerInfo.load(tokenizer_dir)
        self.tokenizer = load_tokenizer(tokenizer_dir)
        self.seed = seed

    def __call__(self, batch: pa.Table) -> pa.Table:
        for name in ("id", "text", "category"):
            if name not in batch.column_names:
                raise ValueError(f"cleaned documents lack column {name!r} (have {batch.column_names})")
        batch = batch.filter(has_text(batch.column("text")))  # the mix counts the rest as `no_text`
        col = {n: batch.column(n).cast(pa.string()).combine_chunks() if n in batch.column_names
               else pa.nulls(batch.num_rows, pa.string())
               for n in ("id", "category", "lang", "code_lang", "source", "position")}
        if col["id"].null_count:
            raise ValueError("cleaned documents with a null id; every document needs an id")
        texts = batch.column("text").to_pylist()
        flat, lengths = self._token_ids(texts)
        offsets = np.zeros(len(texts) + 1, dtype=np.int64)
        np.cumsum(lengths, out=offsets[1:])
        cats, keys = bucket_keys(col["category"], col["lang"], col["code_lang"])
        ids = col["id"].to_pylist()
        content = np.fromiter((xxhash.xxh64_intdigest(t.encode("utf-8")) for t in texts), dtype=np.uint64,
                              count=len(texts))
        return pa.Table.from_arrays([
            col["id"], pa.array(cats, pa.string()), pa.array(keys, pa.string()), pa.array(lengths),
            pa.array(doc_hash(ids, self.seed), pa.uint64()),
            pa.array(_row_hash(col["source"].to_pylist(), col["position"].to_pylist(), content), pa.uint64()),
            pa.array(content.view(np.int64)),
            pa.ListArray.from_arrays(pa.array(offsets.astype(np.int32)), pa.array(flat)),
        ], schema=TOKENIZED_SCHEMA)

    def _token_ids(self, texts: list[str]) -> tuple[np.ndarray, np.ndarray]:
        """(the documents' token ids, each followed by EOS, in one uint32 array; tokens per document).

        Encodes at most `_ENCODE_CHARS` characters per call (a longer document alone) and keeps only the
        ids: an `Encoding` also holds offsets, token strings and masks, about 95 bytes per token
        (measured), so a batch of long documents encoded at once held hundreds of MB.
        """
        eos = (self.info.eos_id,)
        pieces, lengths = [], np.zeros(len(texts), dtype=np.int64)
        start = 0
        while start < len(texts):
            end, chars = start, 0
            while end < len(texts) and (end == start or chars + len(texts[end]) <= _ENCODE_CHARS):
                chars += len(texts[end])
                end += 1
            for i, enc in enumerate(self.tokenizer.encode_batch_fast(texts[start:end], add_special_tokens=False),
                                    start):
                ids = enc.ids
                lengths[i] = len(ids) + 1
                pieces.append(np.fromiter(itertools.chain(ids, eos), dtype=np.uint32, count=lengths[i]))
            start = end
        return (np.concatenate(pieces) if pieces else np.zeros(0, np.uint32)), lengths


def _row_hash(sources: list, positions: list, content: np.ndarray) -> np.ndarray:
    """uint64 per cleaned row: (source, position) locate it uniquely; the text's hash tells apart rows of
    hand-made input that lacks them."""
    return np.fromiter((xxhash.xxh64_intdigest(f"{s}\0{p}".encode("utf-8"), int(c))
                        for s, p, c in zip(sources, positions, content.tolist())), dtype=np.uint64, count=len(sources))


_ENCODE_CHARS = 1 << 18  # characters of text per encode call (see Tokenize._token_ids)


@functools.lru_cache(maxsize=2)
def _tokenizer(tokenizer_dir: str, sha256: str, seed: int) -> Tokenize:
    # A task has one CPU: the tokenizer's own thread pool would oversubscribe the node. Set here, in the
    # worker, rather than as the task's runtime env: a task with its own env cannot fuse with the
    # operators next to it, and needs workers of its own.
    os.environ["TOKENIZERS_PARALLELISM"] = "false"
    return Tokenize(tokenizer_dir, seed)


def tokenize_batch(batch: pa.Table, tokenizer_dir: str, sha256: str, seed: int) -> pa.Table:
    """``map_batches`` function: `Tokenize` loaded once per worker process (keyed by the file's sha256).

    Plain tasks rather than an actor pool, for the reason given in `pipeline.langid.label_batch`.
    """
    return _tokenizer(tokenizer_dir, sha256, seed)(batch)
