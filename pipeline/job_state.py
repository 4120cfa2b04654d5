"""Step fingerprints and completion markers: how a killed job resumes, and why outputs never mix.

Each step of `xdp run` (clean -> tokenizer -> mix) has a fingerprint: a hash of the config sections
that shape its bytes, of its input files (name, size, mtime) for `clean`, and of the fingerprint of
the step before it. Under `<output>/_job/`:

    <step>.started.json   written when the step starts: {fingerprint, config}
    <step>.done.json      written after the step's outputs were atomically renamed into place,
                          with the step's summary; its presence is what "completed" means

A rerun skips every step whose done marker carries the current fingerprint (and whose outputs are
still there, its result file -- stats.json, tokenizer.json, the shards' manifest -- unchanged since). A marker with another fingerprint means the directory holds outputs of a different
config or input: the job refuses, names the fields that changed, and runs only when told
`--overwrite` (which redoes that step and every step after it).

Fields that cannot change a byte of output (where it goes, how Ray runs, batch sizes, whether the
scratch directory is kept) are left out of fingerprints, so a resume on a bigger cluster is a resume.
"""
from __future__ import annotations

import hashlib
import json
import logging
import os
import shutil
from pathlib import Path
from typing import Any, Optional

from pipeline import __version__
from pipeline.config import Config, ConfigError
from pipeline.preflight import check_output_dir
from pipeline.write import json_bytes, write_bytes_atomic

log = logging.getLogger(__name__)

STEPS = ("clean", "tokenizer", "mix")
# The config sections each step's bytes depend on (besides the steps before it).
STEP_SECTIONS = {"clean": ("inputs", "read", "write", "langid", "dedup"), "tokenizer": ("tokenizer",),
                 "mix": ("mixing",)}
# Fields no output byte depends on.
NEUTRAL_FIELDS = {"output", "ray", "write.keep_work_dir", "read.batch_size", "langid.batch_size",
                  "tokenizer.enabled", "mixing.enabled",  # these choose which steps run, not their bytes
                  # how dedup is spread over tasks, and its safety bound: the survivors do not depend on them
                  "dedup.num_partitions", "dedup.partition_chars", "dedup.partition_docs", "dedup.max_iterations"}
# What a completed step leaves under the output directory; all must exist for a skip.
STEP_OUTPUTS = {"clean": ("cleaned", "quarantine", "duplicates", "stats.json"),
                "tokenizer": ("tokenizer/tokenizer.json", "tokenizer/training_report.json"),
                "mix": ("shards/manifest.json", "report")}

# The file that names a completed step's result: hashed in its done marker, so a result another command
# replaced since (`xdp mix --out`, `xdp train-tokenizer --output` into the job's directory) is redone.
STEP_RESULT = {"clean": "stats.json", "tokenizer": "tokenizer/tokenizer.json", "mix": "shards/manifest.json"}

# Everything a job writes directly under its output directory.
OUTPUT_ENTRIES = frozenset({p.split("/")[0] for paths in STEP_OUTPUTS.values() for p in paths}
                           | {"_job", "_work", "timings.json"})


def among_outputs(relative: str) -> bool:
    """Whether `relative`, a path below the output directory, lies in something the job writes."""
    return relative.split("/")[0] in OUTPUT_ENTRIES


def _drop_neutral(data: dict, prefix: str = "") -> dict:
    out = {}
    for key, value in data.items():
        name = f"{prefix}{key}"
        if name in NEUTRAL_FIELDS:
            continue
        out[key] = _drop_neutral(value, f"{name}.") if isinstance(value, dict) else value
    return out


def job_config(cfg: Config) -> dict:
    """The config as it shapes output bytes: neutral fields dropped, inputs in a canonical order.

    Input order never matters in xdp (files are read in sorted order and survivors of dedup are
    chosen by id), so two configs listing the same inputs in another order are the same job.
    """
    data = _drop_neutral(cfg.to_dict())
    data["inputs"] = sorted(data["inputs"], key=lambda spec: json.dumps(spec, sort_keys=True))
    return data


def input_listing(cfg: Config) -> list[list]:
    """(url, size, mtime_ns) of every input file: a changed or replaced input changes the fingerprint."""
    from pipeline.sources import list_input_files

    listing = []
    for f in list_input_files(cfg):
        try:
            if "://" in f.url and not f.url.startswith("file://"):
                import fsspec

                fs, path = fsspec.core.url_to_fs(f.url)
                info = fs.info(path)
                listing.append([f.url, info.get("size"), str(info.get("mtime") or info.get("LastModified") or "")])
            else:
                st = os.stat(f.url.removeprefix("file://"))
                listing.append([f.url, st.st_size, st.st_mtime_ns])
        except OSError as exc:  # unreadable inputs are quarantined by the job; here they are just named
            listing.append([f.url, None, type(exc).__name__])
    return sorted(listing)


