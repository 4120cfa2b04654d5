"""Expand configured input sources (file, directory, glob or URI) into a sorted list of files.

Listing happens on the driver and touches only names, so it is cheap and deterministic: files are
sorted within each source, and a document's `source` name is its path below the source's root -- the
directory a directory source names, the part of a glob before its first wildcard, a file's own
directory -- (below the root of all sources where two sources' names would clash), so ids derived from
it depend neither on where the corpus is mounted nor on whether `dir/` or `dir/*.jsonl` names it. A file listed by two sources is refused: it would be read twice.

Nothing that a source matches is dropped silently. A glob keeps every match that is not a plain
directory -- a dangling symlink, a symlink loop or a directory named like a record file is listed, and
the reader quarantines it as one `read_error` row -- and `**` walks each real directory once, so a
directory symlink pointing at an ancestor cannot make it loop (or list the same files 40 times).
A directory source is walked without following directory symlinks; file symlinks in it are listed
(and quarantined by the reader when they dangle or loop), but a file one source reaches under two
names is read once. Hidden and `_`-prefixed entries are not data (`.git/`, Spark's `_temporary/`
attempts, `_SUCCESS`): a directory source skips them, and `**` does not descend into such
directories. A path that exists is taken literally even if it holds glob characters (`dump[1].jsonl`).
Names that are not valid UTF-8 get U+FFFD in `source` (Arrow strings must be UTF-8); `url` keeps the
exact name for opening.
"""
from __future__ import annotations

import fnmatch
import glob
import logging
import os
from dataclasses import dataclass

from pipeline.config import Config, ConfigError, has_glob, infer_format, is_uri
from pipeline.job_state import among_outputs
from pipeline.normalize import replace_surrogates

log = logging.getLogger(__name__)

_NOT_DATA = (".", "_")  # prefixes of names that are never data: hidden files, _SUCCESS, _temporary/


@dataclass(frozen=True)
class InputFile:
    index: int  # position in the job's file list; names per-file outputs
    spec_index: int  # which `inputs[i]` it came from
    url: str  # what to open: a local path or a URI
    source: str  # stable display name, relative to the source's root
    format: str


def _root_of(pattern: str) -> str:
    parts = pattern.split("/")
    for i, part in enumerate(parts):
        if has_glob(part):
            return "/".join(parts[:i]) or "/"
    return os.path.dirname(pattern.rstrip("/")) or "."


def _walk_error(exc: OSError) -> None:
    log.warning("input listing: cannot read directory %s (%s); its files are not read", exc.filename, exc)


def _match_parts(parts: list[str], names: list[str]) -> bool:
    """glob's rules on path components (`*` never matches a leading dot), except that `**` spans no
    hidden or `_`-prefixed directory."""
    if not parts:
        return not names
    head = parts[0]
    if head == "**":
        for i in range(len(names) + 1):
            if _match_parts(parts[1:], names[i:]):
                return True
            if i < len(names) - 1 and names[i].startswith(_NOT_DATA):  # `**` spans no such directory
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
    first = next(i for i, part in enumerate(parts) if has_glob(part))
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


def _list_local(path: str) -> tuple[list[str], str, bool]:
    """(files, the root their names are relative to, whether `path` is a directory)."""
    if path.startswith("file://"):
        path = path[len("file://"):]
    if has_glob(path) and not os.path.lexists(path):
        names = _recursive_glob(path) if "**" in path.split("/") else glob.glob(path)
        # Keep what is not a directory even when it cannot be opened (dangling link, link loop): the
        # reader quarantines it. A directory named like a record file is kept for the same reason;
        # other directories are just structure.
        files = [p for p in names if not os.path.isdir(p) or infer_format(p) is not None]
        return sorted(set(files)), _root_of(path), False
    if os.path.isdir(path):
        files = []
        for dirpath, dirnames, filenames in os.walk(path, followlinks=False, onerror=_walk_error):
            dirnames[:] = sorted(d for d in dirnames if not d.startswith(_NOT_DATA))
            files.extend(os.path.join(dirpath, f) for f in sorted(filenames) if not f.startswith(_NOT_DATA))
        return files, os.path.abspath(path), True
    return [path], os.path.dirname(os.path.abspath(path)), False


