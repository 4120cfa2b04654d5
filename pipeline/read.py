"""Read + validate + normalize one input file into Arrow batches, quarantining bad records.

Every record read becomes exactly one row: a valid document (`reason` null) or a quarantine row
(`reason` set, `raw` holding a truncated copy). Nothing raises on bad data: a broken line, bad UTF-8,
a record that is not an object, a missing or non-string text, an unknown category, an oversized
record, a Parquet value Python cannot hold (in any column: the row alone is quarantined), or a file
that breaks mid-way (truncated or damaged gzip/zstd, unreadable) is reported with its file and
position (JSONL: 1-based line number; a JSON file holding one top-level array, which is read element by
element: 1-based element number; pretty-printed objects one after another: 1-based object number;
Parquet: 0-based row index).

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

from pipeline import json_framing
from pipeline.config import CATEGORIES, InputSource, ReadConfig
from pipeline.json_framing import Piece, ReadError
from pipeline.normalize import normalize_text, replace_surrogates
from pipeline.schema import READ_SCHEMA
from pipeline.sources import InputFile

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
        """`raw_text`: the record's line (JSONL), whose size is `raw_size`; None for a Parquet row,
        whose preview is its JSON and whose size its text's."""
        def bad(reason: str, category=None) -> dict:
            if raw_text is not None:
                return self.quarantine(position, reason, raw_text, raw_size, category)
            return self.quarantine(position, reason, self._preview(record), self.text_size(record), category)

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
        if isinstance(text, bytes):  # a Parquet binary column: text where it is UTF-8
            try:
                text = text.decode("utf-8")
            except UnicodeDecodeError as exc:
                return bad(f"invalid_utf8: {spec.text_field}: byte {exc.start}", category)
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

    def text_size(self, record) -> int:
        """A Parquet row's size in the quarantine's `n_chars`: its text field's length (0 without one),
        as a JSONL row's is the length of its line."""
        text = record.get(self.spec.text_field) if isinstance(record, dict) else None
        return len(text) if isinstance(text, (str, bytes)) else 0

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


_ZSTD_MAGIC = b"\x28\xb5\x2f\xfd"


class _ZstdStream:
    """Multi-frame zstd decompression that notices truncation (zstandard's stream_reader just stops)
    and keeps every byte decoded before damage.

    A decompressor call that fails drops all it decoded, so the input is fed one unit at a time: a
    frame header, one block (at most 128 KiB of output), the checksum, a skippable frame. A damaged
    block costs only itself; a bad checksum or a broken next frame costs nothing already decoded.
    Output decoded before a failure is returned first; the next read raises the failure."""

    def __init__(self, raw: IO[bytes]):
        import zstandard

        self.raw, self.new = raw, zstandard.ZstdDecompressor().decompressobj
        self.obj, self.in_frame = self.new(), False  # in_frame: the decompressor holds part of a frame
        self.buf, self.pos = b"", 0  # compressed input not fed yet: buf[pos:]
        self.state, self.checksum, self.skip = "frame", False, 0
        self.error: Optional[Exception] = None

    def _unit(self) -> int:
        """Length of the next unit in buf[pos:], 0 while it is incomplete. What is not a zstd or
        skippable frame is fed whole ("opaque"): the decompressor judges it."""
        buf, pos = self.buf, self.pos
        avail = len(buf) - pos
        if self.state == "frame":
            if avail < 5:
                return 0
            magic, descriptor = buf[pos:pos + 4], buf[pos + 4]
            if magic == _ZSTD_MAGIC:
                single = descriptor >> 5 & 1  # header: magic, descriptor, window, dictionary id, content size
                size = 6 - single + (0, 1, 2, 4)[descriptor & 3] + (single, 2, 4, 8)[descriptor >> 6]
                if avail < size:
                    return 0
                self.state, self.checksum = "block", bool(descriptor & 4)
                return size
            if magic[1:] == b"\x2a\x4d\x18" and magic[0] & 0xF0 == 0x50:  # skippable frame
                if avail < 8:
                    return 0
                self.skip = int.from_bytes(buf[pos + 4:pos + 8], "little")
                self.state = "skip" if self.skip else "frame"
                return 8
            self.state = "opaque"
            return avail
        if self.state == "block":
            if avail < 3:
                return 0
            header = int.from_bytes(buf[pos:pos + 3], "little")  # last flag, type, size
            size = 3 + (1 if header >> 1 & 3 == 1 else header >> 3)  # an RLE block holds one byte
            if avail < size:
                return 0
            if header & 1:
                self.state = "checksum" if self.checksum else "frame"
            return size
        if self.state == "checksum":
            if avail < 4:
                return 0
            self.state = "frame"
            return 4
        if self.state == "skip":
            size = min(self.skip, avail)
            self.skip -= size
            if not self.skip:
                self.state = "frame"
            return size
        return avail  # opaque

    def read1(self, size: int) -> bytes:
        out, n = [], 0
        while n < size and self.error is None:
            length, tail = self._unit(), False
            if not length:
                if out:
                    break  # hand over what is decoded before reading on
                data = self.raw.read(size)
                if data:
                    self.buf, self.pos = self.buf[self.pos:] + data, 0
                    continue
                if not self.in_frame and self.pos == len(self.buf):
                    break  # the end, between frames
                length, tail = len(self.buf) - self.pos, True  # a cut frame: decode what its tail holds
            piece = memoryview(self.buf)[self.pos:self.pos + length]
            self.pos += length
            try:
                decoded = self.obj.decompress(piece)
            except Exception as exc:  # damaged data: raised once what came before is handed over
                self.error = exc
                break
            if self.obj.eof:  # a frame ended: what follows it starts the next one
                self.pos -= len(self.obj.unused_data)
                self.obj, self.in_frame, self.state = self.new(), False, "frame"
            else:
                self.in_frame = True
                if self.state == "frame":  # the frame went on past where its blocks said it ends
                    self.state = "opaque"
                if tail:
                    self.error = EOFError("zstd stream ended before the end of its last frame")
            if decoded:
                out.append(decoded)
                n += len(decoded)
        result = b"".join(out)
        if not result and self.error is not None:
            raise self.error
        return result


