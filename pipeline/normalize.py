"""Text normalization applied to every document before language ID and dedup.

Unicode NFC (so that the same word has one byte form), control characters removed but newlines and
tabs kept, lone surrogates replaced by U+FFFD (Arrow/Parquet need valid UTF-8), and whitespace tidied.
Prose gets runs of horizontal whitespace collapsed; code keeps its indentation.
"""
from __future__ import annotations

import re
import unicodedata

_CONTROL = re.compile(r"[\x00-\x08\x0b\x0c\x0e-\x1f\x7f-\x9f\ufeff]")
_SURROGATE = re.compile(r"[\ud800-\udfff]")
_HSPACE = re.compile(r"[^\S\n]+")  # any whitespace except newline
_TRAILING = re.compile(r"[ \t]+\n")
_LEADING = re.compile(r"\n[ \t]+")
_BLANK_RUNS = re.compile(r"\n{3,}")


def replace_surrogates(text: str) -> str:
    return _SURROGATE.sub("\ufffd", text)


def normalize_text(text: str, is_code: bool = False) -> str:
    """Return the normalized form of one document (may be empty)."""
    text = replace_surrogates(text)
    text = text.replace("\r\n", "\n").replace("\r", "\n")
    text = unicodedata.normalize("NFC", text)
    text = _CONTROL.sub("", text)
    if not is_code:
        text = _LEADING.sub("\n", _HSPACE.sub(" ", text))
    text = _TRAILING.sub("\n", text + "\n")
    text = _BLANK_RUNS.sub("\n\n", text)
    return text.strip("\n") if is_code else text.strip()
