"""Render a stats document (`mixing.stats`) as stats.json, PNG plots and one self-contained HTML page."""
from __future__ import annotations

import base64
import html
import io
import os
from pathlib import Path

from pipeline.write import write_bytes_atomic, write_json_atomic
from mixing.stats import TABLES, by_target, stage_removals

_TITLES = {"categories": "Categories", "languages": "Natural languages", "code_languages": "Programming languages"}


def _share_plot(table: dict, title: str, unit: str) -> bytes:
    """Target, planned and realized share per entry on a log scale (so a 0.03 % language is as readable
    as English), entries with nothing realized marked; below, realized - planned in points: the part
    of a deviation that sampling made, apart from what the plan had to change (no data, caps). Without
    a plan (`xdp stats` on cleaned documents) the reference is the target."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    names = [name for name, _ in by_target(table)]
    xs = list(range(len(names)))
    has_plan = any("planned" in v for v in table.values())
    reference = "planned" if has_plan else "target"
    series = {"target": [100 * table[n]["target"] for n in names]}
    if has_plan:
        series["planned"] = [100 * table[n].get("planned", 0.0) for n in names]
    series["realized"] = [100 * table[n]["realized"] for n in names]
    fig, (top, low) = plt.subplots(2, 1, sharex=True, figsize=(max(6.0, 0.28 * len(names) + 2), 5.0), dpi=100,
                                   gridspec_kw={"height_ratios": [3, 1]})
    width = 0.8 / len(series)
    for i, (label, values) in enumerate(series.items()):
        top.bar([x + (i - (len(series) - 1) / 2) * width for x in xs], values, width=width, label=label)
    shown = [v for values in series.values() for v in values if v > 0]
    floor = min(shown) / 3 if shown else 1e-3
    top.set_yscale("log")
    top.set_ylim(floor, 150)
    empty = [x for x, t, r in zip(xs, series["target"], series["realized"]) if t > 0 and r == 0]
    if empty:
        top.plot(empty, [floor * 1.3] * len(empty), "x", color="red", label="none realized")
    top.set_ylabel(f"share of {unit} (%)")
    top.set_title(title)
    top.legend(fontsize=7, ncol=4)
    low.bar(xs, [r - p for r, p in zip(series["realized"], series[reference])], width=0.6, color="gray")
    low.axhline(0, color="black", linewidth=0.5)
    low.set_ylabel(f"realized -\n{reference} (pp)", fontsize=8)
    low.set_xticks(xs, names, rotation=90, fontsize=7)
    fig.tight_layout()
    buf = io.BytesIO()
    fig.savefig(buf, format="png", metadata={"Software": None})  # no version stamp: same stats, same bytes
    plt.close(fig)
    return buf.getvalue()


def _html_table(header: list[str], rows: list[list]) -> str:
    head = "".join(f"<th>{html.escape(h)}</th>" for h in header)
    body = "".join("<tr>" + "".join(f"<td>{html.escape(str(c))}</td>" for c in r) + "</tr>" for r in rows)
    return f"<table><tr>{head}</tr>{body}</table>"


def _pct(x: float) -> str:
    return f"{100 * x:.3f}%"


def render_html(stats: dict, images: dict[str, bytes]) -> str:
    unit = stats.get("unit", "tokens")
    parts = [f"<h1>xdp mix report</h1><p>Total {unit}: {stats.get('total_tokens', 0):,}"
             + (f"; budget: {stats['budget_rule']}, repetition cap {stats['max_epochs']:g} epochs"
                if "budget_rule" in stats else "") + "</p>"]
    if "packing" in stats:
        p = stats["packing"]
        parts.append("<h2>Packing</h2>" + _html_table(
            ["sequence length", "sequences", "efficiency", "documents", "split (best-fit)", "split (concat+chunk)"],
            [[p["sequence_length"], p["sequences"], _pct(p["efficiency"]), p["documents"], p["split_documents"],
              p["concat_split_documents"]]]))
    for t in TABLES:
        rows = [[n, _pct(v["target"]), _pct(v["planned"]) if "planned" in v else "-", _pct(v["realized"]),
                 f"{v['tokens']:,}"] for n, v in by_target(stats[t])]
        img = base64.b64encode(images[t]).decode()
        parts.append(f"<h2>{_TITLES[t]}</h2><img alt='{t}' src='data:image/png;base64,{img}'>"
                     + _html_table(["name", "target", "planned", "realized", unit], rows))
    if stats.get("issues"):
        parts.append("<h2>Targets not met</h2>" + _html_table(
            ["table", "entry", "status", "detail"], [[i["table"], i["name"], i["status"], i["detail"]]
                                                     for i in stats["issues"]]))
    buckets = stats.get("buckets", {})
    if buckets:
        cols = sorted({k for b in buckets.values() for k in b})
        parts.append("<h2>Buckets</h2>" + _html_table(
            ["bucket", *cols], [[name, *(f"{b[c]:.3f}" if isinstance(b.get(c), float) else b.get(c, "")
                                         for c in cols)] for name, b in sorted(buckets.items())]))
    if stats.get("excluded"):
        parts.append("<h2>Excluded buckets</h2>" + _html_table(
            ["bucket", unit, "documents", "reason"],
            [[k, v["available"], v.get("documents", ""), v["reason"]] for k, v in sorted(stats["excluded"].items())]))
    if stats.get("documents"):
        keys = ("read", "selected", "not_selected", "excluded", "no_text", "copies")
        parts.append("<h2>Cleaned documents in the mix</h2>" + _html_table(
            [k.replace("_", " ") for k in keys], [[f"{stats['documents'][k]:,}" for k in keys]]))
    if stats.get("stages"):
        rows = [[stage, reason if kind == "dropped" else f"quarantined: {reason}", d.get("docs", ""),
                 d.get("chars", "")] for stage, kind, reason, d in stage_removals(stats["stages"])]
        parts.append("<h2>Documents dropped per stage and reason</h2>"
                     + _html_table(["stage", "reason", "documents", "characters"], rows))
    style = ("body{font-family:sans-serif;margin:2em}table{border-collapse:collapse;margin:1em 0}"
             "td,th{border:1px solid #ccc;padding:2px 6px;font-size:12px;text-align:right}img{max-width:100%}")
    return (f"<!DOCTYPE html><html><head><meta charset='utf-8'><title>xdp mix report</title>"
            f"<style>{style}</style></head><body>{''.join(parts)}</body></html>\n")


def write_report(stats: dict, out_dir: str | os.PathLike) -> dict[str, str]:
    """Write stats.json, one PNG per table and report.html (images inlined) into `out_dir`."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    paths = {"json": str(out / "stats.json"), "html": str(out / "report.html")}
    write_json_atomic(stats, paths["json"])
    unit = stats.get("unit", "tokens")
    images = {t: _share_plot(stats[t], _TITLES[t], unit) for t in TABLES}
    for t, png in images.items():
        paths[t] = str(out / f"{t}.png")
        write_bytes_atomic(paths[t], png)
    write_bytes_atomic(paths["html"], render_html(stats, images).encode("utf-8"))
    return paths
