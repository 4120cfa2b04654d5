"""What the user got: target vs realized shares per table, tokens and epochs per bucket, packing, drops.

The stats of a mix are computed once, by the job, and stored in the shard manifest (`"stats"`), so
`xdp stats SHARD_DIR` needs nothing but the directory. For a cleaned-document directory they are
computed from the documents (tokens with a tokenizer, else characters).
"""
from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Mapping, Optional

import numpy as np
import pyarrow as pa

from mixing.planner import MixPlan
from pipeline.config import CODE
from mixing.ratios import RatioTables
from mixing.select import BucketSelection
from mixing.shards import MANIFEST, read_manifest

TABLES = ("categories", "languages", "code_languages")


def table_stats(targets: Mapping[str, float], tokens: Mapping[str, float],
                planned: Optional[Mapping[str, float]] = None) -> dict[str, dict]:
    """{name: {"target", "realized", "tokens"[, "planned"]}} over the table's entries and anything outside it.

    `planned` is the plan's share: the target after the infeasibility rules (`MixPlan.issues`).
    """
    total = sum(tokens.values())
    names = list(targets) + sorted(set(tokens) - set(targets))
    out = {n: {"target": float(targets.get(n, 0.0)),
               "realized": tokens.get(n, 0) / total if total else 0.0,
               "tokens": int(tokens.get(n, 0))} for n in names}
    for n, share in (planned or {}).items():
        out[n]["planned"] = float(share)
    return out


def _table_tokens(bucket_tokens: Mapping[tuple[str, str], float]) -> dict[str, dict[str, float]]:
    out: dict[str, dict[str, float]] = {t: {} for t in TABLES}
    for (cat, key), n in bucket_tokens.items():
        out["categories"][cat] = out["categories"].get(cat, 0) + n
        table = "code_languages" if cat == CODE else "languages"
        out[table][key] = out[table].get(key, 0) + n
    return out


REALIZED_TOLERANCE = 0.005  # a share this far (0.5 pp) from the plan is reported, as is one not realized at all


def selection_issues(tables: Mapping[str, Mapping[str, dict]]) -> list[dict]:
    """Entries whose selected documents miss the plan: none selected although tokens were planned (a
    bucket planned below one of its documents, as thin languages in a small mix), or more than
    `REALIZED_TOLERANCE` off. `tables`: `table_stats` output with `planned` shares."""
    issues = []
    for table, entries in tables.items():
        for name, e in entries.items():
            planned, realized = e.get("planned", 0.0), e["realized"]
            if planned > 0 and (realized == 0 or abs(realized - planned) > REALIZED_TOLERANCE):
                issues.append({"table": table, "name": name, "status": "not realized",
                               "detail": f"planned {100 * planned:.3f} %, selected {100 * realized:.3f} % "
                                         "(documents are selected whole; the bucket's are large for its plan)"})
    return issues


def by_target(table: Mapping[str, dict]) -> list[tuple[str, dict]]:
    """A table's (name, entry) pairs by target share, ties by name: the same order from memory or from JSON
    (whose keys are sorted), so a report rebuilt from a manifest is the mix's own, byte for byte."""
    return sorted(table.items(), key=lambda item: (-item[1]["target"], item[0]))


def stage_removals(stages: Mapping[str, dict]) -> list[tuple[str, str, str, dict]]:
    """(stage, "dropped" or "quarantined", reason, {docs, chars}) of the clean job's per-stage counters,
    in stage order."""
    return [(stage, kind, reason, counts) for stage, s in sorted(stages.items())
            for kind in ("dropped", "quarantined") for reason, counts in (s.get(kind) or {}).items()]


def document_accounting(read: int, plan: MixPlan, selections: Mapping[tuple[str, str], BucketSelection]) -> dict:
    """Every cleaned row once: selected (written at least once), not selected (its bucket's plan took less
    than a whole epoch), excluded (its bucket is outside the ratio tables) or without text (null or
    blank, left out by tokenization); `copies` counts what was written, repeats included."""
    excluded = sum(e.get("documents", 0) for e in plan.excluded.values())
    planned = sum(s.available_documents for s in selections.values())
    selected = sum(s.selected_documents for s in selections.values())
    return {"read": read, "selected": selected, "not_selected": planned - selected, "excluded": excluded,
            "no_text": read - planned - excluded, "copies": sum(s.documents for s in selections.values())}


