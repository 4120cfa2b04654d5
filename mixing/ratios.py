"""Target mixture tables (categories, natural languages, programming languages).

The published XVERSE-65B tables ship with the package (`mixing/ratios/xverse65b.yaml`); users pass
their own YAML of the same shape. Each table is normalized to sum to 1; unknown keys are errors.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from importlib import resources
from pathlib import Path
from typing import Optional

import yaml

from pipeline.config import CATEGORIES, CODE, ConfigError, load_yaml

TABLES = ("categories", "languages", "code_languages")
ALLOWED_KEYS = {"name", "sequence_length", "vocab_size", "model", *TABLES}


@dataclass(frozen=True)
class RatioTables:
    name: str
    categories: dict[str, float]
    languages: dict[str, float]
    code_languages: dict[str, float]
    sequence_length: Optional[int] = None
    vocab_size: Optional[int] = None


def _normalize(table, where: str, required: bool = True) -> dict[str, float]:
    """Shares scaled to sum to 1. A table nothing is drawn from (`required` False: code languages when
    categories give code no share) may be absent, empty or all zero: {}."""
    if not required and (table is None or table == {}):
        return {}
    if not isinstance(table, dict) or not table:
        raise ConfigError(f"{where}: expected a non-empty mapping of name -> share")
    out = {}
    for key, value in table.items():
        if not isinstance(key, str):  # YAML 1.1 reads an unquoted no, yes, on, off as a boolean
            raise ConfigError(f"{where}: key {key!r} is not a name; quote it (\"{key}\" or, for Norwegian, \"no\")")
        if isinstance(value, bool) or not isinstance(value, (int, float)) or not 0 <= value < math.inf:
            raise ConfigError(f"{where}.{key}: share must be a non-negative number, got {value!r}")
        out[key] = float(value)
    total = sum(out.values())
    if total <= 0:
        if not required:
            return {}
        raise ConfigError(f"{where}: shares sum to zero")
    return {k: v / total for k, v in out.items()}


def _positive_int(data: dict, key: str, where: str) -> Optional[int]:
    value = data.get(key)
    if value is not None and (isinstance(value, bool) or not isinstance(value, int) or value < 1):
        raise ConfigError(f"{where}.{key}: expected a positive integer, got {value!r}")
    return value


def default_ratios_path() -> Path:
    return Path(str(resources.files("mixing") / "ratios" / "xverse65b.yaml"))


def load_ratios(path: Optional[str | Path] = None) -> RatioTables:
    """Load and normalize a ratio YAML (default: the shipped XVERSE-65B tables)."""
    path = Path(path) if path is not None else default_ratios_path()
    try:
        data = load_yaml(path.read_text(encoding="utf-8"))
    except (OSError, yaml.YAMLError) as exc:
        raise ConfigError(f"ratios {path}: cannot read: {exc}") from None
    if not isinstance(data, dict):
        raise ConfigError(f"ratios {path}: expected a mapping")
    unknown = sorted(set(data) - ALLOWED_KEYS)
    if unknown:
        raise ConfigError(f"ratios {path}: unknown key {unknown[0]!r} (allowed: {', '.join(sorted(ALLOWED_KEYS))})")
    if "categories" not in data:
        raise ConfigError(f"ratios {path}: missing table 'categories'")
    categories = _normalize(data["categories"], f"ratios {path}: categories")
    bad = sorted(set(categories) - set(CATEGORIES))
    if bad:
        raise ConfigError(f"ratios {path}: categories.{bad[0]}: unknown category (one of {', '.join(CATEGORIES)})")
    # Languages split the text categories' share, code languages the code share: a text-only (or
    # code-only) mix needs no table for what it does not draw.
    needed = {"languages": any(v > 0 for k, v in categories.items() if k != CODE),
              "code_languages": categories.get(CODE, 0.0) > 0}
    missing = [t for t in ("languages", "code_languages") if needed[t] and t not in data]
    if missing:
        raise ConfigError(f"ratios {path}: missing table {missing[0]!r}")
    return RatioTables(
        name=str(data.get("name", path.stem)),
        categories=categories,
        **{t: _normalize(data.get(t), f"ratios {path}: {t}", needed[t]) for t in ("languages", "code_languages")},
        sequence_length=_positive_int(data, "sequence_length", f"ratios {path}"),
        vocab_size=_positive_int(data, "vocab_size", f"ratios {path}"),
    )
