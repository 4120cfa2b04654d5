"""Mixing: plan to target ratios, tokenize, best-fit pack into fixed-length sequences, write shards."""
