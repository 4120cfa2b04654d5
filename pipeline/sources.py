"""Expand configured input sources (file, directory, glob or URI) into a sorted list of files.

Listing happens on the driver and touches only names, so it is cheap and deterministic: files are
sorted within each source, and a document's `source` name is its path relative to the source's root,
so ids derived from it do not depend on where the corpus is mounted.

Nothing that a source matches is dropped silently. A glob keeps every match that is not a plain
directory -- a dangling symlink, a symlink loop or a directory named like a record file is listed, and
the reader quarantines it as one `read_error` row -- and `**` walks each real directory once, so a
directory symlink pointing at an ancestor cannot make it loop (or list the same files 40 times).
A directory source is walked without following directory symlinks; file symlinks in it are listed
(and quarantined by the reader when they dangle or loop). Names that are not valid UTF-8 get U+FFFD
in `source` (Arrow strings must be UTF-8); `url` keeps the exact name for opening.
"""
from __future__ import annotations

import fnmatch
import glob
import logging
import os
from dataclasses import dataclass

from pipeline.config import Config, ConfigError, infer_format
from pipeline.normalize import replace_surrogates

log = logging.getLogger(__name__)

_MAGIC = set("*?[")


@dataclass(frozen=True)
class InputFile:
    index: int  # position in the job's file list; names per-file outputs
    spec_index: int  # which `inputs[i]` it came from
    url: str  # what to open: a local path or a URI
    source: str  # stable display name, relative to the source's root
    format: str


def _is_uri(path: str) -> bool:
    return "://" in path and not path.startswith("file://")


def _root_of(pattern: str) -> str:
    parts = pattern.split("/")
    for i, part in enumerate(parts):
        if _MAGIC & set(part):
            return "/".join(parts[:i]) or "/"
    return os.path.dirname(pattern.rstrip("/")) or "."


def _walk_error(exc: OSError) -> None:
    log.warning("input listing: cannot read directory %s (%s); its files are not read", exc.filename, exc)


def _match_parts(parts: list[str], names: list[str]) -> bool:
    """glob's rules on path components: `**` spans zero or more non-hidden components, `*` never
    matches a leading dot."""
    if not parts:
        return not names
    head = parts[0]
    if head == "**":
        for i in range(len(names) + 1):
            if _match_parts(parts[1:], names[i:]):
                return True
            if i < len(names) and names[i].startswith("."):
                return False
        return False
    if not names or (names[0].startswith(".") and not head.startswith(".")):
        return False
    return fnmatch.fnmatchcase(names[0], head) and _match_parts(parts[1:], names[1:])


def _recursive_glob(pattern: str) -> list[str]:
    """glob.glob(pattern, recursive=True), except that each real directory is entered once.

    glob follows directory symlinks under `**` with no memory of where it has been: a link to an
    ancestor lists every file ~40 times (until ELOOP), two such links 2**40 times. Here the tree is
    walked without following links first, then each linked directory not seen yet, so a directory
    reachable both ways is listed under its real path.
    """
    parts = pattern.split("/")
    first = next(i for i, part in enumerate(parts) if _MAGIC & set(part))
    prefix = "/".join(parts[:first])
    start = prefix or ("/" if pattern.startswith("/") else ".")
    rest = [p for p in parts[first:] if p]
    lead = [prefix] if prefix else [""] if start == "/" else []  # how glob would spell the start
    seen, matches, pending = set(), [], [start] if os.path.isdir(start) else []
    while pending:
        for dirpath, dirnames, filenames in os.walk(pending.pop(0), onerror=_walk_error):
            try:
                st = os.stat(dirpath)
            except OSError:
                dirnames.clear()
                continue
            if (st.st_dev, st.st_ino) in seen:  # reached again through a directory symlink
                dirnames.clear()
                continue
            seen.add((st.st_dev, st.st_ino))
            dirnames.sort()
            # os.walk does not descend into directory symlinks; walk them after the real tree.
            pending.extend(os.path.join(dirpath, d) for d in dirnames if os.path.islink(os.path.join(dirpath, d)))
            rel = os.path.relpath(dirpath, start)
            rel_parts = [] if rel == "." else rel.split(os.sep)
            for name in dirnames + filenames:
                if _match_parts(rest, rel_parts + [name]):
                    matches.append("/".join(lead + rel_parts + [name]))
    return matches


def _list_local(path: str) -> tuple[list[str], str]:
    if path.startswith("file://"):
        path = path[len("file://"):]
    if _MAGIC & set(path):
        names = _recursive_glob(path) if "**" in path.split("/") else glob.glob(path)
        # Keep what is not a directory even when it cannot be opened (dangling link, link loop): the
        # reader quarantines it. A directory named like a record file is kept for the same reason;
        # other directories are just structure.
        files = [p for p in names if not os.path.isdir(p) or infer_format(p) is not None]
        return sorted(set(files)), _root_of(path)
    if os.path.isdir(path):
        files = []
        for dirpath, dirnames, filenames in os.walk(path, followlinks=False, onerror=_walk_error):
            dirnames.sort()
            files.extend(os.path.join(dirpath, f) for f in sorted(filenames) if not f.startswith((".", "_")))
        return files, os.path.dirname(os.path.abspath(path).rstrip("/"))
    return [path], os.path.dirname(os.path.abspath(path))


def _list_remote(url: str) -> tuple[list[str], str]:
    import fsspec

    fs, path = fsspec.core.url_to_fs(url)
    protocol = url.split("://", 1)[0]
    if _MAGIC & set(path):
        names = fs.glob(path)
        root = _root_of(path)
    elif fs.isdir(path):
        names = fs.find(path)
        root = os.path.dirname(path.rstrip("/"))
    else:
        names = [path]
        root = os.path.dirname(path)
    files = sorted(n for n in names if not os.path.basename(n).startswith((".", "_")))
    return [f"{protocol}://{n}" for n in files], f"{protocol}://{root}"


def list_input_files(cfg: Config) -> list[InputFile]:
    """All files of all sources, in config order then sorted by name. Raises ConfigError if empty."""
    out: list[InputFile] = []
    for spec_index, spec in enumerate(cfg.inputs):
        files, root = (_list_remote if _is_uri(spec.path) else _list_local)(spec.path)
        matched = 0
        for f in files:
            fmt = spec.format or infer_format(f)
            if fmt is None:
                continue  # a README or stats file next to the data; not a record file
            source = f[len(root):].lstrip("/") if f.startswith(root) else os.path.basename(f)
            source = replace_surrogates(source or os.path.basename(f))
            out.append(InputFile(len(out), spec_index, f, source, fmt))
            matched += 1
        if not matched:
            raise ConfigError(f"inputs[{spec_index}].path: no readable jsonl/jsonl.gz/jsonl.zst/parquet "
                              f"files found under {spec.path}")
    return out