def _inputs_or_none(cfg: Config, required: bool) -> Optional[list]:
    try:
        return input_listing(cfg)
    except ConfigError:
        if required:
            raise
        return None  # a later step run on its own, with inputs no longer there


def _digest(obj: Any) -> str:
    return hashlib.sha256(json.dumps(obj, sort_keys=True, default=str).encode("utf-8")).hexdigest()


def _changes(old: Any, new: Any, where: str = "") -> list[str]:
    """Dotted names of the fields that differ between two config dicts (lists of one length compared
    item by item, so a changed `inputs[0].text_field` is named; others whole)."""
    if isinstance(old, dict) and isinstance(new, dict):
        out = []
        for key in sorted(set(old) | set(new)):
            out += _changes(old.get(key), new.get(key), f"{where}.{key}" if where else key)
        return out
    if isinstance(old, list) and isinstance(new, list):
        if len(old) == len(new):
            return [change for i, (a, b) in enumerate(zip(old, new)) for change in _changes(a, b, f"{where}[{i}]")]
        gone = [item for item in old if item not in new]
        added = [item for item in new if item not in old]
        return [f"{where}: {len(old)} -> {len(new)} entries"
                + "".join(f"; {label} {_brief(item)}" for label, items in (("removed", gone), ("added", added))
                          for item in items[:3])]
    return [] if old == new else [f"{where}: {json.dumps(old, default=str)[:80]} -> {json.dumps(new, default=str)[:80]}"]


def _brief(item: Any) -> str:
    """An input spec by its path (what tells inputs apart), anything else as short JSON."""
    if isinstance(item, dict) and "path" in item:
        return str(item["path"])
    return json.dumps(item, default=str)[:80]


class JobState:
    """Fingerprints of the configured steps and their markers under `<output>/_job/`."""

    def __init__(self, cfg: Config, steps: tuple[str, ...] = STEPS):
        self.out = Path(cfg.output)
        check_output_dir(self.out, "output")
        self.dir = self.out / "_job"
        data = job_config(cfg)
        self.records: dict[str, dict] = {}
        upstream = None
        for step in STEPS:
            record = {"xdp": __version__, "config": {k: data[k] for k in STEP_SECTIONS[step]}, "upstream": upstream}
            if step == "clean":
                record["inputs"] = _inputs_or_none(cfg, required="clean" in steps)
            record["fingerprint"] = _digest(record)
            self.records[step] = record
            upstream = record["fingerprint"]
        self.steps = steps

    # -- markers

    def _marker(self, step: str, kind: str) -> Path:
        return self.dir / f"{step}.{kind}.json"

    def _read(self, step: str, kind: str) -> Optional[dict]:
        path = self._marker(step, kind)
        try:
            return json.loads(path.read_text("utf-8"))
        except FileNotFoundError:
            return None
        except (OSError, ValueError):
            log.warning("%s: unreadable marker, ignored", path)
            return None

    def fingerprint(self, step: str) -> str:
        return self.records[step]["fingerprint"]

    def done(self, step: str) -> Optional[dict]:
        """The step's done marker if it matches this config and its outputs are all still there."""
        marker = self._read(step, "done")
        if marker is None or marker.get("fingerprint") != self.fingerprint(step):
            return None
        missing = [p for p in STEP_OUTPUTS[step] if not (self.out / p).exists()]
        if missing:
            log.warning("%s: completed earlier, but %s is gone; running it again", step, self.out / missing[0])
            return None
        result = self._result_sha256(step)
        if marker.get("result_sha256", result) != result:
            log.warning("%s: completed earlier, but %s was replaced since (by another command?); running it again",
                        step, self.out / STEP_RESULT[step])
            return None
        if step == "mix" and self._manifest_tokenizer() != self._result_sha256("tokenizer"):
            log.warning("mix: completed earlier with another tokenizer than %s; running it again",
                        self.out / STEP_RESULT["tokenizer"])
            return None
        return marker

    def _manifest_tokenizer(self) -> Optional[str]:
        try:
            return json.loads((self.out / STEP_RESULT["mix"]).read_text("utf-8")).get("tokenizer_sha256")
        except (OSError, ValueError, AttributeError):
            return None

    def _result_sha256(self, step: str) -> Optional[str]:
        from mixing.shards import sha256_file  # mixing imports this package

        try:
            return sha256_file(self.out / STEP_RESULT[step])
        except OSError:
            return None

    def check(self, overwrite: bool = False) -> None:
        """Refuse (ConfigError, before Ray starts) if the output holds another config's work, unless `overwrite`."""
        for step in self.steps:
            for kind in ("done", "started"):
                marker = self._read(step, kind)
                if marker is None or marker.get("fingerprint") == self.fingerprint(step):
                    continue
                if overwrite:
                    log.warning("%s: output of a different config in %s; --overwrite: redoing it", step, self.out)
                    break
                raise ConfigError(self._refusal(step, kind, marker))

    def _refusal(self, step: str, kind: str, marker: dict) -> str:
        now = self.records[step]
        changes = _changes(marker.get("config"), now["config"])
        if step == "clean" and marker.get("inputs") != now["inputs"]:
            old = {x[0]: x for x in marker.get("inputs") or []}
            new = {x[0]: x for x in now["inputs"] or []}
            names = sorted(url for url in old.keys() | new.keys() if old.get(url) != new.get(url))
            changes.append(f"input files changed ({len(names)}): {', '.join(names[:3])}{' ...' if len(names) > 3 else ''}")
        if marker.get("xdp") != now["xdp"]:
            changes.append(f"xdp version: {marker.get('xdp')} -> {now['xdp']}")
        if not changes:
            changes.append(f"the `{STEPS[STEPS.index(step) - 1]}` step before it changed")
        state = "completed" if kind == "done" else "was interrupted"
        return (f"output {self.out}: step `{step}` {state} there with a different config, so its outputs would "
                f"mix with this run's. Changed: {'; '.join(changes)}. Use another --output, or pass --overwrite "
                f"to redo `{step}` and the steps after it.")

    def start(self, step: str) -> None:
        """Mark the step started; markers of this and later steps from other configs are removed."""
        for later in STEPS[STEPS.index(step):]:
            for kind in ("done", "started"):
                marker = self._read(later, kind)
                if marker is not None and marker.get("fingerprint") != self.fingerprint(later):
                    self._marker(later, kind).unlink()
        write_bytes_atomic(self._marker(step, "started"), json_bytes(self.records[step]))

    def finish(self, step: str, summary: dict) -> None:
        """Call after the step's outputs are in place: from now on a rerun skips it."""
        write_bytes_atomic(self._marker(step, "done"), json_bytes({**self.records[step], "summary": summary,
                                                                    "result_sha256": self._result_sha256(step)}))