def _list_remote(url: str) -> tuple[list[str], str, bool]:
    import fsspec

    fs, path = fsspec.core.url_to_fs(url)
    protocol = url.split("://", 1)[0]
    directory = False
    if has_glob(path) and not fs.exists(path):
        names = fs.glob(path)
        root = _root_of(path)
    elif fs.isdir(path):
        directory = True
        below = path.rstrip("/") + "/"
        names = [n for n in fs.find(path) if not any(part.startswith(_NOT_DATA)
                                                      for part in n.removeprefix(below).split("/"))]
        root = path.rstrip("/")
    else:
        names = [path]
        root = os.path.dirname(path)
    files = sorted(n for n in names if not os.path.basename(n).startswith(_NOT_DATA))
    return [f"{protocol}://{n}" for n in files], f"{protocol}://{root}", directory


def list_input_files(cfg: Config) -> list[InputFile]:
    """All files of all sources, in config order then sorted by name. Raises ConfigError if a source
    matches no record file, or if two sources list the same file (its documents would be read twice)."""
    listed: list[tuple[int, str, str, str]] = []  # (spec_index, url, root, format)
    for spec_index, spec in enumerate(cfg.inputs):
        _refuse_reading_the_output(spec_index, spec.path, cfg.output)
        files, root, directory = (_list_remote if is_uri(spec.path) else _list_local)(spec.path)
        matched = [(spec_index, f, root, fmt) for f in _once(files, spec_index)
                   if (fmt := _format_of(f, spec.format, directory))]
        if not matched:
            raise ConfigError(f"inputs[{spec_index}].path: no readable jsonl/jsonl.gz/jsonl.zst/parquet "
                              f"files found under {spec.path}")
        listed += matched
    _refuse_overlaps(listed)
    names = [_relative(_absolute(url), _absolute(root)) for _, url, root, _ in listed]
    if len(set(names)) < len(names):
        names = _names_under_common_root([url for _, url, _, _ in listed], [root for _, _, root, _ in listed])
    return [InputFile(i, spec_index, url, replace_surrogates(name), fmt)
            for i, ((spec_index, url, _, fmt), name) in enumerate(zip(listed, names))]


def first_local_files(files: list[InputFile]) -> list[str]:
    """The first local file of each input: what every node of a cluster must see (`cluster_check`)."""
    first: dict[int, str] = {}
    for f in files:
        if not is_uri(f.url):
            first.setdefault(f.spec_index, f.url)
    return list(first.values())


def _absolute(path: str) -> str:
    return path if is_uri(path) else os.path.abspath(path)


def _relative(url: str, root: str) -> str:
    """`url`'s path below `root`; its file name where it is not below."""
    prefix = root.rstrip("/") + "/"
    return (url[len(prefix):] if url.startswith(prefix) else "") or os.path.basename(url)


# What a dataset directory holds beside its records: cards, configs, checksums. Never records.
_NOT_RECORDS = (".md", ".rst", ".yaml", ".yml", ".crc", ".lock", ".sha256", ".md5")


def _family(fmt):
    return fmt and fmt.split(".")[0]  # jsonl, jsonl.gz and jsonl.zst are one family


def _format_of(name: str, fmt, from_directory: bool):
    """The format `name` is read as, or None where it is not a record file: with no `format` set,
    a name no format fits (a README, a stats file); with one set, in a directory source, a file
    named for another format or a card, config or checksum (`format: parquet` on a Hugging Face
    dataset folder must not read its README.md and dataset_info.json as Parquet). A file or glob the
    config names is read as the set format, whatever its name."""
    inferred = infer_format(name)
    if fmt is None:
        return inferred
    if from_directory and (_family(inferred) not in (None, _family(fmt)) or name.lower().endswith(_NOT_RECORDS)):
        return None
    return fmt


