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
from pathlib import Path
from typing import IO, Iterator


def _compression(path: str | Path) -> str | None:
    name = str(path).lower()
    if name.endswith(".gz"):
        return "gz"
    if name.endswith((".zst", ".zstd")):
        return "zst"
    return None


def open_text_read(path: str | Path) -> IO[str]:
    """Open a (possibly .gz/.zst-compressed) UTF-8 text file for streaming reads."""
    kind = _compression(path)
    if kind == "gz":
        return gzip.open(path, "rt", encoding="utf-8", newline="\n")
    if kind == "zst":
        import zstandard

        raw = zstandard.ZstdDecompressor().stream_reader(open(path, "rb"), closefd=True)
        return io.TextIOWrapper(raw, encoding="utf-8", newline="\n")
    return open(path, "r", encoding="utf-8", newline="\n")


def iter_json_records(path: str | Path) -> Iterator[tuple[int, str, dict]]:
    """(line number, raw line, record) for every non-blank line; a bad line raises ConfigError."""
    from pipeline.config import ConfigError

    with open_text_read(path) as fh:
        for line_no, line in enumerate(fh, 1):
            if not line.strip():
                continue
            try:
                record = json.loads(line)
            except (json.JSONDecodeError, RecursionError) as exc:
                msg = getattr(exc, "msg", "nested too deeply")
                raise ConfigError(f"{path}:{line_no}: not valid JSON ({msg})") from None
            if not isinstance(record, dict):
                raise ConfigError(f"{path}:{line_no}: expected a JSON object, got {type(record).__name__}")
            yield line_no, line, record


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