def mix_stats(plan: MixPlan, selections: Mapping[tuple[str, str], BucketSelection], packing: dict,
              stages: Optional[dict], read: Optional[int] = None) -> dict:
    """The stats document of a finished mix (the `xdp stats --json` shape); with the number of cleaned
    rows `read`, a `documents` entry accounts for each of them."""
    realized = {k: s.tokens for k, s in selections.items()}
    per_table = _table_tokens(realized)
    planned = {(b.category, b.key): b for b in plan.buckets}
    out = {t: table_stats(plan.targets[t], per_table[t], plan.shares(t)) for t in TABLES}
    out.update({
        "unit": "tokens",
        "total_tokens": int(sum(realized.values())),
        "budget_rule": plan.budget_rule,
        "max_epochs": plan.max_epochs,
        "buckets": {f"{c}/{k}": {"available": planned[(c, k)].available, "planned": planned[(c, k)].tokens,
                                 "tokens": s.tokens, "documents": s.documents,
                                 "available_documents": s.available_documents,
                                 "selected_documents": s.selected_documents,
                                 "epochs": s.tokens / planned[(c, k)].available}
                    for (c, k), s in selections.items()},
        "excluded": plan.excluded,
        "issues": plan.issues + selection_issues({t: out[t] for t in TABLES}),
        "packing": packing,
    })
    if read is not None:
        out["documents"] = document_accounting(read, plan, selections)
    if stages is not None:
        out["stages"] = stages
    return out


def cleaned_stats(counts: pa.Table, ratios: RatioTables, unit: str, stages: Optional[dict]) -> dict:
    """Stats of a cleaned-document directory from per-document (category, key, n) counts."""
    cats = counts.column("category").to_pylist()
    keys = counts.column("key").to_pylist()
    n = counts.column("n").to_numpy()
    buckets: dict[tuple[str, str], int] = {}
    docs: dict[tuple[str, str], int] = {}
    for c, k, v in zip(cats, keys, n.tolist()):
        buckets[(c, k)] = buckets.get((c, k), 0) + v
        docs[(c, k)] = docs.get((c, k), 0) + 1
    per_table = _table_tokens(buckets)
    targets = {"categories": ratios.categories, "languages": ratios.languages,
               "code_languages": ratios.code_languages}
    out = {t: table_stats(targets[t], per_table[t]) for t in TABLES}
    out.update({"unit": unit, "total_tokens": int(np.sum(n)),
                "buckets": {f"{c}/{k}": {"tokens": v, "documents": docs[(c, k)]}
                            for (c, k), v in sorted(buckets.items())}})
    if stages is not None:
        out["stages"] = stages
    return out


def load_stage_stats(cleaned_dir: str | os.PathLike) -> Optional[dict]:
    """The clean job's per-stage counters (`<output>/stats.json`, one level above `cleaned/`), if present."""
    path = Path(cleaned_dir).resolve().parent / "stats.json"
    if not path.is_file():
        return None
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except json.JSONDecodeError as exc:
        raise ValueError(f"{path}: not valid JSON: {exc}") from None
    return data.get("stages") if isinstance(data, dict) else None


def find_shard_dir(path: str | os.PathLike) -> Optional[Path]:
    """`path` itself or `path/shards` when it holds a manifest."""
    for candidate in (Path(path), Path(path) / "shards"):
        if (candidate / MANIFEST).is_file():
            return candidate
    return None


def shard_stats(shard_dir: str | os.PathLike, verify: bool = True) -> dict:
    """The mix statistics of a shard directory; by default every shard's sha256 is checked first."""
    from mixing.shards import ShardError, verify_shards

    manifest = verify_shards(shard_dir) if verify else read_manifest(shard_dir)
    if "stats" not in manifest:
        raise ShardError(f"{shard_dir}/{MANIFEST}: no mix statistics (shards not written by `xdp mix`)")
    return manifest["stats"]
