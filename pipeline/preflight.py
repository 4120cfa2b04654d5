"""Checks, in the driver before any work or Ray starts, of where a command writes and of the Parquet it
reads: a wrong path costs one line naming it, not a traceback after minutes of work."""
from __future__ import annotations

import os
import tempfile
from pathlib import Path
from typing import TYPE_CHECKING, Iterable

import pyarrow as pa

from pipeline.config import ConfigError

if TYPE_CHECKING:
    import pyarrow.parquet as pq


def _within(path: Path, directory: Path) -> bool:
    return path == directory or directory in path.parents


def _check_writable(path: Path, flag: str) -> None:
    """`path` (a directory to be, or to write in) can be created and written: probed with an unnamed
    temporary file in its nearest existing ancestor, which is what permissions, read-only mounts and
    a full inode table all answer to (`os.access` tells root yes to all of them)."""
    existing = path
    while not existing.exists() and existing != existing.parent:
        existing = existing.parent
    if not existing.is_dir():
        raise ConfigError(f"{flag} {path}: {existing} is not a directory")
    try:
        with tempfile.TemporaryFile(dir=existing, prefix=".xdp-write-check-"):
            pass
    except OSError as exc:
        raise ConfigError(f"{flag} {path}: cannot write in {existing} ({exc.strerror or exc})") from None


def check_output_dir(path: str | os.PathLike, flag: str, reads: Iterable[tuple[str, str]] = ()) -> None:
    """An output directory: not a file, writable, and neither equal to nor inside a directory the command
    reads (`reads`: (flag, path) pairs), where its files would be read back as input."""
    out = Path(os.path.abspath(path))
    if out.exists() and not out.is_dir():
        raise ConfigError(f"{flag} {path} exists and is not a directory")
    for read_flag, read_path in reads:
        source = Path(os.path.abspath(read_path))
        if source.is_dir() and _within(out, source):
            raise ConfigError(f"{flag} {path} is {'the' if out == source else 'inside the'} {read_flag} directory "
                              f"{read_path}: its outputs would be mixed into what is read; write elsewhere")
    _check_writable(out, flag)


def check_output_file(path: str | os.PathLike, flag: str) -> None:
    """An output file: not a directory, and its directory writable (the file is written beside it)."""
    out = Path(os.path.abspath(path))
    if out.is_dir():
        raise ConfigError(f"{flag} {path} is a directory, not a file")
    _check_writable(out.parent, flag)


def parquet_metadata(path: str | os.PathLike, what: str) -> "pq.FileMetaData":
    """A Parquet file's footer (schema, rows); a truncated or foreign file is a ConfigError naming it."""
    import pyarrow.parquet as pq

    try:
        return pq.read_metadata(path)
    except (pa.ArrowInvalid, OSError) as exc:
        reason = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise ConfigError(f"{what}: {path} is not a readable Parquet file ({reason})") from None