def jsonl_lines(url: str, fmt: str, limit: int) -> Iterator[Piece]:
    """The lines of a JSON Lines file (`fmt`: jsonl, jsonl.gz or jsonl.zst; local or any fsspec URL),
    as json_framing pieces. A truncated archive or I/O error raises ReadError after the last complete
    line."""
    with _open_bytes(url) as raw:
        yield from json_framing.lines(json_framing.chunks(_decompressed(raw, fmt)), limit)


def json_records(url: str, fmt: str, limit: int) -> Iterator[Piece]:
    """As jsonl_lines, but a file holding one top-level array yields its elements, and one holding
    pretty-printed objects yields each whole object."""
    with _open_bytes(url) as raw:
        yield from json_framing.records(_decompressed(raw, fmt), limit)


def _read_jsonl(file: InputFile, validator: RecordValidator, cfg: ReadConfig) -> Iterator[dict]:
    position = 0
    try:
        for position, line, size, head in json_records(file.url, file.format, cfg.max_record_bytes):
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


def _batch_records(batch: pa.RecordBatch) -> Iterator[tuple[dict, Optional[str]]]:
    """The rows of a Parquet batch as (record, None), or (preview record, reason) for a row holding a
    value Python cannot represent (a string that is not UTF-8, a timestamp past year 9999), in any
    column. The batch converts at once; only when that fails is it converted column by column, and a
    failing column cell by cell, so one bad value costs its row and nothing else."""
    try:
        records = batch.to_pylist()
    except Exception:
        pass
    else:
        yield from ((record, None) for record in records)
        return
    names, columns, bad = batch.schema.names, [], {}
    for name, column in zip(names, batch.columns):
        try:
            columns.append(column.to_pylist())
            continue
        except Exception:
            pass
        values = []
        for i in range(len(column)):
            try:
                values.append(column[i].as_py())
            except Exception as exc:
                values.append(_cell_preview(column, i))
                bad.setdefault(i, _value_reason(name, exc))  # the first bad column names the row's reason
        columns.append(values)
    for i, row in enumerate(zip(*columns)):
        yield dict(zip(names, row)), bad.get(i)


def _value_reason(column: str, exc: Exception) -> str:
    if isinstance(exc, UnicodeDecodeError):
        return f"invalid_utf8: {column}: byte {exc.start}"
    return f"invalid_value: {column}: {type(exc).__name__}: {str(exc)[:200]}"


_BINARY_OF = {pa.string(): pa.binary(), pa.large_string(): pa.large_binary()}
if hasattr(pa, "string_view"):  # pyarrow >= 16
    _BINARY_OF[pa.string_view()] = pa.binary_view()


def _cell_preview(column: pa.Array, i: int) -> str:
    """A value that does not convert, as text for the quarantine preview: a string's bytes with bad
    UTF-8 replaced, anything else as Arrow prints it ("<value out of range: ...>")."""
    cell = column.slice(i, 1)
    try:
        if pa.types.is_dictionary(cell.type):
            cell = cell.dictionary_decode()
        binary = _BINARY_OF.get(cell.type)
        if binary is not None:
            return cell.view(binary)[0].as_py().decode("utf-8", "replace")
        return cell.to_string(indent=0, top_level_indent=0, skip_new_lines=True)[1:-1]
    except Exception as exc:
        return f"<{type(exc).__name__}>"


def _read_parquet(file: InputFile, validator: RecordValidator, cfg: ReadConfig) -> Iterator[dict]:
    import pyarrow.parquet as pq

    position = -1
    try:
        with _open_bytes(file.url) as raw:
            parquet = pq.ParquetFile(raw)
            names = parquet.schema_arrow.names
            twice = sorted({n for n in names if names.count(n) > 1})
            if twice:  # a row would keep only the last of each: which one holds the text?
                raise ReadError(f"column names used twice: {', '.join(twice)}")
            for batch in parquet.iter_batches(batch_size=cfg.batch_size):
                for record, reason in _batch_records(batch):
                    position += 1
                    yield (validator.row(record, position, 0, None) if reason is None
                           else validator.quarantine(position, reason, validator._preview(record),
                                                     validator.text_size(record)))
    except Exception as exc:  # unreadable file, broken page: the rest of the file is lost
        detail = str(exc) if isinstance(exc, ReadError) else f"{type(exc).__name__}: {exc}"
        yield validator.quarantine(position + 1, f"read_error: {detail}", "", 0)


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