class WorkDir:
    """A step's scratch directory whose completed sub-results survive a killed run of the same job.

    On opening, everything is removed except sub-results that an earlier run with the same
    `fingerprint` completed (`complete(name)` was called after they were fully written); with no
    fingerprint, or another one, the directory starts empty. Half-written leftovers never mix in.
    """

    _STAMP = "_fingerprint"

    def __init__(self, root: Path, fingerprint: Optional[str]):
        self.root = Path(root)
        stamp = self.root / self._STAMP
        same = fingerprint is not None and stamp.exists() and stamp.read_text() == fingerprint
        if self.root.exists() and not same:
            shutil.rmtree(self.root)
        self.root.mkdir(parents=True, exist_ok=True)
        keep = {self._STAMP} | {p.name for p in self.root.glob("*._done")} | {
            p.name.removesuffix("._done") for p in self.root.glob("*._done")}
        for entry in self.root.iterdir():
            if entry.name not in keep:
                shutil.rmtree(entry) if entry.is_dir() and not entry.is_symlink() else entry.unlink()
        if fingerprint is not None and not same:
            write_bytes_atomic(stamp, fingerprint.encode())

    def path(self, name: str) -> Path:
        return self.root / name

    def completed(self, name: str) -> bool:
        return (self.root / f"{name}._done").exists()

    def fresh(self, name: str) -> Path:
        """An empty directory for `name`, no longer marked complete."""
        (self.root / f"{name}._done").unlink(missing_ok=True)
        shutil.rmtree(self.root / name, ignore_errors=True)
        return self.root / name

    def complete(self, name: str) -> None:
        write_bytes_atomic(self.root / f"{name}._done", b"")


def update_timings(out: str | os.PathLike, step: str, value: Any) -> None:
    """Set `step` in `<out>/timings.json` (seconds; they vary run to run, so never in stats or manifests)."""
    path = Path(out) / "timings.json"
    try:
        timings = json.loads(path.read_text("utf-8"))
    except (OSError, ValueError):
        timings = {}
    timings[step] = value
    write_bytes_atomic(path, json_bytes(timings))
