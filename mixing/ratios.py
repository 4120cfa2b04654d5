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

from pipeline.config import CATEGORIES, ConfigError

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


def _normalize(table, where: str) -> dict[str, float]:
    if not isinstance(table, dict) or not table:
        raise ConfigError(f"{where}: expected a non-empty mapping of name -> share")
    out = {}
    for key, value in table.items():
        if isinstance(value, bool) or not isinstance(value, (int, float)) or not 0 <= value < math.inf:
            raise ConfigError(f"{where}.{key}: share must be a non-negative number, got {value!r}")
        out[str(key)] = float(value)
    total = sum(out.values())
    if total <= 0:
        raise ConfigError(f"{where}: shares sum to zero")
    return {k: v / total for k, v in out.items()}


def default_ratios_path() -> Path:
    return Path(str(resources.files("mixing") / "ratios" / "xverse65b.yaml"))


def load_ratios(path: Optional[str | Path] = None) -> RatioTables:
    """Load and normalize a ratio YAML (default: the shipped XVERSE-65B tables)."""
    path = Path(path) if path is not None else default_ratios_path()
    try:
        data = yaml.safe_load(path.read_text(encoding="utf-8"))
    except (OSError, yaml.YAMLError) as exc:
        raise ConfigError(f"ratios {path}: cannot read: {exc}") from None
    if not isinstance(data, dict):
        raise ConfigError(f"ratios {path}: expected a mapping")
    unknown = sorted(set(data) - ALLOWED_KEYS)
    if unknown:
        raise ConfigError(f"ratios {path}: unknown key {unknown[0]!r} (allowed: {', '.join(sorted(ALLOWED_KEYS))})")
    missing = [t for t in TABLES if t not in data]
    if missing:
        raise ConfigError(f"ratios {path}: missing table {missing[0]!r}")
    categories = _normalize(data["categories"], f"ratios {path}: categories")
    bad = sorted(set(categories) - set(CATEGORIES))
    if bad:
        raise ConfigError(f"ratios {path}: categories.{bad[0]}: unknown category (one of {', '.join(CATEGORIES)})")
    return RatioTables(
        name=str(data.get("name", path.stem)),
        categories=categories,
        languages=_normalize(data["languages"], f"ratios {path}: languages"),
        code_languages=_normalize(data["code_languages"], f"ratios {path}: code_languages"),
        sequence_length=data.get("sequence_length"),
        vocab_size=data.get("vocab_size"),
    )
