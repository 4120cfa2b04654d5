"""Open a trained tokenizer directory for encoding documents: the one loader mixing and evaluation share."""
from __future__ import annotations

import os
from pathlib import Path

from tokenizers import Tokenizer

from pipeline.config import ConfigError


def load_tokenizer(tokenizer_dir: str | os.PathLike) -> Tokenizer:
    """`tokenizer.json` of the directory, set to treat special tokens written in a text as text.

    By default `tokenizers` turns a literal `<|endoftext|>` or `<pad>` inside a document into the
    special token: a document quoting one would get an end-of-document boundary in its middle, and
    `decode` would drop it (the round trip would lose text). Only the EOS that mixing appends after
    each document may end one.
    """
    path = Path(tokenizer_dir) / "tokenizer.json"
    if not path.is_file():
        raise ConfigError(f"tokenizer directory {tokenizer_dir}: missing tokenizer.json")
    try:
        tok = Tokenizer.from_file(str(path))
    except Exception as exc:  # tokenizers raises a bare Exception for a file it cannot parse
        raise ConfigError(f"{path}: not a tokenizers JSON file ({exc})") from None
    tok.encode_special_tokens = True
    return tok
