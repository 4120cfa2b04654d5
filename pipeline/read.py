"""Read + validate + normalize one input file into Arrow batches, quarantining bad records.

Every record read becomes exactly one row: a valid document (`reason` null) or a quarantine row
(`reason` set, `raw` holding a truncated copy). Nothing raises on bad data: a broken line, bad UTF-8,
a record that is not an object, a missing or non-string text, an unknown category, an oversized
record, or a file that breaks mid-way (truncated gzip/zstd, unreadable) is reported with its file
and position (JSONL: 1-based line number; Parquet: 0-based row index).

A file-level failure (cannot be opened: missing, dangling or looping symlink, no permission; not a
regular file: directory, FIFO, device; broken archive) is one `read_error` row at the position where
reading stopped: the line after the last complete one for JSONL (1 if nothing could be read), the
next row index for Parquet (0 if nothing could be read). Records before the break are kept.

Lenient where the intent is unambiguous: a UTF-8 BOM at the start of any line (files joined with
`cat`) is skipped, and raw control characters inside JSON strings (a NUL or tab byte) are accepted;
normalize removes them. Strings that reach Arrow never hold lone surrogates.
"""
from __future__ import annotations

import gzip
import hashlib
import json
import math
import os
import stat
from typing import IO, Iterator, Optional

import pyarrow as pa

from pipeline.config import CATEGORIES, InputSource, ReadConfig
from pipeline.normalize import normalize_text, replace_surrogates
from pipeline.schema import READ_SCHEMA
from pipeline.sources import InputFile

_CHUNK = 1 << 20


def stable_id(source: str, position: int) -> str:
    """Id for a record that has none: stable across runs, machines and worker counts."""
    return hashlib.sha1(f"{source}:{position}".encode("utf-8")).hexdigest()[:20]


class _Batcher:
    """Collects rows column-wise and emits READ_SCHEMA tables of `size` rows."""

    def __init__(self, size: int):
        self.size = size
        self.cols: dict[str, list] = {name: [] for name in READ_SCHEMA.names}

    def add(self, **row) -> Optional[pa.Table]:
        for name, values in self.cols.items():
            values.append(row.get(name))
        return self.flush() if len(self.cols["reason"]) >= self.size else None

    def flush(self) -> Optional[pa.Table]:
        if not self.cols["reason"]:
            return None
        table = pa.Table.from_pydict(self.cols, schema=READ_SCHEMA)
        self.cols = {name: [] for name in READ_SCHEMA.names}
        return table


class RecordValidator:
    """Turns one decoded record (a dict) into a document row or a quarantine reason."""

    def __init__(self, spec: InputSource, file: InputFile, read_cfg: ReadConfig):
        self.spec, self.file, self.cfg = spec, file, read_cfg
        self.consumed = {spec.text_field, spec.id_field}
        for field in (spec.category_field, spec.code_lang_field, spec.path_field):
            if field:
                self.consumed.add(field)

    def quarantine(self, position: int, reason: str, raw: str, n_chars: int, category=None) -> dict:
        """A quarantine row. An input with a fixed category gives it to every row, file errors too,
        so the statistics count them under it, not under "unknown"."""
        category = self.spec.category if category is None else category
        # A file name that is not UTF-8, or an error message quoting one, carries surrogate escapes.
        return dict(source=replace_surrogates(self.file.url), position=position, reason=replace_surrogates(reason),
                    raw=replace_surrogates(raw[: self.cfg.raw_preview_chars]), n_chars=n_chars,
                    category=replace_surrogates(category) if category is not None else None)

    def row(self, record, position: int, raw_size: int, raw_text) -> dict:
        """`raw_text`: the record's line (JSONL); None for a Parquet row, whose preview is its JSON."""
        def bad(reason: str, category=None) -> dict:
            preview = raw_text if raw_text is not None else self._preview(record)
            return self.quarantine(position, reason, preview, raw_size, category)

        if not isinstance(record, dict):
            return bad("not_an_object")
        spec = self.spec
        category = spec.category
        if category is None:
            category = record.get(spec.category_field)
            if category is None:
                return bad("missing_category")
            if not isinstance(category, str) or category not in CATEGORIES:
                return bad("unknown_category", str(category)[:64])
        text = record.get(spec.text_field)
        if text is None:
            return bad("missing_text", category)
        if not isinstance(text, str):
            return bad("text_not_string", category)
        if len(text.encode("utf-8", "surrogatepass")) > self.cfg.max_record_bytes:
            return bad("oversized_record", category)
        doc_id = record.get(spec.id_field)
        if doc_id is None or doc_id == "":
            doc_id = stable_id(self.file.source, position)
        elif isinstance(doc_id, bool) or not isinstance(doc_id, (str, int)):
            return bad("invalid_id", category)
        if not text.strip():
            return bad("empty_text", category)
        text = normalize_text(text, is_code=category == "code")
        if not text:  # only control characters or other debris
            return bad("empty_after_normalize", category)
        code_lang = record.get(spec.code_lang_field) if spec.code_lang_field else None
        path = record.get(spec.path_field) if spec.path_field else None
        extra = {k: v for k, v in record.items() if k not in self.consumed}
        meta = replace_surrogates(_strict_json(extra)) if extra else None
        return dict(id=replace_surrogates(str(doc_id)), text=text, category=category,
                    code_lang=replace_surrogates(code_lang) if isinstance(code_lang, str) else None,
                    path=replace_surrogates(path) if isinstance(path, str) else None,
                    source=self.file.source, position=position, n_chars=len(text), meta=meta)

    def _preview(self, record: dict) -> str:
        """A Parquet row as JSON, each string cut to the preview length first (a huge text costs nothing)."""
        limit = self.cfg.raw_preview_chars
        return _strict_json({k: v[:limit] if isinstance(v, (str, bytes)) else v for k, v in record.items()})


