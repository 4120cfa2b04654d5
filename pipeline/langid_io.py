"""JSONL in and out for the single-file commands (`xdp langid`, `xdp dedup`, `xdp tune-langid`).

Compression is chosen by extension; bad lines stop the command with ``file:line`` in the message.

Outputs go to a temporary file next to the target and are moved into place with ``os.replace`` only when
complete, so an interrupted run never leaves a truncated file that looks finished.
"""
from __future__ import annotations

import contextlib
import gzip
import io
import json
import re
import sys
from pathlib import Path
from typing import IO, Iterator

from pipeline.normalize import replace_surrogates


def _compression(path: str | Path) -> str | None:
    name = str(path).lower()
    if name.endswith(".gz"):
        return "gz"
    if name.endswith((".zst", ".zstd")):
        return "zst"
    return None


def iter_json_records(path: str | Path) -> Iterator[tuple[int, str, dict]]:
    """(line number, line without its newline, record) for every non-blank line.

    A line that is not UTF-8 or not a JSON object, or a truncated archive, raises ConfigError with
    ``file:line``; a lone surrogate escaped in a string (``"\\ud800"``) becomes U+FFFD, as in the
    clean job's reader, so no library downstream meets a string it cannot encode.
    """
    from pipeline.config import ConfigError
    from pipeline.read import ReadError, jsonl_lines, map_json

    if Path(path).is_dir():
        raise ConfigError(f"{path}: a directory, not a JSONL file")
    fmt = {"gz": "jsonl.gz", "zst": "jsonl.zst"}.get(_compression(path), "jsonl")
    line_no = 0
    try:
        for line_no, raw, _, _ in jsonl_lines(str(path), fmt, sys.maxsize):
            try:
                line = raw.decode("utf-8")
            except UnicodeDecodeError as exc:
                raise ConfigError(f"{path}:{line_no}: not valid UTF-8 (byte {exc.start})") from None
            if not line.strip():
                continue
            try:
                record = json.loads(line.removeprefix("\ufeff"))  # a BOM: files joined with cat
            except (json.JSONDecodeError, RecursionError) as exc:
                msg = getattr(exc, "msg", "nested too deeply")
                raise ConfigError(f"{path}:{line_no}: not valid JSON ({msg})") from None
            if not isinstance(record, dict):
                raise ConfigError(f"{path}:{line_no}: expected a JSON object, got {type(record).__name__}")
            if _SURROGATE_ESCAPE.search(line):
                record = map_json(record, lambda v: replace_surrogates(v) if isinstance(v, str) else v)
            yield line_no, line, record
    except ReadError as exc:
        raise ConfigError(f"{path}:{line_no + 1}: the file breaks here ({exc})") from None


_SURROGATE_ESCAPE = re.compile(r"\\u[dD][89a-fA-F]")  # JSON's escape of a UTF-16 surrogate


@contextlib.contextmanager
def atomic_output(path: str | Path) -> Iterator[IO[str]]:
    """Write UTF-8 text (compressed by extension) to `path`, all or nothing."""
    from pipeline.write import atomic_path

    with atomic_path(path) as tmp, contextlib.ExitStack() as stack:
        binary: IO[bytes] = stack.enter_context(open(tmp, "wb"))
        kind = _compression(path)
        if kind == "gz":
            # mtime=0 and no file name in the header: same input, same bytes.
            binary = stack.enter_context(gzip.GzipFile(filename="", mode="wb", fileobj=binary, mtime=0))
        elif kind == "zst":
            import zstandard

            binary = stack.enter_context(zstandard.ZstdCompressor().stream_writer(binary, closefd=False))
        text = io.TextIOWrapper(binary, encoding="utf-8", newline="\n")
        yield text
        text.flush()
        text.detach()  # the exit stack closes the compressor, then the file, before the rename
