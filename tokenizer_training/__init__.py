"""Tokenizer training: a language-balanced streamed sample -> byte-safe BPE of an exact vocabulary size."""
