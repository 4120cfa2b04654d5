"""Per-stage document accounting: in / kept / dropped by reason / quarantined, by category and language.

The Ray layer reduces every record read to its *fate* — (category, lang, stage where it left, reason,
count, chars) — with a distributed group-by, so only one small row per group reaches the driver.
From that table this module rebuilds each stage's counters and checks the identity
``read = kept + dropped + quarantined``.
"""
from __future__ import annotations

from collections import defaultdict
from dataclasses import dataclass

# Stages in pipeline order, and the fate label a record gets when it leaves at that stage.
STAGES = ("read", "normalize", "langid", "exact_dedup", "near_dedup", "write")
KEPT = "kept"
UNKNOWN = "unknown"  # category or language of a record quarantined before it was known
CODE = "code"  # the language key under which code documents are counted


class AccountingError(RuntimeError):
    """The documents written and dropped do not add up to the documents read."""


@dataclass(frozen=True)
class Fate:
    category: str
    lang: str
    stage: str  # where the record left the pipeline, or KEPT
    reason: str  # quarantine/drop reason ("" when kept)
    docs: int
    chars: int


def _zero() -> dict:
    return {"docs": 0, "chars": 0}


def _add(slot: dict, docs: int, chars: int) -> None:
    slot["docs"] += docs
    slot["chars"] += chars


def _reason_key(reason: str) -> str:
    """Group quarantine reasons by kind ("invalid_json: Expecting value" -> "invalid_json")."""
    return reason.split(":", 1)[0]


def _stage_view(fates: list[Fate], stage_index: int, key) -> dict:
    """Counters of one stage overall (key=None) or split by a fate attribute."""
    stage = STAGES[stage_index]
    groups: dict = defaultdict(lambda: {"in": _zero(), "kept": _zero(), "dropped": {}, "quarantined": {}})
    for f in fates:
        left_at = STAGES.index(f.stage) if f.stage in STAGES else len(STAGES)
        if left_at < stage_index:
            continue  # already gone before this stage
        g = groups[key(f) if key else None]
        _add(g["in"], f.docs, f.chars)
        if left_at == stage_index:
            bucket = "quarantined" if stage in ("read", "normalize") else "dropped"
            _add(g[bucket].setdefault(_reason_key(f.reason), _zero()), f.docs, f.chars)
        else:
            _add(g["kept"], f.docs, f.chars)
    if key is None:
        return groups.get(None) or {"in": _zero(), "kept": _zero(), "dropped": {}, "quarantined": {}}
    return {k: groups[k] for k in sorted(groups)}


def build_stats(fates: list[Fate]) -> dict:
    """The `stages` section of stats.json plus totals, from the fate table."""
    stages = {}
    for i, stage in enumerate(STAGES):
        view = _stage_view(fates, i, None)
        view["by_category"] = _stage_view(fates, i, lambda f: f.category)
        view["by_language"] = _stage_view(fates, i, lambda f: f.lang)
        stages[stage] = view
    totals = {"read": _zero(), "kept": _zero(), "dropped": {}, "quarantined": {}}
    for f in fates:
        _add(totals["read"], f.docs, f.chars)
        if f.stage == KEPT:
            _add(totals["kept"], f.docs, f.chars)
        elif f.stage in ("read", "normalize"):
            _add(totals["quarantined"].setdefault(_reason_key(f.reason), _zero()), f.docs, f.chars)
        else:
            _add(totals["dropped"].setdefault(_reason_key(f.reason), _zero()), f.docs, f.chars)
    return {"stages": stages, "totals": totals}


def check_identity(read: int, kept: int, dropped: int, quarantined: int) -> dict:
    """Independent counts from the outputs must add up; raise AccountingError if they do not."""
    result = {"read": read, "kept": kept, "dropped": dropped, "quarantined": quarantined,
              "balanced": read == kept + dropped + quarantined}
    if not result["balanced"]:
        raise AccountingError(
            f"documents do not add up: read {read} != kept {kept} + dropped {dropped} + quarantined "
            f"{quarantined} (difference {read - kept - dropped - quarantined})")
    return result
