"""Byte-level BPE of an exact vocabulary size, and the tokenizer directory that transformers loads.

Why byte-level BPE (measurements in docs/tokenizer.md): every string maps onto 256 byte symbols, so no
input ever becomes an unknown token and `decode(encode(x)) == x` holds for every NFC string, including
control characters and emoji, without the 256 `<0xNN>` fallback entries and the `▁` round-trip corner
cases of a SentencePiece-style BPE. Digits are split one by one (as XVERSE does) so numbers tokenize
uniformly; letters keep their combining marks so Indic and Thai words are not cut at every vowel sign.
"""
from __future__ import annotations

import hashlib
import math
import os
from pathlib import Path
from typing import Iterable, Optional

from tokenizers import Regex, Tokenizer, decoders, models, normalizers, pre_tokenizers, trainers

from pipeline.write import json_bytes, write_bytes_atomic

PAD, BOS, EOS = "<pad>", "<|startoftext|>", "<|endoftext|>"
SPECIAL_TOKENS = (PAD, BOS, EOS)  # ids 0, 1, 2, counted inside vocab_size
BASE_VOCAB = 256 + len(SPECIAL_TOKENS)  # byte alphabet + specials: the vocabulary before any merge

# Words with their leading space/punctuation, single digits, punctuation runs, newlines, other spaces.
PRETOKENIZE_PATTERN = (
    r"(?i:'s|'t|'re|'ve|'m|'ll|'d)"
    r"|[^\r\n\p{L}\p{M}\p{N}]?[\p{L}\p{M}]+"
    r"|\p{N}"
    r"| ?[^\s\p{L}\p{M}\p{N}]+[\r\n]*"
    r"|\s*[\r\n]+"
    r"|\s+(?!\S)"
    r"|\s+"
)


class VocabularyShortError(ValueError):
    """The sample ran out of mergeable pairs before the vocabulary reached its size."""

    def __init__(self, reached: int, asked: int):
        self.reached, self.asked = reached, asked
        super().__init__(f"the sample yields only {reached:,} of {asked:,} tokens")

    def bytes_needed(self, sample_bytes: int) -> int:
        """Rough sample size that reaches `asked`: learned merges grow about as sqrt(text) (Heaps' law)."""
        learned = max(1, self.reached - BASE_VOCAB)
        return int(math.ceil(sample_bytes * ((self.asked - BASE_VOCAB) / learned) ** 2))


def new_tokenizer() -> Tokenizer:
    """The untrained pipeline: NFC -> split -> bytes-as-characters -> BPE (no unknown token)."""
    tok = Tokenizer(models.BPE())
    tok.normalizer = normalizers.NFC()
    tok.pre_tokenizer = pre_tokenizers.Sequence([
        pre_tokenizers.Split(Regex(PRETOKENIZE_PATTERN), behavior="isolated"),
        pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False),
    ])
    tok.decoder = decoders.ByteLevel()
    return tok


def train_bpe(texts: Iterable[str | list[str]], vocab_size: int, min_frequency: int = 2,
              show_progress: bool = True) -> Tokenizer:
    """Train on streamed texts; the result has exactly `vocab_size` entries or VocabularyShortError."""
    if vocab_size < BASE_VOCAB + 1:
        raise ValueError(f"vocab_size {vocab_size} leaves no room for merges (minimum {BASE_VOCAB + 1})")
    tok = new_tokenizer()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        min_frequency=min_frequency,
        special_tokens=list(SPECIAL_TOKENS),
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=show_progress,
    )
    tok.train_from_iterator(texts, trainer=trainer)
    size = tok.get_vocab_size(with_added_tokens=True)
    # The alphabet is fixed at 256 byte symbols and the trainer stops at vocab_size, so it can only
    # stop short (too few pairs at min_frequency), never overshoot.
    if size < vocab_size:
        raise VocabularyShortError(size, vocab_size)
    ids = [tok.token_to_id(t) for t in SPECIAL_TOKENS]
    if size != vocab_size or ids != list(range(len(SPECIAL_TOKENS))):
        raise RuntimeError(f"trainer produced {size} tokens with special ids {ids}; expected "
                           f"{vocab_size} with ids 0..{len(SPECIAL_TOKENS) - 1}")
    return tok


def tokenizer_json_bytes(tok: Tokenizer) -> bytes:
    return tok.to_str(pretty=True).encode("utf-8")


# Report fields that differ between identical runs, or between drivers (the default max_memory is half of
# the driver's RAM): kept out of training_report.json, whose bytes follow from the config and the input.
RUN_VARYING = ("time_s", "peak_rss_bytes", "max_memory_bytes")


def save_tokenizer_dir(out_dir: str | os.PathLike, tok: Tokenizer, report: dict,
                       model_max_length: Optional[int] = None) -> dict:
    """Write the directory `AutoTokenizer.from_pretrained` loads offline, plus training_report.json.

    Each file is replaced atomically; the report goes last, so its presence marks a finished directory.
    What varies run to run (times, peak memory) goes to training_run.json, so that the same config
    gives the same bytes in every other file. Returns the report with `tokenizer_sha256` added.
    """
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    tok_bytes = tokenizer_json_bytes(tok)
    special_map = {"pad_token": PAD, "bos_token": BOS, "eos_token": EOS}
    config = {
        "tokenizer_class": "PreTrainedTokenizerFast",
        **special_map,
        "add_bos_token": False,
        "add_eos_token": False,
        "clean_up_tokenization_spaces": False,  # keeps decode(encode(x)) == x through transformers
    }
    if model_max_length is not None:
        config["model_max_length"] = model_max_length
    report = {**report, "tokenizer_sha256": hashlib.sha256(tok_bytes).hexdigest()}
    write_bytes_atomic(out / "tokenizer.json", tok_bytes)
    write_bytes_atomic(out / "tokenizer_config.json", json_bytes(config))
    write_bytes_atomic(out / "special_tokens_map.json", json_bytes(special_map))
    run = {k: report[k] for k in RUN_VARYING if k in report}
    write_bytes_atomic(out / "training_run.json", json_bytes(run))
    write_bytes_atomic(out / "training_report.json",
                       json_bytes({k: v for k, v in report.items() if k not in RUN_VARYING}))
    return report
