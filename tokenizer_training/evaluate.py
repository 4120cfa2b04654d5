"""Measure a trained tokenizer on held-out text: compression per language, vocabulary per script, round trip.

Round trip is checked on every text as `decode(encode(x)) == x`. A text that is not in NFC comes back
NFC-normalized by design (the tokenizer normalizes); such cases are counted apart as `nfc_only`, every
other mismatch is a failure with examples.
"""
from __future__ import annotations

import time
import unicodedata
from collections import Counter, defaultdict
from pathlib import Path

from tokenizers import Tokenizer, decoders

from pipeline.config import ConfigError
from tokenizer_training.load import load_tokenizer
from tokenizer_training.sources import list_input_files, read_file

_BATCH = 1024
MAX_EXAMPLES = 5


# Letters whose Unicode name does not start with their script.
_WIDTH_PREFIXES = ("FULLWIDTH", "HALFWIDTH")
_SCRIPT_ALIASES = {"KATAKANA-HIRAGANA": "KATAKANA", "IDEOGRAPHIC": "CJK", "MICRO": "GREEK",
                   "MASCULINE": "LATIN", "FEMININE": "LATIN"}


def token_script(text: str) -> str:
    """The Unicode script of a token's first letter (LATIN, CJK, CYRILLIC, ...), else a coarse class."""
    for ch in text:
        if ch.isalpha():
            words = unicodedata.name(ch, "UNNAMED").split(" ")
            if words[0] in _WIDTH_PREFIXES and len(words) > 1:
                words = words[1:]
            return _SCRIPT_ALIASES.get(words[0], words[0])
    if "\ufffd" in text:
        return "partial-utf8"
    if any(ch.isdigit() for ch in text):
        return "digit"
    return "space/punct/symbol"


def vocab_share_by_script(tok: Tokenizer) -> dict[str, float]:
    """Share of the vocabulary whose tokens belong to each script (specials excluded)."""
    special = {t.content for t in tok.get_added_tokens_decoder().values()}
    bytes_decoder = decoders.ByteLevel()
    counts = Counter(token_script(bytes_decoder.decode([t]))
                     for t in tok.get_vocab(with_added_tokens=False) if t not in special)
    total = sum(counts.values())
    return {k: round(v / total, 5) for k, v in counts.most_common()}


def _group(category, lang) -> str:
    return "code" if category == "code" else (lang or "(none)")


def evaluate(tok_dir: str | Path, inputs: list[str] | str) -> dict:
    """Per-language bytes/token and tokens/word, vocabulary share per script, round-trip failures."""
    tok = load_tokenizer(tok_dir)
    stats: dict[str, Counter] = defaultdict(Counter)
    failures: list[dict] = []
    counters: dict = {}  # read_file counts the records it skips (unparseable, no text)
    started = time.perf_counter()
    for path in list_input_files(inputs):
        for table in read_file(path, batch_rows=_BATCH, counters=counters):
            texts = table.column("text").to_pylist()
            groups = [_group(c, l) for c, l in zip(table.column("category").to_pylist(),
                                                   table.column("lang").to_pylist())]
            encodings = tok.encode_batch_fast(texts, add_special_tokens=False)
            decoded = tok.decode_batch([e.ids for e in encodings], skip_special_tokens=False)
            for text, group, enc, back in zip(texts, groups, encodings, decoded):
                s = stats[group]
                s["docs"] += 1
                s["bytes"] += len(text.encode("utf-8"))
                s["tokens"] += len(enc.ids)
                s["words"] += len(text.split())
                if back != text:
                    nfc_only = back == unicodedata.normalize("NFC", text)
                    s["nfc_only" if nfc_only else "roundtrip_failures"] += 1
                    if not nfc_only and len(failures) < MAX_EXAMPLES:
                        failures.append({"lang": group, "text": text[:200], "decoded": back[:200]})
    elapsed = time.perf_counter() - started
    languages = {
        g: {"docs": s["docs"], "bytes": s["bytes"], "tokens": s["tokens"],
            "bytes_per_token": round(s["bytes"] / max(1, s["tokens"]), 4),
            "tokens_per_word": round(s["tokens"] / max(1, s["words"]), 4),
            "roundtrip_failures": s["roundtrip_failures"], "nfc_only": s["nfc_only"]}
        for g, s in sorted(stats.items())
    }
    total = Counter()
    for s in stats.values():
        total.update(s)
    skipped = counters.get("bad_records", 0)
    if not total["docs"]:
        names = inputs if isinstance(inputs, str) else ", ".join(inputs)
        raise ConfigError(f"{names}: no texts to evaluate ({skipped} records skipped: unparseable or no text)")
    return {
        "tokenizer": str(tok_dir),
        "vocab_size": tok.get_vocab_size(with_added_tokens=True),
        "docs": total["docs"],
        "skipped_records": skipped,
        "bytes_per_token": round(total["bytes"] / max(1, total["tokens"]), 4),
        "roundtrip_failures": total["roundtrip_failures"],
        "nfc_only": total["nfc_only"],
        "failure_examples": failures,
        "languages": languages,
        "vocab_share_by_script": vocab_share_by_script(tok),
        "seconds": round(elapsed, 2),
    }


def format_report(report: dict) -> str:
    """Markdown tables for the terminal."""
    lines = [f"tokenizer {report['tokenizer']} ({report['vocab_size']:,} tokens): {report['docs']:,} texts, "
             f"{report['bytes_per_token']} bytes/token, {report['roundtrip_failures']} round-trip failures "
             f"({report['nfc_only']} texts changed only by NFC)"
             + (f"; {report['skipped_records']:,} records skipped (unparseable or no text)"
                if report["skipped_records"] else ""), "",
             "| lang | docs | bytes/token | tokens/word | round-trip failures | NFC-only |",
             "|---|---:|---:|---:|---:|---:|"]
    for lang, s in report["languages"].items():
        lines.append(f"| {lang} | {s['docs']:,} | {s['bytes_per_token']:.3f} | {s['tokens_per_word']:.3f} | "
                     f"{s['roundtrip_failures']} | {s['nfc_only']} |")
    lines += ["", "| script | vocab share |", "|---|---:|"]
    lines += [f"| {k} | {100 * v:.2f}% |" for k, v in report["vocab_share_by_script"].items()]
    for ex in report["failure_examples"]:
        lines.append(f"\nround-trip failure [{ex['lang']}]: {ex['text']!r} -> {ex['decoded']!r}")
    return "\n".join(lines)