def map_json(value, leaf):
    """A decoded JSON value (or Parquet row) with `leaf` applied to every scalar and every key."""
    if isinstance(value, dict):
        return {leaf(k): map_json(v, leaf) for k, v in value.items()}
    if isinstance(value, list):
        return [map_json(v, leaf) for v in value]
    return leaf(value)


def _strict_json(value) -> str:
    """JSON that strict readers (Arrow, DuckDB) accept: NaN and infinities, which Parquet floats and
    Python's json allow but JSON has no number for, become strings ("nan", "inf")."""
    try:
        return json.dumps(value, ensure_ascii=False, sort_keys=True, default=str, allow_nan=False)
    except ValueError:
        finite = map_json(value, lambda v: str(v) if isinstance(v, float) and not math.isfinite(v) else v)
        return json.dumps(finite, ensure_ascii=False, sort_keys=True, default=str, allow_nan=False)


_FILE_KINDS = ((stat.S_ISDIR, "directory"), (stat.S_ISFIFO, "FIFO"), (stat.S_ISCHR, "character device"),
               (stat.S_ISBLK, "block device"), (stat.S_ISSOCK, "socket"))


def _open_local(path: str) -> IO[bytes]:
    """Open a regular file for reading; anything else raises OSError instead of blocking (a FIFO) or
    streaming forever (/dev/zero)."""
    fd = os.open(path, os.O_RDONLY | getattr(os, "O_NONBLOCK", 0))  # O_NONBLOCK: opening a FIFO returns
    try:
        mode = os.fstat(fd).st_mode
        if not stat.S_ISREG(mode):
            kind = next((name for test, name in _FILE_KINDS if test(mode)), "special file")
            raise OSError(f"not a regular file ({kind})")
        if hasattr(os, "set_blocking"):
            os.set_blocking(fd, True)
        return os.fdopen(fd, "rb")
    except BaseException:
        os.close(fd)
        raise


def _open_bytes(url: str) -> IO[bytes]:
    if "://" in url and not url.startswith("file://"):
        import fsspec

        return fsspec.open(url, "rb").open()
    return _open_local(url[len("file://"):] if url.startswith("file://") else url)


def _decompressed(raw: IO[bytes], fmt: str) -> IO[bytes]:
    """A stream whose read(n) returns every byte that can be decompressed before a truncation."""
    if fmt == "jsonl.gz":
        return gzip.GzipFile(fileobj=raw)
    if fmt == "jsonl.zst":
        return _ZstdStream(raw)
    return raw


class _ZstdStream:
    """Multi-frame zstd decompression that notices truncation (zstandard's stream_reader just stops)."""

    def __init__(self, raw: IO[bytes]):
        import zstandard

        self.raw, self.new = raw, zstandard.ZstdDecompressor().decompressobj
        self.obj, self.in_frame = self.new(), False

    def read1(self, size: int) -> bytes:
        while True:
            data = self.raw.read(size)
            if not data:
                if self.in_frame:
                    raise EOFError("zstd stream ended before the end of its last frame")
                return b""
            out = []
            while data:
                self.in_frame = True
                out.append(self.obj.decompress(data))
                if self.obj.eof:
                    data, self.obj, self.in_frame = self.obj.unused_data, self.new(), False
                else:
                    data = b""
            result = b"".join(out)
            if result:
                return result


class ReadError(Exception):
    """The stream broke after `complete` good lines (truncated archive, I/O error)."""