def _refuse_reading_the_output(spec_index: int, path: str, output: str) -> None:
    """The job never reads what it writes: an input among the job's own outputs would be replaced while
    it is read, and an output the input's listing reaches would be read back as documents (its stats
    and step markers on the first run, its cleaned files on the next)."""
    if is_uri(path) or is_uri(output):
        return
    out = os.path.abspath(output.removeprefix("file://"))
    parts = os.path.abspath(path.removeprefix("file://")).split("/")
    first = next((i for i, part in enumerate(parts) if has_glob(part)), None)
    root = "/".join(parts[:first]) or "/"
    if _below(root, out) and among_outputs(root[len(out.rstrip("/")) + 1:]):
        raise ConfigError(f"inputs[{spec_index}].path {path} is among the outputs the job writes to {output}: it "
                          "would be replaced while it is read")
    if not (root == out or _below(out, root)):
        return
    names = out[len(root.rstrip("/")) + 1:].split("/") if root != out else []
    if first is None:
        reached = os.path.isdir(root) and not any(name.startswith(_NOT_DATA) for name in names)
    else:
        reached = _reaches_below(parts[first:], names)
    if reached:
        raise ConfigError(f"output {output} is inside inputs[{spec_index}].path {path}: the job would read its own "
                          "outputs as documents; put the output elsewhere (or start its name with `_`, which "
                          "input listing skips)")


def _below(path: str, directory: str) -> bool:
    return path.startswith(directory.rstrip("/") + "/")


def _reaches_below(parts: list[str], names: list[str]) -> bool:
    """Whether the pattern components `parts` can match a path strictly below the directory `names`."""
    if not names:
        return bool(parts)
    if not parts:
        return False
    if parts[0] == "**":
        return _reaches_below(parts[1:], names) or (
            not names[0].startswith(_NOT_DATA) and _reaches_below(parts, names[1:]))
    return _match_parts(parts[:1], names[:1]) and _reaches_below(parts[1:], names[1:])


def _once(files: list[str], spec_index: int) -> list[str]:
    """`files` without a second name (a symlink) for a local file already listed: read once."""
    seen: dict[str, str] = {}
    out = []
    for f in files:
        real = None if is_uri(f) or not os.path.exists(f) else os.path.realpath(f)
        if real in seen:
            log.warning("inputs[%d]: %s is %s under another name; read once", spec_index, f, seen[real])
            continue
        if real is not None:
            seen[real] = f
        out.append(f)
    return out


def _refuse_overlaps(listed: list[tuple[int, str, str, str]]) -> None:
    first: dict[str, int] = {}
    for spec_index, url, _, _ in listed:
        key = url if is_uri(url) else os.path.realpath(url)
        seen = first.setdefault(key, spec_index)
        if seen != spec_index:
            raise ConfigError(f"inputs[{seen}] and inputs[{spec_index}] both list {url}: its documents would be "
                              "read twice (narrow one of the paths or globs)")


def _names_under_common_root(urls: list[str], roots: list[str]) -> list[str]:
    """Names relative to the deepest directory above every source's root, for sources whose own
    names clash (`a/data/` and `b/data/` both hold `data/in.jsonl`). Unique, as paths below one
    directory are; full URLs where the sources share no root (local and remote, two protocols)."""
    protocols = {url.split("://", 1)[0] if is_uri(url) else "" for url in urls}
    if len(protocols) > 1:
        return list(urls)
    (protocol,) = protocols
    if protocol:
        scheme = protocol + "://"
        base = scheme + os.path.commonpath([r[len(scheme):] for r in roots])
        return [_relative(url, base) for url in urls]
    base = os.path.commonpath([_absolute(r) for r in roots])
    return [_relative(_absolute(url), base) for url in urls]
