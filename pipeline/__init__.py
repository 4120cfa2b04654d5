"""xdp pipeline: read, validate, normalize, language ID and dedup of raw documents on Ray."""

__version__ = "0.1.0"