def _lines(stream: IO[bytes], limit: int) -> Iterator[tuple[int, Optional[bytes], int, bytes]]:
    """Yield (line number, line or None if over `limit`, size in bytes, head of an oversized line).

    Reads fixed-size chunks, so one huge line never sits in memory whole, and every complete line
    before a broken tail is still yielded; the break itself raises ReadError.
    """
    number, pending, size, oversized = 0, b"", 0, False
    read = stream.read1 if hasattr(stream, "read1") else stream.read  # read1: one decompression step, nothing buffered lost
    while True:
        try:
            chunk = read(_CHUNK)
        except Exception as exc:
            raise ReadError(f"{type(exc).__name__}: {exc}") from exc
        if not chunk:
            break
        start = 0
        while True:
            nl = chunk.find(b"\n", start)
            piece = chunk[start:] if nl < 0 else chunk[start:nl]
            size += len(piece)
            if not oversized:
                pending += piece
                if len(pending) > limit:
                    oversized, pending = True, pending[:4096]
            if nl < 0:
                break
            number += 1
            yield (number, None, size, pending) if oversized else (number, pending, size, b"")
            pending, size, oversized = b"", 0, False
            start = nl + 1
    if size:
        number += 1
        yield (number, None, size, pending) if oversized else (number, pending, size, b"")


def jsonl_lines(url: str, fmt: str, limit: int) -> Iterator[tuple[int, Optional[bytes], int, bytes]]:
    """The lines of a JSONL file (`fmt`: jsonl, jsonl.gz or jsonl.zst; local or any fsspec URL), as
    (line number, line without its newline or None if over `limit` bytes, size, head of an oversized
    line). A truncated archive or I/O error raises ReadError after the last complete line."""
    with _open_bytes(url) as raw:
        yield from _lines(_decompressed(raw, fmt), limit)


def _read_jsonl(file: InputFile, validator: RecordValidator, cfg: ReadConfig) -> Iterator[dict]:
    position = 0
    try:
        for position, line, size, head in jsonl_lines(file.url, file.format, cfg.max_record_bytes):
            if line is None:
                yield validator.quarantine(position, "oversized_record",
                                           head.decode("utf-8", "replace"), size)
                continue
            if line.startswith(b"\xef\xbb\xbf"):  # not only on line 1: files joined with cat
                line = line[3:]
            line = line.rstrip(b"\r")
            if not line.strip():
                continue  # blank lines separate nothing and hold no record
            try:
                text = line.decode("utf-8")
            except UnicodeDecodeError as exc:
                yield validator.quarantine(position, f"invalid_utf8: byte {exc.start}",
                                           line.decode("utf-8", "replace"), size)
                continue
            try:
                # strict=False: a raw control character inside a string (NUL, tab) does not make the
                # record unreadable; normalize removes it. ValueError also covers integers longer
                # than Python's int_max_str_digits, which json raises outside JSONDecodeError.
                # RecursionError can also come from row() re-encoding deeply nested extra fields.
                record = json.loads(text, strict=False)
                row = validator.row(record, position, size, text)
            except (ValueError, RecursionError) as exc:
                msg = ("nested too deeply" if isinstance(exc, RecursionError)
                       else exc.msg if isinstance(exc, json.JSONDecodeError) else str(exc)[:200])
                row = validator.quarantine(position, f"invalid_json: {msg}", text, size)
            yield row
    except Exception as exc:  # truncated archive, unreadable file, lost connection: report, go on
        detail = str(exc) if isinstance(exc, ReadError) else f"{type(exc).__name__}: {exc}"
        yield validator.quarantine(position + 1, f"read_error: {detail}", "", 0)


def _read_parquet(file: InputFile, validator: RecordValidator, cfg: ReadConfig) -> Iterator[dict]:
    import pyarrow.parquet as pq

    position = -1
    try:
        with _open_bytes(file.url) as raw:
            for batch in pq.ParquetFile(raw).iter_batches(batch_size=cfg.batch_size):
                for record in batch.to_pylist():
                    position += 1
                    yield validator.row(record, position, 0, None)
    except Exception as exc:
        yield validator.quarantine(position + 1, f"read_error: {type(exc).__name__}: {exc}", "", 0)


def read_file(file: InputFile, spec: InputSource, cfg: ReadConfig) -> Iterator[pa.Table]:
    """Stream one input file as READ_SCHEMA tables of at most `cfg.batch_size` rows."""
    validator = RecordValidator(spec, file, cfg)
    reader = _read_parquet if file.format == "parquet" else _read_jsonl
    batcher = _Batcher(cfg.batch_size)
    for row in reader(file, validator, cfg):
        if "reason" not in row:
            row["reason"] = None
        table = batcher.add(**row)
        if table is not None:
            yield table
    table = batcher.flush()
    if table is not None:
        yield table
