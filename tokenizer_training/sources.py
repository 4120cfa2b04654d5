"""Find the input files and read one of them as uniform Arrow batches (no Ray here).

Accepts the cleaned Parquet tree (`category=…/lang=…` hive directories: partition values come from
the path when the file lacks the column) and raw JSONL / .jsonl.gz / .jsonl.zst / Parquet files with
`text, lang, category, code_lang`. One file is one unit of work, so the Ray layer spreads files over
the cluster and each worker streams its file in bounded batches.
"""
from __future__ import annotations

import glob
import gzip
import io
import json
import os
from typing import Iterator
from urllib.parse import unquote

import pyarrow as pa
import pyarrow.compute as pc
import xxhash

from pipeline.config import ConfigError, infer_format
from pipeline.preflight import parquet_metadata

COLUMNS = ("id", "text", "category", "lang", "code_lang")
SCHEMA = pa.schema([(name, pa.string()) for name in COLUMNS])
HIVE_NULL = "__HIVE_DEFAULT_PARTITION__"  # how hive partitioning writes a null value


def _is_data_file(name: str) -> bool:
    """Inside a directory: data files only; a plain `.json` there is metadata (stats.json, manifests)."""
    return not name.startswith((".", "_")) and not name.lower().endswith(".json") and infer_format(name) is not None


def list_input_files(inputs: list[str] | str) -> list[str]:
    """Every readable file under the given directories, files or globs, sorted (deterministic order)."""
    inputs = [inputs] if isinstance(inputs, str) else list(inputs)
    found: set[str] = set()
    for spec in inputs:
        if os.path.isdir(spec):
            for root, dirs, files in os.walk(spec):
                dirs[:] = [d for d in dirs if not d.startswith((".", "_"))]
                found.update(os.path.join(root, f) for f in files if _is_data_file(f))
        elif os.path.isfile(spec):
            if not infer_format(spec):
                raise ConfigError(f"--input {spec}: unknown format (expected .jsonl[.gz|.zst] or .parquet)")
            found.add(spec)
        else:
            matches = [m for m in glob.glob(spec, recursive=True) if os.path.isfile(m) and infer_format(m)]
            if not matches:
                raise ConfigError(f"--input {spec}: no such file, directory or glob match")
            found.update(matches)
    if not found:
        raise ConfigError(f"--input {', '.join(inputs)}: no JSONL or Parquet files found")
    files = sorted(os.path.abspath(f) for f in found)
    for path in files:  # in the driver: a Ray task would fail on them with its traceback
        if infer_format(path) == "parquet" and "text" not in parquet_metadata(path, "--input").schema.names:
            raise ConfigError(f"--input: {path}: Parquet file has no 'text' column")
    return files


def safe_text(text: str) -> str:
    """Valid Unicode for the Rust tokenizer: lone surrogates (from JSON \\ud800 escapes) become U+FFFD.

    Surrogate *pairs* written as two escapes are recombined into the real character.
    """
    try:
        text.encode("utf-8")
        return text
    except UnicodeEncodeError:
        return text.encode("utf-16", "surrogatepass").decode("utf-16", "replace")


def _hive_values(path: str) -> dict[str, str]:
    values = {}
    for part in os.path.normpath(path).split(os.sep)[:-1]:
        key, sep, value = part.partition("=")
        if sep and key in COLUMNS and value != HIVE_NULL:
            values[key] = unquote(value)
    return values


def _doc_id(record_id, text: str) -> str:
    """The input's id, else a content hash (stable, unlike a position that depends on the split)."""
    if record_id is not None and record_id != "":
        return str(record_id)
    return xxhash.xxh64_hexdigest(text.encode("utf-8"))


def _table(rows: dict[str, list]) -> pa.Table:
    return pa.Table.from_pydict(rows, schema=SCHEMA)


def _open_text(path: str, fmt: str) -> io.TextIOBase:
    if fmt == "jsonl.gz":
        return io.TextIOWrapper(gzip.open(path, "rb"), encoding="utf-8", errors="replace")
    if fmt == "jsonl.zst":
        import zstandard

        raw = open(path, "rb")
        return io.TextIOWrapper(zstandard.ZstdDecompressor().stream_reader(raw, closefd=True),
                                encoding="utf-8", errors="replace")
    return open(path, encoding="utf-8", errors="replace")


