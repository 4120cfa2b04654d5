"""Expand configured input sources (file, directory, glob or URI) into a sorted list of files.

Listing happens on the driver and touches only names, so it is cheap and deterministic: files are
sorted within each source, and a document's `source` name is its path relative to the source's root,
so ids derived from it do not depend on where the corpus is mounted.
"""
from __future__ import annotations

import glob
import os
from dataclasses import dataclass

from pipeline.config import Config, ConfigError, infer_format

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


def _list_local(path: str) -> tuple[list[str], str]:
    if path.startswith("file://"):
        path = path[len("file://"):]
    if _MAGIC & set(path):
        files = [p for p in glob.glob(path, recursive=True) if os.path.isfile(p)]
        return sorted(files), _root_of(path)
    if os.path.isdir(path):
        files = []
        for dirpath, dirnames, filenames in os.walk(path, followlinks=False):
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
            out.append(InputFile(len(out), spec_index, f, source or os.path.basename(f), fmt))
            matched += 1
        if not matched:
            raise ConfigError(f"inputs[{spec_index}].path: no readable jsonl/jsonl.gz/jsonl.zst/parquet "
                              f"files found under {spec.path}")
    return out