def _read_jsonl_python(path: str, fmt: str, batch_rows: int, counters: dict, skip: int) -> Iterator[pa.Table]:
    """Line by line: tolerates malformed lines (counted) and lone surrogates (replaced)."""
    hive = _hive_values(path)
    rows = {c: [] for c in COLUMNS}
    with _open_text(path, fmt) as fh:
        for line in fh:
            if not line.strip():
                continue
            if skip:
                skip -= 1
                continue
            try:
                rec = json.loads(line)
                text = rec["text"]
                if not isinstance(text, str):
                    raise TypeError("text is not a string")
            except (ValueError, KeyError, TypeError):
                counters["bad_records"] = counters.get("bad_records", 0) + 1
                continue
            text = safe_text(text)
            rows["id"].append(_doc_id(rec.get("id"), text))
            rows["text"].append(text)
            for col in ("category", "lang", "code_lang"):
                value = rec.get(col)
                rows[col].append(hive.get(col) if value is None else str(value))
            if len(rows["text"]) >= batch_rows:
                yield _table(rows)
                rows = {c: [] for c in COLUMNS}
    if rows["text"]:
        yield _table(rows)


def _read_jsonl(path: str, fmt: str, batch_rows: int, counters: dict) -> Iterator[pa.Table]:
    """Arrow's C++ JSON reader (about 3x faster than json.loads); on the first record it rejects
    (bad JSON, a lone surrogate, a non-string field) the rest of the file goes through the Python reader."""
    import pyarrow.json as pj

    compression = {"jsonl.gz": "gzip", "jsonl.zst": "zstd"}.get(fmt)
    parse = pj.ParseOptions(explicit_schema=SCHEMA, unexpected_field_behavior="ignore")
    done = 0
    try:
        reader = pj.open_json(pa.input_stream(path, compression=compression),
                              read_options=pj.ReadOptions(use_threads=False, block_size=4 << 20),
                              parse_options=parse)
        for batch in reader:
            done += batch.num_rows
            for start in range(0, batch.num_rows, batch_rows):
                yield from _from_columns(path, batch.slice(start, batch_rows), counters)
    except pa.ArrowInvalid:
        yield from _read_jsonl_python(path, fmt, batch_rows, counters, skip=done)


def _from_columns(path: str, batch: pa.RecordBatch, counters: dict) -> Iterator[pa.Table]:
    """Arrow columns -> the COLUMNS schema: hive values fill absent columns, rows without text are dropped.

    Column-wise in Arrow: the text never becomes Python strings here (the census needs only its length).
    """
    hive = _hive_values(path)
    n = batch.num_rows
    cols = {}
    for name in COLUMNS:
        if name in batch.schema.names:
            values = batch.column(name).cast(pa.string())
        else:
            values = pa.nulls(n, pa.string())
        cols[name] = pc.fill_null(values, hive[name]) if name in hive else values
    has_text = pc.is_valid(cols["text"])
    table = pa.table(cols, schema=SCHEMA).filter(has_text)
    counters["bad_records"] = counters.get("bad_records", 0) + n - table.num_rows
    if table.num_rows:
        yield table.set_column(COLUMNS.index("id"), "id", _fill_ids(table.column("id"), table.column("text")))


def _fill_ids(ids: pa.ChunkedArray, texts: pa.ChunkedArray) -> pa.Array:
    """Missing or empty ids become the content hash of `_doc_id`; only those rows go through Python."""
    missing = pc.fill_null(pc.equal(ids, ""), True)
    if not pc.any(missing).as_py():
        return ids
    rows = pc.indices_nonzero(missing).to_pylist()
    hashes = [_doc_id(None, t) for t in texts.take(rows).to_pylist()]
    return pc.replace_with_mask(ids.combine_chunks(), missing.combine_chunks(), pa.array(hashes, pa.string()))


def _read_parquet(path: str, batch_rows: int, counters: dict) -> Iterator[pa.Table]:
    import pyarrow.parquet as pq

    pf = pq.ParquetFile(path)
    present = [c for c in COLUMNS if c in pf.schema_arrow.names]
    if "text" not in present:
        raise ConfigError(f"{path}: Parquet file has no 'text' column")
    for batch in pf.iter_batches(batch_size=batch_rows, columns=present):
        yield from _from_columns(path, batch, counters)


def read_file(path: str, batch_rows: int = 2048, counters: dict | None = None) -> Iterator[pa.Table]:
    """Yield the file's records as Arrow tables with the `COLUMNS` schema (all strings).

    Unparseable lines and rows without text are skipped and counted in `counters["bad_records"]`.
    """
    counters = {} if counters is None else counters
    fmt = infer_format(path)
    if fmt == "parquet":
        yield from _read_parquet(path, batch_rows, counters)
    elif fmt is not None:
        yield from _read_jsonl(path, fmt, batch_rows, counters)
    else:
        raise ConfigError(f"{path}: unknown format")
